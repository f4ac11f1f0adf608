"""params.yaml, loaded and checked once for every stage: `python -m stages.params` checks it alone.

Every key is validated up front, before any download or training: unknown or misspelt keys, wrong types,
sizes <= 0, unknown activations or datasets, and names that would reach a shell (stage names, file names
and stage commands are built from grid values, so those must be plain identifiers).
"""

import difflib
import os
import re
import reprlib
import urllib.parse
import urllib.request
from pathlib import Path

from ruamel.yaml import YAML, YAMLError
from ruamel.yaml.events import AliasEvent

from stages.backend import BACKENDS
from stages.cli import UserError, cli
from stages.datasets import DATASETS, TRAIN_IMAGES, num_classes, official_split, split_error
from stages.schedules import SCHEDULES

PARAMS = Path("params.yaml")
CHECKED = Path("data/params.ok")  # the check stage's output: every later stage runs after the check
NAME = re.compile(r"[a-z][a-z0-9_]{0,31}")  # what may appear in a stage name, a path or a shell command
SEED_MAX = 2**32 - 1  # NumPy's and Keras' seeds are 32-bit
EVALUATE_BATCH_MAX = 1000  # images per inference batch: ~1.8 GB of activations at width 1
EPOCHS_MAX = 10_000  # passes over the training images (the paper: 350); more is a typo, or years on a GPU
PARAMS_MAX = 1 << 20  # bytes of params.yaml read at most (it holds ~3 KB): /dev/zero is refused, not read
LOCK = Path("dvc.lock")
_SHORT = reprlib.Repr()  # keyword arguments only from Python 3.12
_SHORT.maxstring = _SHORT.maxother = 160
_SHORT.maxlist = _SHORT.maxdict = 6
_SHORT.maxlevel = 2
_CREDENTIALS = re.compile(r"(?<=://)[^/@\s]*@")


def redact(text):
    """text with the user:password@ of any URL in it replaced by ***@."""
    return _CREDENTIALS.sub("***@", text)


def shown(value):
    """A value as a message shows it: its repr cut to ~160 characters, credentials in a URL redacted."""
    return redact(_SHORT.repr(value))


def count(n, noun):
    """'1 model', '2 models': a number (or its text) and its noun, in the plural unless it is 1."""
    return f"{n} {noun}{'' if str(n) == '1' else 's'}"


def dataset_argument(parser):
    """The dataset a per-dataset stage works on: named on the command line, else the part of the stage name
    after '@' ($DVC_STAGE, e.g. prepare@cifar10), so that dvc.yaml's commands carry no params value."""
    stage = os.environ.get("DVC_STAGE", "")
    parser.add_argument(
        "dataset", nargs="?", choices=DATASETS, default=stage.split("@", 1)[1] if "@" in stage else None
    )
    dataset = parser.parse_args().dataset
    if dataset is None:
        raise UserError("no dataset given: name one (e.g. cifar10) or run the stage with `dvc repro`")
    return dataset


# --- value checks: each returns None when the value is fine, else what is allowed --------------------------


def _int(lo, hi=None):
    if hi is None:
        return lambda v: None if type(v) is int and v >= lo else f"an integer >= {lo}"
    return lambda v: None if type(v) is int and lo <= v <= hi else f"an integer in [{lo}, {hi}]"


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
    from stages.model import ACTIVATIONS, activation_names

    if v in ACTIVATIONS:  # the study's own: known without loading Keras
        return None
    names = activation_names()  # imports Keras (seconds): any other name must be one Keras knows
    if v in names:
        return None
    close = difflib.get_close_matches(v, names, n=1)
    return "one of " + ", ".join(names) + (f"; did you mean {close[0]!r}?" if close else "")


def _list_of(check):
    def check_list(v):
        if not isinstance(v, list) or not v:
            return "a non-empty list"
        bad = next(((x, why) for x in v if (why := check(x))), None)
        if bad:
            return f"a list whose items are each {bad[1]} ({shown(bad[0])} is not)"
        return "a list without repeated values" if len(set(map(repr, v))) != len(v) else None

    return check_list


def _md5(v):
    return (
        None
        if v is None or (isinstance(v, str) and re.fullmatch(r"[0-9a-f]{32}", v))
        else "32 lower-case hex digits, or null to skip the check"
    )


def _url(v):
    if isinstance(v, str) and "@" in urllib.parse.urlparse(v.strip()).netloc:
        return (
            "a URL without user:password@ (it would be written to data/source/ and the logs); put the "
            "credentials in ~/.netrc (`machine <host> login <user> password <password>`) or in a file "
            "named by $NETRC, which the download reads"
        )
    # the archive is saved under the URL's last path segment: it must be a file name
    name = (
        isinstance(v, str) and urllib.parse.unquote(urllib.parse.urlparse(v.strip()).path).rsplit("/", 1)[-1]
    )
    return (
        None
        if name and name not in (".", "..")
        else "an http(s):// or file:// URL, or a local path, ending in the archive's file name"
    )


