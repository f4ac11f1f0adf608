"""The two official CIFAR archive layouts, read without trusting the archive.

Python layout: protocol-2 pickles of dicts (b"data": (N, 3072) uint8, b"labels" or b"fine_labels"/
b"coarse_labels"), loaded through an unpickler that can only rebuild plain numeric numpy arrays, each checked
(shape, dtype, byte count) before numpy builds it.
Binary layout: fixed-size records <label>[<fine>]<3072 px>.
Pixels are stored as R, G, B planes of 32x32, row-major: (N, 3072) -> (N, 3, 32, 32) -> NHWC (N, 32, 32, 3).
The archive is read in one streaming pass (gzip, bz2 and xz of any number of members/streams, or plain tar);
nothing is extracted to disk, every size is bounded by what the official layouts hold, and read() returns
only after the whole archive was checked, so a caller writes nothing for a bad archive.
"""

import bz2
import contextlib
import gzip
import io
import lzma
import math
import pickle
import posixpath
import queue
import re
import sys
import tarfile
import threading
import zlib

import numpy as np

from stages.cli import UserError
from stages.datasets import NUM_CLASSES

PIXELS = 32 * 32 * 3  # bytes per image
SPLITS = ("train", "test")
# dataset -> layout -> member paths (inside the archive) and how to read them
LAYOUTS = {
    "cifar10": {
        "python": {
            "train": [f"cifar-10-batches-py/data_batch_{i}" for i in range(1, 6)],
            "test": ["cifar-10-batches-py/test_batch"],
            "meta": "cifar-10-batches-py/batches.meta",
        },
        "binary": {
            "train": [f"cifar-10-batches-bin/data_batch_{i}.bin" for i in range(1, 6)],
            "test": ["cifar-10-batches-bin/test_batch.bin"],
            "meta": "cifar-10-batches-bin/batches.meta.txt",
        },
    },
    "cifar100": {
        "python": {
            "train": ["cifar-100-python/train"],
            "test": ["cifar-100-python/test"],
            "meta": "cifar-100-python/meta",
        },
        "binary": {
            "train": ["cifar-100-binary/train.bin"],
            "test": ["cifar-100-binary/test.bin"],
            "meta": {
                "fine": "cifar-100-binary/fine_label_names.txt",
                "coarse": "cifar-100-binary/coarse_label_names.txt",
            },
        },
    },
}


# --- size bounds: what the official layouts can hold, so that a hostile archive is refused early and cheaply

# images in one member: cifar-10 has 10,000 per batch; cifar-100 50,000 train and 10,000 test in one member
# each
MAX_IMAGES = {
    ("cifar10", "train"): 10_000,
    ("cifar10", "test"): 10_000,
    ("cifar100", "train"): 50_000,
    ("cifar100", "test"): 10_000,
}
LABEL_BYTES = {"cifar10": 1, "cifar100": 2}  # per binary record
PICKLE_SLACK = (
    256  # bytes per image besides its pixels in a python batch (labels, file names, opcodes; official: ~32)
)
META_MAX = 1 << 16  # a class-names member (official: < 2 KB)
OTHER_MAX = 1 << 20  # any other member (official: readme.html, 88 bytes)
NAME_MAX = 64  # characters of a class name (official: at most 22)


def _member_limits():
    """{member name: most bytes it may hold} for every member of every layout of every dataset."""
    limits = {}
    for dataset, layouts in LAYOUTS.items():
        for layout_name, layout in layouts.items():
            for split in SPLITS:
                n = MAX_IMAGES[dataset, split]
                size = (
                    n * (PIXELS + PICKLE_SLACK) + META_MAX
                    if layout_name == "python"
                    else n * (PIXELS + LABEL_BYTES[dataset])
                )
                limits.update(dict.fromkeys(layout[split], size))
            meta = layout["meta"]
            limits.update(dict.fromkeys(meta.values() if isinstance(meta, dict) else [meta], META_MAX))
    return limits


