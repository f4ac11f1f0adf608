"""stages/cli.py, the runner of every stage: one UserError class and one line from every stage (was: a
15-line traceback from two UserError classes), SIGTERM and Ctrl-C ending a training stage on both backends
(was: ignored by JAX), stages dying with the `dvc` that started them, no DVC output left for git to add after
an interrupted `dvc exp run`, and a full disk as one line. Real stages, real DVC, real signals, in temporary
git+DVC copies of the project."""

import ast
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil  # a dependency of DVC
import pytest

from tests.conftest import BACKEND_ENV, ENV, ROOT, make_project, run_stage, set_params
from tests.test_prepare import prepare

KEY = "cifar10-relu-False-0"
OUTPUTS = ["data/raw", "data/prepared", "data/source", "models", "dvclive", "results", "reports", "plots"]


def temporaries(repo):
    return sorted(str(p.relative_to(repo)) for p in Path(repo).rglob("*.tmp"))


# --- one UserError class, one line from every stage ---------------------------------------------------------


def test_stage_runner_imports_nothing_from_stages_and_is_the_only_home_of_user_error():
    tree = ast.parse((ROOT / "stages/cli.py").read_text())
    imported = [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names] + [
        n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)
    ]
    assert not [m for m in imported if m and m.split(".")[0] == "stages"], imported
    assert not [n for n in ast.walk(tree) if isinstance(n, ast.Compare) and "__main__" in ast.unparse(n)]
    for path in (ROOT / "stages").glob("*.py"):
        classes = [n.name for n in ast.walk(ast.parse(path.read_text())) if isinstance(n, ast.ClassDef)]
        assert path.name == "cli.py" or "UserError" not in classes, path


@pytest.mark.parametrize("module", ["source", "prepare"])
def test_data_stages_print_their_user_error_as_one_line(project, tmp_path, module):
    set_params(project, data={"cifar10": {"url": str(tmp_path / "nowhere.tar.gz")}})
    status, err, _ = run_stage(project, module, "cifar10")
    assert (
        status == 2
        and len(err) == 1
        and err[0].startswith("error: data.cifar10.url: ")
        and "neither a URL nor an existing file" in err[0]
    ), err


# --- SIGTERM and Ctrl-C end a training stage, on both backends ----------------------------------------------


@pytest.fixture(scope="module", params=["tensorflow", "jax"])
def trainable(request, tmp_path_factory, cifar10_archive):
    """(a project with prepared data and a long run of tiny epochs, the backend's environment)."""
    backend = request.param
    repo = make_project(
        tmp_path_factory.mktemp(backend) / "repo",
        cifar10_archive,
        {"train": {"epochs": 300, "backend": backend}},
    )
    assert prepare(repo)[0] == 0
    return repo, BACKEND_ENV[backend]


def start_training(repo, env, until):
    """The train stage started directly, once its stdout holds `until`: (process, stdout file)."""
    for d in ("checkpoints", "models", "dvclive"):  # an earlier test's run: start from epoch 1
        shutil.rmtree(repo / d, ignore_errors=True)
    out = repo.parent / f"train-{time.monotonic_ns()}.log"
    with open(out, "w") as f:
        p = subprocess.Popen(
            [sys.executable, "-m", "stages.train", KEY],
            cwd=repo,
            env=env,
            stdout=f,
            stderr=subprocess.PIPE,
            text=True,
        )
    deadline = time.monotonic() + 300
    while until not in out.read_text():
        assert p.poll() is None and time.monotonic() < deadline, (p.returncode, out.read_text()[-2000:])
        time.sleep(0.02)
    return p, out


