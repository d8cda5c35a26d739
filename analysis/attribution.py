"""Norm-based attribution (Kobayashi et al., 2020), GlobEnc (Modarressi et al., 2022) and ALTI (Ferrando et al.,
2022) for post-layer-norm BERT-family encoders and pre-layer-norm blocks with a layer norm (CLIP's text encoder,
GPT-2), in NumPy from a trace and each layer's ported weights.

Shapes: L layers, H heads, T tokens, D model width, dh = D / H. ``x = trace.hidden[l]`` (T, D) is layer ``l``'s
input and ``alpha = trace.attention[l]`` (H, T, T) its attention. Per head, the value path of token ``j`` is
``f_h(x_j) = (n(x_j) W_V^h + b_V^h) W_O^h`` (D,), with ``n`` the identity in a post-LN block and the attention
norm (``layer_norm1``, applied to each position alone) in a pre-LN one, so the attention block's output (before
the residual) is exactly ``sum_h sum_j alpha_hij f_h(x_j) + b_O``: each term is one token's, since ``n`` never
mixes positions.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import accumulate
from typing import TYPE_CHECKING, Any

import numpy as np

from analysis.inputs import chosen_layer
from analysis.pooled import pooled_json
from analysis.tables import matrix_result, matrix_rows
from encoder.errors import AnalysisError

if TYPE_CHECKING:
    from analysis.inputs import Inputs, Options
    from encoder.trace import EncoderTrace


@dataclass(frozen=True)
class LayerWeights:
    """One layer's value and output projections and its attention norm (plain float32 arrays).

    Attributes:
        value_kernel: (D, H, dh) W_V.  value_bias: (H, dh) b_V.
        output_kernel: (H, dh, D) W_O.  output_bias: (D,) b_O.
        norm_gamma, norm_beta: (D,) the attention norm's scale and shift.  epsilon: its epsilon.
        pre_norm: the norm is applied to each token before attention (``x + attention(norm(x))``); False: after
            the residual sum (``norm(x + attention(x))``, BERT).
    """

    value_kernel: np.ndarray
    value_bias: np.ndarray
    output_kernel: np.ndarray
    output_bias: np.ndarray
    norm_gamma: np.ndarray
    norm_beta: np.ndarray
    epsilon: float
    pre_norm: bool = False


def check_decomposable(model: Any) -> None:
    """Raise ``AnalysisError`` unless ``model`` (a LoadedModel) has blocks these methods decompose exactly: a
    post-LN BERT-family encoder with biases, or pre-LN blocks with a layer norm before attention (CLIP, GPT-2)."""
    config = model.config
    block = config.block
    pre = block.placement == "pre"
    problems = {"disentangled-attention": config.relative_attention,
                "bias-free": not config.use_bias,
                "factorised-embedding": config.embedding_width != config.d_model,
                "pre-layer-norm with RMSNorm": pre and block.norm != "layernorm",
                "pre-layer-norm with norms after attention": pre and block.sandwich_norms,
                "pre-layer-norm without a first attention norm": pre and not block.first_attention_norm,
                "grouped-query": config.key_value_heads != config.num_heads}
    kind = next((name for name, found in problems.items() if found), None)
    if kind is not None:
        raise AnalysisError(f"Norm-based, GlobEnc and ALTI decompose a post-layer-norm BERT block "
                            f"(norm(x + attention(x)) with biases) or a pre-layer-norm block with a layer norm "
                            f"(x + attention(layernorm(x)), CLIP or GPT-2); {model.name} is {kind}. Use MiniLM, "
                            f"another BERT-family model or a CLIP text encoder.")


def layer_weights(model: Any, layer: int) -> LayerWeights:
    """Read layer ``layer``'s ``LayerWeights`` from a LoadedModel (refusing models ``check_decomposable``
    refuses)."""
    check_decomposable(model)
    block = model.model.encoder_layers[layer]
    attention, norm = block.attention, block.attention_norm
    return LayerWeights(
        attention.value_dense.kernel.numpy(), attention.value_dense.bias.numpy(),
        attention.output_dense.kernel.numpy(), attention.output_dense.bias.numpy(),
        norm.gamma.numpy(), norm.beta.numpy(), float(norm.epsilon), model.config.block.placement == "pre")


def layer_norm(x: np.ndarray, gamma: np.ndarray, beta: np.ndarray, epsilon: float) -> np.ndarray:
    """``gamma * (x - mean(x)) / sqrt(var(x) + epsilon) + beta`` over the last axis, float64."""
    x = np.asarray(x, np.float64)
    centred = x - x.mean(axis=-1, keepdims=True)
    return gamma * centred / np.sqrt((centred * centred).mean(axis=-1, keepdims=True) + epsilon) + beta


def value_vectors(hidden: np.ndarray, weights: LayerWeights) -> np.ndarray:
    """``f_h(x_j)`` for every head and token: (T, D) -> (H, T, D) float64 (through the attention norm first in a
    pre-LN block)."""
    x = np.asarray(hidden, np.float64)
    if weights.pre_norm:
        x = layer_norm(x, weights.norm_gamma, weights.norm_beta, weights.epsilon)
    values = np.einsum("td,dhk->htk", x, weights.value_kernel) + weights.value_bias[:, None]  # (H, T, dh)
    return np.einsum("htk,hkd->htd", values, weights.output_kernel)  # (H, T, D)


def weighted_vectors(hidden: np.ndarray, attention: np.ndarray, weights: LayerWeights) -> np.ndarray:
    """``alpha_hij f_h(x_j)``: (H, T, T, D) float64; summed over heads and keys plus b_O it is the block's output."""
    return np.asarray(attention, np.float64)[..., None] * value_vectors(hidden, weights)[:, None]


