"""scripts/publish_run.py SRC OUT (issue 21, item 1): it once deleted OUT first, whatever it was (a whole
clone with `.` as OUT, the study's workspace with OUT = SRC, docs/results with its published runs). Now every
unsafe OUT is one line and nothing anywhere changes; a publish is built beside OUT and renamed into place."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ENV, ROOT

PUBLISHED = ROOT / "docs/results/cifar10-cpu"  # a finished study's files, the source of these publishes


def snapshot(folder):
    """{path: bytes or link target} of everything under folder (links not followed)."""
    out = {}
    for p in sorted(Path(folder).rglob("*")):
        rel = str(p.relative_to(folder))
        out[rel] = ("link", os.readlink(p)) if p.is_symlink() else p.read_bytes() if p.is_file() else "dir"
    return out


@pytest.fixture
def clone(tmp_path):
    """A checkout of the project (its stages/ and scripts/, a .git and an uncommitted file) holding a finished
    study's workspace at ws/ (a copy of the published CPU run), and a folder outside it."""
    proj = tmp_path / "proj"
    for d in ("stages", "scripts"):
        shutil.copytree(ROOT / d, proj / d, ignore=shutil.ignore_patterns("__pycache__"))
    (proj / ".git").mkdir()
    (proj / ".git/HEAD").write_text("ref: refs/heads/main\n")
    (proj / "thesis.tex").write_text("uncommitted work\n")
    shutil.copytree(PUBLISHED, proj / "ws")
    for p in ("reports", "plots"):
        shutil.rmtree(proj / "ws" / p)
    for p in ("RUN.md", "log.txt", "log-seed2.txt"):
        (proj / "ws" / p).unlink()
    (proj / "docs/results/other-run").mkdir(parents=True)
    (proj / "docs/results/other-run/RUN.md").write_text("a run published by hand\n")
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside/thesis.tex").write_text("outside the project\n")
    return proj


def publish(proj, *args):
    return subprocess.run(
        [sys.executable, "scripts/publish_run.py", *map(str, args)],
        cwd=proj,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=240,
    )


def refused(proj, src, out, expected):
    before = snapshot(proj.parent)
    p = publish(proj, src, out)
    lines = p.stderr.strip().splitlines()
    assert p.returncode != 0 and len(lines) == 1 and lines[0].startswith("error: "), p.stderr
    assert expected in lines[0], lines[0]
    assert snapshot(proj.parent) == before  # nothing deleted, nothing written, anywhere
    return lines[0]


def test_the_checkout_itself_is_refused(clone):
    line = refused(clone, "ws", ".", "itself, or a folder above it")
    assert line == f"error: .: is {clone} itself, or a folder above it; give a folder inside it"
    refused(clone, "ws", "..", "itself, or a folder above it")


def test_the_workspace_itself_or_a_folder_inside_it_is_refused(clone):
    refused(clone, "ws", "ws", "lies inside or around it")
    refused(clone, "ws", "ws/published", "lies inside or around it")


def test_a_folder_holding_published_runs_is_refused(clone):
    refused(clone, "ws", "docs/results", "an existing folder that no publish wrote")
    refused(clone, "ws", "docs/results/other-run", "an existing folder that no publish wrote")


def test_symlinks_and_paths_outside_the_project_are_refused(clone):
    (clone / "docs/link").symlink_to(clone.parent / "outside")
    (clone / "docs/rel").symlink_to("../../outside")  # relative: survives a git clone
    refused(clone, "ws", "docs/link", "a symbolic link")
    refused(clone, "ws", "docs/rel/run", "outside")
    refused(clone, "ws", clone.parent / "outside", "outside")
    refused(clone, "ws", "../outside/run", "outside")
    (clone / "docs/inner").symlink_to("results")  # a link inside the project is refused too
    refused(clone, "ws", "docs/inner/run", "a symbolic link or '..'")


def test_an_existing_file_is_refused(clone):
    refused(clone, "ws", "thesis.tex", "exists and is not a folder")


def test_a_workspace_without_a_finished_study_is_refused(clone):
    refused(clone, "docs", "docs/results/new", "no params.yaml, dvc.lock")


def test_publish_then_publish_again_replaces_only_the_published_folder(clone):
    out = clone / "docs/results/cpu"
    p = publish(clone, "ws", "docs/results/cpu")
    assert p.returncode == 0, p.stderr[-3000:]
    assert (out / "reports/report.md").is_file() and (out / "plots/grid/cifar10_curves.png").is_file()
    assert (out / "params.yaml").read_bytes() == (clone / "ws/params.yaml").read_bytes()
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["params.yaml", "dvc.lock", "metrics", "results", "models", "dvclive", "reports", "plots"]
    )
    assert not list(out.parent.glob(".*.tmp"))  # the scratch folder is gone
    # a publish's folder is replaced by the next publish; the rest of the checkout is untouched
    (out / "models/grid/cifar10-gone-False-0.json").write_text("{}\n")  # left by an older publish
    (clone / "ws/study.log").write_text("epoch 1\n")
    others = {k: v for k, v in snapshot(clone).items() if not k.startswith("docs/results/cpu")}
    p = publish(clone, "ws", "docs/results/cpu", "--log", "ws/study.log")
    assert p.returncode == 0, p.stderr[-3000:]
    assert not (out / "models/grid/cifar10-gone-False-0.json").exists()
    assert (out / "log.txt").read_text() == "epoch 1\n"
    assert {k: v for k, v in snapshot(clone).items() if not k.startswith("docs/results/cpu")} == others
    # a file added by hand makes it a folder no publish wrote: refused from then on
    (out / "RUN.md").write_text("notes\n")
    refused(clone, "ws", "docs/results/cpu", "(it holds RUN.md)")
