"""stages/cifar.py against its spec, in process and without TensorFlow: bit-exact decoding of both layouts of
both datasets, layout told by content, and every bad archive refused with a UserError naming the file and the
problem."""

import bz2
import functools
import gzip
import io
import lzma
import os
import pickle
import shutil
import subprocess
import sys
import tarfile
import time
import zipfile

import numpy as np
import pytest

from stages import cifar
from stages.params import UserError
from tests.archives import (
    CIFAR10_NAMES,
    _pickle,
    add_member,
    binary_members,
    class_names,
    make_dataset,
    python_members,
    write_archive,
)
from tests.conftest import ENV, ROOT

PY10 = "cifar-10-batches-py"
BIN10 = "cifar-10-batches-bin"


def members(dataset, layout, data, **kw):
    return python_members(dataset, data, **kw) if layout == "python" else binary_members(dataset, data)


@pytest.fixture(scope="module")
def c10():
    return make_dataset("cifar10", train_per_class=4, test_per_class=2)  # 40 train, 20 test


@pytest.fixture(scope="module")
def c100():
    return make_dataset("cifar100", train_per_class=1, test_per_class=1, seed=3)  # 100 train, 100 test


def read_error(path, dataset="cifar10", labels="fine"):
    """The UserError's message; fails when the archive is accepted."""
    with pytest.raises(UserError) as e:
        cifar.read(path, dataset, labels)
    message = str(e.value)
    assert str(path) in message, message  # every message names the file
    assert "\n" not in message, message  # and is one line
    return message


def unpickled(raw):
    return pickle.loads(raw, encoding="bytes")


# --- decoding -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("layout", ["python", "binary"])
def test_cifar10_decodes_bit_exactly(tmp_path, c10, layout):
    path = write_archive(tmp_path / "a.tar.gz", members("cifar10", layout, c10))
    splits, classes = cifar.read(path, "cifar10")
    assert classes == CIFAR10_NAMES
    assert set(splits) == {"train", "test"}
    for split, (x, y) in splits.items():
        x_true, y_true, _ = c10[split]
        assert x.dtype == np.uint8 and x.shape == (len(y_true), 32, 32, 3)
        assert y.dtype == np.int64 and y.shape == (len(y_true),)
        np.testing.assert_array_equal(x, x_true)  # every pixel of every channel
        np.testing.assert_array_equal(y, y_true)
    assert len(splits["train"][1]) == 40 and len(splits["test"][1]) == 20


@pytest.mark.parametrize("layout", ["python", "binary"])
@pytest.mark.parametrize("labels, classes_expected", [("fine", 100), ("coarse", 20)])
def test_cifar100_decodes_bit_exactly_with_fine_or_coarse_labels(
    tmp_path, c100, layout, labels, classes_expected
):
    path = write_archive(tmp_path / "a.tar.gz", members("cifar100", layout, c100))
    splits, classes = cifar.read(path, "cifar100", labels)
    assert classes == class_names("cifar100", labels) and len(classes) == classes_expected
    for split, (x, y) in splits.items():
        x_true, fine, coarse = c100[split]
        np.testing.assert_array_equal(x, x_true)
        assert y.dtype == np.int64
        np.testing.assert_array_equal(y, fine if labels == "fine" else coarse)
    assert not np.array_equal(c100["train"][1], c100["train"][2])  # fine and coarse really differ


def hand_made_rows(n):
    """n images, stored as the official files do, written without the tests' writer: image i has its red plane
    all 10 + i, green 20 + i, blue 30 + i, except the pixel at row 1, column 2, which is (200, 201, 202) +
    i."""
    rows = np.zeros((n, 3072), np.uint8)
    for i in range(n):
        rows[i, 0:1024], rows[i, 1024:2048], rows[i, 2048:3072] = 10 + i, 20 + i, 30 + i
        rows[i, 0 * 1024 + 1 * 32 + 2] = 200 + i  # R plane, row 1, column 2
        rows[i, 1 * 1024 + 1 * 32 + 2] = 201 + i  # G
        rows[i, 2 * 1024 + 1 * 32 + 2] = 202 + i  # B
    return rows


def assert_hand_made(x, n):
    assert x.shape == (n, 32, 32, 3)
    for i in range(n):
        assert x[i, 1, 2].tolist() == [200 + i, 201 + i, 202 + i]
        assert x[i, 2, 1].tolist() == [10 + i, 20 + i, 30 + i]  # rows and columns not swapped
        assert x[i, 0, 0].tolist() == [10 + i, 20 + i, 30 + i]
        assert x[i, 31, 31].tolist() == [10 + i, 20 + i, 30 + i]
        assert (x[i, :, :, 0] == 10 + i).sum() == 1023 and (x[i, :, :, 2] == 30 + i).sum() == 1023


