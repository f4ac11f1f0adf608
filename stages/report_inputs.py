"""What the report reads, checked as the archive reader checks an archive: the files train and evaluate wrote
for each grid entry, against the schema those stages write, before any number reaches a table, a figure or
Vega.

Per entry: metrics/grid/<key>.json (test error, loss, timings), results/grid/<key>.json (classes, confusion
matrix, every test image's label and prediction), models/grid/<key>.json (training images, precision, backend)
and dvclive/grid/<key>/plots/metrics/{train,eval}/<name>.tsv (one curve each). Each file is refused, in one
line naming it and the stage that rebuilds it, when it is over its size limit (before it is parsed), nested or
typed otherwise than its stage writes it, holds a number out of range or not finite, or disagrees with itself
(a confusion matrix that does not sum to the test images, does not give the stated error or is not the one its
predictions give). Text fields must be short plain names: nothing a user could not type reaches markdown,
Vega or a figure's footer. Only known numeric curves are read at all.
"""

import io
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from stages.cli import UserError
from stages.entry import grid_entries

MAX_JSON_BYTES = 16 * 2**20  # a results file of CIFAR-100's 10,000 test images is ~100 KB
MAX_TSV_BYTES = 4 * 2**20  # a curve of 1,000 epochs is ~40 KB
TOKEN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]{0,39}")  # a text field: float32, mixed_bfloat16, jax, ...
ACT = "act"  # the model's activation layers are act1..act9 (stages.model.ACT_PREFIX; a test holds them equal)
CURVE = re.compile(rf"loss|accuracy|learning_rate|seconds|{ACT}\d{{1,2}}_(?:mean|std)")  # each_epoch's names
MAX_LOSS = 28.0  # evaluate clips probabilities at 1e-12: cross-entropy <= -ln(1e-12) = 27.6
MAX_SECONDS = 1e9  # ~32 years
MAX_COUNT = 10**7  # images, epochs


@dataclass
class DatasetInputs:
    """One dataset's checked inputs. rows: a row per trained model (variant, seed, test_error, ...); curves: a
    row per model and epoch (epoch, loss, val_loss, accuracy, ..., act<i>_mean, variant, seed); correct:
    {(variant, seed): bool array of the test images that model got right, in test-set order}."""

    dataset: str
    activations: list  # the grid's, in its order: the order of the figures' colours
    rows: pd.DataFrame
    curves: pd.DataFrame
    correct: dict
    classes: int


# --- value checks: each returns None when the value is fine, else what is allowed ---------------------------


def _number(lo, hi):
    def check(v):
        ok = type(v) in (int, float) and math.isfinite(v) and lo <= v <= hi
        return None if ok else f"a finite number in [{lo:g}, {hi:g}]"

    return check


def _integer(lo, hi):
    return lambda v: None if type(v) is int and lo <= v <= hi else f"an integer in [{lo}, {hi:,}]"


def _boolean(v):
    return None if type(v) is bool else "true or false"


def _token(v):
    ok = isinstance(v, str) and TOKEN.fullmatch(v)
    return None if ok else "a plain name of up to 40 letters, digits and _.+- (e.g. float32)"


def _optional(check):
    return lambda v: None if v is None else check(v)


METRICS = {  # metrics/grid/<key>.json, as evaluate writes it (the keys the report uses)
    "test_error": _number(0, 1),
    "test_loss": _number(0, MAX_LOSS),
    "seconds_per_epoch": _optional(_number(0, MAX_SECONDS)),  # null: diverged in its first epoch
    "train_seconds": _number(0, MAX_SECONDS),
    "diverged": _boolean,
    "epochs": _integer(0, MAX_COUNT),
}
SUMMARY = {  # models/grid/<key>.json, as train writes it
    "train_images": _integer(1, MAX_COUNT),
    "validation_images": _optional(_integer(0, MAX_COUNT)),
    "precision": _optional(_token),
    "backend": _optional(_token),
}


def _bounded_text(path, limit, fix):
    """The UTF-8 text of path, refused unread when over limit bytes (a special file is read to limit + 1)."""
    try:
        with open(path, "rb") as f:
            if Path(path).is_file() and f.seek(0, io.SEEK_END) > limit:
                raise UserError(f"{path}: over {limit // 2**20} MiB, far more than its stage writes; {fix}")
            f.seek(0)
            data = f.read(limit + 1)
    except FileNotFoundError:
        raise UserError(f"{path}: missing; {fix}") from None
    except IsADirectoryError:
        raise UserError(f"{path}: a folder, not a file; {fix}") from None
    if len(data) > limit:
        raise UserError(f"{path}: over {limit // 2**20} MiB, far more than its stage writes; {fix}")
    try:
        return data.decode()
    except UnicodeDecodeError as e:
        raise UserError(f"{path}: not UTF-8 text (byte {e.start}); {fix}") from None


