"""Issue 15, second outside attack, the inputs: a stalled download, a pax header that hangs tarfile, a YAML
alias bomb, credentials in a URL, values the check passed and a stage then crashed on, archive member names
that dodged the duplicate check, class names with control characters. Each must end in one line naming the
file or parameter and the fix, within seconds, in little memory, writing nothing."""

import base64
import functools
import gzip
import http.server
import io
import subprocess
import sys
import tarfile
import threading
import time
from pathlib import Path

import pytest

from stages import cifar
from stages.params import validate
from tests.archives import _pickle, python_members, write_archive
from tests.conftest import ENV, ROOT, md5, set_params
from tests.test_cifar import PY10
from tests.test_hardening_archive import read_in_child, tar_bytes
from tests.test_params import changed, one_problem
from tests.test_prepare import assert_one_error_line, leftovers, prepare

PEAK_MB = "next(int(l.split()[1]) for l in open('/proc/self/status') if l.startswith('VmHWM:')) // 1024"


def run_stage(repo, module, *args, env=None, timeout=120):
    """(exit status, stderr lines, seconds) of `python -m stages.<module>` in repo."""
    t0 = time.monotonic()
    p = subprocess.run(
        [sys.executable, "-m", f"stages.{module}", *args],
        cwd=repo,
        env=env or ENV,
        text=True,
        capture_output=True,
        timeout=timeout,
    )
    return p.returncode, [line for line in p.stderr.splitlines() if line.strip()], time.monotonic() - t0


# --- 1. a download that stalls ------------------------------------------------------------------------------


