"""How fast, and in how much memory, stages.cifar.read decodes a full-size CIFAR-10 archive, beside Keras' own
loader (tar extraction to a folder, then keras.src.datasets.cifar.load_batch on each batch, as
keras.datasets.cifar10.load_data does) on the same archive in the same run.

    python benchmarks/decode.py                      # the archive prepare@cifar10 downloaded
                                                     # (data/raw/cifar10/)
    python benchmarks/decode.py /path/cifar-10-python.tar.gz

Each loader runs in a fresh subprocess, so its peak resident memory is its own: the peak (VmHWM, reset just
before loading) minus the resident memory before loading. A second run of each under tracemalloc gives the
peak of Python and numpy allocations alone. MB = 10^6 bytes. Goals: within 10 s, within 2x the arrays' size,
and within 1.5x the time `gzip -dc` takes to decompress the same archive, measured in the same run (the
decoder reads the archive once: decompression is most of its work).
"""

import argparse
import hashlib
import json
import os
import resource
import subprocess
import sys
import tarfile
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
MB = 1e6
TRAIN, TEST = 50000, 10000
ARRAYS = (TRAIN + TEST) * (3072 + 8)  # x uint8 NHWC and y int64, train and test: the contract's arrays


# --- the worker: one loader, one fresh process --------------------------------------------------------------


def _status(field):
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(field)


