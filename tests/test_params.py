"""params.yaml is checked before anything else runs: stages/params.py in-process for every kind of bad value,
then `python -m stages.params` and `dvc repro` as a user runs them, to show that a bad value stops the pipeline
at the check stage, before any download, and that a grid value written to reach a shell never gets there."""

import copy
import shutil
import subprocess
import sys

import pytest
import yaml

from stages.params import UserError, load, validate
from tests.conftest import ENV, ROOT, TINY, dvc, make_project, merge, set_params

BASE = merge(yaml.safe_load((ROOT / "params.yaml").read_text()), copy.deepcopy(TINY))
SHELL = [
    "relu; touch /tmp/pwned",
    "$(id)",
    "`id`",
    "relu && id",
    "relu|id",
    "relu id",
    "relu\nid",
    "../relu",
    "Relu",
    "relu'",
    "",
]


def changed(key, value, params=None):
    """A copy of params (BASE) with the dotted key set to value."""
    p = copy.deepcopy(params or BASE)
    *parents, last = key.split(".")
    d = p
    for k in parents:
        d = d[k]
    d[last] = value
    return p


def one_problem(params):
    errors = validate(params)
    assert len(errors) == 1, errors
    assert "\n" not in errors[0]
    return errors[0]


def test_the_shipped_and_the_tiny_params_are_valid():
    assert validate(yaml.safe_load((ROOT / "params.yaml").read_text())) == []
    assert validate(BASE) == []


@pytest.mark.parametrize(
    "key, typo, hint",
    [
        ("train", "learnig_rate", "did you mean train.learning_rate?"),
        ("grid", "seeds", "did you mean grid.seed?"),
        ("model", "with", "did you mean model.width?"),
        ("", "activaton", "did you mean activation?"),
        ("data.cifar100", "label", "did you mean data.cifar100.labels?"),
    ],
)
def test_misspelt_key_is_named_with_a_did_you_mean_hint(key, typo, hint):
    p = copy.deepcopy(BASE)
    section = p
    for k in filter(None, key.split(".")):
        section = section[k]
    right = hint.split()[-1].rstrip("?").split(".")[-1]
    section[typo] = section.pop(right)  # the misspelling replaces the right key: unknown + missing
    errors = validate(p)
    dotted = f"{key}.{typo}" if key else typo
    assert errors == [
        f"{dotted}: unknown key; {hint}",
        f"{dotted.rsplit('.', 1)[0] + '.' if key else ''}{right}: missing; "
        "see the params.yaml section of docs/pipeline.md",
    ]


def test_unknown_key_without_a_close_match_lists_the_allowed_keys():
    line = one_problem(changed("train.zzz", 1))
    assert line.startswith(
        "train.zzz: unknown key; allowed: seed, epochs, batch_size, optimizer, learning_rate"
    )