MEMBER_MAX = _member_limits()
# the whole decompressed tar: the largest layout's members plus room for headers, small files and padding
STREAM_MAX = (
    max(sum(MEMBER_MAX[m] for s in SPLITS for m in lay[s]) for ls in LAYOUTS.values() for lay in ls.values())
    + 64 * OTHER_MAX
)


# --- the restricted unpickler -------------------------------------------------------------------------------


class _NdarrayName:
    """numpy.ndarray as a pickle names it: _reconstruct's first argument, never called (a direct call builds
    an array of any shape and strides over any buffer: 10^15 images with zero strides from 8 bytes)."""

    __slots__ = ()

    def __call__(self, *args, **kwargs):
        raise pickle.UnpicklingError("refused call of numpy.ndarray (arrays come only through _reconstruct)")


_NDARRAY = _NdarrayName()
_DTYPE = re.compile(r"[<>|=]?[biuf][1248]")  # plain numeric dtypes, as numpy pickles them ('u1', 'i8', ...)


class _Array(np.ndarray):
    """What the unpickler builds for an ndarray: its state is checked before numpy uses it (see
    _array_state)."""

    def __setstate__(self, state):
        super().__setstate__(_array_state(state))


def _array_state(state):
    """numpy's array state (version, shape, dtype, fortran, bytes), refused unless its bytes hold exactly the
    shape's elements of a plain numeric dtype: no strides, objects, sub-arrays or claims larger than the
    data."""
    ok = isinstance(state, tuple) and len(state) == 5
    if ok:
        _, shape, dtype, _, data = state
        ok = (
            isinstance(shape, tuple)
            and len(shape) <= 4
            and all(type(n) is int and n >= 0 for n in shape)
            and isinstance(dtype, np.dtype)
            and dtype.kind in "biuf"
            and dtype.subdtype is None
            and dtype.names is None
            and isinstance(data, bytes)
            and math.prod(shape) * dtype.itemsize == len(data)
        )
    if not ok:
        raise pickle.UnpicklingError(
            "refused array state (only plain numeric arrays whose bytes match their shape)"
        )
    return state


def _reconstruct(cls, shape, dtype):
    """numpy pickles an array as _reconstruct(ndarray, (0,), b'b') followed by BUILD with its state."""
    if cls is not _NDARRAY or shape != (0,):
        raise pickle.UnpicklingError("refused array reconstruction with unusual arguments")
    return np.ndarray.__new__(_Array, (0,), np.uint8)


def _dtype(spec, align=False, copy=True):
    if not (isinstance(spec, str) and _DTYPE.fullmatch(spec)):
        raise pickle.UnpicklingError("refused dtype: only plain numeric ones are allowed")
    return np.dtype(spec, align=False, copy=True)  # a copy: BUILD sets its state, never the shared one's


# The unpickler's work is charged per opcode: OP_COST bytes for each, more than any object one opcode builds
# from a few bytes of the pickle (an empty set: 216 bytes) with its stack slot and memo entry, plus the size
# of each string, bytes or integer an opcode reads from the pickle (sys.getsizeof), and of each FRAME. A
# member is refused once the charge passes BUDGET_PER_BYTE x its size + BUDGET_BASE: 8 M one-byte EMPTY_SET
# opcodes (8 MB) once built 1.9 GB of sets; the official batches (one 30 MB bytes object, ~4 small opcodes per
# image) are charged ~1.4x their size.
OP_COST = 256
BUDGET_PER_BYTE, BUDGET_BASE = 2, 1 << 20
_DATA_OPS = {
    op[0]
    for op in (
        pickle.STRING, pickle.BINSTRING, pickle.SHORT_BINSTRING, pickle.BINBYTES, pickle.SHORT_BINBYTES,
        pickle.BINBYTES8, pickle.UNICODE, pickle.BINUNICODE, pickle.SHORT_BINUNICODE, pickle.BINUNICODE8,
        pickle.BYTEARRAY8, pickle.LONG, pickle.LONG1, pickle.LONG4,
    )
}  # fmt: skip


