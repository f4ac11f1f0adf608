"""What an outside attack on the archive reader found (issue 9), each tried again: multi-member compressed
archives, size and pickle bombs, malformed contents. Every bad archive must end in one line naming the file,
quickly and in little memory; the hostile ones run in a child process so their peak memory is their own."""

import bz2
import gzip
import io
import lzma
import pickle
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest

from stages import cifar
from tests.archives import CIFAR10_NAMES, _pickle, binary_members, make_dataset, python_members, write_archive
from tests.conftest import ENV, ROOT
from tests.test_cifar import BIN10, PY10, read_error, rewrite_python, unpickled

COMPRESS = {"gz": gzip.compress, "bz2": bz2.compress, "xz": lzma.compress, None: bytes}


@pytest.fixture(scope="module")
def c10():
    return make_dataset("cifar10", train_per_class=4, test_per_class=2)  # 40 train, 20 test


def tar_bytes(tmp_path, members):
    return write_archive(tmp_path / "plain.tar", members, compression=None).read_bytes()


# --- 1. multi-member archives -------------------------------------------------------------------------------


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


# --- 4. size bounds and hostile pickles: refused fast, in little memory -------------------------------------

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


# --- 5. malformed contents: one line, never a traceback or silently wrong data ------------------------------


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
