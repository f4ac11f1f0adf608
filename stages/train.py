"""train@<key> (and train_exp): train one ALL-CNN-C, on Keras' TensorFlow or JAX backend (train.backend).

    python -m stages.train cifar10-elu-True-0    # what `dvc repro train@cifar10-elu-True-0` runs ($DVC_STAGE)

Outputs: <model>.keras (the trained network, which takes raw pixels and loads on either backend),
<model>.json (how training went: epochs, seconds, divergence, backend, device), dvclive/<...>/ (per-epoch
curves). A killed run resumes at the next `dvc repro` from checkpoints/<...>/, its last finished epoch, and
ends with the same weights on CPU (stages/checkpoint.py).
"""

import functools
import shutil
import time
from typing import NamedTuple

import numpy as np

from stages import backend, checkpoint
from stages.cli import UserError, cli, on_interrupt
from stages.datasets import split_error
from stages.entry import PREPARED, balanced_split, from_command_line, grid_entries, load_split, read_classes
from stages.outputs import atomic_path, write_json
from stages.params import PARAMS, count
from stages.schedules import learning_rate


class Split(NamedTuple):
    """An entry's training images, split class-balanced: x (N, 32, 32, 3) uint8, y (N,) int64 labels."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray  # held out first (train.validation), the same for every variant and seed
    y_val: np.ndarray


def load_data(dataset, t, classes):
    """The prepared training split of dataset as a Split: train.validation held out, then train.limit's
    subset of the rest; refused in one line when not even one batch of training images is left."""
    x, y = load_split(dataset, "train", classes)
    tr, va = balanced_split(y, classes, t["validation"], t["limit"])
    problem = split_error(dataset, t, classes, images=len(y), rest=len(y) - len(va), train_images=len(tr))
    if problem:
        raise UserError(f"{PARAMS}: {problem}")
    return Split(x[tr], y[tr], x[va], y[va])


def build_model(*, entry, params, classes, x_train, steps, scope):
    """ALL-CNN-C compiled for training, its optimizer built (its variables must exist to be restored).
    Seeded here, so that every call gives the same initial weights."""
    import keras

    from stages.model import make_net

    m, t = params["model"], params["train"]
    mean, var = x_train.mean(axis=(0, 1, 2)), x_train.var(axis=(0, 1, 2))  # per channel, training images only
    keras.utils.set_random_seed(entry.seed)
    with scope:
        model = make_net(classes, entry.activation, entry.batch_norm, m, t["weight_decay"], mean, var)
        lr = learning_rate(t, steps, keras)
        opt = (
            keras.optimizers.SGD(lr, momentum=float(t["momentum"]))
            if t["optimizer"] == "sgd"
            else keras.optimizers.Adam(lr)
        )
        model.compile(opt, "sparse_categorical_crossentropy", metrics=["accuracy"])
        model.optimizer.build(model.trainable_variables)
    return model


def fingerprint(entry, params, precision):
    """Everything that shapes the weights; a checkpoint is resumed only under the same fingerprint."""
    t = {k: v for k, v in params["train"].items() if k != "seed"}
    return {
        "model": params["model"],
        "train": t,
        "seed": entry.seed,
        "dataset": entry.dataset,
        "activation": entry.activation,
        "batch_norm": entry.batch_norm,
        "precision": precision,
        "data_sha256": checkpoint.sha256(PREPARED / entry.dataset / "train.npz"),
        "code_sha256": checkpoint.code_digest("train_exp" if entry.experiment else "train"),
    }


def interrupted_note(ckpt_dir, epochs):
    """The words after "interrupted" when Ctrl-C stops training: the newest checkpoint on disk, which the next
    run resumes from (an epoch may have ended without its checkpoint yet written)."""
    done = checkpoint.newest(ckpt_dir)
    if not done:
        return " before the first epoch ended; `dvc repro` starts it again"
    return f" after epoch {done} of {epochs}; `dvc repro` resumes from the checkpoint"


def queued(entry, params):
    """Models of the grid, other than this one, not trained yet: what a user still waits for after this
    one."""
    return sum(not e.paths["model"].exists() for e in grid_entries(params) if e != entry)


def restored(out, fp):
    """True when a model of this exact fingerprint was trained before, by train_exp or a train@<key> (at
    the defaults the experiment's entry is the grid's cifar10-relu-False-0): its outputs are copied, not
    trained again."""
    kept = checkpoint.restore_finished(fp, out)
    if kept:
        print(
            f"restored {out['model']} from {kept}: the same model (params, seed, data, code) trained before"
        )
    return kept is not None


def recorder(entry, params, data, history, steps, on_gpu):
    """The per-epoch callback (stages/each_epoch.py), its dvclive curves holding the epochs already done."""
    from dvclive import Live

    from stages import each_epoch

    t = params["train"]
    live = Live(str(entry.paths["live"]), save_dvc_exp=False, dvcyaml=None, report=None)
    for logs in history:  # a resumed run's curves start with the epochs already done
        each_epoch.log_epoch(live, logs)
    return each_epoch.EachEpoch(
        history=history,
        live=live,
        ckpt_dir=entry.paths["ckpt"],
        probe_x=data.x_train[: t["probe_images"]].astype("float32"),  # (probe_images, 32, 32, 3)
        epochs=t["epochs"],
        steps=steps,
        queued=queued(entry, params),
        on_gpu=on_gpu,
    )


def about(entry, params, data, session):
    """What is trained, on what: 'elu+bn, seed 0, 45000 train / 5000 validation images, width 1, ...'."""
    t, start = params["train"], session["resumed_from_epoch"] or 0
    return (
        f"{entry.label}, seed {entry.seed}, {len(data.y_train)} train / {len(data.y_val)} validation images, "
        f"width {params['model']['width']:g}, {session['precision']}, {t['backend']} on "
        f"{session['device']}, epochs {start + 1}..{t['epochs']}"
    )


def fit(model, per_epoch, data, params, start, seed):
    """Trains epochs start+1..train.epochs; prints each epoch, stops at a non-finite loss (per_epoch)."""
    from stages.pipeline import batches

    t = params["train"]
    model.fit(
        batches(data.x_train, data.y_train, t["batch_size"], seed, t["augment"], start),
        epochs=t["epochs"],
        initial_epoch=start,
        steps_per_epoch=len(data.y_train) // t["batch_size"],
        validation_data=(data.x_val.astype("float32"), data.y_val) if len(data.y_val) else None,
        # inference only, it does not shape the weights: in evaluate.batch_size batches
        validation_batch_size=params["evaluate"]["batch_size"],
        callbacks=[per_epoch],
        shuffle=False,
        verbose=0,
    )


def last_finite(model, per_epoch, build, ckpt_dir):
    """The model to save: the trained one, or after a divergence the last finite epoch's weights."""
    if not per_epoch.diverged_epoch:
        return model
    print(f"warning: loss diverged in epoch {per_epoch.diverged_epoch}; keeping the last finite weights")
    model = build()  # the model as initialised if epoch 1 diverged
    if per_epoch.history:  # the last finite epoch was checkpointed (or resumed from): intact
        model.load_weights(checkpoint.weights(ckpt_dir, len(per_epoch.history)))
    return model


