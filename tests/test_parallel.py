"""stages.parallel: the grid's entries trained N at a time through DVC in the workspace, with the same results
as a sequential `dvc repro`; stopped by SIGTERM without a process left behind; shared across machines through
the run cache; and the GPU study (benchmarks/device_run.sh: measurement, plan, deadline) rehearsed on a CPU.
Real DVC in temporary git+DVC copies of the project, the tests' own tiny archives."""

import json
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import yaml

from stages.parallel import select_jobs, set_params, visible_gpus, worker_env
from stages.params import load
from tests.archives import make_dataset, python_members, write_archive
from tests.conftest import BACKEND_ENV, ENV, ROOT, dvc, git, locked_stages, make_project, run

RUNNER = [sys.executable, "-m", "stages.parallel"]
# 4 entries and the experiment's own model, one epoch each
FOUR = {"grid": {"activation": ["relu", "elu"], "batch_norm": [False, True]}, "train": {"epochs": 1}}
# a test that drives DVC through several trainings (5 to 10 processes, each starting Keras: 20-60 s on 2 busy
# cores) is bounded by this rather than pytest.ini's 300 s
SLOW = pytest.mark.timeout(900)
KEYS = [f"cifar10-{a}-{b}-0" for a in ("relu", "elu") for b in (False, True)]
TIMING = {
    "train_seconds",
    "seconds_per_epoch",
    "inference_images_per_second",
}  # the machine's, not the model's


def trained(output):
    """The models a command's output says were trained (the train stage's "training models/....keras:" line,
    prefixed by the runner's "<job>: ")."""
    return set(re.findall(r"^(?:\S+: )?training (models/\S+\.keras):", output, re.MULTILINE))


def made(output):
    """The models a command's output says were saved (trained, or resumed from a checkpoint, possibly with no
    epoch left to train) or restored: a model the experiment and a grid entry share (at these params the
    experiment's is cifar10-relu-False-0) is trained once and copied for the other ("restored models/....keras
    from checkpoints/finished/...")."""
    found = re.findall(r"^(?:\S+: )?(?:saved|restored) (models/\S+\.keras) ", output, re.MULTILINE)
    return trained(output) | set(found)


def metrics(repo):
    """{metrics file: its values less the timings} of every trained model."""
    files = sorted(Path(repo, "metrics/grid").glob("*.json")) + [Path(repo, "metrics/experiment.json")]
    return {
        f.name: {k: v for k, v in json.loads(f.read_text()).items() if k not in TIMING}
        for f in files
        if f.exists()
    }


def processes_in(repo):
    """Processes whose working directory is in repo: DVC and the stages it runs."""
    found = []
    for p in psutil.process_iter(["cwd"]):
        if p.info["cwd"] and (p.info["cwd"] + "/").startswith(f"{repo}/"):
            found.append(p)
    return found


def gone_within(seconds, repo):
    end = time.time() + seconds
    while processes_in(repo) and time.time() < end:
        time.sleep(0.5)
    return processes_in(repo) == []


# --- the pieces, without DVC --------------------------------------------------------------------------------


def test_each_worker_slot_gets_its_own_gpu_round_robin(monkeypatch):
    assert [worker_env(i, ["0", "1"]) for i in range(3)] == [
        {"CUDA_VISIBLE_DEVICES": "0"},
        {"CUDA_VISIBLE_DEVICES": "1"},
        {"CUDA_VISIBLE_DEVICES": "0"},
    ]
    assert worker_env(5, []) == {}  # a CPU: nothing set
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2, 3")
    assert visible_gpus() == ["2", "3"]  # the user's choice of GPUs is shared out, not widened
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "-1")
    assert visible_gpus() == []


@pytest.fixture
def workspace(tmp_path, monkeypatch):
    shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_keys_select_entries_and_the_experiment_by_name(workspace):
    params = load()
    assert [j.name for j in select_jobs(params, None)][-1] == "experiment" and len(
        select_jobs(params, None)
    ) == 9
    jobs = select_jobs(params, ["cifar10-elu-*", "experiment"])
    assert [j.name for j in jobs] == ["cifar10-elu-False-0", "cifar10-elu-True-0", "experiment"]
    assert jobs[0].stages == ("train@cifar10-elu-False-0", "evaluate@cifar10-elu-False-0")
    with pytest.raises(Exception, match=r"--keys cifar10-selu-\*: matches no entry"):
        select_jobs(params, ["cifar10-selu-*"])