@pytest.mark.parametrize("layout", ["python", "binary"])
def test_plane_order_on_hand_made_pixels(tmp_path, layout):
    rows, labels = hand_made_rows(10), [3, 1, 4, 0, 5, 9, 2, 6, 8, 7]  # two per batch, every class once
    test_rows, test_labels = hand_made_rows(10), [9, 0, 1, 2, 3, 4, 5, 6, 7, 8]
    if layout == "python":
        m = {
            f"{PY10}/data_batch_{b}": _pickle(
                {b"data": rows[2 * b - 2 : 2 * b], b"labels": labels[2 * b - 2 : 2 * b]}
            )
            for b in range(1, 6)
        }
        m[f"{PY10}/test_batch"] = _pickle({b"data": test_rows, b"labels": test_labels})
        m[f"{PY10}/batches.meta"] = _pickle({b"label_names": [n.encode() for n in CIFAR10_NAMES]})
    else:
        records = [bytes([lab]) + r.tobytes() for lab, r in zip(labels, rows)]
        m = {f"{BIN10}/data_batch_{b}.bin": b"".join(records[2 * b - 2 : 2 * b]) for b in range(1, 6)}
        m[f"{BIN10}/test_batch.bin"] = b"".join(
            bytes([lab]) + r.tobytes() for lab, r in zip(test_labels, test_rows)
        )
        m[f"{BIN10}/batches.meta.txt"] = "\n".join(CIFAR10_NAMES).encode()
    splits, _ = cifar.read(write_archive(tmp_path / "a.tar.gz", m), "cifar10")
    x, y = splits["train"]
    assert y.tolist() == labels
    # batch b holds images 2b-2 and 2b-1 of the hand-made rows, so train image i is hand-made image i
    assert_hand_made(x, 10)
    x, y = splits["test"]
    assert y.tolist() == test_labels
    assert_hand_made(x, 10)


@pytest.mark.parametrize("old_numpy_path", [True, False])
def test_pickles_naming_either_numpy_module_path_are_read(tmp_path, c10, old_numpy_path):
    m = python_members("cifar10", c10, old_numpy_path=old_numpy_path)
    path_in_pickle = b"numpy.core.multiarray" if old_numpy_path else b"numpy._core.multiarray"
    assert path_in_pickle in m[f"{PY10}/test_batch"]  # the pickle really names that module
    splits, _ = cifar.read(write_archive(tmp_path / "a.tar.gz", m), "cifar10")
    np.testing.assert_array_equal(splits["test"][0], c10["test"][0])


@pytest.mark.parametrize(
    "layout, name",
    [("binary", "cifar-10-python.tar.gz"), ("python", "cifar-10-binary.tar.gz"), ("python", "download")],
)
def test_layout_is_told_by_content_not_file_name(tmp_path, c10, layout, name):
    path = write_archive(tmp_path / name, members("cifar10", layout, c10))
    splits, _ = cifar.read(path, "cifar10")
    np.testing.assert_array_equal(splits["train"][0], c10["train"][0])


@pytest.mark.parametrize(
    "compression, name", [(None, "a.tar"), (None, "a.tar.gz"), ("bz2", "a.tar.bz2"), ("xz", "a.tar.xz")]
)
def test_uncompressed_and_other_compressions(tmp_path, c10, compression, name):
    path = write_archive(tmp_path / name, members("cifar10", "binary", c10), compression=compression)
    splits, _ = cifar.read(path, "cifar10")
    np.testing.assert_array_equal(splits["test"][0], c10["test"][0])
    np.testing.assert_array_equal(splits["test"][1], c10["test"][1])


def test_dot_slash_member_names_and_directory_entries(tmp_path, c10):
    """As `tar czf a.tar.gz ./cifar-10-batches-py` writes them."""
    path = tmp_path / "a.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        for d in ("./", f"./{PY10}"):
            info = tarfile.TarInfo(d)
            info.type = tarfile.DIRTYPE
            tar.addfile(info)
        for name, raw in python_members("cifar10", c10).items():
            add_member(tar, f"./{name}", raw)
    splits, _ = cifar.read(path, "cifar10")
    np.testing.assert_array_equal(splits["train"][0], c10["train"][0])


def test_members_in_any_order_and_nothing_written_to_disk(tmp_path, c10, monkeypatch):
    m = python_members("cifar10", c10)
    path = write_archive(tmp_path / "a.tar.gz", dict(reversed(list(m.items()))))
    monkeypatch.chdir(tmp_path)
    splits, _ = cifar.read(path, "cifar10")
    np.testing.assert_array_equal(splits["train"][0], c10["train"][0])  # batch 5 read first, stored last
    np.testing.assert_array_equal(splits["train"][1], c10["train"][1])
    assert os.listdir(tmp_path) == ["a.tar.gz"]


# --- damaged files ------------------------------------------------------------------------------------------


@pytest.fixture
def good_gz(tmp_path, c10):
    return write_archive(tmp_path / "cifar-10-python.tar.gz", python_members("cifar10", c10))


@pytest.mark.parametrize("keep", [0.5, 0.9, -1])
def test_truncated_gzip(good_gz, keep):
    raw = good_gz.read_bytes()
    good_gz.write_bytes(raw[: int(len(raw) * keep)] if keep > 0 else raw[:keep])  # -1: the last byte cut
    message = read_error(good_gz)
    assert "not a readable tar archive" in message and "download it again" in message


