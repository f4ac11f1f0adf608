"""The grid's entries trained N at a time through DVC, in this workspace; then the report, as `dvc repro`.

    python -m stages.parallel -j 2                          # every entry, two at a time, then `dvc repro`
    python -m stages.parallel -j 4 --keys 'cifar10-elu-*'   # this machine's share of the grid (docs/gpu.md)
    python -m stages.parallel -j 8 -S train.epochs=30       # params set first, as `dvc exp run -S` sets them
    python -m stages.parallel -j 8 --budget-seconds 3600 --throughput throughput.json   # the GPU study

Not a DVC stage: a runner of DVC. Steps:
1. -S values into params.yaml (DVC's own `--set-param` code), then params.yaml checked;
2. `dvc repro prepare@<dataset>`: the check, the archive's stamp and the data, once, before the workers;
3. with --budget-seconds: the plan (stages.plan: the most epochs E that fit, from benchmarks/throughput.py's
   measurement), printed as the command it amounts to and set as `-S train.epochs=E`; a deadline at the
   budget;
4. the workers, N at a time: each runs `dvc --wait-for-lock repro -s train@<key> evaluate@<key>` for one
   entry (train_exp, evaluate_exp for the experiment's own model). DVC releases its repository lock while a
   stage's command runs, so the N train at once and take turns only to record: every entry gets its dvc.lock
   entry, its run-cache entry and its outputs in DVC's cache, as `dvc repro` gives them;
5. without --keys: `dvc repro`, which finds every entry up to date and writes the report.

Each worker is its own process group; the i-th worker slot trains on the i-th visible GPU
(CUDA_VISIBLE_DEVICES, round-robin; unset where there is none). Ctrl-C, SIGTERM and the deadline stop every
worker: SIGINT to each group (what Ctrl-C in a terminal sends: DVC waits, the stage unwinds and keeps its last
finished epoch's checkpoint), SIGKILL to what is left GRACE seconds later. A failed entry starts no new one;
the running ones finish. What finished is in dvc.lock: `dvc repro`, or this command again, trains the rest.
"""

import argparse
import fnmatch
import math
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from stages import plan as planning
from stages.backend import nvidia_gpus
from stages.cli import UserError, cli
from stages.entry import PREPARED, experiment_entry, grid_entries
from stages.params import load

GRACE = (
    15.0  # seconds from SIGINT to a worker's group to SIGKILL: a stage's own 3 s (stages.cli) and DVC's exit
)
CLOSE = GRACE + 5.0  # seconds a budget keeps at its end for stopping the workers
POLL = 0.2  # seconds between looks at the workers
PR_SET_PDEATHSIG = 1


@dataclass(frozen=True)
class Job:
    name: str  # its lines' prefix: the entry's key, or "experiment"
    stages: tuple  # DVC stages it runs, in order, each as a single item (-s)
    dataset: str


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-j", "--jobs", type=int, default=2, help="entries trained at once (default 2)")
    ap.add_argument(
        "--keys", nargs="+", metavar="GLOB", help="only the entries whose key (or 'experiment') matches one"
    )
    ap.add_argument("-S", "--set-param", action="append", default=[], help="as `dvc exp run -S`, first")
    ap.add_argument("--budget-seconds", type=float, help="fit the epochs to this, and never run past it")
    ap.add_argument("--throughput", type=Path, help="benchmarks/throughput.py's JSON, for --budget-seconds")
    args = ap.parse_args(argv)
    if args.jobs < 1:
        raise UserError(f"-j {args.jobs}: must be >= 1; e.g. -j 2")
    if args.budget_seconds is not None and args.budget_seconds < CLOSE + 10:
        raise UserError(f"--budget-seconds {args.budget_seconds:g}: must be >= {CLOSE + 10:g}; e.g. 3600")
    if args.throughput and args.budget_seconds is None:
        raise UserError("--throughput: only plans a --budget-seconds; add one, or leave --throughput out")
    return args


def set_params(values, check=load):
    """-S path=value ... into params.yaml as `dvc exp run -S` writes them: existing keys only, each value read
    as YAML (30, null, false, [relu, elu]), comments kept; params.yaml is left as it was unless check()
    passes. (Not DVC's own code: it needs hydra, whose antlr4 has no wheel for an offline GPU machine.)"""
    if not values:
        return
    from ruamel.yaml import YAML

    path, rt = Path("params.yaml"), YAML()
    rt.representer.add_representer(
        type(None), lambda r, _: r.represent_scalar("tag:yaml.org,2002:null", "null")
    )
    before = path.read_text(encoding="utf-8")
    doc = rt.load(before)
    for value in values:
        key, sep, text = value.partition("=")
        *parents, leaf = key.split(".")
        node = doc
        for part in parents:
            node = node.get(part) if isinstance(node, dict) else None
        if not sep or not isinstance(node, dict) or leaf not in node:
            raise UserError(f"-S {value}: not key=value of a key params.yaml has; e.g. -S train.epochs=30")
        node[leaf] = YAML(typ="safe").load(text)
    with open(path, "w", encoding="utf-8") as f:
        rt.dump(doc, f)
    try:
        return check()
    except UserError:
        path.write_text(before, encoding="utf-8")
        raise