class _Stalling(http.server.BaseHTTPRequestHandler):
    """mode "before": reads the request, sends nothing; "after": headers and half the body, then nothing;
    "trickle": headers, then one byte a second."""

    mode, body = "before", b"\0" * 100_000

    def do_GET(self):
        if self.mode != "before":
            self.send_response(200)
            self.send_header("Content-Length", str(len(self.body)))
            self.end_headers()
            self.wfile.write(self.body[: len(self.body) // 2] if self.mode == "after" else b"")
            self.wfile.flush()
        for _ in range(60):
            if self.mode == "trickle":
                self.wfile.write(b"\0")
                self.wfile.flush()
            time.sleep(1)

    def log_message(self, *args):
        pass


def serve(handler):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.mark.parametrize("mode", ["before", "after", "trickle"])
def test_stalled_download_is_one_line_within_the_stall_limit(project, mode):
    """Was: prepare sat at `0/1797803` until killed (Keras' get_file: urlretrieve without a timeout)."""
    server = serve(type("H", (_Stalling,), {"mode": mode}))
    try:
        url = f"http://127.0.0.1:{server.server_port}/cifar-10-python.tar.gz"
        set_params(project, data={"cifar10": {"url": url, "md5": None}})
        status, err, seconds = run_stage(
            project, "prepare", "cifar10", env={**ENV, "STAGES_DOWNLOAD_STALL": "2"}
        )
    finally:
        server.shutdown()
    err = [line for line in err if not line.startswith("warning: data.cifar10.md5 is null")]
    line = assert_one_error_line(status, err)
    assert (
        line.startswith(f"error: data.cifar10.url: cannot download {url} (") and "no progress for 2 s" in line
    )
    assert "set data.cifar10.url to its local path" in line and "$STAGES_DOWNLOAD_STALL" in line
    assert seconds < 20, seconds  # 2 s of stall, plus the interpreter's start
    assert not Path(project, "data/raw/cifar10").exists() and leftovers(project) == []


def test_the_default_stall_limit_answers_within_30_seconds():
    from stages import prepare

    assert prepare.STALL <= 20 and prepare.STALL_BYTES <= 1 << 16


# --- 2. a pax header that hangs Python's tarfile (CVE-2024-6232) --------------------------------------------


def pax_archive(tmp_path, digits):
    """The official members, then one member whose pax header holds a value of `digits` digits."""
    raw = tar_bytes(tmp_path, python_members("cifar10", cifar_data()))
    with tarfile.open(fileobj=io.BytesIO(raw)) as tar:
        tar.getmembers()
        end = tar.offset  # where the end-of-archive blocks start
    info = tarfile.TarInfo(f"{PY10}/readme.html")
    info.pax_headers = {"comment": "1" * digits}
    path = tmp_path / f"pax-{digits}.tar.gz"
    path.write_bytes(
        gzip.compress(raw[:end] + info.tobuf(tarfile.PAX_FORMAT) + b"\0" * 1024, compresslevel=1)
    )
    return path


@functools.cache
def cifar_data():
    from tests.archives import make_dataset

    return make_dataset("cifar10", train_per_class=2, test_per_class=1)


def test_huge_pax_header_is_refused_before_tarfile_parses_it(tmp_path):
    """1,000,000 digits: hours of CPU in tar.next() on Python < 3.11.10 (20,000 digits: 4 s)."""
    path = pax_archive(tmp_path, 1_000_000)
    assert path.stat().st_size < 2_000_000
    t0 = time.monotonic()
    line, peak = read_in_child(path)
    assert time.monotonic() - t0 < 10  # the interpreter's start and numpy's import included
    assert f"{path}: refused: an extended tar header of " in line and "more than the 4096" in line
    assert line.endswith("use the official archive") and peak < 300, (line, peak)


def test_small_pax_headers_are_still_read(tmp_path):
    got, names = cifar.read(pax_archive(tmp_path, 100), "cifar10")
    assert len(got["train"][1]) == 20 and len(names) == 10


# --- 3. a YAML alias bomb in params.yaml --------------------------------------------------------------------

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


# --- 5. credentials in a URL --------------------------------------------------------------------------------

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


class _BasicAuth(http.server.SimpleHTTPRequestHandler):
    def do_GET(self):
        if self.headers.get("Authorization") != "Basic " + base64.b64encode(b"alice:S3CRETPW").decode():
            self.send_response(401)
            self.send_header("WWW-Authenticate", 'Basic realm="cifar"')
            self.end_headers()
            return
        super().do_GET()

    def log_message(self, *args):
        pass


def test_a_netrc_gives_the_download_its_credentials(project, cifar10_archive, tmp_path):
    """The safer way the message names: credentials in a netrc ($NETRC names one), never in params.yaml."""
    server = serve(functools.partial(_BasicAuth, directory=str(cifar10_archive.parent)))
    try:
        url = f"http://127.0.0.1:{server.server_port}/{cifar10_archive.name}"
        set_params(project, data={"cifar10": {"url": url, "md5": md5(cifar10_archive)}})
        status, err, _ = run_stage(project, "prepare", "cifar10")
        assert status == 2 and "401" in err[0] and len(err) == 1, err
        netrc = tmp_path / "netrc"
        netrc.write_text("machine 127.0.0.1 login alice password S3CRETPW\n")
        status, err, _ = run_stage(project, "prepare", "cifar10", env={**ENV, "NETRC": str(netrc)})
    finally:
        server.shutdown()
    assert status == 0, err
    assert md5(Path(project, "data/raw/cifar10", cifar10_archive.name)) == md5(cifar10_archive)


# --- 6 and 7. values the check passed and a stage then crashed on -------------------------------------------


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


def test_stage_names_the_parameter_that_leaves_no_batch(project):
    """The check knows the official sizes; the train stage the data it has (200 images here). Was:
    `train.batch_size = 32: larger than the 0 training images; lower it or raise train.limit`."""
    assert prepare(project)[0] == 0
    set_params(project, train={"validation": 190})
    status, err, _ = run_stage(project, "train", "cifar10-relu-False-0")
    assert (
        err
        == [
            "error: params.yaml: train.validation = 190: leaves 10 of the 200 training images of cifar10, "
            "fewer than one batch (train.batch_size = 32); lower it"
        ]
        and status == 2
    )


@pytest.mark.parametrize("content", ["{}", "not json", "[1, 2]"])
def test_damaged_training_summary_is_one_line_at_evaluate(project, content):
    """models/grid/<key>.json replaced by {} (was: KeyError) or non-JSON (JSONDecodeError)."""
    assert prepare(project)[0] == 0
    for ext in ("keras", "json"):
        Path(project, f"models/grid/cifar10-relu-False-0.{ext}").parent.mkdir(parents=True, exist_ok=True)
        Path(project, f"models/grid/cifar10-relu-False-0.{ext}").write_text(content)
    status, err, _ = run_stage(project, "evaluate", "cifar10-relu-False-0")
    assert status == 2 and len(err) == 1, err
    assert err[0].startswith("error: models/grid/cifar10-relu-False-0.json: not ")
    assert err[0].endswith(
        "retrain it with `dvc repro -f train@cifar10-relu-False-0` or restore it with "
        "`dvc checkout models/grid/cifar10-relu-False-0.json`"
    )
    assert not Path(project, "metrics").exists() and not Path(project, "results").exists()


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


# --- 8. archive member names, class names, and what a refused archive leaves --------------------------------


@pytest.mark.parametrize(
    "alias", [f"{PY10}//data_batch_1", f"./{PY10}/./data_batch_1", f"{PY10}/data_batch_1/"]
)
def test_another_spelling_of_a_member_name_is_a_duplicate(tmp_path, alias):
    """Was: appended after the real members, it passed; the pipeline trained on the first copy while tar and
    Keras' loader took the second."""
    m = python_members("cifar10", cifar_data())
    path = write_archive(tmp_path / "a.tar.gz", {**m, alias: m[f"{PY10}/data_batch_2"]})
    line = read_in_child(path)[0]
    assert f"refused member {alias!r}: it appears more than once" in line


@pytest.mark.parametrize("name", ["\x1b[31mcat", "ca\nt", "dog\r", "x" * 65])
def test_class_names_with_control_characters_are_refused(tmp_path, name):
    m = python_members("cifar10", cifar_data())
    names = [
        b"airplane",
        b"automobile",
        b"bird",
        name.encode(),
        b"deer",
        b"dog",
        b"frog",
        b"horse",
        b"ship",
        b"truck",
    ]
    m[f"{PY10}/batches.meta"] = _pickle({b"label_names": names, b"num_cases_per_batch": 4, b"num_vis": 3072})
    line = read_in_child(write_archive(tmp_path / "a.tar.gz", m))[0]
    assert "class name " in line and ("not printable" in line or "longer than 64" in line)
    assert "\x1b" not in line and "\r" not in line and line.endswith("use the official archive")


def test_refused_archive_leaves_nothing_in_data_raw(project, tmp_path):
    """Was: the refused archive stayed in data/raw/, though the fault log said nothing is written."""
    m = python_members("cifar10", cifar_data())
    bad = write_archive(tmp_path / "cifar-10-python.tar.gz", {**m, f"{PY10}//data_batch_1": b"x"})
    set_params(project, data={"cifar10": {"url": str(bad), "md5": md5(bad)}})
    line = assert_one_error_line(*prepare(project)[::2])
    assert line.startswith(f"error: {bad}: refused member ")  # named as params.yaml names it
    assert (
        not Path(project, "data/raw/cifar10").exists() and not Path(project, "data/prepared/cifar10").exists()
    )
    assert leftovers(project) == []


def test_hand_edited_class_names_with_escape_sequences_are_refused(project):
    assert prepare(project)[0] == 0
    path = Path(project, "data/prepared/cifar10/classes.json")
    path.write_text(path.read_text().replace('"cat"', '"\\u001b[2Jcat"'))
    status, err, _ = run_stage(project, "train", "cifar10-relu-False-0")
    assert (
        status == 2 and len(err) == 1 and "classes.json: must be a list of 10 distinct class names" in err[0]
    )
    assert "\x1b" not in err[0]
