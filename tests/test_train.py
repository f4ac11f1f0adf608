"""The train stage as DVC runs it (subprocesses in temporary projects), under both Keras backends: it learns,
it is deterministic on CPU, a killed run resumes to the weights an uninterrupted run reaches, and the saved
model loads and evaluates under the other backend. JAX runs in an interpreter where TensorFlow is not
installed (tests/without_tensorflow), as on the GPU machines.

Every Python process pays seconds of imports, so the expensive runs are module fixtures shared by the tests
that read them.
"""

import json
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from stages.entry import paths
from tests.archives import write_cifar
from tests.conftest import BACKEND_ENV, ROOT, dvc, make_project, run, set_params

ENTRY = "cifar10-elu-False-0"
OUT = paths("cifar10", "elu", False, 0)
# 56 steps of SGD at batch 32 over 560 images. ELU at lr 0.01 with cosine decay reaches ~100% test accuracy on
# the learnable archive in 4 epochs. ReLU at this width (12/24 channels) often dies at the last conv's
# activation (every class score 0 -> chance), and lr 0.05 diverges; neither says anything about the stage.
PARAMS = {"train": {"epochs": 4, "learning_rate": 0.01, "lr_schedule": "cosine"}}
BACKENDS = ["tensorflow", "jax"]


def train(repo, backend, check=True):
    return run([sys.executable, "-m", "stages.train", ENTRY], repo, check=check, env=BACKEND_ENV[backend])


def copy_repo(src, dest, backend):
    shutil.copytree(src, dest, symlinks=True)
    set_params(dest, train={"backend": backend})
    return dest


def weights(model_path):
    import keras

    return keras.models.load_model(model_path, compile=False).get_weights()


def assert_same_weights(a, b):
    wa, wb = weights(a), weights(b)
    assert len(wa) == len(wb) and len(wa) > 0
    diff = [float(np.max(np.abs(x - y))) for x, y in zip(wa, wb) if not np.array_equal(x, y)]
    assert not diff, f"{len(diff)} of {len(wa)} weight tensors differ, by up to {max(diff)}"


def curves(live_dir):
    """{metric file: rows (step, value)} of every dvclive .tsv; seconds (wall time) left out."""
    out = {}
    for tsv in sorted(Path(live_dir, "plots", "metrics").rglob("*.tsv")):
        if tsv.stem != "seconds":
            lines = tsv.read_text().splitlines()
            out[str(tsv.relative_to(live_dir))] = [tuple(line.split("\t")) for line in lines[1:]]
    return out


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """A project with a larger learnable archive (60 train, 20 test images per class), prepared once."""
    base = tmp_path_factory.mktemp("train")
    archive = base / "cifar-10-python.tar.gz"
    write_cifar(archive, "cifar10", "python", train_per_class=60, test_per_class=20)
    repo = make_project(base / "prepared", archive, PARAMS)
    run([sys.executable, "-m", "stages.prepare", "cifar10"], repo)
    return repo


@pytest.fixture(scope="module", params=BACKENDS)
def backend(request):
    return request.param


@pytest.fixture(scope="module")
def uninterrupted(prepared, backend, tmp_path_factory):
    """One uninterrupted run: its repo, and its console output."""
    repo = copy_repo(prepared, tmp_path_factory.mktemp(f"uninterrupted-{backend}") / "repo", backend)
    return repo, train(repo, backend).stdout


