"""prepare@<dataset> run as users run it: `python -m stages.prepare <dataset>` and `dvc repro
prepare@<dataset>` in a temporary copy of the project. Each run imports TensorFlow (~10-20 s), so the runs are
few and each checks several things."""

import base64
import functools
import http.server
import json
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from tests.archives import (
    CIFAR10_NAMES,
    class_names,
    make_dataset,
    python_members,
    write_archive,
    write_cifar,
)
from tests.conftest import ENV, dvc, git, md5, run_stage, set_params
from tests.test_cifar import PY10, cifar_data, rewrite_python, unpickled
from tests.test_outputs import dead_pid

# TensorFlow's own start-up log lines (absl format), written to stderr before any of the project's code runs
TF_LOG = re.compile(r"^(WARNING: All log messages before absl::InitializeLog\(\)|[IWEF]\d{4} \d\d:\d\d:\d\d)")


def prepare(repo, dataset="cifar10"):
    """Runs the stage; returns (exit status, stdout, stderr lines other than TensorFlow's log)."""
    p = subprocess.run(
        [sys.executable, "-m", "stages.prepare", dataset],
        cwd=repo,
        env=ENV,
        text=True,
        capture_output=True,
        timeout=600,
    )
    return (
        p.returncode,
        p.stdout,
        [line for line in p.stderr.splitlines() if line.strip() and not TF_LOG.match(line)],
    )


def load_split(repo, dataset, split):
    with np.load(
        Path(repo, "data/prepared", dataset, f"{split}.npz")
    ) as f:  # allow_pickle=False: plain arrays
        assert sorted(f.files) == ["x", "y"]
        return f["x"], f["y"]


def leftovers(repo):
    """Temporary files or folders (.download-*, .<name>.*.tmp) left anywhere under data/."""
    return sorted(str(p.relative_to(repo)) for p in Path(repo, "data").rglob(".*"))


def test_prepare_writes_the_contract(project, cifar10_archive):
    status, out, err = prepare(project)
    assert status == 0, err
    assert not [line for line in err if "error" in line.lower()], err
    assert "prepare@cifar10: 200 train, 50 test images, 10 classes (20-20 train images per class)" in out
    expected = make_dataset(
        "cifar10", train_per_class=20, test_per_class=5
    )  # what the fixture's archive holds
    for split, n in (("train", 200), ("test", 50)):
        x, y = load_split(project, "cifar10", split)
        assert x.shape == (n, 32, 32, 3) and x.dtype == np.uint8
        assert y.shape == (n,) and y.dtype == np.int64
        np.testing.assert_array_equal(x, expected[split][0])
        np.testing.assert_array_equal(y, expected[split][1])
    assert json.loads(Path(project, "data/prepared/cifar10/classes.json").read_text()) == CIFAR10_NAMES
    raw = Path(project, "data/raw/cifar10")
    assert [p.name for p in raw.iterdir()] == ["cifar-10-python.tar.gz"]  # named as the URL names it
    assert md5(raw / "cifar-10-python.tar.gz") == md5(cifar10_archive)
    assert sorted(p.name for p in Path(project, "data/prepared/cifar10").iterdir()) == [
        "classes.json",
        "test.npz",
        "train.npz",
    ]
    assert leftovers(project) == []


def test_file_url_with_md5_null_works_and_warns(project, cifar10_archive):
    set_params(project, data={"cifar10": {"url": cifar10_archive.as_uri(), "md5": None}})
    status, out, err = prepare(project)
    assert status == 0, err
    # one line, not Python's warning with the source line that raised it
    assert err == ["warning: data.cifar10.md5 is null: the archive's integrity is not checked"], err
    x, y = load_split(project, "cifar10", "test")
    assert x.shape == (50, 32, 32, 3) and len(y) == 50
    assert md5(Path(project, "data/raw/cifar10/cifar-10-python.tar.gz")) == md5(cifar10_archive)


def assert_one_error_line(status, err):
    assert status == 2, err
    assert len(err) == 1 and err[0].startswith("error: "), err  # one line, no traceback
    return err[0]


def test_md5_mismatch_fails_and_writes_nothing(project, cifar10_archive):
    set_params(project, data={"cifar10": {"md5": "0" * 32}})
    line = assert_one_error_line(*prepare(project)[::2])
    # both digests, and for a local file the fixes that fit it (was: "download it again", no actual md5)
    assert f"data.cifar10.md5: {cifar10_archive} has md5 {md5(cifar10_archive)}, expected {'0' * 32}" in line
    assert "check that data.cifar10.url names the right file" in line
    assert f"set data.cifar10.md5 to {md5(cifar10_archive)} if it is" in line and "download" not in line
    assert not Path(project, "data/prepared/cifar10").exists()
    assert not Path(project, "data/raw/cifar10").exists()
    assert leftovers(project) == []


