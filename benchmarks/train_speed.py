"""Training speed of ALL-CNN-C per variant (activation x batch norm x precision), beside this machine's matmul
ceiling measured in the same run.

    python benchmarks/train_speed.py                     # width 1.0 (the paper's 96/192 channels), batch 128
    python benchmarks/train_speed.py --width 0.25 --steps 5
    python benchmarks/train_speed.py --activations relu prelu --precisions float32

Each variant is built by stages.model.make_net and compiled as stages/train.py compiles it (SGD with momentum,
sparse cross-entropy, accuracy; op determinism on), then trained with train_on_batch on random pixels and
labels: --warmup steps (tracing, allocation) and then --steps timed steps, of which the fastest is reported
(other processes only ever add time; the ceiling is a best-of too).
A variant whose first step takes over --slow seconds gets one timed step after it instead (bf16 convolutions
on a CPU without bf16 instructions take about a minute per step at width 1.0: restrict such a run with
--precisions / --activations / --batch-norm).

FLOPs count the convolutions only (BN, activations, pooling and the optimizer update are left out): forward
MACs per image = sum over conv layers of H_out * W_out * k * k * C_in * C_out, forward FLOPs = 2 x MACs, and
one training image = 3 x forward FLOPs (forward, gradient w.r.t. inputs, gradient w.r.t. weights). The ceiling
is the best GFLOP/s of tf.matmul on square matrices of the same dtype, n^3 close to the largest conv's GEMM
(M = batch * H_out * W_out, K = k * k * C_in, N = C_out), measured once at the start and again right after
each variant, so that a shared machine's load hits both sides of "of ceiling" = model GFLOP/s / ceiling
GFLOP/s (the ceiling measured right after the variant).
"""

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

PRECISIONS = ("float32", "mixed_bfloat16")
DTYPES = {
    "float32": lambda tf: tf.float32,
    "mixed_bfloat16": lambda tf: tf.bfloat16,
}  # the matmul ceiling's dtype


def model_params(width):
    """params.yaml's model section (dropout, slopes: the study's recipe) at another width."""
    from stages.params import parse

    return {**parse(ROOT / "params.yaml")["model"], "width": width}


def conv_gemms(model, batch):
    """(M, K, N) of every Conv2D as a GEMM for one batch."""
    from keras import layers

    out = []
    for layer in model.layers:
        if isinstance(layer, layers.Conv2D):
            _, h, w, c_out = layer.output.shape
            k1, k2 = layer.kernel_size
            out.append((batch * h * w, k1 * k2 * layer.input.shape[-1], c_out))
    return out


def matmul_ceiling(n, dtype, tf, repeats=5):
    """Best GFLOP/s of an n x n x n tf.matmul in dtype (after one untimed run)."""
    rng = np.random.default_rng(0)
    a = tf.cast(tf.constant(rng.standard_normal((n, n), np.float32)), dtype)
    b = tf.cast(tf.constant(rng.standard_normal((n, n), np.float32)), dtype)
    mm = tf.function(lambda a, b: tf.reduce_sum(tf.cast(tf.matmul(a, b)[0, :1], tf.float32)))
    mm(a, b).numpy()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        mm(a, b).numpy()  # .numpy() waits for the result
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best / 1e9, best


def time_variant(activation, batch_norm, precision, args, keras, tf):
    from stages.model import make_net

    keras.mixed_precision.set_dtype_policy(precision)
    keras.utils.set_random_seed(0)
    try:
        model = make_net(
            10, activation, batch_norm, model_params(args.width), 1e-3, np.full(3, 120.0), np.full(3, 4000.0)
        )
        model.compile(
            keras.optimizers.SGD(0.01, momentum=0.9), "sparse_categorical_crossentropy", metrics=["accuracy"]
        )
        rng = np.random.default_rng(0)
        x = tf.constant(rng.uniform(0, 255, (args.batch, 32, 32, 3)).astype(np.float32))
        y = tf.constant(rng.integers(0, 10, args.batch))
        t0 = time.perf_counter()
        model.train_on_batch(x, y)  # the first step traces the step function
        warmup, steps = args.warmup - 1, args.steps
        if time.perf_counter() - t0 > args.slow:  # e.g. bf16 convolutions on a CPU without bf16 hardware
            warmup, steps = 0, 1
        for _ in range(warmup):
            model.train_on_batch(x, y)
        times = []
        for _ in range(steps):
            t0 = time.perf_counter()
            loss = model.train_on_batch(x, y)[0]  # returns numpy values: the step has finished
            times.append(time.perf_counter() - t0)
        assert np.isfinite(loss), f"{activation} {batch_norm} {precision}: loss {loss}"
        return model, min(times)
    finally:
        keras.mixed_precision.set_dtype_policy("float32")


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--width", type=float, default=1.0, help="channel multiplier (1.0 = 96/192 channels)")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument(
        "--steps", type=int, default=3, help="timed training steps per variant (the fastest is reported)"
    )
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps first (tracing, allocation); >= 1")
    ap.add_argument(
        "--slow",
        type=float,
        default=20.0,
        help="seconds: a variant whose first step takes longer is timed on one more step only",
    )
    ap.add_argument("--activations", nargs="+", default=["relu", "lrelu", "prelu", "elu"])
    ap.add_argument("--batch-norm", nargs="+", default=["false", "true"], choices=["false", "true"])
    ap.add_argument("--precisions", nargs="+", default=list(PRECISIONS), choices=PRECISIONS)
    args = ap.parse_args()
    if args.warmup < 1 or args.steps < 1:
        ap.error("--warmup and --steps must be >= 1")
    return args


