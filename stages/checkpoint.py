"""Per-epoch checkpoints of a training run, so that a killed run resumes to the weights an uninterrupted one
reaches: checkpoints/<entry>/epoch-NNNN/{model.weights.h5, history.json} plus config.json, the fingerprint.

A checkpoint is resumed only if its fingerprint equals the run's: the params, the seed, the precision, the
backend, the prepared data's sha256 and the sha256 of every source file the train stage lists in dvc.yaml
(code changed since the kill: start over, as dvc.lock records the new code). A checkpoint whose weights'
checksum, epoch count or optimizer step count disagrees with its history is damaged: never loaded.

Whatever a power cut, a full disk or a hand leaves there never fails the stage: an unreadable config.json
(empty, garbage, a folder), an unreadable history.json (100,000 levels deep), a symbolic link or a file where
a folder belongs are set aside (renamed damaged-<name> beside it, replacing an older one) with a warning, and
training starts over (or resumes from an older intact checkpoint).

A finished model is kept under its fingerprint in checkpoints/finished/ (keep_finished): a later train stage
of the same fingerprint copies it (restore_finished) instead of training it again. Deleting the folder is
always safe: it only costs that training.
"""

import errno
import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np
import yaml

from stages.outputs import atomic_path, digest, write_json

KEEP = 2  # newest checkpoints kept: one may be damaged later (disk full, a kill mid-write)
JSON_MAX = 64 << 20  # bytes of a config.json or history.json read at most (10,000 epochs of history: ~2 MB)
DAMAGED = (OSError, ValueError, KeyError, TypeError, AttributeError, RecursionError)  # what bad JSON raises


def read_json(path):
    """A checkpoint's JSON file, at most JSON_MAX bytes of it (a longer one raises ValueError)."""
    with open(path, "rb") as f:
        raw = f.read(JSON_MAX + 1)
    if len(raw) > JSON_MAX:
        raise ValueError(f"more than {JSON_MAX} bytes")
    return json.loads(raw.decode("utf-8"))


def set_aside(path, warning):
    """Renames path (a folder, file or link: a link's target is never touched) to damaged-<name> beside it,
    replacing an older one, and prints the warning: the run goes on from what is left."""
    aside = path.parent / f"damaged-{path.name}"
    if aside.is_dir() and not aside.is_symlink():
        shutil.rmtree(aside)
    elif aside.exists() or aside.is_symlink():
        aside.unlink()
    os.rename(path, aside)
    print(f"{warning} (set aside as {aside})", flush=True)


def _real_folder(ckpt_dir):
    """ckpt_dir and, given relative to the project (checkpoints/grid/<entry>), each folder above it made a
    real folder: a symbolic link or a file in the way is set aside (writing through a link would write outside
    the project)."""
    above = [] if ckpt_dir.is_absolute() else list(ckpt_dir.parents)[:-1]  # never above the project
    for part in reversed([ckpt_dir, *above]):
        if part.is_symlink() or (part.exists() and not part.is_dir()):
            set_aside(
                part, f"warning: {part}: a symbolic link or a file where a folder belongs; starting over"
            )
    ckpt_dir.mkdir(parents=True, exist_ok=True)


# finished models by fingerprint: a model that train_exp and a train@<key> would both train (the experiment's
# entry equal to a grid entry, as at the defaults) is trained once and copied for the other
FINISHED = Path("checkpoints/finished")


def sha256(path):
    return digest(path, "sha256")


def code_digest(stage):
    """sha256 of every .py file that dvc.yaml lists as a dependency of `stage` (train or train_exp)."""
    deps = yaml.safe_load(Path("dvc.yaml").read_text(encoding="utf-8"))["stages"][stage]["deps"]
    return {d: sha256(d) for d in sorted(deps) if d.endswith(".py")}


def seed_states(model):
    """The Dropout layers' random-number states: save_weights() leaves them out, yet a resumed run needs them
    to draw the masks an uninterrupted run would draw; history.json keeps them."""
    return [v for v in model.variables if v.name == "seed_generator_state"]


def _intact(d, fingerprint, model, steps_per_epoch):
    """The history of checkpoint folder d if it is whole and consistent (and the model then holds its
    weights)."""
    meta = read_json(d / "history.json")
    epoch, history = meta["epoch"], meta["history"]
    if (
        sha256(d / "model.weights.h5") != meta["weights_sha256"]
        or d.name != f"epoch-{epoch:04d}"
        or len(history) != epoch
        or not 0 < epoch <= fingerprint["train"]["epochs"]
    ):
        return None
    model.load_weights(d / "model.weights.h5")  # model and optimizer (momentum, step count)
    if int(np.asarray(model.optimizer.iterations)) != epoch * steps_per_epoch:
        return None  # weights of another epoch than the history claims
    states = meta["seed_states"]
    for v, value in zip(seed_states(model), states, strict=True):
        v.assign(np.array(value, dtype=v.dtype))
    return history


