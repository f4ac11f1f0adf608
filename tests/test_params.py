"""params.yaml is checked before anything else runs: stages/params.py in-process for every kind of bad
value, then `python -m stages.params` and `dvc repro` as a user runs them, to show that a bad value stops the
pipeline at the check stage, before any download, and that a grid value written to reach a shell never gets
there."""

import copy
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from stages.params import UserError, load, validate
from tests.conftest import ENV, ROOT, TINY, dvc, locked_stages, make_project, merge, run_stage, set_params

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
        ("train.epochs", "10", "an integer in [1, 10000]"),
        ("train.epochs", 10.0, "an integer in [1, 10000]"),
        ("train.epochs", True, "an integer in [1, 10000]"),  # YAML's true is not 1
        ("train.batch_size", 32.5, "an integer in [1, 50000]"),
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
        ("train.epochs", 0, "an integer in [1, 10000]"),
        ("train.batch_size", -1, "an integer in [1, 50000]"),
        ("train.probe_images", 0, "an integer in [1, 50000]"),
        ("train.limit", 0, "an integer in [1, 50000]"),
        ("train.validation", -10, "an integer in [0, 50000]"),
        # absurd sizes once passed the check and failed in TensorFlow (train.epochs: 1e20 as an integer)
        ("train.epochs", 10**20, "an integer in [1, 10000]"),
        ("train.epochs", 1e20, "an integer in [1, 10000]"),
        ("train.batch_size", 2**63, "an integer in [1, 50000]"),
        ("train.probe_images", 10**9, "an integer in [1, 50000]"),
        ("train.limit", 10**12, "an integer in [1, 50000]"),
        ("model.width", float("inf"), "a number in (0, 16]"),
        ("train.learning_rate", 1e308, "a number in (0, 100]"),
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
    """Validation is held out first, then train.limit takes from the rest (was: validation compared to
    limit)."""
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
        "error: params.yaml: activation = 'relu; touch pwned': must be a lower-case name of letters, digits "
        "and _ (it becomes part of stage names and paths)",
        "error: params.yaml: grid.datset: unknown key; did you mean grid.dataset?",
        "error: params.yaml: grid.dataset: missing; see the params.yaml section of docs/pipeline.md",
        "error: params.yaml: train.batch_size = 0: must be an integer in [1, 50000]",
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
    """The check stage reruns on every edit of params.yaml: the study's own activations are known without
    Keras (seconds of TensorFlow import); a Keras-only name such as gelu still passes, after Keras was
    asked."""
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
        f"error: params.yaml: grid.activation = {injected!r}: must be a list whose items are each a "
        f"lower-case name of letters, digits and _ (it becomes part of stage names and paths) "
        f"({injected[1]!r} is not)" in p.stdout
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


PEAK_MB = "next(int(l.split()[1]) for l in open('/proc/self/status') if l.startswith('VmHWM:')) // 1024"


# --- a YAML alias bomb in params.yaml -----------------------------------------------------------------------

BOMB = "".join(
    f"{k}: &{k} [{', '.join([f'*{p}'] * 9) if p else ', '.join(['x'] * 9)}]\n"
    for p, k in zip(["", *"abcdefgh"], "abcdefghi")
)


