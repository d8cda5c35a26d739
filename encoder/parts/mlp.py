"""The MLP of a block (dense or gated) and the activations every part uses."""

from __future__ import annotations

import math

import keras
from keras import ops

from encoder.config import Block


def mlp_layers(block: Block, d_model: int) -> tuple[keras.layers.Dense, keras.layers.Dense]:
    """``(intermediate, output)``: the inner projection (``dff`` wide, ``2 * dff`` when gated) and the projection
    back to ``d_model``."""
    inner = 2 * block.dff if block.mlp == "gated" else block.dff
    return (keras.layers.Dense(inner, use_bias=block.use_bias, name="intermediate"),
            keras.layers.Dense(d_model, use_bias=block.use_bias, name="output"))


def feed_forward(block: Block, intermediate, output, x):
    """(B, T, D) -> (B, T, D): ``output(activation(intermediate(x)))``; gated (GeGLU, SwiGLU), the activated first
    half of the inner layer (transformers' ``gate_proj``) times its second half (``up_proj``)."""
    inner = intermediate(x)  # (B, T, dff), or (B, T, 2 dff) gated
    if block.mlp == "gated":
        inner, gate = ops.split(inner, 2, axis=-1)
        return output(activate(inner, block.activation) * gate)
    return output(activate(inner, block.activation))


def activate(x, name: str):
    """The activation ``name``: "gelu" is GELU's exact erf form (BERT), "gelu_new" its tanh approximation
    (ALBERT, GPT-2, Gemma's ``gelu_pytorch_tanh``), "silu" ``x * sigmoid(x)`` (Llama), "quick_gelu"
    ``x * sigmoid(1.702 x)`` (CLIP), also "relu" and "tanh"."""
    if name == "silu":
        return ops.silu(x)
    if name == "gelu":
        return ops.gelu(x, approximate=False)
    if name == "gelu_new":
        return gelu_tanh(x)
    if name == "quick_gelu":
        return x * ops.cast(ops.sigmoid(ops.cast(1.702 * x, "float64")), x.dtype)
    if name == "tanh":
        return ops.tanh(x)
    return ops.relu(x)


def gelu_tanh(x):
    """GELU's tanh form, ``0.5 x (1 + tanh(sqrt(2 / pi) (x + 0.044715 x^3)))``, in transformers' order of operations.

    TensorFlow's float32 tanh is a fast approximation (errors up to 3e-7, ten times PyTorch's), which made
    ``ops.gelu(approximate=True)`` drift from transformers by up to 1e-6 per activation; tanh is taken in float64
    here, so the result matches PyTorch's to the bit on all but a few inputs in a thousand.
    """
    inner = math.sqrt(2.0 / math.pi) * (x + 0.044715 * (x * x * x))
    return 0.5 * x * (1.0 + ops.cast(ops.tanh(ops.cast(inner, "float64")), x.dtype))
