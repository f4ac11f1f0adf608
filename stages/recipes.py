"""The study's sizes: each one command, its offline form, its measured times; what `dvc repro` would train.

Each size is a named DVC experiment (`dvc exp show` lists it, `dvc exp apply` brings it back). The models
`dvc repro` would train at the current params.yaml are counted from dvc.lock, as `dvc status` counts them.

    python -m stages.recipes              # every size: what it is, its command, offline, measured times
    python -m stages.recipes --estimate   # the models `dvc repro` would train now (params.yaml vs dvc.lock)
    python -m stages.recipes --markdown   # the README's table of times, from TIMES below

params.yaml as it is holds the GPU size (width 1.0, 150 epochs: weeks on a CPU). The step schedule is in
fractions of training, so it scales with the epochs as it is. Times are the lead's to update: TIMES here,
then the README's table with `--markdown` (tests/test_recipes.py holds the two together).
"""

import argparse
import hashlib
import shlex
from pathlib import Path

import yaml

from stages.entry import experiment_entry, grid_entries

SECTION = "Sizes and times"  # the README section the train stage points a CPU user at (a test holds it)

RECIPES = {
    "quick-look": {
        "model.width": 0.25,
        "train.limit": 8000,
        "train.validation": 1000,
        "train.epochs": 4,
        "train.batch_size": 64,
        "train.learning_rate": 0.05,
    },
    "cpu-study": {"model.width": 0.25, "train.epochs": 10, "train.learning_rate": 0.05, "grid.seed": "[0,1]"},
}
WHAT = {
    "quick-look": "the whole pipeline at a quarter of the width, 8,000 images, 4 epochs: no ranking",
    "cpu-study": "the study that ranks the variants on a CPU: 45,000 images, 10 epochs, 2 seeds, width 0.25",
    "gpu-size": "params.yaml as it is: the paper's width, 150 epochs (docs/gpu.md)",
}
GPU_COMMANDS = ("dvc exp run -n gpu-size", "python -m stages.parallel -j 2")
OFFLINE = "-S data.cifar10.url=/data/cifar-10-python.tar.gz"  # the official archive, its md5 still checked
OTHER_ARCHIVE = "-S data.cifar10.md5=null"  # any other archive (e.g. rebuilt from JPEGs): no md5 check

# (size, CPU kind, wall time, where the figure comes from); 2 cores each. Measured figures only.
TIMES = [
    (
        "quick-look",
        "AMX (Intel Xeon), bf16",
        "6 min (371 s)",
        "offline, fresh clone, prepare included; commit d9554b4",
    ),
    ("quick-look", "AVX-512 BF16, bf16", "17 min (14 min CPU)", "a user's run on shared cores; issue 22"),
    (
        "quick-look",
        "AVX2 only (AMD EPYC), float32",
        "not measured whole",
        "6 of 9 models in 57 min (24 min CPU) at load 15-21, then stopped; docs/times/quick-look-avx2.txt",
    ),
    ("cpu-study", "AMX (Intel Xeon), bf16", "2 h 05 min", "shared cores; docs/results/cifar10-cpu/RUN.md"),
    (
        "cpu-study",
        "AVX2 only (AMD EPYC), float32",
        "6 h 15 min, estimated",
        "2 seeds x 10 epochs of the idle epochs measured here: elu 121 s, elu+bn 143 s, prelu+bn 168 s, "
        "prelu ~160 s (relu, lrelu as elu; their +bn as elu+bn); docs/results/cifar10-cpu-rerun-avx2/RUN.md",
    ),
    ("cpu-study", "AVX-512 BF16 (no AMX)", "not measured", "the train stage prints its estimate"),
    (
        "gpu-size",
        "any CPU",
        "not measured: weeks",
        "the train stage's estimate: 28 h 55 min a model; issue 22",
    ),
    ("gpu-size", "GPU", "not run yet", "docs/gpu.md"),
]


def command(name):
    """The one command that runs a recipe as a named DVC experiment."""
    return f"dvc exp run -n {name} " + " ".join(
        f"-S {shlex.quote(f'{k}={v}')}" for k, v in RECIPES[name].items()
    )


def markdown():
    """The README's table of times: one row per (size, CPU kind)."""
    rows = ["| size | CPU (2 cores) | time | source |", "|---|---|---|---|"]
    return "\n".join(rows + [f"| {size} | {kind} | {t} | {src} |" for size, kind, t, src in TIMES])


