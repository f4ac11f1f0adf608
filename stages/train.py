"""train@<dataset>-<activation>-<batch_norm>-<seed> (and train_exp): train one ALL-CNN-C.

Outputs: <model>.keras (the trained network, which takes raw pixels), <model>.json (how training went:
epochs, seconds, divergence), dvclive/<...>/ (per-epoch curves). A killed run resumes at the next
`dvc repro` from checkpoints/<...>/, its last finished epoch, and ends with the same weights on CPU.
"""
import argparse
import hashlib
import json
import shutil
import time
from pathlib import Path

import numpy as np

from stages.outputs import atomic_path, write_json
from stages.params import DATASETS, NAME, UserError, cli, load

SPLIT_SEED = 0  # the train/validation split and the subset are the same for every variant and seed


def paths(dataset, activation, batch_norm, seed, experiment=False):
    """One model's files; the experiment's own model has fixed names so that `dvc exp` can compare them."""
    rel = "experiment" if experiment else f"grid/{dataset}/{activation}-{str(batch_norm).lower()}-{seed}"
    return {"model": Path(f"models/{rel}.keras"), "summary": Path(f"models/{rel}.json"),
            "live": Path("dvclive", rel), "ckpt": Path("checkpoints", rel),
            "metrics": Path(f"metrics/{rel}.json"), "results": Path(f"results/{rel}.json")}


def load_split(path, num_classes=None):
    """x (N, 32, 32, 3) uint8 and y (N,) int64 from a prepared .npz; damaged files are refused, never used."""
    try:
        with np.load(path) as f:
            x, y = f["x"], f["y"]
    except Exception as e:
        raise UserError(f"{path}: damaged or unreadable ({type(e).__name__}: {e}); rebuild it with "
                        f"`dvc repro -f prepare@{Path(path).parent.name}` or restore it with `dvc checkout`")
    if x.dtype != np.uint8 or x.shape[1:] != (32, 32, 3) or y.shape != (len(x),) or \
            (num_classes and len(y) and not 0 <= y.min() <= y.max() < num_classes):
        raise UserError(f"{path}: expected x (N, 32, 32, 3) uint8 and y (N,) labels < {num_classes}, got "
                        f"x {x.dtype} {x.shape}, y {y.shape}; rebuild it with `dvc repro -f prepare@...`")
    return x, y


