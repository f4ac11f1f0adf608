"""stages/checkpoint.py in-process, on a small real Keras model: the newest intact checkpoint is resumed;
damaged ones (checksum, epoch count, step count, history beyond train.epochs) and other configurations' never
are. And through DVC: a finished model is kept by fingerprint, so a model two stages share is trained once."""

import json
import re

import numpy as np
import pytest

from stages import checkpoint
from tests.conftest import dvc, make_project

FINGERPRINT = {
    "dataset": "cifar10",
    "activation": "relu",
    "seed": 0,
    "train": {"epochs": 5},
    "code_sha256": {},
}
STEPS = 3  # optimizer steps per epoch


def build():
    import keras

    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dropout(0.1), keras.layers.Dense(2)])
    model.compile(keras.optimizers.SGD(0.1, momentum=0.9), "mse")
    model.optimizer.build(model.trainable_variables)
    return model


@pytest.fixture(autouse=True)
def in_the_project(tmp_path, monkeypatch):
    """The working directory: the project whose folders a checkpoint may be written in."""
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def two_epochs(tmp_path):
    """checkpoints/…/epoch-0001 and epoch-0002 of a model trained STEPS steps per epoch; and that model."""
    ckpt = tmp_path / "c"
    model, start, history = checkpoint.resume(ckpt, FINGERPRINT, build, STEPS)
    assert (start, history) == (0, []) and json.loads((ckpt / "config.json").read_text()) == FINGERPRINT
    x, y = np.ones((STEPS * 4, 4), "float32"), np.zeros((STEPS * 4, 2), "float32")
    for e in range(2):
        model.fit(x, y, batch_size=4, epochs=1, shuffle=False, verbose=0)
        history.append({"loss": float(e)})
        checkpoint.save(ckpt, model, history)
    return ckpt, model


def same(a, b):
    return all(np.array_equal(x, y) for x, y in zip(a.get_weights(), b.get_weights()))


def test_newest_intact_checkpoint_is_resumed_with_optimizer_and_dropout_state(two_epochs):
    ckpt, trained = two_epochs
    model, start, history = checkpoint.resume(ckpt, FINGERPRINT, build, STEPS)
    assert (start, len(history)) == (2, 2) and same(model, trained)
    assert int(model.optimizer.iterations) == 2 * STEPS
    states = [np.asarray(v) for v in checkpoint.seed_states(model)]
    assert states and all(
        np.array_equal(a, np.asarray(b)) for a, b in zip(states, checkpoint.seed_states(trained))
    )


