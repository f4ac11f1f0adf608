"""stages/tables.py, the one renderer of the ranked table (report.md, the README's table through
scripts/results_table.py, the GPU study), on hand-written summaries in the layout of metrics/summary.json."""

import json
import subprocess
import sys

from stages.tables import README, REPORT, ranked_table
from tests.conftest import ENV, ROOT


def variant(rank, mean, n, std=None, low=0.1, high=0.2, seconds=12.34, **more):
    return {
        "rank": rank,
        "n": n,
        "test_error_mean": mean,
        "test_error_std": std,
        "test_error_ci_low": low,
        "test_error_ci_high": high,
        "seconds_per_epoch": seconds,
        "diverged": 0,
        **more,
    }


def summary(n, can_rank):
    """Two variants, listed out of rank order; b is told apart from a (p = 0.0123) where the run can rank."""
    return {
        "can_rank": can_rank,
        "variants": {
            "b": variant(
                2, 0.3, n, std=0.02 if n > 1 else None, seconds=None, test_loss_mean=1.0, loss_rank=1
            ),
            "a": variant(1, 0.25, n, std=0.01 if n > 1 else None, test_loss_mean=1.1, loss_rank=2),
        },
        "neighbours": {
            "a vs b": {
                "better": "a",
                "worse": "b",
                "p": 0.0123,
                "test": "paired t over 3 seeds",
                "distinguishable": True if can_rank else None,
            }
        },
    }


def test_the_readme_table_of_a_run_that_ranks():
    assert ranked_table(summary(3, True), README, compact=True) == [
        "| rank | variant | test error, mean ± std over 3 seeds | 95 % interval (t over seeds) "
        "| told apart from the next? | s/epoch |",
        "|---:|---|---|---|---|---:|",
        "| 1 | a | 0.250 ± 0.010 | 0.100–0.200 | yes, p = 0.012 (paired t over 3 seeds) | 12 |",
        "| 2 | b | 0.300 ± 0.020 | 0.100–0.200 |  | – |",
    ]


def test_a_run_that_cannot_rank_gets_p_without_a_verdict_and_one_seed_no_spread():
    rows = ranked_table(summary(1, False), README)
    assert rows[0].startswith("| rank | variant | test error | 95 % interval (Wilson, test images) |")
    assert rows[2] == "| 1 | a | 0.2500 | 0.1000–0.2000 | p = 0.012 (paired t over 3 seeds) | 12.3 |"


def test_the_reports_table_has_loss_and_its_rank():
    rows = ranked_table(summary(2, True), REPORT)
    assert rows[0] == (
        "| rank | variant | test error, mean ± std over 2 seeds | 95 % interval (t over seeds) | n "
        "| test loss | rank by loss | s/epoch | mean activation, last epoch | diverged |"
    )
    assert rows[3] == "| 2 | b | 0.3000 ± 0.0200 | 0.1000–0.2000 | 2 | 1.000 | 1 | – | – | 0 |"


def run_table(folder, dataset="cifar10"):
    return subprocess.run(
        [sys.executable, str(ROOT / "scripts/results_table.py"), str(folder), dataset],
        env=ENV,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_results_table_on_a_one_seed_run_is_a_table_without_intervals(tmp_path):
    """Was: a traceback (a one-seed run's std is null)."""
    s = summary(1, False) | {"cannot_rank_because": "one seed of the 2 a ranking needs"}
    (tmp_path / "metrics").mkdir()
    (tmp_path / "metrics/summary.json").write_text(json.dumps({"cifar10": s}))
    p = run_table(tmp_path)
    assert p.returncode == 0 and p.stderr == ""
    assert p.stdout.splitlines()[2:] == [
        "| rank | variant | test error | told apart from the next? | s/epoch |",
        "|---:|---|---|---|---:|",
        "| 1 | a | 0.250 | p = 0.012 (paired t over 3 seeds) | 12 |",
        "| 2 | b | 0.300 |  | – |",
        "",
        "This run cannot rank its variants (one seed of the 2 a ranking needs): an order of these models, "
        "not a finding.",
    ]
    p = run_table(tmp_path, "cifar100")
    assert p.returncode == 1 and p.stderr.count("\n") == 1
    assert p.stderr.startswith(f"error: {tmp_path}/metrics/summary.json: no report of 'cifar100' there")