def test_set_params_writes_what_passes_the_check_and_nothing_else(workspace):
    before = (workspace / "params.yaml").read_text()
    set_params(["train.epochs=3", "grid.activation=[relu, selu]", "train.limit=null"])
    after = (workspace / "params.yaml").read_text()
    params = load()
    assert params["train"]["epochs"] == 3 and params["grid"]["activation"] == ["relu", "selu"]
    assert "# passes over the training images" in after  # comments kept
    for bad in (["train.epochs=0"], ["train.epoch=3"], ["train.epochs"]):
        with pytest.raises(Exception, match=r"train\.epoch"):
            set_params(bad)
        assert (workspace / "params.yaml").read_text() == after  # unchanged by a refused value
    assert before != after


# --- through DVC --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def parallel(tmp_path_factory, cifar10_archive):
    """The 4-entry grid and the experiment's model by one command, two at a time: (repo, its output)."""
    repo = make_project(tmp_path_factory.mktemp("parallel") / "repo", cifar10_archive, FOUR)
    return repo, run([*RUNNER, "-j", "2"], repo).stdout


@pytest.mark.e2e
@SLOW
def test_one_command_trains_the_grid_two_at_a_time_through_dvc(parallel):
    repo, out = parallel
    assert made(out) == {f"models/grid/{k}.keras" for k in KEYS} | {"models/experiment.keras"}, out[-3000:]
    assert len(trained(out)) in (len(KEYS), len(KEYS) + 1)  # the shared model once, twice if both ran at once
    lines = out.splitlines()
    first = {k: next(i for i, s in enumerate(lines) if s.startswith(f"{k}: training ")) for k in KEYS}
    saved = {k: next(i for i, s in enumerate(lines) if s.startswith(f"{k}: saved ")) for k in KEYS}
    # two trained at once: one started before another had saved its model
    assert any(first[a] < first[b] < saved[a] for a in KEYS for b in KEYS if a != b), out[-3000:]
    want = {f"{s}@{k}" for s in ("train", "evaluate") for k in KEYS} | {"train_exp", "evaluate_exp", "report"}
    assert want <= locked_stages(repo)
    assert (repo / "reports/report.md").is_file() and "done: 5 entries" in out
    again = dvc("repro", cwd=repo).stdout
    assert (
        trained(again) == set() and "Running stage 'train" not in again and "Running stage 'eval" not in again
    )
    status = dvc("status", cwd=repo).stdout
    assert re.findall(r"^(\S+):$", status, re.MULTILINE) == ["source@cifar10"], status  # always_changed only


@pytest.mark.e2e
@SLOW
def test_the_metrics_equal_those_of_a_sequential_dvc_repro(parallel, tmp_path, cifar10_archive):
    repo, _ = parallel
    sequential = make_project(tmp_path / "sequential", cifar10_archive, FOUR)
    dvc("repro", cwd=sequential)
    assert len(metrics(repo)) == 5 and metrics(repo) == metrics(sequential)


@pytest.mark.e2e
@SLOW
def test_on_jax_too(tmp_path, cifar10_archive):
    """The TINY grid's two entries on JAX (an interpreter without TensorFlow), one epoch, both at once,
    against the same two by `dvc repro` one after the other."""
    over = {"train": {"backend": "jax", "epochs": 1}}
    env = BACKEND_ENV["jax"]
    a, b = (make_project(tmp_path / name, cifar10_archive, over) for name in ("parallel", "sequential"))
    out = run([*RUNNER, "-j", "2", "--keys", "cifar10-*"], a, env=env).stdout
    assert len(trained(out)) == 2 and "jax on cpu" in out
    run(
        [
            sys.executable,
            "-m",
            "dvc",
            "repro",
            "evaluate@cifar10-relu-False-0",
            "evaluate@cifar10-elu-False-0",
        ],
        b,
        env=env,
    )
    assert len(metrics(a)) == 2 and metrics(a) == metrics(b)
    assert {m["backend"] for m in metrics(a).values()} == {"jax"}


