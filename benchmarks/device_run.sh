#!/usr/bin/env bash
# The GPU study in ONE command on a lent GPU machine (Python 3.12 with JAX on CUDA, numpy, pandas, scipy,
# matplotlib; no TensorFlow, no Keras, no internet): checks `nvidia-smi -L`, installs the carried wheels with
# `pip install --target`, builds the CIFAR-10 archive (plain tar) from the carried JPEG set, then runs
# benchmarks/gpu_study.py with the seconds left before LIMIT (less a margin) as its budget, and tees all of it
# into $OUT. The study fits the epochs to that budget and writes its results after every finished entry.
#
# 1. Here, once (needs ../shared):   bash benchmarks/device_run.sh --pack
#    fills .device/ (git ignores it; ~25 MiB of the 64 MiB that may travel):
#      .device/cifar10-jpeg.tar.gz          the 60,000 real images as JPEG (18.5 MiB)
#      .device/cifar10-archive-from-jpeg    the tool that makes the archive from them
#      .device/wheels/*.whl                 Keras, dvclive, ruamel.yaml, ... for Python 3.12 (~5.4 MiB)
#    optional, to continue an earlier call: its results.json and curves.tsv, copied into .device/
# 2. There, as one command:   bash benchmarks/device_run.sh      carry [".device"], timeout_s 600
#    LIMIT (default 570) is the seconds this script may take; keep it under the command's limit (600 s) and
#    the lease (15 min of device time, start-up included). Extra arguments go to gpu_study.py (--epochs 60,
#    --processes 4 8, --entries ...); without a GPU it refuses unless given --tiny or --allow-cpu.
# 3. What comes back: $OUT/device_run.log (everything printed) and $OUT/study/ (results.json, study.md, the
#    ranked table, curves.tsv, log.txt, failures.txt).
# Overridable for a rehearsal on a CPU (tests/test_gpu_study.py): DEVICE (.device), PYTHON (python3), OUT, LIMIT.
# A carried $DEVICE/cifar-10.tar is used as it is instead of building one.
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ ${1:-} == --pack ]]; then
  shared=${SHARED:-../shared}
  mkdir -p .device/wheels
  cp "$shared/data/cifar10-jpeg.tar.gz" "$shared/tools/cifar10-archive-from-jpeg" .device/
  bash "$shared/tools/gpu-wheels" .device/wheels
  du -sh .device
  exit 0
fi

start=$SECONDS
LIMIT=${LIMIT:-570}
MARGIN=15  # seconds kept after the study's budget: its own close, tee, the transfer back
DEVICE=${DEVICE:-.device}
PYTHON=${PYTHON:-python3}
OUT=${OUT:-$(mktemp -d)}
scratch=$(mktemp -d)  # the installed wheels and the built archive (185 MB), removed at the end
trap 'rm -rf "$scratch"' EXIT
mkdir -p "$OUT"
exec > >(tee -a "$OUT/device_run.log") 2>&1
echo "device_run: $(date -u '+%F %T UTC'), LIMIT ${LIMIT} s, results into $OUT"

gpus=$(nvidia-smi -L 2>/dev/null || true)
echo "${gpus:-nvidia-smi -L: no GPU listed}"
if [[ -z $gpus && " $* " != *" --tiny "* && " $* " != *" --allow-cpu "* ]]; then
  echo "error: no GPU visible (nvidia-smi -L lists none): the study would train on the CPU; run this on a GPU machine, or add --tiny (a CPU rehearsal) or --allow-cpu"
  exit 3
fi

if compgen -G "$DEVICE/wheels/*.whl" > /dev/null; then
  "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --target "$scratch/site" "$DEVICE"/wheels/*.whl
  export PYTHONPATH="$scratch/site${PYTHONPATH:+:$PYTHONPATH}"
fi
export KERAS_BACKEND=jax
"$PYTHON" -c 'import importlib.util as u, sys, jax, keras
print(f"python {sys.version.split()[0]}, jax {jax.__version__}, keras {keras.__version__} on {keras.backend.backend()},",
      "tensorflow:", "installed" if u.find_spec("tensorflow") else "not installed")'

archive=$DEVICE/cifar-10.tar
if [[ ! -f $archive ]]; then
  archive=$scratch/cifar-10.tar
  "$PYTHON" "$DEVICE/cifar10-archive-from-jpeg" "$archive" --jpeg "$DEVICE/cifar10-jpeg.tar.gz"
fi

resume=()
if [[ -f $DEVICE/results.json ]]; then resume=(--resume-from "$DEVICE/results.json"); fi
budget=$((LIMIT - (SECONDS - start) - MARGIN))
echo "device_run: $((SECONDS - start)) s setting up; the study's budget: $budget s"
"$PYTHON" benchmarks/gpu_study.py --out "$OUT/study" --archive "$archive" --md5 none --budget-seconds "$budget" \
  "${resume[@]}" "$@"
