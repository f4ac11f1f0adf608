"""The whole grid on one GPU, with Keras on JAX, fitted to a time budget it cannot overrun.

    python benchmarks/gpu_study.py --out DIR --budget-seconds 550 --archive cifar-10.tar --md5 none
    python benchmarks/gpu_study.py --out DIR --resume-from OLD/results.json      # continue an earlier call
    python benchmarks/gpu_study.py --out /tmp/x --tiny                            # a few hundred images, on a
                                                                                  # CPU
    bash benchmarks/device_run.sh                                                 # on a lent GPU machine

Needs the project's working tree, JAX and Keras (TensorFlow is not used). Steps:
1. refuse, within seconds, a real-size run where no GPU is visible (--allow-cpu overrides, --tiny is a CPU
   check);
2. a scratch copy of the project (--work): the default recipe with train.backend jax and precision auto (bf16
   on GPUs of compute capability >= 8.0); `prepare` decodes the archive there (skipped when --work holds it);
3. measurement, at most MEASURE_SHARE of the budget: max(--processes) copies of the study's net start and
   compile, wait at a barrier, then 1, 2, 4, ... of them are timed together; the sweep stops when the summed
   images/s stops growing; MFU of the summed rate against the datasheet dense bf16 peak and a measured matmul;
4. the epochs E: --epochs N, or (auto) the largest E <= train.epochs such that every entry asked for, at the
   concurrency that fits most, trains and evaluates in what is left of the budget with SAFETY to spare (the
   step schedule is in fractions of training, so it scales), or when not even E = 1 fits them all, the first
   entries that do; every output says "E of 150 epochs (fitted to the budget)";
5. the entries, in ORDER, by the train and evaluate stages themselves, n at a time; --out is rewritten after
   the measurement and after every finished entry, so a call killed at any moment returns what it had; at the
   deadline every process group gets SIGTERM, then SIGKILL after GRACE seconds; every process started dies
   with the study however it ends (Linux's parent-death signal).
--out: results.json, study.md (the ranked table), curves.tsv, log.txt (these lines), failures.txt (the log
tails of failed stages). --resume-from RESULTS.json (or an --out holding one) keeps its entries, measurement
and E.
"""

import argparse
import ctypes
import hashlib
import json
import math
import os
import queue
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from importlib.metadata import version
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]

ORDER = ["relu+bn", "elu", "relu", "elu+bn", "prelu", "prelu+bn", "lrelu", "lrelu+bn"]  # the write-up's first
# datasheet dense (no sparsity) bf16 tensor-core peaks, TFLOP/s; SXM unless named
PEAK_BF16_TFLOPS = {"H200": 989, "H100 PCIe": 756, "H100": 989, "A100": 312, "L40S": 362, "L4": 121}
TINY = {
    "model": {"width": 0.125},
    "train": {
        "epochs": 10,
        "limit": 300,
        "validation": 100,
        "batch_size": 32,
        "learning_rate": 0.05,
        "probe_images": 32,
    },
}
SAFETY = 1.3  # the fitted plan's estimate times this must fit in what is left of the budget
MEASURE_SHARE = 0.2  # of the budget, at most, for the measurement (compilation included)
GROWTH = 1.05  # the sweep goes on while the summed images/s grows by more than this factor
EPOCH_FIXED_SECONDS = (
    1.0  # per epoch beyond its images: checkpoint, probe, logging (a guess; SAFETY covers it)
)
GRACE = 3.0  # seconds between SIGTERM and SIGKILL
CLOSE = GRACE + 5.0  # seconds kept at the end: stopping the process groups and writing --out
TAIL = 4000  # characters of a failed stage's log kept in failures.txt
PR_SET_PDEATHSIG = 1


