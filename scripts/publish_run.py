"""Publishes a finished study into a folder of the repository: the files its report is made from, laid out as
in the project, and the report made from them by this checkout's stages/report.py (`python -m stages.report
<folder>`), which tests/test_results.py makes again and compares.

    python scripts/publish_run.py /path/to/study-workspace docs/results/cifar10-cpu --log study.log

Copied: params.yaml and dvc.lock (what ran, with every file's hash), per model metrics/grid/*.json,
results/grid/*.json (confusion matrix, every test image's label and prediction), models/grid/*.json (how
training went) and dvclive/grid/ (per-epoch curves). Not copied: the .keras weights (DVC's cache and remotes
hold them), the data, and the report of the workspace (made again here).
"""

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

FILES = ["params.yaml", "dvc.lock"]
FOLDERS = ["metrics/grid", "results/grid", "dvclive/grid"]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("source", type=Path, help="the workspace the study ran in")
    ap.add_argument("out", type=Path, help="the folder to publish into (replaced)")
    ap.add_argument("--log", type=Path, help="the run's log, copied as log.txt")
    args = ap.parse_args()
    missing = [p for p in FILES + FOLDERS if not (args.source / p).exists()]
    if missing:
        raise SystemExit(f"error: {args.source}: no {', '.join(missing)}; run `dvc repro` there first")
    shutil.rmtree(args.out, ignore_errors=True)
    for p in FILES:
        (args.out / p).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(args.source / p, args.out / p)
    for p in FOLDERS:
        shutil.copytree(args.source / p, args.out / p, ignore=shutil.ignore_patterns(".gitignore"))
    (args.out / "models/grid").mkdir(parents=True)
    for f in sorted((args.source / "models/grid").glob("*.json")):
        shutil.copy2(f, args.out / "models/grid" / f.name)
    if args.log:
        shutil.copy2(args.log, args.out / "log.txt")
    root = Path(__file__).resolve().parents[1]
    subprocess.run([sys.executable, "-m", "stages.report", str(args.out.resolve())], cwd=root, check=True)
    print(f"published {args.source} into {args.out}; its report again: python -m stages.report {args.out}")


if __name__ == "__main__":
    main()