def select_jobs(params, keys):
    """The grid's entries, then the experiment's own model (named "experiment"); with --keys, those whose name
    matches one of them."""
    jobs = [Job(e.key, (f"train@{e.key}", f"evaluate@{e.key}"), e.dataset) for e in grid_entries(params)]
    jobs.append(Job("experiment", ("train_exp", "evaluate_exp"), experiment_entry(params).dataset))
    for glob in keys or []:
        if not any(fnmatch.fnmatchcase(j.name, glob) for j in jobs):
            raise UserError(
                f"--keys {glob}: matches no entry of params.yaml's grid (e.g. {jobs[0].name}) nor "
                f"'experiment'"
            )
    return [j for j in jobs if not keys or any(fnmatch.fnmatchcase(j.name, glob) for glob in keys)]


def visible_gpus():
    """The GPUs a worker may be given: CUDA_VISIBLE_DEVICES's, when set, else every one nvidia-smi lists."""
    if (env := os.environ.get("CUDA_VISIBLE_DEVICES")) is not None:
        return [g.strip() for g in env.split(",") if g.strip() and not g.strip().startswith("-")]
    return [str(i) for i in range(len(nvidia_gpus()))]


def worker_env(slot, gpus):
    """Worker slot i's environment: the i-th GPU, round-robin; nothing set without GPUs."""
    return {"CUDA_VISIBLE_DEVICES": gpus[slot % len(gpus)]} if gpus else {}


def _die_with_runner(runner):
    """In a worker before exec: SIGTERM when this runner ends, however it ends (Linux's parent-death
    signal)."""

    def arm():
        import ctypes

        try:
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        except (OSError, AttributeError):
            pass
        if os.getppid() != runner:
            os._exit(1)

    return arm


class Workers:
    """The DVC processes this runner started, each the leader of its own process group; their lines are
    printed as they come, prefixed by their job's name."""

    def __init__(self):
        self.started = []

    def start(self, name, dvc_args, env=None):
        p = subprocess.Popen(
            [sys.executable, "-m", "dvc", "--wait-for-lock", *dvc_args],
            env={**os.environ, **(env or {})},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            process_group=0,
            preexec_fn=_die_with_runner(os.getpid()),
        )
        threading.Thread(target=self._print, args=(name, p.stdout), daemon=True).start()
        self.started.append(p)
        return p

    @staticmethod
    def _print(name, lines):
        for line in lines:
            print(f"{name}: {line}", end="" if line.endswith("\n") else "\n", flush=True)

    def stop(self):
        """SIGINT to every group still there, SIGKILL to what is left of them GRACE seconds later."""
        for signum in (signal.SIGINT, signal.SIGTERM):  # a second Ctrl-C must not cut this short
            signal.signal(signum, signal.SIG_IGN)
        for sig, wait in ((signal.SIGINT, GRACE), (signal.SIGKILL, 0)):
            for p in self.started:
                try:
                    os.killpg(p.pid, sig)  # the group outlives its leader while a member is left
                except ProcessLookupError:
                    pass
            end = time.time() + wait
            while any(p.poll() is None for p in self.started) and time.time() < end:
                time.sleep(POLL)
        for p in self.started:
            p.wait()


def run_one(workers, name, dvc_args, deadline):
    """Runs one DVC command to its end (its exit status), or until the deadline (None, stopped)."""
    p = workers.start(name, dvc_args)
    while p.poll() is None:
        if time.time() >= deadline:
            workers.stop()
            return None
        time.sleep(POLL)
    return p.returncode


def prepare(workers, jobs, deadline):
    """The check, the archive's stamp and the data of every dataset the jobs need, before any worker starts:
    workers then run their stages as single items and never race for them."""
    targets = [f"prepare@{d}" for d in dict.fromkeys(j.dataset for j in jobs)]
    code = run_one(workers, "prepare", ["repro", *targets], deadline)
    if code:
        raise UserError(f"{' '.join(targets)}: failed (exit {code}; its lines above start with 'prepare:')")
    return code == 0


