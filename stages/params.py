"""params.yaml, loaded and checked once for every stage: `python -m stages.params` checks it alone.

Every key is validated up front, before any download or training: unknown or misspelt keys, wrong types,
sizes <= 0, unknown activations or datasets, and names that would reach a shell (stage names, file names
and stage commands are built from grid values, so those must be plain identifiers).
"""
import contextlib
import difflib
import os
import re
import signal
import sys
import threading
import urllib.parse
from pathlib import Path

from ruamel.yaml import YAML, YAMLError

PARAMS = Path("params.yaml")
CHECKED = Path("data/params.ok")  # the check stage's output: every later stage runs after the check
DATASETS = ("cifar10", "cifar100")
BACKENDS = ("tensorflow", "jax")  # Keras backends that train and evaluate run on
NAME = re.compile(r"[a-z][a-z0-9_]{0,31}")  # what may appear in a stage name, a path or a shell command


def count(n, noun):
    """'1 model', '2 models': a number (or its text) and its noun, in the plural unless it is 1."""
    return f"{n} {noun}{'' if str(n) == '1' else 's'}"


class UserError(Exception):
    """Bad input: reported as one line that names the file or parameter and the fix."""


class _Terminated(BaseException):
    """SIGTERM, raised where the stage is, so that every `finally` (atomic_path's clean-up) runs as for Ctrl-C."""


def _terminate(signum, frame):
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second SIGTERM must not cut the clean-up short
    raise _Terminated


def cli(main):
    """Runs a stage's main(); a UserError becomes one line on stderr and exit status 2. SIGTERM (a scheduler, a
    killed `dvc repro`'s process group) unwinds the stage, removing its temporaries, then ends the process by
    the same signal, so the caller sees it killed."""
    signal.signal(signal.SIGTERM, _terminate)
    try:
        with _without_native_noise():
            main()
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except _Terminated:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTERM)


def dataset_argument(parser):
    """The dataset a per-dataset stage works on: named on the command line, else the part of the stage name after
    '@' ($DVC_STAGE, e.g. prepare@cifar10), so that dvc.yaml's commands carry no params value."""
    stage = os.environ.get("DVC_STAGE", "")
    parser.add_argument("dataset", nargs="?", choices=DATASETS, default=stage.split("@", 1)[1] if "@" in stage else None)
    dataset = parser.parse_args().dataset
    if dataset is None:
        raise UserError("no dataset given: name one (e.g. cifar10) or run the stage with `dvc repro`")
    return dataset


# TensorFlow's and XLA's C++ start-up lines (absl format `I0000 00:00:… file.cc:N] …`), and the cuInit error of a
# CPU-only machine: not failures, yet they look like ones. Written to file descriptor 2 by C++, before any
# Python logging setting applies, so they are filtered there.
_NOISE = re.compile(r"^(WARNING: All log messages before absl::InitializeLog|[IW]\d{4} \d\d:\d\d:|"
                    r"E\d{4} .*(cuInit|cuda|CUDA))")


@contextlib.contextmanager
def _without_native_noise():
    """Everything written to stderr during the block, less the _NOISE lines."""
    sys.stderr.flush()
    saved, (read, write) = os.dup(2), os.pipe()
    os.dup2(write, 2)
    os.close(write)

    def copy():
        with os.fdopen(read, "rb") as lines:
            for line in lines:
                if not _NOISE.match(line.decode(errors="replace")):
                    os.write(saved, line)
    thread = threading.Thread(target=copy, daemon=True)
    thread.start()
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)  # closes the pipe's last writer: the thread reads to its end, then stops
        thread.join(timeout=5)
        os.close(saved)


# --- value checks: each returns None when the value is fine, else what is allowed --------------------------

def _int(lo):
    return lambda v: None if type(v) is int and v >= lo else f"an integer >= {lo}"


def _num(lo, hi, lo_open=False):
    def check(v):
        ok = type(v) in (int, float) and (v > lo if lo_open else v >= lo) and v <= hi
        return None if ok else f"a number in {'(' if lo_open else '['}{lo}, {hi}]"
    return check


def _one_of(*choices):
    return lambda v: None if v in choices else "one of " + ", ".join(map(str, choices))


def _bool(v):
    return None if type(v) is bool else "true or false"


def _optional(check):
    return lambda v: None if v is None else check(v)


def _activation(v):
    if not (isinstance(v, str) and NAME.fullmatch(v)):
        return "a lower-case name of letters, digits and _ (it becomes part of stage names and paths)"
    from stages.model import activation_names  # imports Keras: only when there is an activation to check
    names = activation_names()
    if v in names:
        return None
    close = difflib.get_close_matches(v, names, n=1)
    return "one of " + ", ".join(names) + (f"; did you mean {close[0]!r}?" if close else "")


def _list_of(check):
    def check_list(v):
        if not isinstance(v, list) or not v:
            return "a non-empty list"
        if len(set(map(repr, v))) != len(v):
            return "a list without repeated values"
        bad = [(x, check(x)) for x in v if check(x)]
        return f"a list whose items are each {bad[0][1]} ({bad[0][0]!r} is not)" if bad else None
    return check_list


def _md5(v):
    return None if v is None or (isinstance(v, str) and re.fullmatch(r"[0-9a-f]{32}", v)) else \
        "32 lower-case hex digits, or null to skip the check"


