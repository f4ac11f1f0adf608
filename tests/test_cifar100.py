"""CIFAR-100 end to end: the tests' own archive through prepare, train, evaluate and report with `dvc repro`,
once per label kind: fine labels under TensorFlow, coarse under JAX (in an interpreter without TensorFlow).
Each label kind and each backend is decoded bit-exactly and trained elsewhere (test_cifar, test_train); what
this adds is the pipeline with a class count other than 10, and the pairing keeps it to two `dvc repro`s."""

import json
import sys

import pytest

from tests.archives import write_cifar
from tests.conftest import BACKEND_ENV, make_project, md5, run

pytestmark = pytest.mark.e2e  # trains and runs DVC: the whole module is outside the fast tier

ENTRY = "cifar100-elu-False-0"


@pytest.mark.parametrize("labels, classes, backend", [("fine", 100, "tensorflow"), ("coarse", 20, "jax")])
def test_cifar100_through_train_evaluate_and_report(tmp_path, labels, classes, backend):
    archive = tmp_path / "cifar-100-python.tar.gz"
    write_cifar(archive, "cifar100", "python", train_per_class=4, test_per_class=2)  # per fine class
    repo = make_project(
        tmp_path / "repo",
        archive,
        {
            "dataset": "cifar100",
            "activation": "elu",
            "grid": {"dataset": ["cifar100"], "activation": ["elu"], "batch_norm": [False], "seed": [0]},
            "train": {"epochs": 1, "validation": 100, "backend": backend, "probe_images": 32},
            "data": {"cifar100": {"url": str(archive), "md5": md5(archive), "labels": labels}},
        },
    )
    out = run([sys.executable, "-m", "dvc", "repro", "report"], repo, env=BACKEND_ENV[backend]).stdout

    assert len(json.loads((repo / "data/prepared/cifar100/classes.json").read_text())) == classes
    summary = json.loads((repo / f"models/grid/{ENTRY}.json").read_text())
    assert (summary["backend"], summary["train_images"], summary["validation_images"]) == (backend, 300, 100)
    results = json.loads((repo / f"results/grid/{ENTRY}.json").read_text())
    assert len(results["confusion"]) == classes and {len(r) for r in results["confusion"]} == {classes}
    assert sum(map(sum, results["confusion"])) == 200 == len(results["predictions"]) == len(results["labels"])
    assert len(results["per_class_accuracy"]) == classes and max(results["labels"]) < classes
    metrics = json.loads((repo / f"metrics/grid/{ENTRY}.json").read_text())
    assert metrics["test_images"] == 200 and metrics["backend"] == backend and 0 <= metrics["test_error"] <= 1
    report = (repo / "reports/report.md").read_text()
    assert "## cifar100" in report and "| elu " in report, report[:2000]
    for png in ("curves", "test_error", "bias_shift"):
        assert (repo / f"plots/grid/cifar100_{png}.png").stat().st_size > 10_000
    assert "report: cifar100: elu" in out