def describe(args, keras, tf):
    """Prints the machine and the net's FLOPs; returns (training FLOPs per image, the ceiling's matmul
    size)."""
    from stages.backend import accelerators, choose_precision
    from stages.model import make_net

    probe = make_net(10, "relu", False, model_params(args.width), 1e-3, np.zeros(3), np.ones(3))
    gemms = conv_gemms(probe, args.batch)
    forward_macs = sum(m * k * n for m, k, n in gemms) / args.batch
    m, k, n = max(gemms, key=lambda g: g[0] * g[1] * g[2])
    size = max(256, int(round((m * k * n) ** (1 / 3) / 128)) * 128)
    gpus = tf.config.list_physical_devices("GPU")
    cpu = (
        next(
            (
                line.split(":", 1)[1].strip()
                for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")
            ),
            "?",
        )
        if Path("/proc/cpuinfo").exists()
        else "?"
    )
    print(
        f"device: {gpus[0].name if gpus else 'cpu'} ({cpu}, {os.cpu_count()} cores); TF {tf.__version__}, "
        f"Keras {keras.__version__}; precision auto -> {choose_precision('auto', accelerators())}"
    )
    print(
        f"ALL-CNN-C width {args.width}: {probe.count_params():,} parameters (relu, no BN); "
        f"forward {forward_macs / 1e6:.1f} M MACs/image; training {6 * forward_macs / 1e9:.3f} GFLOP/image "
        f"(3 x forward, convs only); batch {args.batch}"
    )
    print(f"largest conv GEMM (M, K, N) = ({m}, {k}, {n}); matmul ceiling on {size} x {size} x {size}:")
    return 6 * forward_macs, size


def time_variants(args, keras, tf, flops_per_image, size, ceiling):
    """One row per variant: its fastest step, against the matmul ceiling measured right after it."""
    rows = []
    for precision in args.precisions:
        for activation in args.activations:
            for bn in args.batch_norm:
                t0 = time.perf_counter()
                model, step = time_variant(activation, bn == "true", precision, args, keras, tf)
                images = args.batch / step
                gflops = images * flops_per_image / 1e9
                now, _ = matmul_ceiling(size, DTYPES[precision](tf), tf, repeats=3)
                ceiling[precision] = max(ceiling[precision], now)
                rows.append(
                    (
                        activation,
                        bn,
                        precision,
                        model.count_params(),
                        step * 1e3,
                        images,
                        gflops,
                        now,
                        gflops / now,
                    )
                )
                print(
                    f"  {activation:6s} bn={bn:5s} {precision:15s} {images:8.1f} images/s, ceiling now "
                    f"{now:.1f} GFLOP/s ({time.perf_counter() - t0:.0f} s incl. warm-up)",
                    flush=True,
                )
    return rows


def print_table(rows, ceiling):
    head = (
        f"{'activation':10s} {'BN':5s} {'precision':15s} {'params':>10s} {'ms/step':>9s} {'images/s':>9s} "
        f"{'GFLOP/s':>8s} {'ceiling':>8s} {'of ceiling':>10s}"
    )
    print("\n" + head + "\n" + "-" * len(head))
    for act, bn, precision, params, ms, images, gflops, now, ratio in rows:
        print(
            f"{act:10s} {bn:5s} {precision:15s} {params:10,d} {ms:9.1f} {images:9.1f} {gflops:8.1f} "
            f"{now:8.1f} {ratio:10.1%}"
        )
    print(
        "best matmul ceiling in this run: "
        + ", ".join(f"{p} {c:.1f} GFLOP/s" for p, c in ceiling.items())
        + f"; load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores"
    )


def main():
    args = parse_args()
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")  # this benchmark times TensorFlow's kernels
    import keras
    import tensorflow as tf

    tf.config.experimental.enable_op_determinism()  # as stages/train.py runs
    flops_per_image, size = describe(args, keras, tf)
    ceiling = {}
    for precision in args.precisions:
        ceiling[precision], secs = matmul_ceiling(size, DTYPES[precision](tf), tf)
        print(f"  {precision:15s} {ceiling[precision]:8.1f} GFLOP/s  ({secs * 1e3:.1f} ms per matmul)")
    print(
        f"timing {args.warmup} warm-up + {args.steps} timed steps per variant (fastest); load average "
        f"{os.getloadavg()[0]:.2f}",
        flush=True,
    )
    print_table(time_variants(args, keras, tf, flops_per_image, size, ceiling), ceiling)


if __name__ == "__main__":
    main()