def _url(v):
    # the archive is saved under the URL's last path segment: it must be a file name
    name = isinstance(v, str) and urllib.parse.unquote(urllib.parse.urlparse(v.strip()).path).rsplit("/", 1)[-1]
    return None if name and name not in (".", "..") else \
        "an http(s):// or file:// URL, or a local path, ending in the archive's file name"


def _fractions(v):
    ok = isinstance(v, list) and all(type(x) in (int, float) and 0 < x < 1 for x in v) and v == sorted(v)
    return None if ok else "an increasing list of fractions of training in (0, 1)"


_DATA = {"url": _url, "md5": _md5}
SCHEMA = {
    "dataset": _one_of(*DATASETS),
    "activation": _activation,
    "batch_norm": _bool,
    "grid": {
        "dataset": _list_of(_one_of(*DATASETS)),
        "activation": _list_of(_activation),
        "batch_norm": _list_of(_bool),
        "seed": _list_of(_int(0)),
    },
    "data": {"cifar10": _DATA, "cifar100": {**_DATA, "labels": _one_of("fine", "coarse")}},
    "model": {
        "width": _num(0, 16, lo_open=True),
        "dropout_input": _num(0, 0.99),
        "dropout_hidden": _num(0, 0.99),
        "lrelu_slope": _num(0, 1),
        "prelu_init": _num(0, 1),
    },
    "train": {
        "seed": _int(0),
        "epochs": _int(1),
        "batch_size": _int(1),
        "optimizer": _one_of("sgd", "adam"),
        "learning_rate": _num(0, 100, lo_open=True),
        "momentum": _num(0, 0.999),
        "weight_decay": _num(0, 1),
        "lr_schedule": _one_of("step", "cosine", "constant"),
        "lr_drops": _fractions,
        "lr_gamma": _num(0, 1, lo_open=True),
        "augment": _bool,
        "precision": _one_of("auto", "float32", "mixed_bfloat16", "mixed_float16"),
        "backend": _one_of(*BACKENDS),
        "limit": _optional(_int(1)),
        "validation": _int(0),
        "probe_images": _int(1),
    },
    "evaluate": {"batch_size": _int(1)},
}


def _validate(schema, values, prefix, errors):
    if not isinstance(values, dict):
        errors.append(f"{prefix.rstrip('.') or 'top level'} = {values!r}: must be a mapping of {', '.join(schema)}")
        return
    for key in values:
        if key not in schema:
            close = difflib.get_close_matches(str(key), list(schema), n=1)
            hint = f"did you mean {prefix}{close[0]}?" if close else "allowed: " + ", ".join(schema)
            errors.append(f"{prefix}{key}: unknown key; {hint}")
    for key, check in schema.items():
        if key not in values:
            errors.append(f"{prefix}{key}: missing; see the README's params.yaml section")
        elif isinstance(check, dict):
            _validate(check, values[key], f"{prefix}{key}.", errors)
        elif (allowed := check(values[key])) is not None:
            errors.append(f"{prefix}{key} = {values[key]!r}: must be {allowed}")


def validate(params):
    """All the problems in params, one line each (an empty list when it is fine)."""
    errors = []
    _validate(SCHEMA, params, "", errors)
    if not errors:
        if params["dataset"] not in params["grid"]["dataset"]:
            errors.append(f"dataset = {params['dataset']!r}: must be one of grid.dataset "
                          f"{params['grid']['dataset']} (its prepare stage comes from the grid)")
        if params["train"]["validation"] >= (params["train"]["limit"] or 50000):
            errors.append(f"train.validation = {params['train']['validation']}: must be smaller than the "
                          f"training images (train.limit = {params['train']['limit']})")
    return errors


def parse(path=PARAMS):
    """params.yaml read exactly as DVC reads it (ruamel.yaml, YAML 1.2), so that every value the check passes is
    the value DVC hands the stages: `off`, `yes` and `1:00` are strings here, as they are to DVC (PyYAML's
    YAML 1.1 would read False, True and 60)."""
    try:
        return YAML(typ="safe").load(Path(path).read_text())
    except (OSError, YAMLError) as e:
        mark = getattr(e, "problem_mark", None)  # one line: the YAML library's own message spans several
        raise UserError(f"{path}: cannot be read as YAML (" + (f"line {mark.line + 1}, column {mark.column + 1}: "
                        f"{e.problem})" if mark else f"{' '.join(str(e).split())})"))


def load(path=PARAMS):
    """params.yaml as a dict, after every check has passed; Keras' backend is then train.backend."""
    params = parse(path)
    train = params.get("train") if isinstance(params, dict) else None
    backend = train.get("backend") if isinstance(train, dict) else None
    if backend in BACKENDS:
        from stages.backend import select  # before anything imports Keras (the activation check does)
        select(backend)
    errors = validate(params if params is not None else {})
    if errors:
        raise UserError(f"{path}: " + f"\nerror: {path}: ".join(errors))
    return params


def main():
    params = load()
    from stages.outputs import atomic_path
    with atomic_path(CHECKED) as tmp:  # constant content: later stages depend on the check, not on its text
        tmp.write_text("params.yaml passed stages/params.py\n")
    n = len(params["grid"]["dataset"]) * len(params["grid"]["activation"]) * \
        len(params["grid"]["batch_norm"]) * len(params["grid"]["seed"])
    print(f"{PARAMS}: valid; grid of {count(n, 'model')} plus the experiment's own "
          f"({params['dataset']}, {params['activation']}, batch_norm={params['batch_norm']})")


if __name__ == "__main__":
    cli(main)
