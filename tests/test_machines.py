"""The study split across machines: each trains part of the grid and shares it through a git remote (code,
params, dvc.lock) and a DVC remote (data, models, curves); a third machine then reproduces the whole pipeline
from what the two pushed, and trains nothing. Here the machines are three clones and the remotes are a bare
git repository and a local folder. Asserted: the project's own files and words (what the stages print, the
models' checksums, dvc.lock's entries) and exit statuses, never DVC's or git's wording, which changes between
their versions."""

import json
import re
from pathlib import Path

import pytest
import yaml

from tests.conftest import dvc, git, make_project, md5

pytestmark = pytest.mark.e2e  # trains and runs DVC: the whole module is outside the fast tier

RELU, ELU = "train@cifar10-relu-False-0", "train@cifar10-elu-False-0"
MODELS = [
    "models/grid/cifar10-relu-False-0.keras",
    "models/grid/cifar10-elu-False-0.keras",
    "models/experiment.keras",
]


def ignores(repo):
    """DVC's .gitignore files (one per output folder)."""
    return [str(p.relative_to(repo)) for p in Path(repo).rglob(".gitignore") if ".git" not in p.parts[:-1]]


def commit(repo, message):
    git("add", "dvc.lock", *ignores(repo), cwd=repo)
    git("commit", "-qm", message, cwd=repo)


def lock(repo):
    return yaml.safe_load(Path(repo, "dvc.lock").read_text())["stages"]


def test_two_machines_train_at_once_and_a_third_reproduces_without_training(tmp_path, cifar10_archive):
    origin, storage = tmp_path / "origin.git", tmp_path / "dvc-storage"
    git("init", "-q", "--bare", "--initial-branch=main", str(origin), cwd=tmp_path)
    a = make_project(tmp_path / "a", cifar10_archive)  # the TINY grid: relu and elu
    dvc("remote", "add", "-d", "shared", str(storage), cwd=a)
    git("add", ".dvc/config", cwd=a)
    git("commit", "-qm", "shared DVC remote", cwd=a)
    git("remote", "add", "origin", str(origin), cwd=a)
    git("push", "-q", "origin", "HEAD:main", cwd=a)
    b = tmp_path / "b"
    git("clone", "-q", str(origin), str(b), cwd=tmp_path)  # both machines start from this commit

    # machine A: one grid entry and the experiment's own model; pushed first
    out = dvc("repro", RELU, "train_exp", cwd=a).stdout
    # the two are one model (relu, seed 0): trained once, copied for the other (checkpoints/finished/)
    assert re.search(r"^(training|restored) models/grid/cifar10-relu-False-0.keras", out, re.M), out
    assert out.count("\ntraining models/") == 1 and "-elu-False-0" not in out
    dvc("push", cwd=a)
    commit(a, "relu entry and the experiment, trained on A")
    git("push", "-q", "origin", "HEAD:main", cwd=a)
    pushed = {m: md5(a / m) for m in MODELS[::2]}

    # machine B, at the same time: the other entry, from the same commit (it prepares the data itself)
    out = dvc("repro", ELU, cwd=b).stdout
    assert "training models/grid/cifar10-elu-False-0.keras" in out and out.count("training models/") == 1
    assert md5(b / "data/prepared/cifar10/train.npz") == md5(
        a / "data/prepared/cifar10/train.npz"
    )  # same bytes
    dvc("push", cwd=b)
    commit(b, "elu entry, trained on B")
    pushed[MODELS[1]] = md5(b / MODELS[1])
    # both added dvc.lock (and DVC's .gitignore files): git cannot merge them
    merge = git("pull", "--no-rebase", "-q", "origin", "main", cwd=b, check=False)
    assert merge.returncode != 0
    conflicted = git("diff", "--name-only", "--diff-filter=U", cwd=b).stdout.split()
    assert "dvc.lock" in conflicted and set(conflicted) <= {"dvc.lock", *ignores(b)}
    # the fix: take A's side, then let DVC record B's entry again from its run cache (no training)
    git("checkout", "--theirs", "--", *conflicted, cwd=b)
    out = dvc("repro", ELU, cwd=b).stdout
    assert "training models/" not in out  # the train stage did not run: the model came from the run cache
    assert md5(b / MODELS[1]) == pushed[MODELS[1]]
    commit(b, "merge A's entries")
    git("push", "-q", "origin", "HEAD:main", cwd=b)
    trained = {k: v for k, v in lock(b).items() if k.startswith("train")}
    assert set(trained) == {RELU, ELU, "train_exp"}
    # git ignores every output through the top-level .gitignore (DVC then writes none of its own)
    assert git("check-ignore", *MODELS[:2], "dvclive/grid/cifar10-elu-False-0", cwd=b).stdout.split() == [
        *MODELS[:2],
        "dvclive/grid/cifar10-elu-False-0",
    ]

    # machine C: a fresh clone, the data from the DVC remote, the whole pipeline
    c = tmp_path / "c"
    git("clone", "-q", str(origin), str(c), cwd=tmp_path)
    pull = dvc("pull", cwd=c, check=False)  # fetches all there is, then fails on outputs never pushed
    assert pull.returncode != 0
    dvc("pull", "--allow-missing", cwd=c)
    assert {m: md5(c / m) for m in MODELS} == pushed
    out = dvc("repro", cwd=c).stdout
    assert "training models/" not in out and "prepare@cifar10: " not in out, (
        out
    )  # the train and prepare lines
    for metrics in ("grid/cifar10-relu-False-0", "grid/cifar10-elu-False-0", "experiment"):
        assert f"metrics/{metrics}.json: test accuracy " in out  # each model evaluated here
    assert "report: cifar10: " in out
    assert {m: md5(c / m) for m in MODELS} == pushed  # the pushed models, evaluated as they are
    assert {k: v for k, v in lock(c).items() if k.startswith("train")} == trained
    summary = json.loads((c / "metrics/summary.json").read_text())["cifar10"]
    assert sorted(summary["variants"]) == ["elu", "relu"]
    before = lock(c)
    again = dvc("repro", cwd=c).stdout  # only source@ runs (always_changed), and its stamp is unchanged
    assert not [
        w
        for w in ("valid; grid", "training models/", "prepare@cifar10: ", "test accuracy", "report: ")
        if w in again
    ]
    assert lock(c) == before