def _width(v):
    if _num(0, 16, lo_open=True)(v) is None and round(96 * v) < 1:
        return "a number in (0, 16] that gives at least one filter: 96 x width rounds to 0 below 0.0053"
    return _num(0, 16, lo_open=True)(v)


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
        "seed": _list_of(_int(0, SEED_MAX)),
    },
    "data": {"cifar10": _DATA, "cifar100": {**_DATA, "labels": _one_of("fine", "coarse")}},
    "model": {
        "width": _width,
        "dropout_input": _num(0, 0.99),
        "dropout_hidden": _num(0, 0.99),
        "lrelu_slope": _num(0, 1),
        "prelu_init": _num(0, 1),
    },
    "train": {
        "seed": _int(0, SEED_MAX),
        "epochs": _int(1, EPOCHS_MAX),
        "batch_size": _int(1, TRAIN_IMAGES),
        "optimizer": _one_of("sgd", "adam"),
        "learning_rate": _num(0, 100, lo_open=True),
        "momentum": _num(0, 0.999),
        "weight_decay": _num(0, 1),
        "lr_schedule": _one_of(*SCHEDULES),
        "lr_drops": _fractions,
        "lr_gamma": _num(0, 1, lo_open=True),
        "augment": _bool,
        "precision": _one_of("auto", "float32", "mixed_bfloat16", "mixed_float16"),
        "backend": _one_of(*BACKENDS),
        "limit": _optional(_int(1, TRAIN_IMAGES)),
        "validation": _int(0, TRAIN_IMAGES),
        "probe_images": _int(1, TRAIN_IMAGES),
    },
    "evaluate": {"batch_size": _int(1, EVALUATE_BATCH_MAX)},
}


def _validate(schema, values, prefix, errors):
    if not isinstance(values, dict):
        errors.append(
            f"{prefix.rstrip('.') or 'top level'} = {shown(values)}: must be a mapping of {', '.join(schema)}"
        )
        return
    for key in values:
        if key not in schema:
            close = difflib.get_close_matches(str(key)[:100], list(schema), n=1)
            hint = f"did you mean {prefix}{close[0]}?" if close else "allowed: " + ", ".join(schema)
            # a lookalike (Cyrillic а in trаin) shows as its escape, 'tr\u0430in': printed as is, it reads
            # as the very key the hint suggests
            plain = isinstance(key, str) and len(key) <= 60 and key.isascii() and key.isprintable()
            name = key if plain else shown(key).encode("ascii", "backslashreplace").decode()
            errors.append(f"{prefix}{name}: unknown key; {hint}")
    for key, check in schema.items():
        if key not in values:
            errors.append(f"{prefix}{key}: missing; see the params.yaml section of docs/pipeline.md")
        elif isinstance(check, dict):
            _validate(check, values[key], f"{prefix}{key}.", errors)
        elif (allowed := check(values[key])) is not None:
            errors.append(f"{prefix}{key} = {shown(values[key])}: must be {allowed}")


def validate(params):
    """All the problems in params, one line each (an empty list when it is fine)."""
    errors = []
    _validate(SCHEMA, params, "", errors)
    if not errors:
        if params["dataset"] not in params["grid"]["dataset"]:
            errors.append(
                f"dataset = {params['dataset']!r}: must be one of grid.dataset "
                f"{params['grid']['dataset']} (its prepare stage comes from the grid)"
            )
        errors += [e for d in params["grid"]["dataset"] if (e := _split_error(params, d))][:1]
    return errors


def _split_error(params, dataset):
    """The split-size check on the official training split (the train stage checks the data it has)."""
    t, n = params["train"], num_classes(params, dataset)
    rest, train_images = official_split(n, t["validation"], t["limit"])
    return split_error(dataset, t, n, TRAIN_IMAGES, rest, train_images)


def parse(path=PARAMS):
    """params.yaml read exactly as DVC reads it (ruamel.yaml, YAML 1.2), so that every value the check passes
    is the value DVC hands the stages: `off`, `yes` and `1:00` are strings here, as they are to DVC (PyYAML's
    YAML 1.1 would read False, True and 60). At most PARAMS_MAX bytes of UTF-8 are read."""
    try:
        text = read_utf8(path)
        _without_aliases(path, text)
        params = YAML(typ="safe").load(text)
    except (OSError, YAMLError) as e:
        mark = getattr(e, "problem_mark", None)  # one line: the YAML library's own message spans several
        raise UserError(
            f"{path}: cannot be read as YAML ("
            + (
                f"line {mark.line + 1}, column {mark.column + 1}: {e.problem})"
                if mark
                else f"{' '.join(str(e).split())})"
            )
        ) from None
    return params