def train(workers, jobs, n, deadline, gpus):
    """Runs the jobs n at a time until all ended, one failed, or the deadline: (done, failed, not done)."""
    waiting, running, done, failed = list(jobs), {}, [], []
    free = list(range(n))  # worker slots; a slot keeps its GPU
    while (waiting and not failed or running) and time.time() < deadline:
        while waiting and free and not failed:
            job, slot = waiting.pop(0), free.pop(0)
            p = workers.start(job.name, ["repro", "-s", *job.stages], worker_env(slot, gpus))
            running[p] = (job, slot)
        time.sleep(POLL)
        for p, (job, slot) in list(running.items()):
            if p.poll() is not None:
                del running[p]
                free.append(slot)
                (failed if p.returncode else done).append(job)
    if running:
        workers.stop()
    return done, failed, [job for job, _ in running.values()] + waiting


def sizes(jobs):
    """stages.plan.Sizes of the largest prepared dataset the jobs train on (images per epoch and test set)."""
    import numpy as np

    from stages.entry import balanced_split
    from stages.params import num_classes

    params, found = load(), []
    for dataset in dict.fromkeys(j.dataset for j in jobs):
        with np.load(PREPARED / dataset / "train.npz") as f, np.load(PREPARED / dataset / "test.npz") as g:
            y, test = f["y"], len(g["y"])
        t = params["train"]
        tr, va = balanced_split(y, num_classes(params, dataset), t["validation"], t["limit"])
        found.append(planning.Sizes(len(tr), len(va), test))
    return max(found, key=lambda s: s.train)


def read_measurement(path):
    import json

    if path is None:
        return None
    try:
        m = json.loads(path.read_text(encoding="utf-8"))
        return m if isinstance(m.get("rates"), dict) and m.get("startup_seconds", 0) >= 0 else None
    except (OSError, ValueError, AttributeError):
        print(f"plan: {path}: no measurement there; planning without one")
        return None


def budget_plan(args, jobs, workers, deadline):
    """The jobs and the number at once that fit the budget; their epochs set in params.yaml (and checked)."""
    m, t = read_measurement(args.throughput), load()["train"]
    p = planning.fit(m, sizes(jobs), t["epochs"], len(jobs), deadline - time.time(), args.jobs)
    chosen = jobs[: p.entries]
    keys = "" if p.entries == len(jobs) else " --keys " + " ".join(j.name for j in chosen)
    print(
        f"plan: {p.epochs} of {t['epochs']} epochs, {p.processes} at a time, {p.entries} of {len(jobs)} "
        f"entries: ~{p.estimate_seconds:.0f} s estimated (x {planning.SAFETY}) of "
        f"{deadline - time.time():.0f} s left; "
        f"{p.basis}\nplan: python -m stages.parallel -j {p.processes} -S train.epochs={p.epochs}{keys}",
        flush=True,
    )
    if p.epochs != t["epochs"]:
        set_params([f"train.epochs={p.epochs}"])
        prepare(workers, chosen, deadline)  # the check again, for the new params.yaml
    return chosen, p.processes


def main():
    args = parse_args()
    jobs = set_params(args.set_param, lambda: select_jobs(load(), args.keys)) or select_jobs(
        load(), args.keys
    )
    workers = Workers()
    start = time.time()
    deadline = start + args.budget_seconds - CLOSE if args.budget_seconds else math.inf
    try:
        n = args.jobs
        if prepare(workers, jobs, deadline) and args.budget_seconds:
            jobs, n = budget_plan(args, jobs, workers, deadline)
        done, failed, left = train(workers, jobs, n, deadline, visible_gpus())
        final = not args.keys and len(done) == len(select_jobs(load(), None))  # the report needs all
        if final and run_one(workers, "repro", ["repro"], deadline):
            raise UserError(
                "dvc repro: failed (its lines above start with 'repro:'); fix what they say, rerun"
            )
    finally:
        workers.stop()
    say_done(args, done, failed, left, time.time() - start)


def say_done(args, done, failed, left, seconds):
    again = shlex.join(["python", "-m", "stages.parallel", *sys.argv[1:]])
    print(
        f"done: {len(done)} entries trained and evaluated through DVC in {seconds:.0f} s"
        + (f"; not finished: {' '.join(j.name for j in left)} (`{again}` resumes them)" if left else "")
    )
    if failed:
        raise UserError(
            f"{failed[0].stages[0]}: failed (its lines above start with '{failed[0].name}:'); fix what they "
            f"say, then `{again}` trains what is left"
        )


if __name__ == "__main__":
    cli(main, watch=False)
