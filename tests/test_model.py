"""stages/model.py in-process: ALL-CNN-C's exact shape, parameter count, activations and regularisation."""

import keras
import numpy as np
import pytest
import yaml
from keras import layers

from stages.model import ACTIVATIONS, activation_names, make_activation, make_net
from tests.conftest import ROOT

MODEL = yaml.safe_load((ROOT / "params.yaml").read_text())["model"]  # the project's own defaults
MEAN, VARIANCE = np.array([125.0, 123.0, 114.0]), np.array([4000.0, 3900.0, 4400.0])
WD = 1e-3
KERNELS = [3, 3, 3, 3, 3, 3, 3, 1, 1]
STRIDES = [1, 1, 2, 1, 1, 2, 1, 1, 1]
PADDING = ["same"] * 6 + ["valid"] * 3
SIDES = [32, 32, 16, 16, 16, 8, 6, 6, 6]  # output height = width of conv1..conv9


def net(activation="relu", batch_norm=False, classes=10, **model):
    return make_net(classes, activation, batch_norm, {**MODEL, "width": 1.0, **model}, WD, MEAN, VARIANCE)


def channels(classes, width=1.0):
    c1, c2 = round(96 * width), round(192 * width)
    return [c1, c1, c1, c2, c2, c2, c2, c2, classes]


def expected_params(classes, batch_norm, width=1.0, per_channel_extra=0):
    """From the architecture: conv kernels k*k*c_in*c_out, plus per output channel either a bias or BN's
    gamma, beta, moving mean and moving variance, plus per_channel_extra (PReLU: one slope per channel)."""
    c_out = channels(classes, width)
    c_in = [3] + c_out[:-1]
    return sum(
        k * k * i * o + (4 if batch_norm else 1) * o + per_channel_extra * o
        for k, i, o in zip(KERNELS, c_in, c_out)
    )


def convs(model):
    return [layer for layer in model.layers if isinstance(layer, layers.Conv2D)]


@pytest.fixture(autouse=True)
def float32_policy():
    keras.mixed_precision.set_dtype_policy("float32")
    yield
    keras.mixed_precision.set_dtype_policy("float32")


def test_parameter_count_is_all_cnn_c():
    assert expected_params(10, False) == 1_369_738  # the paper's ALL-CNN-C: 1.37 M
    assert net().count_params() == 1_369_738


def test_parameter_count_with_batch_norm():
    model = net(batch_norm=True)
    assert expected_params(10, True) == 1_373_512
    assert model.count_params() == 1_373_512
    # convs lose their bias; BN adds trainable gamma and beta and non-trainable moving mean and variance
    c = sum(channels(10))
    assert sum(int(np.prod(w.shape)) for w in model.non_trainable_weights) == 2 * c
    assert all(not layer.use_bias for layer in convs(model))
    assert all(layer.use_bias for layer in convs(net()))


def test_parameter_count_cifar100():
    assert net(classes=100).count_params() == expected_params(100, False) == 1_387_108
    assert net(classes=100, batch_norm=True).count_params() == expected_params(100, True)
    assert net(classes=20).output.shape == (None, 20)  # cifar100's coarse labels


def test_width_multiplier_scales_channels():
    for width in (0.125, 0.5, 2.0):
        model = net(width=width)
        assert [layer.filters for layer in convs(model)] == channels(10, width)
        assert model.count_params() == expected_params(10, False, width)
    assert [layer.filters for layer in convs(net(width=0.125))] == [12, 12, 12, 24, 24, 24, 24, 24, 10]


def layer_names(batch_norm):
    names = ["pixels", "standardise", "drop_input"]
    for n in range(1, 10):
        names += [f"conv{n}"] + ([f"bn{n}"] if batch_norm else []) + [f"act{n}"]
        if n in (3, 6):
            names.append(f"drop{n}")
    return names + ["pool", "softmax"]


@pytest.mark.parametrize("batch_norm", [False, True])
def test_layer_order(batch_norm):
    model = net("relu", batch_norm)
    assert [layer.name for layer in model.layers] == layer_names(batch_norm)
    by_name = {layer.name: layer for layer in model.layers}
    for n in range(1, 10):  # conv -> (bn ->) act, each feeding the next
        conv, act = by_name[f"conv{n}"], by_name[f"act{n}"]
        assert isinstance(act, layers.ReLU)
        if batch_norm:
            bn = by_name[f"bn{n}"]
            assert isinstance(bn, layers.BatchNormalization)
            assert bn.input is conv.output and act.input is bn.output
        else:
            assert act.input is conv.output
    assert by_name["drop_input"].input is by_name["standardise"].output
    assert (
        by_name["drop3"].input is by_name["act3"].output and by_name["conv4"].input is by_name["drop3"].output
    )
    assert (
        by_name["drop6"].input is by_name["act6"].output and by_name["conv7"].input is by_name["drop6"].output
    )
    assert by_name["drop_input"].rate == MODEL["dropout_input"]
    assert by_name["drop3"].rate == by_name["drop6"].rate == MODEL["dropout_hidden"]
    assert isinstance(by_name["pool"], layers.GlobalAveragePooling2D)


def test_conv_geometry_and_output_shapes():
    model = net()
    cs = convs(model)
    assert [c.kernel_size for c in cs] == [(k, k) for k in KERNELS]
    assert [c.strides for c in cs] == [(s, s) for s in STRIDES]
    assert [c.padding for c in cs] == PADDING
    assert [tuple(c.output.shape) for c in cs] == [(None, s, s, c) for s, c in zip(SIDES, channels(10))]
    assert model.get_layer("pool").output.shape == (None, 10)
    assert model.input.shape == (None, 32, 32, 3)
    x = np.random.default_rng(0).uniform(0, 255, (4, 32, 32, 3)).astype("float32")
    p = model.predict(x, verbose=0)
    assert p.shape == (4, 10) and p.dtype == np.float32
    np.testing.assert_allclose(p.sum(1), 1, rtol=1e-5)


