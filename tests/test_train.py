"""The train stage as DVC runs it (subprocesses in temporary projects): it learns, it is deterministic on CPU,
a killed run resumes to the weights an uninterrupted run reaches, and the grid's stages are one per entry.

Every Python process pays ~10 s of TensorFlow import, so the expensive runs are module fixtures shared by
the tests that read them.
"""
import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from stages.train import paths
from tests.archives import write_cifar
from tests.conftest import ENV, ROOT, dvc, make_project, run, set_params

ENTRY = ("cifar10", "elu", "false", "0")
OUT = paths("cifar10", "elu", False, 0)
# 56 steps of SGD at batch 32 over 560 images. ELU at lr 0.01 with cosine decay reaches ~100% test accuracy on
# the learnable archive in 4 epochs. ReLU at this width (12/24 channels) often dies at the last conv's
# activation (every class score 0 -> chance), and lr 0.05 diverges; neither says anything about the stage.
PARAMS = {"train": {"epochs": 4, "learning_rate": 0.01, "lr_schedule": "cosine"}}


def train(repo, check=True):
    return run([sys.executable, "-m", "stages.train", *ENTRY], repo, check=check)


def copy_repo(src, dest):
    shutil.copytree(src, dest, symlinks=True)
    return dest


def weights(model_path):
    import keras
    return keras.models.load_model(model_path, compile=False).get_weights()


def assert_same_weights(a, b):
    wa, wb = weights(a), weights(b)
    assert len(wa) == len(wb) and len(wa) > 0
    diff = [float(np.max(np.abs(x - y))) for x, y in zip(wa, wb) if not np.array_equal(x, y)]
    assert not diff, f"{len(diff)} of {len(wa)} weight tensors differ, by up to {max(diff)}"


def curves(live_dir):
    """{metric file: rows (step, value)} of every dvclive .tsv; seconds (wall time) left out."""
    out = {}
    for tsv in sorted(Path(live_dir, "plots", "metrics").rglob("*.tsv")):
        if tsv.stem != "seconds":
            lines = tsv.read_text().splitlines()
            out[str(tsv.relative_to(live_dir))] = [tuple(line.split("\t")) for line in lines[1:]]
    return out


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """A project with a larger learnable archive (60 train, 20 test images per class), prepared once."""
    base = tmp_path_factory.mktemp("train")
    archive = base / "cifar-10-python.tar.gz"
    write_cifar(archive, "cifar10", "python", train_per_class=60, test_per_class=20)
    repo = make_project(base / "prepared", archive, PARAMS)
    run([sys.executable, "-m", "stages.prepare", "cifar10"], repo)
    return repo


@pytest.fixture(scope="module")
def uninterrupted(prepared, tmp_path_factory):
    """One uninterrupted run: its repo, and its console output."""
    repo = copy_repo(prepared, tmp_path_factory.mktemp("uninterrupted") / "repo")
    return repo, train(repo).stdout


