#!/usr/bin/env bash
# The GPU study in ONE command on a lent GPU machine (Python 3.12 with JAX on CUDA, numpy, pandas, scipy,
# matplotlib; no TensorFlow, no Keras, no DVC, no internet), through the pipeline itself: the results are the
# pipeline's own (dvc.lock, metrics/, reports/report.md, metrics/summary.json, plots/), as on any machine.
#
# 1. Here, once (needs ../shared and pip):   bash benchmarks/device_run.sh --pack
#    fills .device/ (git ignores it; what may travel is 64 MiB):
#      .device/cifar10-jpeg.tar.gz          the 60,000 real images as JPEG (18.5 MiB)
#      .device/cifar10-archive-from-jpeg    the tool that makes the archive from them
#      .device/wheels/*.whl                 Keras, DVC, dvclive and what they need that the image lacks
# 2. There, as one command:   bash benchmarks/device_run.sh [-j N] [-S param=value ...]   carry [".device"]
#    LIMIT (default 570) is the seconds this script may take; keep it under the command's limit (600 s).
# Steps: `nvidia-smi -L` (no GPU: refused, unless --tiny or --allow-cpu); the wheels installed with
# `pip install --target`; the archive built; the carried working tree made a git repository if it is not one;
# params.yaml set as `dvc exp run -S` sets it (stages.parallel.set_params) (train.backend=jax, the archive, then the -S given);
# benchmarks/throughput.py for at most MEASURE_SHARE of the time; then
# `python -m stages.parallel --budget-seconds <the rest> --throughput ...`, which fits the epochs to the time
# left, trains the entries through DVC and stops at the deadline (SIGINT, then SIGKILL; finished entries kept).
# 3. What comes back, in $OUT: device_run.log (everything printed), throughput.json, and run/ (params.yaml,
#    dvc.lock, metrics/, reports/, plots/): publish it as docs/results/cifar10-cpu was.
# --tiny: a CPU rehearsal at a few hundred images (tests/test_parallel.py runs it). Overridable: DEVICE
# (.device), PYTHON (python3), OUT, LIMIT. A carried $DEVICE/cifar-10.tar is used as it is.
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ ${1:-} == --pack ]]; then
  shared=${SHARED:-../shared}
  mkdir -p .device/wheels
  cp "$shared/data/cifar10-jpeg.tar.gz" "$shared/tools/cifar10-archive-from-jpeg" .device/
  bash "$shared/tools/gpu-wheels" .device/wheels
  # DVC's command line and every package it, dvclive and Keras need, at this environment's versions (those of
  # requirements.txt), less what the GPU image has, and hydra (only `dvc exp run -S` needs it; antlr4 has no
  # wheel): 96 wheels, ~36 MiB
  python3 -c '
import re
from importlib.metadata import PackageNotFoundError, distribution
image = set("""numpy scipy pandas matplotlib jax jaxlib ml-dtypes opt-einsum pyyaml pillow contourpy fonttools
  kiwisolver cycler python-dateutil pytz tzdata six packaging pyparsing hydra-core omegaconf
  antlr4-python3-runtime""".split())
skip = ("extra ==", "win32", "Windows", "python_version <")
seen, todo = {}, ["dvc", "dvclive", "keras"]
while todo:
    name = todo.pop().lower().replace("_", "-")
    if name in seen or name in image:
        continue
    try:
        d = distribution(name)
    except PackageNotFoundError:
        continue
    seen[name] = d.version
    todo += [re.match(r"[\w.-]+", r)[0] for r in d.requires or [] if not any(s in r for s in skip)]
print("\n".join(f"{n}=={v}" for n, v in sorted(seen.items())))' > .device/wheels.txt
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d .device/wheels -r .device/wheels.txt
  du -sh .device
  exit 0
fi

start=$SECONDS
LIMIT=${LIMIT:-570}
MARGIN=20          # seconds kept after the runner's budget: copying the results, tee, the transfer back
MEASURE_SHARE=5    # the measurement gets at most 1/5 of the time left
DEVICE=${DEVICE:-.device}
PYTHON=${PYTHON:-python3}
OUT=${OUT:-$(mktemp -d)}
scratch=$(mktemp -d)  # the installed wheels and the built archive (185 MB), removed at the end
trap 'rm -rf "$scratch"' EXIT
mkdir -p "$OUT"
exec > >(tee -a "$OUT/device_run.log") 2>&1
echo "device_run: $(date -u '+%F %T UTC'), LIMIT ${LIMIT} s, results into $OUT"

