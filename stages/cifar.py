"""The two official CIFAR archive layouts, read without trusting the archive.

Python layout: protocol-2 pickles of dicts (b"data": (N, 3072) uint8, b"labels" or b"fine_labels"/
b"coarse_labels"), loaded through an unpickler that can only rebuild numpy arrays.
Binary layout: fixed-size records <label>[<fine>]<3072 px>.
Pixels are stored as R, G, B planes of 32x32, row-major: (N, 3072) -> (N, 3, 32, 32) -> NHWC (N, 32, 32, 3).
Members are read into memory from the tar stream; nothing is ever extracted to disk.
"""
import io
import pickle
import tarfile
import zlib

import numpy as np

from stages.params import UserError

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
            "meta": {"fine": "cifar-100-binary/fine_label_names.txt",
                     "coarse": "cifar-100-binary/coarse_label_names.txt"},
        },
    },
}
NUM_CLASSES = {("cifar10", "fine"): 10, ("cifar100", "fine"): 100, ("cifar100", "coarse"): 20}


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Rebuilds numpy arrays and nothing else: any other global in the pickle is refused."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"), ("numpy", "dtype"),
    }

    def find_class(self, module, name):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refused global {module}.{name}")
        return getattr(np, name) if module == "numpy" else np._core.multiarray._reconstruct


class Archive:
    """A tar archive checked member by member before anything is decoded; read in one streaming pass."""

    def __init__(self, path):
        self.path = path
        self.sizes = {}  # member name -> bytes
        with self._open("r:*") as tar:  # pass 1: every header, and the whole stream (catches truncation)
            for m in self._guard(tar.getmembers):
                name = m.name
                if name.startswith("/") or ".." in name.split("/"):
                    raise UserError(f"{path}: refused member {name!r}: absolute or '..' path")
                if not (m.isfile() or m.isdir()):
                    raise UserError(f"{path}: refused member {name!r}: links and devices are not allowed")
                if m.isfile():
                    if name.removeprefix("./") in self.sizes:
                        raise UserError(f"{path}: refused member {name!r}: it appears more than once")
                    self.sizes[name.removeprefix("./")] = m.size
            # tarfile stops quietly at a garbled header and never reads a gzip trailer: read on to the end,
            # so that a bad CRC or a cut file is an error here
            while self._guard(tar.fileobj.read, 1 << 20):
                pass

    def _open(self, mode):
        return self._guard(tarfile.open, self.path, mode)

    def _guard(self, fn, *args):
        try:
            return fn(*args)
        except (tarfile.TarError, EOFError, OSError, zlib.error) as e:
            raise UserError(f"{self.path}: not a readable tar archive ({' '.join(str(e).split())}); "
                            f"delete it and download it again")

    def stream(self, names):
        """Yields (name, bytes) for the wanted members, in archive order (pass 2: no seeking back in gzip)."""
        missing = [n for n in names if n not in self.sizes]
        if missing:
            raise UserError(f"{self.path}: missing member {missing[0]!r}; is this the official archive?")
        with self._open("r|*") as tar:
            for m in tar:
                name = m.name.removeprefix("./")
                if m.isfile() and name in names:
                    yield name, self._guard(lambda: tar.extractfile(m).read())


def detect_layout(archive, dataset):
    """The layout is told by the members the archive holds, never by its file name."""
    for name, layout in LAYOUTS[dataset].items():
        if layout["train"][0] in archive.sizes:
            return name
    others = [d for d, ls in LAYOUTS.items() if d != dataset
              for lay in ls.values() if lay["train"][0] in archive.sizes]
    hint = f" (it looks like {others[0]}: check data.{dataset}.url)" if others else ""
    raise UserError(f"{archive.path}: not a {dataset} archive in the python or binary layout{hint}")


def _check(path, member, x, y, num_classes):
    if x.ndim != 2 or x.shape[1] != PIXELS or x.dtype != np.uint8:
        raise UserError(f"{path}: {member}: images must be {PIXELS} uint8 bytes each, got {x.dtype} {x.shape}")
    if len(y) != len(x):
        raise UserError(f"{path}: {member}: {len(x)} images but {len(y)} labels")
    if len(y) and (y.min() < 0 or y.max() >= num_classes):
        raise UserError(f"{path}: {member}: labels must lie in 0..{num_classes - 1}, found {y.min()}..{y.max()}")


