"""stages/cli.py, the stage runner (issue 21, item 10): the full-disk line names the command to run again, and
TensorFlow's start-up lines stay out of stderr whatever TF_CPP_MIN_LOG_LEVEL holds."""

import shutil
import subprocess
import sys

import pytest

from tests.conftest import ENV, ROOT

TF_STAGE = """
from stages.cli import cli

def main():
    import tensorflow as tf
    print(int(tf.constant(1) + 1))

cli(main)
"""


@pytest.mark.parametrize("level", ["banana", "", "-1", "3"])
def test_tensorflow_start_up_lines_stay_out_whatever_the_log_level_says(level):
    """Was: TF_CPP_MIN_LOG_LEVEL=banana let TensorFlow's 'To enable the following instructions: AVX2 FMA …'
    through (a level TensorFlow cannot read counts as 0)."""
    p = subprocess.run(
        [sys.executable, "-c", TF_STAGE],
        cwd=ROOT,
        env={**ENV, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": level},
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert p.returncode == 0 and p.stdout == "2\n", p.stderr
    assert p.stderr == ""


def test_full_disk_in_folder_mode_names_the_command_typed_not_dvc_repro(tmp_path):
    """Was: `python -m stages.report FOLDER` on a full disk said "run `dvc repro` again", which does not
    remake a published run's report. A 64 KB disk for FOLDER/plots (a tmpfs in a user and mount namespace)."""
    if subprocess.run(["unshare", "-rm", "true"], capture_output=True).returncode != 0:
        pytest.skip("no unprivileged mount namespace here to fill a disk in")
    folder = tmp_path / "run"
    shutil.copytree(ROOT / "docs/results/cifar10-cpu", folder)
    shutil.rmtree(folder / "plots")
    (folder / "plots").mkdir()
    script = f'mount -t tmpfs -o size=64k tmpfs {folder / "plots"} && exec "$0" -m stages.report {folder}'
    p = subprocess.run(
        ["unshare", "-rm", "sh", "-c", script, sys.executable],
        cwd=ROOT,
        env=ENV,
        text=True,
        capture_output=True,
        timeout=300,
    )
    err = [line for line in p.stderr.splitlines() if line.strip()]
    assert p.returncode == 1 and len(err) == 1, err
    assert "no space left on its disk" in err[0], err
    assert err[0].endswith(f"free some space there, then run `python -m stages.report {folder}` again"), err
    assert "dvc repro" not in err[0]
