"""Figures for norm-based attribution, GlobEnc, ALTI (``analysis.attribution``) and value zeroing
(``analysis.value_zeroing``): token x token heatmaps."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import plotly.graph_objects as go

from analysis.inputs import chosen_layer
from viz.analysis_figures import Figures, Options, pooled_figures, style, token_heatmap
from viz.layout import DEFAULT_SCALE
from viz.validation import check_colorscale, check_index

if TYPE_CHECKING:
    from analysis.value_zeroing import ValueZeroing
    from encoder.trace import EncoderTrace

# method -> (title before " after layer N" / " in layer N", how to read it)
METHODS = {
    "norm": ("Norm-based attention (head mean) in layer {layer}",
             "Cell (i, j): ||alpha_ij f(x_j)||, how large token j's weighted value vector is in position i, "
             "averaged over heads (Kobayashi et al., 2020)."),
    "globenc": ("GlobEnc rollout after layer {layer}",
                "Row i: the share of each input token (column) in position i, attention + residual + layer norm "
                "decomposed by vector norms and multiplied through layers 0-{layer}; rows sum to 1."),
    "alti": ("ALTI rollout after layer {layer}",
             "Row i: the share of each input token (column) in position i, by how close each token's part is to "
             "the layer's output (Manhattan distance), multiplied through layers 0-{layer}; rows sum to 1."),
    "value-zeroing": ("Value zeroing rollout after layer {layer}",
                      "Row i: the share of each input token (column) in position i, by how far each layer's output "
                      "moves (cosine distance) when that token's values are zeroed, multiplied through layers "
                      "0-{layer}; rows sum to 1."),
    "value-zeroing-layer": ("Value zeroing in layer {layer}",
                            "Row i: how far position i's output of this layer moves (cosine distance) when token j's "
                            "value vectors are zeroed in every head, as a share of the row (Mohebbi et al., 2023)."),
}


def build_attribution_heatmap(
    values: np.ndarray, tokens: Sequence[str], method: str, layer: int = -1, colorscale: str = DEFAULT_SCALE
) -> go.Figure:
    """One layer of an (L, T, T) attribution (``method``: one of ``METHODS``), tokens on both axes."""
    check_colorscale(colorscale)
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    values = np.asarray(values)
    if values.ndim != 3 or values.shape[1:] != (len(tokens), len(tokens)):
        raise ValueError(f"{method} must be (layers, T, T) for {len(tokens)} tokens, got shape {values.shape}")
    layer = check_index(layer % values.shape[0] if layer < 0 else layer, values.shape[0], "layer", method)
    title, subtitle = METHODS[method]
    value_name = "norm" if method == "norm" else "share"
    return token_heatmap(values[layer], tokens, tokens, title.format(layer=layer), subtitle.format(layer=layer),
                          colorscale, 0.0, float(values[layer].max()), value_name)


def _layer_figures(method: str, result: np.ndarray, trace: EncoderTrace, options: Options) -> Figures:
    layer = chosen_layer(trace, options)
    return [(method, build_attribution_heatmap(result, trace.readable_tokens, method, layer, **style(options)))]


def _pooled(method: str, rolled: np.ndarray, trace: EncoderTrace, layer: int) -> Figures:
    """The pooled token's row of an (L, T, T) rollout after ``layer`` (``pooled_figures``), titled as ``method``."""
    return pooled_figures(method, rolled[layer], trace, METHODS[method][0].format(layer=layer))


def norm_figures(result: np.ndarray, trace: EncoderTrace, options: Options) -> Figures:
    return _layer_figures("norm", result, trace, options)


def globenc_figures(result: np.ndarray, trace: EncoderTrace, options: Options) -> Figures:
    """The rollout after the chosen layer, then the pooled token's row of it where the model has one."""
    return [*_layer_figures("globenc", result, trace, options),
            *_pooled("globenc", result, trace, chosen_layer(trace, options))]


def alti_figures(result: np.ndarray, trace: EncoderTrace, options: Options) -> Figures:
    """The rollout after the chosen layer, then the pooled token's row of it where the model has one."""
    return [*_layer_figures("alti", result, trace, options),
            *_pooled("alti", result, trace, chosen_layer(trace, options))]


def value_zeroing_figures(result: ValueZeroing, trace: EncoderTrace, options: Options) -> Figures:
    """The rollout after the chosen layer, the pooled token's row of it (where the model has one), then that layer
    alone."""
    layer = chosen_layer(trace, options)
    rolled, alone = ((name, build_attribution_heatmap(values, trace.readable_tokens, name, layer, **style(options)))
                     for name, values in (("value-zeroing", result.rollout), ("value-zeroing-layer", result.layers)))
    return [rolled, *_pooled("value-zeroing", result.rollout, trace, layer), alone]