def _charged(code, op):
    """op (an unpickler's dispatch entry) that charges its work to the unpickler's budget first."""

    def charged(self):
        op(self)
        cost = OP_COST
        if code in _DATA_OPS:
            cost += sys.getsizeof(self.stack[-1])
        elif code == pickle.FRAME[0] and self._unframer.current_frame is not None:
            cost += len(self._unframer.current_frame.getvalue())
        self.spent += cost
        if self.spent > self.budget:
            raise pickle.UnpicklingError(
                f"refused: it builds more than {self.budget} bytes of objects ({BUDGET_PER_BYTE} x the "
                f"member's size + {BUDGET_BASE >> 20} MiB) before its end; an official batch needs ~1.4 x"
            )

    return charged


class _NumpyOnlyUnpickler(pickle._Unpickler):
    """Rebuilds plain numpy arrays and nothing else: any other global is refused, BUILD only reaches arrays
    and dtypes. The pure-Python unpickler: its memo is a dict, where the C one allocates up to the largest
    memo index a pickle names (4 GB for a 9-byte pickle). Its work is bounded by its budget (see OP_COST)."""

    def __init__(self, raw, **kwargs):
        super().__init__(io.BytesIO(raw), **kwargs)
        self.spent, self.budget = 0, BUDGET_PER_BYTE * len(raw) + BUDGET_BASE

    GLOBALS = {
        ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
        ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
        ("numpy", "ndarray"): _NDARRAY,
        ("numpy", "dtype"): _dtype,
    }

    def find_class(self, module, name):
        if (module, name) not in self.GLOBALS:
            raise pickle.UnpicklingError(f"refused global {module}.{name}")
        return self.GLOBALS[module, name]

    def load_build(self):
        if not isinstance(self.stack[-2], (_Array, np.dtype)):
            raise pickle.UnpicklingError(f"refused BUILD on {type(self.stack[-2]).__name__}")
        super().load_build()

    dispatch = {
        code: _charged(code, op)
        for code, op in {**pickle._Unpickler.dispatch, pickle.BUILD[0]: load_build}.items()
    }


# --- the archive: one streaming pass ------------------------------------------------------------------------

EXTENDED_MAX = 4096  # bytes of a pax or GNU long-name header (the official archives have none)


class _Refused(Exception):
    """An archive refused for what it holds, not for damage: `use the official archive`."""


class _StrictTarInfo(tarfile.TarInfo):
    """tarfile ends an archive quietly at a damaged header (what follows is lost without a word): an error
    here. Extended headers are bounded before tarfile reads them: Python < 3.11.10 parses a pax header with a
    quadratic regex (CVE-2024-6232), hours of CPU for one 1 MB header."""

    def _proc_member(self, tarfile_):
        if (
            self.type
            in (
                tarfile.XHDTYPE,
                tarfile.XGLTYPE,
                tarfile.SOLARIS_XHDTYPE,
                tarfile.GNUTYPE_LONGNAME,
                tarfile.GNUTYPE_LONGLINK,
            )
            and self.size > EXTENDED_MAX
        ):
            raise _Refused(
                f"an extended tar header of {self.size} bytes (pax or GNU long name), more than the "
                f"{EXTENDED_MAX} any CIFAR archive needs"
            )
        return super()._proc_member(tarfile_)

    @classmethod
    def frombuf(cls, buf, encoding, errors):
        try:
            return super().frombuf(buf, encoding, errors)
        except (tarfile.InvalidHeaderError, tarfile.TruncatedHeaderError) as e:
            raise tarfile.SubsequentHeaderError(f"damaged tar header ({e})") from None