class Stopped(BaseException):
    """SIGTERM or SIGINT to the study: stop every process group, write --out, end."""


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True, help="results (<= 5 files); written as the study goes")
    ap.add_argument("--budget-seconds", type=float, default=550, help="never runs past this (default 550)")
    ap.add_argument("--archive", help="URL or local path of the CIFAR-10 archive (default: data.cifar10.url)")
    ap.add_argument("--md5", help="its md5, or 'none' to skip the check (default: data.cifar10.md5)")
    ap.add_argument(
        "--epochs", default="auto", help="'auto' (fitted to the budget, default) or a number (forced)"
    )
    ap.add_argument("--processes", type=int, nargs="+", default=[1, 2, 4, 8], help="concurrent counts to try")
    ap.add_argument("--measure-steps", type=int, default=100, help="timed steps per process and count")
    ap.add_argument("--entries", nargs="+", default=ORDER, help="variants, in training order")
    ap.add_argument(
        "--resume-from",
        type=Path,
        help="an earlier call's results.json: keeps its entries, E, "
        "measurement (default: --out/results.json if there)",
    )
    ap.add_argument(
        "--work", type=Path, help="scratch project (default: a folder in the temp dir named after --out)"
    )
    ap.add_argument(
        "--peak-tflops", type=float, help="the device's dense bf16 peak, for MFU (default: by GPU name)"
    )
    ap.add_argument(
        "--tiny", action="store_true", help="a few hundred images, width 1/8, <= 10 epochs: a CPU check"
    )
    ap.add_argument(
        "--allow-cpu", action="store_true", help="run at the real size even where no GPU is visible"
    )
    ap.add_argument("--bench-worker", action="store_true", help=argparse.SUPPRESS)  # one measuring process
    return check_args(ap.parse_args(argv))


def check_args(args):
    """One line naming the option and the fix for a value that cannot work."""
    if args.epochs != "auto" and not (args.epochs.isdigit() and int(args.epochs) >= 1):
        sys.exit(f"error: --epochs {args.epochs}: must be 'auto' or a whole number >= 1; e.g. --epochs 30")
    if args.budget_seconds < 30 and not args.bench_worker:
        sys.exit(
            f"error: --budget-seconds {args.budget_seconds:g}: must be >= 30 (prepare and one compilation)"
        )
    bad = [v for v in args.entries if v.removesuffix("+bn") not in {o.removesuffix("+bn") for o in ORDER}]
    if bad:
        sys.exit(f"error: --entries {bad[0]}: not a variant; choose from {' '.join(ORDER)}")
    if min(args.processes) < 1 or args.measure_steps < 2:
        sys.exit("error: --processes and --measure-steps: must be >= 1 and >= 2; e.g. --processes 1 2 4 8")
    return args


# --- processes that cannot outlive the study ----------------------------------------------------------------


def _die_with_study(study_pid):
    """In a child before exec: SIGKILL when the study ends, however it ends (Linux; a no-op elsewhere)."""

    def arm():
        try:
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        except (OSError, AttributeError):
            pass
        if os.getppid() != study_pid:  # the study ended before the call
            os._exit(1)

    return arm


class Procs:
    """Every process the study starts, each in its own process group, so that a stop reaches its children
    too."""

    def __init__(self):
        self.started = []

    def start(self, cmd, cwd, log, env=None, pipes=False):
        with open(log, "a") as f:
            f.write(f"=== {time.strftime('%H:%M:%S')}: {' '.join(map(str, cmd))}\n")
            f.flush()
            p = subprocess.Popen(
                cmd,
                cwd=cwd,
                env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
                stdout=subprocess.PIPE if pipes else f,
                stderr=f,
                text=True,
                stdin=subprocess.PIPE if pipes else subprocess.DEVNULL,
                process_group=0,
                preexec_fn=_die_with_study(os.getpid()),
            )
        self.started.append(p)
        return p

    def stop(self, procs):
        """SIGTERM to each group, SIGKILL to those still there GRACE seconds later; waits for all."""
        for sig, wait in ((signal.SIGTERM, GRACE), (signal.SIGKILL, None)):
            alive = [p for p in procs if p.poll() is None]
            for p in alive:
                try:
                    os.killpg(p.pid, sig)
                except ProcessLookupError:
                    pass
            end = time.time() + (wait or 30)
            for p in alive:
                try:
                    p.wait(timeout=max(end - time.time(), 0.01))
                except subprocess.TimeoutExpired:
                    pass

    def stop_all(self):
        self.stop(self.started)


def _stop_on_signal(signum, frame):
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise Stopped(signal.Signals(signum).name)


# --- 1. refuse to pretend -----------------------------------------------------------------------------------


def refuse_without_gpu(args):
    """Exits in one line when this real-size run would train on the CPU: nvidia-smi lists no GPU, or JAX sees
    none of those it lists (JAX's CPU wheel)."""
    if args.tiny or args.allow_cpu:
        return
    from stages.backend import GPU_FIX, nvidia_gpus

    listed = nvidia_gpus()
    if not listed:
        sys.exit(
            "error: no GPU visible (`nvidia-smi -L` lists none): at the real size this would train on the "
            "CPU for days; run it on a GPU machine, or pass --allow-cpu if you mean it "
            "(--tiny for a CPU check)"
        )
    probe = "import jax; print(sum(d.platform == 'gpu' for d in jax.devices()))"
    try:
        seen = subprocess.run(
            [sys.executable, "-c", probe],
            capture_output=True,
            text=True,
            timeout=120,
            env={**os.environ, "XLA_PYTHON_CLIENT_PREALLOCATE": "false"},
        ).stdout
    except subprocess.TimeoutExpired:
        seen = ""
    if not seen.strip().isdigit() or int(seen) == 0:
        sys.exit(f"error: nvidia-smi lists {listed[0]} but JAX sees no GPU: {GPU_FIX}; or pass --allow-cpu")


