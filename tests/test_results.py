"""The published runs under docs/results/: each is the report of a real run with the files it was made from,
`python -m stages.report <folder>` makes the same report from them, and the README's tables quote them
exactly."""

import json
import re
import shutil
import subprocess
import sys

import pytest

from tests.conftest import ENV, ROOT

RESULTS = ROOT / "docs" / "results"
RUNS = sorted(p.parent.parent for p in RESULTS.glob("*/metrics/summary.json"))
# a README table that quotes a run is preceded by <!-- results: <run folder>, <dataset> -->
MARKER = re.compile(r"<!-- results: (\S+), (\w+) -->\n+((?:\|.*\|\n)+)")


def approx(a, b, places):
    return abs(a - b) <= 0.5 * 10**-places + 1e-12


@pytest.mark.parametrize("run", RUNS, ids=[r.name for r in RUNS])
def test_a_published_run_is_its_reports_source(run, tmp_path):
    copy = tmp_path / run.name
    shutil.copytree(run, copy)
    for out in ("metrics/summary.json", "reports/report.md"):
        (copy / out).unlink()
    p = subprocess.run(
        [sys.executable, "-m", "stages.report", str(copy)],
        cwd=ROOT,
        env={**ENV, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert p.returncode == 0, p.stderr[-3000:]
    # the same code on the same files: the same numbers, to the last digit
    assert json.loads((copy / "metrics/summary.json").read_text()) == json.loads(
        (run / "metrics/summary.json").read_text()
    )
    assert (copy / "reports/report.md").read_text() == (run / "reports/report.md").read_text()


def test_the_cpu_study_is_the_size_that_ranks():
    """docs/results/cifar10-cpu: 8 variants x >= 2 seeds, all 45,000 training images, >= 10 epochs, every
    model trained to the end."""
    run = RESULTS / "cifar10-cpu"
    models = [json.loads(f.read_text()) for f in sorted((run / "models/grid").glob("*.json"))]
    variants = {(m["activation"], m["batch_norm"]) for m in models}
    assert len(variants) == 8 and len(models) >= 16
    assert all(sum((m["activation"], m["batch_norm"]) == v for m in models) >= 2 for v in variants)
    assert {m["train_images"] for m in models} == {45000}
    assert min(m["epochs_completed"] for m in models) >= 10 and not any(m["diverged"] for m in models)
    summary = json.loads((run / "metrics/summary.json").read_text())["cifar10"]
    assert all(v["n"] >= 2 and v["test_images"] == 10000 for v in summary["variants"].values())
    assert "kendall_tau" in summary["write_up"]["ranking"]


def test_readme_tables_quote_the_published_runs():
    readme = (ROOT / "README.md").read_text()
    tables = MARKER.findall(readme)
    assert tables, "the README's headline table is marked <!-- results: docs/results/<run>, <dataset> -->"
    for folder, ds, table in tables:
        summary = json.loads((ROOT / folder / "metrics/summary.json").read_text())[ds]
        variants, neighbours = summary["variants"], summary["neighbours"]
        rows = [[c.strip() for c in line.strip("|").split("|")] for line in table.strip().splitlines()[2:]]
        assert [r[1] for r in rows] == sorted(variants, key=lambda v: variants[v]["rank"])
        for rank, variant, error, interval, below, seconds in rows:
            v = variants[variant]
            assert int(rank) == v["rank"]
            mean, std = (float(x) for x in error.split(" ± "))
            assert approx(mean, v["test_error_mean"], 3) and approx(std, v["test_error_std"], 3), variant
            low, high = (float(x) for x in interval.split("–"))
            assert approx(low, v["test_error_ci_low"], 3) and approx(high, v["test_error_ci_high"], 3), (
                variant
            )
            assert approx(float(seconds), v["seconds_per_epoch"], 0), variant
            t = next((t for t in neighbours.values() if t["better"] == variant), None)
            if t is None:
                assert below == "", variant
            else:
                p = float(re.search(r"p = ([\d.e-]+)", below).group(1))
                assert p == pytest.approx(t["p"], rel=0.06) and below.startswith(("yes", "no")), variant
                assert below.startswith("yes") == t["distinguishable"], variant


def test_readme_gives_each_recipe_as_its_one_command():
    from stages.recipes import RECIPES, command

    readme = (ROOT / "README.md").read_text()
    for name in RECIPES:
        assert f"\n{command(name)}\n" in readme, name


def test_readme_test_times_are_the_committed_logs():
    """The README's test counts and times, and docs/benchmarks.md's table, quote the logs in
    docs/test-times/."""

    def last_line(
        name,
    ):  # pytest's summary: "373 passed in 48.74s" or "427 passed, 1 skipped in 535.07s (0:08:55)"
        line = (ROOT / "docs/test-times" / name).read_text().strip().splitlines()[-1]
        m = re.search(r"(\d+) passed(?:, (\d+) skipped)? in ([\d.]+)s", line)
        assert m and "failed" not in line and "error" not in line, (name, line)
        return int(m[1]) + int(m[2] or 0), float(m[3])

    readme, table = (ROOT / "README.md").read_text(), (ROOT / "docs/benchmarks.md").read_text()
    fast, fast_s = last_line("fast-tier.txt")
    whole, whole_s = last_line("whole-suite.txt")
    assert f'python -m pytest -m "not e2e"   # the fast tier: {fast} tests in {fast_s:.0f} s,' in readme
    assert (
        f"python -m pytest                # the whole suite: {whole} tests in {whole_s / 60:.0f} min"
        in readme
    )
    assert f'| the fast tier (`-m "not e2e"`) | {fast} | {fast_s:.0f} s | |' in table
    assert f"| the whole suite | {whole} | {whole_s:,.0f} s |" in table


def test_readme_rank_block_is_what_dvc_metrics_show_prints():
    """The README's `dvc metrics show …/metrics/rank` block is DVC's output on the committed rank files."""
    block = re.search(
        r"```console\n\$ (dvc metrics show \S+)\n(.*?)\n```", (ROOT / "README.md").read_text(), re.S
    )
    assert block, "README: no `dvc metrics show` console block"
    p = subprocess.run(block.group(1).split(), cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0 and p.stdout.rstrip() == block.group(2), p.stdout + p.stderr
    assert len(block.group(2).splitlines()) == 1 + 8  # a header, then the 8 variants by rank
