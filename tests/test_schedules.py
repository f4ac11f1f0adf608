"""stages/schedules.py: the learning-rate schedules train.lr_schedule names, the rates each gives the
optimizer step by step, the words the report uses for each, and the params check accepting exactly
these names."""

import copy

import keras
import pytest
import yaml

from stages.params import validate
from stages.schedules import SCHEDULES, describe, learning_rate
from tests.conftest import ROOT

PARAMS = yaml.safe_load((ROOT / "params.yaml").read_text())
TRAIN = {**PARAMS["train"], "learning_rate": 0.1, "epochs": 4, "lr_drops": [0.5, 0.75], "lr_gamma": 0.1}


def rate(schedule, step):
    return float(schedule(step)) if callable(schedule) else schedule


def test_step_drops_by_gamma_at_each_fraction_of_training():
    s = learning_rate({**TRAIN, "lr_schedule": "step"}, steps_per_epoch=10, keras=keras)  # 40 steps
    got = [round(rate(s, step), 6) for step in (0, 19, 20, 21, 30, 31, 39)]
    # Keras' PiecewiseConstantDecay: the rate drops after the boundary step (20 = 50%, 30 = 75% of 40)
    assert got == [0.1, 0.1, 0.1, 0.01, 0.01, 0.001, 0.001]


def test_cosine_decays_from_the_rate_to_zero_over_training():
    s = learning_rate({**TRAIN, "lr_schedule": "cosine"}, steps_per_epoch=10, keras=keras)
    assert rate(s, 0) == pytest.approx(0.1) and rate(s, 20) == pytest.approx(0.05) and rate(s, 40) == 0


def test_constant_and_a_step_schedule_without_drops_are_the_plain_rate():
    for t in ({**TRAIN, "lr_schedule": "constant"}, {**TRAIN, "lr_schedule": "step", "lr_drops": []}):
        assert learning_rate(t, 10, keras) == 0.1


def test_integer_learning_rate_and_momentum_build_the_optimizer():
    """YAML reads `learning_rate: 1` and `momentum: 0` as integers; validate() accepts them, so must training
    (Keras refuses integers for both). Regression: a constant-schedule run used to crash with a traceback."""
    for schedule, drops in (("constant", []), ("step", []), ("step", [0.5]), ("cosine", [])):
        params = copy.deepcopy(PARAMS)
        t = params["train"]
        t.update(momentum=0, learning_rate=1, lr_schedule=schedule, lr_drops=drops)
        assert validate(params) == []
        keras.optimizers.SGD(learning_rate(t, 10, keras), momentum=float(t["momentum"]))
        keras.optimizers.Adam(learning_rate(t, 10, keras))


def test_the_report_describes_each_schedule_in_one_line():
    params = {"train": TRAIN}
    assert describe("step", params) == "×0.1 at 50%/75% of training"
    assert describe("cosine", params) == "cosine decay"
    assert describe("constant", params) == "constant"
    assert describe("warmup", params) == "warmup"  # a name this code does not know: as it is, no KeyError


def test_the_params_check_accepts_exactly_the_registered_names():
    def problems(name):
        params = copy.deepcopy(PARAMS)
        params["train"]["lr_schedule"] = name
        return validate(params)

    assert all(problems(name) == [] for name in SCHEDULES)
    assert problems("linear") == ["train.lr_schedule = 'linear': must be one of step, cosine, constant"]
    assert all(s.doc and "\n" not in s.doc for s in SCHEDULES.values())
