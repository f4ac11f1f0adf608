"""Where a training step's time goes, per variant, and each variant's step as a ratio to relu's in one run.

    python benchmarks/step_profile.py                       # widths 0.25 and 0.5, TensorFlow and JAX
    python benchmarks/step_profile.py --backends tensorflow --widths 0.25 --rounds 3

For each backend (its own process: Keras reads KERAS_BACKEND once), width and precision (float32; bf16 too
under TensorFlow where the CPU has AVX-512 BF16 or AMX), every grid variant is built by stages.model.make_net
and compiled as the train stage compiles it (SGD with momentum, op determinism on TensorFlow). Under
TensorFlow each variant with BN or PReLU is built twice: with stages/layers.py's layers ("study", what the
stages train) and with Keras' own BatchNormalization/PReLU ("keras", the code before them); on JAX both are
Keras' own. Steps are train_on_batch on one fixed random batch of 128, after 2 untimed ones; the models take
turns, --rounds rounds of --steps steps each, and a model's step time is its fastest step over all rounds, so
that load on a shared machine (which only ever adds time) hits every variant alike.

The breakdown (TensorFlow): each layer alone, forward and backward (gradients w.r.t. its input and weights)
at its input shape in a tf.function, fastest of 5, summed per kind: conv, bn, act (the activation), other
(normalisation of the pixels, dropout, pooling, softmax); opt is one SGD-momentum update of every weight;
rest = step - all of those: the loss, Keras' train step and dispatch, and what running the layers together
costs more or less than alone. Under bf16, Keras' BN casts to float32 and back inside its own bn time.
"""

import argparse
import json
import os
import subprocess
import sys
import time
import types
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BATCH = 128  # images per step, the recipe's
VARIANTS = [(a, bn) for bn in (False, True) for a in ("relu", "lrelu", "prelu", "elu")]
KINDS = ("conv", "bn", "act", "other", "opt", "rest")


def cpu():
    """'model name (cores; flags that matter here)'."""
    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    name = next((ln.split(":", 1)[1].strip() for ln in info.splitlines() if ln.startswith("model name")), "?")
    flags = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f in info.split()]
    return f"{name} ({os.cpu_count()} cores; {', '.join(flags) or 'none of avx2/avx512/amx'})"


def build(activation, bn, width, layer_set):
    """A compiled net; layer_set 'keras' swaps stages.layers' BatchNorm/PReLU for Keras' own."""
    import keras
    import numpy as np

    import stages.model as sm
    from stages.params import parse

    params = {**parse(ROOT / "params.yaml")["model"], "width": width}
    ours = sm.ours
    if layer_set == "keras":
        sm.ours = lambda: types.SimpleNamespace(
            BatchNorm=keras.layers.BatchNormalization, PReLU=keras.layers.PReLU
        )
    try:
        keras.utils.set_random_seed(0)
        model = sm.make_net(10, activation, bn, params, 1e-3, np.full(3, 120.0), np.full(3, 4000.0))
    finally:
        sm.ours = ours
    model.compile(keras.optimizers.SGD(0.01, momentum=0.9), "sparse_categorical_crossentropy")
    return model


def fastest(fn, repeats, clock=time.perf_counter):
    """Seconds of fn()'s fastest call on `clock` (fn returns once its result is computed)."""
    best = float("inf")
    for _ in range(repeats):
        t0 = clock()
        fn()
        best = min(best, clock() - t0)
    return best


def step_times(models, x, y, rounds, steps):
    """{name: (fastest train_on_batch in wall seconds, in this process's CPU seconds)}, the models taking
    turns (2 untimed steps each first). CPU seconds (all threads) are less disturbed by other processes."""
    for model in models.values():
        for _ in range(2):
            model.train_on_batch(x, y)
    wall, cpu = defaultdict(lambda: float("inf")), defaultdict(lambda: float("inf"))
    for _ in range(rounds):
        for name, model in models.items():
            step = lambda m=model: m.train_on_batch(x, y)  # noqa: E731
            wall[name] = min(wall[name], fastest(step, steps))
            cpu[name] = min(cpu[name], fastest(step, steps, time.process_time))
    return {name: (wall[name], cpu[name]) for name in models}


def kind(layer):
    from keras import layers

    from stages.model import ACT_PREFIX

    if isinstance(layer, layers.Conv2D):
        return "conv"
    if isinstance(layer, layers.BatchNormalization):
        return "bn"
    return "act" if layer.name.startswith(ACT_PREFIX) else "other"


def layer_ms(model):
    """{kind: ms} of every layer alone, forward + backward at its input shape (TensorFlow)."""
    import tensorflow as tf

    out = defaultdict(float)
    for layer in model.layers[1:]:  # [0] is the input
        x = tf.random.uniform((BATCH, *layer.input.shape[1:]), 0, 1, layer.compute_dtype)

        @tf.function
        def forward_backward(x, layer=layer):
            with tf.GradientTape() as tape:
                tape.watch(x)
                y = layer(x, training=True)
            return tape.gradient(y, [x, *layer.trainable_weights], output_gradients=tf.ones_like(y))

        forward_backward(x)  # traces
        out[kind(layer)] += 1e3 * fastest(lambda f=forward_backward, x=x: [g.numpy() for g in f(x)], 5)
    return out


