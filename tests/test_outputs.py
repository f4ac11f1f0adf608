"""stages/outputs.py: outputs appear whole or not at all (a temporary beside them, renamed into place),
killed writers' temporaries are removed, JSON outputs are strict JSON, and file digests are read in
chunks."""

import hashlib
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from stages.cli import UserError
from stages.outputs import atomic_path, digest, write_json
from tests.conftest import ENV, ROOT, dvc
from tests.test_faults import strict_json
from tests.test_publish_run import snapshot


def test_an_output_replaces_the_old_one_only_when_it_is_written_whole(tmp_path):
    final = tmp_path / "out.txt"
    final.write_text("old")
    with atomic_path(final) as tmp:
        tmp.write_text("new")
        assert final.read_text() == "old"  # not yet: the temporary is beside it
    assert final.read_text() == "new" and sorted(p.name for p in tmp_path.iterdir()) == ["out.txt"]
    with pytest.raises(RuntimeError), atomic_path(final) as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed mid-write")
    assert final.read_text() == "new" and sorted(p.name for p in tmp_path.iterdir()) == ["out.txt"]


def test_digest_is_the_hash_of_the_content(tmp_path):
    data = os.urandom(3 * 1024 * 1024 + 7)  # more than one chunk
    (tmp_path / "f").write_bytes(data)
    assert digest(tmp_path / "f", "md5") == hashlib.md5(data).hexdigest()
    assert digest(tmp_path / "f", "sha256") == hashlib.sha256(data).hexdigest()


def test_json_outputs_are_strict_json(tmp_path):
    """A variant whose every run diverged in its first epoch has no seconds per epoch: null, not NaN (which
    Python writes and reads but jq, browsers and DVC Studio refuse). Regression: summary.json held NaN."""

    write_json(
        tmp_path / "m.json",
        {
            "seconds_per_epoch": float("nan"),
            "x": [np.float32("inf"), np.float64(0.5)],
            "n": np.int64(3),
            "diverged": np.bool_(True),
        },
    )
    assert strict_json(tmp_path / "m.json") == {
        "seconds_per_epoch": None,
        "x": [None, 0.5],
        "n": 3,
        "diverged": True,
    }


# --- killed writers' temporaries ---------------------------------------------------------------------------

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


def test_dvc_ignores_temporaries(project):
    """A temporary left inside a tracked output folder (e.g. reports/) would otherwise be hashed into it."""
    for path in ("reports/.report.md.123.abcdefgh.tmp", "data/prepared/.cifar10.9.x1y2z3w4.tmp/train.npz"):
        assert dvc("check-ignore", path, cwd=project, check=False).returncode == 0, path
    assert dvc("check-ignore", "reports/report.md", cwd=project, check=False).returncode == 1


@pytest.fixture
def root(tmp_path, monkeypatch):
    """A project folder (the working directory) and a folder outside it holding someone's work."""
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside/thesis.tex").write_text("not the project's\n")
    (tmp_path / "outside/grid").mkdir()
    (tmp_path / "outside/grid/figure.png").write_bytes(b"png")
    (tmp_path / "proj").mkdir()
    monkeypatch.chdir(tmp_path / "proj")
    return tmp_path / "proj"


def write_folder(path, names=("a.png",)):
    with atomic_path(path, directory=True) as d:
        for n in names:
            (d / n).parent.mkdir(parents=True, exist_ok=True)
            (d / n).write_bytes(b"new")


@pytest.mark.parametrize(
    "link, target, expected",
    [
        ("plots", "ABS", "outside"),  # absolute link to a folder outside
        ("plots", "../outside", "outside"),  # relative: survives a git clone
        ("plots/grid", "../../outside/grid", "a symbolic link"),
        ("plots/grid", "../metrics", "a symbolic link"),  # a link inside the project: never followed either
        ("plots", "metrics", "a symbolic link or '..'"),
    ],
)
def test_a_folder_output_through_a_symbolic_link_is_refused(root, link, target, expected):
    (root / "metrics").mkdir()
    (root / "metrics/keep.json").write_text("{}\n")
    Path(link).parent.mkdir(parents=True, exist_ok=True)
    Path(link).symlink_to(str(root.parent / "outside") if target == "ABS" else target)
    before = snapshot(root.parent)
    with pytest.raises(UserError, match=expected) as e:
        write_folder("plots/grid")
    assert str(e.value).startswith("plots/grid: ") and "\n" not in str(e.value)
    assert snapshot(root.parent) == before  # nothing removed or written anywhere


