"""The study at its real size on one GPU, with Keras on JAX, within a time budget.

    python benchmarks/gpu_study.py --out DIR --budget-seconds 570                 # the official archive, downloaded
    python benchmarks/gpu_study.py --out DIR --budget-seconds 570 --archive /data/cifar-10-python.tar.gz --md5 none
    python benchmarks/gpu_study.py --out /tmp/x --tiny                            # a few hundred images, on a CPU

Needs the project's working tree, JAX and Keras (TensorFlow is not used). Steps:
1. a scratch copy of the project (--work) whose params.yaml is the default recipe with train.backend: jax and
   precision auto (bf16 on GPUs of compute capability >= 8.0), and the archive given the way data.cifar10.url
   takes it; `prepare` decodes it there;
2. throughput of 1, 2, 4 and 8 training processes sharing the GPU (--measure-steps steps each, after
   compilation), and the fastest count;
3. as many whole grid entries as fit in what is left of the budget, in ORDER, trained by the train stage itself
   that many at a time, each evaluated by the evaluate stage; entries still running at the deadline are
   stopped (their checkpoints stay in --work, so a later call resumes them); the ones left out are named;
4. per entry into --out: metrics, per-epoch curves, images/s, seconds per epoch and MFU (1.63 GFLOP per training
   image at width 1.0, against the GPU's dense bf16 peak), packed in 4 files. A later call with the same --out
   skips the entries it already holds and continues with the rest.
"""
import argparse
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from importlib.metadata import version
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]
os.environ["KERAS_BACKEND"] = "jax"  # this study, and every process it starts, runs Keras on JAX

ORDER = ["relu+bn", "elu", "relu", "elu+bn", "prelu", "prelu+bn", "lrelu", "lrelu+bn"]  # the write-up's first
PEAK_BF16_TFLOPS = {"H200": 989, "H100 PCIe": 756, "H100": 989, "A100": 312, "L40S": 362, "L4": 121}  # dense
TINY = {"model": {"width": 0.125}, "train": {"epochs": 1, "limit": 300, "validation": 100, "batch_size": 32,
                                             "learning_rate": 0.05, "probe_images": 32}}
MARGIN = 20  # seconds kept for stopping the stragglers and writing the results


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True, help="results (4 files); a later call continues")
    ap.add_argument("--budget-seconds", type=float, default=570, help="never runs past this (default 570)")
    ap.add_argument("--archive", help="URL or local path of the CIFAR-10 archive (default: data.cifar10.url)")
    ap.add_argument("--md5", help="its md5, or 'none' to skip the check (default: data.cifar10.md5)")
    ap.add_argument("--processes", type=int, nargs="+", default=[1, 2, 4, 8], help="concurrent counts to try")
    ap.add_argument("--measure-steps", type=int, default=300, help="timed steps per process and count")
    ap.add_argument("--entries", nargs="+", default=ORDER, help="variants, in training order")
    ap.add_argument("--work", type=Path, help="scratch project (default: a folder in the temp dir named after --out)")
    ap.add_argument("--peak-tflops", type=float, help="the device's dense bf16 peak, for MFU (default: by GPU name)")
    ap.add_argument("--tiny", action="store_true", help="a few hundred images, 1 epoch, width 1/8: a CPU check")
    ap.add_argument("--bench-worker", action="store_true", help=argparse.SUPPRESS)  # one measuring process
    return ap.parse_args()


# --- 1. the scratch project ---------------------------------------------------------------------------------