def optimizer_ms(model):
    """ms of one SGD-momentum update of every trainable weight (zero gradients: the same arithmetic)."""
    import tensorflow as tf

    weights = model.trainable_variables
    grads = [tf.zeros(w.shape, w.dtype) for w in weights]
    apply = tf.function(lambda: model.optimizer.apply(grads, weights))
    apply()
    return 1e3 * fastest(lambda: (apply(), weights[0].numpy()), 5)


def breakdown(model, step_ms):
    parts = {**layer_ms(model), "opt": optimizer_ms(model)}
    return {**{k: parts.get(k, 0.0) for k in KINDS}, "rest": step_ms - sum(parts.values())}


def worker(width, precision, rounds, steps, breakdowns):
    """One JSON row per (variant, layer set) at one width and precision, under KERAS_BACKEND."""
    sys.path.insert(0, str(ROOT))
    import keras
    import numpy as np

    from stages.backend import configure

    configure(precision, 0)  # precision, seeds, op determinism: as the train stage runs
    tf_backend = keras.backend.backend() == "tensorflow"
    models = {}
    for activation, bn in VARIANTS:
        sets = ["study", "keras"] if tf_backend and (bn or activation == "prelu") else ["study"]
        for s in sets:
            models[(activation, bn, s)] = build(activation, bn, width, s)
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (BATCH, 32, 32, 3)).astype("float32")  # (N, 32, 32, 3) raw pixels
    y = rng.integers(0, 10, BATCH)
    if tf_backend:
        import tensorflow as tf

        x, y = tf.constant(x), tf.constant(y)
    best = step_times(models, x, y, rounds, steps)
    rows = []
    for (activation, bn, s), model in models.items():
        ms, cpu_ms = (1e3 * t for t in best[(activation, bn, s)])
        parts = breakdown(model, ms) if tf_backend and breakdowns else {}
        row = {"variant": activation + "+bn" * bn, "layers": s, "step_ms": ms, "cpu_ms": cpu_ms}
        rows.append({**row, "parts": parts})
    return rows


def run_worker(backend, width, precision, args):
    env = {**os.environ, "KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "3"}
    cmd = [sys.executable, __file__, "--worker", f"{width} {precision}"]
    cmd += ["--rounds", str(args.rounds), "--steps", str(args.steps)] + ["--no-breakdown"] * args.no_breakdown
    out = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if out.returncode:
        sys.exit(f"{backend} width {width} {precision} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def print_table(backend, width, precision, rows):
    relu = next(r for r in rows if r["variant"] == "relu")
    print(
        f"\n{backend}, width {width}, {precision}: ms per step of {BATCH} (wall; CPU of all threads), ratio"
    )
    head = f"{'variant':9s} {'layers':6s} {'ms/step':>8s} {'x relu':>6s} {'cpu ms':>7s} {'x relu':>6s}"
    head += "".join(f" {k:>6s}" for k in KINDS) if rows[0]["parts"] else ""
    print(head + "\n" + "-" * len(head))
    for r in rows:
        line = f"{r['variant']:9s} {r['layers']:6s} {r['step_ms']:8.1f} {r['step_ms'] / relu['step_ms']:6.2f}"
        line += f" {r['cpu_ms']:7.1f} {r['cpu_ms'] / relu['cpu_ms']:6.2f}"
        print(line + "".join(f" {r['parts'][k]:6.1f}" for k in KINDS if r["parts"]), flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backends", nargs="+", default=["tensorflow", "jax"], choices=["tensorflow", "jax"])
    ap.add_argument("--widths", nargs="+", type=float, default=[0.25, 0.5])
    ap.add_argument("--rounds", type=int, default=5, help="turns of every model")
    ap.add_argument("--steps", type=int, default=2, help="timed steps per model per turn")
    ap.add_argument("--no-breakdown", action="store_true", help="step times only (no per-layer timing)")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:  # "<width> <precision>", in a child process
        width, precision = args.worker.split()
        print(json.dumps(worker(float(width), precision, args.rounds, args.steps, not args.no_breakdown)))
        return
    sys.path.insert(0, str(ROOT))
    from stages.backend import cpu_has_bf16

    print(f"CPU: {cpu()}; load average {os.getloadavg()[0]:.2f} at the start", flush=True)
    for backend in args.backends:
        precisions = ["float32"] + (["mixed_bfloat16"] if cpu_has_bf16() and backend == "tensorflow" else [])
        for width in args.widths:
            for precision in precisions:
                print_table(backend, width, precision, run_worker(backend, width, precision, args))
    print(f"\nload average {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores at the end")


if __name__ == "__main__":
    main()
