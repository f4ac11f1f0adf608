"""stages.plan: the epochs and the concurrency that fit a time budget, from a throughput measurement; a plan
that degrades (one process measured, nothing measured, not one epoch of every entry) instead of giving up."""

import math

import pytest

from stages.plan import SAFETY, Sizes, fit, total_seconds

SIZES = Sizes(train=4000, validation=500, test=1000)
MEASURED = {"rates": {"1": 1000.0, "2": 1600.0, "4": 1700.0}, "startup_seconds": 20.0}


def test_the_epochs_are_the_largest_that_fit():
    p = fit(MEASURED, SIZES, 150, 8, 600, 8)
    assert 1 <= p.epochs < 150 and p.entries == 8
    assert SAFETY * total_seconds(MEASURED, p.processes, p.epochs, SIZES, 8) <= 600
    assert SAFETY * total_seconds(MEASURED, p.processes, p.epochs + 1, SIZES, 8) > 600
    for n in (1, 2, 4):  # no other measured count fits more epochs
        assert SAFETY * total_seconds(MEASURED, n, p.epochs + 1, SIZES, 8) > 600
    assert p.estimate_seconds == total_seconds(MEASURED, p.processes, p.epochs, SIZES, 8)


def test_never_more_than_the_recipe_nor_the_processes_allowed():
    assert fit(MEASURED, SIZES, 150, 1, 10**7, 8).epochs == 150
    assert fit(MEASURED, SIZES, 150, 8, 600, 2).processes <= 2
    assert fit(MEASURED, SIZES, 150, 8, 600, 1).processes == 1


def test_one_process_measured_is_enough():
    one = {"rates": {"1": 1000.0}, "startup_seconds": 20.0}
    p = fit(one, SIZES, 150, 8, 3000, 8)
    assert p.processes == 1 and p.epochs >= 1 and "measured at 1 process" in p.basis


def test_when_not_one_epoch_of_every_entry_fits_the_first_entries_that_do_are_trained():
    p = fit(MEASURED, SIZES, 150, 8, 120, 8)
    assert p.epochs == 1 and 1 <= p.entries < 8
    assert SAFETY * total_seconds(MEASURED, p.processes, 1, SIZES, p.entries) <= 120
    # a budget too short for even one entry still trains one: the deadline decides, never "0 entries"
    assert fit(MEASURED, SIZES, 150, 8, 1, 8).entries == 1


@pytest.mark.parametrize("measurement", [None, {}, {"rates": {}}, {"rates": {"1": 0}, "startup_seconds": 5}])
def test_nothing_measured_trains_one_epoch_of_every_entry(measurement):
    p = fit(measurement, SIZES, 150, 8, 600, 4)
    assert (p.epochs, p.processes, p.entries) == (1, 4, 8) and math.isnan(p.estimate_seconds)
    assert p.basis.startswith("nothing measured")
