"""stages/outputs.py: outputs appear whole or not at all (a temporary beside them, renamed into place),
killed writers' temporaries are removed, JSON outputs are strict JSON, and file digests are read in
chunks."""

import hashlib
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from stages.outputs import atomic_path, digest, write_json
from tests.conftest import ENV, ROOT, dvc
from tests.test_faults import strict_json


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


def test_stale_temporaries_of_the_same_output_are_removed_live_and_other_ones_kept(tmp_path):
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
