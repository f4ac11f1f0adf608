"""stages/backend.py: the backend a stage runs on (train.backend against $KERAS_BACKEND), the precision
`auto` resolves to, and the one line that says a GPU nvidia-smi lists is not used."""

import pytest

from stages import backend
from stages.backend import BACKENDS, choose_precision, cpu_has_bf16, parse_nvidia_smi, unused_gpu_warning
from stages.cli import UserError
from stages.params import validate
from tests.conftest import ENV, run_stage, set_params
from tests.test_params import BASE, changed
from tests.test_prepare import TF_LOG

KEY = "cifar10-relu-False-0"
H100 = (
    "GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-3c1a3e55-7a2b-8f5e-2a4c-5e0d2f1b9c77)\n"
    "GPU 1: NVIDIA H100 80GB HBM3 (UUID: GPU-9b0e6d1f-1c2d-4e5f-8a9b-0c1d2e3f4a5b)\n"
)


def test_nvidia_smi_listing_is_read():
    assert parse_nvidia_smi(H100) == ["NVIDIA H100 80GB HBM3"] * 2
    assert parse_nvidia_smi("GPU 0: NVIDIA H200\n") == ["NVIDIA H200"]
    assert (
        parse_nvidia_smi("") == []
        and parse_nvidia_smi(
            "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver.\n"
        )
        == []
    )


def test_a_gpu_the_backend_does_not_see_is_one_line_with_the_fix():
    line = unused_gpu_warning(parse_nvidia_smi(H100), [], "jax")
    assert line.count("\n") == 0 and line.startswith(
        "warning: nvidia-smi lists NVIDIA H100 80GB HBM3 and 1 more"
    )
    assert "jax backend sees no GPU" in line and "pip install -r requirements-gpu.txt" in line
    assert unused_gpu_warning(parse_nvidia_smi(H100), [("NVIDIA H100 80GB HBM3", "9.0")], "jax") is None
    assert unused_gpu_warning([], [], "tensorflow") is None  # no GPU: nothing to say
    assert unused_gpu_warning(["NVIDIA H100"], [], "tensorflow", visible="") is None  # hidden on purpose
    assert unused_gpu_warning(["NVIDIA H100"], [], "tensorflow", visible="-1") is None


@pytest.mark.parametrize(
    "gpus, expected",
    [
        ([("NVIDIA H100 80GB HBM3", "9.0")], "mixed_bfloat16"),
        ([("NVIDIA A100-SXM4-40GB", "8.0")], "mixed_bfloat16"),
        ([("Tesla V100-SXM2-16GB", "7.0")], "mixed_float16"),
        ([("a GPU whose capability is unknown", None)], "mixed_float16"),
    ],
)
def test_auto_precision_on_gpus_follows_the_compute_capability(gpus, expected):
    assert choose_precision("auto", gpus) == expected
    assert choose_precision("float32", gpus) == "float32"  # anything but auto is taken as it is


def test_auto_precision_on_a_cpu_is_bf16_only_where_the_cpu_computes_it():
    import keras

    bf16 = cpu_has_bf16() and keras.backend.backend() == "tensorflow"
    assert choose_precision("auto", []) == ("mixed_bfloat16" if bf16 else "float32")


@pytest.mark.parametrize("module", ["params", "train", "evaluate", "report"])
def test_backend_mismatch_is_one_line_from_every_stage_that_reads_it(project, module):
    """Was: 15 lines of traceback ending in the message (`python -m stages.params`: `__main__.UserError`
    caught, `stages.params.UserError` raised by stages/backend.py)."""
    set_params(project, train={"backend": "jax"})
    status, err, seconds = run_stage(
        project,
        module,
        *([KEY] if module in ("train", "evaluate") else []),
        env={**ENV, "KERAS_BACKEND": "tensorflow"},
    )
    if module == "report":  # imports Keras (stages.model) before cli() filters TensorFlow's start-up lines
        err = [line for line in err if not TF_LOG.match(line)]
    assert err == [
        "error: params.yaml: train.backend = 'jax' but the environment has KERAS_BACKEND=tensorflow; "
        "unset KERAS_BACKEND, or set the param: dvc exp run -S train.backend=tensorflow"
    ], err
    assert status == 2 and seconds < 30


@pytest.mark.parametrize("env", ["torch", "numpy", "tensorflow\u0430"])
def test_an_environment_backend_the_project_cannot_use_suggests_only_what_it_accepts(monkeypatch, env):
    monkeypatch.setenv("KERAS_BACKEND", env)
    with pytest.raises(UserError) as e:
        backend.select("tensorflow")
    message = str(e.value)
    assert message == (
        f"params.yaml: train.backend = 'tensorflow' but the environment has KERAS_BACKEND={ascii(env)}; "
        f"unset KERAS_BACKEND (this project trains on tensorflow or jax, set by train.backend)"
    )
    assert "-S train.backend" not in message and message.isascii()
    assert validate(changed("train.backend", env, BASE)) != []  # what it no longer suggests: refused


def test_an_accepted_environment_backend_still_suggests_the_param(monkeypatch):
    monkeypatch.setenv("KERAS_BACKEND", "jax")
    with pytest.raises(UserError, match="or set the param: dvc exp run -S train.backend=jax$"):
        backend.select("tensorflow")
    assert "jax" in BACKENDS and validate(changed("train.backend", "jax", BASE)) == []
