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


def text_io_without_encoding(path):
    """Lines of path that read or write text (read_text, write_text, open/fdopen not in binary mode) without
    naming an encoding: under LC_ALL=C such a call uses ASCII, and a non-ASCII byte is a traceback."""
    import ast

    bad = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if not isinstance(node, ast.Call):
            continue
        name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
        modes = [a.value for a in node.args[1:2] if isinstance(a, ast.Constant)] + [
            k.value.value for k in node.keywords if k.arg == "mode" and isinstance(k.value, ast.Constant)
        ]
        text = name in ("read_text", "write_text") or (
            name in ("open", "fdopen") and not any("b" in str(m) for m in modes)
        )
        if text and not any(k.arg == "encoding" for k in node.keywords):
            bad.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    return bad


def test_every_text_read_and_write_names_its_encoding():
    files = sorted((ROOT / "stages").glob("*.py")) + sorted((ROOT / "scripts").glob("*.py"))
    assert [line for f in files for line in text_io_without_encoding(f)] == []


def test_an_ascii_locale_reads_a_utf_8_params_yaml(tmp_path):
    """Was: under LC_ALL=C (without Python's UTF-8 mode) a non-ASCII character in params.yaml, such as an
    accented comment, was a UnicodeDecodeError traceback."""
    shutil.copytree(ROOT / "stages", tmp_path / "stages", ignore=shutil.ignore_patterns("__pycache__"))
    text = (ROOT / "params.yaml").read_text(encoding="utf-8")
    (tmp_path / "params.yaml").write_text("# paramètres de l'étude\n" + text, encoding="utf-8")
    p = subprocess.run(
        [sys.executable, "-X", "utf8=0", "-m", "stages.params"],
        cwd=tmp_path,
        env={**ENV, "LC_ALL": "C", "PYTHONPATH": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert p.returncode == 0 and p.stdout.startswith("params.yaml: valid;"), p.stderr
    assert (tmp_path / "data/params.ok").read_text(
        encoding="utf-8"
    ) == "params.yaml passed stages/params.py\n"