@pytest.mark.parametrize("path", ["../outside/grid", "plots/../../outside/grid", ".", ""])
def test_a_folder_output_outside_the_project_or_the_project_itself_is_refused(root, path):
    before = snapshot(root.parent)
    with pytest.raises(UserError):
        write_folder(path)
    assert snapshot(root.parent) == before


def test_a_file_output_in_a_linked_folder_is_refused(root):
    Path("reports").symlink_to(root.parent / "outside")
    with pytest.raises(UserError, match="reports/report.md: resolves to .*outside"):
        with atomic_path("reports/report.md") as tmp:
            tmp.write_text("# report\n", encoding="utf-8")
    assert sorted(p.name for p in (root.parent / "outside").iterdir()) == ["grid", "thesis.tex"]


def test_a_file_output_that_is_a_link_is_replaced_not_written_through(root):
    Path("summary.json").symlink_to(root.parent / "outside/thesis.tex")
    with atomic_path("summary.json") as tmp:
        tmp.write_text("{}\n", encoding="utf-8")
    assert not Path("summary.json").is_symlink() and Path("summary.json").read_text() == "{}\n"
    assert (root.parent / "outside/thesis.tex").read_text() == "not the project's\n"


def test_an_existing_folder_of_what_the_writer_writes_is_replaced(root):
    write_folder("plots/grid", ["old.png", "older.png"])
    write_folder("plots/grid", ["new.png"])
    assert sorted(p.name for p in Path("plots/grid").iterdir()) == ["new.png"]
    write_folder("metrics/rank", ["cifar10/1-relu.json"])
    write_folder("metrics/rank", ["cifar100/1-elu.json"])
    assert [str(p.relative_to("metrics/rank")) for p in Path("metrics/rank").rglob("*.json")] == [
        "cifar100/1-elu.json"
    ]
    assert not [p for p in Path("plots").iterdir() if p.name.startswith(".")]  # no temporary left


@pytest.mark.parametrize("foreign", ["thesis.tex", "sub/a.png", "LINK", "FILE"])
def test_an_existing_folder_the_writer_did_not_write_is_kept(root, foreign):
    Path("plots/grid").mkdir(parents=True)
    Path("plots/grid/a.png").write_bytes(b"old")
    if foreign == "LINK":
        Path("plots/grid/link.png").symlink_to(root.parent / "outside/grid/figure.png")
    elif foreign == "FILE":
        shutil.rmtree("plots/grid")
        Path("plots/grid").write_text("a file\n")
    else:
        Path("plots/grid", foreign).parent.mkdir(parents=True, exist_ok=True)
        Path("plots/grid", foreign).write_text("mine\n")
    before = snapshot(root.parent)
    with pytest.raises(UserError, match="plots/grid: (an existing folder this writer did not write|exists)"):
        write_folder("plots/grid")
    assert snapshot(root.parent) == before


def report_folder(tmp_path):
    """A published run (its inputs and outputs) to remake the report of."""
    folder = tmp_path / "run"
    shutil.copytree(ROOT / "docs/results/cifar10-cpu", folder)
    return folder


@pytest.mark.parametrize("link", ["plots-absolute", "plots-relative", "plots/grid", "metrics/rank"])
def test_report_folder_mode_refuses_linked_outputs_in_one_line(tmp_path, link):
    folder = report_folder(tmp_path)
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere/thesis.tex").write_text("mine\n")
    name = link.split("-")[0]
    shutil.move(folder / name, tmp_path / "elsewhere" / Path(name).name)
    target = tmp_path / "elsewhere" / Path(name).name
    (folder / name).symlink_to(
        os.path.relpath(target, (folder / name).parent) if link != "plots-absolute" else target
    )
    before = snapshot(tmp_path)
    p = subprocess.run(
        [sys.executable, "-m", "stages.report", str(folder)],
        cwd=ROOT,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=240,
    )
    lines = p.stderr.strip().splitlines()
    assert p.returncode == 2 and len(lines) == 1 and lines[0].startswith(f"error: {name}"), p.stderr[-3000:]
    assert snapshot(tmp_path) == before  # nothing half replaced, nothing outside touched
