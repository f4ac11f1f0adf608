"""Publishes a finished study into a folder of the repository: the files its report is made from, laid out as
in the project, and the report made from them by this checkout's stages/report.py (`python -m stages.report
<folder>`), which tests/test_results.py makes again and compares.

    python scripts/publish_run.py /path/to/study-workspace docs/results/cifar10-cpu --log study.log

Copied: params.yaml and dvc.lock (what ran, with every file's hash), per model metrics/grid/*.json,
results/grid/*.json (confusion matrix, every test image's label and prediction), models/grid/*.json (how
training went) and dvclive/grid/ (per-epoch curves). Not copied: the .keras weights (DVC's cache and remotes
hold them), the data, and the report of the workspace (made again here).

The folder is built in a fresh temporary folder beside OUT and renamed into place once its report is made. OUT
must lie inside this repository, be no symbolic link (nor reached through one), neither contain the workspace
nor lie inside it, and, if it exists, hold nothing but what a publish writes (a folder published before):
anything else is refused in one line, and nothing is deleted.
"""

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script: stages/ is imported from this checkout

from stages.cli import UserError  # noqa: E402
from stages.outputs import safe_target  # noqa: E402

FILES = ["params.yaml", "dvc.lock"]
FOLDERS = ["metrics/grid", "results/grid", "dvclive/grid"]
# what a published folder holds at its top: the copies above, the log, and what its report writes
PUBLISHED = {
    "params.yaml",
    "dvc.lock",
    "log.txt",
    "metrics",
    "results",
    "models",
    "dvclive",
    "reports",
    "plots",
}


def foreign(out):
    """The first thing in an existing folder out that no publish writes (a link anywhere, a file or folder of
    another name at its top, or a folder without params.yaml and dvc.lock); None for a published folder."""
    if not all((out / f).is_file() for f in FILES):
        return f"no {' and '.join(FILES)} (not a published run)"
    for p in sorted(out.rglob("*")):
        if p.is_symlink() or not (p.is_file() or p.is_dir()):
            return f"{p.relative_to(out)}, a link or a special file"
        if p.relative_to(out).parts[0] not in PUBLISHED:
            return f"{p.relative_to(out)}"
    return None


def check(source, out):
    """out as an absolute path, once it is safe to publish source into it (else a UserError, one line)."""
    if not source.is_dir():
        raise UserError(f"{source}: not a folder; give the workspace the study ran in")
    missing = [p for p in FILES + FOLDERS if not (source / p).exists()]
    if missing:
        raise UserError(f"{source}: no {', '.join(missing)}; run `dvc repro` there first")
    final = safe_target(out, root=ROOT, source=source)
    if final.exists() and not final.is_dir():
        raise UserError(f"{out}: exists and is not a folder; give a folder to publish into")
    if final.is_dir() and (what := foreign(final)) is not None:
        raise UserError(
            f"{out}: an existing folder that no publish wrote (it holds {what}); move it away or give a "
            f"new folder"
        )
    return final


def copy(source, new, log):
    """The study's files from source into the folder new, laid out as in the project."""
    for p in FILES:
        shutil.copy2(source / p, new / p)
    for p in FOLDERS:
        shutil.copytree(source / p, new / p, ignore=shutil.ignore_patterns(".gitignore"))
    (new / "models/grid").mkdir(parents=True)
    for f in sorted((source / "models/grid").glob("*.json")):
        shutil.copy2(f, new / "models/grid" / f.name)
    if log:
        shutil.copy2(log, new / "log.txt")


def publish(source, out, final, log):
    final.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
    try:
        new = scratch / final.name
        new.mkdir()
        copy(source, new, log)
        report = subprocess.run([sys.executable, "-m", "stages.report", str(new)], cwd=ROOT)
        if report.returncode != 0:
            raise UserError(f"{source}: its report could not be made (above); nothing was published in {out}")
        check(source, out)  # again: anything may have changed while the report ran
        if final.exists():
            final.rename(scratch / ".old")  # removed with scratch below
        new.rename(final)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("source", type=Path, help="the workspace the study ran in")
    ap.add_argument("out", type=Path, help="the folder to publish into (a new one, or one published before)")
    ap.add_argument("--log", type=Path, help="the run's log, copied as log.txt")
    args = ap.parse_args()
    try:
        if args.log and not args.log.is_file():
            raise UserError(f"{args.log}: no such file; give the run's log, or leave --log out")
        publish(args.source, args.out, check(args.source, args.out), args.log)
    except UserError as e:
        raise SystemExit(f"error: {e}") from None
    print(f"published {args.source} into {args.out}; its report again: python -m stages.report {args.out}")


if __name__ == "__main__":
    main()