def _not_json(name):
    raise ValueError(f"{name} is not JSON")


def read_object(path, schema, fix):
    """The JSON object in path, checked against schema ({key: check}); other keys are ignored."""
    try:  # NaN and Infinity are Python's extension, not JSON; depth: json's recursion limit (~1,000)
        obj = json.loads(_bounded_text(path, MAX_JSON_BYTES, fix), parse_constant=_not_json)
    except RecursionError:
        raise UserError(f"{path}: nested too deep for what its stage writes; {fix}") from None
    except ValueError as e:
        raise UserError(f"{path}: not JSON ({type(e).__name__}: {str(e)[:80]}); {fix}") from None
    if not isinstance(obj, dict):
        raise UserError(f"{path}: not what its stage writes (a JSON object); {fix}")
    for key, check in schema.items():
        if key not in obj and check(None) is not None:
            raise UserError(f"{path}: not what its stage writes (no {key!r}); {fix}")
        if (allowed := check(obj.get(key))) is not None:
            raise UserError(f"{path}: {key} must be {allowed}; {fix}")
    return obj


def _refuse(path, what, fix):
    raise UserError(f"{path}: {what}; {fix}")


def _classes(path, r, fix):
    """The number of classes of a results file: its list of distinct, printable class names."""
    c = r.get("classes")
    if not (
        isinstance(c, list)
        and 2 <= len(c) <= 1000
        and all(isinstance(x, str) and 0 < len(x) <= 64 and x.isprintable() for x in c)
        and len(set(c)) == len(c)
    ):  # as the archive reader takes them (stages/cifar.py); the report counts them, never prints them
        _refuse(
            path, "classes must be a list of 2 to 1,000 distinct printable names of up to 64 characters", fix
        )
    return len(c)


def _confusion(path, r, n, fix):
    """The n x n confusion matrix of a results file (rows: true class, columns: predicted), int64."""
    m = r.get("confusion")
    if not (
        isinstance(m, list)
        and len(m) == n
        and all(isinstance(row, list) and len(row) == n for row in m)
        and all(type(x) is int and 0 <= x <= MAX_COUNT for row in m for x in row)
    ):
        _refuse(path, f"confusion must be a {n} x {n} matrix of counts (a row and a column per class)", fix)
    m = np.array(m, np.int64)
    if m.sum() == 0:
        _refuse(path, "confusion counts no test image", fix)
    return m


def _correct(path, r, confusion, fix):
    """Which test images the model got right (bool array, test-set order) from the results' labels and
    predictions, checked against its confusion matrix; None where the file has neither."""
    if "labels" not in r and "predictions" not in r:
        return None
    n, images = len(confusion), int(confusion.sum())
    for key in ("labels", "predictions"):
        v = r.get(key)
        if not (isinstance(v, list) and len(v) == images and all(type(x) is int and 0 <= x < n for x in v)):
            _refuse(
                path, f"{key} must be a list of {images:,} class indices in [0, {n}), one per test image", fix
            )
    y, p = np.array(r["labels"]), np.array(r["predictions"])
    counted = np.zeros_like(confusion)
    np.add.at(counted, (y, p), 1)
    if not np.array_equal(counted, confusion):
        _refuse(path, "confusion is not the matrix its labels and predictions give", fix)
    return y == p


def read_results(path, metrics, fix):
    """(classes, confusion, correct) of a results file, checked against itself and against the test error
    and test images its metrics file states."""
    r = read_object(path, {}, fix)
    n = _classes(path, r, fix)
    confusion = _confusion(path, r, n, fix)
    images = int(confusion.sum())
    counted = 1 - confusion.trace() / images
    if abs(counted - metrics["test_error"]) > 0.5 / images:  # within half an image: rounding only
        _refuse(
            path,
            f"confusion gives a test error of {counted:.4f}, its metrics file {metrics['test_error']:.4f}",
            fix,
        )
    if metrics.get("test_images", images) != images:
        _refuse(
            path, f"confusion counts {images:,} test images, its metrics file {metrics['test_images']}", fix
        )
    return n, confusion, _correct(path, r, confusion, fix)