@pytest.mark.parametrize("where", [0.3, 0.5, 0.7])
def test_corrupt_gzip(good_gz, where):
    raw = bytearray(good_gz.read_bytes())
    start = int(len(raw) * where)
    raw[start : start + 16] = bytes(b ^ 0xFF for b in raw[start : start + 16])
    good_gz.write_bytes(bytes(raw))
    message = read_error(good_gz)
    assert "not a readable tar archive" in message


def test_damaged_uncompressed_tar(tmp_path, c10):
    """A plain tar has no checksum over the data; a broken header must still not pass as a shorter archive."""
    path = write_archive(tmp_path / "a.tar", python_members("cifar10", c10), compression=None)
    raw = bytearray(path.read_bytes())
    with tarfile.open(path) as tar:
        offset = tar.getmember(f"{PY10}/data_batch_3").offset  # its header
    raw[offset : offset + 100] = b"\xff" * 100
    path.write_bytes(bytes(raw))
    # tarfile alone stops quietly at a garbled header (the rest would just be missing): named as damage
    assert "damaged tar header" in read_error(path)


@pytest.mark.parametrize("content", [b"", b"<html>404 Not Found</html>\n" * 50, os.urandom(4096)])
def test_not_an_archive(tmp_path, content):
    path = tmp_path / "cifar-10-python.tar.gz"
    path.write_bytes(content)
    assert "not a readable tar archive" in read_error(path)


def test_no_such_file(tmp_path):
    assert "not a readable tar archive" in read_error(tmp_path / "nothing.tar.gz")


@pytest.mark.parametrize(
    "layout, dropped",
    [
        ("python", f"{PY10}/test_batch"),
        ("python", f"{PY10}/batches.meta"),
        ("python", f"{PY10}/data_batch_4"),
        ("binary", f"{BIN10}/test_batch.bin"),
        ("binary", f"{BIN10}/batches.meta.txt"),
    ],
)
def test_missing_member(tmp_path, c10, layout, dropped):
    m = members("cifar10", layout, c10)
    del m[dropped]
    path = write_archive(tmp_path / "a.tar.gz", m)
    message = read_error(path)
    assert "missing member" in message and dropped in message


def test_missing_first_training_batch_is_not_a_cifar10_archive(tmp_path, c10):
    m = python_members("cifar10", c10)
    del m[f"{PY10}/data_batch_1"]
    assert "not a cifar10 archive" in read_error(write_archive(tmp_path / "a.tar.gz", m))


def test_duplicate_member(tmp_path, c10):
    m = python_members("cifar10", c10)
    path = tmp_path / "a.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        for name, raw in m.items():
            add_member(tar, name, raw)
        add_member(tar, f"{PY10}/data_batch_2", m[f"{PY10}/data_batch_2"])  # tar -r appends like this
    message = read_error(path)
    assert "data_batch_2" in message and "more than once" in message


@pytest.mark.parametrize("change", ["cut 1", "cut 3072", "add 1", "add 3072"])
def test_binary_records_of_the_wrong_size(tmp_path, c10, change):
    m = binary_members("cifar10", c10)
    name = f"{BIN10}/data_batch_2.bin"
    how, n = change.split()
    m[name] = m[name][: -int(n)] if how == "cut" else m[name] + b"\7" * int(n)
    message = read_error(write_archive(tmp_path / "a.tar.gz", m))
    assert name in message and "3073-byte records" in message


def test_binary_records_without_labels(tmp_path, c10):
    m = binary_members("cifar10", c10)
    name = f"{BIN10}/test_batch.bin"
    m[name] = np.ascontiguousarray(np.frombuffer(m[name], np.uint8).reshape(-1, 3073)[:, 1:]).tobytes()
    assert "3073-byte records" in read_error(write_archive(tmp_path / "a.tar.gz", m))


def test_empty_binary_member(tmp_path, c10):
    m = binary_members("cifar10", c10)
    m[f"{BIN10}/data_batch_5.bin"] = b""
    assert "data_batch_5.bin" in read_error(write_archive(tmp_path / "a.tar.gz", m))


@pytest.mark.parametrize("bad_label", [10, 255])
def test_binary_label_out_of_range(tmp_path, c10, bad_label):
    m = binary_members("cifar10", c10)
    name = f"{BIN10}/data_batch_3.bin"
    raw = bytearray(m[name])
    raw[3073 * 2] = bad_label  # the third record's label byte
    m[name] = bytes(raw)
    message = read_error(write_archive(tmp_path / "a.tar.gz", m))
    assert name in message and "labels must lie in 0..9" in message and str(bad_label) in message


@pytest.mark.parametrize("labels, offset, bad", [("coarse", 0, 20), ("fine", 1, 100)])
def test_cifar100_binary_label_out_of_range(tmp_path, c100, labels, offset, bad):
    m = binary_members("cifar100", c100)
    name = "cifar-100-binary/test.bin"
    raw = bytearray(m[name])
    raw[3074 * 7 + offset] = bad
    m[name] = bytes(raw)
    message = read_error(write_archive(tmp_path / "a.tar.gz", m), "cifar100", labels)
    assert f"labels must lie in 0..{bad - 1}" in message