def balanced_split(y, num_classes, validation, limit):
    """Indices of a class-balanced validation set and training subset (limit=None: all the rest)."""
    order = np.random.default_rng(SPLIT_SEED).permutation(len(y))
    by_class = [order[y[order] == c] for c in range(num_classes)]
    v = validation // num_classes
    val = np.concatenate([idx[:v] for idx in by_class])
    rest = [idx[v:] for idx in by_class]
    train = np.concatenate([idx[:limit // num_classes] for idx in rest] if limit else rest)
    return np.sort(train), np.sort(val)


def choose_precision(precision, tf):
    if precision != "auto":
        return precision
    if tf.config.list_physical_devices("GPU"):
        return "mixed_float16"
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    return "mixed_bfloat16" if ("avx512_bf16" in flags or "amx_bf16" in flags) else "float32"


def lr_schedule(t, steps, keras):
    lr, total = float(t["learning_rate"]), steps * t["epochs"]  # Keras refuses a YAML integer (1)
    if t["lr_schedule"] == "step":
        bounds = [int(f * total) for f in t["lr_drops"]]
        return keras.optimizers.schedules.PiecewiseConstantDecay(
            bounds, [lr * t["lr_gamma"] ** i for i in range(len(bounds) + 1)]) if bounds else lr
    if t["lr_schedule"] == "cosine":
        return keras.optimizers.schedules.CosineDecay(lr, total)
    return lr


def input_pipeline(x, y, batch_size, seed, augment, tf, first_epoch=0):
    """Batches of (float32 images, labels) for every epoch from first_epoch on.

    Epoch e is shuffled (and augmented) by stateless ops keyed on (seed, e), so a resumed run sees exactly
    the batches an uninterrupted one would have seen; no iterator state needs saving.
    """
    n = len(y)
    x, y = tf.constant(x), tf.constant(y)

    def one_epoch(e):
        order = tf.random.experimental.stateless_shuffle(tf.range(n), seed=tf.stack([seed, e]))
        ds = tf.data.Dataset.from_tensor_slices(order)
        if augment:  # flips and shifts of up to 4 px (zero padding), per image
            def aug(i):
                s = tf.stack([seed, e * n + tf.cast(i, tf.int64)])
                img = tf.image.stateless_random_flip_left_right(tf.gather(x, i), s)
                img = tf.image.pad_to_bounding_box(img, 4, 4, 40, 40)
                return tf.image.stateless_random_crop(img, (32, 32, 3), s + 1), tf.gather(y, i)
            return ds.map(aug, deterministic=True).batch(batch_size, drop_remainder=True)
        return ds.batch(batch_size, drop_remainder=True).map(lambda i: (tf.gather(x, i), tf.gather(y, i)))

    epochs = tf.data.Dataset.range(first_epoch, 1 << 30)  # fit() stops it after the last epoch
    return epochs.flat_map(one_epoch).map(lambda a, b: (tf.cast(a, tf.float32), b)).prefetch(tf.data.AUTOTUNE)


def _sha256(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def seed_states(model):
    """The Dropout layers' random-number states. save_weights() leaves them out, yet a resumed run needs them
    to draw the masks an uninterrupted run would draw; the checkpoint keeps them in its history.json."""
    return [v for v in model.variables if v.name == "seed_generator_state"]


def latest_checkpoint(ckpt_dir, fingerprint):
    """(epoch, weights path, history) of the newest intact checkpoint made with this exact configuration."""
    config = ckpt_dir / "config.json"
    if not config.exists() or json.loads(config.read_text()) != fingerprint:
        shutil.rmtree(ckpt_dir, ignore_errors=True)  # another configuration's: never resume from it
        return 0, None, []
    for d in sorted(ckpt_dir.glob("epoch-*"), reverse=True):
        try:
            meta = json.loads((d / "history.json").read_text())
            if _sha256(d / "model.weights.h5") == meta["weights_sha256"]:
                return meta["epoch"], d / "model.weights.h5", meta["history"]
        except (OSError, ValueError, KeyError):
            pass
        print(f"warning: {d} is damaged (checksum mismatch or unreadable); ignoring it")
    return 0, None, []


def entry(description):
    """The command line of train and evaluate: one grid entry, or --experiment for the experiment's own model.
    Returns the parsed arguments, the entry's paths(), and the prepared data's folder and class names."""
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("dataset", choices=DATASETS)
    ap.add_argument("activation")
    ap.add_argument("batch_norm", choices=["true", "false", "True", "False"])  # DVC writes Python's True/False
    ap.add_argument("seed", type=int)
    ap.add_argument("--experiment", action="store_true", help="the experiment's own model (fixed file names)")
    a = ap.parse_args()
    if not NAME.fullmatch(a.activation):
        raise UserError(f"activation {a.activation!r}: must be a plain lower-case name")
    a.batch_norm = a.batch_norm.lower() == "true"
    data_dir = Path("data/prepared", a.dataset)
    if not (data_dir / "classes.json").is_file():
        raise UserError(f"{data_dir}/classes.json: missing; prepare the data first: dvc repro prepare@{a.dataset}")
    classes = json.loads((data_dir / "classes.json").read_text())
    return a, paths(a.dataset, a.activation, a.batch_norm, a.seed, a.experiment), data_dir, classes


def main():
    a, out, data_dir, classes = entry(__doc__.splitlines()[0])
    params = load()
    m, t = params["model"], params["train"]
    x_all, y_all = load_split(data_dir / "train.npz", len(classes))
    tr, va = balanced_split(y_all, len(classes), t["validation"], t["limit"])

    import keras
    import tensorflow as tf
    from dvclive import Live
    from dvclive.keras import DVCLiveCallback

    from stages.model import make_net

    precision = choose_precision(t["precision"], tf)
    keras.mixed_precision.set_dtype_policy(precision)
    keras.utils.set_random_seed(a.seed)  # Python, NumPy and TF: weights, dropout
    tf.config.experimental.enable_op_determinism()
    gpus = tf.config.list_physical_devices("GPU")
    strategy = tf.distribute.MirroredStrategy() if len(gpus) > 1 else tf.distribute.get_strategy()

    x_tr, y_tr = x_all[tr], y_all[tr]
    mean, var = x_tr.mean(axis=(0, 1, 2)), x_tr.var(axis=(0, 1, 2))  # per-channel, from training images only
    steps = len(tr) // t["batch_size"]
    if steps == 0:
        raise UserError(f"train.batch_size = {t['batch_size']}: larger than the {len(tr)} training images")
    with strategy.scope():
        model = make_net(len(classes), a.activation, a.batch_norm, m, t["weight_decay"], mean, var)
        lr = lr_schedule(t, steps, keras)
        opt = keras.optimizers.SGD(lr, momentum=float(t["momentum"])) if t["optimizer"] == "sgd" \
            else keras.optimizers.Adam(lr)
        model.compile(opt, "sparse_categorical_crossentropy", metrics=["accuracy"])
        model.optimizer.build(model.trainable_variables)  # its variables must exist to be restored

    fingerprint = {"model": m, "train": {k: v for k, v in t.items() if k != "seed"}, "seed": a.seed,
                   "dataset": a.dataset, "activation": a.activation, "batch_norm": a.batch_norm,
                   "precision": precision, "data_sha256": _sha256(data_dir / "train.npz")}
    start, weights, history = latest_checkpoint(out["ckpt"], fingerprint)
    if weights:
        model.load_weights(weights)  # model and optimizer (momentum, step count)
        states = json.loads((weights.parent / "history.json").read_text()).get("seed_states")
        for v, value in zip(seed_states(model), states or [], strict=states is not None):
            v.assign(np.array(value, dtype=v.dtype))  # and the dropout masks' RNG state
        print(f"resuming {out['model']} after epoch {start} from {weights}")
    out["ckpt"].mkdir(parents=True, exist_ok=True)
    write_json(out["ckpt"] / "config.json", fingerprint)

    probe_x = x_tr[: t["probe_images"]].astype("float32")
    acts = [layer.output for layer in model.layers if layer.name.startswith("act")]
    probe = keras.Model(model.input, acts)
    state = {"diverged_epoch": None, "good_weights": weights}

    class Epoch(keras.callbacks.Callback):
        """Adds learning rate, seconds and activation statistics to the logs; checkpoints finite epochs."""

        def on_epoch_begin(self, epoch, logs=None):
            self.t0 = time.perf_counter()

        def on_epoch_end(self, epoch, logs):
            logs["learning_rate"] = float(keras.ops.convert_to_numpy(opt.learning_rate))
            logs["seconds"] = time.perf_counter() - self.t0
            # bias shift: mean and std of every activation layer's output on a fixed batch, inference mode
            for i, a_out in enumerate(probe.predict(probe_x, batch_size=256, verbose=0), start=1):
                logs[f"act{i}_mean"], logs[f"act{i}_std"] = float(np.mean(a_out)), float(np.std(a_out))
            if not all(np.isfinite(v) for v in logs.values()):
                state["diverged_epoch"] = epoch + 1
                self.model.stop_training = True
                return
            history.append({k: float(v) for k, v in logs.items()})
            with atomic_path(out["ckpt"] / f"epoch-{epoch + 1:04d}", directory=True) as d:
                self.model.save_weights(d / "model.weights.h5")
                (d / "history.json").write_text(json.dumps(
                    {"epoch": epoch + 1, "weights_sha256": _sha256(d / "model.weights.h5"), "history": history,
                     "seed_states": [keras.ops.convert_to_numpy(v).tolist() for v in seed_states(self.model)]}))
            state["good_weights"] = out["ckpt"] / f"epoch-{epoch + 1:04d}" / "model.weights.h5"
            for old in sorted(out["ckpt"].glob("epoch-*"))[:-2]:  # keep two: one may be damaged later
                shutil.rmtree(old)
            print(f"epoch {epoch + 1}/{t['epochs']}: " + "  ".join(
                f"{k} {logs[k]:.4g}" for k in ("loss", "accuracy", "val_loss", "val_accuracy", "learning_rate",
                                               "seconds") if k in logs), flush=True)

    live = Live(str(out["live"]), save_dvc_exp=False, dvcyaml=None, report=None)
    to_live = DVCLiveCallback(live=live)
    for e, logs in enumerate(history):  # a resumed run's curves start with the epochs already done
        to_live.on_epoch_end(e, logs)
    t0 = time.perf_counter()
    if start < t["epochs"]:
        print(f"training {out['model']}: {a.dataset}, {a.activation}, batch_norm={a.batch_norm}, seed={a.seed}, "
              f"{len(tr)} train / {len(va)} validation images, {precision}, epochs {start + 1}..{t['epochs']}")
        val = (x_all[va].astype("float32"), y_all[va]) if len(va) else None
        model.fit(input_pipeline(x_tr, y_tr, t["batch_size"], a.seed, t["augment"], tf, start),
                  epochs=t["epochs"], initial_epoch=start, steps_per_epoch=steps, validation_data=val,
                  validation_batch_size=500, callbacks=[keras.callbacks.TerminateOnNaN(), Epoch(), to_live],
                  shuffle=False, verbose=0)  # input_pipeline shuffles; Epoch prints one line per epoch
    live.end()
    if state["diverged_epoch"]:
        print(f"warning: loss diverged in epoch {state['diverged_epoch']}; keeping the last finite weights")
        if state["good_weights"]:
            model.load_weights(state["good_weights"])
        else:  # diverged in the first epoch: the model as initialised
            keras.utils.set_random_seed(a.seed)
            model = make_net(len(classes), a.activation, a.batch_norm, m, t["weight_decay"], mean, var)
    with atomic_path(out["model"]) as tmp:
        model.save(tmp, include_optimizer=False)
    seconds = [h["seconds"] for h in history]
    write_json(out["summary"], {
        "dataset": a.dataset, "activation": a.activation, "batch_norm": a.batch_norm, "seed": a.seed,
        "epochs": t["epochs"], "epochs_completed": len(history), "diverged": bool(state["diverged_epoch"]),
        "diverged_epoch": state["diverged_epoch"], "train_images": int(len(tr)), "validation_images": int(len(va)),
        "precision": precision, "parameters": int(model.count_params()), "train_seconds": float(sum(seconds)),
        "seconds_per_epoch": float(np.mean(seconds)) if seconds else None,
        "device": gpus[0].name if gpus else "cpu", "resumed_from_epoch": start or None,
        "session_seconds": time.perf_counter() - t0})
    shutil.rmtree(out["ckpt"])  # done: the model is saved, the checkpoint is no longer needed
    print(f"saved {out['model']} ({len(history)} epochs, {sum(seconds):.0f} s)")


if __name__ == "__main__":
    cli(main)