@pytest.fixture(scope="module")
def killed(prepared, tmp_path_factory):
    """A run killed (SIGKILL) once its epoch-2 checkpoint exists; its repo, and a copy of its checkpoints."""
    base = tmp_path_factory.mktemp("killed")
    repo = copy_repo(prepared, base / "repo")
    ckpt = repo / OUT["ckpt"]
    p = subprocess.Popen([sys.executable, "-m", "stages.train", *ENTRY], cwd=repo, env=ENV,
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 600
    while not (ckpt / "epoch-0002").exists() and p.poll() is None and time.monotonic() < deadline:
        time.sleep(0.002)
    p.send_signal(signal.SIGKILL)
    output = p.communicate()[0]
    assert p.returncode == -signal.SIGKILL, f"train ended before it could be killed:\n{output[-3000:]}"
    assert (ckpt / "epoch-0002").is_dir(), output[-3000:]
    assert not (repo / OUT["model"]).exists()  # the model is written only when training is complete
    shutil.copytree(ckpt, base / "checkpoint")
    return repo, base / "checkpoint"


def test_a_tiny_model_learns(uninterrupted):
    repo, output = uninterrupted
    summary = json.loads((repo / OUT["summary"]).read_text())
    assert summary["epochs_completed"] == 4 and not summary["diverged"] and summary["resumed_from_epoch"] is None
    assert (summary["train_images"], summary["validation_images"], summary["precision"]) == (560, 40, "float32")
    assert not (repo / OUT["ckpt"]).exists()  # a finished run removes its checkpoints
    with np.load(repo / "data/prepared/cifar10/test.npz") as f:
        x, y = f["x"], f["y"]
    import keras
    model = keras.models.load_model(repo / OUT["model"], compile=False)  # takes raw pixels
    accuracy = float((model.predict(x.astype("float32"), verbose=0).argmax(1) == y).mean())
    assert len(y) == 200 and accuracy >= 0.6, f"test accuracy {accuracy} (chance: 0.1)\n{output[-3000:]}"
    loss = [float(v) for _, v in curves(repo / OUT["live"])["plots/metrics/train/loss.tsv"]]
    assert len(loss) == 4 and loss[-1] < loss[0] / 2


def test_same_seed_same_weights(prepared, uninterrupted, tmp_path):
    repo = copy_repo(prepared, tmp_path / "repo")
    train(repo)
    assert_same_weights(repo / OUT["model"], uninterrupted[0] / OUT["model"])
    assert curves(repo / OUT["live"]) == curves(uninterrupted[0] / OUT["live"])


def test_killed_run_resumes_to_the_weights_of_an_uninterrupted_one(killed, uninterrupted):
    repo, _ = killed
    output = train(repo).stdout
    assert "resuming" in output and "epochs 3..4" in output, output[-3000:]
    summary = json.loads((repo / OUT["summary"]).read_text())
    assert summary["resumed_from_epoch"] == 2 and summary["epochs_completed"] == 4
    assert_same_weights(repo / OUT["model"], uninterrupted[0] / OUT["model"])
    resumed, whole = curves(repo / OUT["live"]), curves(uninterrupted[0] / OUT["live"])
    assert "plots/metrics/train/loss.tsv" in resumed and "plots/metrics/eval/accuracy.tsv" in resumed
    for name, rows in resumed.items():  # one row per epoch, no repeats of the epochs before the kill
        assert [step for step, _ in rows] == ["0", "1", "2", "3"], name
    assert resumed == whole  # every value, including epochs 1-2 replayed from the checkpoint
    assert not (repo / OUT["ckpt"]).exists()


def test_checkpoint_of_other_params_is_not_resumed(prepared, killed, tmp_path):
    repo = copy_repo(prepared, tmp_path / "repo")
    shutil.copytree(killed[1], repo / OUT["ckpt"])  # epochs 1-2 made with learning_rate 0.01
    set_params(repo, train={"learning_rate": 0.02})
    output = train(repo).stdout
    assert "resuming" not in output and "epochs 1..4" in output, output[-3000:]
    summary = json.loads((repo / OUT["summary"]).read_text())
    assert summary["resumed_from_epoch"] is None and summary["epochs_completed"] == 4
    assert not (repo / OUT["ckpt"]).exists()


def stage_names(repo):
    return dvc("stage", "list", "--name-only", cwd=repo).stdout.split()


def test_one_train_and_evaluate_stage_per_grid_entry(tmp_path, cifar10_archive):
    repo = make_project(tmp_path / "repo", cifar10_archive,
                        {"grid": {"activation": ["relu", "elu"], "batch_norm": [False, True], "seed": [0]}})
    entries = [f"cifar10-{a}-{b}-0" for a in ("relu", "elu") for b in ("False", "True")]
    assert sorted(stage_names(repo)) == sorted(
        ["check", "prepare@cifar10", *(f"train@{e}" for e in entries), *(f"evaluate@{e}" for e in entries),
         "train_exp", "evaluate_exp", "report"])
    # each train stage's outputs are where stages/train.py writes them
    listing = dvc("stage", "list", cwd=repo).stdout
    for a in ("relu", "elu"):
        for b in (False, True):
            line = next(s for s in listing.splitlines() if s.startswith(f"train@cifar10-{a}-{b}-0 "))
            assert str(paths("cifar10", a, b, 0)["model"]) in line


def test_adding_an_activation_trains_only_the_new_entries(tmp_path, cifar10_archive):
    repo = make_project(tmp_path / "repo", cifar10_archive,
                        {"grid": {"activation": ["relu"], "batch_norm": [False]}, "train": {"epochs": 1}})
    dvc("repro", "report", cwd=repo)
    assert set(json.loads(dvc("status", "--json", cwd=repo).stdout)) == {"train_exp", "evaluate_exp"}
    set_params(repo, grid={"activation": ["relu", "elu", "selu"]})
    changed = set(json.loads(dvc("status", "--json", cwd=repo).stdout))
    new = {f"{s}@cifar10-{a}-False-0" for s in ("train", "evaluate") for a in ("elu", "selu")}
    # check validates the whole params.yaml, so it reruns, but its output does not change; report ranks the grid;
    # train_exp and evaluate_exp were never run here
    assert changed == new | {"check", "report", "train_exp", "evaluate_exp"}
    set_params(repo, grid={"activation": ["relu", "elu"]})
    output = dvc("repro", "report", cwd=repo).stdout
    assert "Running stage 'train@cifar10-elu-False-0'" in output
    assert "Running stage 'train@cifar10-relu-False-0'" not in output
    assert "Running stage 'evaluate@cifar10-relu-False-0'" not in output
    assert "Running stage 'prepare@cifar10'" not in output
    assert (repo / paths("cifar10", "elu", False, 0)["metrics"]).exists()


def test_train_before_prepare_says_what_to_run(tmp_path):
    for f in ("stages", "params.yaml"):
        (shutil.copytree if (ROOT / f).is_dir() else shutil.copy)(ROOT / f, tmp_path / f)
    p = run([sys.executable, "-m", "stages.train", "cifar10", "relu", "false", "0"], tmp_path, check=False)
    assert p.returncode == 2
    errors = [line for line in p.stdout.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "dvc repro prepare@cifar10" in errors[0]
    assert not (tmp_path / "models").exists() and not (tmp_path / "checkpoints").exists()