def rewrite_python(m, member, **changes):
    d = unpickled(m[member])
    d.update({k.encode(): v for k, v in changes.items()})
    m[member] = _pickle(d)
    return m


@pytest.mark.parametrize("bad_label", [10, -1, 1000])
def test_python_label_out_of_range(tmp_path, c10, bad_label):
    m = python_members("cifar10", c10)
    name = f"{PY10}/data_batch_1"
    labels = unpickled(m[name])[b"labels"]
    labels[5] = bad_label
    rewrite_python(m, name, labels=labels)
    message = read_error(write_archive(tmp_path / "a.tar.gz", m))
    assert name in message and "labels must lie in 0..9" in message and str(bad_label) in message


def test_cifar100_python_coarse_label_out_of_range(tmp_path, c100):
    m = python_members("cifar100", c100)
    name = "cifar-100-python/train"
    labels = unpickled(m[name])[b"coarse_labels"]
    labels[0] = 20
    rewrite_python(m, name, coarse_labels=labels)
    assert "labels must lie in 0..19" in read_error(
        write_archive(tmp_path / "a.tar.gz", m), "cifar100", "coarse"
    )


@pytest.mark.parametrize("labels", [[b"cat"] * 8, [None] * 8, [2**70] * 8, "not a list"])
def test_python_labels_that_are_not_integers(tmp_path, c10, labels):
    m = rewrite_python(python_members("cifar10", c10), f"{PY10}/test_batch", labels=labels)
    assert f"{PY10}/test_batch" in read_error(write_archive(tmp_path / "a.tar.gz", m))


def test_python_labels_count_differs_from_images(tmp_path, c10):
    m = python_members("cifar10", c10)
    name = f"{PY10}/data_batch_2"
    rewrite_python(m, name, labels=unpickled(m[name])[b"labels"][:-1])
    assert "8 images but 7 labels" in read_error(write_archive(tmp_path / "a.tar.gz", m))


@pytest.mark.parametrize(
    "data",
    [
        np.zeros((8, 3000), np.uint8),
        np.zeros((8, 3072), np.int64),
        np.zeros((8, 3, 32, 32), np.uint8),
        np.zeros(8 * 3072, np.uint8),
    ],
    ids=["3000-bytes", "int64", "4-d", "flat"],
)
def test_python_images_that_are_not_3072_bytes(tmp_path, c10, data):
    m = rewrite_python(python_members("cifar10", c10), f"{PY10}/data_batch_4", data=data)
    message = read_error(write_archive(tmp_path / "a.tar.gz", m))
    assert f"{PY10}/data_batch_4" in message and "3072 uint8 bytes" in message


@pytest.mark.parametrize("member", ["data_batch_1", "test_batch"])
def test_python_batch_without_its_keys(tmp_path, c10, member):
    m = python_members("cifar10", c10)
    m[f"{PY10}/{member}"] = _pickle({b"something": b"else"})
    message = read_error(write_archive(tmp_path / "a.tar.gz", m))
    assert f"{PY10}/{member}" in message and "not a CIFAR pickle" in message


def test_python_batch_that_is_not_a_pickle(tmp_path, c10):
    m = python_members("cifar10", c10)
    m[f"{PY10}/data_batch_3"] = b"\x00garbage" * 100
    assert "not a CIFAR pickle" in read_error(write_archive(tmp_path / "a.tar.gz", m))


@pytest.mark.parametrize(
    "layout, meta", [("python", f"{PY10}/batches.meta"), ("binary", f"{BIN10}/batches.meta.txt")]
)
def test_wrong_number_of_class_names(tmp_path, c10, layout, meta):
    m = members("cifar10", layout, c10)
    nine = CIFAR10_NAMES[:9]
    m[meta] = (
        _pickle({b"label_names": [n.encode() for n in nine]})
        if layout == "python"
        else "\n".join(nine).encode()
    )
    message = read_error(write_archive(tmp_path / "a.tar.gz", m))
    assert "9 class names, expected 10" in message


def hostile_pickle(module, name, arg):
    """A protocol-0 pickle calling module.name(arg): what a malicious 'CIFAR batch' looks like."""
    return f"c{module}\n{name}\n(V{arg}\ntR.".encode()


@pytest.mark.parametrize(
    "module, name, code",
    [
        ("os", "system", "touch {marker}"),
        ("posix", "system", "touch {marker}"),
        ("builtins", "eval", "open({marker!r}, 'w').close()"),
        ("builtins", "exec", "open({marker!r}, 'w').close()"),
        ("subprocess", "check_call", "touch {marker}"),
    ],
)
@pytest.mark.parametrize("member", ["data_batch_1", "batches.meta"])
def test_hostile_pickle_is_refused_and_never_executed(tmp_path, c10, module, name, code, member):
    marker = str(tmp_path / "pwned")
    payload = hostile_pickle(module, name, code.format(marker=marker))
    # the payload is live: the standard unpickler would run it (checked on a harmless copy)
    if module == "builtins":
        pickle.loads(payload)
        assert os.path.exists(marker)
        os.remove(marker)
    m = python_members("cifar10", c10)
    m[f"{PY10}/{member}"] = payload
    message = read_error(write_archive(tmp_path / "a.tar.gz", m))
    assert f"refused global {module}.{name}" in message and member in message
    assert not os.path.exists(marker)