# --- the study's state: --out, rewritten as it goes ---------------------------------------------------------


class Study:
    def __init__(self, args):
        self.args, self.t0, self.procs = args, time.time(), Procs()
        self.end = self.t0 + args.budget_seconds - CLOSE  # every process is stopped by then
        self.out = args.out
        self.out.mkdir(parents=True, exist_ok=True)
        self.state, self.curves = resume(args)
        self.work = args.work or Path(
            self.state["study"].get("work")
            or Path(
                tempfile.gettempdir(),
                "gpu-study-" + hashlib.sha1(str(self.out.resolve()).encode()).hexdigest()[:8],
            )
        )
        self.state["study"].update(work=str(self.work), budget_seconds=args.budget_seconds)
        (self.work / "logs").mkdir(parents=True, exist_ok=True)

    def say(self, line):
        """A line of the study's own output: to stdout and log.txt."""
        line = f"[{time.time() - self.t0:4.0f} s] {line}"
        print(line, flush=True)
        with open(self.out / "log.txt", "a") as f:
            f.write(line + "\n")

    def left(self):
        return self.end - time.time()

    def epochs_note(self):
        s = self.state["study"]
        return f"{s['epochs']} of {s['epochs_of']} epochs ({s['epochs_how']})" if s.get("epochs") else ""

    def save(self):
        """results.json, study.md and curves.tsv, each replaced whole."""
        write_atomic(self.out / "results.json", json.dumps(self.state, indent=1) + "\n")
        write_atomic(self.out / "study.md", table(self.state, self.epochs_note()))
        if self.curves is not None:
            write_atomic(self.out / "curves.tsv", self.curves.to_csv(sep="\t", index=False))

    def failed(self, name, log):
        """Keeps the tail of a failed process's log in --out/failures.txt."""
        text = Path(log).read_text(errors="replace") if Path(log).exists() else "(no log)"
        with open(self.out / "failures.txt", "a") as f:
            f.write(f"=== {name}: the last {TAIL} characters of {log}\n{text[-TAIL:]}\n")


def write_atomic(path, text):
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def resume(args):
    """(state, curves) of the earlier call named by --resume-from or found in --out, else a fresh state."""
    src = args.resume_from or (args.out / "results.json")
    if not src.is_file():
        if args.resume_from:
            sys.exit(f"error: --resume-from {src}: no such file; name an earlier call's results.json")
        return {"study": {}, "measurement": None, "entries": {}, "stopped": {}, "failed": {}}, None
    try:
        state = json.loads(src.read_text())
        state["stopped"], state["failed"] = {}, {}  # tried again now
    except (ValueError, KeyError, TypeError) as e:
        sys.exit(
            f"error: --resume-from {src}: not an earlier call's results.json ({type(e).__name__}); "
            f"name another one or leave it out"
        )
    curves = src.with_name("curves.tsv")
    if curves.is_file():
        import pandas as pd

        curves = pd.read_csv(curves, sep="\t")
        return state, curves[curves.variant.isin(state["entries"])]
    return state, None


def table(state, note):
    """study.md: the entries ranked by test error, what E they had, the measurement, the ones not done."""
    s, m = state["study"], state["measurement"] or {}
    rows = [
        f"# ALL-CNN-C on CIFAR-10: {len(state['entries'])} variants, {note or 'no entry trained yet'}",
        "",
        f"{s.get('device', '?')}, Keras {s.get('keras', '?')} on JAX {s.get('jax', '?')}, "
        f"{s.get('precision', '?')}, {s.get('date', '?')}; budget {s.get('budget_seconds', 0):.0f} s",
        "",
    ]
    if m.get("summed_images_per_second"):
        rows += [
            f"Measured: {m['processes']} processes, {m['summed_images_per_second']:,.0f} images/s summed; "
            f"MFU {mfu_words(m)}",
            "",
        ]
    rows += [
        "| variant | test error | epochs | images/s (one of n) | s/epoch | wall s |",
        "|---|---:|---|---:|---:|---:|",
    ]
    for v, r in sorted(state["entries"].items(), key=lambda kv: kv[1]["test_error"]):
        rows.append(
            f"| {v} | {r['test_error']:.4f} | {r['epochs_note']} | {r['images_per_second'] or 0:,.0f} | "
            f"{r['seconds_per_epoch'] or 0:.1f} | {r['wall_seconds']:.0f} |"
        )
    for what in ("stopped", "failed"):
        if state[what]:
            rows += ["", f"{what.capitalize()}: " + "; ".join(f"{v} ({x})" for v, x in state[what].items())]
    return "\n".join(rows) + "\n"


