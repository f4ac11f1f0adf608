"""The study's batch norm and PReLU: Keras' own layers, computed on TensorFlow with fewer passes over memory.

Everything here is backend-specific; nothing else in the model is. Each class subclasses the Keras layer it
replaces and keeps its arguments, weights (names, shapes, trainability) and maths, so a .keras file holds the
same variables on both backends. On JAX each layer is Keras' own (XLA fuses its elementwise ops); on
TensorFlow, whose Keras layers run one op per pass (BN: ~10 passes forward, PReLU: 6), they run as:

- BatchNorm: one FusedBatchNormV3 (oneDNN on x86) forward and one FusedBatchNormGradV3 backward; statistics
  in float32 from bf16 or float32 activations. The op returns the batch variance with Bessel's correction
  (sum / (n - 1), n = N*H*W); it is scaled back to Keras' biased estimator (sum / n) before the moving
  average: moving <- momentum * moving + (1 - momentum) * batch, Keras' formula.
- PReLU: y = where(x > 0, x, alpha * x) with a hand-written gradient (3 passes forward, ~4 backward).
  Differs from Keras' relu(x) - alpha * relu(-x) only at x == 0 exactly, where Keras' gradient w.r.t. x is
  0 and this one is alpha (both are valid subgradients; an exact 0 after a convolution is rare).

The registered names (study>BatchNorm, study>PReLU) are what a saved model refers to: import this module
before keras.models.load_model (stages/evaluate.py does). It imports TensorFlow only inside call(), so it
loads where TensorFlow is not installed (the GPU machines, JAX).
"""

import keras
from keras import layers

PACKAGE = "study"  # saved models name the classes "study>BatchNorm", "study>PReLU"


def _on_tensorflow():
    return keras.backend.backend() == "tensorflow"


@keras.saving.register_keras_serializable(PACKAGE)
class BatchNorm(layers.BatchNormalization):
    """keras.layers.BatchNormalization over the last axis of (N, H, W, C) with gamma and beta, fused on
    TensorFlow; any other use (masks, renorm, synchronized, another axis) is Keras' own computation."""

    def call(self, inputs, training=None, mask=None):
        plain = self.axis in (-1, len(inputs.shape) - 1) and len(inputs.shape) == 4
        if not (_on_tensorflow() and plain and self.scale and self.center) or mask is not None:
            return super().call(inputs, training=training, mask=mask)
        if self.renorm or self.synchronized:
            return super().call(inputs, training=training, mask=mask)
        return self._fused(inputs, bool(training and self.trainable))

    def _fused(self, x, training):
        import tensorflow as tf

        fused = tf.compat.v1.nn.fused_batch_norm  # x: (N, H, W, C) bf16/f32; the rest (C,) float32
        if not training:
            y, _, _ = fused(
                x,
                self.gamma,
                self.beta,
                self.moving_mean,
                self.moving_variance,
                self.epsilon,
                is_training=False,
            )
            return y
        y, mean, unbiased = fused(x, self.gamma, self.beta, epsilon=self.epsilon, is_training=True)
        n = tf.cast(tf.reduce_prod(tf.shape(x)[:-1]), tf.float32)  # N * H * W values per channel
        variance = unbiased * ((n - 1.0) / n)  # Keras' (biased) batch variance
        m = self.momentum
        self.moving_mean.assign(self.moving_mean * m + mean * (1.0 - m))
        self.moving_variance.assign(self.moving_variance * m + variance * (1.0 - m))
        return y


@keras.saving.register_keras_serializable(PACKAGE)
class PReLU(layers.PReLU):
    """keras.layers.PReLU: y = x for x > 0, alpha * x otherwise (alpha learned, shared over shared_axes)."""

    def call(self, inputs):
        if not _on_tensorflow():
            return super().call(inputs)
        return _prelu(inputs, keras.ops.cast(self.alpha, inputs.dtype), self.shared_axes or [])


def _prelu(x, alpha, shared_axes):
    """x: (N, H, W, C); alpha: x's shape less N, 1 on shared_axes. Forward: one comparison, one product, one
    select; backward: dx = where(x > 0, g, alpha * g), dalpha = sum of g * min(x, 0) over N, shared_axes."""
    import tensorflow as tf

    @tf.custom_gradient
    def prelu(x, alpha):
        positive = x > 0  # (N, H, W, C) bool, kept for the backward pass
        y = tf.where(positive, x, alpha * x)

        def grad(g):
            dx = tf.where(positive, g, alpha * g)
            dalpha = tf.reduce_sum(g * tf.minimum(x, 0), axis=[0, *shared_axes], keepdims=True)
            return dx, tf.reshape(dalpha, tf.shape(alpha))

        return y, grad

    return prelu(x, alpha)
