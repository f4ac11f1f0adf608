"""train@<key> (and train_exp): train one ALL-CNN-C, on Keras' TensorFlow or JAX backend (train.backend).

    python -m stages.train cifar10-elu-True-0     # what `dvc repro train@cifar10-elu-True-0` runs ($DVC_STAGE)

Outputs: <model>.keras (the trained network, which takes raw pixels and loads on either backend),
<model>.json (how training went: epochs, seconds, divergence, backend, device), dvclive/<...>/ (per-epoch
curves). A killed run resumes at the next `dvc repro` from checkpoints/<...>/, its last finished epoch, and
ends with the same weights on CPU (stages/checkpoint.py).
"""

import shutil
import time

import numpy as np

from stages import backend, checkpoint, recipes
from stages.cli import UserError, cli, on_interrupt
from stages.entry import PREPARED, balanced_split, from_command_line, grid_entries, load_split, read_classes
from stages.outputs import atomic_path, write_json
from stages.params import count


def lr_schedule(t, steps, keras):
    lr, total = float(t["learning_rate"]), steps * t["epochs"]  # Keras refuses a YAML integer (1)
    if t["lr_schedule"] == "step":
        bounds = [int(f * total) for f in t["lr_drops"]]
        return (
            keras.optimizers.schedules.PiecewiseConstantDecay(
                bounds, [lr * t["lr_gamma"] ** i for i in range(len(bounds) + 1)]
            )
            if bounds
            else lr
        )
    if t["lr_schedule"] == "cosine":
        return keras.optimizers.schedules.CosineDecay(lr, total)
    return lr


def build_model(entry, params, num_classes, x_train, steps, scope):
    """ALL-CNN-C compiled for training, its optimizer built (its variables must exist to be restored).
    Seeded here, so that every call gives the same initial weights."""
    import keras

    from stages.model import make_net

    m, t = params["model"], params["train"]
    mean, var = x_train.mean(axis=(0, 1, 2)), x_train.var(axis=(0, 1, 2))  # per channel, training images only
    keras.utils.set_random_seed(entry.seed)
    with scope:
        model = make_net(num_classes, entry.activation, entry.batch_norm, m, t["weight_decay"], mean, var)
        lr = lr_schedule(t, steps, keras)
        opt = (
            keras.optimizers.SGD(lr, momentum=float(t["momentum"]))
            if t["optimizer"] == "sgd"
            else keras.optimizers.Adam(lr)
        )
        model.compile(opt, "sparse_categorical_crossentropy", metrics=["accuracy"])
        model.optimizer.build(model.trainable_variables)
    return model


def fingerprint(entry, params, precision, stage):
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
        "code_sha256": checkpoint.code_digest(stage),
    }


def too_few_images(t, n_train, n_all, n_classes, dataset):
    """Why no batch is left: train.validation is held out first, then train.limit takes from the rest."""
    if t["limit"] is not None and n_train == t["limit"] // n_classes * n_classes:
        return (
            f"params.yaml: train.limit = {t['limit']}: gives {n_train} training images of {dataset} (the subset "
            f"is class-balanced: {t['limit'] // n_classes} of each of {n_classes} classes), fewer than "
            f"train.batch_size = {t['batch_size']}; raise train.limit or lower train.batch_size"
        )
    return (
        f"params.yaml: train.validation = {t['validation']}: leaves {n_train} of the {n_all} training images of "
        f"{dataset}, fewer than train.batch_size = {t['batch_size']}; lower train.validation or train.batch_size"
    )


def interrupted_note(ckpt_dir, epochs):
    """The words after "interrupted" when Ctrl-C stops training: the newest checkpoint on disk, which the next run
    resumes from (an epoch may have ended without its checkpoint yet written)."""
    done = checkpoint.newest(ckpt_dir)
    if not done:
        return " before the first epoch ended; `dvc repro` starts it again"
    return f" after epoch {done} of {epochs}; `dvc repro` resumes from the checkpoint"


def queued(entry, params):
    """Models other than this one that `dvc repro` trains at these params (dvc.lock against params.yaml, not
    files on disk): what a user still waits for after this one."""
    return len(recipes.still_to_train(params, entry))


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


def fit(model, per_epoch, data, t, start, seed, val_batch):
    """Trains epochs start+1..t["epochs"]; data = (x_train, y_train, x_val, y_val)."""
    from stages.pipeline import batches

    x_tr, y_tr, x_va, y_va = data
    model.fit(
        batches(x_tr, y_tr, t["batch_size"], seed, t["augment"], start),
        epochs=t["epochs"],
        initial_epoch=start,
        steps_per_epoch=len(y_tr) // t["batch_size"],
        validation_data=(x_va.astype("float32"), y_va) if len(y_va) else None,
        validation_batch_size=val_batch,
        callbacks=[per_epoch],
        shuffle=False,
        verbose=0,
    )  # prints each epoch, stops at a non-finite loss


