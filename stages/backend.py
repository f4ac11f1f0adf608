"""Keras' backend (train.backend: tensorflow or jax) and what depends on it: devices, precision, determinism,
several accelerators. Everything backend-specific in the project is here; the rest is plain Keras 3.

select() must run before the first `import keras` (params.load() calls it): Keras reads KERAS_BACKEND once.
"""

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

from stages.cli import UserError

BACKENDS = ("tensorflow", "jax")  # Keras backends that train and evaluate run on (train.backend)


def select(backend):
    """Makes Keras use `backend`; refuses an environment that asks for another one."""
    env = os.environ.get("KERAS_BACKEND")
    if env and env != backend:
        # the param is suggested only when the check would accept it (KERAS_BACKEND=torch: it would not)
        fix = (
            f"unset KERAS_BACKEND, or set the param: dvc exp run -S train.backend={env}"
            if env in BACKENDS
            else f"unset KERAS_BACKEND (this project trains on {' or '.join(BACKENDS)}, set by train.backend)"
        )
        shown = env if env in BACKENDS else ascii(env[:40])
        raise UserError(
            f"params.yaml: train.backend = {backend!r} but the environment has KERAS_BACKEND={shown}; {fix}"
        )
    if "keras" in sys.modules and sys.modules["keras"].backend.backend() != backend:
        raise UserError(f"train.backend = {backend!r}: Keras was already imported with another backend")
    if importlib.util.find_spec(backend) is None:
        raise UserError(
            f"params.yaml: train.backend = {backend!r}, but the {backend} package is not installed; "
            f"`pip install -r requirements.txt`, or set train.backend to one that is"
        )
    os.environ["KERAS_BACKEND"] = backend
    if backend == "jax":
        # one GPU shared by several training processes: take memory as needed, not 75 % up front
        os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")


def accelerators():
    """[(name, compute capability "8.0" or None)] of the GPUs the backend sees; [] on a CPU-only machine."""
    import keras

    if keras.backend.backend() == "jax":
        import jax

        return [
            (d.device_kind, getattr(d, "compute_capability", None))
            for d in jax.devices()
            if d.platform == "gpu"
        ]
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    details = [tf.config.experimental.get_device_details(g) for g in gpus]
    return [
        (d.get("device_name", g.name), ".".join(map(str, d.get("compute_capability", ()))) or None)
        for g, d in zip(gpus, details)
    ]


GPU_FIX = (
    "pip install -r requirements-gpu.txt (TensorFlow's and JAX's CUDA wheels; see the README's GPU section)"
)


def nvidia_gpus():
    """The GPUs that `nvidia-smi -L` lists, by name; [] without nvidia-smi or a working driver."""
    try:
        listing = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=20).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return parse_nvidia_smi(listing)


def parse_nvidia_smi(listing):
    """`nvidia-smi -L`'s lines ("GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-…)") -> ["NVIDIA H100 80GB HBM3"]."""
    return re.findall(r"^GPU \d+: (.+?)(?: \(UUID: [^)]*\))?\s*$", listing, re.MULTILINE)


def unused_gpu_warning(listed, seen, backend, visible=None):
    """One line when nvidia-smi lists a GPU that Keras' backend does not see (CPU-only wheels), else None;
    None too when CUDA_VISIBLE_DEVICES (`visible`) hides the GPUs on purpose."""
    if not listed or seen or visible in ("", "-1"):
        return None
    return (
        f"warning: nvidia-smi lists {listed[0]}{f' and {len(listed) - 1} more' if len(listed) > 1 else ''} "
        f"but Keras' {backend} backend sees no GPU, so this trains on the CPU (days at the default sizes); "
        f"stop it and {GPU_FIX}"
    )


def cpu_has_bf16():
    flags = Path("/proc/cpuinfo").read_text(encoding="utf-8") if Path("/proc/cpuinfo").exists() else ""
    return "avx512_bf16" in flags or "amx_bf16" in flags


def choose_precision(precision, gpus):
    """train.precision, with `auto` resolved: bf16 on GPUs of compute capability >= 8.0, fp16 on older ones;
    on CPUs bf16 only where the CPU computes it (AVX-512 BF16 or AMX) under TensorFlow, whose oneDNN kernels
    were measured 1.7x faster in bf16 there; JAX's CPU backend was not measured in bf16, so it keeps
    float32."""
    import keras

    if precision != "auto":
        return precision
    if gpus:
        cc = gpus[0][1]
        return "mixed_bfloat16" if cc and float(cc) >= 8.0 else "mixed_float16"
    return "mixed_bfloat16" if cpu_has_bf16() and keras.backend.backend() == "tensorflow" else "float32"


def configure(precision, seed):
    """Sets precision, seeds and determinism for one training process; returns (precision, device name,
    scope): build and compile the model inside `scope` (several GPUs: MirroredStrategy on TensorFlow; on JAX
    keras.distribution.DataParallel, set globally here, so the scope is a no-op)."""
    import contextlib

    import keras

    gpus = accelerators()
    warning = (
        None
        if gpus
        else unused_gpu_warning(
            nvidia_gpus(), gpus, keras.backend.backend(), os.environ.get("CUDA_VISIBLE_DEVICES")
        )
    )
    if warning:
        print(warning, file=sys.stderr, flush=True)
    precision = choose_precision(precision, gpus)
    keras.mixed_precision.set_dtype_policy(precision)
    keras.utils.set_random_seed(seed)  # Python, NumPy and the backend's: weights, dropout
    scope = contextlib.nullcontext()
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        tf.config.experimental.enable_op_determinism()
        if len(gpus) > 1:
            scope = tf.distribute.MirroredStrategy().scope()
    elif len(gpus) > 1:
        keras.distribution.set_distribution(keras.distribution.DataParallel())
    device = f"{len(gpus)} x {gpus[0][0]}" if len(gpus) > 1 else gpus[0][0] if gpus else "cpu"
    return precision, device, scope