@pytest.mark.e2e
@SLOW
def test_sigterm_leaves_no_process_and_dvc_repro_trains_only_the_unfinished(tmp_path, cifar10_archive):
    repo = make_project(tmp_path / "repo", cifar10_archive, {**FOUR, "train": {"epochs": 3}})
    log = tmp_path / "runner.log"
    with open(log, "w") as f:
        p = subprocess.Popen([*RUNNER, "-j", "2"], cwd=repo, env=ENV, stdout=f, stderr=subprocess.STDOUT)
    end = time.time() + 250
    # until the first entry is recorded: the others are training or waiting
    while not any(s.startswith("train@") for s in locked_stages(repo)) and time.time() < end:
        if p.poll() is not None:
            break
        time.sleep(0.5)
    assert p.poll() is None, log.read_text()[-3000:]
    p.send_signal(signal.SIGTERM)
    p.wait(timeout=60)
    assert p.returncode == -signal.SIGTERM, log.read_text()[-3000:]
    assert gone_within(10, repo), [q.cmdline() for q in processes_in(repo)]
    finished = {s.split("@")[1] for s in locked_stages(repo) if s.startswith("train@")}
    assert 1 <= len(finished) < 4
    out = dvc("repro", cwd=repo).stdout
    unfinished = {f"models/grid/{k}.keras" for k in KEYS if k not in finished} | {"models/experiment.keras"}
    assert made(out) == unfinished, out[-3000:]  # the finished are kept; the rest resume or start
    assert {f"train@{k}" for k in KEYS} <= locked_stages(repo) and (repo / "reports/report.md").is_file()


@pytest.mark.e2e
@SLOW
def test_two_machines_share_through_the_run_cache_and_a_third_trains_nothing(tmp_path, cifar10_archive):
    """No dvc.lock is committed or merged: each machine pushes its entries' run cache; any machine then gets
    the whole grid with `dvc repro --pull`."""
    origin, storage = tmp_path / "origin.git", tmp_path / "dvc-storage"
    git("init", "-q", "--bare", "--initial-branch=main", str(origin), cwd=tmp_path)
    a = make_project(tmp_path / "a", cifar10_archive, {"train": {"epochs": 1}})  # TINY: relu and elu
    dvc("remote", "add", "-d", "shared", str(storage), cwd=a)
    git("commit", "-qam", "shared DVC remote", cwd=a)
    git("remote", "add", "origin", str(origin), cwd=a)
    git("push", "-q", "origin", "HEAD:main", cwd=a)
    b, c = tmp_path / "b", tmp_path / "c"
    git("clone", "-q", str(origin), str(b), cwd=tmp_path)

    out_a = run([*RUNNER, "-j", "1", "--keys", "*-relu-*", "experiment"], a).stdout
    out_b = run([*RUNNER, "-j", "1", "--keys", "*-elu-*"], b).stdout
    assert made(out_a) == {"models/grid/cifar10-relu-False-0.keras", "models/experiment.keras"}
    assert len(trained(out_a)) == 1  # the experiment's model is the grid's relu: trained once, then copied
    assert trained(out_b) == {"models/grid/cifar10-elu-False-0.keras"}
    for repo in (a, b):
        dvc("push", "--run-cache", cwd=repo)

    git("clone", "-q", str(origin), str(c), cwd=tmp_path)
    assert not (c / "dvc.lock").exists()  # nothing recorded in git by either machine
    out = dvc("repro", "--pull", cwd=c).stdout
    assert trained(out) == set(), out[-3000:]
    for stage in ("train@cifar10-relu-False-0", "train@cifar10-elu-False-0", "train_exp", "prepare@cifar10"):
        assert f"Stage '{stage}' is cached - skipping run, checking out outputs" in out
    summary = json.loads((c / "metrics/summary.json").read_text())["cifar10"]
    assert sorted(summary["variants"]) == ["elu", "relu"]
    assert metrics(c) == {**metrics(a), **metrics(b)}


# --- the GPU study, rehearsed on a CPU ----------------------------------------------------------------------

LIMIT = 840  # seconds device_run.sh may take here: ~4 min on 2 idle cores (JAX compiles each process's step),
# 3-4x that when other jobs hold the cores
SLACK = 6  # seconds past a limit that the checks allow: the interpreter's exit, tee