def setup_project(args):
    """A copy of the project in args.work with the study's params; returns its params."""
    from ruamel.yaml import YAML
    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    shutil.copytree(ROOT / "stages", work / "stages", dirs_exist_ok=True, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "dvc.yaml", work / "dvc.yaml")  # the checkpoints' code fingerprint reads it
    yaml = YAML(typ="safe")
    params = yaml.load((ROOT / "params.yaml").read_text())
    acts = list(dict.fromkeys(v.removesuffix("+bn") for v in args.entries))
    params["grid"].update(dataset=["cifar10"], activation=acts, batch_norm=[True, False], seed=[0])
    params.update(dataset="cifar10", activation=acts[0], batch_norm="+bn" in args.entries[0])
    params["train"].update(backend="jax", precision="auto")
    data = params["data"]["cifar10"]
    if args.archive:
        data["url"] = str(Path(args.archive).resolve()) if Path(args.archive).exists() else args.archive
    if args.md5:
        data["md5"] = None if args.md5.lower() == "none" else args.md5
    for section, values in (TINY if args.tiny else {}).items():
        params[section].update(values)
    with open(work / "params.yaml", "w") as f:
        yaml.dump(params, f)
    return params


def stage(work, module, *args, env=None, log=None):
    """Runs one stage of the scratch project; its output goes to log (a file) or is returned."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    if log:
        with open(log, "a") as f:
            return subprocess.Popen([sys.executable, "-m", f"stages.{module}", *args], cwd=work, env=env, stdout=f,
                                    stderr=subprocess.STDOUT, start_new_session=True)
    p = subprocess.run([sys.executable, "-m", f"stages.{module}", *args], cwd=work, env=env, text=True,
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    if p.returncode:
        sys.exit(f"error: stages.{module} {' '.join(args)} failed in {work}:\n{p.stdout[-3000:]}")
    return p.stdout


def key(variant):
    """relu+bn -> cifar10-relu-True-0, the grid entry's key (its stage name and file names)."""
    from stages.entry import Entry
    return Entry("cifar10", variant.removesuffix("+bn"), variant.endswith("+bn"), 0).key


# --- 2. how many processes ----------------------------------------------------------------------------------

def bench_worker(args):
    """One measuring process: the study's net (relu+bn) trained on random pixels through the real pipeline;
    prints one JSON line with the images/s of the timed steps and the seconds spent compiling."""
    from stages.backend import configure
    from stages.params import load
    params = load()  # the scratch project's, with train.backend: jax
    precision, device, scope = configure(params["train"]["precision"], 0)
    import keras
    import numpy as np

    from stages.model import make_net
    from stages.pipeline import batches
    t, b = params["train"], params["train"]["batch_size"]
    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 256, (args.measure_steps * b, 32, 32, 3), dtype=np.uint8), rng.integers(0, 10, args.measure_steps * b)
    with scope:
        model = make_net(10, "relu", True, params["model"], t["weight_decay"], x.mean((0, 1, 2)), x.var((0, 1, 2)))
        model.compile(keras.optimizers.SGD(0.01, momentum=0.9), "sparse_categorical_crossentropy",
                      metrics=["accuracy"])
    times = []
    cb = keras.callbacks.LambdaCallback(on_epoch_end=lambda e, logs: times.append(time.perf_counter()))
    t0 = time.perf_counter()
    model.fit(batches(x, y, b, 0, t["augment"]), epochs=3, steps_per_epoch=args.measure_steps // 2, callbacks=[cb],
              shuffle=False, verbose=0)  # epoch 1 compiles; epochs 2-3 are timed
    print(json.dumps({"images_per_second": (args.measure_steps // 2) * 2 * b / (times[2] - times[0]),
                      "compile_seconds": times[0] - t0, "precision": precision, "device": device}))


def measure(args, deadline):
    """{processes: summed images/s} for each count in args.processes that finishes before the deadline."""
    rates, reports = {}, [None]
    for n in args.processes:
        t0 = time.time()
        procs = [subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--bench-worker", "--out", "-",
                                   "--measure-steps", str(args.measure_steps)], cwd=args.work, text=True,
                                  stdout=subprocess.PIPE)
                 for _ in range(n)]
        outs = [wait(p, deadline) for p in procs]
        if None in outs or any(p.returncode for p in procs):
            print(f"measure: {n} processes failed or did not finish within the budget; stopping the measurement")
            break
        reports = [json.loads(o.strip().splitlines()[-1]) for o in outs]
        rates[n] = sum(r["images_per_second"] for r in reports)
        print(f"measure: {n} process{'es' * (n > 1)}: {rates[n]:,.0f} images/s summed, compiling "
              f"{max(r['compile_seconds'] for r in reports):.0f} s, {reports[0]['precision']} on "
              f"{reports[0]['device']} ({time.time() - t0:.0f} s)", flush=True)
    return rates, reports[0]


