"""The learning-rate schedules that train.lr_schedule names: adding one is one entry of SCHEDULES.

SCHEDULES is read by the train stage (learning_rate: the schedule itself), the params check (the names it
accepts) and the report (describe: the words of its configuration line). Keras is passed in, never imported
here, so the params check stays free of it.
"""

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Schedule:
    """doc: what it does, in one line. build: (lr, total steps, params.yaml's train, keras) -> a float or a
    Keras LearningRateSchedule. words: params.yaml's train -> the schedule in the report's configuration
    line."""

    doc: str
    build: Callable
    words: Callable


def _step(lr, total, t, keras):
    bounds = [int(f * total) for f in t["lr_drops"]]  # steps at which the rate drops
    if not bounds:
        return lr
    rates = [lr * t["lr_gamma"] ** i for i in range(len(bounds) + 1)]
    return keras.optimizers.schedules.PiecewiseConstantDecay(bounds, rates)


SCHEDULES = {
    "step": Schedule(
        "times train.lr_gamma at each fraction of training in train.lr_drops",
        _step,
        lambda t: f"×{t['lr_gamma']} at {'/'.join(f'{f:.0%}' for f in t['lr_drops'])} of training",
    ),
    "cosine": Schedule(
        "cosine decay from train.learning_rate to 0 over training",
        lambda lr, total, t, keras: keras.optimizers.schedules.CosineDecay(lr, total),
        lambda t: "cosine decay",
    ),
    "constant": Schedule(
        "train.learning_rate throughout", lambda lr, total, t, keras: lr, lambda t: "constant"
    ),
}


def learning_rate(train, steps_per_epoch, keras):
    """What the optimizer gets: params.yaml's train.learning_rate under train.lr_schedule, over
    train.epochs x steps_per_epoch steps (steps, not epochs: Keras counts optimizer steps)."""
    lr = float(train["learning_rate"])  # Keras refuses a YAML integer (1)
    return SCHEDULES[train["lr_schedule"]].build(lr, steps_per_epoch * train["epochs"], train, keras)


def describe(name, params):
    """Schedule `name` under params.yaml's values, in the words of the report's configuration line, e.g.
    '×0.1 at 50%/75% of training'; a name this code does not know is given as it is."""
    return SCHEDULES[name].words(params["train"]) if name in SCHEDULES else name
