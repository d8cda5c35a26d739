"""Norms: the one place a config's norm kind becomes a Keras layer."""

from __future__ import annotations

import keras

from encoder.config import Block


def make_norm(block: Block, name: str, center: bool | None = None) -> keras.layers.Layer:
    """A norm of kind ``block.norm`` ("layernorm") with the model's epsilon; ``center`` (a bias) defaults to
    ``block.use_bias``."""
    return keras.layers.LayerNormalization(epsilon=block.norm_epsilon,
                                           center=block.use_bias if center is None else center, name=name)
