"""Seconds per training epoch of the train stage's loop, per backend, width and variant: what a recipe costs.

    python benchmarks/epoch_time.py                                  # both backends, widths 0.25 and 0.5
    python benchmarks/epoch_time.py --backends tensorflow --widths 0.25 --variants relu elu+bn --steps 40

Each (backend, width, variant) runs in its own process (Keras reads KERAS_BACKEND once), at the precision that
`train.precision: auto` picks there (bf16 under TensorFlow on a CPU with AVX-512 BF16/AMX, float32 on JAX's
CPU backend), with the train stage's own model, optimizer and NumPy input pipeline on random pixels: --warmup
steps (compilation), then --steps timed steps. The epoch is extrapolated to --images training images at batch
128 (45,000: all of CIFAR-10's training split less the 5,000 held out); the per-epoch validation pass is left
out. Speeds are comparable only within one run: another process on the cores slows every row it overlaps.
"""

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BATCH = 128  # images per SGD step, the recipe's


def worker(width, variant, warmup, steps):
    """One measurement in this process (KERAS_BACKEND already set): {precision, seconds per step}."""
    sys.path.insert(0, str(ROOT))
    import keras
    import numpy as np

    from stages import backend
    from stages.model import make_net
    from stages.params import parse
    from stages.pipeline import batches

    precision, _, _ = backend.configure("auto", 0)
    activation, bn = variant.removesuffix("+bn"), variant.endswith("+bn")
    rng = np.random.default_rng(0)
    x = rng.integers(
        0, 256, (BATCH * (warmup + steps), 32, 32, 3), dtype=np.uint8
    )  # (N, 32, 32, 3) raw pixels
    y = rng.integers(0, 10, len(x))
    model = make_net(
        10,
        activation,
        bn,
        {**parse(ROOT / "params.yaml")["model"], "width": width},
        1e-3,
        np.full(3, 120.0),
        np.full(3, 4000.0),
    )
    model.compile(
        keras.optimizers.SGD(0.01, momentum=0.9), "sparse_categorical_crossentropy", metrics=["accuracy"]
    )
    data = batches(x, y, BATCH, 0, False)
    model.fit(data, epochs=1, steps_per_epoch=warmup, verbose=0)  # compiles the step
    t0 = time.perf_counter()
    model.fit(data, epochs=1, steps_per_epoch=steps, verbose=0)  # fit returns when its last step has finished
    return {"precision": precision, "step_seconds": (time.perf_counter() - t0) / steps}


def cpu_name():
    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    name = next(
        (line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")), "?"
    )
    extras = [f for f in ("amx_bf16", "avx512_bf16", "avx2") if f in info]
    return f"{name} ({os.cpu_count()} cores; {', '.join(extras) or 'no AVX2'})"


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backends", nargs="+", default=["tensorflow", "jax"], choices=["tensorflow", "jax"])
    ap.add_argument("--widths", nargs="+", type=float, default=[0.25, 0.5])
    ap.add_argument(
        "--variants",
        nargs="+",
        default=["relu", "prelu+bn"],
        help="activation[+bn]; default: the grid's fastest and slowest entries",
    )
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps (compilation)")
    ap.add_argument("--steps", type=int, default=30, help="timed steps")
    ap.add_argument("--images", type=int, default=45000, help="training images per epoch")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:  # "<width> <variant>", in a child process
        width, variant = args.worker.split()
        print(json.dumps(worker(float(width), variant, args.warmup, args.steps)))
        return
    print(
        f"CPU: {cpu_name()}; {args.steps} timed steps of batch {BATCH} after {args.warmup} untimed; "
        f"an epoch = {args.images:,} images = {args.images // BATCH} steps",
        flush=True,
    )
    print(f"{'backend':10s} {'width':>5s} {'variant':9s} {'precision':15s} {'images/s':>9s} {'s/epoch':>8s}")
    for b in args.backends:
        for width in args.widths:
            for variant in args.variants:
                env = {**os.environ, "KERAS_BACKEND": b, "TF_CPP_MIN_LOG_LEVEL": "3"}
                out = subprocess.run(
                    [
                        sys.executable,
                        __file__,
                        "--worker",
                        f"{width} {variant}",
                        "--warmup",
                        str(args.warmup),
                        "--steps",
                        str(args.steps),
                    ],
                    env=env,
                    capture_output=True,
                    text=True,
                    check=True,
                ).stdout
                r = json.loads(out.strip().splitlines()[-1])
                step = r["step_seconds"]
                print(
                    f"{b:10s} {width:5g} {variant:9s} {r['precision']:15s} {BATCH / step:9.0f} "
                    f"{step * (args.images // BATCH):8.1f}",
                    flush=True,
                )
    print(f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores")


if __name__ == "__main__":
    main()
