"""A published run's variants against another run's 95 % intervals: does a rerun (other code, machine or
precision) land where the reference run says the variant's test error lies?

    python scripts/compare_runs.py docs/results/cifar10-cpu-rerun-avx2 docs/results/cifar10-cpu cifar10

Prints a Markdown table, one row per variant of NEW: its test error (mean over its seeds), the reference's
model of the same seed, the reference's mean and 95 % interval (t over its seeds), and whether NEW lies
inside. NEW needs only its models' metrics (metrics/grid/<key>.json: a rerun stopped before its whole grid
is compared as far as it went); REFERENCE its report too (metrics/summary.json), as scripts/publish_run.py
lays a run out.
"""

import json
import statistics
import sys
from pathlib import Path


def read(path):
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        sys.exit(f"error: {path}: unreadable ({type(e).__name__}); give a folder scripts/publish_run.py made")


def seed_errors(folder, dataset):
    """{(variant, seed): test error} of every model in folder/metrics/grid."""
    out = {}
    for f in sorted(Path(folder, "metrics/grid").glob(f"{dataset}-*.json")):
        m = read(f)
        _, act, bn, seed = f.stem.rsplit("-", 3)
        out[act + ("+bn" if bn == "True" else ""), int(seed)] = m["test_error"]
    return out


def table(new, ref, dataset):
    b = read(Path(ref, "metrics/summary.json"))[dataset]
    same_seed, mine = seed_errors(ref, dataset), seed_errors(new, dataset)
    if not mine:
        sys.exit(f"error: {new}/metrics/grid: no {dataset} model; give a folder scripts/publish_run.py made")
    means = {n: statistics.fmean(e for (m, _), e in mine.items() if m == n) for n, _ in mine}
    lines = [
        f"| variant | {Path(new).name}: test error (seeds) | {Path(ref).name}: same seed | mean "
        f"| 95 % interval | inside? |",
        "|---|---|---:|---:|---|---|",
    ]
    for name, x in sorted(means.items(), key=lambda kv: kv[1]):
        r = b["variants"][name]
        seeds = sorted(s for (n, s) in mine if n == name)
        twin = [same_seed[name, s] for s in seeds if (name, s) in same_seed]
        lo, hi = r["test_error_ci_low"], r["test_error_ci_high"]
        inside = "yes" if lo <= x <= hi else f"no ({x - (hi if x > hi else lo):+.3f} outside)"
        lines.append(
            f"| {name} | {x:.4f} ({', '.join(map(str, seeds))}) | "
            f"{' / '.join(f'{t:.4f}' for t in twin) or '-'} | {r['test_error_mean']:.4f} | "
            f"{lo:.4f}–{hi:.4f} | {inside} |"
        )
    return "\n".join(lines)


def main():
    if len(sys.argv) != 4:
        sys.exit("usage: python scripts/compare_runs.py NEW REFERENCE DATASET")
    print(table(*sys.argv[1:]))


if __name__ == "__main__":
    main()
