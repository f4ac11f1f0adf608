"""prepare@<dataset> run as users run it: `python -m stages.prepare <dataset>` and `dvc repro
prepare@<dataset>` in a temporary copy of the project. Each run imports TensorFlow (~10-20 s), so the runs are
few and each checks several things."""

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from tests.archives import CIFAR10_NAMES, class_names, make_dataset, write_cifar
from tests.conftest import ENV, dvc, md5, set_params

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
