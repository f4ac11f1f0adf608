"""stages/layers.py: the study's BatchNorm and PReLU compute what Keras' own layers compute (outputs in
training and inference, gradients w.r.t. input and weights, moving statistics) in float32 and bf16 on
TensorFlow, are Keras' own computation on JAX, train deterministically and resume bit-identically from a
checkpoint, and a saved model loads under the other backend (JAX without TensorFlow installed) and predicts
the same."""

import sys

import keras
import numpy as np
import pytest
import tensorflow as tf
import yaml

from stages import checkpoint
from stages import layers as study
from stages.model import make_net
from tests.conftest import BACKEND_ENV, ROOT, run

MODEL = {**yaml.safe_load((ROOT / "params.yaml").read_text())["model"], "width": 0.125}
SHAPE = (16, 6, 6, 5)  # (N, H, W, C): 180 values per channel
# float32: the fused kernel sums in another order than Keras' ops; bf16: ~2 ulp of 8 significant bits
TOL = {"float32": 2e-5, "mixed_bfloat16": 3e-2}


def pixels(n=32, seed=0):
    return np.random.default_rng(seed).uniform(0, 255, (n, 32, 32, 3)).astype("float32")


def activations(seed):
    """Like a conv's output: per-channel offsets and scales, no exact zeros."""
    rng = np.random.default_rng(seed)
    return (rng.normal(rng.uniform(-2, 2, 5), rng.uniform(0.5, 3, 5), SHAPE) + 1e-3).astype("float32")


def pair(ours, theirs, precision, **kw):
    """The study's layer and Keras' own, built alike, with the same random (non-default) weights."""
    a, b = ours(dtype=precision, **kw), theirs(dtype=precision, **kw)
    a.build(SHAPE), b.build(SHAPE)
    rng = np.random.default_rng(1)
    for (
        w
    ) in a.weights:  # gamma and moving variance in (0.5, 1.5); beta, moving mean and slopes in (-0.5, 1.5)
        w.assign(rng.uniform(0.5 if w.name in ("gamma", "moving_variance") else -0.5, 1.5, w.shape))
    b.set_weights(a.get_weights())
    return a, b


def forward_backward(layer, x, **call):
    """(output, gradients w.r.t. x and every trainable weight) of sum(y * cos(x)) as float32 arrays."""
    x = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = layer(tf.cast(x, layer.compute_dtype), **call)
        loss = tf.reduce_sum(tf.cast(y, tf.float32) * tf.cos(x))
    grads = tape.gradient(loss, [x, *layer.trainable_weights])
    return [np.asarray(tf.cast(t, tf.float32)) for t in [y, *grads]]


def assert_close(ours, theirs, tol, what):
    for name, u, v in zip(["output", "d input", *what], ours, theirs, strict=True):
        scale = max(float(np.abs(v).max()), 1.0)
        assert np.abs(u - v).max() <= tol * scale, f"{name}: differs by {np.abs(u - v).max()} of {scale}"


@pytest.mark.parametrize("precision", TOL)
def test_batch_norm_trains_and_infers_as_keras_does(precision):
    ours, theirs = pair(study.BatchNorm, keras.layers.BatchNormalization, precision)
    assert [w.name for w in ours.weights] == ["gamma", "beta", "moving_mean", "moving_variance"]
    assert ours.get_config() == {**theirs.get_config(), "name": ours.name}
    assert (ours.momentum, ours.epsilon) == (0.99, 1e-3)  # the study's: Keras' defaults
    for seed in range(3):  # three training steps: each moves the moving averages
        a, b = (forward_backward(layer, activations(seed), training=True) for layer in (ours, theirs))
        assert_close(a, b, TOL[precision], ["d gamma", "d beta"])
    for u, v in zip(ours.non_trainable_weights, theirs.non_trainable_weights):
        assert np.allclose(u.numpy(), v.numpy(), rtol=1e-6, atol=0), "moving statistics differ"
    assert not np.allclose(ours.moving_variance.numpy(), 1.0)  # they moved
    a, b = (forward_backward(layer, activations(9), training=False) for layer in (ours, theirs))
    assert_close(a, b, TOL[precision], ["d gamma", "d beta"])


def test_fused_batch_norm_moving_variance_is_the_biased_estimator():
    """The fused op reports sum / (n - 1); the layer keeps Keras' sum / n: one step from 1.0 tells which."""
    layer = study.BatchNorm(momentum=0.0)  # moving = this batch's statistics
    x = activations(0)
    layer(tf.constant(x), training=True)
    assert np.allclose(layer.moving_variance.numpy(), x.var(axis=(0, 1, 2), ddof=0), rtol=1e-5)
    assert not np.allclose(layer.moving_variance.numpy(), x.var(axis=(0, 1, 2), ddof=1), rtol=1e-3)


@pytest.mark.parametrize("precision", TOL)
def test_prelu_is_keras_prelu(precision):
    kw = {"alpha_initializer": keras.initializers.Constant(0.25), "shared_axes": [1, 2]}
    ours, theirs = pair(study.PReLU, keras.layers.PReLU, precision, **kw)
    a, b = (forward_backward(layer, activations(3)) for layer in (ours, theirs))
    assert_close(a, b, TOL[precision], ["d alpha"])
    assert np.abs(a[2]).min() > 0  # every slope got a gradient