def mfu_words(m):
    """The summed rate's MFU against each basis the measurement has."""
    datasheet = (
        f"{m['mfu_datasheet']:.1%} of the {m['peak_tflops']:g} TFLOP/s {m['peak_source']} peak"
        if m.get("mfu_datasheet")
        else "- (no bf16 peak known for this device and precision)"
    )
    matmul = (
        f"{m['mfu_matmul']:.1%} of a measured {m['matmul_tflops']:g} TFLOP/s matmul"
        if m.get("mfu_matmul")
        else "no matmul measured"
    )
    return f"{datasheet}, {matmul}"


class StudyError(Exception):
    """The study cannot go on: one line, after --out is written."""


# --- 2. the scratch project ---------------------------------------------------------------------------------


def setup_project(study):
    """A copy of the project in study.work with the study's params; returns its params."""
    from ruamel.yaml import YAML

    args, work = study.args, study.work
    shutil.copytree(
        ROOT / "stages", work / "stages", dirs_exist_ok=True, ignore=shutil.ignore_patterns("__pycache__")
    )
    shutil.copy(ROOT / "dvc.yaml", work / "dvc.yaml")  # the checkpoints' code fingerprint reads it
    params = YAML(typ="safe").load((ROOT / "params.yaml").read_text())
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
    study.state["study"].setdefault("epochs_of", params["train"]["epochs"])
    if args.epochs != "auto" and int(args.epochs) > params["train"]["epochs"]:
        raise StudyError(
            f"--epochs {args.epochs}: more than the recipe's train.epochs ({params['train']['epochs']}); "
            f"give at most {params['train']['epochs']}, or auto"
        )
    write_params(work, params)
    return params


def write_params(work, params):
    from ruamel.yaml import YAML

    with open(work / "params.yaml", "w") as f:
        YAML(typ="safe").dump(params, f)


def wait_all(study, procs, until):
    """True when every process of procs ended by `until`; else they are stopped and False."""
    while any(p.poll() is None for p in procs):
        if time.time() >= until:
            study.procs.stop(procs)
            return False
        time.sleep(0.2)
    return True


def prepare(study):
    prepared = study.work / "data/prepared/cifar10"
    if all((prepared / f).is_file() for f in ("train.npz", "test.npz", "classes.json")):
        return study.say(f"prepare: reused {prepared}")
    log = study.work / "logs/prepare.log"
    p = study.procs.start([sys.executable, "-m", "stages.prepare", "cifar10"], study.work, log)
    if not wait_all(study, [p], study.end) or p.returncode:
        study.failed("prepare", log)
        raise StudyError(
            f"prepare failed (exit {p.returncode}); its log's tail is in {study.out / 'failures.txt'}"
        )
    study.say(Path(log).read_text().strip().splitlines()[-1])


# --- 3. the measurement -------------------------------------------------------------------------------------


def memory_share(n):
    return {"XLA_PYTHON_CLIENT_MEM_FRACTION": f"{0.9 / n:.3f}"}  # n processes share the GPU's memory


def listen(workers):
    """A queue of (worker index, its JSON line) from the workers' stdout; (index, None) when one ends."""
    inbox = queue.Queue()

    def read(i, p):
        for line in p.stdout:
            if line.startswith("{"):
                inbox.put((i, json.loads(line)))
        inbox.put((i, None))

    for i, p in enumerate(workers):
        threading.Thread(target=read, args=(i, p), daemon=True).start()
    return inbox


def replies(inbox, n, until, want):
    """{worker: message} of n replies holding the key `want`, or fewer when a worker ended or `until` came."""
    got = {}
    while len(got) < n and until - time.time() > 0:
        try:
            i, msg = inbox.get(timeout=until - time.time())
        except queue.Empty:
            break
        if msg is None:
            break
        if want in msg:  # a late worker's "ready" is no reply to "go"
            got[i] = msg
    return got


