"""The markdown table of a published run that the README quotes, from its metrics/summary.json.

    python scripts/results_table.py docs/results/cifar10-cpu cifar10

tests/test_results.py checks every table the README marks `<!-- results: <folder>, <dataset> -->` against the
file, so a number in the README is the number in the run's files. The table is stages.tables' renderer, the
one report.md uses. A run of one seed per variant gets a table without spread or intervals over seeds, and a
line saying that it cannot rank; a folder without the report's summary gets one line naming what to run.
"""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from stages.tables import README, ranked_table  # noqa: E402


def summary_of(folder, dataset):
    """The dataset's entry of folder/metrics/summary.json; a missing or foreign file exits with one line."""
    path = Path(folder, "metrics/summary.json")
    try:
        summary = json.loads(path.read_text(encoding="utf-8"))[dataset]
        summary["variants"].items()
        return summary
    except FileNotFoundError:
        sys.exit(f"error: {path}: missing; make the report first: python -m stages.report {folder}")
    except (ValueError, KeyError, TypeError, AttributeError, UnicodeDecodeError) as e:
        sys.exit(
            f"error: {path}: no report of {dataset!r} there ({type(e).__name__}); remake it: "
            f"python -m stages.report {folder}"
        )


def table(folder, dataset):
    summary = summary_of(folder, dataset)
    one_seed = {v["n"] for v in summary["variants"].values()} == {1}
    columns = [c for c in README if not (one_seed and c == "interval")]
    lines = [f"<!-- results: {folder}, {dataset} -->", "", *ranked_table(summary, columns, compact=True)]
    if one_seed or summary.get("can_rank") is False:
        why = summary.get("cannot_rank_because") or "one seed per variant"
        lines += ["", f"This run cannot rank its variants ({why}): an order of these models, not a finding."]
    return "\n".join(lines)


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(
            "usage: python scripts/results_table.py FOLDER DATASET  (e.g. docs/results/cifar10-cpu cifar10)"
        )
    print(table(*sys.argv[1:3]))