sets=(train.backend=jax) runner=() cpu= measuring=(--processes 1 2 4 8)  # sets: params.yaml's values, as `dvc exp run -S` takes them
while (($#)); do
  case $1 in
    --tiny) cpu=1 measuring=(--processes 1 --steps 10); sets+=(model.width=0.125 train.epochs=10 train.limit=300 train.validation=100
                          train.batch_size=32 train.learning_rate=0.05 train.probe_images=32) ;;
    --allow-cpu) cpu=1 ;;
    -S) sets+=("$2"); shift ;;
    -j) runner+=(-j "$2"); shift ;;
    *) echo "error: $1: not an option of device_run.sh; give -j N, -S param=value, --tiny or --allow-cpu"; exit 2 ;;
  esac
  shift
done

gpus=$(nvidia-smi -L 2>/dev/null || true)
echo "${gpus:-nvidia-smi -L: no GPU listed}"
if [[ -z $gpus && -z $cpu ]]; then
  echo "error: no GPU visible (nvidia-smi -L lists none): the study would train on the CPU; run this on a GPU machine, or add --tiny (a CPU rehearsal) or --allow-cpu"
  exit 3
fi
n_gpus=$(grep -c '^GPU' <<< "$gpus" || true)
if [[ -z ${runner[*]} ]]; then runner=(-j $((n_gpus ? 4 * n_gpus : 2))); fi  # 4 at once per GPU; 2 on a CPU

if compgen -G "$DEVICE/wheels/*.whl" > /dev/null; then
  "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --target "$scratch/site" "$DEVICE"/wheels/*.whl
  export PYTHONPATH="$scratch/site${PYTHONPATH:+:$PYTHONPATH}"
  export PATH="$scratch/site/bin:$PATH"
fi
# dvc.yaml's commands run `python`: a wrapper (not a link, which would lose a virtual environment) of $PYTHON
mkdir "$scratch/bin" && printf '#!/bin/sh\nexec "%s" "$@"\n' "$(command -v "$PYTHON")" > "$scratch/bin/python"
chmod +x "$scratch/bin/python"
export PATH="$scratch/bin:$PATH" KERAS_BACKEND=jax DVC_NO_ANALYTICS=1
"$PYTHON" -c 'import importlib.util as u, sys, jax, keras, dvc.version
print(f"python {sys.version.split()[0]}, jax {jax.__version__}, keras {keras.__version__} on {keras.backend.backend()},",
      f"dvc {dvc.version.__version__}, tensorflow:", "installed" if u.find_spec("tensorflow") else "not installed")'

archive=$DEVICE/cifar-10.tar
if [[ ! -f $archive ]]; then
  archive=$scratch/cifar-10.tar
  "$PYTHON" "$DEVICE/cifar10-archive-from-jpeg" "$archive" --jpeg "$DEVICE/cifar10-jpeg.tar.gz"
fi
archive=$(cd "$(dirname "$archive")" && pwd)/$(basename "$archive")

if ! git rev-parse --is-inside-work-tree > /dev/null 2>&1; then  # the carried copy has no .git
  git init -q && git add -A
  git -c user.name=device_run -c user.email=device_run@localhost commit -qm "the carried working tree"
fi
# params.yaml set and checked now, before anything is measured (a bad value: one line)
"$PYTHON" -c 'import sys; from stages.cli import cli; from stages.parallel import set_params
cli(lambda: set_params(sys.argv[1:]))' data.cifar10.url="$archive" data.cifar10.md5=null "${sets[@]}"

left=$((LIMIT - (SECONDS - start) - MARGIN))
measure=$((left / MEASURE_SHARE))
echo "device_run: $((SECONDS - start)) s setting up; the measurement: at most $measure s"
timeout -k 5 $((measure + 10)) "$PYTHON" benchmarks/throughput.py --out "$OUT/throughput.json" \
  --seconds "$measure" "${measuring[@]}" || echo "device_run: the measurement ended early; planning from what it wrote"
budget=$((LIMIT - (SECONDS - start) - MARGIN))
echo "device_run: the study's budget: $budget s"
code=0
"$PYTHON" -m stages.parallel "${runner[@]}" --budget-seconds "$budget" --throughput "$OUT/throughput.json" || code=$?
mkdir -p "$OUT/run"
cp -r params.yaml dvc.lock metrics reports plots "$OUT/run/" 2> /dev/null || true
echo "device_run: done in $((SECONDS - start)) s of LIMIT $LIMIT s (the runner's exit status: $code)"
exit $code
