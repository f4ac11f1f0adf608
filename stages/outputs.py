"""Every stage output is written under a temporary name beside its final path and renamed when complete,
so a killed stage never leaves a half-written file that looks finished."""
import contextlib
import json
import math
import os
import shutil
import tempfile
from pathlib import Path


@contextlib.contextmanager
def atomic_path(final, directory=False):
    """Yields a temporary path in final's folder; on success it replaces final, on failure it is removed."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
    os.chmod(tmp, 0o755)  # mkdtemp's 0700 would make a finished output folder private
    target = tmp if directory else tmp / final.name
    try:
        yield target
        if directory and final.exists():
            shutil.rmtree(final)
        os.replace(target, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


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