def read_curve(path, column, fix):
    """One dvclive curve (a TSV of step and path's stem) as a one-column frame indexed by step; numbers only
    (an infinity becomes NaN: no text, no `inf`, reaches plots/curves and Vega)."""
    name = Path(path).stem
    try:
        df = pd.read_csv(io.StringIO(_bounded_text(path, MAX_TSV_BYTES, fix)), sep="\t")
        if "step" not in df or name not in df:
            raise ValueError(f"no step or {name} column")
        step, values = (pd.to_numeric(df[k], errors="raise").astype(float) for k in ("step", name))
    except (ValueError, TypeError) as e:
        raise UserError(f"{path}: not a curve as dvclive writes it ({str(e)[:80]}); {fix}") from None
    if not (step.between(0, MAX_COUNT).all() and (step == step.round()).all() and step.is_unique):
        _refuse(path, f"step must be distinct whole numbers in [0, {MAX_COUNT:,}]", fix)
    values = values.where(np.isfinite(values))
    return pd.DataFrame({column: values.to_numpy()}, index=pd.Index(step.astype(int), name="step"))


def read_curves(live_dir, fix):
    """dvclive's curves (plots/metrics/{train,eval}/<name>.tsv, known names only) as one frame, a row per
    epoch (epoch counted from 1) and a column per curve (val_<name> for eval), plus act_mean: the mean of the
    hidden layers' mean activations (the last activation layer's is the class scores)."""
    frames = []
    for split in ("eval", "train"):  # plots/curves keeps its column order: val_* first
        for f in sorted(Path(live_dir, "plots/metrics", split).glob("*.tsv")):
            if CURVE.fullmatch(f.stem):
                frames.append(read_curve(f, f"val_{f.stem}" if split == "eval" else f.stem, fix))
    missing = [k for k in ("loss", "accuracy") if not any(k in fr or f"val_{k}" in fr for fr in frames)]
    if missing:  # an interrupted or damaged training: every model must bring its curves
        raise UserError(
            f"{live_dir}: no {missing[0]} curve (dvclive's plots/metrics/*/{missing[0]}.tsv); {fix}"
        )
    df = pd.concat(frames, axis=1).sort_index().reset_index().rename(columns={"step": "epoch"})
    df["epoch"] += 1  # dvclive counts steps from 0; epochs are counted from 1
    df["act_mean"] = df[layer_means(df)[:-1]].mean(axis=1)
    return df


def layer_means(c):
    """The curves' per-layer mean activation columns (act1_mean .. act9_mean), in layer order."""
    found = (k for k in c if re.fullmatch(rf"{ACT}\d+_mean", k))
    return sorted(found, key=lambda k: int(k[len(ACT) : -len("_mean")]))


def read_entry(e):
    """(row, curves, correct) of one grid entry, every file checked."""
    p = e.paths
    evaluate, train = (f"rebuild it: dvc repro -f {stage}@{e.key}" for stage in ("evaluate", "train"))
    m = read_object(p["metrics"], {**METRICS, "test_images": _optional(_integer(1, MAX_COUNT))}, evaluate)
    summary = read_object(p["summary"], SUMMARY, train)
    classes, confusion, correct = read_results(p["results"], m, evaluate)
    row = {
        "dataset": e.dataset,
        "variant": e.label,
        "activation": e.activation,
        "batch_norm": e.batch_norm,
        "seed": e.seed,
        **{k: m[k] for k in METRICS},
        "test_images": int(confusion.sum()),
        "test_errors": int(confusion.sum() - confusion.trace()),
        "classes": classes,
        **{k: summary.get(k) for k in SUMMARY},
        "results": str(p["results"]),
    }
    curves = read_curves(p["live"], train).assign(variant=e.label, seed=e.seed)
    return row, curves, correct


def collect(grid):
    """{dataset: DatasetInputs} of every entry of the grid (params.yaml's grid: section), in grid order."""
    out = {}
    for ds in grid["dataset"]:
        entries = [e for e in grid_entries({"grid": grid}) if e.dataset == ds]
        rows, curves, correct = [], [], {}
        for e in entries:
            row, c, right = read_entry(e)
            rows.append(row)
            curves.append(c.assign(activation=e.activation, batch_norm=e.batch_norm))
            if right is not None:
                correct[e.label, e.seed] = right
        rows = pd.DataFrame(rows)
        _same_test_set(rows, entries)
        out[ds] = DatasetInputs(
            ds,
            list(grid["activation"]),
            rows,
            pd.concat(curves, ignore_index=True),
            correct,
            int(rows.classes.iloc[0]),
        )
    return out


def _same_test_set(rows, entries):
    """Every model of a dataset was tested on the same images: as many classes and test images (McNemar
    compares them image by image)."""
    for col in ("classes", "test_images"):
        odd = rows[rows[col] != rows[col].iloc[0]]
        if len(odd):
            i = odd.index[0]
            _refuse(
                rows.results[i],
                f"{rows[col][i]:,} {col.replace('_', ' ')} where {rows.results[0]} has {rows[col].iloc[0]:,}",
                f"rebuild it: dvc repro -f evaluate@{entries[i].key}",
            )
