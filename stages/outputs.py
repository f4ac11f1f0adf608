"""Every stage output is written under a temporary name beside its final path and renamed when complete,
so a killed stage never leaves a half-written file that looks finished."""
import contextlib
import json
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


def write_json(path, obj):
    """obj as indented JSON; numpy scalars become plain numbers."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, default=lambda o: o.item()) + "\n")
