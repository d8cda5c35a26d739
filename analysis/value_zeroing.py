"""Value zeroing (Mohebbi et al., 2023): how much each position's layer output changes when one token's value
vectors are zeroed, for every family the app opens.

Shapes: L layers, T tokens, D model width. For layer ``l`` and its clean input ``x = trace.hidden[l]`` (T, D), the
layer is run once per token ``j`` with ``j``'s value vectors zeroed in every head (``value_mask``; queries, keys and
so the attention weights are unchanged, as is the residual), batched a few rows per call
(``encoder.probes.LayerProbe``, one compiled graph per layer). ``distance[i, j]`` is the cosine distance between
position ``i``'s output with ``j`` zeroed and its clean output (exactly 0 when the output is unchanged bit for
bit); ``C_l[i, j] = distance[i, j] / sum_k distance[i, k]``, rows summing to 1, rolled out over layers as
``attribution.rollout``. Importing this module never imports TensorFlow.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING
from weakref import WeakKeyDictionary

import numpy as np

from analysis import attribution
from analysis.checks import Progress
from analysis.inputs import chosen_layer
from analysis.perturb import check_pairing
from analysis.pooled import pooled_json
from analysis.tables import matrix_result, matrix_rows
from encoder.errors import AnalysisError

if TYPE_CHECKING:
    from analysis.inputs import Inputs, Options
    from encoder.probes import LayerProbe
    from encoder.sources import LoadedModel
    from encoder.trace import EncoderTrace

BATCH_BYTES = 256 * 2**20  # one call's attention weights, B * H * T * T float32, stay under this
MAX_WORK = 6 * 512 * 512 * (12.0 * 384 * 384 + 2.0 * 512 * 384)  # ``work`` of MiniLM at 512 tokens (~1 min, 2 cores)


def rows_per_call(num_heads: int, tokens: int) -> int:
    """How many zeroed copies of a ``tokens``-token input run in one call (attention within ``BATCH_BYTES``)."""
    return max(1, BATCH_BYTES // (4 * num_heads * tokens * tokens))


_PROBES: WeakKeyDictionary = WeakKeyDictionary()  # TransformerEncoder -> its LayerProbe, as long as it lives


def probe(model: LoadedModel) -> LayerProbe:
    """The compiled single-layer runs of ``model`` (made once per model, kept while the model lives)."""
    from encoder.probes import LayerProbe

    found = _PROBES.get(model.model)
    if found is None:
        found = _PROBES[model.model] = LayerProbe(model.model)
    return found


def cosine_distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``1 - cos(a, b)`` along the last axis in float64; exactly 0 where ``a`` and ``b`` are equal bit for bit."""
    same = (a == b).all(axis=-1)
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    cos = (a * b).sum(-1) / np.maximum(np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1), 1e-300)
    return np.where(same, 0.0, 1.0 - cos)


def layer_distances(model: LoadedModel, layer: int, hidden: np.ndarray) -> np.ndarray:
    """(T, T) float64: ``[i, j]`` the cosine distance of position ``i``'s output of layer ``layer`` with token
    ``j``'s values zeroed from its clean output, for the layer input ``hidden`` (T, D).

    Every call runs the clean input (value mask all ones) as its first row, so each zeroed output is compared with
    a clean one computed in the same batch: where zeroing changes nothing the two are equal bit for bit, or (where
    the kernels block a row differently) within float32 rounding, a distance of order 1e-14.
    """
    x = np.asarray(hidden, np.float32)
    tokens = len(x)
    runs = probe(model)
    distances = np.empty((tokens, tokens))
    step = max(1, rows_per_call(model.config.num_heads, tokens) - 1)
    for start in range(0, tokens, step):
        zeroed = np.arange(start, min(start + step, tokens))
        mask = np.ones((1 + len(zeroed), tokens), np.float32)
        mask[1 + np.arange(len(zeroed)), zeroed] = 0.0  # row 0 clean, row 1 + k zeroes token zeroed[k]
        outputs = runs.run(layer, np.broadcast_to(x, (len(mask), *x.shape)), mask)  # (1 + b, T, D)
        distances[:, zeroed] = cosine_distance(outputs[1:], outputs[:1]).T  # (T, b) [i, j]
    return distances


