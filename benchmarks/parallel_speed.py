"""Wall seconds of training a grid through DVC several entries at a time, in fresh temporary git+DVC copies of
this project (tests/conftest.py's make_project). Prints figures; not a test.

    python benchmarks/parallel_speed.py mechanisms               # the two ways DVC trains entries at once
    python benchmarks/parallel_speed.py jobs --archive A.tar.gz --jobs 1 2 -S train.limit=2000 ...

mechanisms: a 4-entry tiny grid (the tests' TINY at relu/elu x BN, 2 epochs, the tests' own 200-image
archive) and the experiment's own model, two at a time, (a) by stages.parallel (parallel `dvc --wait-for-lock
repro -s train@<key> evaluate@<key>` processes, then `dvc repro`) and (b) by DVC's experiment queue (`dvc exp
run --queue -s train@<key>` per entry and for train_exp, `dvc queue start -j 2`, then `dvc repro` restoring
them from the run cache); for each, the seconds and the number of models the final `dvc repro` trained (0:
every one was restored or up to date).
jobs: `python -m stages.parallel -j N` for each N, on the archive given, each in a fresh copy (prepare
included in the seconds, and timed apart).
"""

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.archives import write_cifar  # noqa: E402
from tests.conftest import ENV, dvc, make_project, run, set_params  # noqa: E402

FOUR = {"grid": {"activation": ["relu", "elu"], "batch_norm": [False, True]}}


def trained(output):
    """Models trained, by the train stage's own line ("training models/....keras: ...")."""
    return sum(line.split(": ", 1)[-1].startswith("training models/") for line in output.splitlines())


def timed(args, cwd):
    t0 = time.time()
    p = run(args, cwd, timeout=7200)
    return time.time() - t0, p.stdout


def by_runner(repo, jobs):
    seconds, out = timed([sys.executable, "-m", "stages.parallel", "-j", str(jobs)], repo)
    return seconds, trained(out), trained(dvc("repro", cwd=repo).stdout)


def by_queue(repo, jobs, keys):
    t0 = time.time()
    dvc("repro", "prepare@cifar10", cwd=repo)  # the data once, in the workspace, as the runner does
    for stage in [f"train@{key}" for key in keys] + ["train_exp"]:
        dvc("exp", "run", "--queue", "-s", stage, cwd=repo)
    dvc("queue", "start", "-j", str(jobs), cwd=repo)
    while any(w in dvc("queue", "status", cwd=repo).stdout for w in ("Queued", "Running")):
        time.sleep(2)
    out = dvc("repro", cwd=repo).stdout  # restores each train@ from the run cache, evaluates, reports
    return time.time() - t0, None, trained(out)


def mechanisms(base, jobs):
    archive = base / "tiny.tar.gz"
    write_cifar(archive, "cifar10", "python", train_per_class=20, test_per_class=5)
    keys = [f"cifar10-{a}-{b}-0" for a in ("relu", "elu") for b in (False, True)]
    for name, how in (("runner", by_runner), ("queue", lambda r, j: by_queue(r, j, keys))):
        repo = make_project(base / name, archive, FOUR)
        seconds, _, again = how(repo, jobs)
        print(
            f"{name}: 4 entries + the experiment's model, {jobs} at a time: {seconds:.0f} s; the final "
            f"`dvc repro` trained {again} model(s)",
            flush=True,
        )


def jobs_speed(base, archive, counts, overrides):
    for i, n in enumerate(counts):  # each in a fresh project: nothing comes from an earlier one's cache
        repo = make_project(base / f"{i}-j{n}", archive)
        set_params(repo, **overrides)
        run(["git", "commit", "-qam", "recipe"], repo)
        t0 = time.time()
        dvc("repro", "prepare@cifar10", cwd=repo)
        prepared = time.time() - t0
        seconds, count, again = by_runner(repo, n)
        print(
            f"-j {n}: {count} models trained in {seconds:.0f} s (prepare before it: {prepared:.0f} s); "
            f"a second `dvc repro` trained {again}",
            flush=True,
        )


def overrides_of(values):
    """-S a.b=v ... -> {"a": {"b": v}} (YAML values)."""
    import yaml

    out = {}
    for v in values:
        path, value = v.split("=", 1)
        *parents, leaf = path.split(".")
        node = out
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = yaml.safe_load(value)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("what", choices=["mechanisms", "jobs"])
    ap.add_argument("--jobs", type=int, nargs="+", default=[2])
    ap.add_argument("--archive", type=Path, help="jobs: the CIFAR-10 archive")
    ap.add_argument("-S", dest="set", action="append", default=[], help="jobs: params, e.g. train.epochs=2")
    args = ap.parse_args()
    print(f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {sys.argv[1:]}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        if args.what == "mechanisms":
            mechanisms(Path(tmp), args.jobs[0])
        else:
            jobs_speed(Path(tmp), args.archive.resolve(), args.jobs, overrides_of(args.set))


if __name__ == "__main__":
    assert ENV  # the tests' environment: git identity, DVC analytics off
    main()
