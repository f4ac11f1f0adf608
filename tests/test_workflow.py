"""The users' workflow end to end, in a temporary git+DVC repo on the tests' own tiny archive:
repro -> metrics show -> no-op repro -> exp run -S -> metrics diff -> exp show -> plots diff -> queued
sweep; and, in copies of the finished study, what an edit of each stages/ module makes `dvc repro` rerun."""

import json
import shutil

import pytest

from tests.conftest import dvc, git

pytestmark = pytest.mark.e2e  # trains and runs DVC: the whole module is outside the fast tier

ENTRIES = ["cifar10-relu-False-0", "cifar10-elu-False-0"]  # the TINY grid


def dvc_tmp(folder, names):
    """DVC's lock and state files (.dvc/tmp): left out of a copy, which DVC then hashes afresh."""
    return ["tmp"] if folder.endswith("/.dvc") else []


@pytest.fixture(scope="module")
def study(tmp_path_factory, cifar10_archive):
    from tests.conftest import make_project

    repo = make_project(tmp_path_factory.mktemp("study") / "repo", cifar10_archive)
    out = dvc("repro", cwd=repo).stdout
    git("add", "-A", cwd=repo)
    git("commit", "-qm", "baseline study", cwd=repo)
    # kept as it is now, before any test here changes the study: the edit tests copy it
    shutil.copytree(repo, repo.parent / "finished", symlinks=True, ignore=dvc_tmp)
    return repo, out


def test_repro_trains_every_entry_and_reports(study):
    repo, out = study
    # the experiment's model is the grid's relu (same seed): trained once, then copied for the other stage
    assert out.count("\ntraining models/") == len(ENTRIES) and out.count("\nrestored models/") == 1
    for e in ENTRIES:
        assert f"training models/grid/{e}.keras" in out or f"restored models/grid/{e}.keras" in out
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
    lock = (repo / "dvc.lock").read_text()
    out = dvc(
        "repro", cwd=repo
    ).stdout  # only source@ runs (always_changed: it stamps the archive), unchanged
    assert not [
        w
        for w in ("valid; grid", "training models/", "prepare@cifar10: ", "test accuracy", "report: ")
        if w in out
    ]
    assert (repo / "dvc.lock").read_text() == lock


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


# What an edit of each stages/ module reruns: the stages `dvc status` reports changed (grid stages by their
# name before the @; source@ is left out: it reruns on every `dvc repro`, and its stamp then stays the same).
# docs/architecture.md prints this table. check, prepare, train, evaluate and report rerun only when an
# edit can change their output: an edit to the archive reader, the recipes or the report retrains nothing.
CHECK = {"check", "source"}
TRAIN = {"train", "train_exp", "evaluate", "evaluate_exp"}
RERUNS = {
    "cli": {*CHECK, "prepare", *TRAIN, "report"},
    "outputs": {*CHECK, "prepare", *TRAIN, "report"},
    "params": {*CHECK, "prepare", *TRAIN, "report"},
    "backend": {*CHECK, "prepare", *TRAIN, "report"},
    "model": {*CHECK, "prepare", *TRAIN, "report"},
    "layers": {*CHECK, "prepare", *TRAIN, "report"},
    "datasets": {*CHECK, "prepare", *TRAIN, "report"},
    "schedules": {*CHECK, "prepare", *TRAIN, "report"},
    "entry": {"prepare", *TRAIN, "report"},
    "cifar": {"prepare"},
    "prepare": {"prepare"},
    "source": {"source"},
    "train": {"train", "train_exp"},
    "checkpoint": {"train", "train_exp"},
    "each_epoch": {"train", "train_exp"},
    "pipeline": {"train", "train_exp"},
    "evaluate": {"evaluate", "evaluate_exp"},
    "report": {"report"},
    "report_inputs": {"report"},
    "statistics": {"report"},
    "figures": {"report"},
    "tables": {"report"},
    "recipes": set(),
    "parallel": set(),  # drives dvc; no stage runs it
    "plan": set(),
    "__init__": set(),  # every stage runs it, yet it only quiets TensorFlow's start-up lines
}


def changed_stages(repo, module, monkeypatch):
    """{stage kind: the stage names} that `dvc status` reports changed by an edit of stages/<module>.py: DVC's
    own status, what `dvc status --json` prints, called in-process (a `dvc` process takes ~1 s to start)."""
    from dvc.repo import Repo

    path = repo / f"stages/{module}.py"
    path.write_text(path.read_text() + "# an edit\n")
    monkeypatch.chdir(repo)  # stage names as `dvc status` prints them there: train@<key>, not dvc.yaml:train@
    with Repo(str(repo)) as dvc_repo:
        status = dvc_repo.status()
    by_kind = {}
    for stage, why in status.items():
        if stage.startswith("source@") and why == ["always changed"]:
            continue  # reported on every call (always_changed), edit or not
        by_kind.setdefault(stage.split("@")[0], set()).add(stage)
    return by_kind


def test_every_stages_module_is_in_the_table():
    from tests.conftest import ROOT

    assert set(RERUNS) == {p.stem for p in (ROOT / "stages").glob("*.py")}


@pytest.mark.parametrize("module", sorted(RERUNS))
def test_an_edit_reruns_what_it_can_change_and_nothing_else(study, tmp_path, monkeypatch, module):
    """In a copy of the finished study, stages/<module>.py edited: `dvc status` names the stages of RERUNS,
    every entry of a grid stage alike (cifar, recipes, report, prepare: no train@ changed)."""
    repo, _ = study
    copy = shutil.copytree(repo.parent / "finished", tmp_path / "repo", symlinks=True, ignore=dvc_tmp)
    by_kind = changed_stages(copy, module, monkeypatch)
    assert set(by_kind) == RERUNS[module]
    for kind in {"train", "evaluate"} & set(by_kind):
        assert by_kind[kind] == {f"{kind}@{e}" for e in ENTRIES}