@pytest.fixture(scope="module")
def killed(prepared, backend, tmp_path_factory):
    """A run killed (SIGKILL) once its epoch-2 checkpoint exists; its repo, and a copy of its checkpoints."""
    base = tmp_path_factory.mktemp(f"killed-{backend}")
    repo = copy_repo(prepared, base / "repo", backend)
    ckpt = repo / OUT["ckpt"]
    p = subprocess.Popen(
        [sys.executable, "-m", "stages.train", ENTRY],
        cwd=repo,
        env=BACKEND_ENV[backend],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline = time.monotonic() + 600
    while not (ckpt / "epoch-0002").exists() and p.poll() is None and time.monotonic() < deadline:
        time.sleep(0.002)
    p.send_signal(signal.SIGKILL)
    output = p.communicate()[0]
    assert p.returncode == -signal.SIGKILL, f"train ended before it could be killed:\n{output[-3000:]}"
    assert (ckpt / "epoch-0002").is_dir(), output[-3000:]
    assert not (repo / OUT["model"]).exists()  # the model is written only when training is complete
    shutil.copytree(ckpt, base / "checkpoint")
    return repo, base / "checkpoint"


def test_one_epoch_trains_and_evaluates_as_the_stages_run_it(prepared, tmp_path):
    """The fast tier's pass through train, the input pipeline, the recorder and evaluate, without DVC: one epoch
    at TINY's width, its outputs the size the params ask for (the e2e tests below check what they learn)."""
    repo = copy_repo(prepared, tmp_path / "repo", "tensorflow")
    set_params(repo, train={"epochs": 1})
    output = train(repo, "tensorflow").stdout
    assert re.search(r"^epoch 1/1: ", output, re.M), output[-3000:]
    summary = json.loads((repo / OUT["summary"]).read_text())
    assert (summary["epochs_completed"], summary["train_images"], summary["validation_images"]) == (
        1,
        560,
        40,
    )
    assert (repo / OUT["model"]).stat().st_size > 0 and not (repo / OUT["ckpt"]).exists()
    assert {
        name: len(rows)
        for name, rows in curves(repo / OUT["live"]).items()
        if name.endswith(("/loss.tsv", "/accuracy.tsv"))
    } == {
        "plots/metrics/train/loss.tsv": 1,
        "plots/metrics/train/accuracy.tsv": 1,
        "plots/metrics/eval/loss.tsv": 1,
        "plots/metrics/eval/accuracy.tsv": 1,
    }
    run([sys.executable, "-m", "stages.evaluate", ENTRY], repo)
    metrics = json.loads((repo / OUT["metrics"]).read_text())
    assert metrics["test_images"] == 200 and metrics["epochs"] == 1 and 0 <= metrics["test_error"] <= 1
    results = json.loads((repo / OUT["results"]).read_text())
    assert (
        np.asarray(results["confusion"]).shape == (10, 10) and np.asarray(results["confusion"]).sum() == 200
    )


@pytest.mark.e2e
def test_a_tiny_model_learns(uninterrupted, backend):
    repo, output = uninterrupted
    summary = json.loads((repo / OUT["summary"]).read_text())
    assert (
        summary["epochs_completed"] == 4 and not summary["diverged"] and summary["resumed_from_epoch"] is None
    )
    assert (summary["train_images"], summary["validation_images"], summary["precision"]) == (
        560,
        40,
        "float32",
    )
    assert (summary["backend"], summary["device"]) == (backend, "cpu")
    assert not (repo / OUT["ckpt"]).exists()  # a finished run removes its checkpoints
    with np.load(repo / "data/prepared/cifar10/test.npz") as f:
        x, y = f["x"], f["y"]
    import keras  # this process: TensorFlow, whichever backend trained the model

    model = keras.models.load_model(repo / OUT["model"], compile=False)  # takes raw pixels
    accuracy = float((model.predict(x.astype("float32"), verbose=0).argmax(1) == y).mean())
    assert len(y) == 200 and accuracy >= 0.6, f"test accuracy {accuracy} (chance: 0.1)\n{output[-3000:]}"
    loss = [float(v) for _, v in curves(repo / OUT["live"])["plots/metrics/train/loss.tsv"]]
    assert len(loss) == 4 and loss[-1] < loss[0] / 2
    assert "expected: " in output and "for this model" in output  # the time estimate, a few steps in


def seconds(text):
    """Seconds of a duration as each_epoch.duration() writes it: '0.8 s', '7 min', '2 h 03 min'."""
    n = [float(x) for x in re.findall(r"[\d.]+", text)]
    return n[0] if text.endswith(" s") else n[-1] * 60 + (n[0] * 3600 if " h " in text else 0)


@pytest.mark.e2e
def test_time_left_after_the_first_epoch_leaves_out_compilation(uninterrupted, backend):
    """Was, on JAX: 'about 27 s left' after epoch 1 (8.9 s, mostly compiling), then epochs of 0.4 s."""
    lines = re.findall(
        r"^epoch (\d+)/4: .*seconds ([\d.]+)(?:  \(about (.+) left\))?$", uninterrupted[1], re.M
    )
    assert [int(e) for e, *_ in lines] == [1, 2, 3, 4] and lines[-1][2] == ""
    first, later = float(lines[0][1]), float(np.median([float(s) for _, s, _ in lines[1:]]))
    per_epoch = seconds(lines[0][2]) / 3  # the estimate after epoch 1, per epoch left
    # steps 3..13 time it: within a few times the later epochs (a loaded machine, JAX's warm-up), and on JAX,
    # whose first epoch is mostly compilation, far below that epoch's own time
    assert later / 3 < per_epoch < later * 5 and (backend == "tensorflow" or per_epoch < first / 4), lines


@pytest.mark.e2e
def test_same_seed_same_weights(prepared, uninterrupted, backend, tmp_path):
    repo = copy_repo(prepared, tmp_path / "repo", backend)
    train(repo, backend)
    assert_same_weights(repo / OUT["model"], uninterrupted[0] / OUT["model"])
    assert curves(repo / OUT["live"]) == curves(uninterrupted[0] / OUT["live"])


@pytest.mark.e2e
def test_killed_run_resumes_to_the_weights_of_an_uninterrupted_one(killed, uninterrupted, backend):
    repo, _ = killed
    output = train(repo, backend).stdout
    assert "resuming after epoch 2" in output and "epochs 3..4" in output, output[-3000:]
    summary = json.loads((repo / OUT["summary"]).read_text())
    assert summary["resumed_from_epoch"] == 2 and summary["epochs_completed"] == 4
    assert_same_weights(repo / OUT["model"], uninterrupted[0] / OUT["model"])
    resumed, whole = curves(repo / OUT["live"]), curves(uninterrupted[0] / OUT["live"])
    assert "plots/metrics/train/loss.tsv" in resumed and "plots/metrics/eval/accuracy.tsv" in resumed
    for name, rows in resumed.items():  # one row per epoch, no repeats of the epochs before the kill
        assert [step for step, _ in rows] == ["0", "1", "2", "3"], name
    assert resumed == whole  # every value, including epochs 1-2 replayed from the checkpoint
    assert not (repo / OUT["ckpt"]).exists()


@pytest.mark.e2e
def test_saved_model_evaluates_alike_under_the_other_backend(uninterrupted, backend):
    """The .keras file is backend-neutral: the other backend's evaluate stage gives the same test metrics."""
    repo, _ = uninterrupted
    metrics = {}
    for b in BACKENDS:
        set_params(repo, train={"backend": b})
        run([sys.executable, "-m", "stages.evaluate", ENTRY], repo, env=BACKEND_ENV[b])
        metrics[b] = json.loads((repo / OUT["metrics"]).read_text())
    assert metrics["tensorflow"]["backend"] == metrics["jax"]["backend"] == backend  # the training's backend
    assert metrics["tensorflow"]["test_accuracy"] >= 0.6  # at most one near-tie of 200 images may flip
    assert abs(metrics["tensorflow"]["test_accuracy"] - metrics["jax"]["test_accuracy"]) <= 1 / 200
    assert metrics["tensorflow"]["test_loss"] == pytest.approx(metrics["jax"]["test_loss"], rel=1e-4)


@pytest.mark.e2e
def test_checkpoint_of_other_params_or_code_is_not_resumed(prepared, killed, backend, tmp_path):
    if backend == "jax":
        pytest.skip("the fingerprint is the same code on both backends: tried once, under TensorFlow")
    for change in ("params", "code"):
        repo = copy_repo(prepared, tmp_path / change, backend)
        shutil.copytree(killed[1], repo / OUT["ckpt"])  # epochs 1-2 made with these params and this code
        if change == "params":
            set_params(repo, train={"learning_rate": 0.02})
        else:  # what shapes training, e.g. the split's seed, in a file the train stage depends on
            entry_py = repo / "stages/entry.py"
            entry_py.write_text(entry_py.read_text().replace("SPLIT_SEED = 0", "SPLIT_SEED = 1"))
        output = train(repo, backend).stdout
        assert "resuming" not in output and "epochs 1..4" in output, output[-3000:]
        assert json.loads((repo / OUT["summary"]).read_text())["resumed_from_epoch"] is None


def test_environment_disagreeing_with_the_backend_param_is_refused(prepared, tmp_path):
    repo = copy_repo(prepared, tmp_path / "repo", "tensorflow")
    p = run(
        [sys.executable, "-m", "stages.train", ENTRY],
        repo,
        check=False,
        env={**BACKEND_ENV["tensorflow"], "KERAS_BACKEND": "jax"},
    )
    assert p.returncode == 2 and p.stdout.strip().splitlines() == [
        "error: params.yaml: train.backend = 'tensorflow' but the environment has KERAS_BACKEND=jax; unset "
        "KERAS_BACKEND, or set the param: dvc exp run -S train.backend=jax"
    ]
    assert not (repo / "checkpoints").exists() and not (repo / "models").exists()


def stage_names(repo):
    return dvc("stage", "list", "--name-only", cwd=repo).stdout.split()


def test_one_stage_per_grid_entry_and_no_params_value_in_any_command(tmp_path, cifar10_archive):
    repo = make_project(
        tmp_path / "repo",
        cifar10_archive,
        {"grid": {"activation": ["relu", "elu"], "batch_norm": [False, True], "seed": [0]}},
    )
    entries = [f"cifar10-{a}-{b}-0" for a in ("relu", "elu") for b in ("False", "True")]
    assert sorted(stage_names(repo)) == sorted(
        [
            "check",
            "source@cifar10",
            "prepare@cifar10",
            *(f"train@{e}" for e in entries),
            *(f"evaluate@{e}" for e in entries),
            "train_exp",
            "evaluate_exp",
            "report",
        ]
    )
    listing = dvc(
        "stage", "list", cwd=repo
    ).stdout  # each train stage's outputs are where train.py writes them
    for e in entries:
        line = next(s for s in listing.splitlines() if s.startswith(f"train@{e} "))
        assert f"models/grid/{e}.keras" in line
    commands = [s["cmd"] for s in yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"].values()]
    assert commands and not [c for c in commands if "$" in c]  # entries come from $DVC_STAGE, not the shell


@pytest.mark.e2e
def test_adding_an_activation_trains_only_the_new_entries(tmp_path, cifar10_archive):
    repo = make_project(
        tmp_path / "repo",
        cifar10_archive,
        {"grid": {"activation": ["relu"], "batch_norm": [False]}, "train": {"epochs": 1}},
    )
    dvc("repro", "report", cwd=repo)
    # source@ is always changed (it stamps the archive); train_exp and evaluate_exp were never run here
    assert set(json.loads(dvc("status", "--json", cwd=repo).stdout)) == {
        "source@cifar10",
        "train_exp",
        "evaluate_exp",
    }
    set_params(repo, grid={"activation": ["relu", "elu", "selu"]})
    changed = set(json.loads(dvc("status", "--json", cwd=repo).stdout))
    new = {f"{s}@cifar10-{a}-False-0" for s in ("train", "evaluate") for a in ("elu", "selu")}
    # check validates the whole params.yaml, so it reruns, but its output does not change; report ranks the grid;
    # train_exp and evaluate_exp were never run here
    assert changed == new | {"check", "report", "source@cifar10", "train_exp", "evaluate_exp"}
    set_params(repo, grid={"activation": ["relu", "elu"]})
    output = dvc("repro", "report", cwd=repo).stdout
    assert "Running stage 'train@cifar10-elu-False-0'" in output
    assert "Running stage 'train@cifar10-relu-False-0'" not in output
    assert "Running stage 'evaluate@cifar10-relu-False-0'" not in output
    assert "Running stage 'prepare@cifar10'" not in output
    assert (repo / paths("cifar10", "elu", False, 0)["metrics"]).exists()


def test_train_before_prepare_says_what_to_run(tmp_path):
    for f in ("stages", "params.yaml"):
        (shutil.copytree if (ROOT / f).is_dir() else shutil.copy)(ROOT / f, tmp_path / f)
    p = run([sys.executable, "-m", "stages.train", "cifar10-relu-False-0"], tmp_path, check=False)
    assert p.returncode == 2
    errors = [line for line in p.stdout.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "dvc repro prepare@cifar10" in errors[0]
    assert not (tmp_path / "models").exists() and not (tmp_path / "checkpoints").exists()


def activation_means(live_dir):
    """{act<i>_mean: value of the last epoch} from a run's dvclive curves."""
    return {
        tsv.stem: float(tsv.read_text().splitlines()[-1].split("\t")[1])
        for tsv in Path(live_dir, "plots/metrics/train").glob("act*_mean.tsv")
    }


@pytest.mark.e2e
def test_bias_shift_statistics_agree_in_bf16_and_float32(prepared, tmp_path):
    """Regression: numpy reduced bf16 activations in bf16, which made the means 100-1000x too small."""
    means = {}
    for precision in ("float32", "mixed_bfloat16"):
        repo = copy_repo(prepared, tmp_path / precision, "tensorflow")
        set_params(repo, train={"precision": precision, "epochs": 1, "probe_images": 256})
        train(repo, "tensorflow")
        assert json.loads((repo / OUT["summary"]).read_text())["precision"] == precision
        means[precision] = activation_means(repo / OUT["live"])
    assert sorted(means["float32"]) == [f"act{i}_mean" for i in range(1, 10)]
    for name, value in means["float32"].items():
        assert abs(value) > 1e-3 and means["mixed_bfloat16"][name] == pytest.approx(value, rel=0.1), (
            name,
            means,
        )


@pytest.mark.parametrize(
    "on_gpu, step_seconds, pointer", [(False, 0.6, True), (False, 0.01, False), (True, 0.6, False)]
)
def test_expected_time_points_cpu_users_to_the_cpu_recipe_only_when_it_is_long(
    capsys, on_gpu, step_seconds, pointer
):
    """0.6 s a step of 128 images: width 1.0 on a CPU (150 epochs of 351 steps, 8 more models: days)."""
    from stages.each_epoch import EachEpoch

    r = EachEpoch([], None, None, None, epochs=150, steps=351, queued=7, on_gpu=on_gpu)
    r.first_epoch, r.step_seconds = 0, step_seconds
    r.say_expected_time()
    out = capsys.readouterr().out
    if step_seconds == 0.6:
        assert out.startswith(
            "expected: 4 min per epoch, 8 h 46 min for this model, about 70 h 12 min with the 7 other "
            "models `dvc repro` trains at these params (python -m stages.recipes --estimate)"
        )
    from stages.recipes import command

    assert (command("cpu-study") in out) == pointer
