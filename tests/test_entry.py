"""stages/entry.py: which entry a stage name stands for, its file names, its class-balanced split, and the
prepared files it reads (damaged ones refused in one line, never used)."""

import json
from pathlib import Path

import numpy as np
import pytest

from stages.cli import UserError
from stages.entry import Entry, balanced_split, find, grid_entries, load_split, read_json
from tests.conftest import run_stage
from tests.test_prepare import prepare

PARAMS = {
    "dataset": "cifar10",
    "activation": "prelu",
    "batch_norm": True,
    "train": {"seed": 7},
    "grid": {
        "dataset": ["cifar10"],
        "activation": ["relu", "elu"],
        "batch_norm": [False, True],
        "seed": [0, 1],
    },
}


def test_an_entry_is_named_by_its_key_everywhere():
    e = Entry("cifar10", "elu", True, 0)
    assert e.key == "cifar10-elu-True-0" and e.label == "elu+bn"
    assert {k: str(v) for k, v in e.paths.items()} == {
        "model": "models/grid/cifar10-elu-True-0.keras",
        "summary": "models/grid/cifar10-elu-True-0.json",
        "live": "dvclive/grid/cifar10-elu-True-0",
        "ckpt": "checkpoints/grid/cifar10-elu-True-0",
        "metrics": "metrics/grid/cifar10-elu-True-0.json",
        "results": "results/grid/cifar10-elu-True-0.json",
    }
    assert str(Entry("cifar10", "elu", True, 0, experiment=True).paths["model"]) == "models/experiment.keras"


def test_a_stage_name_finds_its_grid_entry_or_the_experiment():
    keys = [e.key for e in grid_entries(PARAMS)]
    assert (
        keys[:3] == ["cifar10-relu-False-0", "cifar10-relu-False-1", "cifar10-relu-True-0"] and len(keys) == 8
    )
    assert find("train@cifar10-elu-True-1", PARAMS) == Entry("cifar10", "elu", True, 1)
    assert find("cifar10-elu-True-1", PARAMS) == Entry("cifar10", "elu", True, 1)
    assert find("evaluate_exp", PARAMS) == Entry("cifar10", "prelu", True, 7, experiment=True)
    with pytest.raises(UserError) as e:
        find("train@cifar10-gelu-True-0", PARAMS)
    assert str(e.value).startswith("'train@cifar10-gelu-True-0': not an entry of params.yaml's grid (e.g. ")


def test_the_split_is_class_balanced_disjoint_and_the_same_for_every_call():
    y = np.repeat(np.arange(10), 30)  # 30 images of each of 10 classes
    train, val = balanced_split(y, 10, validation=50, limit=100)
    assert np.bincount(y[val]).tolist() == [5] * 10 and np.bincount(y[train]).tolist() == [10] * 10
    assert not set(train) & set(val)
    again = balanced_split(y, 10, validation=50, limit=100)
    assert train.tolist() == again[0].tolist() and val.tolist() == again[1].tolist()
    assert len(balanced_split(y, 10, validation=50, limit=None)[0]) == 250  # all the rest


def test_a_stage_output_without_its_keys_is_one_line_with_the_fix(tmp_path):
    path = tmp_path / "m.json"
    path.write_text(json.dumps({"a": 1}))
    assert read_json(path, ["a"], "rebuild it") == {"a": 1}
    with pytest.raises(UserError) as e:
        read_json(path, ["a", "b"], "rebuild it")
    assert str(e.value) == f"{path}: not what its stage writes (no 'b'); rebuild it"
    with pytest.raises(UserError) as e:
        read_json(tmp_path / "none.json", ["a"], "rebuild it")
    assert str(e.value) == f"{tmp_path / 'none.json'}: missing; rebuild it"


@pytest.mark.parametrize("damage", ["truncated", "flipped data", "flipped header", "empty", "not a zip"])
def test_damaged_npz_is_refused_in_one_line(tmp_path, monkeypatch, damage):
    monkeypatch.chdir(tmp_path)
    path = Path("data/prepared/cifar10/train.npz")
    path.parent.mkdir(parents=True)
    rng = np.random.default_rng(0)
    np.savez(path, x=rng.integers(0, 256, (20, 32, 32, 3), dtype=np.uint8), y=np.arange(20) % 10)
    raw = bytearray(path.read_bytes())
    if damage == "truncated":
        raw = raw[: len(raw) // 2]
    elif damage == "flipped data":
        raw[len(raw) // 2] ^= 0xFF
    elif damage == "flipped header":
        raw[100] ^= 0xFF
    elif damage == "empty":
        raw = b""
    else:
        raw = b"x" * 1000
    path.write_bytes(bytes(raw))
    with pytest.raises(UserError) as e:
        load_split("cifar10", "train", 10)
    msg = str(e.value)
    assert msg.startswith(f"{path}: damaged or unreadable (") and "\n" not in msg
    assert msg.endswith("rebuild it with `dvc repro -f prepare@cifar10` or restore it with `dvc checkout`")


def test_npz_of_the_wrong_shape_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = Path("data/prepared/cifar10/test.npz")
    path.parent.mkdir(parents=True)
    np.savez(path, x=np.zeros((4, 32, 32), np.uint8), y=np.zeros(4, np.int64))
    with pytest.raises(
        UserError, match=r"expected x \(N, 32, 32, 3\) uint8 .* rebuild it with `dvc repro -f"
    ):
        load_split("cifar10", "test", 10)
    np.savez(path, x=np.zeros((4, 32, 32, 3), np.uint8), y=np.full(4, 10))  # label 10 of 10 classes
    with pytest.raises(UserError, match="labels < 10"):
        load_split("cifar10", "test", 10)


def test_hand_edited_class_names_with_escape_sequences_are_refused(project):
    assert prepare(project)[0] == 0
    path = Path(project, "data/prepared/cifar10/classes.json")
    path.write_text(path.read_text().replace('"cat"', '"\\u001b[2Jcat"'))
    status, err, _ = run_stage(project, "train", "cifar10-relu-False-0")
    assert (
        status == 2 and len(err) == 1 and "classes.json: must be a list of 10 distinct class names" in err[0]
    )
    assert "\x1b" not in err[0]
