"""ALL-CNN-C (Springenberg et al. 2014) with a pluggable activation and optional batch normalisation.

Keras is imported where a layer is built, not at the top: the params check (the check stage, on every change
of params.yaml) accepts the study's own activation names below without loading Keras and TensorFlow.
"""

import functools

import numpy as np

ACT_PREFIX = (
    "act"  # activation layers are act1..act9: the net names them, train probes them, report plots them
)


def ours():
    """stages.layers: Keras' BN and PReLU with TensorFlow's fast kernels (imported with Keras, so lazily)."""
    from stages import layers

    return layers


# Activations that need arguments; any other name Keras knows (selu, gelu, swish, ...) works as it is.
# Adding an activation to the study is one line here, or none. k: the keras module; m: params.yaml's model.
ACTIVATIONS = {
    "relu": lambda k, m, **kw: k.layers.ReLU(**kw),
    "lrelu": lambda k, m, **kw: k.layers.LeakyReLU(negative_slope=m["lrelu_slope"], **kw),
    # one learned slope per channel, shared over H and W; PReLU's alpha has no regulariser (no weight decay)
    "prelu": lambda k, m, **kw: ours().PReLU(
        k.initializers.Constant(m["prelu_init"]), shared_axes=[1, 2], **kw
    ),
    "elu": lambda k, m, **kw: k.layers.ELU(**kw),
}
_NOT_ACTIVATIONS = {"get", "serialize", "deserialize", "linear", "softmax", "log_softmax"}


def _works_in_the_net(name):
    """Keras names exactly the stages accept: one that keeps a (N, H, W, C) tensor's shape with no arguments
    (not glu, which halves C; not threshold, which needs two)."""
    from keras import layers

    try:
        x = np.linspace(-2, 2, 2 * 2 * 2 * 4, dtype="float32").reshape(2, 2, 2, 4)
        return tuple(layers.Activation(name)(x).shape) == x.shape
    except Exception:  # Keras raises whatever the function raises
        return False


@functools.cache
def activation_names():
    """Every name the stages accept: ACTIVATIONS' and the Keras activations that fit the net."""
    import keras

    keras_names = [n for n in dir(keras.activations) if not n.startswith("_") and n not in _NOT_ACTIVATIONS]
    return sorted(set(ACTIVATIONS) | {n for n in keras_names if _works_in_the_net(n)})


def make_activation(activation, model_params, **kw):
    import keras

    if activation not in ACTIVATIONS and activation not in activation_names():
        raise ValueError(f"unknown activation {activation!r}; valid: {', '.join(activation_names())}")
    known = ACTIVATIONS.get(activation)
    return known(keras, model_params, **kw) if known else keras.layers.Activation(activation, **kw)


def make_net(num_classes, activation, batch_norm, model_params, weight_decay, mean, variance):
    """ALL-CNN-C. Input: (N, 32, 32, 3) uint8-valued floats; output: (N, num_classes) softmax, float32.
    mean/variance: per-channel statistics of the training split, so the saved model takes raw pixels.
    weight_decay: Caffe-style coefficient lambda (gradient += lambda * w), i.e. an L2 loss of lambda / 2."""
    import keras

    layers = keras.layers
    l2 = keras.regularizers.L2(weight_decay / 2)  # every conv's kernel; BN's and PReLU's weights: none
    c1, c2 = round(96 * model_params["width"]), round(192 * model_params["width"])
    # (filters, kernel, stride, padding); "drop" = dropout 0.5 after each stride-2 conv
    spec = [
        (c1, 3, 1, "same"),
        (c1, 3, 1, "same"),
        (c1, 3, 2, "same"),
        "drop",  # 32x32 -> 16x16
        (c2, 3, 1, "same"),
        (c2, 3, 1, "same"),
        (c2, 3, 2, "same"),
        "drop",  # 16x16 -> 8x8
        (c2, 3, 1, "valid"),
        (c2, 1, 1, "valid"),
        (num_classes, 1, 1, "valid"),
    ]  # 8x8 -> 6x6
    inputs = keras.Input((32, 32, 3), name="pixels")
    x = layers.Normalization(mean=mean, variance=variance, name="standardise")(inputs)
    x = layers.Dropout(model_params["dropout_input"], name="drop_input")(x)
    n = 0
    for item in spec:
        if item == "drop":
            x = layers.Dropout(model_params["dropout_hidden"], name=f"drop{n}")(x)
            continue
        n += 1  # item: (filters, kernel, stride, padding)
        x = layers.Conv2D(*item, use_bias=not batch_norm, kernel_regularizer=l2, name=f"conv{n}")(x)
        if batch_norm:
            x = ours().BatchNorm(name=f"bn{n}")(x)  # keras.layers.BatchNormalization, fused on TF
        x = make_activation(activation, model_params, name=f"{ACT_PREFIX}{n}")(x)
    x = layers.GlobalAveragePooling2D(name="pool")(x)  # (N, 6, 6, classes) -> (N, classes)
    outputs = layers.Activation("softmax", dtype="float32", name="softmax")(x)
    return keras.Model(inputs, outputs, name=f"allcnnc_{activation}{'_bn' if batch_norm else ''}")