def tell(workers, indices, command):
    for i in indices:
        workers[i].stdin.write(command + "\n")
        workers[i].stdin.flush()


def sweep(study, workers, inbox, ready, until):
    """{processes: summed images/s}: 1, 2, 4, ... of the ready workers timed together (released at once),
    until the summed rate stops growing or `until` comes."""
    rates = {}
    for n in sorted(set(study.args.processes)):
        if n > len(ready):
            break
        tell(workers, ready[:n], "go")
        got = replies(inbox, n, until, "images")
        if len(got) < n:
            study.say(f"measure: {n} processes did not finish within the measurement's share of the budget")
            break
        r = got.values()
        rates[str(n)] = sum(g["images"] for g in r) / (max(g["end"] for g in r) - min(g["start"] for g in r))
        study.say(
            f"measure: {n} process{'es together' if n > 1 else ' alone'}: "
            f"{rates[str(n)]:,.0f} images/s summed"
        )
        if len(rates) > 1 and rates[str(n)] < GROWTH * max(list(rates.values())[:-1]):
            study.say(f"measure: the summed rate stopped growing at {n} processes; the sweep ends")
            break
    return rates


def measure(study):
    """study.state["measurement"]: compile seconds, summed rates, the best count, MFU (see the docstring)."""
    counts, t0 = sorted(set(study.args.processes)), time.time()
    until = min(study.end, t0 + MEASURE_SHARE * study.args.budget_seconds)
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--bench-worker",
        "--out",
        "-",
        "--measure-steps",
        str(study.args.measure_steps),
    ]
    workers = [
        study.procs.start(
            cmd, study.work, study.work / f"logs/measure-{i}.log", memory_share(counts[-1]), pipes=True
        )
        for i in range(counts[-1])
    ]
    inbox = listen(workers)
    ready = replies(inbox, len(workers), t0 + 0.8 * (until - t0), "ready") or replies(
        inbox, 1, until, "ready"
    )
    if not ready:
        study.procs.stop(workers)
        for i in range(len(workers)):
            study.failed(f"measuring process {i}", study.work / f"logs/measure-{i}.log")
        raise StudyError(
            f"no measuring process compiled within {until - t0:.0f} s (the measurement's share of the "
            f"budget); raise --budget-seconds, or see {study.out / 'failures.txt'}"
        )
    first = ready[min(ready)]
    m = {k: first[k] for k in ("device", "precision", "flops_per_image")}
    m.update(
        startup_seconds=[round(r["ready"] - t0, 1) for r in ready.values()],
        compile_seconds=[round(r["compile_seconds"], 1) for r in ready.values()],
    )
    study.say(
        f"measure: {len(ready)} of {len(workers)} processes compiled, in {max(m['startup_seconds']):.0f} s "
        f"from their start ({max(m['compile_seconds']):.0f} s compiling), {m['precision']} on {m['device']}"
    )
    m["rates"] = sweep(study, workers, inbox, sorted(ready), until)
    if m["rates"] and until - time.time() > 0:
        tell(workers, [min(ready)], "matmul")
        m["matmul_tflops"] = (
            replies(inbox, 1, until, "matmul_tflops").get(min(ready), {}).get("matmul_tflops")
        )
    for p in workers:
        p.stdin.close()
    wait_all(study, workers, time.time() + GRACE)
    if not m["rates"]:
        raise StudyError(
            "no count of processes was timed within the measurement's share of the budget; raise "
            "--budget-seconds or lower --measure-steps"
        )
    study.state["measurement"] = with_mfu(study, m, time.time() - t0)


def with_mfu(study, m, seconds):
    """m plus the best count, its summed rate and MFU against the datasheet peak and the measured matmul."""
    best = max(m["rates"], key=m["rates"].get)
    peak = study.args.peak_tflops or next(
        (tf for name, tf in PEAK_BF16_TFLOPS.items() if name in m["device"]), None
    )
    flops = m["rates"][best] * m["flops_per_image"]
    m.update(
        processes=int(best),
        summed_images_per_second=m["rates"][best],
        peak_tflops=peak,
        peak_source="--peak-tflops" if study.args.peak_tflops else "datasheet dense bf16" if peak else None,
        mfu_datasheet=flops / (peak * 1e12) if peak and m["precision"] != "float32" else None,
        mfu_matmul=flops / (m["matmul_tflops"] * 1e12) if m.get("matmul_tflops") else None,
        seconds=round(seconds, 1),
    )
    study.say(
        f"measure: best {best} processes, {m['summed_images_per_second']:,.0f} images/s summed; MFU "
        f"{mfu_words(m)} ({seconds:.0f} s measuring)"
    )
    return m


