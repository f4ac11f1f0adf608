"""One model of the study: which one a stage trains or evaluates, its file names, its data and its split.

Shared by train, evaluate and report (and the GPU study); holds no stage's main().

A stage learns its entry from the name DVC runs it under (DVC sets $DVC_STAGE), never from values pasted into
its command line: dvc.yaml's commands carry no params values, so no value of params.yaml can reach a shell.
A grid entry's key is DVC's matrix key, <dataset>-<activation>-<True|False>-<seed> (e.g. cifar10-elu-True-0):
the stage name is train@<key>, and every file of the entry is named <key> too (one spelling everywhere).
"""

import argparse
import itertools
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from stages.cli import UserError
from stages.datasets import num_classes
from stages.params import load

SPLIT_SEED = 0  # the train/validation split and the subset are the same for every variant and seed
PREPARED = Path("data/prepared")


def _rebuild(dataset):
    return f"rebuild it with `dvc repro -f prepare@{dataset}` or restore it with `dvc checkout`"


def variant(activation, batch_norm):
    """A variant's name in every table, figure and legend: relu, relu+bn, ..."""
    return f"{activation}+bn" if batch_norm else activation


@dataclass(frozen=True)
class Entry:
    dataset: str
    activation: str
    batch_norm: bool
    seed: int
    experiment: bool = False  # the experiment's own model (train_exp/evaluate_exp): fixed file names

    @property
    def key(self):
        return f"{self.dataset}-{self.activation}-{self.batch_norm}-{self.seed}"

    @property
    def label(self):
        return variant(self.activation, self.batch_norm)

    @property
    def paths(self):
        """The entry's files; the experiment's own model has fixed names so that `dvc exp` can compare
        them."""
        rel = "experiment" if self.experiment else f"grid/{self.key}"
        return {
            "model": Path(f"models/{rel}.keras"),
            "summary": Path(f"models/{rel}.json"),
            "live": Path("dvclive", rel),
            "ckpt": Path("checkpoints", rel),
            "metrics": Path(f"metrics/{rel}.json"),
            "results": Path(f"results/{rel}.json"),
        }


def grid_entries(params):
    """Every entry of params.yaml's grid, in grid order."""
    g = params["grid"]
    return [Entry(*e) for e in itertools.product(g["dataset"], g["activation"], g["batch_norm"], g["seed"])]


def experiment_entry(params):
    return Entry(params["dataset"], params["activation"], params["batch_norm"], params["train"]["seed"], True)


def find(name, params):
    """The entry a stage name stands for: `<stage>@<key>` or `<key>` of the grid, or
    `<stage>_exp`/`experiment` for the experiment's own model. Only entries of the (validated) params.yaml
    are found."""
    key = name.split("@", 1)[-1]
    if key.endswith("_exp") or key == "experiment":
        return experiment_entry(params)
    for e in grid_entries(params):
        if e.key == key:
            return e
    keys = ", ".join(e.key for e in grid_entries(params)[:4])
    raise UserError(
        f"{name!r}: not an entry of params.yaml's grid (e.g. {keys}, …); "
        f"run a stage of `dvc stage list`, or add the values to grid.* in params.yaml"
    )


def from_command_line(description):
    """(entry, params) of a train or evaluate process: the entry named on the command line, else
    $DVC_STAGE."""
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument(
        "entry",
        nargs="?",
        default=os.environ.get("DVC_STAGE"),
        help="a grid entry's key or stage name (cifar10-elu-True-0, train@cifar10-elu-True-0), or "
        "'experiment'; default: $DVC_STAGE, the stage DVC runs",
    )
    name = ap.parse_args().entry
    if not name:
        raise UserError(
            "no entry given: name one (e.g. `python -m stages.train cifar10-relu-False-0`, see "
            "`dvc stage list`) or run the stage with `dvc repro`"
        )
    params = load()
    return find(name, params), params


def read_classes(dataset, params):
    """The class names of a prepared dataset, checked: as many distinct non-empty strings as its labels
    have."""
    path = PREPARED / dataset / "classes.json"
    if not path.is_file():
        raise UserError(f"{path}: missing; prepare the data first: dvc repro prepare@{dataset}")
    try:
        classes = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: not JSON ({type(e).__name__}); {_rebuild(dataset)}") from None
    expected = num_classes(params, dataset)
    if not (
        isinstance(classes, list)
        and all(isinstance(c, str) and c and c.isprintable() for c in classes)
        and len(set(classes)) == len(classes)
        and len(classes) == expected
    ):
        raise UserError(
            f"{path}: must be a list of {expected} distinct class names, "
            f"got {str(classes)[:60]!r}; {_rebuild(dataset)}"
        )
    return classes


def read_json(path, keys, fix):
    """A JSON object that holds keys, from a stage's output; anything else is one line ending in fix."""
    try:
        obj = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{path}: missing; {fix}") from None
    except (ValueError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: not JSON ({type(e).__name__}); {fix}") from None
    missing = [k for k in keys if not isinstance(obj, dict) or k not in obj]
    if missing:
        raise UserError(f"{path}: not what its stage writes (no {missing[0]!r}); {fix}")
    return obj


def load_split(dataset, split, num_classes):
    """x (N, 32, 32, 3) uint8 and y (N,) int64 from a prepared .npz; damaged files are refused, never used."""
    path = PREPARED / dataset / f"{split}.npz"
    try:
        with np.load(path) as f:
            x, y = f["x"], f["y"]
    except Exception as e:
        raise UserError(
            f"{path}: damaged or unreadable ({type(e).__name__}: {e}); {_rebuild(dataset)}"
        ) from None
    if (
        x.dtype != np.uint8
        or x.shape[1:] != (32, 32, 3)
        or y.shape != (len(x),)
        or (len(y) and not 0 <= y.min() <= y.max() < num_classes)
    ):
        raise UserError(
            f"{path}: expected x (N, 32, 32, 3) uint8 and y (N,) labels < {num_classes}, got "
            f"x {x.dtype} {x.shape}, y {y.shape}; rebuild it with `dvc repro -f prepare@{dataset}`"
        )
    return x, y


def balanced_split(y, num_classes, validation, limit):
    """Indices of a class-balanced validation set and training subset (limit=None: all the rest)."""
    order = np.random.default_rng(SPLIT_SEED).permutation(len(y))
    by_class = [order[y[order] == c] for c in range(num_classes)]
    v = validation // num_classes
    val = np.concatenate([idx[:v] for idx in by_class])
    rest = [idx[v:] for idx in by_class]
    train = np.concatenate([idx[: limit // num_classes] for idx in rest] if limit else rest)
    return np.sort(train), np.sort(val)


def paths(dataset, activation, batch_norm, seed, experiment=False):
    """The files of one entry (Entry.paths), for code that has the entry's values at hand."""
    return Entry(dataset, activation, batch_norm, seed, experiment).paths