def sizes():
    """Every size as the lines `python -m stages.recipes` prints."""
    lines = []
    for name, what in WHAT.items():
        cmd = command(name) if name in RECIPES else GPU_COMMANDS[0]
        lines += [f"{name}: {what}", f"  {cmd}", f"  offline: {cmd} {OFFLINE}"]
        lines += [f"  {kind}: {t} ({src})" for size, kind, t, src in TIMES if size == name]
        if name not in RECIPES:
            lines.append(f"  or N entries at a time: {GPU_COMMANDS[1]}")
    return lines + [
        f"offline, an archive that is not the official one: add {OTHER_ARCHIVE} (README, {SECTION!r})"
    ]


def _value(params, dotted):
    for k in dotted.split("."):
        params = params[k]
    return params


def _md5(path):
    try:
        return hashlib.md5(Path(path).read_bytes()).hexdigest()
    except OSError:
        return None


def _outs(lock):
    """{path: md5} of every output dvc.lock records (what a later stage's deps are compared with)."""
    return {o["path"]: o.get("md5") for s in lock.values() for o in s.get("outs", [])}


def _reruns(name, params, lock, code):
    """Whether `dvc repro` would run stage `name` again: no record, a recorded param that changed, a
    dependency of another content (code: {stages/*.py listed in dvc.yaml: md5 now}), or code it does not
    record."""
    rec = lock.get(name)
    if rec is None:
        return True
    try:
        if any(_value(params, k) != v for k, v in rec.get("params", {}).get("params.yaml", {}).items()):
            return True
    except (KeyError, TypeError):
        return True
    deps, outs = {d["path"]: d.get("md5") for d in rec.get("deps", [])}, _outs(lock)
    return set(code) - set(deps) != set() or any(
        md5 != (code[path] if path in code else outs.get(path, md5)) for path, md5 in deps.items()
    )


def still_to_train(params, current=None):
    """The distinct models `dvc repro` would train at these params, other than `current` (an Entry): grid
    entries and the experiment's own, as dvc.lock against params.yaml and the code says (what `dvc status`
    lists; DVC's run-cache may still restore some). The experiment's model counts once when it equals a grid
    entry (stages/train.py copies it)."""
    lock_file = Path("dvc.lock")
    lock = yaml.safe_load(lock_file.read_text(encoding="utf-8"))["stages"] if lock_file.exists() else {}
    stages = yaml.safe_load(Path("dvc.yaml").read_text(encoding="utf-8"))["stages"]
    todo = []
    for entry in [experiment_entry(params), *grid_entries(params)]:
        stage = "train_exp" if entry.experiment else "train"
        name = stage if entry.experiment else f"train@{entry.key}"
        code = {d: _md5(d) for d in stages[stage]["deps"] if d.startswith("stages/")}
        same = entry.dataset, entry.activation, entry.batch_norm, entry.seed
        if same in {(e.dataset, e.activation, e.batch_norm, e.seed) for e in [current, *todo] if e}:
            continue
        if _reruns(name, params, lock, code):
            todo.append(entry)
    return [e for e in todo if e != current]


def estimate(params):
    todo = still_to_train(params)
    n_grid = len(grid_entries(params))
    twin = {e.key for e in grid_entries(params)}
    names = ", ".join(
        e.key if not e.experiment else f"the experiment's own{' (= ' + e.key + ')' if e.key in twin else ''}"
        for e in todo
    )
    return [
        f"`dvc repro` would train {len(todo)} model{'s' * (len(todo) != 1)} at these params "
        f"(grid of {n_grid} plus the experiment's own; dvc.lock against params.yaml and the code)"
        + (f": {names}" if todo else ""),
        f"each for {params['train']['epochs']} epochs; the train stage prints the expected time a few steps "
        f"in (README, {SECTION!r})",
    ]


def main():
    ap = argparse.ArgumentParser("python -m stages.recipes", description=__doc__.splitlines()[0])
    ap.add_argument("--estimate", action="store_true", help="the models `dvc repro` would train now")
    ap.add_argument("--markdown", action="store_true", help="the README's table of times")
    args = ap.parse_args()
    if args.markdown:
        print(markdown())
        return
    if args.estimate:
        from stages.params import load

        print("\n".join(estimate(load())))
        return
    print("\n".join(sizes()))


if __name__ == "__main__":
    from stages.cli import cli

    cli(main)