def resume(ckpt_dir, fingerprint, build, steps_per_epoch):
    """(model, epoch, history): the newest intact checkpoint made with this exact fingerprint loaded into a
    model from build() (built, compiled, optimizer built), or build()'s fresh model, (…, 0, []) when there is
    none.
    Checkpoints of another fingerprint are deleted; damaged ones are set aside (set_aside)."""
    _real_folder(ckpt_dir)
    config = ckpt_dir / "config.json"
    try:
        same = config.exists() and read_json(config) == fingerprint
    except DAMAGED as e:
        set_aside(ckpt_dir, f"warning: {config}: unreadable ({type(e).__name__}); starting over")
        same = False
    if not same:
        shutil.rmtree(ckpt_dir, ignore_errors=True)  # another configuration's: never resume from it
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        write_json(config, fingerprint)
        return build(), 0, []
    model = build()
    for d in sorted(ckpt_dir.glob("epoch-*"), reverse=True):
        if d.is_symlink() or not d.is_dir():
            set_aside(d, f"warning: {d}: a symbolic link or a file where a checkpoint belongs; ignoring it")
            continue
        try:
            history = _intact(d, fingerprint, model, steps_per_epoch)
        except DAMAGED:
            history = None
        if history is not None:
            print(f"resuming after epoch {len(history)} from {d}", flush=True)
            return model, len(history), history
        set_aside(d, f"warning: {d} is damaged (checksum, epoch count or step count disagree); ignoring it")
        model = build()  # it may hold part of the damaged checkpoint
    return model, 0, []


def newest(ckpt_dir):
    """The epoch of the newest checkpoint written whole (atomic_path renames a finished one into place); 0:
    none."""
    return max(
        (int(d.name.split("-")[1]) for d in Path(ckpt_dir).glob("epoch-[0-9]*") if d.is_dir()), default=0
    )


def weights(ckpt_dir, epoch):
    return ckpt_dir / f"epoch-{epoch:04d}" / "model.weights.h5"


def _room_for(ckpt_dir, model):
    """Refuses (ENOSPC, one line through stages.cli) a checkpoint the disk cannot hold: h5py, out of space in
    the middle of a file, raised from its destructors and then crashed the interpreter (a segmentation
    fault)."""
    need = 2 * sum(
        int(np.prod(v.shape)) * np.dtype(v.dtype).itemsize
        for v in [*model.variables, *model.optimizer.variables]
    ) + (1 << 20)
    free = shutil.disk_usage(ckpt_dir).free
    if free < need:
        raise OSError(errno.ENOSPC, f"{free} bytes free, a checkpoint needs about {need}", str(ckpt_dir))


def save(ckpt_dir, model, history):
    """Checkpoint of the epoch just finished (len(history)); older ones beyond KEEP are removed."""
    import keras

    _room_for(ckpt_dir, model)
    epoch = len(history)
    with atomic_path(ckpt_dir / f"epoch-{epoch:04d}", directory=True) as d:
        model.save_weights(d / "model.weights.h5")
        (d / "history.json").write_text(
            json.dumps(
                {
                    "epoch": epoch,
                    "weights_sha256": sha256(d / "model.weights.h5"),
                    "history": history,
                    "seed_states": [keras.ops.convert_to_numpy(v).tolist() for v in seed_states(model)],
                }
            ),
            encoding="utf-8",
        )
    for old in sorted(ckpt_dir.glob("epoch-*"))[:-KEEP]:
        shutil.rmtree(old)


def _finished(fingerprint):
    """The store's folder for a fingerprint: checkpoints/finished/<16 hex digits of its sha256>."""
    return FINISHED / hashlib.sha256(json.dumps(fingerprint, sort_keys=True).encode()).hexdigest()[:16]


def keep_finished(fingerprint, paths):
    """Copies a finished model's outputs (paths: Entry.paths) into the store under its fingerprint. Best
    effort: the stage's own outputs are written already, so a store that cannot take it (a full disk, two
    parallel workers keeping the same model at once) costs a later training, never this stage."""
    folder = _finished(fingerprint)
    try:
        with atomic_path(folder, directory=True) as d:
            shutil.copy(paths["model"], d / "model.keras")
            shutil.copy(paths["summary"], d / "summary.json")
            shutil.copytree(paths["live"], d / "live")
            write_json(d / "fingerprint.json", fingerprint)
    except Exception as e:  # noqa: BLE001 - see above
        print(
            f"warning: {folder}: the finished model not kept there ({e}); nothing else is affected",
            flush=True,
        )


def restore_finished(fingerprint, paths):
    """The folder a model of this fingerprint was kept in, its outputs copied to paths; None if there is none.
    Same fingerprint, same weights: the params, seed, precision, backend, data and code all agree."""
    d = _finished(fingerprint)
    try:
        if read_json(d / "fingerprint.json") != fingerprint or not all(
            (d / name).exists() for name in ("model.keras", "summary.json", "live")
        ):
            return None
        with atomic_path(paths["live"], directory=True) as live:
            shutil.copytree(d / "live", live, dirs_exist_ok=True)
        for name, out in (("model.keras", paths["model"]), ("summary.json", paths["summary"])):
            with atomic_path(out) as tmp:
                shutil.copy(d / name, tmp)
    except DAMAGED:  # none kept, or not whole: train it (which rewrites every output)
        return None
    return d
