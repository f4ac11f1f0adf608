"""The markdown table of a published run that the README quotes, from its metrics/summary.json.

    python scripts/results_table.py docs/results/cifar10-cpu cifar10

tests/test_results.py checks every table the README marks `<!-- results: <folder>, <dataset> -->` against the
file, so a number in the README is the number in the run's files.
"""

import json
import sys
from pathlib import Path


def table(folder, dataset):
    summary = json.loads(Path(folder, "metrics/summary.json").read_text(encoding="utf-8"))[dataset]
    variants = sorted(summary["variants"].items(), key=lambda kv: kv[1]["rank"])
    below = {t["better"]: t for t in summary["neighbours"].values()}
    n = sorted({v["n"] for _, v in variants})
    lines = [
        f"<!-- results: {folder}, {dataset} -->",
        "",
        f"| rank | variant | test error, mean ± std over {'/'.join(map(str, n))} seeds | 95 % interval "
        "(t over seeds) | told apart from the next? | s/epoch |",
        "|---:|---|---|---|---|---:|",
    ]
    for name, v in variants:
        t = below.get(name)
        apart = f"{'yes' if t['distinguishable'] else 'no'}, p = {t['p']:.2g} ({t['test']})" if t else ""
        lines.append(
            f"| {v['rank']} | {name} | {v['test_error_mean']:.3f} ± {v['test_error_std']:.3f} | "
            f"{v['test_error_ci_low']:.3f}–{v['test_error_ci_high']:.3f} | {apart} | "
            f"{v['seconds_per_epoch']:.0f} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    print(table(*sys.argv[1:3]))