class _Bounded:
    """The decompressed tar stream, refused once more than STREAM_MAX bytes came out of it (a bomb stops
    early)."""

    def __init__(self, f, path):
        self.f, self.path, self.total = f, path, 0

    def read(self, n):
        data = self.f.read(n)
        self.total += len(data)
        if self.total > STREAM_MAX:
            raise UserError(
                f"{self.path}: refused: it decompresses to more than {STREAM_MAX / 1e6:.0f} MB, more "
                f"than any CIFAR archive holds; use the official archive"
            )
        return data


class _ReadAhead:
    """Reads f in a thread, up to 8 MB ahead: zlib, bz2 and lzma release the GIL, so decompression runs beside
    the decoding in the caller's thread (the pass then takes little more than the decompression alone)."""

    CHUNK, AHEAD = 1 << 20, 8

    def __init__(self, f):
        self.chunks, self.buf, self.eof = queue.Queue(self.AHEAD), b"", False
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._fill, args=(f,), daemon=True)
        self.thread.start()

    def _fill(self, f):
        try:
            while self._put(chunk := f.read(self.CHUNK)) and chunk:
                pass
        except BaseException as e:  # handed to the reader, raised there
            self._put(e)

    def _put(self, item):
        while not self.stopped.is_set():
            with contextlib.suppress(queue.Full):
                self.chunks.put(item, timeout=0.1)
                return True
        return False

    def read(self, n):
        parts, have = [self.buf], len(self.buf)
        while have < n and not self.eof:
            item = self.chunks.get()
            if isinstance(item, BaseException):
                raise item
            self.eof = not item
            parts.append(item)
            have += len(item)
        data = b"".join(parts)
        self.buf = data[n:]
        return data[:n]

    def close(self):
        self.stopped.set()
        self.thread.join()


# compressions by magic bytes; each module's file object reads every member (gzip) or stream (bz2, xz) in turn
DECOMPRESS = (
    (b"\x1f\x8b", lambda f: gzip.GzipFile(fileobj=f, mode="rb")),
    (b"BZh", bz2.BZ2File),
    (b"\xfd7zXZ\x00", lzma.LZMAFile),
)
# archives of other formats, by magic bytes: named as what they are (they are not damaged tars)
OTHER_FORMATS = (
    (b"PK\x03\x04", "a zip"),
    (b"PK\x05\x06", "a zip"),
    (b"\x28\xb5\x2f\xfd", "a zstd"),
    (b"\x04\x22\x4d\x18", "an lz4"),
    (b"7z\xbc\xaf\x27\x1c", "a 7z"),
    (b"Rar!\x1a\x07", "a rar"),
)
STREAM_ERRORS = (tarfile.TarError, EOFError, OSError, zlib.error, lzma.LZMAError)