def norm_based(hidden: np.ndarray, attention: np.ndarray, weights: list[LayerWeights]) -> np.ndarray:
    """Norm-based attention (Kobayashi et al., 2020): ``||alpha_hij f_h(x_j)||`` as (L, H, T, T) float64.

    Args:
        hidden: (L + 1, T, D) the trace's hidden states (``hidden[l]`` is layer ``l``'s input).
        attention: (L, H, T, T) the trace's attention.
        weights: one ``LayerWeights`` per layer.
    """
    _check(hidden, attention, weights)
    return np.stack([
        np.asarray(attention[layer], np.float64) * np.linalg.norm(value_vectors(hidden[layer], w), axis=-1)[:, None]
        for layer, w in enumerate(weights)])


def layer_contributions(hidden: np.ndarray, attention: np.ndarray, weights: LayerWeights) -> tuple[np.ndarray,
                                                                                                  np.ndarray]:
    """Token ``j``'s vector in position ``i`` after attention + residual (+ the attention norm in a post-LN block),
    and the sum they make.

    ``z_ij = sum_h alpha_hij f_h(x_j) + [i = j] x_j`` and ``u_i = sum_j z_ij + b_O``. A pre-LN block stops there:
    its residual stream after attention is ``u_i``, split exactly into ``z_ij`` and ``b_O``. In a post-LN block
    the layer norm splits exactly: ``LN(u_i) = sum_j T_ij + gamma * (b_O - mean(b_O)) / s_i + beta`` with
    ``T_ij = gamma * (z_ij - mean(z_ij)) / s_i`` and ``s_i = sqrt(var(u_i) + eps)``.

    Returns:
        ``(T_ij (T, T, D), LN(u_i) (T, D))`` (post-LN) or ``(z_ij, u_i)`` (pre-LN), float64.
    """
    x = np.asarray(hidden, np.float64)
    mixed = weighted_vectors(x, attention, weights).sum(axis=0)  # (T, T, D)
    mixed[np.arange(len(x)), np.arange(len(x))] += x  # the residual: token i's own input
    total = mixed.sum(axis=1) + weights.output_bias  # (T, D) u_i
    if weights.pre_norm:
        return mixed, total
    scale = np.sqrt(total.var(axis=-1) + weights.epsilon)[:, None, None]  # (T, 1, 1)
    parts = weights.norm_gamma * (mixed - mixed.mean(axis=-1, keepdims=True)) / scale
    centred = total - total.mean(axis=-1, keepdims=True)
    return parts, weights.norm_gamma * centred / scale[:, 0] + weights.norm_beta


def globenc_layers(hidden: np.ndarray, attention: np.ndarray, weights: list[LayerWeights]) -> np.ndarray:
    """GlobEnc's per-layer matrices (N_ResLN): ``C_ij = ||T_ij|| / sum_k ||T_ik||``, (L, T, T) float64.

    ``T_ij`` from ``layer_contributions`` (attention, residual and, in a post-LN block, the first layer norm); the
    feed-forward block and the second layer norm are not decomposed. Every row sums to 1.
    """
    _check(hidden, attention, weights)
    norms = np.stack([np.linalg.norm(layer_contributions(hidden[layer], attention[layer], w)[0], axis=-1)
                      for layer, w in enumerate(weights)])
    return norms / norms.sum(axis=-1, keepdims=True)