def summary(entry, t, per_epoch, data, precision, device, start, seconds):
    import keras

    spent = [h["seconds"] for h in per_epoch.history]
    return {
        "dataset": entry.dataset,
        "activation": entry.activation,
        "batch_norm": entry.batch_norm,
        "seed": entry.seed,
        "epochs": t["epochs"],
        "epochs_completed": len(per_epoch.history),
        "diverged": bool(per_epoch.diverged_epoch),
        "diverged_epoch": per_epoch.diverged_epoch,
        "train_images": int(len(data[1])),
        "validation_images": int(len(data[3])),
        "batch_size": t["batch_size"],
        "backend": keras.backend.backend(),
        "precision": precision,
        "device": device,
        "parameters": int(per_epoch.model.count_params()),
        "train_seconds": float(sum(spent)),
        "seconds_per_epoch": float(np.mean(spent)) if spent else None,
        # training speed: epochs after the first when there are some (the first one includes compilation)
        "images_per_second": len(data[1])
        // t["batch_size"]
        * t["batch_size"]
        / float(np.median(spent[1:] or spent))
        if spent
        else None,
        "resumed_from_epoch": start or None,
        "session_seconds": seconds,
    }


def main():
    entry, params = from_command_line(__doc__.splitlines()[0])
    out, t = entry.paths, params["train"]
    classes = read_classes(entry.dataset, params)
    x, y = load_split(entry.dataset, "train", len(classes))
    tr, va = balanced_split(y, len(classes), t["validation"], t["limit"])
    data = (x[tr], y[tr], x[va], y[va])
    steps = len(tr) // t["batch_size"]
    if steps == 0:
        raise UserError(too_few_images(t, len(tr), len(y), len(classes), entry.dataset))
    precision, device, scope = backend.configure(t["precision"], entry.seed)
    from dvclive import Live

    from stages import each_epoch

    build = lambda: build_model(entry, params, len(classes), data[0], steps, scope)  # noqa: E731
    stage = "train_exp" if entry.experiment else "train"
    fp = fingerprint(entry, params, precision, stage)
    if restored(out, fp):
        return
    model, start, history = checkpoint.resume(out["ckpt"], fp, build, steps)
    live = Live(str(out["live"]), save_dvc_exp=False, dvcyaml=None, report=None)
    for logs in history:  # a resumed run's curves start with the epochs already done
        each_epoch.log_epoch(live, logs)
    per_epoch = each_epoch.EachEpoch(
        history,
        live,
        out["ckpt"],
        data[0][: params["train"]["probe_images"]].astype("float32"),
        t["epochs"],
        steps,
        queued(entry, params),
        device != "cpu",
    )
    per_epoch.set_model(model)
    on_interrupt(lambda: interrupted_note(out["ckpt"], t["epochs"]))
    t0 = time.perf_counter()
    if start < t["epochs"]:
        print(
            f"training {out['model']}: {entry.label}, seed {entry.seed}, {len(tr)} train / {len(va)} validation "
            f"images, width {params['model']['width']:g}, {precision}, {params['train']['backend']} on {device}, "
            f"epochs {start + 1}..{t['epochs']}",
            flush=True,
        )
        # the validation pass in evaluate.batch_size batches: inference only, it does not shape the weights
        fit(model, per_epoch, data, t, start, entry.seed, params["evaluate"]["batch_size"])
    live.end()
    if per_epoch.diverged_epoch:
        print(f"warning: loss diverged in epoch {per_epoch.diverged_epoch}; keeping the last finite weights")
        model = build()  # the model as initialised if epoch 1 diverged
        if per_epoch.history:  # the last finite epoch was checkpointed (or resumed from): intact
            model.load_weights(checkpoint.weights(out["ckpt"], len(per_epoch.history)))
    with atomic_path(out["model"]) as tmp:
        model.save(tmp, include_optimizer=False)
    write_json(
        out["summary"], summary(entry, t, per_epoch, data, precision, device, start, time.perf_counter() - t0)
    )
    checkpoint.keep_finished(fp, out)  # for train_exp or a train@<key> of the same fingerprint
    shutil.rmtree(out["ckpt"])  # done: the model is saved, the checkpoint is no longer needed
    done = per_epoch.history
    print(f"saved {out['model']} ({count(len(done), 'epoch')}, {sum(h['seconds'] for h in done):.0f} s)")


if __name__ == "__main__":
    cli(main)
