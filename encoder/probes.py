"""One encoder layer run alone on a given input, with a value mask: the probe behind value zeroing.

``LayerProbe(model).run(layer, x, value_mask)`` runs ``model.encoder_layers[layer]`` on ``x`` (B, T, D) with what
the whole model gives that layer for an unpadded T-token input (``TransformerEncoder.layer_context``: the causal
mask, the relative position bias or DeBERTa's positions; local windows and rotary positions the layer makes
itself) and ``value_mask`` (B, T) multiplying each key token's value vectors. Each layer is one ``tf.function`` of
unknown batch and length, traced once.
"""

from __future__ import annotations

import weakref
from functools import partial
from typing import TYPE_CHECKING

import numpy as np
import tensorflow as tf

from encoder.trace import to_numpy

if TYPE_CHECKING:
    from encoder.model import TransformerEncoder


class LayerProbe:
    """Compiled single-layer runs of one ``TransformerEncoder`` (one graph per layer, any batch and length).

    Example:
        >>> probe = LayerProbe(load_source("minilm").model)  # doctest: +SKIP
        >>> probe.run(0, trace.hidden[0][None], np.ones((1, trace.num_tokens), "float32")).shape  # doctest: +SKIP
        (1, 9, 384)
    """

    def __init__(self, model: TransformerEncoder):
        self._model = weakref.ref(model)  # the graphs hold the layers' weights; the model may still be freed
        signature = [tf.TensorSpec([None, None, model.config.d_model], tf.float32),
                     tf.TensorSpec([None, None], tf.float32)]
        # A partial per layer: tf.function counts retracing per code object, and one layer's graph is not a retrace
        # of another's.
        self._layers = [tf.function(partial(self._run, layer), input_signature=signature)
                        for layer in model.encoder_layers]

    def _run(self, layer, x, value_mask):
        attention_mask, position_bias = self._model().layer_context(tf.shape(x)[1])
        output, _, _ = layer(x, attention_mask=attention_mask, position_bias=position_bias, value_mask=value_mask,
                             training=False)
        return output  # (B, T, D)

    def run(self, layer: int, x: np.ndarray, value_mask: np.ndarray) -> np.ndarray:
        """Layer ``layer``'s output (B, T, D) float32 for input ``x`` (B, T, D) and ``value_mask`` (B, T) float
        (1 keeps a key token's values, 0 zeroes them in every head)."""
        x, value_mask = np.asarray(x, np.float32), np.asarray(value_mask, np.float32)
        if x.ndim != 3 or value_mask.shape != x.shape[:2]:
            raise ValueError(f"value_mask must be (B, T) = {x.shape[:2]} for x of shape {x.shape}, got "
                             f"{value_mask.shape}")
        return to_numpy(self._layers[layer](x, value_mask))

    def tracing_count(self) -> int:
        """Graphs traced so far over all layers (one per layer, whatever the batch and length)."""
        return sum(f.experimental_get_tracing_count() for f in self._layers)