def alti_layers(hidden: np.ndarray, attention: np.ndarray, weights: list[LayerWeights]) -> np.ndarray:
    """ALTI's per-layer matrices: ``c_ij = max(0, ||y_i||_1 - ||y_i - T_ij||_1)``, rows divided by their sum.

    ``y_i`` is the attention sublayer's output (``LN(u_i)`` post-LN, ``u_i`` pre-LN; biases included) and ``T_ij``
    token ``j``'s part of it (``layer_contributions``): a token contributes as much as the output gets closer to
    it, in Manhattan distance. (L, T, T) float64; every row sums to 1.
    """
    _check(hidden, attention, weights)
    layers = []
    for layer, w in enumerate(weights):
        parts, output = layer_contributions(hidden[layer], attention[layer], w)
        closeness = np.abs(output).sum(-1)[:, None] - np.abs(output[:, None] - parts).sum(-1)  # (T, T)
        closeness = np.maximum(closeness, 0.0)
        layers.append(closeness / closeness.sum(axis=-1, keepdims=True))
    return np.stack(layers)


def rollout(layers: np.ndarray) -> np.ndarray:
    """Roll per-layer token-to-token matrices (L, T, T) out over layers: ``R_l = C_l @ R_{l-1}``, ``R_0 = C_0``."""
    return np.stack(list(accumulate(layers, lambda rolled, layer: layer @ rolled)))


def _check(hidden: np.ndarray, attention: np.ndarray, weights: list[LayerWeights]) -> None:
    layers, _, tokens, _ = np.shape(attention)
    if np.shape(hidden)[:2] != (layers + 1, tokens):
        raise AnalysisError(f"hidden must be ({layers + 1}, {tokens}, D) for attention {np.shape(attention)}, got "
                            f"shape {np.shape(hidden)}")
    if len(weights) != layers:
        raise AnalysisError(f"Attention has {layers} layers, while {len(weights)} layers of weights were given")


# ---------------------------------------------------------------------------------------------------------------
# The registry's norm-based, GlobEnc and ALTI: compute(inputs, options) -> (L, T, T), rows(result, trace, options)


def _all_weights(inputs: Inputs) -> tuple[Any, list[LayerWeights]]:
    """The trace and every layer's weights from the inputs' model."""
    trace, model = inputs.trace, inputs.model()
    return trace, [layer_weights(model, layer) for layer in range(trace.num_layers)]


def compute_norm(inputs: Inputs, options: Options) -> np.ndarray:
    """Norm-based attention, head mean: (L, T, T)."""
    trace, weights = _all_weights(inputs)
    return norm_based(trace.hidden, trace.attention, weights).mean(axis=1)


def compute_globenc(inputs: Inputs, options: Options) -> np.ndarray:
    """GlobEnc rolled out: (L, T, T)."""
    trace, weights = _all_weights(inputs)
    return rollout(globenc_layers(trace.hidden, trace.attention, weights))


def compute_alti(inputs: Inputs, options: Options) -> np.ndarray:
    """ALTI rolled out: (L, T, T)."""
    trace, weights = _all_weights(inputs)
    return rollout(alti_layers(trace.hidden, trace.attention, weights))


def layer_rows(kind: str, result: np.ndarray, trace: EncoderTrace, options: Options) -> tuple[list[dict], dict]:
    """An (L, T, T) attribution at the chosen layer (default the last), one row per cell, and its JSON (with the
    pooled token's row, ``analysis.pooled``, for a model that has one)."""
    layer = chosen_layer(trace, options)
    rows = matrix_rows(result[layer], trace.tokens, kind)
    return rows, matrix_result(kind, trace, layer, rows, **pooled_json(trace, result[layer]))


def norm_rows(result: np.ndarray, trace: EncoderTrace, options: Options) -> tuple[list[dict], dict]:
    """``layer_rows`` of norm-based attention."""
    return layer_rows("norm", result, trace, options)


def globenc_rows(result: np.ndarray, trace: EncoderTrace, options: Options) -> tuple[list[dict], dict]:
    """``layer_rows`` of GlobEnc."""
    return layer_rows("globenc", result, trace, options)


def alti_rows(result: np.ndarray, trace: EncoderTrace, options: Options) -> tuple[list[dict], dict]:
    """``layer_rows`` of ALTI."""
    return layer_rows("alti", result, trace, options)
