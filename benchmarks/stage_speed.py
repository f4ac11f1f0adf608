"""Training speed of the train stage at two revisions, TensorFlow backend: did a change make it slower?

    python benchmarks/stage_speed.py                          # 34b2823 (tf.data) against the working tree
    python benchmarks/stage_speed.py --before HEAD~3 --after HEAD --repeats 5 --epochs 4

Method. "before" is a git worktree of --before in a temp dir; "after" is --after's worktree, or this working
tree when --after is not given. One small learnable archive (tests/archives.py's write_cifar) is written, and
each side gets its own temporary git+DVC project built by tests/conftest.py's make_project from that side's
files, whose prepare stage runs once. Then, for every width x precision, the two sides' train stages run the
same params.yaml alternately (before, after, before, after, ... --repeats times each), so that a load from
other processes on a shared machine hits both sides alike. Each run's per-epoch seconds are read from its
dvclive curve (train/seconds.tsv: from epoch begin to epoch end, i.e. the training steps, the small
validation set and the bias-shift probe, the same work on both sides); epoch 1 (tracing, compilation) is
dropped. A run's speed is its training images per epoch / its fastest later epoch; the table gives the best
and the median over the runs of a side, and after/before of both (other processes only ever add time, so the
best is the steadier figure).
"""
import argparse
import csv
import importlib.metadata
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from unittest import mock

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests import conftest  # noqa: E402
from tests.archives import write_cifar  # noqa: E402
from tests.conftest import git, make_project, run, set_params  # noqa: E402

KEY = "cifar10-relu-False-0"
# the stages' command lines: 34b2823 took the entry as arguments, later revisions take its key
COMMANDS = {"before": (["cifar10"], ["cifar10", "relu", "false", "0"]), "after": (["cifar10"], [KEY])}


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--before", default="34b2823", help="revision of the 'before' side (default: 34b2823)")
    ap.add_argument("--after", default=None, help="revision of the 'after' side (default: the working tree)")
    ap.add_argument("--widths", type=float, nargs="+", default=[1.0, 0.25])
    ap.add_argument("--limits", type=int, nargs="+", default=[640, 2560],
                    help="training images per epoch, one per width (an epoch of a few seconds)")
    ap.add_argument("--precisions", nargs="+", default=["float32", "mixed_bfloat16"])
    ap.add_argument("--repeats", type=int, default=3, help="training runs per side and configuration")
    ap.add_argument("--epochs", type=int, default=3, help="epochs per run; the first one is not timed")
    ap.add_argument("--batch-size", type=int, default=128)
    a = ap.parse_args()
    if len(a.limits) != len(a.widths):
        ap.error("--limits needs one value per width")
    return a


def checkout(rev, tmp, name):
    """The root of a detached git worktree of rev under tmp."""
    path = Path(tmp, name)
    git("worktree", "add", "--detach", "-f", str(path), rev, cwd=ROOT)
    return path


def project(side, source, archive, tmp):
    """A temp project holding the stages of `source` (a checkout root), its data prepared once."""
    with mock.patch.object(conftest, "ROOT", source):
        repo = make_project(Path(tmp, f"project-{side}"), archive)
    run([sys.executable, "-m", "stages.prepare", *COMMANDS[side][0]], repo)
    return repo


def train_once(side, repo, images):
    """Runs one training; returns its training images/s, from its fastest epoch after the first."""
    for out in ("models", "dvclive", "checkpoints"):  # a fresh run, never a resumed one
        shutil.rmtree(repo / out, ignore_errors=True)
    run([sys.executable, "-m", "stages.train", *COMMANDS[side][1]], repo)
    tsv = next((repo / "dvclive").rglob("seconds.tsv"))
    with tsv.open() as f:
        seconds = [float(row["seconds"]) for row in csv.DictReader(f, delimiter="\t")]
    if len(seconds) < 2:
        raise SystemExit(f"{side}: {len(seconds)} epoch(s) recorded in {tsv}; need --epochs >= 2")
    return images / min(seconds[1:])


def measure(repos, width, limit, precision, a):
    """{side: [images/s per run]} of one configuration, the sides' runs interleaved."""
    images = limit // a.batch_size * a.batch_size  # steps per epoch x batch: the partial batch is dropped
    for repo in repos.values():
        set_params(repo, model={"width": width}, train={
            "epochs": a.epochs, "batch_size": a.batch_size, "limit": limit, "validation": 100,
            "precision": precision, "probe_images": 32, "augment": False})
    speeds = {side: [] for side in repos}
    for i in range(a.repeats):
        for side, repo in repos.items():
            speeds[side].append(train_once(side, repo, images))
            print(f"  [{width:g} {precision} run {i + 1}] {side}: {speeds[side][-1]:.1f} img/s", flush=True)
    return speeds


def table(rows):
    """The results as a text table; rows = [(width, precision, {side: [img/s]})]."""
    head = (f"{'width':>5}  {'precision':<15}{'before best':>12}{'before med':>11}{'after best':>11}"
            f"{'after med':>10}{'ratio best':>11}{'ratio med':>10}")
    lines = [head, "-" * len(head)]
    for width, precision, s in rows:
        b, af = s["before"], s["after"]
        bm, am = statistics.median(b), statistics.median(af)
        lines.append(f"{width:>5g}  {precision:<15}{max(b):>12.1f}{bm:>11.1f}{max(af):>11.1f}{am:>10.1f}"
                     f"{max(af) / max(b):>11.3f}{am / bm:>10.3f}")
    return "\n".join(lines)


def machine():
    lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    cpu = next((line.split(":", 1)[1].strip() for line in lscpu.splitlines() if line.startswith("Model name")), "?")
    versions = ", ".join(f"{p} {importlib.metadata.version(p)}" for p in ("tensorflow", "keras"))
    return f"CPU: {cpu}; {versions}"


def main():
    a = parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="stage_speed-"))
    trees = []
    try:
        archive = tmp / "cifar-10-python.tar.gz"
        write_cifar(archive, "cifar10", "python", train_per_class=max(a.limits) // 10 + 20, test_per_class=5)
        sources = {"before": checkout(a.before, tmp, "before")}
        trees.append(sources["before"])
        if a.after:
            trees.append(checkout(a.after, tmp, "after"))
        sources["after"] = trees[-1] if a.after else ROOT
        repos = {side: project(side, src, archive, tmp) for side, src in sources.items()}
        rows = []
        for width, limit in zip(a.widths, a.limits):
            for precision in a.precisions:
                rows.append((width, precision, measure(repos, width, limit, precision, a)))
        print(f"\nbefore = {a.before}, after = {a.after or 'working tree'}; TensorFlow backend, batch "
              f"{a.batch_size}, {a.epochs} epochs per run (epoch 1 not timed), {a.repeats} runs per side, "
              f"training images/s")
        print(machine())
        print(table(rows))
    finally:
        for tree in trees:
            git("worktree", "remove", "--force", str(tree), cwd=ROOT, check=False)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
