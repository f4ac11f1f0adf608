"""stages/evaluate.py: the test metrics of a trained model, on a hand-computed case, and a missing or
damaged training summary refused in one line before anything is written."""

from pathlib import Path

import numpy as np
import pytest

from stages.evaluate import scores
from tests.conftest import run_stage
from tests.test_prepare import prepare


def test_scores_of_a_hand_computed_case():
    """4 images of 2 classes: true 0, 0, 1, 1; predicted 0, 1, 1, 1 (softmax rows)."""
    p = np.array([[0.9, 0.1], [0.4, 0.6], [0.2, 0.8], [0.5 - 1e-9, 0.5 + 1e-9]])
    results, accuracy, loss = scores(p, np.array([0, 0, 1, 1]), ["cat", "dog"])
    assert accuracy == 0.75
    assert loss == pytest.approx(-(np.log(0.9) + np.log(0.4) + np.log(0.8) + np.log(0.5)) / 4)
    assert results["confusion"] == [[1, 1], [0, 2]]  # rows: true class, columns: predicted
    assert results["per_class_accuracy"] == {"cat": 0.5, "dog": 1.0}
    assert results["labels"] == [0, 0, 1, 1] and results["predictions"] == [0, 1, 1, 1]


@pytest.mark.parametrize("content", ["{}", "not json", "[1, 2]"])
def test_damaged_training_summary_is_one_line_at_evaluate(project, content):
    """models/grid/<key>.json replaced by {} (was: KeyError) or non-JSON (JSONDecodeError)."""
    assert prepare(project)[0] == 0
    for ext in ("keras", "json"):
        Path(project, f"models/grid/cifar10-relu-False-0.{ext}").parent.mkdir(parents=True, exist_ok=True)
        Path(project, f"models/grid/cifar10-relu-False-0.{ext}").write_text(content)
    status, err, _ = run_stage(project, "evaluate", "cifar10-relu-False-0")
    assert status == 2 and len(err) == 1, err
    assert err[0].startswith("error: models/grid/cifar10-relu-False-0.json: not ")
    assert err[0].endswith(
        "retrain it with `dvc repro -f train@cifar10-relu-False-0` or restore it with "
        "`dvc checkout models/grid/cifar10-relu-False-0.json`"
    )
    assert not Path(project, "metrics").exists() and not Path(project, "results").exists()