@pytest.mark.parametrize(
    "key, value, allowed",
    [
        # wrong types
        ("train.epochs", "10", "an integer >= 1"),
        ("train.epochs", 10.0, "an integer >= 1"),
        ("train.epochs", True, "an integer >= 1"),  # YAML's true is not 1
        ("train.batch_size", 32.5, "an integer >= 1"),
        ("train.learning_rate", "0.1", "a number in (0, 100]"),
        ("train.learning_rate", None, "a number in (0, 100]"),
        ("train.momentum", [0.9], "a number in [0, 0.999]"),
        ("batch_norm", "false", "true or false"),
        ("train.augment", 1, "true or false"),
        ("grid.seed", 0, "a non-empty list"),
        ("grid.seed", ["0"], "a list whose items are each an integer in [0, 4294967295] ('0' is not)"),
        ("grid.batch_norm", [False, "true"], "a list whose items are each true or false ('true' is not)"),
        ("grid.activation", "relu", "a non-empty list"),
        ("data.cifar10.md5", 12345, "32 lower-case hex digits, or null to skip the check"),
        (
            "data.cifar10.md5",
            "C58F30108F718F92721AF3B95E74349A",
            "32 lower-case hex digits, or null to skip the check",
        ),
        (
            "data.cifar10.url",
            "",
            "an http(s):// or file:// URL, or a local path, ending in the archive's file name",
        ),
        ("train.lr_drops", 0.5, "an increasing list of fractions of training in (0, 1)"),
        ("train.optimizer", "rmsprop", "one of sgd, adam"),
        ("train.lr_schedule", "linear", "one of step, cosine, constant"),
        ("train.precision", "float16", "one of auto, float32, mixed_bfloat16, mixed_float16"),
        ("data.cifar100.labels", "superclass", "one of fine, coarse"),
        ("evaluate", 500, "a mapping of batch_size"),
        # zero, negative and out-of-range sizes
        ("train.epochs", 0, "an integer >= 1"),
        ("train.batch_size", -1, "an integer >= 1"),
        ("train.probe_images", 0, "an integer >= 1"),
        ("train.limit", 0, "an integer >= 1"),
        ("train.validation", -10, "an integer >= 0"),
        ("train.seed", -1, "an integer in [0, 4294967295]"),
        ("evaluate.batch_size", 0, "an integer in [1, 1000]"),
        ("model.width", 0, "a number in (0, 16]"),
        ("model.width", -0.5, "a number in (0, 16]"),
        ("model.width", float("inf"), "a number in (0, 16]"),
        ("train.learning_rate", 0, "a number in (0, 100]"),
        ("train.learning_rate", -0.01, "a number in (0, 100]"),
        ("train.learning_rate", float("nan"), "a number in (0, 100]"),
        ("train.learning_rate", 1e6, "a number in (0, 100]"),
        ("model.dropout_hidden", 1.0, "a number in [0, 0.99]"),
        ("train.lr_gamma", 0, "a number in (0, 1]"),
        ("train.lr_drops", [0.9, 0.5], "an increasing list of fractions of training in (0, 1)"),
        ("train.lr_drops", [0.5, 1.0], "an increasing list of fractions of training in (0, 1)"),
        ("grid.seed", [0, -1], "a list whose items are each an integer in [0, 4294967295] (-1 is not)"),
        ("grid.seed", [0, 0], "a list without repeated values"),
        ("grid.activation", [], "a non-empty list"),
        # unknown names
        ("dataset", "imagenet", "one of cifar10, cifar100"),
        (
            "grid.dataset",
            ["cifar10", "cifar11"],
            "a list whose items are each one of cifar10, cifar100 ('cifar11' is not)",
        ),
    ],
)
def test_bad_value_is_one_line_naming_key_value_and_what_is_allowed(key, value, allowed):
    line = one_problem(changed(key, value))
    assert line == f"{key} = {value!r}: must be {allowed}"


@pytest.mark.parametrize("key", ["activation", "grid.activation"])
def test_unknown_activation_lists_the_valid_ones(key):
    value = "relux" if key == "activation" else ["relu", "relux"]
    line = one_problem(changed(key, value))
    assert line.startswith(f"{key} = {value!r}: must be ")
    valid = line.split("one of ", 1)[1].split(" (")[0].split(";")[0].split(", ")
    assert {"relu", "lrelu", "prelu", "elu", "selu", "gelu", "swish"} <= set(valid) and "relux" not in valid
    if key == "grid.activation":
        assert line.endswith("('relux' is not)")


@pytest.mark.parametrize(
    "key, value, hint",
    [
        ("activation", "prelux", "; did you mean 'prelu'?"),
        ("activation", "eluu", "; did you mean 'elu'?"),
        ("grid.activation", ["relu", "lreluu"], "; did you mean 'lrelu'? ('lreluu' is not)"),
        ("activation", "zzzz", ""),  # nothing close: the list alone
    ],
)
def test_a_near_miss_activation_gets_a_did_you_mean(key, value, hint):
    line = one_problem(changed(key, value))
    assert line.endswith(hint) and line.count("did you mean") == (hint.count("did you mean"))


def test_counts_are_singular_for_one():
    from stages.params import count

    assert [count(1, "model"), count(2, "model"), count("1", "epoch"), count("2/3", "epoch")] == [
        "1 model",
        "2 models",
        "1 epoch",
        "2/3 epochs",
    ]


def test_experiment_dataset_must_be_in_the_grid():
    line = one_problem(changed("dataset", "cifar100"))
    assert line == (
        "dataset = 'cifar100': must be one of grid.dataset ['cifar10'] "
        "(its prepare stage comes from the grid)"
    )
    assert validate(changed("grid.dataset", ["cifar10", "cifar100"], changed("dataset", "cifar100"))) == []


