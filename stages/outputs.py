"""Every stage output is written under a temporary name beside its final path and renamed when complete,
so a killed stage never leaves a half-written file that looks finished. The temporary,
.<name>.<pid>.<random>.tmp, is removed on failure, Ctrl-C and SIGTERM (stages.cli); one left by SIGKILL is
removed by the next writer of the same output, once its pid is gone."""

import contextlib
import hashlib
import json
import math
import os
import re
import shutil
import tempfile
from pathlib import Path

from stages.cli import TEMPORARIES


def digest(path, algorithm):
    """The hex digest of a file's content, read in chunks (bounded memory for a 170 MB archive)."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, algorithm).hexdigest()


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def temporary(final):
    """A new temporary folder beside final, named after it and this process (see remove_stale); registered so
    that a stage ended by a signal removes it (stages.cli), and removed by discard()."""
    tmp = Path(
        tempfile.mkdtemp(prefix=f".{Path(final).name}.{os.getpid()}.", suffix=".tmp", dir=Path(final).parent)
    )
    TEMPORARIES.add(tmp)
    return tmp


def discard(tmp):
    shutil.rmtree(tmp, ignore_errors=True)
    TEMPORARIES.discard(tmp)


def remove_stale(final):
    """Removes the temporaries of final that killed writers left: .<name>.<pid>.<8 random>.tmp whose pid no
    longer runs, and the pid-less .<name>.<8 random>.tmp of older versions. A live writer's temporary stays,
    and other outputs' never match (the random part holds no dot, so `.a.json.<pid>.…` is not `a`'s)."""
    final = Path(final)
    stale = re.compile(re.escape(f".{final.name}.") + r"(?:(\d+)\.)?[a-z0-9_]{8}\.tmp")
    for p in final.parent.iterdir() if final.parent.is_dir() else []:
        match = stale.fullmatch(p.name)
        if match and not (match[1] and _alive(int(match[1]))):
            shutil.rmtree(p, ignore_errors=True) if p.is_dir() and not p.is_symlink() else p.unlink(
                missing_ok=True
            )


@contextlib.contextmanager
def atomic_path(final, directory=False):
    """Yields a temporary path in final's folder; on success it replaces final, on failure it is removed."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    remove_stale(final)
    tmp = temporary(final)
    os.chmod(tmp, 0o755)  # mkdtemp's 0700 would make a finished output folder private
    target = tmp if directory else tmp / final.name
    try:
        yield target
        if directory and final.exists():
            shutil.rmtree(final)
        os.replace(target, final)
    finally:
        discard(tmp)


def _finite(o):
    if isinstance(o, dict):
        return {k: _finite(v) for k, v in o.items()}
    if isinstance(o, list):
        return [_finite(v) for v in o]
    return None if isinstance(o, float) and not math.isfinite(o) else o


def write_json(path, obj):
    """obj as indented JSON; numpy scalars become plain numbers, NaN and infinities null (they are not JSON:
    e.g. the seconds per epoch of a variant whose every run diverged in its first epoch)."""
    plain = _finite(json.loads(json.dumps(obj, default=lambda o: o.item())))
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(plain, indent=2, allow_nan=False) + "\n")
