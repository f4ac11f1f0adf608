"""scripts/compare_runs.py: a run's variants against a reference run's 95 % intervals, on the published
CPU study's committed files."""

import json
import subprocess
import sys

from tests.conftest import ENV, ROOT

REFERENCE = ROOT / "docs/results/cifar10-cpu"


def run_script(new, ref=REFERENCE):
    """scripts/compare_runs.py NEW REF cifar10, run as a user runs it from the project's root."""
    return subprocess.run(
        [sys.executable, "scripts/compare_runs.py", str(new), str(ref), "cifar10"],
        cwd=ROOT,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=60,
    )


def compare(new, ref=REFERENCE):
    p = run_script(new, ref)
    assert p.returncode == 0, p.stderr
    return [[c.strip() for c in line.strip("|").split("|")] for line in p.stdout.splitlines()[2:]]


def test_a_run_lies_inside_its_own_intervals_and_the_rerun_quotes_its_table():
    variants = json.loads((REFERENCE / "metrics/summary.json").read_text())["cifar10"]["variants"]
    rows = compare(REFERENCE)
    assert [r[0] for r in rows] == sorted(variants, key=lambda v: variants[v]["test_error_mean"])
    assert all(r[5] == "yes" and float(r[1].split()[0]) == float(r[3]) for r in rows)
    assert all(len(r[2].split(" / ")) == variants[r[0]]["n"] for r in rows)  # each seed's own model
    rerun_quotes_its_comparison()


def test_a_rerun_outside_the_interval_says_by_how_much(tmp_path):
    ref = json.loads((REFERENCE / "metrics/summary.json").read_text())["cifar10"]["variants"]["relu"]
    high = ref["test_error_ci_high"]
    (tmp_path / "metrics/grid").mkdir(parents=True)  # a rerun stopped after its first model: no report
    (tmp_path / "metrics/grid/cifar10-relu-False-0.json").write_text(json.dumps({"test_error": high + 0.05}))
    twin = json.loads((REFERENCE / "metrics/grid/cifar10-relu-False-0.json").read_text())["test_error"]
    assert compare(tmp_path) == [
        [
            "relu",
            f"{high + 0.05:.4f} (0)",
            f"{twin:.4f}",
            f"{ref['test_error_mean']:.4f}",
            f"{ref['test_error_ci_low']:.4f}–{high:.4f}",
            "no (+0.050 outside)",
        ]
    ]


def test_a_folder_without_models_is_one_line(tmp_path):
    p = run_script(tmp_path)
    assert p.returncode == 1 and p.stderr.count("\n") == 1
    assert p.stderr.startswith(f"error: {tmp_path}/metrics/grid: no cifar10 model; ")


def rerun_quotes_its_comparison():
    """docs/results/cifar10-cpu-rerun-avx2/RUN.md holds the table this script prints for it."""
    rerun = ROOT / "docs/results/cifar10-cpu-rerun-avx2"
    p = run_script(rerun.relative_to(ROOT), "docs/results/cifar10-cpu")
    assert p.returncode == 0 and p.stdout.count("\n") >= 3 and p.stdout in (rerun / "RUN.md").read_text()
