"""Training batches, the same on every Keras backend: plain NumPy, keyed on (seed, epoch).

Epoch e's order, flips and shifts come from np.random.default_rng([seed, e]) alone, so a resumed run sees
exactly the batches an uninterrupted one would have seen and no iterator state needs saving. One pipeline for
TensorFlow and JAX (tf.data exists only on one of them); its cost is a gather and a crop per batch, ~1 ms for
128 images, small beside a training step on a CPU and overlapped with the step on a GPU.
"""

import queue
import threading

import numpy as np

SHIFT = 4  # pixels: images are zero-padded by 4 and cropped back to 32x32 at a random offset


def epoch_plan(n, seed, epoch, augment):
    """Epoch `epoch`'s image order (n,), and per position a flip flag and a (dy, dx) offset in [0,
    2*SHIFT]."""
    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(n)
    if not augment:
        return order, None, None
    return order, rng.random(n) < 0.5, rng.integers(0, 2 * SHIFT + 1, size=(n, 2))


def augment_batch(padded, idx, flip, offset):
    """(B, 32, 32, 3) crops of the padded images (N, 40, 40, 3) at idx, offset (B, 2), mirrored where flip."""
    r = offset[:, :1, None] + np.arange(32)[None, :, None]  # (B, 32, 1) rows
    c = offset[:, 1:, None].transpose(0, 2, 1) + np.arange(32)[None, None, :]  # (B, 1, 32) columns
    c = np.where(flip[:, None, None], c[:, :, ::-1], c)  # a flip reads the columns right to left
    return padded[idx[:, None, None], r, c]


def batches(x, y, batch_size, seed, augment, first_epoch=0):
    """Yields (float32 images (B, 32, 32, 3), int labels (B,)) forever, epoch after epoch from first_epoch on;
    the last partial batch of each epoch is dropped (every step has batch_size images). Made AHEAD batches
    ahead in a thread, in order, so that the next batch is ready when a step ends (Keras on JAX does not
    prefetch a generator; NumPy's copies release the GIL)."""
    return _ahead(_batches(x, y, batch_size, seed, augment, first_epoch))


AHEAD = 4  # batches: 4 x 128 float32 images = 6 MB


def _ahead(items):
    """items, produced by a daemon thread AHEAD ahead; an exception in it is raised here."""
    q = queue.Queue(AHEAD)

    def fill():
        try:
            for item in items:
                q.put((item, None))
        except Exception as e:  # handed to the consumer, which raises it where the batch was expected
            q.put((None, e))

    threading.Thread(target=fill, daemon=True).start()
    while True:
        item, error = q.get()
        if error:
            raise error
        yield item


def _batches(x, y, batch_size, seed, augment, first_epoch):
    n, steps = len(y), len(y) // batch_size
    padded = np.pad(x, ((0, 0), (SHIFT, SHIFT), (SHIFT, SHIFT), (0, 0))) if augment else None
    epoch = first_epoch
    while True:
        order, flip, offset = epoch_plan(n, seed, epoch, augment)
        for s in range(steps):
            sl = slice(s * batch_size, (s + 1) * batch_size)
            idx = order[sl]
            images = augment_batch(padded, idx, flip[sl], offset[sl]) if augment else x[idx]
            yield images.astype(np.float32), y[idx]
        epoch += 1