def _reset_peak():
    """Resets VmHWM to the current RSS (Linux >= 4.0); False where it cannot (then ru_maxrss is used)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def load_ours(archive):
    from stages import cifar

    splits, _ = cifar.read(archive, "cifar10")
    return {"timing": {}}, (*splits["train"], *splits["test"])


def load_keras(archive):
    """keras.datasets.cifar10.load_data after its download: extract (with the "data" filter), then
    load_batch."""
    from keras.src.datasets.cifar import load_batch

    with tempfile.TemporaryDirectory(prefix="keras-cifar-") as tmp:
        t = time.perf_counter()
        with tarfile.open(archive) as tar:
            tar.extractall(tmp, filter="data")
        extract = time.perf_counter() - t
        path = os.path.join(tmp, "cifar-10-batches-py")
        x_train = np.empty((TRAIN, 3, 32, 32), dtype="uint8")
        y_train = np.empty((TRAIN,), dtype="uint8")
        n = TRAIN // 5
        for i in range(1, 6):
            x_train[(i - 1) * n : i * n], y_train[(i - 1) * n : i * n] = load_batch(
                os.path.join(path, f"data_batch_{i}")
            )
        x_test, y_test = load_batch(os.path.join(path, "test_batch"))
        y_train, y_test = np.reshape(y_train, (len(y_train), 1)), np.reshape(y_test, (len(y_test), 1))
        x_train, x_test = (
            x_train.transpose(0, 2, 3, 1),
            x_test.transpose(0, 2, 3, 1),
        )  # channels_last, as a view
        load = time.perf_counter() - t - extract
    return {"timing": {"extract": extract, "load_batch": load}}, (x_train, y_train, x_test, y_test)


def worker(loader, archive, trace):
    load = {"ours": load_ours, "keras": load_keras}[loader]
    if loader == "keras":
        import keras.src.datasets.cifar  # noqa: F401  the import (TensorFlow) is not part of the loading
    else:
        import stages.cifar  # noqa: F401
    before = _status("VmRSS")
    hwm = _reset_peak()
    max_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    if trace:
        tracemalloc.start()
    t = time.perf_counter()
    info, arrays = load(archive)
    seconds = time.perf_counter() - t
    traced = tracemalloc.get_traced_memory()[1] if trace else None
    peak = _status("VmHWM") if hwm else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    tracemalloc.stop()
    x_train, y_train, x_test, y_test = arrays
    digest = hashlib.sha256()
    for x, y in ((x_train, y_train), (x_test, y_test)):
        digest.update(np.ascontiguousarray(x).data)
        digest.update(np.asarray(y, np.int64).reshape(-1).data)
    print(
        json.dumps(
            {
                **info,
                "seconds": seconds,
                "rss_before": before,
                "rss_peak": peak,
                "traced_peak": traced,
                "peak_is_hwm": hwm,
                "max_before": max_before,
                "digest": digest.hexdigest(),
                "shapes": [list(np.shape(a)) for a in arrays],
            }
        )
    )


# --- the driver ---------------------------------------------------------------------------------------------


def run_worker(loader, archive, trace=False):
    args = [sys.executable, __file__, "--worker", loader, str(archive)] + (["--trace"] if trace else [])
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": str(ROOT)}
    p = subprocess.run(args, capture_output=True, text=True, env=env)
    if p.returncode:
        sys.exit(f"{loader} failed:\n{p.stderr[-3000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def gzip_seconds(archive, runs=3):
    """The fastest of runs `gzip -dc archive > /dev/null`: the floor for anything that reads a .tar.gz."""
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        with open(os.devnull, "wb") as null:
            subprocess.run(["gzip", "-dc", str(archive)], stdout=null, check=True)
        times.append(time.perf_counter() - t)
    return min(times)


def report(archive):
    size = Path(archive).stat().st_size
    print(f"archive: {archive} ({size / MB:.1f} MB)")
    print(f"arrays:  {ARRAYS / MB:.1f} MB (x (60000, 32, 32, 3) uint8 + y (60000,) int64)")
    results = {}
    for loader in ("ours", "keras"):
        r = run_worker(loader, archive)
        r["traced_peak"] = run_worker(loader, archive, trace=True)["traced_peak"]
        results[loader] = r
    names = {"ours": "stages.cifar.read", "keras": "keras extract + load_batch"}
    print(
        f"{'loader':28s} {'seconds':>8s} {'archive MB/s':>13s} {'array MB/s':>11s} "
        f"{'peak RSS':>10s} {'/arrays':>8s} {'traced peak':>12s} {'/arrays':>8s}"
    )
    for loader, r in results.items():
        rss = r["rss_peak"] - r["rss_before"]
        print(
            f"{names[loader]:28s} {r['seconds']:8.2f} {size / MB / r['seconds']:13.1f} "
            f"{ARRAYS / MB / r['seconds']:11.1f} {rss / MB:8.0f} MB {rss / ARRAYS:7.2f}x "
            f"{r['traced_peak'] / MB:9.0f} MB {r['traced_peak'] / ARRAYS:7.2f}x"
        )
        if r["timing"]:
            print(" " * 4 + ", ".join(f"{k} {v:.2f} s" for k, v in r["timing"].items()))
        if not r["peak_is_hwm"]:
            print(" " * 4 + "(peak from ru_maxrss: VmHWM could not be reset)")
    ours, keras = results["ours"], results["keras"]
    print(f"shapes: ours {ours['shapes']}, keras {keras['shapes']}")
    print(f"same pixels and labels as Keras: {'yes' if ours['digest'] == keras['digest'] else 'NO'}")
    rss = (ours["rss_peak"] - ours["rss_before"]) / ARRAYS
    gunzip = gzip_seconds(archive)
    ratio = ours["seconds"] / gunzip
    print(
        f"gzip -dc: {gunzip:.2f} s (fastest of 3); stages.cifar.read / gzip -dc = {ratio:.2f}x "
        f"(goal <= 1.5x: {'yes' if ratio <= 1.5 else 'NO'})"
    )
    print(
        f"goal: within 10 s: {'yes' if ours['seconds'] <= 10 else 'NO'} ({ours['seconds']:.2f} s); "
        f"within 2x the arrays: {'yes' if rss <= 2 else 'NO'} ({rss:.2f}x peak RSS, "
        f"{ours['traced_peak'] / ARRAYS:.2f}x traced)"
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "archive",
        nargs="?",
        help="a python-layout CIFAR-10 archive (default: the one in "
        "data/raw/cifar10/, which prepare@cifar10 downloads)",
    )
    parser.add_argument("--worker", choices=["ours", "keras"], help=argparse.SUPPRESS)
    parser.add_argument("--trace", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args.worker, args.archive, args.trace)
    archive = args.archive or next(iter(sorted((ROOT / "data/raw/cifar10").glob("*.tar*"))), None)
    if archive is None:
        sys.exit(
            "error: no archive given and none in data/raw/cifar10/; run `dvc repro prepare@cifar10` first or "
            "name one: python benchmarks/decode.py /path/cifar-10-python.tar.gz"
        )
    report(archive)


if __name__ == "__main__":
    main()
