"""stages/datasets.py: class counts, the official split's arithmetic and the one split-size check, which the
params check (on the official sizes) and the train stage (on the data it has) both use."""

import numpy as np
import pytest

from stages import cifar
from stages.datasets import NUM_CLASSES, TRAIN_IMAGES, num_classes, official_split, split_error
from stages.entry import balanced_split

TRAIN = {"batch_size": 32, "validation": 5000, "limit": None}


def test_class_counts_follow_the_label_kind_and_the_reader_uses_them():
    params = {"data": {"cifar10": {}, "cifar100": {"labels": "coarse"}}}
    assert num_classes(params, "cifar10") == 10 and num_classes(params, "cifar100") == 20
    params["data"]["cifar100"]["labels"] = "fine"
    assert num_classes(params, "cifar100") == 100
    assert cifar.NUM_CLASSES is NUM_CLASSES  # one table: the archive reader checks labels against it


@pytest.mark.parametrize(
    "classes, validation, limit, expected",
    [
        (10, 5000, None, (45_000, 45_000)),
        (10, 5000, 4000, (45_000, 4000)),
        (10, 5000, 4005, (45_000, 4000)),  # class-balanced: 400 of each class
        (100, 5150, 1000, (44_900, 1000)),  # 51 of each of 100 classes held out: 5,100
        (10, 49_990, None, (10, 10)),
        (10, 60_000, None, (0, 0)),
    ],
)
def test_official_split_takes_what_balanced_split_takes(classes, validation, limit, expected):
    assert official_split(classes, validation, limit) == expected
    y = np.repeat(np.arange(classes), TRAIN_IMAGES // classes)  # the official split: as many of each class
    train, val = balanced_split(y, classes, validation, limit)
    assert (TRAIN_IMAGES - len(val), len(train)) == expected


def test_a_split_with_a_batch_left_passes():
    assert split_error("cifar10", TRAIN, 10, images=50_000, rest=45_000, train_images=32) is None


def test_a_subset_smaller_than_a_batch_names_train_limit_and_the_smallest_that_works():
    t = {**TRAIN, "limit": 25}
    assert split_error("cifar10", t, 10, images=50_000, rest=45_000, train_images=20) == (
        "train.limit = 25: gives 20 training images of cifar10 (the subset is class-balanced: 2 of each "
        "of 10 classes), fewer than one batch (train.batch_size = 32); raise it to at least 40, or null "
        "for all images"
    )


def test_a_hold_out_that_leaves_less_than_a_batch_names_train_validation():
    """Also with a limit: when the hold-out leaves less than the limit would take, raising it cannot help."""
    for limit in (None, 4000):
        t = {**TRAIN, "validation": 190, "limit": limit}
        assert split_error("cifar10", t, 10, images=200, rest=10, train_images=10) == (
            "train.validation = 190: leaves 10 of the 200 training images of cifar10, fewer than one batch "
            "(train.batch_size = 32); lower it"
        )
