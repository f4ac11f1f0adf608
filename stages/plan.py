"""The plan of a study with a time budget: the largest epoch count E at which the entries train and evaluate
in the seconds given, and how many processes train at once. Pure functions of a throughput measurement
(benchmarks/throughput.py writes it) and the data's sizes; stages.parallel prints the plan as the command it
runs, and stops at the deadline whatever the estimate got wrong.

A plan degrades instead of giving up: it uses the process counts that were measured (one is enough), and when
not even one epoch of every entry fits, it trains one epoch of the first entries that do (at least one); with
nothing measured at all it trains one epoch and lets the deadline decide.
"""

import math
from dataclasses import dataclass

SAFETY = 1.3  # the estimate times this must fit in the budget
EPOCH_FIXED_SECONDS = (
    1.0  # per epoch beyond its images: checkpoint, probe, logging (a guess; SAFETY covers it)
)
VALIDATION_COST = 1 / 3  # a forward pass costs about a third of a training step (forward + two gradients)


@dataclass(frozen=True)
class Sizes:
    """Images per epoch of one entry: trained on, validated on; and the test set evaluate predicts."""

    train: int
    validation: int
    test: int


@dataclass(frozen=True)
class Plan:
    epochs: int  # E, 1 <= E <= the recipe's train.epochs
    processes: int  # entries trained at once
    entries: int  # how many of the entries (the first ones) the plan trains
    estimate_seconds: float  # for those entries, before SAFETY
    basis: str  # what the estimate rests on, in words


def entry_seconds(rate, startup, epochs, sizes):
    """Seconds for one entry, trained then evaluated by processes that each get `rate` images/s: two starts
    (train, evaluate; `startup` s each: interpreter, DVC, compilation), every epoch's training images and
    validation forward passes, and the test set's forward passes."""
    per_epoch = (sizes.train + VALIDATION_COST * sizes.validation) / rate + EPOCH_FIXED_SECONDS
    return 2 * startup + epochs * per_epoch + VALIDATION_COST * sizes.test / rate


def total_seconds(measurement, n, epochs, sizes, count):
    """Seconds for `count` entries, n at a time: ceil(count / n) waves, each process getting 1/n of the summed
    rate measured for n processes."""
    rate = measurement["rates"][str(n)] / n
    return math.ceil(count / n) * entry_seconds(rate, measurement["startup_seconds"], epochs, sizes)


def fit(measurement, sizes, max_epochs, count, seconds, max_processes):
    """The Plan for `count` entries of at most `max_epochs` epochs in `seconds`, <= max_processes at once.

    measurement: {"rates": {"<n>": summed images/s of n processes}, "startup_seconds": s} or None."""
    counts = sorted(int(n) for n, r in (measurement or {}).get("rates", {}).items() if r and r > 0)
    counts = [n for n in counts if n <= max_processes]
    if not counts:
        return Plan(1, min(max_processes, count), count, math.nan, "nothing measured: one epoch")

    def total(n, epochs):
        return total_seconds(measurement, n, max(epochs, 1), sizes, count)

    def largest_epochs(n):  # the largest E whose estimate x SAFETY fits, 0 when not even one epoch does
        fixed = total_seconds(measurement, n, 0, sizes, count)
        per_epoch = total_seconds(measurement, n, 1, sizes, count) - fixed
        return max(0, min(max_epochs, math.floor((seconds / SAFETY - fixed) / per_epoch)))

    # the most epochs; among equals, the count that finishes first
    epochs, n = max(((largest_epochs(n), n) for n in counts), key=lambda en: (en[0], -total(en[1], en[0])))
    basis = f"measured at {', '.join(map(str, counts))} process(es) at once"
    if epochs >= 1:
        return Plan(epochs, n, count, total_seconds(measurement, n, epochs, sizes, count), basis)
    # not one epoch of every entry: one epoch of as many entries as fit, in whole waves, at least one entry
    n = min(counts, key=lambda n: total_seconds(measurement, n, 1, sizes, n) / n)
    waves = math.floor(seconds / SAFETY / total_seconds(measurement, n, 1, sizes, n))
    fits = max(1, min(count, waves * n))
    return Plan(1, min(n, fits), fits, total_seconds(measurement, n, 1, sizes, fits), basis)
