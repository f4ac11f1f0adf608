"""stages/backend.py (issue 21, item 10): a KERAS_BACKEND the project cannot train on is refused with a fix
that works (was: `-S train.backend=torch`, which the check then refused)."""

import pytest

from stages import backend
from stages.cli import UserError
from stages.params import BACKENDS, validate
from tests.test_params import BASE, changed


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