def test_unreachable_url_says_to_use_a_local_path(project):
    set_params(
        project, data={"cifar10": {"url": "http://127.0.0.1:9/cifar-10-python.tar.gz"}}
    )  # port 9: refused
    line = assert_one_error_line(*prepare(project)[::2])
    assert "cannot download http://127.0.0.1:9/cifar-10-python.tar.gz" in line
    assert "set data.cifar10.url to its local path" in line
    assert (
        not Path(project, "data/raw/cifar10").exists() and not Path(project, "data/prepared/cifar10").exists()
    )
    assert leftovers(project) == []


def test_http_download_shows_a_plain_progress_bar_and_prepares(project, cifar10_archive):
    """The real download path, from a server on this machine's loopback: the archive arrives, is checked and
    decoded; the progress bar in a log (stdout is not a terminal) has no colour codes or backspaces."""
    import functools
    import http.server
    import threading

    serve = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(cifar10_archive.parent))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), serve)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_port}/{cifar10_archive.name}"
        set_params(project, data={"cifar10": {"url": url, "md5": md5(cifar10_archive)}})
        status, out, errors = prepare(project)
    finally:
        server.shutdown()
    assert status == 0 and errors == [], (out, errors)
    assert f"Downloading data from {url}" in out and f"{url}: 0.8 of 0.8 MB" in out
    assert "\x1b" not in out and "\x08" not in out, repr(out)
    assert md5(Path(project, "data/raw/cifar10", cifar10_archive.name)) == md5(cifar10_archive)
    assert load_split(project, "cifar10", "train")[0].shape == (200, 32, 32, 3)


def test_missing_local_archive(project, tmp_path):
    set_params(project, data={"cifar10": {"url": str(tmp_path / "nowhere" / "cifar-10-python.tar.gz")}})
    line = assert_one_error_line(*prepare(project)[::2])
    assert "data.cifar10.url" in line and "neither a URL nor an existing file" in line
    assert not Path(project, "data/raw/cifar10").exists()


def test_corrupt_archive_leaves_no_prepared_output(project, cifar10_archive, tmp_path):
    cut = tmp_path / "cifar-10-python.tar.gz"
    cut.write_bytes(cifar10_archive.read_bytes()[:-1000])  # an interrupted download whose md5 was taken as is
    set_params(project, data={"cifar10": {"url": str(cut), "md5": md5(cut)}})
    line = assert_one_error_line(*prepare(project)[::2])
    assert "cifar-10-python.tar.gz: not a readable tar archive" in line and "download it again" in line
    assert not Path(project, "data/prepared/cifar10").exists()
    assert leftovers(project) == []


def test_cifar100_binary_layout_with_coarse_labels(project, tmp_path):
    archive = tmp_path / "cifar-100-binary.tar.gz"
    data = write_cifar(archive, "cifar100", "binary", train_per_class=2, test_per_class=1)
    set_params(
        project,
        grid={"dataset": ["cifar10", "cifar100"]},
        data={"cifar100": {"url": str(archive), "md5": md5(archive), "labels": "coarse"}},
    )
    status, out, err = prepare(project, "cifar100")
    assert status == 0, err
    assert "prepare@cifar100: 200 train, 100 test images, 20 classes (10-10 train images per class)" in out
    assert json.loads(Path(project, "data/prepared/cifar100/classes.json").read_text()) == class_names(
        "cifar100", "coarse"
    )
    for split in ("train", "test"):
        x, y = load_split(project, "cifar100", split)
        np.testing.assert_array_equal(x, data[split][0])
        np.testing.assert_array_equal(y, data[split][2])  # the coarse labels
    assert Path(project, "data/raw/cifar100/cifar-100-binary.tar.gz").is_file()
    assert not Path(project, "data/prepared/cifar10").exists()  # only the dataset asked for