def bench_worker(args):
    """One measuring process: the study's net (relu+bn) on random pixels through the real input pipeline.
    Compiles, says so ({"ready": ...}), then per line of stdin: "go" -> times --measure-steps steps and says
    {"images", "start", "end"}; "matmul" -> {"matmul_tflops"}. Ends at the end of stdin."""
    from stages.backend import configure
    from stages.params import load

    params = load()  # the scratch project's, with train.backend: jax
    precision, device, scope = configure(params["train"]["precision"], 0)
    import keras
    import numpy as np

    from stages.model import make_net
    from stages.pipeline import batches

    t, b, steps = params["train"], params["train"]["batch_size"], args.measure_steps
    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 256, (steps * b, 32, 32, 3), dtype=np.uint8), rng.integers(0, 10, steps * b)
    with scope:
        model = make_net(
            10, "relu", True, params["model"], t["weight_decay"], x.mean((0, 1, 2)), x.var((0, 1, 2))
        )
        model.compile(keras.optimizers.SGD(0.01, momentum=0.9), "sparse_categorical_crossentropy")
    t0 = time.time()
    model.fit(
        batches(x, y, b, 0, t["augment"]), epochs=1, steps_per_epoch=2, shuffle=False, verbose=0
    )  # compiles
    say_json(
        ready=time.time(),
        compile_seconds=time.time() - t0,
        precision=precision,
        device=device,
        flops_per_image=flops_per_image(params["model"]),
    )
    for line in sys.stdin:
        if line.strip() == "go":
            start = time.time()
            model.fit(
                batches(x, y, b, 1, t["augment"]), epochs=1, steps_per_epoch=steps, shuffle=False, verbose=0
            )
            say_json(images=steps * b, start=start, end=time.time())
        elif line.strip() == "matmul":
            say_json(matmul_tflops=matmul_tflops(precision, device))


def say_json(**values):
    print(json.dumps(values), flush=True)


def matmul_tflops(precision, device):
    """TFLOP/s of a large square matmul in the training's compute dtype: the device's practical peak."""
    import jax
    import jax.numpy as jnp

    n = 8192 if device != "cpu" else 1024
    dtype = (
        jnp.bfloat16 if "bfloat16" in precision else jnp.float16 if "float16" in precision else jnp.float32
    )
    a = jnp.ones((n, n), dtype)
    f = jax.jit(lambda a: a @ a)
    f(a).block_until_ready()
    t0, reps = time.perf_counter(), 10
    for _ in range(reps):
        out = f(a)
    out.block_until_ready()
    return round(2 * n**3 * reps / (time.perf_counter() - t0) / 1e12, 3)


def flops_per_image(model_params):
    """Training FLOPs per image of the study's net: 3 x forward (forward, two gradients), convolutions only,
    counted from the built model as benchmarks/train_speed.py counts them."""
    import numpy as np
    from train_speed import conv_gemms

    from stages.model import make_net

    net = make_net(10, "relu", False, model_params, 0.0, np.zeros(3), np.ones(3))
    return 3 * 2 * sum(m * k * n for m, k, n in conv_gemms(net, 1))


# --- 4. the epochs: fitted to what is left of the budget ----------------------------------------------------


def entry_seconds(m, t, test_images, epochs, n, count):
    """Estimated seconds for `count` entries at `epochs`, n at a time: per wave, a train and an evaluate
    process start and compile, then the epochs (training images, validation forward only at ~3x, fixed costs)
    and the test set."""
    per = m["rates"][str(n)] / n  # one process's share of the measured summed rate
    images = ((t["limit"] or 50000 - t["validation"]) // t["batch_size"] * t["batch_size"]) + t[
        "validation"
    ] / 3
    wave = (
        2 * max(m["startup_seconds"])
        + 5
        + epochs * (images / per + EPOCH_FIXED_SECONDS)
        + test_images / 3 / per
    )
    return math.ceil(count / n) * wave


