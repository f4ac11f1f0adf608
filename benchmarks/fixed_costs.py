"""What a training stage pays besides its SGD steps, at the CPU recipe's size (width 0.25, 45,000 training and
5,000 validation images, batch 128, 10 epochs), beside the steps themselves.

    python benchmarks/fixed_costs.py                    # relu and prelu+bn
    python benchmarks/fixed_costs.py --variants elu+bn

Under TensorFlow (train.backend's default), at the precision `train.precision: auto` picks: the
interpreter's start-up with the imports a train stage makes (fresh processes, fastest of 2), building and
compiling the model with its first step (tracing), one SGD step (fastest of --steps, after 3 untimed),
and per epoch: the validation pass (model.evaluate on 5,000 images in batches of 500, as fit runs it), the
bias-shift probe (stages.each_epoch.activation_stats on 256 images) and a checkpoint
(stages.checkpoint.save); at the end the saved .keras model; and the evaluate stage's load and prediction
of 10,000 test images. Random pixels: the costs do not depend on the values. Each per-epoch figure is the
fastest of 3 after one untimed call.
"""

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BATCH, TRAIN, VALIDATION, TEST, EPOCHS, PROBE = 128, 45000, 5000, 10000, 10, 256
IMPORTS = "import keras, dvclive, stages.train, stages.each_epoch"  # what a train stage imports


def fastest(fn, repeats=3):
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def start_up():
    env = {**os.environ, "KERAS_BACKEND": "tensorflow", "TF_CPP_MIN_LOG_LEVEL": "3"}
    cmd = [sys.executable, "-c", IMPORTS]
    run = lambda: subprocess.run(cmd, cwd=ROOT, env=env, check=True, stderr=subprocess.DEVNULL)  # noqa: E731
    return fastest(run, 2)


def variant_costs(variant, steps, tmp):
    """{what: seconds} for one variant, in this process."""
    import keras
    import numpy as np

    from stages import backend, checkpoint, each_epoch
    from stages.evaluate import load_model, predict
    from stages.model import ACT_PREFIX
    from stages.train import build_model

    class Entry:  # what build_model reads of a grid entry
        seed, activation, batch_norm = 0, variant.removesuffix("+bn"), variant.endswith("+bn")

    from stages.params import parse

    params = parse(ROOT / "params.yaml")
    params["model"]["width"], params["train"]["learning_rate"] = 0.25, 0.05
    precision, _, scope = backend.configure("auto", 0)
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (TEST, 32, 32, 3)).astype("float32")  # (N, 32, 32, 3) raw pixels
    y = rng.integers(0, 10, TEST)
    out = {}
    t0 = time.perf_counter()
    model = build_model(Entry, params, 10, x[:BATCH], TRAIN // BATCH, scope)
    model.train_on_batch(x[:BATCH], y[:BATCH])
    out["build, compile, first step"] = time.perf_counter() - t0
    for _ in range(3):
        model.train_on_batch(x[:BATCH], y[:BATCH])
    step = fastest(lambda: model.train_on_batch(x[:BATCH], y[:BATCH]), steps)
    out[f"training steps ({TRAIN // BATCH} per epoch)"] = step * (TRAIN // BATCH)
    val = lambda: model.evaluate(x[:VALIDATION], y[:VALIDATION], batch_size=500, verbose=0)  # noqa: E731
    val()
    out["validation pass, per epoch"] = fastest(val)
    acts = [layer.output for layer in model.layers if layer.name.startswith(ACT_PREFIX)]
    probe = keras.Model(model.input, acts)
    each_epoch.activation_stats(probe, x[:PROBE])
    out["probe, per epoch"] = fastest(lambda: each_epoch.activation_stats(probe, x[:PROBE]))
    history, _ = [], (tmp / "ckpt").mkdir()
    out["checkpoint, per epoch"] = fastest(lambda: checkpoint.save(tmp / "ckpt", model, history + [{}]))
    out["saved model, once"] = fastest(lambda: model.save(tmp / "m.keras", include_optimizer=False), 1)
    t0 = time.perf_counter()
    predict(load_model(tmp / "m.keras"), x, 500)
    out["evaluate: load + predict 10,000, once"] = time.perf_counter() - t0
    return precision, step, out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--variants", nargs="+", default=["relu", "prelu+bn"])
    ap.add_argument("--steps", type=int, default=10, help="timed SGD steps (the fastest counts)")
    args = ap.parse_args()
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    sys.path.insert(0, str(ROOT))
    print(f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores at the start", flush=True)
    print(f"start-up: python -c '{IMPORTS}': {start_up():.1f} s (each train and evaluate stage)", flush=True)
    for variant in args.variants:
        with tempfile.TemporaryDirectory() as tmp:
            precision, step, out = variant_costs(variant, args.steps, Path(tmp))
        epoch = sum(v for k, v in out.items() if "per epoch" in k)
        head = (
            f"{variant}, width 0.25, {precision}, step {step * 1e3:.0f} ms; an epoch {epoch:.1f} s of which:"
        )
        print(f"\n{head}")
        for what, seconds in out.items():
            share = f"{seconds / epoch:6.1%} of an epoch" if "per epoch" in what else ""
            print(f"  {what:40s} {seconds:7.2f} s  {share}")
    print(f"\nload average {os.getloadavg()[0]:.2f} at the end")


if __name__ == "__main__":
    main()
