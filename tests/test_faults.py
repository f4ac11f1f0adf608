"""Faults a long study meets, in temporary git+DVC copies of the project on the tests' own archive:
a training process killed with SIGKILL mid-epoch, a damaged checkpoint, a loss that diverges, a damaged
prepared file. Each `dvc repro` imports TensorFlow once per stage (~10 s), so the runs are few and each one
is checked for several things. docs/faults.md lists what the user sees and what is kept."""

import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil  # a dependency of DVC
import pytest
import yaml

from tests.conftest import ENV, dvc, make_project, md5

OUTPUT_DIRS = ["models", "data", "metrics", "results", "dvclive", "reports", "plots"]
EPOCHS = 4


def leftovers(repo):
    """Temporary files or folders of atomic writes (.<name>.XXXX.tmp) and downloads (.download-*)."""
    return sorted(
        str(p.relative_to(repo))
        for d in OUTPUT_DIRS
        for p in Path(repo, d).rglob("*")
        if p.name.endswith(".tmp") or p.name.startswith(".download-")
    )


def lock_stages(repo):
    lock = Path(repo, "dvc.lock")
    return set(yaml.safe_load(lock.read_text())["stages"]) if lock.exists() else set()


def strict_json(path):
    """JSON as the standard has it: NaN and Infinity are not numbers there (jq, browsers and Studio refuse
    them)."""

    def refuse(name):
        raise AssertionError(f"{path}: {name} is not JSON")

    return json.loads(Path(path).read_text(), parse_constant=refuse)


def curve_steps(repo, entry):
    """The steps (epochs from 0) in an entry's dvclive training-loss curve."""
    tsv = Path(repo, f"dvclive/grid/{entry}/plots/metrics/train/loss.tsv")
    return [line.split("\t")[0] for line in tsv.read_text().splitlines()[1:]] if tsv.exists() else None


def model_files(repo, entry):
    return [Path(repo, f"models/grid/{entry}.{ext}") for ext in ("keras", "json")]


# --- SIGKILL mid-epoch, then a damaged checkpoint -----------------------------------------------------------


def wait_for_second_entry(repo, proc, log, timeout=600):
    """Waits until one grid entry is trained and the next one has finished epoch 2 and is in epoch 3; returns
    (the training process, its entry, the finished entry)."""
    entries = ["cifar10-relu-False-0", "cifar10-elu-False-0"]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, (
            f"dvc repro ended (exit {proc.returncode}) before the kill:\n{log.read_text()}"
        )
        done = [e for e in entries if model_files(repo, e)[0].exists()]
        out = log.read_text()
        for e in set(entries) - set(done):
            started = out.find(f"training models/grid/{e}.keras")
            second = (
                re.search(rf"epoch 2/{EPOCHS}: .* seconds ([0-9.e+-]+)", out[started:])
                if started >= 0
                else None
            )
            if len(done) == 1 and second:
                time.sleep(min(float(second.group(1)) / 2, 5))  # into epoch 3
                [trainer] = [
                    p
                    for p in psutil.Process(proc.pid).children(recursive=True)
                    if "stages.train" in p.cmdline()
                ]
                assert f"epoch 3/{EPOCHS}" not in log.read_text()[started:], "epoch 3 ended before the kill"
                return trainer, e, done[0]
        time.sleep(0.05)
    raise AssertionError(f"no second entry in training after {timeout} s:\n{log.read_text()}")