def test_validation_split_must_leave_training_images():
    """Validation is held out first, then train.limit takes from the rest (was: validation compared to limit)."""
    line = one_problem(changed("train.validation", 49_990))
    assert line == (
        "train.validation = 49990: leaves 10 of the 50000 training images of cifar10, fewer than one "
        "batch (train.batch_size = 32); lower it"
    )


@pytest.mark.parametrize("value", SHELL)
@pytest.mark.parametrize("key", ["activation", "grid.activation"])
def test_names_that_could_reach_a_shell_are_refused(key, value):
    """Grid values become stage names, paths and words of stage commands: only plain identifiers pass."""
    bad = value if key == "activation" else ["relu", value]
    line = one_problem(changed(key, bad))
    assert line.startswith(f"{key} = {bad!r}: must be ")
    assert "a lower-case name of letters, digits and _" in line


@pytest.mark.parametrize(
    "key, value",
    [
        ("dataset", "cifar10; id"),
        ("grid.dataset", ["cifar10 && id"]),
        ("batch_norm", "false; id"),
        ("grid.batch_norm", ["$(id)"]),
        ("train.seed", "0; id"),
        ("grid.seed", ["0`id`"]),
    ],
)
def test_other_command_line_values_refuse_shell_text(key, value):
    """Every value that dvc.yaml puts on a command line (dataset, batch_norm, seeds) is a closed choice."""
    assert one_problem(changed(key, value)).startswith(f"{key} = {value!r}: must be ")


def test_every_problem_is_reported_at_once_one_line_each(tmp_path):
    p = changed("train.epochs", 0, changed("grid.activation", ["relu", "$(id)"], changed("model.widht", 1)))
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(p))
    with pytest.raises(UserError) as e:
        load(path)
    lines = f"error: {e.value}".splitlines()
    assert len(lines) == 3 and all(line.startswith(f"error: {path}: ") for line in lines)
    assert [line.split(": ")[2].split(" ")[0] for line in lines] == [
        "grid.activation",
        "model.widht",
        "train.epochs",
    ]


@pytest.mark.parametrize(
    "text, expected",
    [
        (
            "a: [",
            "cannot be read as YAML (line 1, column 5: expected the node content, but found '<stream end>')",
        ),
        ("a: b: c", "cannot be read as YAML (line 1, column 5: mapping values are not allowed here)"),
        (
            "- relu\n- elu\n",
            "top level = ['relu', 'elu']: must be a mapping of dataset, activation, batch_norm, grid",
        ),
    ],
)
def test_unreadable_or_wrong_shaped_file_is_one_line(tmp_path, text, expected):
    path = tmp_path / "params.yaml"
    path.write_text(text)
    with pytest.raises(UserError) as e:
        load(path)
    assert str(e.value).startswith(f"{path}: {expected}") and "\n" not in str(e.value)


def test_integer_learning_rate_and_momentum_build_the_optimizer():
    """YAML reads `learning_rate: 1` and `momentum: 0` as integers; validate() accepts them, so must training
    (Keras refuses integers for both). Regression: a constant-schedule run used to crash with a traceback."""
    import keras

    from stages.train import lr_schedule

    for schedule, drops in (("constant", []), ("step", []), ("step", [0.5]), ("cosine", [])):
        t = changed(
            "train.momentum",
            0,
            changed(
                "train.learning_rate",
                1,
                changed("train.lr_schedule", schedule, changed("train.lr_drops", drops)),
            ),
        )["train"]
        assert validate(changed("train", t)) == []
        keras.optimizers.SGD(lr_schedule(t, 10, keras), momentum=float(t["momentum"]))
        keras.optimizers.Adam(lr_schedule(t, 10, keras))


# --- as a user runs it --------------------------------------------------------------------------------------


def check(repo):
    p = subprocess.run(
        [sys.executable, "-m", "stages.params"],
        cwd=repo,
        env=ENV,
        text=True,
        capture_output=True,
        timeout=600,
    )
    errors = [line for line in p.stderr.splitlines() if line.startswith("error: ")]
    return p.returncode, p.stdout, errors


