"""The tests' own CIFAR archives, in both official layouts, with learnable synthetic classes.

Class c is a fixed random colour plus a fixed random 4x4 pattern (upsampled), plus noise: a small
convnet separates them in a couple of epochs, and every pixel is known, so decoding can be checked
bit-exactly.
"""

import io
import pickle
import tarfile

import numpy as np

CIFAR10_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def class_names(dataset, labels="fine"):
    if dataset == "cifar10":
        return list(CIFAR10_NAMES)
    return (
        [f"fine_{i:03d}" for i in range(100)] if labels == "fine" else [f"coarse_{i:02d}" for i in range(20)]
    )


def make_images(num_classes, per_class, seed=0, noise=24.0):
    """x (N, 32, 32, 3) uint8 NHWC and y (N,) int64, shuffled, per_class images of each class."""
    rng = np.random.default_rng(seed)
    proto_rng = np.random.default_rng(1234)  # the classes' looks do not depend on the split's seed
    colours = proto_rng.uniform(40, 215, (num_classes, 1, 1, 3))
    patterns = np.kron(proto_rng.uniform(-40, 40, (num_classes, 4, 4, 1)), np.ones((1, 8, 8, 1)))
    y = np.repeat(np.arange(num_classes), per_class)
    rng.shuffle(y)
    x = colours[y] + patterns[y] + rng.normal(0, noise, (len(y), 32, 32, 3))
    return np.clip(np.rint(x), 0, 255).astype(np.uint8), y.astype(np.int64)


def to_planes(x):
    """NHWC -> (N, 3072) rows of R, G, B planes, row-major: the official storage order."""
    return x.transpose(0, 3, 1, 2).reshape(len(x), 3072)


def make_dataset(dataset, train_per_class=20, test_per_class=5, seed=0):
    """{"train": (x, fine, coarse), "test": (...)}; for cifar10 coarse is None."""
    n = 10 if dataset == "cifar10" else 100
    out = {}
    for split, per_class, s in (("train", train_per_class, seed), ("test", test_per_class, seed + 1)):
        x, y = make_images(n, per_class, s)
        out[split] = (x, y, None if dataset == "cifar10" else y // 5)
    return out


class _Py2Pickler(pickle._Pickler):
    """Writes bytes as Python 2 str opcodes, as the official cPickle-made batches do (Python 3's protocol 2
    would write them through _codecs.encode, which no CIFAR file contains and the loader refuses)."""

    def save_bytes(self, obj):
        n = len(obj)
        self.write(
            (pickle.SHORT_BINSTRING + bytes([n]) if n < 256 else pickle.BINSTRING + n.to_bytes(4, "little"))
            + obj
        )
        self.memoize(obj)

    dispatch = dict(pickle._Pickler.dispatch)
    dispatch[bytes] = save_bytes


def _pickle(obj, old_numpy_path=True):
    buf = io.BytesIO()
    _Py2Pickler(buf, protocol=2).dump(obj)
    raw = buf.getvalue()
    if old_numpy_path:  # the official files name numpy's array rebuilder by its pre-2.0 module path
        raw = raw.replace(
            b"cnumpy._core.multiarray\n_reconstruct\n", b"cnumpy.core.multiarray\n_reconstruct\n"
        )
    return raw


def add_member(tar, name, raw):
    info = tarfile.TarInfo(name)
    info.size = len(raw)
    tar.addfile(info, io.BytesIO(raw))


def python_members(dataset, data, old_numpy_path=True):
    """{member name: bytes} of the python layout."""
    if dataset == "cifar10":
        x, y, _ = data["train"]
        parts = np.array_split(np.arange(len(y)), 5)
        members = {
            f"cifar-10-batches-py/data_batch_{i + 1}": {
                b"batch_label": f"training batch {i + 1} of 5".encode(),
                b"labels": y[p].tolist(),
                b"data": to_planes(x[p]),
                b"filenames": [b"x.png"] * len(p),
            }
            for i, p in enumerate(parts)
        }
        xt, yt, _ = data["test"]
        members["cifar-10-batches-py/test_batch"] = {
            b"batch_label": b"testing batch 1 of 1",
            b"labels": yt.tolist(),
            b"data": to_planes(xt),
            b"filenames": [b"x.png"] * len(yt),
        }
        members["cifar-10-batches-py/batches.meta"] = {
            b"label_names": [n.encode() for n in CIFAR10_NAMES],
            b"num_cases_per_batch": len(y) // 5,
            b"num_vis": 3072,
        }
    else:
        members = {}
        for split in ("train", "test"):
            x, fine, coarse = data[split]
            members[f"cifar-100-python/{split}"] = {
                b"filenames": [b"x.png"] * len(fine),
                b"batch_label": split.encode(),
                b"fine_labels": fine.tolist(),
                b"coarse_labels": coarse.tolist(),
                b"data": to_planes(x),
            }
        members["cifar-100-python/meta"] = {
            b"fine_label_names": [n.encode() for n in class_names(dataset, "fine")],
            b"coarse_label_names": [n.encode() for n in class_names(dataset, "coarse")],
        }
    return {k: _pickle(v, old_numpy_path) for k, v in members.items()}


def binary_members(dataset, data):
    """{member name: bytes} of the binary layout."""

    def records(split):
        x, fine, coarse = data[split]
        labels = [fine[:, None]] if dataset == "cifar10" else [coarse[:, None], fine[:, None]]
        return np.concatenate([*(lab.astype(np.uint8) for lab in labels), to_planes(x)], axis=1).tobytes()

    if dataset == "cifar10":
        x, y, _ = data["train"]
        members, rows = {}, np.array_split(np.arange(len(y)), 5)
        full = np.frombuffer(records("train"), np.uint8).reshape(len(y), 3073)
        for i, r in enumerate(rows):
            members[f"cifar-10-batches-bin/data_batch_{i + 1}.bin"] = full[r].tobytes()
        members["cifar-10-batches-bin/test_batch.bin"] = records("test")
        members["cifar-10-batches-bin/batches.meta.txt"] = ("\n".join(CIFAR10_NAMES) + "\n\n").encode()
        return members
    return {
        "cifar-100-binary/train.bin": records("train"),
        "cifar-100-binary/test.bin": records("test"),
        "cifar-100-binary/fine_label_names.txt": "\n".join(class_names(dataset, "fine")).encode(),
        "cifar-100-binary/coarse_label_names.txt": "\n".join(class_names(dataset, "coarse")).encode(),
    }


def write_archive(path, members, compression="gz"):
    """A tar.<compression> archive holding members ({name: bytes}), in the given order."""
    with tarfile.open(path, f"w:{compression}" if compression else "w") as tar:
        for name, raw in members.items():
            add_member(tar, name, raw)
    return path


def write_cifar(path, dataset="cifar10", layout="python", train_per_class=20, test_per_class=5, seed=0):
    """Writes an archive; returns the data it holds (see make_dataset)."""
    data = make_dataset(dataset, train_per_class, test_per_class, seed)
    members = python_members(dataset, data) if layout == "python" else binary_members(dataset, data)
    write_archive(path, members)
    return data
