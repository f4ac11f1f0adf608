"""The GPU study's device procedure, rehearsed on a CPU: benchmarks/device_run.sh, the exact command a lent
GPU machine runs, with a plain-tar archive and a wheel installed by `pip install --target` (here the wheel
makes the interpreter one without TensorFlow, as the GPU machines are), --tiny and a small budget. Then the
same study resumed into a budget it cannot finish in (the deadline stops it), killed by SIGKILL and stopped by
SIGTERM mid-training (its files stay, no process outlives it), and refused where no GPU is visible."""

import base64
import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pandas as pd
import psutil
import pytest

from benchmarks.gpu_study import SAFETY, entry_seconds, fit_epochs
from stages.backend import nvidia_gpus
from tests.archives import make_dataset, python_members, write_archive
from tests.conftest import ENV, ROOT, run

STUDY = [sys.executable, str(ROOT / "benchmarks/gpu_study.py")]
TINY = ["--tiny", "--processes", "1", "2", "--measure-steps", "4"]
LIMIT = 900  # seconds device_run.sh may take here: 2 CPU cores start and compile 2 nets in 30 s, or in 170 s
# when other jobs hold them (the measurement gets 20 % of the budget); a run takes ~40 % of LIMIT
SLACK = 6  # seconds past a budget that the checks allow: the interpreter's exit, tee
no_gpu = pytest.mark.skipif(bool(nvidia_gpus()), reason="a GPU is visible here: nothing to refuse")
# the rehearsal (a module fixture, built in whichever test runs first) is bounded by its own LIMIT, not by
# pytest.ini's 300 s per test
pytestmark = pytest.mark.timeout(LIMIT + 120)