@pytest.mark.e2e
def test_dvc_repro_tracks_the_archive_and_reruns_nothing(project, cifar10_archive):
    first = dvc("repro", "prepare@cifar10", cwd=project).stdout
    assert "Running stage 'check'" in first and "Running stage 'prepare@cifar10'" in first
    assert "200 train, 50 test images" in first
    lock = yaml.safe_load(Path(project, "dvc.lock").read_text())["stages"]
    outs = {o["path"]: o for o in lock["prepare@cifar10"]["outs"]}
    assert set(outs) == {"data/raw/cifar10", "data/prepared/cifar10"}
    assert {d["path"] for d in lock["prepare@cifar10"]["deps"]} >= {"data/source/cifar10.json"}
    assert outs["data/raw/cifar10"]["nfiles"] == 1 and outs["data/prepared/cifar10"]["nfiles"] == 3
    assert lock["prepare@cifar10"]["params"]["params.yaml"]["data.cifar10"]["md5"] == md5(cifar10_archive)
    # the archive itself is in DVC's cache, and git ignores it
    digest = md5(cifar10_archive)
    assert Path(project, ".dvc/cache/files/md5", digest[:2], digest[2:]).is_file()
    assert (
        subprocess.run(
            ["git", "check-ignore", "-q", "data/raw/cifar10/cifar-10-python.tar.gz"], cwd=project
        ).returncode
        == 0
    )

    npz = Path(project, "data/prepared/cifar10/train.npz")
    stamp = npz.stat().st_mtime_ns
    second = dvc("repro", "prepare@cifar10", cwd=project).stdout
    # only the archive's stamp is taken again (source@: always run, it reads the local file); it is unchanged
    assert [line for line in second.splitlines() if "Running stage" in line] == [
        "Running stage 'source@cifar10':"
    ]
    assert "Stage 'prepare@cifar10' didn't change, skipping" in second
    assert npz.stat().st_mtime_ns == stamp
    assert "up to date" in dvc("status", "prepare@cifar10", cwd=project).stdout

    # deleted by hand, the archive comes back from the cache
    shutil.rmtree(Path(project, "data/raw/cifar10"))
    dvc("checkout", "data/raw/cifar10", cwd=project)
    assert md5(Path(project, "data/raw/cifar10/cifar-10-python.tar.gz")) == digest

    # a change of the dataset's parameters makes the stage due again
    set_params(project, data={"cifar10": {"md5": None}})
    status = dvc("status", "prepare@cifar10", cwd=project).stdout
    assert "prepare@cifar10" in status and "data.cifar10" in status


def test_prepare_writes_nothing_for_nested_labels(project, tmp_path):
    """Was: y of shape (N, 1) written to data/prepared, then an np.bincount traceback."""
    from tests.conftest import set_params
    from tests.test_prepare import assert_one_error_line, leftovers, prepare

    data = make_dataset("cifar10", train_per_class=2, test_per_class=1)
    m = python_members("cifar10", data)
    name = f"{PY10}/data_batch_1"
    rewrite_python(m, name, labels=[[v] for v in unpickled(m[name])[b"labels"]])
    archive = write_archive(tmp_path / "nested.tar.gz", m)
    set_params(project, data={"cifar10": {"url": str(archive), "md5": None}})
    status, _, err = prepare(project)
    err = [line for line in err if "md5 is null" not in line and "warnings.warn" not in line]
    assert "labels must be a list of integers, found list" in assert_one_error_line(status, err)
    assert not Path(project, "data/prepared/cifar10").exists() and leftovers(project) == []


# --- a download that stalls ---------------------------------------------------------------------------------


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


def test_prepare_removes_what_a_killed_run_left_and_git_ignores_temporaries(project):
    """SIGKILL during np.savez or the download left 160-210 MB under data/prepared/.cifar10.*.tmp/ for
    good."""
    dead = dead_pid()
    leftovers_before = [
        Path(project, "data/prepared", f".cifar10.{dead}.abcdefgh.tmp"),
        Path(project, "data/raw", f".cifar10.{dead}.abcdefgh.tmp"),
    ]
    for d in leftovers_before:
        d.mkdir(parents=True)
        (d / "train.npz").write_bytes(b"\0" * 4096)
    assert (
        git("status", "--porcelain", cwd=project).stdout == ""
    )  # .gitignore: temporaries are never files to add
    status, _, err = prepare(project)
    assert status == 0, err
    assert leftovers(project) == []


# --- messages -----------------------------------------------------------------------------------------------


def test_url_without_a_file_name_is_one_line_naming_the_key(project):
    """Was: passed the check, then an OSError traceback about `.download-…/./..`."""
    for url in ("http://127.0.0.1:9/..", "https://example.org/data/"):
        set_params(project, data={"cifar10": {"url": url}})
        line = assert_one_error_line(*prepare(project)[::2])
        assert f"data.cifar10.url = {url!r}: must be" in line and "ending in the archive's file name" in line
    assert not Path(project, "data/raw").exists() and not Path(project, "data/prepared").exists()