def fit_epochs(m, t, test_images, count, left):
    """(E, n): the largest E <= train.epochs, and its concurrency, whose estimate x SAFETY fits in `left`
    seconds; E is 0 when not even one epoch fits."""
    best = (0, int(max(m["rates"], key=m["rates"].get)))
    for n in map(int, m["rates"]):
        fixed, one = (entry_seconds(m, t, test_images, e, n, count) for e in (0, 1))
        e = min(t["epochs"], int((left / SAFETY - fixed) // max(one - fixed, 1e-9)))
        best = max(
            best, (e, n), key=lambda b: (b[0], -entry_seconds(m, t, test_images, max(b[0], 1), b[1], count))
        )
    return best


def make_plan(study, params, todo):
    """The epochs E, the concurrency n and the entries to train now (in order), recorded in the state."""
    m, t, s = study.state["measurement"], params["train"], study.state["study"]
    import numpy as np

    with np.load(study.work / "data/prepared/cifar10/test.npz") as f:
        test_images = len(f["y"])
    left, how = study.left() - 5, "fitted to the budget"
    if study.args.epochs != "auto" or (s.get("epochs") and study.state["entries"]):
        epochs = int(study.args.epochs) if study.args.epochs != "auto" else s["epochs"]
        how = "forced by --epochs" if study.args.epochs != "auto" else s["epochs_how"]
        if study.state["entries"] and epochs != s["epochs"]:
            raise StudyError(
                f"--epochs {epochs}: the entries resumed were trained for {s['epochs']} epochs; give "
                f"--epochs {s['epochs']} (or auto), or a new --out without --resume-from"
            )
        n = int(min(m["rates"], key=lambda k: entry_seconds(m, t, test_images, epochs, int(k), len(todo))))
        chosen = todo
    else:
        epochs, n = fit_epochs(m, t, test_images, len(todo), left)
        waves = (
            len(todo) if epochs else max(0, int(left / SAFETY // entry_seconds(m, t, test_images, 1, n, n)))
        )
        epochs, chosen = max(epochs, 1), todo[: waves * n]
    estimate = entry_seconds(m, t, test_images, epochs, n, len(chosen)) if chosen else 0
    s.update(epochs=epochs, epochs_how=how)
    s["epochs_note"] = study.epochs_note()
    plan = {
        "epochs": epochs,
        "processes": n,
        "entries": chosen,
        "left_out": [v for v in todo if v not in chosen],
        "estimate_seconds": round(estimate),
        "seconds_left": round(left),
        "safety": SAFETY,
    }
    study.state["plan"] = plan
    study.say(
        f"plan: {study.epochs_note()}, {n} processes at a time; ~{estimate:.0f} s of the {left:.0f} s left "
        f"(x {SAFETY} = {estimate * SAFETY:.0f} s); training {', '.join(chosen) or 'nothing'}; left out: "
        f"{', '.join(plan['left_out']) or 'none'}"
        + ("; the deadline will stop what does not finish" if estimate * SAFETY > left else "")
    )
    write_params(study.work, {**params, "train": {**t, "epochs": epochs}})
    return plan


# --- 5. the entries, within the deadline --------------------------------------------------------------------


def entry(variant):
    """relu+bn -> the grid entry cifar10-relu-True-0 (stages.entry.Entry: its key, stage names and file
    paths)."""
    from stages.entry import Entry

    return Entry("cifar10", variant.removesuffix("+bn"), variant.endswith("+bn"), 0)


def key(variant):
    return entry(variant).key


def train_all(study, plan):
    """Trains and evaluates plan's entries, n processes at a time, each recorded in --out as it ends; at the
    deadline whatever still runs is stopped."""
    waiting, n = list(plan["entries"]), plan["processes"]
    study.running = {}
    while waiting or study.running:
        while waiting and len(study.running) < n and time.time() < study.end:
            v = waiting.pop(0)
            study.running[v] = (start_stage(study, "train", v, n), time.time(), "train")
        time.sleep(0.3)
        for v, (p, t0, step) in list(study.running.items()):
            if p.poll() is None:
                continue
            del study.running[v]
            if p.returncode:
                study.state["failed"][v] = f"{step} exited {p.returncode}"
                study.failed(f"{v}: {step}", study.work / f"logs/{key(v)}.log")
                study.say(f"{v}: {step} failed (exit {p.returncode}); its log's tail is in failures.txt")
                study.save()
            elif step == "train":
                study.running[v] = (start_stage(study, "evaluate", v, n), t0, "evaluate")
            else:
                entry_done(study, v, time.time() - t0, n)
        if time.time() >= study.end:
            break
    for v in waiting:
        study.state["stopped"][v] = "not started before the deadline"


def start_stage(study, step, variant, n):
    return study.procs.start(
        [sys.executable, "-m", f"stages.{step}", key(variant)],
        study.work,
        study.work / f"logs/{key(variant)}.log",
        memory_share(n),
    )


def entry_done(study, v, wall, n):
    """One entry's metrics, timing and curves into --out."""
    ent = entry(v)
    e, paths = ent.key, ent.paths
    summary = json.loads((study.work / paths["summary"]).read_text())
    metrics = json.loads((study.work / paths["metrics"]).read_text())
    study.state["entries"][v] = {
        **metrics,
        "entry": e,
        "epochs": summary["epochs"],
        "epochs_of": study.state["study"]["epochs_of"],
        "epochs_note": study.epochs_note(),
        "images_per_second": summary["images_per_second"],
        "seconds_per_epoch": summary["seconds_per_epoch"],
        "wall_seconds": round(wall, 1),
        "concurrent_processes": n,
        "device": summary["device"],
        "backend": summary["backend"],
        "precision": summary["precision"],
        "train_images": summary["train_images"],
    }
    add_curves(study, v, finished=True)
    study.save()
    study.say(f"{v}: test error {metrics['test_error']:.4f} after {study.epochs_note()}, {wall:.0f} s")


def add_curves(study, v, finished):
    """The entry's per-epoch curves (dvclive's, also of a stopped one) into study.curves."""
    import pandas as pd

    from stages.cli import UserError
    from stages.report import read_curves

    live = study.work / entry(v).paths["live"]
    try:  # a stopped entry may not have logged an epoch yet
        df = read_curves(live, f"train it again: dvc repro -f train@{key(v)}").assign(
            variant=v, finished=finished
        )
    except UserError:  # read_curves names no curve for a folder that is missing or empty
        return None
    old = study.curves[study.curves.variant != v] if study.curves is not None else None
    study.curves = pd.concat([old, df], ignore_index=True)
    return df


def stop_running(study, why):
    """Stops every process still running; the entries stopped keep their curves so far (and their checkpoints
    in --work, which a later call with the same --work resumes)."""
    study.procs.stop_all()
    for v, (_, _, step) in getattr(study, "running", {}).items():
        df = add_curves(study, v, finished=False)
        done = 0 if df is None else len(df)
        study.state["stopped"][v] = (
            f"during {step}, {done} of {study.state['study'].get('epochs')} epochs done"
        )
        study.say(f"{v}: stopped {why} during {step} ({done} epochs done)")
    study.running = {}


# --- the study ----------------------------------------------------------------------------------------------


def describe(study):
    """Device, versions and date into the state."""
    m = study.state["measurement"]
    study.state["study"].update(
        device=m["device"],
        precision=m["precision"],
        keras=version("keras"),
        jax=version("jax"),
        date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    )


def run(study):
    """The steps of the module's docstring, after the refusal."""
    todo = [v for v in study.args.entries if v not in study.state["entries"]]
    if not todo:
        return study.say(
            f"{study.out}: holds every entry asked for ({', '.join(study.state['entries'])}): nothing to do"
        )
    params = setup_project(study)
    prepare(study)
    if study.state["measurement"]:
        study.say(
            f"measure: reused ({study.state['measurement']['processes']} processes, "
            f"{study.state['measurement']['summed_images_per_second']:,.0f} images/s summed)"
        )
    else:
        measure(study)
    describe(study)
    study.save()
    import stages.report  # noqa: F401  (imported now, not at the deadline: it takes seconds)

    plan = make_plan(study, params, todo)
    study.save()
    train_all(study, plan)


def main():
    os.environ["KERAS_BACKEND"] = "jax"  # this study, and every process it starts, runs Keras on JAX
    args = parse_args()
    if args.bench_worker:
        return bench_worker(args)
    refuse_without_gpu(args)
    study = Study(args)
    signal.signal(signal.SIGTERM, _stop_on_signal)
    signal.signal(signal.SIGINT, _stop_on_signal)
    code, why = 0, "at the deadline"
    try:
        run(study)
    except Stopped as e:
        study.say(f"stopped by {e}")
        code, why = 128 + signal.Signals[str(e)], f"by {e}"
    except StudyError as e:
        study.say(f"error: {e}")
        code = 1
    finally:
        stop_running(study, why)
        study.save()
    study.say(
        f"done: {len(study.state['entries'])} entries in --out, {study.epochs_note() or 'no epochs chosen'}; "
        f"stopped: {', '.join(study.state['stopped']) or 'none'}; failed: "
        f"{', '.join(study.state['failed']) or 'none'}; {time.time() - study.t0:.0f} s of a "
        f"{args.budget_seconds:.0f} s budget"
    )
    sys.exit(code)


if __name__ == "__main__":
    main()