def test_check_command_exits_2_and_writes_nothing(tmp_path):
    shutil.copytree(ROOT / "stages", tmp_path / "stages", ignore=shutil.ignore_patterns("__pycache__"))
    bad = changed("activation", "relu; touch pwned", changed("train.batch_size", 0))
    bad["grid"]["datset"] = bad["grid"].pop("dataset")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(bad))
    status, out, errors = check(tmp_path)
    assert status == 2 and out == ""
    assert errors == [
        "error: params.yaml: activation = 'relu; touch pwned': must be a lower-case name of letters, digits and _ "
        "(it becomes part of stage names and paths)",
        "error: params.yaml: grid.datset: unknown key; did you mean grid.dataset?",
        "error: params.yaml: grid.dataset: missing; see the params.yaml section of docs/pipeline.md",
        "error: params.yaml: train.batch_size = 0: must be an integer >= 1",
    ]
    assert not (tmp_path / "data").exists() and not (tmp_path / "pwned").exists()

    (tmp_path / "params.yaml").write_text(yaml.safe_dump(BASE))
    status, out, errors = check(tmp_path)
    assert status == 0 and errors == []
    assert out.startswith("params.yaml: valid; grid of 2 models plus the experiment's own (cifar10, relu, ")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(changed("grid.activation", ["elu"])))
    assert check(tmp_path)[1].startswith("params.yaml: valid; grid of 1 model plus the experiment's own")
    assert [p.name for p in (tmp_path / "data").iterdir()] == ["params.ok"]  # and no temporary file beside it


def test_the_check_loads_keras_only_for_a_name_outside_the_study(tmp_path):
    """The check stage reruns on every edit of params.yaml: the study's own activations are known without Keras
    (seconds of TensorFlow import); a Keras-only name such as gelu still passes, after Keras was asked."""
    shutil.copytree(ROOT / "stages", tmp_path / "stages", ignore=shutil.ignore_patterns("__pycache__"))
    probe = (
        "import sys; from stages import params; params.load(); print(' '.join(sorted(m for m in sys.modules "
        "if m in ('keras', 'tensorflow', 'jax'))))"
    )
    for grid, keras in ((["relu", "lrelu", "prelu", "elu"], False), (["relu", "gelu"], True)):
        (tmp_path / "params.yaml").write_text(yaml.safe_dump(changed("grid.activation", grid)))
        p = subprocess.run(
            [sys.executable, "-c", probe],
            cwd=tmp_path,
            env=ENV,
            text=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            timeout=600,
        )
        loaded = p.stdout.splitlines()[-1].split()
        assert p.returncode == 0 and ("keras" in loaded) == keras and ("tensorflow" in loaded) == keras, (
            loaded
        )


def test_dvc_repro_stops_at_the_check_before_any_shell_download_or_training(tmp_path, cifar10_archive):
    repo = make_project(tmp_path / "repo", cifar10_archive)
    markers = [tmp_path / f"pwned{i}" for i in range(3)]
    injected = ["relu", f"elu; touch {markers[0]}", f"$(touch {markers[1]})", f"`touch {markers[2]}`"]
    set_params(repo, grid={"activation": injected})

    def nothing_ran(out):
        assert not any(m.exists() for m in markers), out
        assert not (repo / "data/raw").exists() and not (repo / "data/prepared").exists()
        assert not (repo / "data/params.ok").exists() and not (repo / "dvc.lock").exists()
        assert not (repo / "models").exists() and not (repo / "checkpoints").exists()
        for stage in ("prepare", "train", "evaluate", "report"):
            assert f"Running stage '{stage}" not in out

    p = dvc("repro", cwd=repo, check=False)
    assert p.returncode != 0
    assert "Running stage 'check':" in p.stdout
    assert (
        f"error: params.yaml: grid.activation = {injected!r}: must be a list whose items are each a lower-case "
        f"name of letters, digits and _ (it becomes part of stage names and paths) ({injected[1]!r} is not)"
        in p.stdout
    )
    assert (
        "ERROR: failed to reproduce 'check': failed to run: python -m stages.params, exited with 2"
        in p.stdout
    )
    nothing_ran(p.stdout)

    # naming the injected stage itself: DVC still runs its upstream check first
    p = dvc("repro", f"train@cifar10-elu; touch {markers[0]}-False-0", cwd=repo, check=False)
    assert p.returncode != 0 and "failed to reproduce 'check'" in p.stdout
    nothing_ran(p.stdout)

    # a string where dvc.yaml's matrix needs a list: DVC itself refuses dvc.yaml before running any stage
    set_params(repo, grid={"activation": f"relu; touch {markers[0]}"})
    p = dvc("repro", cwd=repo, check=False)
    assert p.returncode != 0 and "Running stage" not in p.stdout
    nothing_ran(p.stdout)
