"""Norms: the one place a config's norm kind becomes a Keras layer."""

from __future__ import annotations

import keras
from keras import ops

from encoder.config import Block


@keras.saving.register_keras_serializable(package="headlight")
class RMSNorm(keras.layers.Layer):
    """Root-mean-square norm over the last axis: ``x * rsqrt(mean(x^2) + epsilon) * gamma``, no mean and no bias,
    in float32 and in transformers' order of operations (Llama's ``LlamaRMSNorm``). Gemma's ``(1 + w)`` norms are
    this norm with ``gamma = 1 + w`` (``1 + w`` rounded to float32, as transformers computes it).

    Args:
        epsilon: float, added to the mean square.
    """

    def __init__(self, epsilon: float = 1e-6, **kwargs):
        super().__init__(**kwargs)
        self.epsilon = epsilon
        self.beta = None  # no bias (ports read ``gamma`` and ``beta`` of every norm)

    def get_config(self):
        return {**super().get_config(), "epsilon": self.epsilon}

    def build(self, input_shape):
        self.gamma = self.add_weight(name="gamma", shape=(input_shape[-1],), initializer="ones")
        self.built = True

    def call(self, x):
        variance = ops.mean(ops.square(x), axis=-1, keepdims=True)
        return x * ops.rsqrt(variance + self.epsilon) * self.gamma


def make_norm(block: Block, name: str, center: bool | None = None) -> keras.layers.Layer:
    """A norm of kind ``block.norm`` ("layernorm" or "rmsnorm") with the model's epsilon; a layer norm's ``center``
    (a bias) defaults to ``block.use_bias`` (an RMS norm has none)."""
    if block.norm == "rmsnorm":
        return RMSNorm(epsilon=block.norm_epsilon, name=name)
    return keras.layers.LayerNormalization(epsilon=block.norm_epsilon,
                                           center=block.use_bias if center is None else center, name=name)