@pytest.mark.parametrize("where", ["unknown key", "real key"])
def test_alias_bomb_is_refused_before_anything_expands_it(tmp_path, where):
    """Nine levels of nine aliases: 387 M values. Was: the check grew past 1.3 GB (repr() of the
    expansion)."""
    text = (
        (ROOT / "params.yaml").read_text() + BOMB
        if where == "unknown key"
        else (ROOT / "params.yaml").read_text().replace("seed: [0]", "seed: *i") + BOMB
    )
    path = tmp_path / "params.yaml"
    path.write_text(text)
    code = (
        "from stages.params import load\nimport sys\n"
        "try: load(sys.argv[1])\nexcept Exception as e: print(e)\n"
        f"print({PEAK_MB})"
    )
    t0 = time.monotonic()
    p = subprocess.run(
        [sys.executable, "-c", code, str(path)],
        cwd=ROOT,
        env={**ENV, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    message, peak = p.stdout.splitlines()
    assert (
        message.startswith(f"{path}: line ")
        and ": a YAML alias (*" in message
        and "write the value out" in message
    )
    assert time.monotonic() - t0 < 10 and int(peak) < 200, (time.monotonic() - t0, peak)


def test_messages_show_bounded_values():
    """Was: `repr()` of whatever the value was, however large."""
    line = one_problem(changed("grid.seed", list(range(100_000)) + ["x"]))
    assert len(line) < 400 and "'x' is not" in line
    line = one_problem(changed("train.optimizer", "s" * 1_000_000))
    assert len(line) < 400 and "..." in line


# --- credentials in a URL -----------------------------------------------------------------------------------

SECRET_URL = "http://alice:S3CRETPW@127.0.0.1:9/cifar-10-python.tar.gz"


def test_credentials_in_the_url_are_refused_and_never_written(project):
    """Was: passed the check, written to data/source/cifar10.json (a cached output), printed by prepare three
    times, and a misleading `Name or service not known`."""
    line = one_problem(changed("data.cifar10.url", SECRET_URL))
    assert "S3CRETPW" not in line and "alice" not in line and "http://***@127.0.0.1:9/" in line
    assert "~/.netrc" in line and "$NETRC" in line
    set_params(project, data={"cifar10": {"url": SECRET_URL}})
    for module in ("params", "source", "prepare"):
        status, err, _ = run_stage(project, module, *([] if module == "params" else ["cifar10"]))
        assert status == 2 and len(err) == 1 and "S3CRETPW" not in err[0] and "netrc" in err[0], (module, err)
    assert not Path(project, "data/source").exists() and not Path(project, "data/raw").exists()


# --- values the check passed and a stage then crashed on ----------------------------------------------------


@pytest.mark.parametrize(
    "key, value, expected",
    [
        (
            "model.width",
            0.005,
            "model.width = 0.005: must be a number in (0, 16] that gives at least one filter",
        ),
        ("train.seed", 2**32, "train.seed = 4294967296: must be an integer in [0, 4294967295]"),
        (
            "grid.seed",
            [0, 2**32],
            "must be a list whose items are each an integer in [0, 4294967295] (4294967296 is",
        ),
        ("evaluate.batch_size", 10_000, "evaluate.batch_size = 10000: must be an integer in [1, 1000]"),
        (
            "train.limit",
            5,
            "train.limit = 5: gives 0 training images of cifar10 (the subset is class-balanced: 0 of "
            "each of 10 classes), fewer than one batch (train.batch_size = 32); raise it to at least 40",
        ),
    ],
)
def test_values_that_crashed_a_stage_are_refused_by_the_check(key, value, expected):
    assert expected in one_problem(changed(key, value))


def test_validation_is_taken_before_the_limit():
    """Was: `train.limit: 4000` with `validation: 5000` refused, though 45,000 images remain after the
    hold-out."""
    assert validate(changed("train.limit", 4000, changed("train.validation", 5000))) == []
    assert validate(changed("model.width", 0.006)) == []


# --- issue 21: what params.yaml's reading must survive -----------------------------------------------------

PEAK = """
import runpy, sys
sys.argv = ["stages.params"]
try:
    runpy.run_module("stages.params", run_name="__main__")
finally:  # VmHWM: this process image's own peak (ru_maxrss keeps the forking parent's across exec)
    print(next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM:")) // 1024)
"""


def check_in_child(repo):
    """(exit status, stderr lines, peak resident MB) of `python -m stages.params` in repo, in a fresh process
    (its VmHWM)."""
    p = subprocess.run(
        [sys.executable, "-c", PEAK],
        cwd=repo,
        env={**ENV, "PYTHONPATH": str(repo)},
        text=True,
        capture_output=True,
        timeout=120,
    )
    return p.returncode, p.stderr.strip().splitlines(), int(p.stdout.split()[-1])


@pytest.fixture
def bare(tmp_path):
    shutil.copytree(ROOT / "stages", tmp_path / "stages", ignore=shutil.ignore_patterns("__pycache__"))
    return tmp_path


@pytest.mark.parametrize("kind", ["/dev/zero", "huge"])
def test_a_params_yaml_that_never_ends_is_one_line_in_bounded_memory(bare, kind):
    """Was: `params.yaml -> /dev/zero` read 3.4 GB, then a MemoryError traceback (`dvc status` too: DVC's own
    reading, which this project cannot bound)."""
    if kind == "/dev/zero":
        (bare / "params.yaml").symlink_to("/dev/zero")
    else:  # a valid params.yaml followed by 64 MB of comments
        (bare / "params.yaml").write_text(yaml.safe_dump(BASE) + ("# " + "x" * 1000 + "\n") * 64_000)
    status, lines, peak = check_in_child(bare)
    assert status == 2 and lines == [
        "error: params.yaml: more than 1 MiB (params.yaml holds a few KB: is it the right file, or a link "
        "to a device?); restore it with `git checkout params.yaml`"
    ], lines
    print(f"{kind}: peak {peak} MB")
    assert peak < 150, peak  # the interpreter and ruamel.yaml (~40 MB), the 1 MiB read
    assert not (bare / "data").exists()


def test_a_latin_1_byte_is_one_line_naming_its_line(bare):
    """Was: a 22-line UnicodeDecodeError traceback."""
    text = yaml.safe_dump(BASE).replace("activation: relu", "activation: relu  # caf\xe9", 1)
    (bare / "params.yaml").write_bytes(text.encode("latin-1"))
    line = text[: text.index("caf")].count("\n") + 1
    status, lines, _ = check_in_child(bare)
    assert status == 2 and lines == [
        f"error: params.yaml: line {line}: byte 0xe9 is not UTF-8 (saved as Latin-1?); save the file as UTF-8"
    ], lines


def test_a_lookalike_key_is_echoed_escaped():
    """Was: `trаin: unknown key; did you mean train?` with a Cyrillic а: the key looked like the hint."""
    params = copy.deepcopy(BASE)
    params["tr\u0430in"] = params.pop("train")
    errors = validate(params)
    assert errors[0] == "'tr\\u0430in': unknown key; did you mean train?", errors
    assert all(e.isascii() for e in errors)


CHANGED = "error: params.yaml: changed since the check validated it (another `dvc exp run` in this workspace"


@pytest.mark.e2e
def test_a_stage_refuses_params_changed_since_the_check(project):
    """What a second `dvc exp run -S train.epochs=5` does to a first one running in the same workspace: it
    writes params.yaml after the first's check passed. Every later stage compares the params.yaml it reads
    with what dvc.lock records the check validated, and refuses a difference in one line."""
    dvc("repro", "check", "prepare@cifar10", cwd=project)
    lock = yaml.safe_load((project / "dvc.lock").read_text())
    assert lock["stages"]["check"]["params"]["params.yaml"]["train"]["epochs"] == 2
    set_params(project, train={"epochs": 5})
    for stage in ("source@cifar10", "train@cifar10-relu-False-0"):
        p = dvc("repro", "-s", stage, cwd=project, check=False)
        errors = [line for line in p.stdout.splitlines() if line.startswith("error: ")]
        assert p.returncode != 0 and len(errors) == 1 and errors[0].startswith(CHANGED), p.stdout[-3000:]
    assert not (project / "models").exists() and not (project / "checkpoints").exists()
    # the check run again (dvc repro without -s): the new params are what it validated
    assert "Running stage 'check'" in dvc("repro", "source@cifar10", cwd=project).stdout


@pytest.mark.e2e
def test_two_dvc_exp_runs_at_once_never_train_a_mix(project):
    """Was: the second failed on DVC's lock after writing its -S into params.yaml; the first trained every
    grid model for 5 epochs while its dvc.lock recorded 2. Now the first stops with an error, at its next
    stage at the latest."""
    first = subprocess.Popen(
        [sys.executable, "-m", "dvc", "exp", "run"],
        cwd=project,
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    for _ in range(600):  # until the first run's check is recorded
        if "check" in locked_stages(project):
            break
        subprocess.run(["sleep", "0.2"])
    second = dvc("exp", "run", "-S", "train.epochs=5", cwd=project, check=False)
    out = first.communicate(timeout=900)[0]
    # the first stops, in one of three ways, none of which trains on the second's params: at its next
    # stage, in our line; on DVC's own lock, when the second held it at that moment; or, when the second's
    # start (DVC's forced checkout, run while the first's stage command held no lock) removed an output the
    # first had just written, on DVC's "output '...' does not exist" (seen in CI)
    assert first.returncode != 0, out[-3000:]
    ways = {"refused": CHANGED, "DVC lock": "Unable to acquire lock", "output removed": "' does not exist"}
    way = next((name for name, line in ways.items() if line in out), None)
    assert way, out[-3000:]
    checked = yaml.safe_load((project / "dvc.lock").read_text())["stages"]["check"]["params"]["params.yaml"]
    trained = [yaml.safe_load(p.read_text()) for p in (project / "models").rglob("*.json")]
    # whatever trained, trained on what the check of its own run validated
    assert all(t["epochs"] == checked["train"]["epochs"] for t in trained), (trained, checked["train"])
    print(f"first: {way}; second exit {second.returncode}")