def wait(p, deadline):
    """p's stdout, or None if it had to be stopped at the deadline."""
    try:
        return p.communicate(timeout=max(deadline - time.time(), 1))[0]
    except subprocess.TimeoutExpired:
        p.kill()
        p.communicate()
        return None


# --- 3. train what fits -------------------------------------------------------------------------------------

def plan(todo, per_process, n, params, seconds_left, compile_seconds):
    """The entries of todo (in order) that fit whole in seconds_left, run n at a time, and one entry's seconds."""
    t = params["train"]
    images = (t["limit"] or 45000) // t["batch_size"] * t["batch_size"] * t["epochs"]
    entry_seconds = images / per_process + 2 * compile_seconds + 15  # + evaluation and imports
    waves = int(seconds_left // entry_seconds)
    return todo[:waves * n], entry_seconds


def train_all(work, chosen, n, deadline):
    """Trains and evaluates chosen (variants), n processes at a time; {variant: wall seconds} of those done."""
    logs, queue, running, done = work / "logs", list(chosen), {}, {}
    logs.mkdir(exist_ok=True)
    env = {"XLA_PYTHON_CLIENT_MEM_FRACTION": f"{0.9 / n:.3f}"}  # n processes share the GPU's memory
    while queue or running:
        while queue and len(running) < n:
            v = queue.pop(0)
            running[v] = (stage(work, "train", key(v), env=env, log=logs / f"{key(v)}.log"), time.time(), "train")
        time.sleep(0.5)
        for v, (p, t0, step) in list(running.items()):
            if p.poll() is None:
                continue
            del running[v]
            if p.returncode:
                print(f"{v}: {step} failed (exit {p.returncode}); see {logs / (key(v) + '.log')}")
            elif step == "train":
                running[v] = (stage(work, "evaluate", key(v), env=env, log=logs / f"{key(v)}.log"), t0, "evaluate")
            else:
                done[v] = time.time() - t0
                print(f"{v}: trained and evaluated in {done[v]:.0f} s", flush=True)
        if time.time() > deadline - MARGIN:
            for v, (p, _, step) in running.items():
                os.killpg(p.pid, signal.SIGTERM)  # checkpoints stay: a later call resumes these
                print(f"{v}: stopped at the budget during {step}")
            for p, _, _ in running.values():
                p.wait()
            break
    return done


# --- 4. results ---------------------------------------------------------------------------------------------

def flops_per_image(model_params):
    """Training FLOPs per image of the study's net: 3 x forward (forward, two gradients), convolutions only,
    counted from the built model as benchmarks/train_speed.py counts them."""
    import numpy as np

    from stages.model import make_net
    from train_speed import conv_gemms
    net = make_net(10, "relu", False, model_params, 0.0, np.zeros(3), np.ones(3))
    return 3 * 2 * sum(m * k * n for m, k, n in conv_gemms(net, 1))


def peak_flops(args, device):
    if args.peak_tflops:
        return args.peak_tflops * 1e12
    return next((tf * 1e12 for name, tf in PEAK_BF16_TFLOPS.items() if name in device), None)


def collect(work, variants, wall, params, peak, concurrent):
    """{variant: metrics + timing + MFU} and one curves table for the entries just done."""
    import pandas as pd

    from stages.report import read_curves
    results, curves = {}, []
    fpi = flops_per_image(params["model"])
    for v in variants:
        e = key(v)
        summary = json.loads((work / f"models/grid/{e}.json").read_text())
        metrics = json.loads((work / f"metrics/grid/{e}.json").read_text())
        ips = summary["images_per_second"]
        results[v] = {**metrics, "entry": e, "images_per_second": ips, "wall_seconds": wall[v],
                      "concurrent_processes": concurrent, "device": summary["device"], "backend": summary["backend"],
                      "precision": summary["precision"], "train_images": summary["train_images"],
                      "flops_per_image": fpi, "mfu": ips * fpi / peak if peak and ips else None}
        curves.append(read_curves(work / f"dvclive/grid/{e}").assign(variant=v))
    return results, pd.concat(curves) if curves else None


def write_out(out, results, curves, log):
    """out/results.json (every entry so far), curves.tsv, study.md (the table), log.txt."""
    import pandas as pd
    out.mkdir(parents=True, exist_ok=True)
    old = json.loads((out / "results.json").read_text()) if (out / "results.json").exists() else {"entries": {}}
    old["entries"].update(results)
    (out / "results.json").write_text(json.dumps(old, indent=1) + "\n")
    if curves is not None:
        prev = pd.read_csv(out / "curves.tsv", sep="\t") if (out / "curves.tsv").exists() else None
        pd.concat([prev, curves]).to_csv(out / "curves.tsv", sep="\t", index=False)
    rows = ["| variant | test error | images/s | s/epoch | MFU | wall s | processes |", "|---|---:|---:|---:|---:|---:|---:|"]
    for v, r in sorted(old["entries"].items(), key=lambda kv: kv[1]["test_error"]):
        mfu = f"{r['mfu']:.1%}" if r["mfu"] else "-"
        rows.append(f"| {v} | {r['test_error']:.4f} | {r['images_per_second']:,.0f} | {r['seconds_per_epoch']:.1f} | "
                    f"{mfu} | {r['wall_seconds']:.0f} | {r['concurrent_processes']} |")
    (out / "study.md").write_text("\n".join(rows) + "\n")
    with open(out / "log.txt", "a") as f:
        f.write(log)


def main():
    args = parse_args()
    if args.bench_worker:
        return bench_worker(args)
    t0 = time.time()
    deadline = t0 + args.budget_seconds
    args.work = args.work or Path(tempfile.gettempdir(), "gpu-study-" + hashlib.sha1(
        str(args.out.resolve()).encode()).hexdigest()[:8])
    done_before = json.loads((args.out / "results.json").read_text())["entries"] if (args.out / "results.json").exists() else {}
    todo = [v for v in args.entries if v not in done_before]
    if not todo:
        return print(f"{args.out}/results.json holds every entry asked for ({', '.join(done_before)}): nothing to do")
    params = setup_project(args)
    log = stage(args.work, "prepare", "cifar10")
    print(log.strip().splitlines()[-1], f"({time.time() - t0:.0f} s)", flush=True)
    rates, probe = measure(args, deadline)
    if not rates:
        sys.exit("error: not even one measuring process finished: raise --budget-seconds or lower --measure-steps")
    n = max(rates, key=rates.get)
    chosen, entry_seconds = plan(todo, rates[n] / n, n, params, deadline - time.time() - MARGIN,
                                 probe["compile_seconds"])
    print(f"plan: {n} processes at {rates[n]:,.0f} images/s summed; ~{entry_seconds:.0f} s per entry; training "
          f"{', '.join(chosen) or 'nothing'}; left out: {', '.join(v for v in todo if v not in chosen) or 'none'}"
          + (f"; already done: {', '.join(done_before)}" if done_before else ""), flush=True)
    wall = train_all(args.work, chosen, n, deadline)
    results, curves = collect(args.work, [v for v in chosen if v in wall], wall, params,
                              peak_flops(args, probe["device"]), n)
    left = [v for v in todo if v not in wall]
    summary = (f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}: {probe['device']}, Keras {version('keras')} on "
               f"JAX, {probe['precision']}; measured {json.dumps(rates)} images/s by processes; trained "
               f"{', '.join(wall) or 'nothing'}; left for a later call: {', '.join(left) or 'none'}; "
               f"{time.time() - t0:.0f} s of a {args.budget_seconds:.0f} s budget\n")
    write_out(args.out, results, curves, summary)
    print(summary, end="")


if __name__ == "__main__":
    main()