def _unpickle(path, member, raw, *keys):
    """The values of keys in a pickled dict, loaded with numpy arrays as the only globals allowed."""
    try:
        d = _NumpyOnlyUnpickler(io.BytesIO(raw), encoding="bytes").load()
        return [d[k] for k in keys]
    except Exception as e:  # a hostile or damaged pickle can raise almost anything
        raise UserError(f"{path}: {member}: not a CIFAR pickle with keys {[k.decode() for k in keys]} "
                        f"({type(e).__name__}: {e})")


def _decode_python(path, member, raw, label_key):
    x, y = _unpickle(path, member, raw, b"data", label_key)
    try:
        return np.asarray(x), np.asarray(y, dtype=np.int64)
    except (TypeError, ValueError, OverflowError) as e:
        raise UserError(f"{path}: {member}: labels must be a list of integers ({type(e).__name__}: {e})")


def _decode_binary(path, member, raw, label_offset, label_bytes):
    raw = np.frombuffer(raw, dtype=np.uint8)
    record = label_bytes + PIXELS
    if raw.size == 0 or raw.size % record:
        raise UserError(f"{path}: {member}: {raw.size} bytes is not a whole number of {record}-byte records")
    rows = raw.reshape(-1, record)
    return rows[:, label_bytes:], rows[:, label_offset].astype(np.int64)


def read(path, dataset, labels="fine"):
    """Returns ({"train": (x, y), "test": (x, y)}, class names); x (N, 32, 32, 3) uint8 NHWC, y (N,) int64."""
    num_classes = NUM_CLASSES[(dataset, labels)]
    archive = Archive(path)
    layout_name = detect_layout(archive, dataset)
    layout = LAYOUTS[dataset][layout_name]
    if layout_name == "python":
        label_key = b"labels" if dataset == "cifar10" else f"{labels}_labels".encode()
        decode = lambda m, raw: _decode_python(path, m, raw, label_key)  # noqa: E731
        meta = layout["meta"]
        name_key = b"label_names" if dataset == "cifar10" else f"{labels}_label_names".encode()
        parse_names = lambda raw: [n.decode() for n in _unpickle(path, meta, raw, name_key)[0]]  # noqa: E731
    else:
        # cifar-10 records: <label><3072 px>; cifar-100 records: <coarse><fine><3072 px>
        offset, nbytes = (0, 1) if dataset == "cifar10" else ({"coarse": 0, "fine": 1}[labels], 2)
        decode = lambda m, raw: _decode_binary(path, m, raw, offset, nbytes)  # noqa: E731
        meta = layout["meta"] if dataset == "cifar10" else layout["meta"][labels]
        parse_names = lambda raw: [s.strip() for s in raw.decode(errors="replace").splitlines() if s.strip()]  # noqa: E731
    split_of = {m: split for split in ("train", "test") for m in layout[split]}
    # Preallocated from the members' sizes (an upper bound: each image takes >= 3072 bytes), so the peak
    # memory is the arrays plus one member, not the arrays twice.
    xs = {s: np.empty((sum(archive.sizes.get(m, 0) for m in layout[s]) // PIXELS, 32, 32, 3), np.uint8)
          for s in SPLITS}
    ys, blocks = {s: [] for s in SPLITS}, {s: [] for s in SPLITS}
    filled = dict.fromkeys(SPLITS, 0)
    classes = None
    for member, raw in archive.stream(set(split_of) | {meta}):
        if member == meta:
            classes = parse_names(raw)
            continue
        x, y = decode(member, raw)
        del raw
        _check(path, member, x, y, num_classes)
        split, n = split_of[member], filled[split_of[member]]
        xs[split][n:n + len(x)] = x.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)  # R,G,B planes -> NHWC
        ys[split].append(y)
        blocks[split].append((layout[split].index(member), n, len(x)))
        filled[split] += len(x)
    if len(classes) != num_classes:
        raise UserError(f"{path}: {meta}: {len(classes)} class names, expected {num_classes}")
    splits = {}
    for s in SPLITS:
        x, y = xs[s][:filled[s]], np.concatenate(ys[s])
        if blocks[s] != sorted(blocks[s]):  # members tarred out of order: the same images in the official order
            rows = np.concatenate([np.arange(n, n + k) for _, n, k in sorted(blocks[s])])
            x, y = x[rows], y[rows]
        splits[s] = x, y
    return splits, classes
