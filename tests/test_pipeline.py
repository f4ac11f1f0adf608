"""stages/pipeline.py in-process: the training batches are a pure function of (seed, epoch), each epoch shows
every image at most once (the last partial batch dropped), and augmentation is a mirror and a shift of at most
SHIFT pixels of the image itself, nothing else."""

import itertools

import numpy as np
import pytest

from stages.pipeline import SHIFT, batches, epoch_plan

N, B = 10, 4  # images, batch size: 2 full batches per epoch, 2 images dropped


def images():
    """(N, 32, 32, 3) images whose every pixel says where it is: image i, row r, column c, channel k."""
    i, r, c, k = np.meshgrid(np.arange(N), np.arange(32), np.arange(32), np.arange(3), indexing="ij")
    return (i * 1_000_000 + r * 10_000 + c * 100 + k + 1).astype(np.float64), np.arange(N) * 7


def take(seed, augment, first_epoch=0, epochs=2):
    x, y = images()
    return list(itertools.islice(batches(x, y, B, seed, augment, first_epoch), epochs * (N // B)))


@pytest.mark.parametrize("augment", [False, True])
def test_batches_depend_on_seed_and_epoch_alone(augment):
    a, b = take(0, augment), take(0, augment)
    assert all(np.array_equal(xa, xb) and np.array_equal(ya, yb) for (xa, ya), (xb, yb) in zip(a, b))
    resumed = take(0, augment, first_epoch=1, epochs=1)  # a run resumed at epoch 1 sees epoch 1's batches
    assert all(np.array_equal(x, xr) for (x, _), (xr, _) in zip(a[N // B :], resumed))
    other_seed = take(1, augment)
    assert any(not np.array_equal(ya, yb) for (_, ya), (_, yb) in zip(a, other_seed))
    assert [len(y) for _, y in a] == [B] * 4 and {x.shape for x, _ in a} == {(B, 32, 32, 3)}
    assert {x.dtype for x, _ in a} == {np.dtype("float32")}


def test_an_epoch_shows_each_image_at_most_once_with_its_own_label():
    x, y = images()
    for epoch in take(3, augment=False, epochs=2)[:2], take(3, augment=False, epochs=2)[2:]:
        labels = np.concatenate([yb for _, yb in epoch])
        assert len(labels) == N // B * B and len(set(labels.tolist())) == len(labels)
        for xb, yb in epoch:
            assert np.array_equal(xb, x[yb // 7])  # no augmentation: the images themselves, in float32


def test_augmentation_is_a_mirror_and_a_shift_of_the_same_image():
    x, _ = images()
    order, flip, offset = epoch_plan(N, seed=5, epoch=0, augment=True)
    assert sorted(order) == list(range(N)) and offset.min() >= 0 and offset.max() <= 2 * SHIFT
    for xb, yb in take(5, augment=True, epochs=1):
        for img, label in zip(xb, yb):
            i = label // 7
            pos = int(np.flatnonzero(order == i)[0])
            dy, dx = offset[pos] - SHIFT  # where the crop starts, relative to the image
            rows, cols = np.arange(32) + dy, np.arange(32) + dx
            if flip[pos]:
                cols = cols[::-1]
            inside = ((rows >= 0) & (rows < 32))[:, None] & ((cols >= 0) & (cols < 32))[None, :]
            expected = x[i][np.clip(rows, 0, 31)[:, None], np.clip(cols, 0, 31)[None, :]]
            assert np.array_equal(img[inside], expected[inside].astype(np.float32))
            assert not img[~inside].any()  # the padding is zeros
    assert flip.any() and not flip.all()  # both kinds occur among 10 images with seed 5


def test_an_error_while_making_a_batch_is_raised_where_the_batch_was_expected():
    x, y = images()
    gen = batches(x[:, :16], y, B, seed=0, augment=True)  # 16-pixel rows: the 32-pixel crop cannot be taken
    with pytest.raises(IndexError):
        next(gen)