def test_hostile_global_hidden_inside_a_valid_batch(tmp_path, c10):
    marker = tmp_path / "pwned"
    m = python_members("cifar10", c10)
    d = unpickled(m[f"{PY10}/data_batch_1"])

    class Evil:
        def __reduce__(self):
            return (eval, (f"open({str(marker)!r}, 'w').close()",))

    d[b"filenames"] = [Evil()]
    payload = _pickle(d)  # as the official batches are pickled, with Evil in the list of file names
    pickle.loads(payload, encoding="bytes")  # live: the standard unpickler runs it
    assert marker.exists()
    marker.unlink()
    m[f"{PY10}/data_batch_1"] = payload
    message = read_error(write_archive(tmp_path / "a.tar.gz", m))
    assert "refused global" in message and "eval" in message
    assert not marker.exists()


@pytest.mark.parametrize(
    "module, name",
    [
        ("numpy", "load"),
        ("numpy", "frombuffer"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy.lib.format", "read_array"),
    ],
)
def test_only_the_array_rebuilders_of_numpy_are_allowed(tmp_path, c10, module, name):
    m = python_members("cifar10", c10)
    m[f"{PY10}/test_batch"] = hostile_pickle(module, name, "x")
    assert f"refused global {module}.{name}" in read_error(write_archive(tmp_path / "a.tar.gz", m))


# --- hostile tar members ------------------------------------------------------------------------------------


def tar_with(path, c10, extra, compression="gz"):
    """A valid python-layout cifar10 archive plus one extra member (a TarInfo, given its data if a file)."""
    with tarfile.open(path, f"w:{compression}") as tar:
        for name, raw in python_members("cifar10", c10).items():
            add_member(tar, name, raw)
        info, data = extra
        tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


def file_info(name, data=b"x"):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    return info, data


def special_info(name, type_, linkname=""):
    info = tarfile.TarInfo(name)
    info.type, info.linkname = type_, linkname
    if type_ in (tarfile.CHRTYPE, tarfile.BLKTYPE):
        info.devmajor, info.devminor = 1, 3  # /dev/null
    return info, None


@pytest.mark.parametrize(
    "extra, why",
    [
        (file_info("/tmp/cifar-evil"), "absolute"),
        (file_info("../evil"), "'..'"),
        (file_info(f"{PY10}/../../evil"), "'..'"),
        (file_info(f"./{PY10}/.."), "'..'"),
        (special_info(f"{PY10}/evil-link", tarfile.SYMTYPE, "/etc/passwd"), "links"),
        (special_info(f"{PY10}/data_batch_9", tarfile.SYMTYPE, "data_batch_1"), "links"),
        (special_info(f"{PY10}/hard", tarfile.LNKTYPE, f"{PY10}/data_batch_1"), "links"),
        (special_info(f"{PY10}/null", tarfile.CHRTYPE), "devices"),
        (special_info(f"{PY10}/disk", tarfile.BLKTYPE), "devices"),
        (special_info(f"{PY10}/fifo", tarfile.FIFOTYPE), "devices"),
    ],
    ids=[
        "absolute",
        "dotdot",
        "dotdot-inside",
        "dotdot-end",
        "symlink-out",
        "symlink-in",
        "hardlink",
        "chr",
        "blk",
        "fifo",
    ],
)
def test_unsafe_tar_members_are_refused(tmp_path, c10, extra, why):
    path = tar_with(tmp_path / "a.tar.gz", c10, extra)
    message = read_error(path)
    assert "refused member" in message and repr(extra[0].name) in message and why in message


def test_hardlink_replacing_a_batch_is_refused(tmp_path, c10):
    """A hardlink in the place of a wanted member (tar would hand over another member's bytes)."""
    m = python_members("cifar10", c10)
    path = tmp_path / "a.tar"
    with tarfile.open(path, "w") as tar:
        for name, raw in m.items():
            if name.endswith("test_batch"):
                info = tarfile.TarInfo(name)
                info.type, info.linkname = tarfile.LNKTYPE, f"{PY10}/data_batch_1"
                tar.addfile(info)
            else:
                add_member(tar, name, raw)
    assert "refused member" in read_error(path)


# --- the wrong dataset --------------------------------------------------------------------------------------


@pytest.mark.parametrize("layout", ["python", "binary"])
def test_cifar100_archive_given_as_cifar10(tmp_path, c100, layout):
    path = write_archive(tmp_path / "cifar-10-python.tar.gz", members("cifar100", layout, c100))
    message = read_error(path, "cifar10")
    assert (
        "not a cifar10 archive" in message
        and "looks like cifar100" in message
        and "data.cifar10.url" in message
    )


@pytest.mark.parametrize("layout", ["python", "binary"])
def test_cifar10_archive_given_as_cifar100(tmp_path, c10, layout):
    path = write_archive(tmp_path / "cifar-100-python.tar.gz", members("cifar10", layout, c10))
    message = read_error(path, "cifar100", "coarse")
    assert (
        "not a cifar100 archive" in message
        and "looks like cifar10" in message
        and "data.cifar100.url" in message
    )


def test_unrelated_archive(tmp_path):
    path = write_archive(tmp_path / "a.tar.gz", {"README": b"hello\n"})
    message = read_error(path)
    assert "not a cifar10 archive" in message and "looks like" not in message


COMPRESS = {"gz": gzip.compress, "bz2": bz2.compress, "xz": lzma.compress, None: bytes}


def tar_bytes(tmp_path, members):
    return write_archive(tmp_path / "plain.tar", members, compression=None).read_bytes()


# --- multi-member archives ----------------------------------------------------------------------------------


def split_at_members(raw):
    """A plain tar's bytes cut at every member's header: what `split` at member boundaries gives."""
    with tarfile.open(fileobj=io.BytesIO(raw)) as tar:
        cuts = [m.offset for m in tar.getmembers()][1:]
    return [raw[a:b] for a, b in zip([0, *cuts], [*cuts, len(raw)])]


@pytest.mark.parametrize("compression", ["gz", "bz2", "xz", None])
def test_multi_member_archive_reads_like_a_single_member_one(tmp_path, c10, compression):
    """`cat a.gz b.gz ...`: each tar member compressed on its own, then concatenated (7 gzip members / bz2 or
    xz streams). Was: gz kept only the first member's images and exited 0; bz2 and xz raised EOFError."""
    m = python_members("cifar10", c10)
    parts = split_at_members(tar_bytes(tmp_path, m))
    assert len(parts) == 7
    multi = tmp_path / "multi.tar.x"
    multi.write_bytes(b"".join(COMPRESS[compression](p) for p in parts))
    single = write_archive(tmp_path / "single.tar.x", m, compression=compression)
    (got, names), (want, _) = cifar.read(multi, "cifar10"), cifar.read(single, "cifar10")
    assert names == CIFAR10_NAMES
    for split in ("train", "test"):
        for a, b, truth in zip(got[split], want[split], c10[split]):
            np.testing.assert_array_equal(a, b)
            np.testing.assert_array_equal(a, truth)


def test_second_tar_appended_after_the_end_is_refused(tmp_path, c10):
    """`cat a.tar b.tar | gzip`: tar stops at a's end marker, b would be ignored without a word."""
    m = python_members("cifar10", c10)
    raw = (
        tar_bytes(tmp_path, m)
        + write_archive(tmp_path / "b.tar", {"extra": b"x"}, compression=None).read_bytes()
    )
    path = tmp_path / "a.tar.gz"
    path.write_bytes(gzip.compress(raw))
    assert "data after the end of the tar archive" in read_error(path)


# --- size bounds and hostile pickles: refused fast, in little memory ----------------------------------------

CHILD = """
import sys
from stages import cifar
from stages.params import UserError
try:
    cifar.read(sys.argv[1], "cifar10")
    print("accepted", file=sys.stderr)
except UserError as e:
    print(f"error: {e}", file=sys.stderr)
# peak MB of this process: VmHWM belongs to the process image, while ru_maxrss keeps across exec the peak of
# the forked parent (a pytest process that imported TensorFlow: ~900 MB)
print(next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM:")) // 1024)
"""


def read_in_child(path):
    """(the one stderr line, peak resident MB) of cifar.read(path) in a fresh process; fails on a traceback or
    when it runs past 120 s (the zero-stride pickle used to burn CPU until killed)."""
    p = subprocess.run(
        [sys.executable, "-c", CHILD, str(path)],
        cwd=ROOT,
        env={**ENV, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    lines = p.stderr.strip().splitlines()
    assert p.returncode == 0 and len(lines) == 1 and lines[0].startswith("error: "), p.stderr[-3000:]
    return lines[0], int(p.stdout.split()[-1])


def huge_header(name, size):
    """A tar header declaring a member of size bytes, followed by a few bytes only (as a sparse member, or a
    header pointing past the end, claims much more than the archive carries)."""
    info = tarfile.TarInfo(name)
    info.size = size
    return info.tobuf(format=tarfile.GNU_FORMAT) + b"\0" * 1024


@pytest.mark.parametrize(
    "name, size",
    [
        (f"{PY10}/data_batch_1", 1_900_000_000),
        (f"{PY10}/readme.html", 10**12),
        (f"{PY10}/batches.meta", 100_000_000),
    ],
)
def test_member_larger_than_the_layout_holds_is_refused_from_its_header(tmp_path, c10, name, size):
    m = python_members("cifar10", c10)
    m.pop(name, None)
    raw = tar_bytes(tmp_path, m)
    with tarfile.open(fileobj=io.BytesIO(raw)) as tar:
        end = tar.offset  # where the end-of-archive blocks start
    path = tmp_path / "a.tar.gz"
    path.write_bytes(gzip.compress(raw[:end] + huge_header(name, size)))
    line, peak = read_in_child(path)
    assert (
        f"refused member {name!r}: {size} bytes, more than the" in line and "use the official archive" in line
    )
    assert peak < 400, peak


def test_gzip_bomb_is_refused_once_the_stream_exceeds_what_cifar_holds(tmp_path, c10):
    """A valid archive followed by ~1 GB of zeros in 3 MB of gzip members (zero padding is allowed after a
    tar)."""
    zeros = gzip.compress(b"\0" * (16 << 20), compresslevel=9)
    path = tmp_path / "a.tar.gz"
    path.write_bytes(gzip.compress(tar_bytes(tmp_path, python_members("cifar10", c10))) + zeros * 64)
    assert path.stat().st_size < 3_500_000
    line, peak = read_in_child(path)
    assert f"decompresses to more than {cifar.STREAM_MAX / 1e6:.0f} MB" in line
    assert peak < 400, peak


class Call:
    """Pickles as fn(*args), as a hostile pickle may do with any global the unpickler lets through."""

    def __init__(self, fn, *args):
        self.fn, self.args = fn, args

    def __reduce__(self):
        return self.fn, self.args


def zero_stride(shape, dtype):
    # numpy.ndarray(shape, dtype, buffer, offset, strides): 8 bytes standing for prod(shape) elements
    return Call(np.ndarray, shape, np.dtype(dtype), b"\0" * 8, 0, (0,) * len(shape))


HOSTILE = {
    # 10^15 images and labels in a few hundred bytes, with numpy globals only
    "zero-stride": lambda: _pickle(
        {b"data": zero_stride((10**15, 3072), "u1"), b"labels": zero_stride((10**15,), "i8")}
    ),
    # a 9-byte pickle naming memo slot 2^28: the C unpickler allocates 4 GB for it
    "memo-index": lambda: b"\x80\x02K\x01r\xff\xff\xff\x0f.",
}


def live(payload):
    """The standard unpickler builds what the payload describes (checked without touching its elements)."""
    return pickle.loads(payload, encoding="bytes")


@pytest.mark.parametrize("kind", ["zero-stride", "memo-index"])
def test_hostile_pickle_is_refused_before_anything_is_built(tmp_path, c10, kind):
    payload = HOSTILE[kind]()
    if kind == "zero-stride":
        built = live(payload)
        assert built[b"data"].shape == (10**15, 3072) and built[b"data"].strides == (0, 0)
    m = python_members("cifar10", c10)
    m[f"{PY10}/data_batch_2"] = payload
    line, peak = read_in_child(write_archive(tmp_path / "a.tar.gz", m))
    assert f"{PY10}/data_batch_2: not a CIFAR pickle" in line
    assert peak < 400, peak


@pytest.mark.parametrize(
    "state",
    [
        ((10**9, 3072), np.dtype("u1"), b"\0" * 3072),  # claims 10^9 images, holds one
        ((1, 3072), np.dtype("O"), [0] * 3072),  # objects
        ((1, 3072), np.dtype(("u1", (10**6,))), b"\0" * 3072),  # a sub-array dtype
    ],
    ids=["shape-beyond-bytes", "object", "subarray"],
)
def test_array_state_that_does_not_match_its_bytes_is_refused(tmp_path, c10, state):
    class State:  # pickles as _reconstruct(ndarray, (0,), b'b') then BUILD with the given state
        def __reduce__(self):
            return (
                np.core.multiarray._reconstruct,
                (np.ndarray, (0,), b"b"),
                (1, *state[:2], False, state[2]),
            )

    m = python_members("cifar10", c10)
    m[f"{PY10}/test_batch"] = _pickle({b"data": State(), b"labels": [0]})
    message = read_error(write_archive(tmp_path / "a.tar.gz", m))
    assert f"{PY10}/test_batch: not a CIFAR pickle" in message and "refused" in message


# --- malformed contents: one line, never a traceback or silently wrong data ---------------------------------


@pytest.mark.parametrize(
    "labels, found",
    [
        (7, "found int"),
        ([[3]] * 8, "found list"),
        ([9.9] * 8, "found float 9.9"),
        ([True] * 8, "found bool True"),
    ],
    ids=["bare-int", "one-element-lists", "floats", "bools"],
)
def test_python_labels_of_the_wrong_kind(tmp_path, c10, labels, found):
    m = rewrite_python(python_members("cifar10", c10), f"{PY10}/test_batch", labels=labels)
    message = read_error(write_archive(tmp_path / "a.tar.gz", m))
    assert f"{PY10}/test_batch: labels must be a list of integers, {found}" in message


@pytest.mark.parametrize(
    "names, expected",
    [
        (
            [n for n in CIFAR10_NAMES],
            "class names must be a list of byte strings, found list",
        ),  # str, not bytes
        ("airplane", "class names must be a list of byte strings, found str"),
        ([n.encode() for n in CIFAR10_NAMES[:9]] + [b"cat"], "class name 'cat' is repeated"),
        ([n.encode() for n in CIFAR10_NAMES[:9]] + [b""], "class name '' is empty"),
    ],
)
def test_python_class_names_of_the_wrong_kind(tmp_path, c10, names, expected):
    m = python_members("cifar10", c10)
    m[f"{PY10}/batches.meta"] = _pickle({b"label_names": names})
    assert expected in read_error(write_archive(tmp_path / "a.tar.gz", m))


def test_binary_class_names_repeated(tmp_path, c10):
    m = binary_members("cifar10", c10)
    m[f"{BIN10}/batches.meta.txt"] = "\n".join(CIFAR10_NAMES[:9] + ["ship"]).encode()
    assert "class name 'ship' is repeated" in read_error(write_archive(tmp_path / "a.tar.gz", m))


@pytest.mark.parametrize("layout", ["binary", "python"])
def test_class_missing_from_a_split_is_refused(tmp_path, c10, layout):
    """Every image of class 3 relabelled 4 in every training member: a valid-looking archive without cats."""
    if layout == "binary":
        m = binary_members("cifar10", c10)
        for i in range(1, 6):
            rows = np.frombuffer(m[f"{BIN10}/data_batch_{i}.bin"], np.uint8).reshape(-1, 3073).copy()
            rows[rows[:, 0] == 3, 0] = 4
            m[f"{BIN10}/data_batch_{i}.bin"] = rows.tobytes()
    else:
        m = python_members("cifar10", c10)
        for i in range(1, 6):
            name = f"{PY10}/data_batch_{i}"
            rewrite_python(m, name, labels=[4 if v == 3 else v for v in unpickled(m[name])[b"labels"]])
    message = read_error(write_archive(tmp_path / "a.tar.gz", m))
    assert "no train images of class 3 ('cat')" in message


# --- a pax header that hangs Python's tarfile (CVE-2024-6232) -----------------------------------------------


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


# --- archive member names and class names -------------------------------------------------------------------


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


# --- issue 21: the unpickler's work per member, archives of other formats -----------------------------------


def test_opcodes_that_amplify_memory_are_refused_within_a_bounded_peak(tmp_path, c10):
    """Was: 8 M one-byte EMPTY_SET opcodes ahead of data_batch_1's own (+7.6 KB gzipped) built 1.90 GB of
    sets and passed with md5: null. Now the member is refused once its objects pass 2 x its size + 1 MiB."""

    m = python_members("cifar10", c10)
    body = m[f"{PY10}/data_batch_1"]
    assert body[:2] == b"\x80\x02"  # PROTO 2, then the batch's own opcodes
    m[f"{PY10}/data_batch_1"] = b"\x80\x02" + pickle.EMPTY_SET * 8_000_000 + body[2:]
    path = write_archive(tmp_path / "a.tar.gz", m)
    assert path.stat().st_size < 300_000  # the tests' random images, plus ~8 KB for the opcodes
    line, peak = read_in_child(path)
    assert f"{PY10}/data_batch_1: not a CIFAR pickle" in line and "refused: it builds more than" in line, line
    budget = cifar.BUDGET_PER_BYTE * len(m[f"{PY10}/data_batch_1"]) + cifar.BUDGET_BASE
    size = len(m[f"{PY10}/data_batch_1"])
    print(f"peak {peak} MB for a {size / 1e6:.0f} MB member, budget {budget / 1e6:.0f} MB")
    # the child's baseline (72 MB with numpy), the member in its raw, tar and gzip buffers, and its budget
    assert peak < 72 + 3 * size / 1e6 + budget / 1e6, peak


def test_official_sized_batches_stay_well_inside_the_budget():
    """An official-sized batch (10,000 images and 50,000 for cifar-100's train member, with labels and file
    names) is charged ~1.3 x its size: the bound refuses no official archive."""
    rng = np.random.default_rng(0)
    for n, keys in ((10_000, [b"labels"]), (50_000, [b"fine_labels", b"coarse_labels"])):
        batch = {
            b"batch_label": b"training batch 1 of 5",
            b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
            b"filenames": [f"some_file_name_{i:06d}.png".encode() for i in range(n)],
            **{k: [int(x) for x in rng.integers(0, 10, n)] for k in keys},
        }
        raw = _pickle(batch)
        u = cifar._NumpyOnlyUnpickler(raw, encoding="bytes")
        np.testing.assert_array_equal(u.load()[b"data"], batch[b"data"])
        assert u.spent < 1.5 * len(raw) < u.budget, (u.spent, len(raw))


def zip_archive(tar, out):
    with zipfile.ZipFile(out, "w") as z:
        z.write(tar, tar.name)


@pytest.mark.parametrize(
    "kind, pack",
    [
        ("a zip", zip_archive),
        ("a zstd", lambda tar, out: subprocess.run(["zstd", "-q", str(tar), "-o", str(out)], check=True)),
        ("an lz4", lambda tar, out: subprocess.run(["lz4", "-q", str(tar), str(out)], check=True)),
    ],
)
def test_archives_of_other_formats_are_named_as_what_they_are(tmp_path, c10, kind, pack):
    """Was: `not a readable tar archive (…); delete it and download it again`, which cannot help."""
    if kind != "a zip" and shutil.which(kind.split()[1]) is None:
        pytest.skip(f"no {kind.split()[1]} command here")
    tar = write_archive(tmp_path / "cifar-10-python.tar", python_members("cifar10", c10), compression=None)
    pack(tar, tmp_path / "cifar-10-python.tar.gz")
    message = read_error(tmp_path / "cifar-10-python.tar.gz")
    assert f"{kind} archive, not a tar; use the official archive" in message, message
    assert "download it again" not in message