def test_input_is_standardised_raw_pixels():
    model = net()
    standardise = keras.Model(model.input, model.get_layer("standardise").output)
    x = np.broadcast_to(MEAN + np.sqrt(VARIANCE), (1, 32, 32, 3)).astype("float32")  # one std above the mean
    np.testing.assert_allclose(standardise.predict(x, verbose=0), 1, rtol=1e-5)


def test_softmax_stays_float32_under_mixed_precision():
    keras.mixed_precision.set_dtype_policy("mixed_bfloat16")
    model = net("prelu", True)
    assert model.get_layer("conv5").compute_dtype == "bfloat16"
    assert model.get_layer("softmax").compute_dtype == "float32"
    assert model.output.dtype == "float32"
    assert all(w.dtype == "float32" for w in model.weights)  # variables stay float32


@pytest.mark.parametrize("batch_norm", [False, True])
def test_prelu_one_slope_per_channel(batch_norm):
    model = net("prelu", batch_norm)
    acts = [model.get_layer(f"act{n}") for n in range(1, 10)]
    assert all(isinstance(a, layers.PReLU) for a in acts)
    for a, c in zip(acts, channels(10)):
        alpha = keras.ops.convert_to_numpy(a.alpha)
        assert alpha.shape == (1, 1, c)  # shared over height and width
        assert np.all(alpha == np.float32(MODEL["prelu_init"]))
        assert a.alpha.trainable and a.alpha_regularizer is None
    assert model.count_params() == expected_params(10, batch_norm, per_channel_extra=1)
    other = net("prelu", batch_norm, prelu_init=0.05)
    assert np.all(keras.ops.convert_to_numpy(other.get_layer("act4").alpha) == np.float32(0.05))


@pytest.mark.parametrize("activation,batch_norm", [("relu", False), ("prelu", False), ("prelu", True)])
def test_weight_decay_only_on_conv_kernels(activation, batch_norm):
    model = net(activation, batch_norm)
    cs = convs(model)
    assert len(model.losses) == len(cs) == 9  # one L2 term per conv kernel: none for biases, BN, PReLU slopes
    # each term is Caffe's lambda/2 * sum(w^2) of one kernel (so its gradient adds lambda * w)
    expected = sorted(WD / 2 * float(np.sum(keras.ops.convert_to_numpy(c.kernel) ** 2)) for c in cs)
    got = sorted(float(keras.ops.convert_to_numpy(loss)) for loss in model.losses)
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    for layer in model.layers:
        for attr in (
            "bias_regularizer",
            "activity_regularizer",
            "gamma_regularizer",
            "beta_regularizer",
            "alpha_regularizer",
        ):
            assert getattr(layer, attr, None) is None, f"{layer.name}.{attr}"


def test_lrelu_slope_comes_from_params():
    for slope in (MODEL["lrelu_slope"], 0.3):
        model = net("lrelu", lrelu_slope=slope)
        act = model.get_layer("act2")
        assert isinstance(act, layers.LeakyReLU) and act.negative_slope == pytest.approx(slope)
        out = keras.ops.convert_to_numpy(act(np.array([[-2.0, 3.0]], "float32")))
        np.testing.assert_allclose(out, [[-2 * slope, 3.0]], rtol=1e-6)


def test_named_activations():
    x = np.linspace(-3, 3, 13, dtype="float32")[None]
    assert isinstance(make_activation("relu", MODEL), layers.ReLU)
    assert isinstance(make_activation("elu", MODEL), layers.ELU)
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(make_activation("elu", MODEL)(x)),
        np.where(x > 0, x, np.expm1(x)),
        rtol=1e-5,
        atol=1e-6,
    )
    for name in ("selu", "gelu", "swish", "tanh"):  # any Keras activation, by name
        act = make_activation(name, MODEL, name="a")
        expected = keras.ops.convert_to_numpy(getattr(keras.activations, name)(x))
        np.testing.assert_allclose(keras.ops.convert_to_numpy(act(x)), expected, rtol=1e-6)
        model = net(name, width=0.125)
        assert isinstance(model.get_layer("act1"), layers.Activation)
        p = model.predict(np.full((2, 32, 32, 3), 100, "float32"), verbose=0)
        assert np.all(np.isfinite(p))


def test_activation_names():
    names = activation_names()
    assert set(ACTIVATIONS) <= set(names)
    assert {"relu", "lrelu", "prelu", "elu", "selu", "gelu", "swish"} <= set(names)
    assert not {"softmax", "linear", "get", "serialize", "deserialize"} & set(names)
    assert names == sorted(names)


@pytest.mark.parametrize("name", ["rleu", "Relu", "softmax", "linear", ""])
def test_unknown_activation_is_refused(name):
    with pytest.raises(
        ValueError, match=f"unknown activation {name!r}; valid: .*elu.*lrelu.*prelu.*relu.*selu"
    ):
        make_activation(name, MODEL)
    with pytest.raises(ValueError, match="unknown activation"):
        net(name, width=0.125)


@pytest.mark.parametrize("activation,batch_norm", [("relu", False), ("prelu", True)])
def test_same_seed_same_initial_weights(activation, batch_norm):
    def init(seed):
        keras.utils.set_random_seed(seed)
        return net(activation, batch_norm, width=0.25).get_weights()

    a, b, c = init(7), init(7), init(8)
    assert len(a) == len(b) and all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c))