def write_wheel(folder, name, files):
    """A pure-Python wheel (PEP 427) holding files ({path: text}), with the RECORD pip checks."""
    dist = f"{name}-1.0.dist-info"
    files = {
        **files,
        f"{dist}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n",
        f"{dist}/WHEEL": "Wheel-Version: 1.0\nGenerator: tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    digest = lambda raw: base64.urlsafe_b64encode(hashlib.sha256(raw).digest()).rstrip(b"=").decode()  # noqa: E731
    record = [f"{p},sha256={digest(t.encode())},{len(t.encode())}" for p, t in files.items()] + [
        f"{dist}/RECORD,,"
    ]
    path = Path(folder, f"{name}-1.0-py3-none-any.whl")
    with zipfile.ZipFile(path, "w") as z:
        for p, t in {**files, f"{dist}/RECORD": "\n".join(record) + "\n"}.items():
            z.writestr(p, t)
    return path


def study_processes(work):
    """Processes still running in the study's scratch project (its stages and measuring processes)."""
    found = []
    for p in psutil.process_iter(["cwd", "cmdline"]):
        if p.info["cwd"] == str(work) or str(work) in " ".join(p.info["cmdline"] or []):
            found.append(p)
    return found


def gone_within(seconds, work):
    end = time.time() + seconds
    while study_processes(work) and time.time() < end:
        time.sleep(0.5)
    return study_processes(work) == []


@pytest.fixture(scope="module")
def rehearsal(tmp_path_factory):
    """device_run.sh on a CPU: (its output, its wall seconds, the folder holding out/, work/ and the
    archive)."""
    base = tmp_path_factory.mktemp("device")
    device = base / ".device"
    (device / "wheels").mkdir(parents=True)
    write_archive(
        device / "cifar-10.tar", python_members("cifar10", make_dataset("cifar10", 30, 5)), compression=None
    )
    write_wheel(
        device / "wheels",
        "without_tensorflow",
        {"sitecustomize.py": (ROOT / "tests/without_tensorflow/sitecustomize.py").read_text()},
    )
    env = {
        **ENV,
        "DEVICE": str(device),
        "OUT": str(base / "out"),
        "LIMIT": str(LIMIT),
        "PYTHON": sys.executable,
    }
    t0 = time.time()
    p = run(
        [
            "bash",
            str(ROOT / "benchmarks/device_run.sh"),
            *TINY,
            "--entries",
            "relu+bn",
            "elu",
            "--work",
            str(base / "work"),
        ],
        base,
        env=env,
        timeout=LIMIT + 60,
    )
    return p.stdout, time.time() - t0, base


@pytest.mark.e2e
def test_rehearsal_fits_the_budget_and_states_the_epochs(rehearsal):
    output, wall, base = rehearsal
    out = base / "out/study"
    assert "tensorflow: not installed" in output  # the carried wheel went in with --target, on PYTHONPATH
    assert wall <= LIMIT + SLACK, output[-3000:]
    state = json.loads((out / "results.json").read_text())
    budget = state["study"]["budget_seconds"]
    assert f"the study's budget: {budget:.0f} s" in output and budget <= LIMIT - 15
    spent = float(re.search(r"(\d+) s of a \d+ s budget", output)[1])
    assert spent <= budget + SLACK
    e = state["study"]["epochs"]
    note = f"{e} of 10 epochs (fitted to the budget)"
    assert 1 <= e <= 10 and state["plan"]["entries"] == ["relu+bn", "elu"], output[-3000:]
    for f in ("study.md", "log.txt"):
        assert note in (out / f).read_text()
    assert state["study"]["epochs_note"] == note
    assert note in output and not re.search(
        r"Warning|WARNING|oneDNN|absl", output
    )  # workers' noise stays out
    for _v, r in state["entries"].items():
        assert (r["epochs"], r["epochs_note"], r["backend"], r["device"]) == (e, note, "jax", "cpu")
        assert r["train_images"] == 200 and r["test_images"] == 50 and 0 <= r["test_error"] <= 1
    curves = pd.read_csv(out / "curves.tsv", sep="\t")
    assert sorted(curves.variant.unique()) == ["elu", "relu+bn"] and curves.epoch.max() == e


@pytest.mark.e2e
def test_measurement_is_synchronised_and_recorded(rehearsal):
    _, _, base = rehearsal
    m = json.loads((base / "out/study/results.json").read_text())["measurement"]
    assert (
        len(m["compile_seconds"]) == len(m["startup_seconds"]) == 2
    )  # both processes compiled, then were timed
    assert all(0 < c <= s for c, s in zip(sorted(m["compile_seconds"]), sorted(m["startup_seconds"])))
    assert (
        "1" in m["rates"]
        and m["processes"] in (1, 2)
        and m["summed_images_per_second"] == max(m["rates"].values())
    )
    assert m["flops_per_image"] == 3 * 2 * 4_529_088  # width 1/8: the convs' multiply-adds, x2 x3
    assert m["mfu_datasheet"] is None and m["peak_tflops"] is None  # a CPU: no datasheet bf16 peak
    assert m["matmul_tflops"] > 0 and m["mfu_matmul"] == pytest.approx(
        m["summed_images_per_second"] * m["flops_per_image"] / (m["matmul_tflops"] * 1e12)
    )
    assert (
        m["seconds"]
        <= 0.2 * json.loads((base / "out/study/results.json").read_text())["study"]["budget_seconds"] + 3
    )


@pytest.mark.e2e
def test_resumed_into_a_short_budget_the_deadline_stops_it(rehearsal):
    """Six entries more, two at a time, in 40 s: three waves of >= 12 s each even on a fast CPU, so the
    deadline stops some; it keeps the entries, E and measurement it resumed, and leaves no process behind."""
    _, _, base = rehearsal
    out, work, new = (
        base / "resumed",
        base / "work",
        ["relu", "elu+bn", "prelu", "prelu+bn", "lrelu+bn", "lrelu"],
    )
    t0 = time.time()
    p = run(
        [
            *STUDY,
            *TINY,
            "--out",
            str(out),
            "--resume-from",
            str(base / "out/study/results.json"),
            "--work",
            str(work),
            "--archive",
            str(base / ".device/cifar-10.tar"),
            "--md5",
            "none",
            "--entries",
            "relu+bn",
            "elu",
            *new,
            "--budget-seconds",
            "40",
        ],
        base,
        env=ENV,
        check=False,
        timeout=120,
    )
    wall = time.time() - t0
    assert wall <= 40 + SLACK and p.returncode == 0, p.stdout[-3000:]
    assert "prepare: reused" in p.stdout and "measure: reused" in p.stdout  # neither is done again
    state = json.loads((out / "results.json").read_text())
    before = json.loads((base / "out/study/results.json").read_text())
    assert state["study"]["epochs"] == before["study"]["epochs"] and state["plan"]["entries"] == new
    assert {"relu+bn", "elu"} <= set(state["entries"]) and state["stopped"], p.stdout[-3000:]
    assert set(state["entries"]) | set(state["stopped"]) == {"relu+bn", "elu", *new}
    assert "stopped at the deadline" in p.stdout and "Stopped: " in (out / "study.md").read_text()
    assert {"elu", "relu+bn"} <= set(pd.read_csv(out / "curves.tsv", sep="\t").variant)
    assert study_processes(work) == []  # stopped, and waited for, before the study ended


@pytest.mark.e2e
def test_killed_mid_training_leaves_its_files_and_no_process(rehearsal):
    _, _, base = rehearsal
    out, work = base / "killed", base / "work"
    p = subprocess.Popen(
        [
            *STUDY,
            *TINY,
            "--out",
            str(out),
            "--resume-from",
            str(base / "out/study/results.json"),
            "--work",
            str(work),
            "--archive",
            str(base / ".device/cifar-10.tar"),
            "--md5",
            "none",
            "--entries",
            "relu+bn",
            "elu",
            "lrelu",
            "--budget-seconds",
            "300",
        ],
        cwd=base,
        env=ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    log = work / "logs/cifar10-lrelu-False-0.log"
    deadline = time.time() + 280  # a busy CPU starts a train stage in 30-120 s
    while (
        not (log.exists() and "training " in log.read_text()) and time.time() < deadline and p.poll() is None
    ):
        time.sleep(1)
    assert p.poll() is None and study_processes(work), "the study ended before training lrelu"
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    assert gone_within(15, work)  # the parent-death signal ends the train stage (its own grace: 5 s)
    state = json.loads((out / "results.json").read_text())
    assert state["plan"]["entries"] == ["lrelu"] and set(state["entries"]) == {"relu+bn", "elu"}
    assert "plan: " in (out / "log.txt").read_text() and (out / "study.md").is_file()


@pytest.mark.e2e
def test_sigterm_stops_every_process_and_writes_what_it_had(rehearsal):
    """What `timeout` or a scheduler sends: the study stops its process groups, records the entry it stopped,
    and ends by the signal."""
    _, _, base = rehearsal
    out, work = base / "terminated", base / "work"
    p = subprocess.Popen(
        [
            *STUDY,
            *TINY,
            "--out",
            str(out),
            "--resume-from",
            str(base / "out/study/results.json"),
            "--work",
            str(work),
            "--archive",
            str(base / ".device/cifar-10.tar"),
            "--md5",
            "none",
            "--entries",
            "relu+bn",
            "elu",
            "prelu",
            "--budget-seconds",
            "300",
        ],
        cwd=base,
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline = time.time() + 60
    while (
        not ((out / "log.txt").exists() and "plan: " in (out / "log.txt").read_text())
        and time.time() < deadline
    ):
        time.sleep(0.5)
    time.sleep(3)  # the train stage has started
    t0 = time.time()
    p.send_signal(signal.SIGTERM)
    output = p.communicate(timeout=60)[0]
    assert p.returncode == 128 + signal.SIGTERM and time.time() - t0 < 20, output[
        -3000:
    ]  # GRACE 3 s, then SIGKILL
    assert "stopped by SIGTERM" in output and "prelu: stopped by SIGTERM during train" in output
    state = json.loads((out / "results.json").read_text())
    assert list(state["stopped"]) == ["prelu"] and set(state["entries"]) == {"relu+bn", "elu"}
    assert study_processes(work) == []


@no_gpu
def test_without_a_gpu_a_real_run_refuses_in_one_line(tmp_path):
    t0 = time.time()
    p = run([*STUDY, "--out", str(tmp_path / "out")], tmp_path, env=ENV, check=False)
    assert p.returncode == 1 and time.time() - t0 < 10
    assert p.stdout.count("\n") == 1 and p.stdout.startswith(
        "error: no GPU visible (`nvidia-smi -L` lists none)"
    )
    assert "--allow-cpu" in p.stdout and not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "epochs, message",
    [
        ("zero", "error: --epochs zero: must be 'auto' or a whole number >= 1; e.g. --epochs 30"),
        ("11", "error: --epochs 11: more than the recipe's train.epochs (10); give at most 10, or auto"),
    ],
)
def test_epochs_that_cannot_be_are_one_line(tmp_path, cifar10_archive, epochs, message):
    t0 = time.time()
    p = run(
        [
            *STUDY,
            *TINY,
            "--out",
            str(tmp_path / "out"),
            "--work",
            str(tmp_path / "work"),
            "--archive",
            str(cifar10_archive),
            "--md5",
            "none",
            "--epochs",
            epochs,
        ],
        tmp_path,
        env=ENV,
        check=False,
    )
    assert (
        p.returncode == 1 and time.time() - t0 < 15 and not (tmp_path / "work/data").exists()
    )  # before prepare
    errors = [line for line in p.stdout.splitlines() if "error: " in line]
    assert len(errors) == 1 and errors[0].endswith(message), p.stdout


def test_a_failed_stage_leaves_its_log_tail_in_out(tmp_path):
    (tmp_path / "damaged.tar").write_bytes(b"not a tar archive" * 100)
    p = run(
        [
            *STUDY,
            *TINY,
            "--out",
            str(tmp_path / "out"),
            "--work",
            str(tmp_path / "work"),
            "--archive",
            str(tmp_path / "damaged.tar"),
            "--md5",
            "none",
        ],
        tmp_path,
        env=ENV,
        check=False,
        timeout=120,
    )
    assert p.returncode == 1 and "error: prepare failed (exit 2); its log's tail is in" in p.stdout, p.stdout
    tail = (tmp_path / "out/failures.txt").read_text()
    assert tail.startswith("=== prepare: the last 4000 characters of") and "damaged.tar" in tail
    assert "error: " in tail and "Traceback" not in p.stdout
    assert json.loads((tmp_path / "out/results.json").read_text())["entries"] == {}


@no_gpu
def test_device_run_refuses_before_setting_up(tmp_path):
    env = {**ENV, "DEVICE": str(tmp_path / "nothing"), "OUT": str(tmp_path / "out"), "PYTHON": sys.executable}
    p = run(["bash", str(ROOT / "benchmarks/device_run.sh")], tmp_path, env=env, check=False, timeout=60)
    assert p.returncode == 3 and p.stdout.splitlines()[-1].startswith("error: no GPU visible"), p.stdout
    assert "error: no GPU visible" in (tmp_path / "out/device_run.log").read_text()


def test_epochs_fitted_are_the_largest_that_fit():
    m = {"rates": {"1": 1000.0, "2": 1600.0}, "startup_seconds": [20.0, 22.0]}
    t = {"limit": 4000, "validation": 500, "batch_size": 100, "epochs": 150}
    e, n = fit_epochs(m, t, 1000, 8, 600)
    assert n == 2 and 1 <= e < 150
    assert (
        SAFETY * entry_seconds(m, t, 1000, e, n, 8) <= 600 < SAFETY * entry_seconds(m, t, 1000, e + 1, n, 8)
    )
    assert fit_epochs(m, t, 1000, 8, 60) == (0, 2)  # not even one epoch: the plan then trains fewer entries
    assert fit_epochs(m, t, 1000, 1, 10**6) == (150, 1)  # never more than train.epochs