@pytest.fixture(scope="module")
def rehearsal(tmp_path_factory):
    """benchmarks/device_run.sh --tiny in a copy of the project (one grid entry and the experiment's model: on
    2 busy cores a JAX process takes ~100 s to start), on JAX without TensorFlow, with a plain-tar archive,
    and a $TMPDIR holding a planted `gpu-study-*` folder (issue 21: the old study ran code from one): (repo,
    output, wall seconds, OUT, TMPDIR)."""
    base = tmp_path_factory.mktemp("device")
    device, tmp, out = base / ".device", base / "tmp", base / "out"
    device.mkdir()
    write_archive(
        device / "cifar-10.tar", python_members("cifar10", make_dataset("cifar10", 30, 5)), compression=None
    )
    planted = tmp / "gpu-study-0123abcd"
    for name in ("numpy", "stages"):
        (planted / name).mkdir(parents=True)
        (planted / name / "__init__.py").write_text(f"open({str(base / 'ran')!r}, 'w').write('planted')\n")
    repo = make_project(base / "repo", device / "cifar-10.tar")
    shutil.copytree(ROOT / "benchmarks", repo / "benchmarks", ignore=shutil.ignore_patterns("__pycache__"))
    env = {
        **BACKEND_ENV["jax"],
        "DEVICE": str(device),
        "OUT": str(out),
        "LIMIT": str(LIMIT),
        "PYTHON": sys.executable,
        "TMPDIR": str(tmp),
    }
    t0 = time.time()
    p = run(
        ["bash", "benchmarks/device_run.sh", "--tiny", "-j", "2", "-S", "grid.activation=[relu]"],
        repo,
        env=env,
        timeout=LIMIT + 60,
    )
    return repo, p.stdout, time.time() - t0, out, tmp


@pytest.mark.e2e
@pytest.mark.timeout(LIMIT + 120)
def test_the_budgeted_study_writes_the_pipelines_report_with_the_epochs_it_fitted(rehearsal):
    repo, output, wall, out, _ = rehearsal
    assert "tensorflow: not installed" in output and wall <= LIMIT + SLACK, output[-3000:]
    budget = int(re.search(r"the study's budget: (\d+) s", output)[1])
    runner_seconds = int(
        re.search(r"^done: \d+ entries trained and evaluated through DVC in (\d+) s", output, re.MULTILINE)[1]
    )
    assert runner_seconds <= budget  # the deadline is the budget less the time to stop (GRACE)
    e = int(re.search(r"^plan: (\d+) of 10 epochs", output, re.MULTILINE)[1])
    assert "plan: python -m stages.parallel -j " in output and f"-S train.epochs={e}" in output
    if (out / "throughput.json").exists():  # on a busy CPU, JAX may compile for longer than its share
        measured = json.loads((out / "throughput.json").read_text())
        assert measured["backend"] == "jax" and all(r > 0 for r in measured["rates"].values())
    else:  # the plan degrades: one epoch of every entry, the deadline decides
        assert "nothing measured: one epoch" in output and e == 1
    # the pipeline's own results, copied back: dvc.lock, the metrics, the report and summary at E epochs
    assert yaml.safe_load((out / "run/params.yaml").read_text())["train"]["epochs"] == e
    lock = yaml.safe_load((out / "run/dvc.lock").read_text())["stages"]
    assert {"train@cifar10-relu-False-0", "train_exp", "report"} <= set(lock), output[-3000:]
    for f in ("grid/cifar10-relu-False-0.json", "experiment.json"):
        m = json.loads((out / "run/metrics" / f).read_text())
        assert (m["epochs"], m["backend"]) == (e, "jax")
    summary = json.loads((out / "run/metrics/summary.json").read_text())["cifar10"]
    assert f"{e} epoch" in summary["configuration"] and list(summary["variants"]) == ["relu"]
    assert (out / "run/reports/report.md").is_file()


@pytest.mark.e2e
@pytest.mark.timeout(LIMIT + 120)
def test_the_study_runs_nothing_from_the_temp_dir_and_leaves_nothing_there(rehearsal):
    """Issue 21, item 3: no scratch copy of the project, no folder named by an input or reused; the one
    scratch folder (the installed wheels, the archive) is mkdtemp's, and removed."""
    repo, output, _, _, tmp = rehearsal
    assert not (tmp.parent / "ran").exists()  # the planted numpy/ and stages/ were never imported
    assert sorted(p.name for p in tmp.iterdir()) == ["gpu-study-0123abcd"]
    assert not (ROOT / "benchmarks/gpu_study.py").exists()
    assert "plan: " in output and (repo / "dvc.lock").is_file()  # the study ran in the project itself
