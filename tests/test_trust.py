"""What a params.yaml from someone else can and cannot do: no value reaches a shell, whichever stages DVC is
told to run (`-s`, `--downstream`, a stale `data/params.ok`), and the check accepts exactly what the stages
accept (YAML read as DVC reads it; activations the net can use). docs/faults.md states the trust model."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ENV, dvc, make_project, run

INJECTED = "relu;touch INJECTED;echo"


def prepare(tmp_path_factory, archive):
    """A project whose check and prepare ran on valid params (so data/params.ok and the data exist)."""
    repo = make_project(tmp_path_factory.mktemp("trust") / "repo", archive)
    dvc("repro", "prepare@cifar10", cwd=repo)
    return repo


@pytest.fixture(scope="module")
def prepared_project(tmp_path_factory, cifar10_archive):
    return prepare(tmp_path_factory, cifar10_archive)


@pytest.fixture(scope="module")
def intact_project(tmp_path_factory, cifar10_archive):
    """Another one, which no failed `dvc repro` has touched (DVC removes a stage's outputs before running
    it)."""
    return prepare(tmp_path_factory, cifar10_archive)


def edit(repo, old, new):
    p = Path(repo, "params.yaml")
    text = p.read_text()
    assert old in text
    p.write_text(text.replace(old, new, 1))


@pytest.mark.parametrize(
    "args",
    [
        ["repro", "-s", f"train@cifar10-{INJECTED}-False-0"],
        ["repro", "-s", "train_exp"],
        ["repro", "--downstream", "train_exp"],
        ["repro", "-s", "evaluate_exp"],
        ["exp", "run", "--downstream", "train_exp"],
    ],
)
def test_injected_value_never_reaches_a_shell_whatever_dvc_runs(prepared_project, tmp_path, args):
    repo = prepared_project
    original = (repo / "params.yaml").read_text()
    try:
        edit(repo, "activation: relu\n", f"activation: '{INJECTED}'\n")  # the experiment's, the first one
        edit(repo, "- relu\n", f"- '{INJECTED}'\n")  # and the grid's
        p = dvc(*args, cwd=repo, check=False)
        assert not list(repo.rglob("INJECTED")), p.stdout[-3000:]  # nothing ran the injected command
        assert p.returncode != 0 and not list(repo.glob("models/**/*.keras")), p.stdout[-3000:]
    finally:
        (repo / "params.yaml").write_text(original)


@pytest.mark.parametrize(
    "old, new, expected",
    [
        ("batch_norm: false\n", "batch_norm: off\n", "batch_norm = 'off': must be true or false"),
        ("batch_norm: false\n", "batch_norm: yes\n", "batch_norm = 'yes': must be true or false"),
        (
            "  seed:\n  - 0\n",
            "  seed:\n  - 1:00\n",
            "grid.seed = ['1:00']: must be a list whose items are each an integer",
        ),
        ("activation: relu\n", "activation: glu\n", "activation = 'glu': must be one of"),
        ("activation: relu\n", "activation: threshold\n", "activation = 'threshold': must be one of"),
    ],
)
def test_check_refuses_what_the_stages_would_refuse(tmp_path, cifar10_archive, old, new, expected):
    """YAML 1.1 spellings (PyYAML reads off/yes as booleans, 1:00 as 60; DVC reads strings) and Keras
    activations that cannot stand in the net (glu halves the channels, threshold needs arguments)."""
    repo = make_project(tmp_path / "repo", cifar10_archive)
    edit(repo, old, new)
    p = run([sys.executable, "-m", "stages.params"], repo, check=False)
    assert p.returncode == 2 and expected in p.stdout, p.stdout
    assert not (repo / "data/params.ok").exists()


@pytest.mark.parametrize(
    "classes, message",
    [
        ("{}", "must be a list of 10 distinct class names"),
        ("5", "must be a list of 10 distinct class names"),
        ("not json", "not JSON"),
        (json.dumps([f"c{i}" for i in range(20)]), "must be a list of 10 distinct"),
        (json.dumps(["a"] * 10), "must be a list of 10 distinct class names"),
    ],
)
def test_damaged_classes_json_is_one_line(intact_project, classes, message):
    path = intact_project / "data/prepared/cifar10/classes.json"
    good = path.read_text()
    try:
        path.write_text(classes)
        p = run([sys.executable, "-m", "stages.train", "cifar10-relu-False-0"], intact_project, check=False)
        errors = [line for line in p.stdout.splitlines() if line.startswith("error:")]
        assert p.returncode == 2 and len(errors) == 1 and message in errors[0], p.stdout[-2000:]
        assert errors[0].endswith("or restore it with `dvc checkout`")
        assert not (intact_project / "models").exists()
    finally:
        path.write_text(good)


def test_evaluate_before_train_says_what_to_run(intact_project):
    p = run([sys.executable, "-m", "stages.evaluate", "cifar10-relu-False-0"], intact_project, check=False)
    assert p.returncode == 2 and p.stdout.strip().splitlines() == [
        "error: models/grid/cifar10-relu-False-0.keras: missing; train it first: "
        "dvc repro train@cifar10-relu-False-0"
    ]


def test_a_stage_prints_no_native_start_up_lines(intact_project):
    """TensorFlow's C++ start-up lines and a CPU-only machine's cuInit error look like failures: filtered."""
    p = subprocess.run(
        [sys.executable, "-m", "stages.params"],
        cwd=intact_project,
        env=ENV,
        text=True,
        capture_output=True,
        timeout=600,
    )
    assert p.returncode == 0 and p.stdout.startswith("params.yaml: valid; grid of 2 models")
    assert p.stderr == "", p.stderr[:2000]  # the check imports Keras, and so TensorFlow