@pytest.fixture(scope="module")
def killed(tmp_path_factory, cifar10_archive):
    """A grid of two: the first entry trained, the second killed with SIGKILL in epoch 3, the newest of its
    two checkpoints then damaged (one byte flipped), and `dvc repro report` run again."""
    # width 0.5: an epoch takes a few seconds, so the kill lands inside one
    repo = make_project(
        tmp_path_factory.mktemp("killed") / "repo",
        cifar10_archive,
        {"model": {"width": 0.5}, "train": {"epochs": EPOCHS, "learning_rate": 0.01}},
    )
    log = repo.parent / "first-repro.log"
    with open(log, "w") as f:
        proc = subprocess.Popen(
            [sys.executable, "-m", "dvc", "repro", "report"],
            cwd=repo,
            env=ENV,
            stdout=f,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        trainer, victim, finished = wait_for_second_entry(repo, proc, log)
        trainer.send_signal(signal.SIGKILL)
        proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    ckpt = repo / "checkpoints/grid" / victim
    before = {
        "out": log.read_text(),
        "status": proc.returncode,
        "leftovers": leftovers(repo),
        "lock": lock_stages(repo),
        "victim_files": [p.exists() for p in model_files(repo, victim)],
        "victim_metrics": (repo / f"metrics/grid/{victim}.json").exists(),
        "checkpoints": sorted(d.name for d in ckpt.glob("epoch-*")),
        "curve": curve_steps(repo, victim),
        "finished": {p: (p.stat().st_mtime_ns, md5(p)) for p in model_files(repo, finished)},
    }
    newest = ckpt / before["checkpoints"][-1] / "model.weights.h5"
    damaged = bytearray(newest.read_bytes())
    damaged[len(damaged) // 2] ^= 0xFF  # same size, same name: only the checksum tells
    newest.write_bytes(bytes(damaged))
    after = dvc("repro", "report", cwd=repo)  # exit 0 or AssertionError
    return {"repo": repo, "victim": victim, "finished": finished, "before": before, "out": after.stdout}


@pytest.mark.e2e
def test_kill_leaves_no_half_written_output(killed):
    b, victim = killed["before"], killed["victim"]
    assert b["status"] != 0
    assert f"ERROR: failed to reproduce 'train@{victim}'" in b["out"]
    assert (
        b["victim_files"] == [False, False] and not b["victim_metrics"]
    )  # outputs appear only when complete
    assert b["leftovers"] == []
    assert f"train@{killed['finished']}" in b["lock"]  # the finished one is recorded
    assert f"train@{victim}" not in b["lock"]
    assert b["checkpoints"] in (["epoch-0001", "epoch-0002"], ["epoch-0002", "epoch-0003"])  # the newest two
    assert b["curve"] == [
        str(e) for e in range(int(b["checkpoints"][-1][-4:]))
    ]  # curves of finished epochs only


@pytest.mark.e2e
def test_rerun_resumes_the_killed_entry_from_its_newest_intact_checkpoint(killed):
    repo, victim, out = killed["repo"], killed["victim"], killed["out"]
    ckpts = killed["before"]["checkpoints"]
    damaged, intact = f"checkpoints/grid/{victim}/{ckpts[-1]}", f"checkpoints/grid/{victim}/{ckpts[0]}"
    n = int(ckpts[0][-4:])
    assert f"warning: {damaged} is damaged (checksum, epoch count or step count disagree); ignoring it" in out
    assert f"resuming after epoch {n} from {intact}" in out
    assert re.search(rf"training models/grid/{victim}.keras: .* epochs {n + 1}\.\.{EPOCHS}\n", out)
    # the first epoch after the resume repeats the interrupted run's (same batches, same weights, same RNG
    # state)
    again = re.compile(rf"^epoch {n + 1}/{EPOCHS}: (.*)  seconds ", re.M)
    first = killed["before"]["out"].split(f"training models/grid/{victim}.keras")[1]
    assert again.search(first) and again.search(first).group(1) == again.search(out).group(1)
    summary = json.loads((repo / f"models/grid/{victim}.json").read_text())
    assert (
        summary["resumed_from_epoch"] == n
        and summary["epochs_completed"] == EPOCHS
        and not summary["diverged"]
    )
    assert curve_steps(repo, victim) == [str(e) for e in range(EPOCHS)]  # the curves are whole again
    assert not (repo / "checkpoints/grid" / victim).exists()  # done: its checkpoints are removed


@pytest.mark.e2e
def test_rerun_does_not_retrain_the_finished_entry(killed):
    _repo, finished, out = killed["repo"], killed["finished"], killed["out"]
    assert f"Stage 'train@{finished}' didn't change, skipping" in out
    assert f"training models/grid/{finished}.keras" not in out
    for path, (mtime, digest) in killed["before"]["finished"].items():
        assert path.stat().st_mtime_ns == mtime and md5(path) == digest


@pytest.mark.e2e
def test_rerun_completes_the_study_and_leaves_no_temporary_files(killed):
    repo = killed["repo"]
    assert killed["out"].count("training models/") == 1
    for entry in ("cifar10-relu-False-0", "cifar10-elu-False-0"):
        assert strict_json(repo / f"metrics/grid/{entry}.json")["epochs"] == EPOCHS
    assert set(strict_json(repo / "metrics/summary.json")["cifar10"]["variants"]) == {"relu", "elu"}
    assert leftovers(repo) == []
    assert dvc("status", "--json", "report", cwd=repo).stdout.strip().splitlines()[-1] == "{}"


@pytest.mark.e2e
def test_damaged_prepared_file_is_refused_then_restored_without_retraining(killed):
    """Runs last on the finished study: a truncated train.npz."""
    repo = killed["repo"]
    npz = repo / "data/prepared/cifar10/train.npz"
    good = md5(npz)
    models = {p: md5(p) for p in (repo / "models/grid").glob("*.keras")}
    npz.write_bytes(npz.read_bytes()[: npz.stat().st_size // 2])

    status = json.loads(dvc("status", "--json", cwd=repo).stdout.strip().splitlines()[-1])
    assert status["prepare@cifar10"] == [{"changed outs": {"data/prepared/cifar10": "modified"}}]

    p = subprocess.run(
        [sys.executable, "-m", "stages.train", "cifar10-relu-False-0"],
        cwd=repo,
        env=ENV,
        text=True,
        capture_output=True,
        timeout=600,
    )
    errors = [line for line in p.stderr.splitlines() if line.startswith("error: ")]
    assert p.returncode == 2 and errors == [
        "error: data/prepared/cifar10/train.npz: damaged or unreadable (BadZipFile: File is not a zip file); "
        "rebuild it with `dvc repro -f prepare@cifar10` or restore it with `dvc checkout`"
    ]
    # checkpoints of a training in progress: none (checkpoints/finished/ is the store of finished models)
    in_progress = [f for f in (repo / "checkpoints").rglob("*") if f.is_file() and "finished" not in f.parts]
    assert "training" not in p.stdout and not in_progress
    assert {p: md5(p) for p in models} == models  # refused before anything was written

    out = dvc("repro", "report", cwd=repo).stdout
    assert "Stage 'prepare@cifar10' is cached - skipping run, checking out outputs" in out
    assert "training" not in out and md5(npz) == good  # the same bytes: nothing downstream reruns
    assert {p: md5(p) for p in models} == models


# --- divergence ---------------------------------------------------------------------------------------------


@pytest.mark.e2e
def test_diverging_entry_is_flagged_and_the_study_completes(tmp_path, cifar10_archive):
    """lr 10 with no momentum: ReLU's loss becomes NaN within three epochs, the sigmoid's stays finite.
    Integer learning_rate and momentum, as a user types them, are accepted by training too (regression)."""
    repo = make_project(
        tmp_path / "repo",
        cifar10_archive,
        {
            "grid": {"activation": ["relu", "sigmoid"]},
            "train": {"learning_rate": 10, "momentum": 0, "lr_schedule": "constant", "epochs": 3},
        },
    )
    out = dvc("repro", "report", cwd=repo).stdout  # exit 0 or AssertionError

    s = json.loads((repo / "models/grid/cifar10-relu-False-0.json").read_text())
    assert s["diverged"] is True and s["diverged_epoch"] in (1, 2, 3)
    assert s["epochs_completed"] == s["diverged_epoch"] - 1  # the last finite epoch's weights are kept
    assert f"warning: loss diverged in epoch {s['diverged_epoch']}; keeping the last finite weights" in out
    m = strict_json(repo / "metrics/grid/cifar10-relu-False-0.json")
    assert m["diverged"] is True and m["epochs"] == s["epochs_completed"] and math.isfinite(m["test_loss"])
    assert "metrics/grid/cifar10-relu-False-0.json: test accuracy " in out
    assert "(diverged: last finite weights)" in out

    s = json.loads((repo / "models/grid/cifar10-sigmoid-False-0.json").read_text())
    assert s["diverged"] is False and s["epochs_completed"] == 3
    assert strict_json(repo / "metrics/grid/cifar10-sigmoid-False-0.json")["diverged"] is False

    summary = strict_json(repo / "metrics/summary.json")["cifar10"]
    assert summary["variants"]["relu"]["diverged"] == 1 and summary["variants"]["sigmoid"]["diverged"] == 0
    assert (repo / "reports/report.md").exists() and leftovers(repo) == []
    # removed, diverged or not; only the store of finished models (checkpoints/finished/) holds files
    assert not [f for f in (repo / "checkpoints").rglob("*") if f.is_file() and "finished" not in f.parts]
