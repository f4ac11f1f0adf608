"""Peak memory of stages/cifar.py's read() on the largest archives it accepts (docs/faults.md quotes it).

    python benchmarks/archive_worst_case.py OUT.txt

Two cifar-100 python-layout archives at the bounds, gzipped: 50,000 + 10,000 random images, each member padded
to within 16 KB of the most bytes it may hold (MEMBER_MAX), (a) with long file names, (b) with one-byte
EMPTY_SET opcodes, as many as the unpickler's budget lets through (OP_COST bytes each, left on the stack).
Each read runs in a fresh process; its peak resident memory is /proc/self/status VmHWM.
"""

import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from stages import cifar  # noqa: E402
from tests.archives import _pickle, class_names, to_planes, write_archive  # noqa: E402

CHILD = """
import sys, time
from stages import cifar
t = time.perf_counter()
cifar.read(sys.argv[1], "cifar100")
peak = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM:"))
print(time.perf_counter() - t, peak)
"""


def member(split, n, rng, filler):
    """A cifar-100 member of n random images, padded by filler ('names' or 'sets') to ~16 KB under its
    bound."""
    fine = rng.integers(0, 100, n)
    batch = {
        b"batch_label": split.encode(),
        b"fine_labels": fine.tolist(),
        b"coarse_labels": (fine // 5).tolist(),
        b"data": to_planes(rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)),
    }
    limit = cifar.MEMBER_MAX[f"cifar-100-python/{split}"] - (16 << 10)
    if filler == "names":
        base = len(
            _pickle({**batch, b"filenames": [b"%06d" % i for i in range(n)]})
        )  # distinct: memoized each
        k = min(255, 6 + (limit - base) // n)  # SHORT_BINSTRING: at most 255 bytes
        return _pickle({**batch, b"filenames": [b"%0*d" % (k, i) for i in range(n)]})
    raw = _pickle({**batch, b"filenames": [b"x.png"] * n})
    charged = cifar._NumpyOnlyUnpickler(raw, encoding="bytes")
    charged.load()
    # s sets: the member grows by s bytes, its budget by BUDGET_PER_BYTE x s, its charge by OP_COST x s
    room = cifar.BUDGET_PER_BYTE * len(raw) + cifar.BUDGET_BASE - charged.spent
    sets = min(limit - len(raw), room // (cifar.OP_COST - cifar.BUDGET_PER_BYTE) - 16)
    return b"\x80\x02" + pickle_empty_set() * sets + raw[2:]


def pickle_empty_set():
    import pickle

    return pickle.EMPTY_SET


def main():
    out = Path(sys.argv[1])
    rng = np.random.default_rng(0)
    lines = [
        f"python {sys.version.split()[0]}, numpy {np.__version__}; read() in a fresh process, gzipped archive"
    ]
    with tempfile.TemporaryDirectory() as tmp:
        for filler in ("names", "sets"):
            members = {
                f"cifar-100-python/{s}": member(s, n, rng, filler)
                for s, n in (("train", 50_000), ("test", 10_000))
            }
            members["cifar-100-python/meta"] = _pickle(
                {
                    b"fine_label_names": [c.encode() for c in class_names("cifar100", "fine")],
                    b"coarse_label_names": [c.encode() for c in class_names("cifar100", "coarse")],
                }
            )
            path = write_archive(Path(tmp) / f"{filler}.tar.gz", members)
            t = time.perf_counter()
            p = subprocess.run(
                [sys.executable, "-c", CHILD, str(path)],
                capture_output=True,
                text=True,
                cwd=Path(__file__).resolve().parents[1],
            )
            if p.returncode != 0:
                raise SystemExit(f"{filler}: read() failed: {p.stderr[-2000:]}")
            seconds, peak_kb = p.stdout.split()
            sizes = ", ".join(f"{k.split('/')[1]} {len(v) / 1e6:.1f} MB" for k, v in members.items())
            lines.append(
                f"{filler}: members {sizes}; peak RSS {int(peak_kb) / 1024:.0f} MB, read "
                f"{float(seconds):.1f} s (process {time.perf_counter() - t:.1f} s)"
            )
            print(lines[-1], flush=True)
    out.write_text("\n".join(lines) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
