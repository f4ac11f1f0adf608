"""What an outside attack on prepare@<dataset> found (issue 9), each tried again in a temporary git+DVC copy of
the project: a local archive replaced at the same path, killed stages' temporaries, unhelpful messages."""

import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from stages.outputs import atomic_path
from tests.archives import write_cifar
from tests.conftest import ENV, ROOT, dvc, git, md5, set_params
from tests.test_prepare import assert_one_error_line, leftovers, load_split, prepare

# --- 2. a local archive replaced at the same path -------------------------------------------------------------


@pytest.mark.e2e
def test_replaced_local_archive_reruns_prepare_and_only_what_depends_on_it(project, tmp_path):
    """Was: with md5 null, `dvc status` said up to date and `dvc repro` kept the old arrays."""
    archive = tmp_path / "local" / "cifar-10-python.tar.gz"
    archive.parent.mkdir()
    first = write_cifar(archive, "cifar10", "python", train_per_class=2, test_per_class=1, seed=0)
    set_params(project, data={"cifar10": {"url": str(archive), "md5": None}})
    dvc("repro", "prepare@cifar10", cwd=project)
    np.testing.assert_array_equal(load_split(project, "cifar10", "test")[0], first["test"][0])

    # untouched, or touched without a change: the stamp is the same, prepare stays cached
    os.utime(archive)
    out = dvc("repro", "prepare@cifar10", cwd=project).stdout
    assert "Running stage 'source@cifar10'" in out and "Running stage 'prepare" not in out, out

    second = write_cifar(archive, "cifar10", "python", train_per_class=2, test_per_class=1, seed=7)
    status = dvc("status", cwd=project).stdout  # DVC cannot know without reading the file: never "up to date"
    assert "source@cifar10" in status and "always changed" in status and "up to date" not in status
    out = dvc("repro", "prepare@cifar10", cwd=project).stdout
    assert "Running stage 'prepare@cifar10'" in out, out
    x, y = load_split(project, "cifar10", "test")
    np.testing.assert_array_equal(x, second["test"][0])
    assert not np.array_equal(x, first["test"][0])
    stamp = yaml.safe_load(Path(project, "data/source/cifar10.json").read_text())
    assert stamp == {"url": str(archive), "md5": md5(archive)}


# --- 3. killed stages' temporaries ------------------------------------------------------------------------------

SLOW_WRITER = """
import sys, time
from stages.outputs import atomic_path
from stages.params import cli

def main():
    with atomic_path(sys.argv[1]) as tmp:
        tmp.write_bytes(b"x" * 100_000)
        print("writing", flush=True)
        time.sleep(120)

cli(main)
"""


def test_sigterm_removes_the_temporary_and_ends_the_process_by_sigterm(tmp_path):
    """Was: SIGTERM (e.g. to `dvc repro`'s process group) left the temporary; only Ctrl-C cleaned up."""
    p = subprocess.Popen(
        [sys.executable, "-c", SLOW_WRITER, str(tmp_path / "out.npz")],
        cwd=ROOT,
        env={**ENV, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.PIPE,
        text=True,
    )
    assert p.stdout.readline() == "writing\n"
    assert (
        len([t for t in tmp_path.iterdir() if t.name.startswith(f".out.npz.{p.pid}.")]) == 1
    )  # being written
    p.send_signal(signal.SIGTERM)
    assert p.wait(timeout=60) == -signal.SIGTERM  # the caller still sees it killed by SIGTERM
    assert list(tmp_path.iterdir()) == []


def dead_pid():
    p = subprocess.Popen(["true"])
    p.wait()
    return p.pid


def test_stale_temporaries_of_the_same_output_are_removed_live_and_other_ones_kept(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a folder output must lie inside the project: the working directory
    dead, live = dead_pid(), os.getpid()
    names = {
        "stale": f".cifar10.{dead}.abcd_123.tmp",
        "old-style": ".cifar10.x1y2z3w4.tmp",
        "live": f".cifar10.{live}.abcdefgh.tmp",  # a concurrent writer of the same output
        "other": f".cifar100.{dead}.abcdefgh.tmp",
        "other-json": f".cifar10.json.{dead}.abcdefgh.tmp",
    }
    for name in names.values():
        Path(tmp_path, name).mkdir()
        Path(tmp_path, name, "train.npz").write_bytes(b"\0" * 1000)
    with atomic_path(tmp_path / "cifar10", directory=True) as out:
        (out / "classes.json").write_text("[]\n")
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == sorted(["cifar10", names["live"], names["other"], names["other-json"]])


def test_prepare_removes_what_a_killed_run_left_and_git_ignores_temporaries(project):
    """SIGKILL during np.savez or the download left 160-210 MB under data/prepared/.cifar10.*.tmp/ for good."""
    dead = dead_pid()
    leftovers_before = [
        Path(project, "data/prepared", f".cifar10.{dead}.abcdefgh.tmp"),
        Path(project, "data/raw", f".cifar10.{dead}.abcdefgh.tmp"),
    ]
    for d in leftovers_before:
        d.mkdir(parents=True)
        (d / "train.npz").write_bytes(b"\0" * 4096)
    assert (
        git("status", "--porcelain", cwd=project).stdout == ""
    )  # .gitignore: temporaries are never files to add
    status, _, err = prepare(project)
    assert status == 0, err
    assert leftovers(project) == []


# --- 6. messages -----------------------------------------------------------------------------------------------


def test_url_without_a_file_name_is_one_line_naming_the_key(project):
    """Was: passed the check, then an OSError traceback about `.download-…/./..`."""
    for url in ("http://127.0.0.1:9/..", "https://example.org/data/"):
        set_params(project, data={"cifar10": {"url": url}})
        line = assert_one_error_line(*prepare(project)[::2])
        assert f"data.cifar10.url = {url!r}: must be" in line and "ending in the archive's file name" in line
    assert not Path(project, "data/raw").exists() and not Path(project, "data/prepared").exists()


def test_dvc_ignores_temporaries(project):
    """A temporary left inside a tracked output folder (e.g. reports/) would otherwise be hashed into it."""
    for path in ("reports/.report.md.123.abcdefgh.tmp", "data/prepared/.cifar10.9.x1y2z3w4.tmp/train.npz"):
        assert dvc("check-ignore", path, cwd=project, check=False).returncode == 0, path
    assert dvc("check-ignore", "reports/report.md", cwd=project, check=False).returncode == 1