def read_utf8(path, most=PARAMS_MAX):
    """The UTF-8 text of a YAML file, at most `most` bytes of it read (a link to /dev/zero, or a huge file, is
    one line in a fraction of a second); anything else is a UserError naming the byte."""
    with open(path, "rb") as f:
        raw = f.read(most + 1)
    if len(raw) > most:
        raise UserError(
            f"{path}: more than {most >> 20} MiB (params.yaml holds a few KB: is it the right file, or a "
            f"link to a device?); restore it with `git checkout {path}`"
        )
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise UserError(
            f"{path}: line {line}: byte 0x{raw[e.start]:02x} is not UTF-8 (saved as Latin-1?); save the file "
            f"as UTF-8"
        ) from None


def _unchanged_since_the_check(path, params):
    """Under DVC, refuses params.yaml when it differs from what the check stage of this run validated, which
    DVC recorded in dvc.lock before it ran any later stage: a second `dvc exp run -S …` in the same workspace
    rewrites params.yaml while the first one runs (it fails on DVC's lock only afterwards), and the first
    then trained with the second's values while its dvc.lock recorded its own."""
    stage = os.environ.get("DVC_STAGE")
    if not stage or stage == "check" or Path(path) != PARAMS or not LOCK.is_file():
        return
    try:
        lock = YAML(typ="safe").load(read_utf8(LOCK, 16 * PARAMS_MAX))
        checked = lock["stages"]["check"]["params"][str(PARAMS)]
    except (YAMLError, UserError, KeyError, TypeError):
        return  # no check recorded (yet): nothing to compare with
    if checked != params:
        raise UserError(
            f"{path}: changed since the check validated it (another `dvc exp run` in this workspace, or an "
            f"edit during the run?); nothing was run on it: run `dvc exp run` or `dvc repro` again (without "
            f"-s: the check runs first), one at a time per workspace (`dvc exp run --queue` for several)"
        )


def _without_aliases(path, text):
    """Refuses YAML aliases (*name) before anything expands them: nine nested aliases of nine items each are
    387 million values from a file of a few hundred bytes (a check grew past 1.3 GB, DVC's own reading to
    5.4 GB)."""
    for event in YAML(typ="safe").parse(text):  # events only: nothing is built, nothing expanded
        if isinstance(event, AliasEvent):
            mark = event.start_mark
            raise UserError(
                f"{path}: line {mark.line + 1}: a YAML alias (*{shown(event.anchor)[1:-1]}); write the "
                f"value out instead (anchors and aliases are refused: a few of them can expand to "
                f"billions of values)"
            )


def load(path=PARAMS):
    """params.yaml as a dict, after every check has passed (under DVC: and it is what the check stage
    validated); Keras' backend is then train.backend."""
    params = parse(path)
    train = params.get("train") if isinstance(params, dict) else None
    backend = train.get("backend") if isinstance(train, dict) else None
    if backend in BACKENDS:
        from stages.backend import select  # before anything imports Keras (the activation check does)

        select(backend)
    errors = validate(params if params is not None else {})
    if errors:
        raise UserError(f"{path}: " + f"\nerror: {path}: ".join(errors))
    _unchanged_since_the_check(path, params)
    return params


def local_file(url, key):
    """The local file that url names (a plain path or a file:// URL); None for http(s)."""
    parsed = urllib.parse.urlparse(url)
    if parsed.scheme in ("http", "https"):
        return None
    if parsed.scheme == "file":
        path = Path(urllib.request.url2pathname(parsed.path))
        if not path.is_file():
            raise UserError(f"{key}.url: {url!r}: no such file")
        return path
    path = Path(url).expanduser().resolve()
    if not path.is_file():
        raise UserError(
            f"{key}.url: {url!r} is neither a URL nor an existing file; give an http(s):// "
            f"or file:// URL or the path of a local archive"
        )
    return path


def data_params(dataset):
    """data.<dataset> of params.yaml, checked. Only that section, all that prepare and source@ use (the check
    stage, which runs first, checks the whole file), so that an edit elsewhere cannot fail them."""
    errors, params = [], parse()
    _validate(SCHEMA["data"], params.get("data") if isinstance(params, dict) else None, "data.", errors)
    if errors:
        raise UserError(f"{PARAMS}: " + f"\nerror: {PARAMS}: ".join(errors))
    _unchanged_since_the_check(PARAMS, params)
    return params["data"][dataset]


def main():
    params = load()
    from stages.outputs import atomic_path

    with atomic_path(CHECKED) as tmp:  # constant content: later stages depend on the check, not on its text
        tmp.write_text("params.yaml passed stages/params.py\n", encoding="utf-8")
    n = (
        len(params["grid"]["dataset"])
        * len(params["grid"]["activation"])
        * len(params["grid"]["batch_norm"])
        * len(params["grid"]["seed"])
    )
    print(
        f"{PARAMS}: valid; grid of {count(n, 'model')} plus the experiment's own "
        f"({params['dataset']}, {params['activation']}, batch_norm={params['batch_norm']})"
    )


if __name__ == "__main__":
    cli(main)