def net(activation="prelu", batch_norm=True):
    keras.utils.set_random_seed(0)
    model = make_net(10, activation, batch_norm, MODEL, 1e-3, np.full(3, 120.0), np.full(3, 4000.0))
    model.compile(keras.optimizers.SGD(0.01, momentum=0.9), "sparse_categorical_crossentropy")
    return model


def train(model, steps, first=0):
    for step in range(first, first + steps):
        model.train_on_batch(pixels(seed=step), np.arange(32) % 10)


def test_parameters_and_layers_are_keras_own_kinds():
    model = net()
    bn, act = model.get_layer("bn1"), model.get_layer("act1")
    assert isinstance(bn, keras.layers.BatchNormalization) and isinstance(act, keras.layers.PReLU)
    # conv1: 3*3*3*12 kernel; BN: gamma, beta, moving mean, moving variance; PReLU: 12 slopes
    assert [int(np.prod(w.shape)) for w in model.get_layer("conv1").weights] == [324]
    assert sum(int(np.prod(w.shape)) for w in bn.weights) + act.count_params() == 5 * 12


def test_training_is_deterministic_and_resumes_bit_identically(tmp_path, monkeypatch):
    """Two runs of 4 steps agree bit for bit, and so does one checkpointed after 2 steps by
    stages/checkpoint.py (weights, moving statistics, optimizer and dropout state) and resumed in a fresh
    model."""
    monkeypatch.chdir(tmp_path)  # checkpoints are outputs: they must lie inside the working directory
    tf.config.experimental.enable_op_determinism()  # as stages.backend.configure sets it for training
    first, second = net(), net()
    train(first, 4), train(second, 4)
    fingerprint, ckpt = {"train": {"epochs": 2}}, tmp_path / "ckpt"
    interrupted, start, history = checkpoint.resume(ckpt, fingerprint, built, 2)
    train(interrupted, 2)
    checkpoint.save(ckpt, interrupted, [{"loss": 0.0}])
    resumed, start, history = checkpoint.resume(ckpt, fingerprint, built, 2)
    assert start == 1
    train(resumed, 2, first=2)
    for other in (second, resumed):
        assert all(np.array_equal(u, v) for u, v in zip(first.get_weights(), other.get_weights()))


def built():
    model = net()
    model.optimizer.build(model.trainable_variables)  # as stages/train.py builds a model to resume into
    return model


JAX_SIDE = """
import sys
import keras, numpy as np
from stages import checkpoint
from stages import layers as study
from stages.evaluate import load_model

assert keras.backend.backend() == "jax" and "tensorflow" not in sys.modules
x = np.random.default_rng(0).normal(1, 2, (8, 4, 4, 3)).astype("float32")
pairs = [(study.BatchNorm(), keras.layers.BatchNormalization()), (study.PReLU(), keras.layers.PReLU())]
for ours, theirs in pairs:
    ours.build(x.shape), theirs.build(x.shape)
    for training in (True, False):  # JAX runs Keras' own computation: equal to the bit
        assert np.array_equal(ours(x, training=training), theirs(x, training=training))
tf_model, px = load_model(sys.argv[1]), np.load(sys.argv[2])
np.save(sys.argv[3], tf_model.predict(px, verbose=0))
keras.utils.set_random_seed(0)
from stages.model import make_net
import yaml
model = make_net(10, "prelu", True, {**yaml.safe_load(open("params.yaml"))["model"], "width": 0.125}, 1e-3,
                 np.full(3, 120.0), np.full(3, 4000.0))
model.compile(keras.optimizers.SGD(0.01, momentum=0.9), "sparse_categorical_crossentropy")
model.train_on_batch(px, np.arange(len(px)) % 10)  # moving statistics and slopes off their initial values
model.save(sys.argv[4])
np.save(sys.argv[5], model.predict(px, verbose=0))
"""


@pytest.mark.e2e
def test_saved_model_predicts_alike_under_the_other_backend(tmp_path):
    """A prelu+bn model trained and saved under TensorFlow predicts the same under JAX (where TensorFlow is
    not installed), and one trained and saved under JAX the same under TensorFlow."""
    model, px = net(), pixels(16, seed=7)
    train(model, 2)
    model.save(tmp_path / "tf.keras")
    np.save(tmp_path / "px.npy", px)
    files = [tmp_path / f for f in ("tf.keras", "px.npy", "tf-on-jax.npy", "jax.keras", "jax.npy")]
    run(
        [sys.executable, "-c", JAX_SIDE, *map(str, files)],
        ROOT,
        env={**BACKEND_ENV["jax"], "KERAS_BACKEND": "jax"},
    )
    assert np.allclose(np.load(files[2]), model.predict(px, verbose=0), rtol=0, atol=1e-5)
    from stages.evaluate import load_model

    jax_model = load_model(files[3])
    assert type(jax_model.get_layer("bn1")) is study.BatchNorm
    assert np.allclose(jax_model.predict(px, verbose=0), np.load(files[4]), rtol=0, atol=1e-5)
