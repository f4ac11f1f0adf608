"""Every stage output is written under a temporary name beside its final path and renamed when complete,
so a killed stage never leaves a half-written file that looks finished. The temporary,
.<name>.<pid>.<random>.tmp, is removed on failure, Ctrl-C and SIGTERM (stages.cli); one left by SIGKILL is
removed by the next writer of the same output, once its pid is gone.

A folder output replaces what is there only when it is safe to (safe_target): the target is no symbolic
link, no link or '..' lies on its way from the project's root (the working directory, or the root given), it
lies inside that root, and an existing folder holds only what this writer writes (regular files of the kinds
the new folder holds). Anything else is one line, and nothing is removed or half replaced."""

import contextlib
import hashlib
import json
import math
import os
import re
import shutil
import tempfile
from pathlib import Path

from stages.cli import TEMPORARIES, UserError


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


def _inside(path, root):
    return path == root or root in path.parents


def _safe_parent(final, root):
    """final as an absolute path whose parent lies inside root, reached without a symlink or '..' (else a
    UserError naming final)."""
    path = Path(os.getcwd(), final)  # '..' kept: the kernel follows a link before its '..'
    parent = path.parent.resolve()
    if _inside(root, path.resolve()):
        raise UserError(f"{final}: is {root} itself, or a folder above it; give a folder inside it")
    if not _inside(parent, root):
        raise UserError(f"{final}: resolves to {parent / path.name}, outside {root}; give a folder inside it")
    if Path(os.path.normpath(path.parent)) != parent or ".." in path.parts:
        raise UserError(
            f"{final}: a symbolic link or '..' on its way from {root}; give the plain path of a real folder"
        )
    return parent / path.name


def safe_target(final, root=None, source=None):
    """final as an absolute path, refused (UserError, one line) when writing or replacing it could touch what
    is not the writer's: a symlink (absolute or relative), a symlink or '..' on its way down from root
    (default: the working directory, the project's root), a path outside root or root itself, one containing
    source or inside it (publishing a folder into itself)."""
    root = Path(root or os.getcwd()).resolve()
    if Path(os.getcwd(), final).is_symlink():
        raise UserError(f"{final}: a symbolic link; remove the link (its target is never written through)")
    path = _safe_parent(final, root)
    if source is not None:
        source = Path(source).resolve()
        if _inside(path, source) or _inside(source, path):
            raise UserError(f"{final}: is {source} or lies inside or around it; give a folder of its own")
    return path


def _kinds(folder):
    """{(depth, suffix)} of folder's files: what a writer writes there, e.g. {(1, '.png')}, {(2, '.json')}."""
    return {(len(p.relative_to(folder).parts), p.suffix) for p in folder.rglob("*") if p.is_file()}


def _foreign(final, new):
    """The first entry of the existing folder final that its writer, about to put new's files there, would
    not have written (a link, a device, a file of another kind or depth); None when it holds only such.
    new=None: links and devices only (checked before writing, so that a report's three folders are not
    replaced one by one up to the one refused)."""
    kinds = _kinds(new) if new is not None else None
    cache = Path(".dvc/cache").resolve()  # DVC's `cache.type: symlink` checks files out as links into it
    for p in sorted(final.rglob("*")):
        if p.is_symlink() and not (p.is_file() and cache in p.resolve().parents):
            return p
        if not (p.is_file() or p.is_dir()):
            return p
        if kinds is not None and p.is_file() and (len(p.relative_to(final).parts), p.suffix) not in kinds:
            return p
    return None


def _replaceable(final, new, name):
    """Refuses replacing final (named name in messages) by the folder new unless final is absent or a folder
    of what its writer writes (new None: of regular files and folders only)."""
    if final.is_symlink():  # made a link after safe_target (a race): never followed
        raise UserError(f"{name}: a symbolic link; remove the link (its target is never written through)")
    if final.exists() and not final.is_dir():
        raise UserError(f"{name}: exists and is not a folder; move it away, then run this again")
    if final.is_dir() and (p := _foreign(final, new)) is not None:
        raise UserError(
            f"{name}: an existing folder this writer did not write (it holds {p.relative_to(final)}); "
            f"move it away or give another folder"
        )


@contextlib.contextmanager
def atomic_path(final, directory=False, root=None):
    """Yields a temporary path in final's folder; on success it replaces final, on failure it is removed. A
    folder (directory=True) is first checked by safe_target (root: the project's root, default the working
    directory), and an existing one is replaced only if it holds what this writer writes (_replaceable). A
    file given by a relative path (every stage's) must lie in a folder of the project reached without a link;
    a symlink at the file's own path is replaced, never written through."""
    name, final = final, safe_target(final, root) if directory else Path(final)
    if not directory and not final.is_absolute():  # a stage's file: its folder inside the project, no link
        _safe_parent(final, Path(root or os.getcwd()).resolve())
    if directory:
        _replaceable(final, None, name)
    final.parent.mkdir(parents=True, exist_ok=True)
    remove_stale(final)
    tmp = temporary(final)
    os.chmod(tmp, 0o755)  # mkdtemp's 0700 would make a finished output folder private
    target = tmp / final.name
    if directory:
        target.mkdir()
    try:
        yield target
        if directory:
            _replaceable(final, target, name)
            if final.exists():
                os.replace(final, tmp / ".old")  # out of the way in one rename, removed with tmp below
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
        tmp.write_text(json.dumps(plain, indent=2, allow_nan=False) + "\n", encoding="utf-8")
