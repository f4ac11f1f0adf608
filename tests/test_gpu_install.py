"""A GPU owner's install: requirements-gpu.txt pins what requirements.txt pins, plus the CUDA wheels, and
resolves (`pip install --dry-run`, where the package registry answers). Where nvidia-smi lists a GPU that
Keras' backend does not see, the train stage says so in one line with that fix: tests/test_backend.py."""

import json
import re
import subprocess
import sys

import pytest

from tests.conftest import ROOT

PIN = re.compile(r"^([A-Za-z0-9_.-]+)(?:\[([a-z0-9_,-]+)\])?==([^\s;#]+)", re.MULTILINE)


def pins(path):
    """{name: (extras, version)} of a requirements file's `name[extras]==version` lines."""
    return {m[1].lower(): (m[2], m[3]) for m in PIN.finditer((ROOT / path).read_text())}


def test_gpu_requirements_pin_what_requirements_txt_pins():
    cpu, gpu = pins("requirements.txt"), pins("requirements-gpu.txt")
    assert gpu == {"tensorflow": ("and-cuda", cpu["tensorflow"][1]), "jax": ("cuda12", cpu["jax"][1])}
    assert cpu["jaxlib"][1] == cpu["jax"][1]  # jax[cuda12]'s plugin pins the jaxlib of its own version
    assert re.search(r"^-r requirements\.txt$", (ROOT / "requirements-gpu.txt").read_text(), re.MULTILINE)


def registry_answers():
    p = subprocess.run(
        [sys.executable, "-m", "pip", "index", "versions", "jax-cuda12-plugin"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    return p.returncode == 0


@pytest.mark.e2e
def test_gpu_requirements_resolve(tmp_path):
    """The GPU pins and the CUDA wheels they pull in resolve together (the whole file, requirements.txt
    included, was checked the same way when it was written: a few minutes more, for pins this file shares)."""
    if not registry_answers():
        pytest.skip("the package registry does not answer here (offline CI): nothing to resolve against")
    gpu = tmp_path / "gpu-pins.txt"
    gpu.write_text(
        "".join(f"{n}[{extras}]=={v}\n" for n, (extras, v) in pins("requirements-gpu.txt").items())
    )
    p = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--dry-run",
            "--ignore-installed",
            "-q",
            "--report",
            str(tmp_path / "report.json"),
            "-r",
            str(gpu),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert p.returncode == 0, p.stderr[-3000:]
    got = {
        i["metadata"]["name"].lower(): i["metadata"]["version"]
        for i in json.loads((tmp_path / "report.json").read_text())["install"]
    }
    cpu = pins("requirements.txt")
    assert (
        got["tensorflow"] == cpu["tensorflow"][1] and got["jax"] == got["jax-cuda12-plugin"] == cpu["jax"][1]
    )
    assert {"nvidia-cudnn-cu12", "nvidia-cublas-cu12", "jax-cuda12-pjrt"} <= set(got)