def value_zeroing_layers(model: LoadedModel, trace: EncoderTrace, progress: Progress | None = None) -> np.ndarray:
    """Value zeroing's per-layer matrices (L, T, T) float64: ``layer_distances`` of each layer's clean input
    (``trace.hidden[l]``), rows divided by their sum (every row sums to 1). ``progress(done, total)`` counts layers.

    Raises:
        AnalysisError: the trace is not this model's.
    """
    check_pairing(model, trace)
    layers = []
    for layer in range(trace.num_layers):
        distances = layer_distances(model, layer, trace.hidden[layer])
        layers.append(distances / distances.sum(axis=-1, keepdims=True))
        if progress is not None:
            progress(layer + 1, trace.num_layers)
    return np.stack(layers)


@dataclass(frozen=True, eq=False)
class ValueZeroing:
    """Value zeroing of one trace.

    Attributes:
        layers: (L, T, T) float64, each layer's matrix ``C_l`` (``value_zeroing_layers``); rows sum to 1.
        rollout: (L, T, T) float64, ``attribution.rollout(layers)``: row ``i`` of layer ``l`` is where position
            ``i``'s content after layer ``l`` came from; rows sum to 1.
    """

    layers: np.ndarray
    rollout: np.ndarray


def value_zeroing(model: LoadedModel, trace: EncoderTrace, progress: Progress | None = None) -> ValueZeroing:
    """Value zeroing's per-layer matrices and their rollout (see ``ValueZeroing``).

    Raises:
        AnalysisError: the trace is not this model's, or too long for this model (``size_limit``).
    """
    message = size_limit(trace.num_layers, trace.hidden.shape[-1], trace.num_tokens)
    if message:
        raise AnalysisError(message)
    layers = value_zeroing_layers(model, trace, progress)
    return ValueZeroing(layers, attribution.rollout(layers))


def work(layers: int, width: int, tokens: int) -> float:
    """Multiply-adds of value zeroing: per layer, ``tokens`` runs of a ``tokens``-token layer, counted as the four
    attention projections and a feed-forward block four times as wide (12 D^2 per token) plus the attention
    products (2 T D per token)."""
    return float(layers) * tokens * tokens * (12.0 * width * width + 2.0 * tokens * width)


def max_tokens(layers: int, width: int) -> int:
    """The longest input whose ``work`` stays within ``MAX_WORK`` (MiniLM at 512 tokens)."""
    tokens = 1
    while work(layers, width, tokens + 1) <= MAX_WORK:
        tokens += 1
    return tokens


def size_limit(layers: int, width: int, tokens: int) -> str | None:
    """Why an input of ``tokens`` tokens is too long for value zeroing on a model of this size, else None."""
    longest = max_tokens(layers, width)
    if tokens <= longest:
        return None
    return (f"Value zeroing runs every layer once per token, so on a model of this size ({layers} layers of width "
            f"{width}) it is limited to {longest} tokens; this input has {tokens}. Shorten the text (or set Max "
            f"tokens to {longest}).")


# ---------------------------------------------------------------------------------------------------------------
# The registry's value zeroing: compute(inputs, options), rows(result, trace, options), limit(trace)


def compute_value_zeroing(inputs: Inputs, options: Options) -> ValueZeroing:
    """``value_zeroing`` of the trace, re-running its model."""
    return value_zeroing(inputs.model(), inputs.trace, progress=inputs.progress("layers"))


def value_zeroing_limit(trace: EncoderTrace) -> str | None:
    """Why this input is too large to zero every token's values in (``size_limit``), or None."""
    return size_limit(trace.num_layers, trace.hidden.shape[-1], trace.num_tokens)


def value_zeroing_rows(result: ValueZeroing, trace: EncoderTrace, options: Options) -> tuple[list[dict], dict]:
    """The rollout after the chosen layer ("value-zeroing") and that layer's own matrix ("layer_share"), per cell."""
    layer = chosen_layer(trace, options)
    rows = matrix_rows(result.rollout[layer], trace.tokens, "value-zeroing")
    for row, share in zip(rows, result.layers[layer].ravel()):
        row["layer_share"] = float(share)
    return rows, matrix_result("value-zeroing", trace, layer, rows, **pooled_json(trace, result.rollout[layer]))