def summary(entry, t, per_epoch, data, session):
    """How training went: models/<...>.json. session: precision, device, resumed_from_epoch and
    session_seconds, this process's."""
    import keras

    spent = [h["seconds"] for h in per_epoch.history]
    trained = len(data.y_train) // t["batch_size"] * t["batch_size"]  # images per epoch: whole batches
    return {
        "dataset": entry.dataset,
        "activation": entry.activation,
        "batch_norm": entry.batch_norm,
        "seed": entry.seed,
        "epochs": t["epochs"],
        "epochs_completed": len(per_epoch.history),
        "diverged": bool(per_epoch.diverged_epoch),
        "diverged_epoch": per_epoch.diverged_epoch,
        "train_images": int(len(data.y_train)),
        "validation_images": int(len(data.y_val)),
        "batch_size": t["batch_size"],
        "backend": keras.backend.backend(),
        "parameters": int(per_epoch.model.count_params()),
        "train_seconds": float(sum(spent)),
        "seconds_per_epoch": float(np.mean(spent)) if spent else None,
        # training speed: epochs after the first when there are some (the first one includes compilation)
        "images_per_second": trained / float(np.median(spent[1:] or spent)) if spent else None,
        **session,
    }


def main():
    entry, params = from_command_line(__doc__.splitlines()[0])
    out, t = entry.paths, params["train"]
    classes = len(read_classes(entry.dataset, params))
    data = load_data(entry.dataset, t, classes)
    steps = len(data.y_train) // t["batch_size"]  # per epoch: the last partial batch is left out
    precision, device, scope = backend.configure(t["precision"], entry.seed)
    build = functools.partial(
        build_model,
        entry=entry,
        params=params,
        classes=classes,
        x_train=data.x_train,
        steps=steps,
        scope=scope,
    )
    fp = fingerprint(entry, params, precision)
    if restored(out, fp):
        return
    model, start, history = checkpoint.resume(out["ckpt"], fp, build, steps)
    session = {"precision": precision, "device": device, "resumed_from_epoch": start or None}
    per_epoch = recorder(entry, params, data, history, steps, on_gpu=device != "cpu")
    per_epoch.set_model(model)
    on_interrupt(lambda: interrupted_note(out["ckpt"], t["epochs"]))
    t0 = time.perf_counter()
    if start < t["epochs"]:
        print(f"training {out['model']}: {about(entry, params, data, session)}", flush=True)
        fit(model, per_epoch, data, params, start, entry.seed)
    per_epoch.live.end()
    model = last_finite(model, per_epoch, build, out["ckpt"])
    with atomic_path(out["model"]) as tmp:
        model.save(tmp, include_optimizer=False)
    session["session_seconds"] = time.perf_counter() - t0
    write_json(out["summary"], summary(entry, t, per_epoch, data, session))
    checkpoint.keep_finished(fp, out)  # for train_exp or a train@<key> of the same fingerprint
    shutil.rmtree(out["ckpt"])  # done: the model is saved, the checkpoint is no longer needed
    done = per_epoch.history
    print(f"saved {out['model']} ({count(len(done), 'epoch')}, {sum(h['seconds'] for h in done):.0f} s)")


if __name__ == "__main__":
    cli(main)