class Archive:
    """A tar archive read once, front to back: every member is checked as it comes, the wanted ones are handed
    over, and the stream is read to its end (truncation, bad CRC, data after the tar) before the pass is
    over."""

    def __init__(self, path, name=None):
        self.file, self.path = path, name or path  # read, and named in messages
        self.names = set()  # every file member, without a leading "./"

    def _guard(self, fn, *args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except _Refused as e:
            raise UserError(f"{self.path}: refused: {e}; use the official archive") from None
        except STREAM_ERRORS as e:
            raise UserError(
                f"{self.path}: not a readable tar archive ({' '.join(str(e).split())}); "
                f"delete it and download it again"
            ) from None

    @contextlib.contextmanager
    def _tar(self):
        with contextlib.ExitStack() as stack:
            f = stack.enter_context(self._guard(open, self.file, "rb"))
            head = self._guard(f.read, 6)
            f.seek(0)
            for magic, kind in OTHER_FORMATS:
                if head.startswith(magic):
                    raise UserError(
                        f"{self.path}: {kind} archive, not a tar; use the official archive (a .tar.gz), or "
                        f"unpack this one and pack it again with `tar czf`"
                    )
            for magic, opener in DECOMPRESS:
                if head.startswith(magic):
                    f = stack.enter_context(opener(f))
                    f = stack.enter_context(contextlib.closing(_ReadAhead(f)))
            # "r|": a stream, never seeking back; 1 MB reads
            yield self._guard(
                tarfile.open,
                fileobj=_Bounded(f, self.path),
                mode="r|",
                bufsize=1 << 20,
                tarinfo=_StrictTarInfo,
            )

    def stream(self, wanted):
        """Yields (name, bytes) of the members named in wanted, in archive order."""
        with self._tar() as tar:
            while (m := self._guard(tar.next)) is not None:
                name = self._check(m)
                if name in wanted:
                    yield name, self._guard(lambda: tar.extractfile(m).read())
            # tar ends at its first zero block; what follows must be zero padding (gzip: read to the last CRC)
            while chunk := self._guard(tar.fileobj.read, 1 << 20):
                if chunk.strip(b"\0"):
                    raise UserError(
                        f"{self.path}: data after the end of the tar archive (several archives "
                        f"concatenated?); use the official archive"
                    )

    def _check(self, m):
        """The member's name, normalised (`a//b`, `./a/./b` and `a/b/` are all `a/b`: one name for what tar,
        Keras and this reader would each take), after the member's type, path and size were checked."""
        name, path = posixpath.normpath(m.name).removeprefix("./"), self.path
        if m.name.startswith("/") or ".." in m.name.split("/"):
            raise UserError(
                f"{path}: refused member {m.name!r}: absolute or '..' path; use the official archive"
            )
        if not (m.isfile() or m.isdir()):
            raise UserError(
                f"{path}: refused member {m.name!r}: links and devices are not allowed; "
                f"use the official archive"
            )
        if m.isfile():
            if name in self.names:
                raise UserError(
                    f"{path}: refused member {m.name!r}: it appears more than once; use the official archive"
                )
            limit = MEMBER_MAX.get(name, OTHER_MAX)
            if m.size > limit:
                raise UserError(
                    f"{path}: refused member {m.name!r}: {m.size} bytes, more than the {limit} "
                    f"it can hold in an official CIFAR archive; use the official archive"
                )
            self.names.add(name)
        return name


def detect_layout(archive, dataset):
    """The layout is told by the members the archive holds, never by its file name."""
    for name, layout in LAYOUTS[dataset].items():
        if layout["train"][0] in archive.names:
            return name
    others = [
        d
        for d, ls in LAYOUTS.items()
        if d != dataset
        for lay in ls.values()
        if lay["train"][0] in archive.names
    ]
    hint = f" (it looks like {others[0]}: check data.{dataset}.url)" if others else ""
    raise UserError(f"{archive.path}: not a {dataset} archive in the python or binary layout{hint}")


# --- decoding one member ------------------------------------------------------------------------------------


def _what(v):
    """A short description of a value found where another was expected (never the repr of a huge object)."""
    if isinstance(v, (float, bool)) or (isinstance(v, (str, bytes)) and len(v) <= 40):
        return f"{type(v).__name__} {v!r}"
    return f"{type(v).__name__} of shape {v.shape}" if isinstance(v, np.ndarray) else type(v).__name__


def _unpickle(where, raw, *keys):
    """The values of keys in a pickled dict, loaded with plain numpy arrays as the only globals allowed."""
    try:
        d = _NumpyOnlyUnpickler(raw, encoding="bytes").load()
        return [d[k] for k in keys]
    except Exception as e:  # a hostile or damaged pickle can raise almost anything
        raise UserError(
            f"{where}: not a CIFAR pickle with keys {[k.decode() for k in keys]} "
            f"({type(e).__name__}: {' '.join(str(e).split())[:200]}); use the official archive"
        ) from None


def _labels(where, y):
    """(N,) int64 from a list of Python ints (as the official files hold) or a 1-D integer array; nothing else
    is converted (a nested list could stand for billions of values, a float would be truncated)."""
    if isinstance(y, np.ndarray) and y.ndim == 1 and y.dtype.kind in "iu":
        return y.astype(np.int64)
    if not isinstance(y, list):
        found = _what(y)
    elif bad := [v for v in y if type(v) is not int]:
        found = _what(bad[0])
    else:
        try:
            return np.array(y, dtype=np.int64)
        except OverflowError:
            found = "an integer beyond int64"
    raise UserError(f"{where}: labels must be a list of integers, found {found}; use the official archive")


def _decode_python(where, raw, label_key):
    x, y = _unpickle(where, raw, b"data", label_key)
    if not (isinstance(x, _Array) and x.dtype == np.uint8 and x.ndim == 2 and x.shape[1] == PIXELS):
        raise UserError(
            f"{where}: images must be {PIXELS} uint8 bytes each, got {_what(x)}; use the official archive"
        )
    return x.view(np.ndarray), _labels(where, y)


def _decode_binary(where, raw, label_offset, label_bytes):
    raw = np.frombuffer(raw, dtype=np.uint8)
    record = label_bytes + PIXELS
    if raw.size == 0 or raw.size % record:
        raise UserError(
            f"{where}: {raw.size} bytes is not a whole number of {record}-byte records; "
            f"use the official archive"
        )
    rows = raw.reshape(-1, record)
    return rows[:, label_bytes:], rows[:, label_offset].astype(np.int64)


def _class_names(where, names, num_classes):
    """names (str) checked: num_classes of them, none empty, none repeated."""
    if len(names) != num_classes:
        raise UserError(
            f"{where}: {len(names)} class names, expected {num_classes}; use the official archive"
        )
    seen = set()
    for n in names:
        if not n or n in seen or not n.isprintable() or len(n) > NAME_MAX:
            why = (
                "empty"
                if not n
                else "repeated"
                if n in seen
                else f"longer than {NAME_MAX} characters"
                if len(n) > NAME_MAX
                else "not printable (control characters or escape sequences)"
            )
            raise UserError(f"{where}: class name {n[:NAME_MAX]!r} is {why}; use the official archive")
        seen.add(n)
    return names


def _python_names(where, raw, key):
    names = _unpickle(where, raw, key)[0]
    if not (isinstance(names, list) and all(isinstance(n, bytes) for n in names)):
        raise UserError(
            f"{where}: class names must be a list of byte strings, found {_what(names)}; "
            f"use the official archive"
        )
    return [n.decode("utf-8", "replace") for n in names]


class _Split:
    """One split's images as members arrive, written straight into one array sized for the most images the
    layout holds (pages never written are never touched), so the peak is the arrays plus one member."""

    def __init__(self, members, per_member):
        self.members = members
        self.x = np.empty((len(members) * per_member, 32, 32, 3), np.uint8)
        self.ys, self.blocks, self.filled = [], [], 0

    def add(self, member, x, y):
        n = self.filled
        planes, nhwc = x.reshape(-1, 3, 1024), self.x[n : n + len(x)].reshape(-1, 1024, 3)
        for c in range(3):  # R,G,B planes -> NHWC, a plane at a time (2.7x faster than one strided transpose)
            nhwc[:, :, c] = planes[:, c]
        self.ys.append(y)
        self.blocks.append((self.members.index(member), n, len(x)))
        self.filled += len(x)

    def arrays(self):
        x, y = self.x[: self.filled], np.concatenate(self.ys) if self.ys else np.empty(0, np.int64)
        if self.blocks != sorted(
            self.blocks
        ):  # members tarred out of order: the same images in the official order
            rows = np.concatenate([np.arange(n, n + k) for _, n, k in sorted(self.blocks)])
            x, y = x[rows], y[rows]
        return x, y


def _decoders(path, dataset, layout_name, labels):
    """(decode(member, raw) -> (x (N, 3072) uint8, y (N,) int64), class names(raw) -> [str], meta member)."""
    layout = LAYOUTS[dataset][layout_name]
    if layout_name == "python":
        label_key = b"labels" if dataset == "cifar10" else f"{labels}_labels".encode()
        name_key = b"label_names" if dataset == "cifar10" else f"{labels}_label_names".encode()
        meta = layout["meta"]
        return (
            lambda m, raw: _decode_python(f"{path}: {m}", raw, label_key),
            lambda raw: _python_names(f"{path}: {meta}", raw, name_key),
            meta,
        )
    # cifar-10 records: <label><3072 px>; cifar-100 records: <coarse><fine><3072 px>
    offset, nbytes = (0, 1) if dataset == "cifar10" else ({"coarse": 0, "fine": 1}[labels], 2)
    meta = layout["meta"] if dataset == "cifar10" else layout["meta"][labels]
    return (
        lambda m, raw: _decode_binary(f"{path}: {m}", raw, offset, nbytes),
        lambda raw: [s.strip() for s in raw.decode(errors="replace").splitlines() if s.strip()],
        meta,
    )


def _check(where, x, y, num_classes, most):
    if len(y) != len(x):
        raise UserError(f"{where}: {len(x)} images but {len(y)} labels; use the official archive")
    if len(x) > most:
        raise UserError(
            f"{where}: {len(x)} images, more than the {most} this member holds; use the official archive"
        )
    if len(y) and (y.min() < 0 or y.max() >= num_classes):
        raise UserError(
            f"{where}: labels must lie in 0..{num_classes - 1}, found {y.min()}..{y.max()}; "
            f"use the official archive"
        )


def _every_class(path, splits, classes):
    """A class with no images in a split would train or score nothing for it, without a word: refused."""
    for split, (_, y) in splits.items():
        empty = np.flatnonzero(np.bincount(y, minlength=len(classes)) == 0)
        if empty.size:
            more = f" and {empty.size - 1} more classes" if empty.size > 1 else ""
            raise UserError(
                f"{path}: no {split} images of class {empty[0]} ({classes[empty[0]]!r}){more}; "
                f"is this the complete official archive?"
            )


def read(path, dataset, labels="fine", name=None):
    """Returns ({"train": (x, y), "test": (x, y)}, class names); x (N, 32, 32, 3) uint8 NHWC, y (N,) int64.
    One pass over the archive; returns only once all of it was read and checked (else a UserError that names
    the archive as `name`, default its path)."""
    num_classes = NUM_CLASSES[(dataset, labels)]
    archive = Archive(path, name)
    path = archive.path
    decoders = {lay: _decoders(path, dataset, lay, labels) for lay in LAYOUTS[dataset]}
    roles = {m: (lay, s) for lay, layout in LAYOUTS[dataset].items() for s in SPLITS for m in layout[s]}
    roles.update({meta: (lay, "meta") for lay, (_, _, meta) in decoders.items()})
    chosen, splits, classes = None, None, None
    for member, raw in archive.stream(roles):
        lay, role = roles[member]
        if chosen is None:  # the first member of a layout fixes it
            chosen = lay
            splits = {s: _Split(LAYOUTS[dataset][lay][s], MAX_IMAGES[dataset, s]) for s in SPLITS}
        elif lay != chosen:
            raise UserError(
                f"{path}: {member}: members of both the python and the binary layout; "
                f"use the official archive"
            )
        decode, names_of, _ = decoders[lay]
        if role == "meta":
            classes = _class_names(f"{path}: {member}", names_of(raw), num_classes)
            continue
        x, y = decode(member, raw)
        del raw
        _check(f"{path}: {member}", x, y, num_classes, MAX_IMAGES[dataset, role])
        splits[role].add(member, x, y)
    detected = detect_layout(archive, dataset)
    missing = [m for m, (lay, _) in roles.items() if lay == detected and m not in archive.names]
    if missing:
        raise UserError(f"{path}: missing member {missing[0]!r}; is this the official archive?")
    result = {s: splits[s].arrays() for s in SPLITS}
    _every_class(path, result, classes)
    return result, classes
