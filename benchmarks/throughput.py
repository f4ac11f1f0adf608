"""Training images/s of 1, 2, 4, ... processes at once on this machine: what `python -m stages.parallel
--budget-seconds` plans from (stages.plan).

    python benchmarks/throughput.py --out throughput.json [--processes 1 2 4 8] [--steps 50] [--seconds 120]

The workspace's params.yaml gives the net (model.*, relu+bn), the batch size, the precision and the backend.
max(--processes) processes start and compile (each one's seconds from its start to a compiled step are
recorded), wait at a barrier, then 1, 2, 4, ... of them are timed together, --steps steps each, released at
once; the sweep ends when the summed images/s stops growing by GROWTH, or at --seconds. --out is rewritten
after each count, so a call stopped at any point leaves what it measured. MFU: the summed rate's training
FLOPs (3 x the convolutions' forward multiply-adds x 2) against the device's datasheet dense bf16 peak.
"""

import argparse
import ctypes
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]

# datasheet dense (no sparsity) bf16 tensor-core peaks, TFLOP/s; SXM unless named
PEAK_BF16_TFLOPS = {"H200": 989, "H100 PCIe": 756, "H100": 989, "A100": 312, "L40S": 362, "L4": 121}
GROWTH = 1.05  # the sweep goes on while the summed images/s grows by more than this factor


def worker(steps):
    """One measuring process: relu+bn on random pixels through the real input pipeline. Compiles, says so
    ({"ready"}), then for each "go" on stdin times `steps` steps ({"images", "start", "end"})."""
    from stages.backend import configure
    from stages.params import load

    t = load()["train"]
    precision, device, scope = configure(t["precision"], 0)
    import keras
    import numpy as np
    from train_speed import conv_gemms

    from stages.model import make_net
    from stages.pipeline import batches

    rng, b = np.random.default_rng(0), t["batch_size"]
    x, y = rng.integers(0, 256, (steps * b, 32, 32, 3), dtype=np.uint8), rng.integers(0, 10, steps * b)
    with scope:
        model = make_net(
            10, "relu", True, load()["model"], t["weight_decay"], x.mean((0, 1, 2)), x.var((0, 1, 2))
        )
        model.compile(keras.optimizers.SGD(0.01, momentum=0.9), "sparse_categorical_crossentropy")
    model.fit(batches(x, y, b, 0, False), epochs=1, steps_per_epoch=2, shuffle=False, verbose=0)  # compiles
    flops = 3 * 2 * sum(m * k * n for m, k, n in conv_gemms(model, 1))
    say(
        ready=time.time(),
        precision=precision,
        device=device,
        flops_per_image=flops,
        backend=keras.backend.backend(),
    )
    for _go in sys.stdin:
        start = time.time()
        model.fit(batches(x, y, b, 1, False), epochs=1, steps_per_epoch=steps, shuffle=False, verbose=0)
        say(images=steps * b, start=start, end=time.time())


def say(**values):
    print(json.dumps(values), flush=True)


def _die_with_parent():
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG


def start_workers(count, steps):
    """count measuring processes, and a queue of (index, JSON message) from them; (index, None) when one
    ends."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", "--steps", str(steps)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    procs = [
        subprocess.Popen(
            cmd,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=os.getcwd(),
            env=env,
            preexec_fn=_die_with_parent,
        )
        for _ in range(count)
    ]
    inbox = queue.Queue()

    def read(i, p):
        for line in p.stdout:
            if line.startswith("{"):
                inbox.put((i, json.loads(line)))
        inbox.put((i, None))

    for i, p in enumerate(procs):
        threading.Thread(target=read, args=(i, p), daemon=True).start()
    return procs, inbox


def replies(inbox, n, until, key):
    """{index: message} of up to n messages holding `key`, until one process ends or `until` comes."""
    got = {}
    while len(got) < n and until > time.time():
        try:
            i, msg = inbox.get(timeout=until - time.time())
        except queue.Empty:
            break
        if msg is None:
            break
        if key in msg:
            got[i] = msg
    return got


def sweep(procs, inbox, ready, counts, until, result, out):
    """result["rates"][n] = summed images/s of n ready processes timed together, for n in counts."""
    for n in counts:
        if n > len(ready):
            break
        for i in ready[:n]:
            procs[i].stdin.write("go\n")
            procs[i].stdin.flush()
        got = list(replies(inbox, n, until, "images").values())
        if len(got) < n:
            print(f"{n} processes: not timed before --seconds", flush=True)
            break
        rate = sum(g["images"] for g in got) / (max(g["end"] for g in got) - min(g["start"] for g in got))
        grew = not result["rates"] or rate > GROWTH * max(result["rates"].values())
        result["rates"][str(n)] = round(rate, 1)
        peak = next((tf for name, tf in PEAK_BF16_TFLOPS.items() if name in result["device"]), None)
        if peak and "bfloat16" in result["precision"]:
            result["mfu"][str(n)] = round(rate * result["flops_per_image"] / (peak * 1e12), 4)
        write(out, result)
        print(f"{n} process(es) at once: {rate:,.0f} images/s summed", flush=True)
        if not grew:
            break


def write(path, result):
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(result, indent=1) + "\n")
    os.replace(tmp, path)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("throughput.json"))
    ap.add_argument("--processes", type=int, nargs="+", default=[1, 2, 4, 8])
    ap.add_argument("--steps", type=int, default=50, help="timed steps per process and count")
    ap.add_argument("--seconds", type=float, default=300, help="the most this measurement takes")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return worker(args.steps)
    t0, counts = time.time(), sorted(set(args.processes))
    until = t0 + args.seconds
    procs, inbox = start_workers(counts[-1], args.steps)
    try:
        ready = replies(inbox, len(procs), t0 + 0.7 * args.seconds, "ready") or replies(
            inbox, 1, until, "ready"
        )
        if not ready:
            sys.exit(
                f"error: no measuring process compiled within {0.7 * args.seconds:.0f} s; raise --seconds"
            )
        first = ready[min(ready)]
        result = {k: first[k] for k in ("device", "precision", "backend", "flops_per_image")}
        result.update(
            startup_seconds=round(max(r["ready"] for r in ready.values()) - t0, 1), rates={}, mfu={}
        )
        print(
            f"{len(ready)} of {len(procs)} processes compiled in {result['startup_seconds']:.0f} s",
            flush=True,
        )
        write(args.out, result)
        sweep(procs, inbox, sorted(ready), counts, until, result, args.out)
    finally:
        for p in procs:
            p.kill()
            p.wait()


if __name__ == "__main__":
    main()