def damage(ckpt, kind):
    d = ckpt / "epoch-0002"
    weights, meta_path = d / "model.weights.h5", d / "history.json"
    meta = json.loads(meta_path.read_text())
    if kind == "flipped byte":
        raw = bytearray(weights.read_bytes())
        raw[len(raw) // 2] ^= 0x01
        weights.write_bytes(bytes(raw))
    elif kind == "truncated":
        weights.write_bytes(weights.read_bytes()[:100])
    elif kind == "missing weights":
        weights.unlink()
    elif kind == "bad history":
        meta_path.write_text(meta_path.read_text()[:30])
    elif kind == "no history":
        meta_path.unlink()
    elif (
        kind == "history claims more epochs than the weights hold"
    ):  # epoch 1's weights under epoch 2's history
        weights.write_bytes((ckpt / "epoch-0001/model.weights.h5").read_bytes())
        meta_path.write_text(json.dumps({**meta, "weights_sha256": checkpoint.sha256(weights)}))
    elif kind == "history claims an epoch beyond train.epochs":
        meta_path.write_text(json.dumps({**meta, "epoch": 7, "history": meta["history"] * 4}))


@pytest.mark.parametrize(
    "kind",
    [
        "flipped byte",
        "truncated",
        "missing weights",
        "bad history",
        "no history",
        "history claims more epochs than the weights hold",
        "history claims an epoch beyond train.epochs",
    ],
)
def test_damaged_checkpoint_is_not_used(two_epochs, capsys, kind):
    ckpt, _ = two_epochs
    one = build()
    one.load_weights(ckpt / "epoch-0001/model.weights.h5")
    damage(ckpt, kind)
    model, start, history = checkpoint.resume(ckpt, FINGERPRINT, build, STEPS)
    assert (start, len(history)) == (1, 1) and same(model, one)
    assert f"warning: {ckpt}/epoch-0002 is damaged" in capsys.readouterr().out


def test_every_checkpoint_damaged_starts_over_from_a_fresh_model(two_epochs, capsys):
    ckpt, _ = two_epochs
    for d in ckpt.glob("epoch-*"):
        weights = d / "model.weights.h5"
        weights.write_bytes(weights.read_bytes()[:100])
    model, start, history = checkpoint.resume(ckpt, FINGERPRINT, build, STEPS)
    assert (start, history) == (0, []) and same(model, build())  # as initialised, as an uninterrupted run
    assert capsys.readouterr().out.count("is damaged") == 2


@pytest.mark.parametrize("change", ["other params", "other code", "missing config"])
def test_checkpoint_of_another_configuration_is_discarded(two_epochs, change):
    ckpt, _ = two_epochs
    fingerprint = (
        {**FINGERPRINT, "train": {"epochs": 6}}
        if change == "other params"
        else {**FINGERPRINT, "code_sha256": {"stages/train.py": "0" * 64}}
        if change == "other code"
        else FINGERPRINT
    )
    if change == "missing config":
        (ckpt / "config.json").unlink()
    model, start, history = checkpoint.resume(ckpt, fingerprint, build, STEPS)
    assert (start, history) == (0, []) and same(model, build())
    assert not list(ckpt.glob("epoch-*"))  # never resumed from, so removed


# --- issue 21: what a power cut or a hand leaves in checkpoints/ never fails every rerun ------------------


def set_aside_line(out, path):
    lines = [line for line in out.splitlines() if line.startswith("warning: ")]
    assert len(lines) == 1 and lines[0].startswith(f"warning: {path}"), out
    assert lines[0].endswith(f"(set aside as {path.parent / ('damaged-' + path.name)})"), out
    return lines[0]


@pytest.mark.parametrize("kind", ["empty", "garbage", "folder", "deep", "latin-1"])
def test_an_unreadable_config_is_set_aside_and_training_starts_over(two_epochs, capsys, kind):
    """Was: a JSONDecodeError / IsADirectoryError / RecursionError traceback on every rerun, until the file
    was deleted by hand (an empty config.json is what a power cut leaves)."""
    ckpt, _ = two_epochs
    config = ckpt / "config.json"
    config.unlink()
    if kind == "folder":
        config.mkdir()
    else:
        config.write_bytes(
            {"empty": b"", "garbage": b"\x00\xff{not json", "deep": b"[" * 100_000 + b"]" * 100_000}.get(
                kind, b'{"dataset": "caf\xe9"}'
            )
        )
    capsys.readouterr()
    for run in range(2):  # and the next run finds a clean start
        model, start, history = checkpoint.resume(ckpt, FINGERPRINT, build, STEPS)
        assert (start, history) == (0, []) and same(model, build())
        assert json.loads((ckpt / "config.json").read_text()) == FINGERPRINT
        out = capsys.readouterr().out
        if run == 0:
            assert f"warning: {config}: unreadable (" in set_aside_line(out, ckpt)
        else:
            assert "warning" not in out
    assert (ckpt.parent / "damaged-c" / "epoch-0002").is_dir()  # kept aside, not deleted


def test_a_history_100_000_levels_deep_is_set_aside(two_epochs, capsys):
    ckpt, _ = two_epochs
    (ckpt / "epoch-0002/history.json").write_text("[" * 100_000 + "]" * 100_000)
    one = build()
    one.load_weights(ckpt / "epoch-0001/model.weights.h5")
    capsys.readouterr()
    model, start, history = checkpoint.resume(ckpt, FINGERPRINT, build, STEPS)
    assert (start, len(history)) == (1, 1) and same(model, one)
    assert "is damaged" in set_aside_line(capsys.readouterr().out, ckpt / "epoch-0002")
    assert sorted(p.name for p in ckpt.iterdir()) == ["config.json", "damaged-epoch-0002", "epoch-0001"]


@pytest.mark.parametrize("where", ["the entry", "its parent", "an epoch"])
def test_a_symlinked_checkpoint_folder_is_set_aside_and_nothing_outside_is_written(
    tmp_path, capsys, monkeypatch, where
):
    """Was: a symlinked checkpoints/grid/<entry> trained, then failed at the end on every rerun (rmtree
    refuses a link), after writing its checkpoints into the link's target."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "thesis.tex").write_text("mine\n")
    project = tmp_path / "project"
    project.mkdir()
    monkeypatch.chdir(project)
    ckpt = checkpoint.Path("checkpoints/grid/cifar10-relu-False-0")
    if where == "the entry":
        ckpt.parent.mkdir(parents=True)
        ckpt.symlink_to(outside)
        linked = ckpt
    elif where == "its parent":
        ckpt.parent.parent.mkdir(parents=True)
        ckpt.parent.symlink_to(outside)
        linked = ckpt.parent
    else:
        checkpoint.resume(ckpt, FINGERPRINT, build, STEPS)
        (ckpt / "epoch-0001").symlink_to(outside)
        linked = ckpt / "epoch-0001"
    capsys.readouterr()
    model, start, history = checkpoint.resume(ckpt, FINGERPRINT, build, STEPS)
    assert (start, history) == (0, [])
    set_aside_line(capsys.readouterr().out, linked)
    x, y = np.ones((STEPS * 4, 4), "float32"), np.zeros((STEPS * 4, 2), "float32")
    model.fit(x, y, batch_size=4, epochs=1, shuffle=False, verbose=0)
    checkpoint.save(ckpt, model, [{"loss": 0.0}])
    assert (ckpt / "epoch-0001/model.weights.h5").is_file() and not ckpt.is_symlink()
    assert sorted(p.name for p in outside.iterdir()) == ["thesis.tex"]  # nothing written through the link


@pytest.mark.e2e
def test_a_model_the_experiment_and_the_grid_share_is_trained_once(tmp_path, cifar10_archive):
    """At the defaults the experiment's model (relu, no BN, train.seed 0) is the grid's cifar10-relu-False-0:
    `dvc repro` trains it once and copies it for the other stage (a one-entry grid: the whole check)."""
    repo = make_project(tmp_path / "repo", cifar10_archive, {"grid": {"activation": ["relu"]}})
    out = dvc("repro", cwd=repo).stdout
    assert re.findall(r"^training (\S+):", out, re.M) == ["models/experiment.keras"]
    assert re.findall(r"^restored (\S+) from checkpoints/finished/", out, re.M) == [
        "models/grid/cifar10-relu-False-0.keras"
    ]
    grid = json.loads((repo / "metrics/grid/cifar10-relu-False-0.json").read_text())
    exp = json.loads((repo / "metrics/experiment.json").read_text())
    assert (exp["test_loss"], exp["epochs"]) == (grid["test_loss"], 2)
    for name in ("train/loss.tsv", "eval/accuracy.tsv"):  # the curves, epoch by epoch
        a, b = (
            repo / d / "plots/metrics" / name
            for d in ("dvclive/experiment", "dvclive/grid/cifar10-relu-False-0")
        )
        assert a.read_text() == b.read_text() and len(a.read_text().splitlines()) == 3


def test_a_kept_model_is_restored_only_under_its_own_fingerprint(tmp_path, monkeypatch):
    """keep_finished/restore_finished on real files: the same fingerprint gets the kept bytes back, another
    fingerprint or a store folder that is not whole gets nothing (and the stage then trains)."""
    monkeypatch.chdir(tmp_path)
    mine, other = checkpoint_paths("grid/a"), checkpoint_paths("experiment")
    mine["model"].parent.mkdir(parents=True)
    mine["model"].write_bytes(b"weights")
    mine["summary"].write_text('{"epochs": 2}')
    (mine["live"] / "plots").mkdir(parents=True)
    (mine["live"] / "plots/loss.tsv").write_text("step\tloss\n0\t2.3\n")
    checkpoint.keep_finished(FINGERPRINT, mine)
    assert checkpoint.restore_finished({**FINGERPRINT, "seed": 1}, other) is None
    assert not other["model"].exists()
    kept = checkpoint.restore_finished(FINGERPRINT, other)
    assert kept is not None and kept.parent == checkpoint.FINISHED
    assert other["model"].read_bytes() == b"weights" and other["summary"].read_text() == '{"epochs": 2}'
    assert (other["live"] / "plots/loss.tsv").read_text() == "step\tloss\n0\t2.3\n"
    (kept / "model.keras").unlink()  # not whole: nothing of it is restored
    third = checkpoint_paths("grid/b")
    assert checkpoint.restore_finished(FINGERPRINT, third) is None
    assert not any(p.exists() for p in third.values())


def checkpoint_paths(rel):
    from pathlib import Path

    return {
        "model": Path(f"models/{rel}.keras"),
        "summary": Path(f"models/{rel}.json"),
        "live": Path("dvclive", rel),
    }