@pytest.mark.e2e
@pytest.mark.parametrize(
    "moment, sig",
    [("training models/", signal.SIGTERM), ("epoch 2/", signal.SIGTERM), ("epoch 2/", signal.SIGINT)],
)
def test_a_signal_ends_the_train_stage_on_both_backends(trainable, moment, sig):
    """SIGTERM while the step is compiled (right after the `training ...` line) and within an epoch; Ctrl-C in
    an epoch. Was on JAX: training went on with SIGTERM in SigIgn (Keras' pythonify_logs swallowed the
    exception); Ctrl-C: a traceback."""
    repo, env = trainable
    p, out = start_training(repo, env, moment)
    t0 = time.monotonic()
    p.send_signal(sig)
    _, stderr = p.communicate(timeout=60)
    assert p.returncode == -sig, (p.returncode, stderr[-3000:])
    assert time.monotonic() - t0 < 15  # the watcher's 3 s grace, then the unwinding
    assert "Traceback" not in stderr and temporaries(repo) == [], stderr[-3000:]
    assert not Path(repo, f"models/grid/{KEY}.keras").exists()
    if sig == signal.SIGINT:
        lines = [line for line in stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and (
            m := re.fullmatch(
                r"interrupted after epoch (\d+) of 300; `dvc repro` resumes "
                r"from the checkpoint",
                lines[0],
            )
        ), stderr[-3000:]
        assert Path(repo, f"checkpoints/grid/{KEY}/epoch-{int(m[1]):04d}/history.json").is_file()


WRAPPING_STAGE = """
import os, signal, sys
from stages.cli import cli

def library_call():
    # as TensorFlow's C++ nest.flatten does with an exception raised in a Python callback: its own TypeError
    try:
        os.kill(os.getpid(), int(sys.argv[1]))
        while True:
            pass
    except BaseException as e:
        raise TypeError("the library's own error") from e

def main():
    try:
        library_call()
    finally:
        print("unwound", flush=True)

cli(main)
"""


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_a_library_wraps_in_its_own_exception_still_ends_the_stage_by_the_signal(sig):
    """Was (CI, SIGTERM right after `training models/...` under TensorFlow): exit 1 and a traceback ending in
    TensorFlow's `_pywrap_utils.Flatten` TypeError, the signal's exception wrapped in TensorFlow's."""
    p = subprocess.run(
        [sys.executable, "-c", WRAPPING_STAGE, str(int(sig))],
        cwd=ROOT,
        env={**ENV, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert p.returncode == -sig and p.stdout == "unwound\n", (p.returncode, p.stdout, p.stderr)
    assert p.stderr == ("interrupted\n" if sig == signal.SIGINT else ""), p.stderr


# --- stages die with the dvc that started them --------------------------------------------------------------


@pytest.mark.e2e
@pytest.mark.parametrize("shell", ["/bin/bash", "/bin/sh"])
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_killing_dvc_repro_ends_its_stage(project, sig, shell):
    """Was: `kill -TERM` of `dvc repro` left `python -m stages.train` running (parent 1); the next `dvc repro`
    restored the outputs from the cache, then the orphan overwrote them. DVC runs a stage through $SHELL: bash
    execs it, dash (/bin/sh) stays between them."""
    set_params(project, train={"epochs": 300})
    log = project.parent / "repro.log"
    with open(log, "w") as f:
        dvc = subprocess.Popen(
            [sys.executable, "-m", "dvc", "repro", f"train@{KEY}"],
            cwd=project,
            env={**ENV, "SHELL": shell},
            stdout=f,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 300
        while "epoch 1/300" not in log.read_text():
            assert dvc.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.05)
        stages = [
            c for c in psutil.Process(dvc.pid).children(recursive=True) if "stages.train" in c.cmdline()
        ]
        assert len(stages) == 1
        os.kill(dvc.pid, sig)  # dvc alone, not its process group
        dvc.wait(timeout=30)
        gone, alive = psutil.wait_procs(stages, timeout=20)
        assert alive == [], f"{alive} outlived dvc"
    finally:
        os.killpg(dvc.pid, signal.SIGKILL) if dvc.poll() is None else None
    assert not Path(project, f"models/grid/{KEY}.keras").exists() and temporaries(project) == []


# --- no DVC output becomes a git-tracked file after an interrupted `dvc exp run` ----------------------------


@pytest.mark.e2e
@pytest.mark.parametrize("backend", ["tensorflow", "jax"])
def test_ctrl_c_of_dvc_exp_run_leaves_no_output_for_git_to_add(project, backend):
    """Was: Ctrl-C during training deleted data/raw/.gitignore, data/prepared/.gitignore and
    data/source/.gitignore; `git add -A` then committed the archive and train.npz; and printed a ~40-line
    KeyboardInterrupt traceback from stages.train. Now one line, on both backends."""
    set_params(project, train={"epochs": 300, "backend": backend})
    subprocess.run(["git", "commit", "-qam", "long run"], cwd=project, env=ENV, check=True)
    log = project.parent / "exp.log"
    with open(log, "w") as f:
        exp = subprocess.Popen(
            [sys.executable, "-m", "dvc", "exp", "run"],
            cwd=project,
            env=BACKEND_ENV[backend],
            stdout=f,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 300
        while "epoch 1/300" not in log.read_text():
            assert exp.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.05)
        os.killpg(exp.pid, signal.SIGINT)  # what Ctrl-C in a terminal sends: the whole foreground group
        exp.wait(timeout=60)
    finally:
        os.killpg(exp.pid, signal.SIGKILL) if exp.poll() is None else None
    assert exp.returncode != 0
    assert re.search(
        r"interrupted after epoch \d+ of 300; `dvc repro` resumes from the checkpoint", log.read_text()
    )
    assert "Traceback" not in log.read_text(), log.read_text()[-3000:]
    assert Path(project, "data/prepared/cifar10/train.npz").is_file()  # prepare ran before the interruption
    added = subprocess.run(
        ["git", "add", "-A", "--dry-run"], cwd=project, env=ENV, capture_output=True, text=True, check=True
    ).stdout
    paths = [line.split("'")[1] for line in added.splitlines()]
    assert not [p for p in paths if any(p == o or p.startswith(o + "/") for o in OUTPUTS)], paths


def on_a_full_disk(project, folder, size, *stage):
    """The stage's stderr lines and exit status, run with a tmpfs of `size` on project/folder (a user and
    mount namespace, so no privilege is needed)."""
    if subprocess.run(["unshare", "-rm", "true"], capture_output=True).returncode != 0:
        pytest.skip("no unprivileged mount namespace here to fill a disk in")
    Path(project, folder).mkdir(exist_ok=True)
    script = f'mount -t tmpfs -o size={size} tmpfs {folder} && exec "$0" -m stages.{" ".join(stage)}'
    p = subprocess.run(
        ["unshare", "-rm", "sh", "-c", script, sys.executable],
        cwd=project,
        env=ENV,
        text=True,
        capture_output=True,
        timeout=300,
    )
    return p.returncode, [line for line in p.stderr.splitlines() if line.strip()]


def test_full_disk_in_prepare_is_one_line(project):
    """Was: two chained tracebacks ending in ENOSPC. A 1 MB disk for data/."""
    status, err = on_a_full_disk(project, "data", "1m", "prepare", "cifar10")
    assert status == 1 and len(err) == 1, err
    assert err[0].startswith(f"error: {project}") and "no space left on its disk" in err[0], err
    assert "free some space there" in err[0]


@pytest.mark.e2e
def test_full_disk_in_train_is_one_line(project):
    """Was: `Disable slist on flush dest failure failed` and five `sys.meta_path is None` lines; here h5py's
    destructors raised and the interpreter crashed (segmentation fault). A 300 KB disk for the checkpoints."""
    assert prepare(project)[0] == 0
    status, err = on_a_full_disk(project, "checkpoints", "300k", "train", "cifar10-relu-False-0")
    assert status == 1 and len(err) == 1, err
    assert err[0].startswith("error: checkpoints/grid/cifar10-relu-False-0: no space left on its disk (")
    assert not Path(project, "models/grid").exists()


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
