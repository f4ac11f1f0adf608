"""The users' workflow end to end, in a temporary git+DVC repo on the tests' own tiny archive:
repro -> metrics show -> no-op repro -> exp run -S -> metrics diff -> exp show -> plots diff -> queued
sweep."""

import json

import pytest

from tests.conftest import dvc, git

pytestmark = pytest.mark.e2e  # trains and runs DVC: the whole module is outside the fast tier

ENTRIES = ["cifar10-relu-False-0", "cifar10-elu-False-0"]  # the TINY grid


@pytest.fixture(scope="module")
def study(tmp_path_factory, cifar10_archive):
    from tests.conftest import make_project

    repo = make_project(tmp_path_factory.mktemp("study") / "repo", cifar10_archive)
    out = dvc("repro", cwd=repo).stdout
    git("add", "-A", cwd=repo)
    git("commit", "-qm", "baseline study", cwd=repo)
    return repo, out


def test_repro_trains_every_entry_and_reports(study):
    repo, out = study
    for e in ENTRIES:
        assert f"training models/grid/{e}.keras" in out
        m = json.loads((repo / f"metrics/grid/{e}.json").read_text())
        assert 0 <= m["test_error"] <= 1 and m["test_accuracy"] == pytest.approx(1 - m["test_error"])
        assert m["epochs"] == 2 and m["diverged"] is False and m["parameters"] > 0
        per_class = json.loads((repo / f"results/grid/{e}.json").read_text())["per_class_accuracy"]
        assert len(per_class) == 10
    summary = json.loads((repo / "metrics/summary.json").read_text())["cifar10"]
    ranking = sorted(summary["variants"], key=lambda v: summary["variants"][v]["rank"])
    assert sorted(ranking) == ["elu", "relu"]
    errors = [summary["variants"][v]["test_error_mean"] for v in ranking]
    assert errors == sorted(errors)  # ranked best first
    assert summary["paired_tests"] == {}  # one seed: nothing to pair
    report = (repo / "reports/report.md").read_text()
    assert "| 1 |" in report and "Ranking:" in report
    for png in ("curves", "test_error", "bias_shift"):
        assert (repo / f"plots/grid/cifar10_{png}.png").stat().st_size > 10_000
    curves = (repo / "plots/curves/cifar10.tsv").read_text().splitlines()
    assert curves[0].split("\t")[:1] == ["epoch"] and len(curves) == 1 + 2 * len(ENTRIES)  # 2 epochs each


def test_metrics_show_lists_every_variant(study):
    repo, _ = study
    shown = json.loads(dvc("metrics", "show", "--json", cwd=repo).stdout)
    files = next(iter(shown.values()))["data"]
    for e in ENTRIES:
        assert files[f"metrics/grid/{e}.json"]["data"]["test_accuracy"] >= 0
    assert "metrics/experiment.json" in files
    assert "metrics/summary.json" not in files  # its nested ranking would widen every row; shown on request:
    summary = json.loads(dvc("metrics", "show", "--json", "metrics/summary.json", cwd=repo).stdout)
    assert next(iter(summary.values()))["data"]["metrics/summary.json"]["data"]["cifar10"]["variants"]["elu"][
        "rank"
    ]


def test_second_repro_does_nothing(study):
    repo, _ = study
    out = dvc(
        "repro", cwd=repo
    ).stdout  # only source@ runs (always_changed: it stamps the archive), unchanged
    assert [line for line in out.splitlines() if line.startswith("Running stage")] == [
        "Running stage 'source@cifar10':"
    ]
    assert "training" not in out and "Running stage 'prepare" not in out


def test_experiment_workflow(study, tmp_path):
    repo, _ = study
    before = json.loads((repo / "metrics/experiment.json").read_text())
    out = dvc("exp", "run", "-n", "prelu-exp", "-S", "activation=prelu", cwd=repo).stdout
    assert "training models/experiment.keras" in out  # the experiment's own model, and nothing else
    assert "training models/grid" not in out
    after = json.loads((repo / "metrics/experiment.json").read_text())
    assert after != before

    diff = json.loads(dvc("metrics", "diff", "--json", cwd=repo).stdout)
    change = diff["metrics/experiment.json"]
    assert change["parameters"]["new"] > change["parameters"]["old"]  # prelu adds one slope per channel
    assert not any(k.startswith("metrics/grid") for k in diff)

    table = json.loads(dvc("exp", "show", "--json", cwd=repo).stdout)
    names = [e.get("name") for row in table for e in row.get("experiments") or []]
    assert "prelu-exp" in names

    html = tmp_path / "plots"
    dvc("plots", "diff", "HEAD", "-o", str(html), cwd=repo)
    page = (html / "index.html").read_text()
    assert "vega" in page and "relu" in page and "elu" in page

    # a queued sweep runs both values in the background workers
    git("checkout", "--", ".", cwd=repo)
    dvc("exp", "run", "--queue", "-S", "activation=relu,elu", cwd=repo)
    dvc("queue", "start", cwd=repo)
    dvc("queue", "status", cwd=repo)
    import time

    for _ in range(180):
        status = dvc("queue", "status", cwd=repo).stdout
        if "Queued" not in status and "Running" not in status:
            break
        time.sleep(5)
    assert status.count("Success") == 2, status
    table = json.loads(dvc("exp", "show", "--json", cwd=repo).stdout)
    params = [
        e["data"]["params"]["params.yaml"]["data"]["activation"]
        for row in table
        for exp in row.get("experiments") or []
        for e in exp["revs"]
    ]
    assert {"relu", "elu", "prelu"} <= set(params)
