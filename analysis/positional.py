"""The positional lab's numbers: how much of each head's attention logits comes from position, and what a relative
or rotary scheme is (NumPy only).

**Position vs content share.** A trace's ``logit_terms`` split each scaled attention logit (before the mask and
softmax) into named terms. The positional part P is the sum of the positional terms (``position`` for MPNet's bias
or RoPE, ``c2p + p2c`` for DeBERTa), the content part C the content term (``content`` or ``c2c``). The softmax
ignores anything constant along a query's row, so each part is measured by its variance over the visible keys of
each query row, averaged over the query rows:

    V(X) = mean over queries q of Var over visible keys k of X[q, k]
    share = V(P) / (V(C) + V(P))

per layer and head: 1 where only position moves the logits, 0 where only content does, NaN where neither varies
(every row has one visible key). The two parts can be correlated, so V(C + P) need not equal V(C) + V(P).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from analysis.inputs import chosen_layer, refusal
from encoder.errors import AnalysisError
from encoder.trace import EncoderTrace

if TYPE_CHECKING:
    from analysis.inputs import Inputs, Options

POSITION_TERMS = ("position", "c2p", "p2c")  # terms that depend on where the tokens are
CONTENT_TERMS = ("content", "c2c")  # terms that depend only on what the tokens are
ABSOLUTE_MESSAGE = ("{model} adds its positions to the input embeddings (an absolute table, see Positional "
                    "encodings), not to the attention logits, so its logits have no separate positional term to "
                    "measure.")
RELATIVE_BIAS_KEYS = ("distances", "bias_by_distance", "bucket_edges")
ROPE_KEYS = ("rope_inv_freq_global", "rope_inv_freq_local")
DEFAULT_ROPE_DISTANCE = 512  # tokens, the decay curve's range
ROPE_SEED = 0  # the fixed random content pair of the decay curve


@dataclass(frozen=True)
class PositionShare:
    """Position vs content share per layer and head (module docstring).

    Attributes:
        share: (L, H) float64, V(P) / (V(C) + V(P)), in [0, 1] (NaN where neither part varies).
        content: (L, H) float64, V(C).
        position: (L, H) float64, V(P).
        terms: name -> (L, H) float64, V of each term alone.
        content_terms, position_terms: the term names summed into C and P.
    """

    share: np.ndarray
    content: np.ndarray
    position: np.ndarray
    terms: dict[str, np.ndarray]
    content_terms: tuple[str, ...]
    position_terms: tuple[str, ...]

    def rows(self, decimals: int = 6) -> list[dict]:
        """One row per head: layer, head, share, content and position variance, then each term's."""
        layers, heads = self.share.shape
        return [{"layer": layer, "head": head, "share": round(float(self.share[layer, head]), decimals),
                 "content_variance": round(float(self.content[layer, head]), decimals),
                 "position_variance": round(float(self.position[layer, head]), decimals),
                 **{f"{name}_variance": round(float(value[layer, head]), decimals)
                    for name, value in self.terms.items()}}
                for layer in range(layers) for head in range(heads)]


def row_variance(term: np.ndarray, visible: np.ndarray | None = None) -> np.ndarray:
    """(L, H) float64: the variance of ``term`` (L, H, T, T) over each query row's visible keys (``visible``
    (L, T, T) bool, None for all), averaged over the query rows that see at least one key."""
    out = np.zeros(term.shape[:2])
    for layer in range(term.shape[0]):
        values = term[layer].astype(np.float64)  # (H, T, T)
        if visible is None:
            out[layer] = values.var(-1).mean(-1)
            continue
        weights = visible[layer].astype(np.float64)[None]  # (1, T, T)
        count = weights.sum(-1)  # (1, T)
        mean = (values * weights).sum(-1) / np.maximum(count, 1)  # (H, T)
        variance = (weights * (values - mean[..., None]) ** 2).sum(-1) / np.maximum(count, 1)  # (H, T)
        rows = count[0] > 0
        out[layer] = variance[:, rows].mean(-1)
    return out


def term_share(terms: dict[str, np.ndarray], visible: np.ndarray | None = None) -> PositionShare:
    """The position vs content share of named logit terms, each (L, H, T, T) (module docstring).

    Raises:
        AnalysisError: no terms, a name that is neither a content nor a positional term, or no content term.
    """
    if not terms:
        raise AnalysisError("no logit terms to split")
    unknown = sorted(set(terms) - set(POSITION_TERMS) - set(CONTENT_TERMS))
    if unknown:
        raise AnalysisError(f"logit terms {', '.join(unknown)} are neither content ({', '.join(CONTENT_TERMS)}) "
                            f"nor positional ({', '.join(POSITION_TERMS)})")
    content_names = tuple(name for name in terms if name in CONTENT_TERMS)
    position_names = tuple(name for name in terms if name in POSITION_TERMS)
    if not content_names:
        raise AnalysisError(f"no content term among the logit terms {', '.join(terms)}")
    zero = np.zeros_like(next(iter(terms.values())))
    content = row_variance(sum((terms[name] for name in content_names), zero), visible)
    position = row_variance(sum((terms[name] for name in position_names), zero), visible)
    total = content + position
    with np.errstate(invalid="ignore", divide="ignore"):
        share = np.where(total > 0, position / total, np.nan)
    return PositionShare(share=share, content=content, position=position,
                         terms={name: row_variance(term, visible) for name, term in terms.items()},
                         content_terms=content_names, position_terms=position_names)


def position_share(trace: EncoderTrace) -> PositionShare:
    """The position vs content share of every head of ``trace`` (over the cells its ``visible`` mask shows).

    Raises:
        AnalysisError: the trace has no logit terms (absolute positions: ``ABSOLUTE_MESSAGE``).
    """
    check_logit_terms(trace)
    return term_share(trace.logit_terms, trace.visible)


def check_logit_terms(trace: EncoderTrace) -> None:
    """Raise AnalysisError (``ABSOLUTE_MESSAGE``) when ``trace`` has no logit terms."""
    if not trace.logit_terms:
        raise AnalysisError(ABSOLUTE_MESSAGE.format(model=trace.model))


def relative_bias_rows(bias: dict[str, np.ndarray]) -> list[dict]:
    """One row per head and signed distance: the bias added to the logit."""
    return [{"head": head, "distance": int(d), "bias": round(float(line[i]), 6)}
            for head, line in enumerate(bias["bias_by_distance"]) for i, d in enumerate(bias["distances"])]


def relative_bias(trace: EncoderTrace) -> dict[str, np.ndarray]:
    """The relative bias by signed distance from ``trace.position_scheme`` (``RELATIVE_BIAS_KEYS``).

    Raises:
        AnalysisError: the model has no relative attention bias.
    """
    scheme = trace.position_scheme
    if not all(key in scheme for key in RELATIVE_BIAS_KEYS):
        raise AnalysisError(f"{trace.model} has no relative attention bias by distance (MPNet has one).")
    return {key: np.asarray(scheme[key]) for key in RELATIVE_BIAS_KEYS}


def term_by_distance(trace: EncoderTrace, layer: int) -> dict[str, np.ndarray]:
    """The positional part P of layer ``layer``'s logits (``POSITION_TERMS`` summed) by signed distance, one line
    per head: the mean of P over this text's visible cells with key - query = d. For MPNet it is the bias itself;
    for DeBERTa (``c2p + p2c``) and rotary positions it also depends on the tokens, hence "over this text".

    Returns:
        ``distances`` (K,) int (the signed distances some visible cell has), ``bias_by_distance`` (H, K) float64,
        ``bucket_edges`` from the scheme where it has buckets (else empty), ``layer`` (1,) int.

    Raises:
        AnalysisError: no positional logit terms (absolute positions), or a layer out of range.
    """
    check_logit_terms(trace)
    if not 0 <= layer < trace.num_layers:
        raise AnalysisError(f"layer {layer} is out of range: the model has {trace.num_layers} layers "
                            f"(0-{trace.num_layers - 1})")
    position = sum(np.asarray(trace.logit_terms[name][layer], dtype=np.float64)
                   for name in POSITION_TERMS if name in trace.logit_terms)  # (H, T, T)
    count = trace.num_tokens
    offsets = np.arange(count)[None, :] - np.arange(count)[:, None]  # (T, T): key - query
    visible = np.ones((count, count), bool) if trace.visible is None else np.asarray(trace.visible[layer], bool)
    bins = (offsets + count - 1)[visible]
    cells = np.bincount(bins, minlength=2 * count - 1)
    sums = np.stack([np.bincount(bins, weights=head[visible], minlength=2 * count - 1) for head in position])
    seen = cells > 0  # distances no visible cell has (outside a sliding window, after a causal mask) are left out
    edges = np.asarray(trace.position_scheme.get("bucket_edges", np.zeros(0)))
    return {"distances": np.arange(1 - count, count)[seen], "bias_by_distance": sums[:, seen] / cells[seen],
            "bucket_edges": edges[np.abs(edges) < count], "layer": np.array([layer])}


@dataclass(frozen=True)
class RopeDecay:
    """What rotary positions do to a dot product, for each theta the model uses ("global", "local").

    Attributes:
        inv_freq: name -> (d/2,) float64, the rotation per token of each dimension pair (radians).
        distances: (N,) int, 0 .. N - 1 tokens between query and key.
        expected: name -> (N,) float64, E[q . R(distance) q] / E[q . q] for random q with independent
            coordinates: the mean of cos(distance * inv_freq) over the pairs (the long-range decay curve).
        sample: name -> (N,) float64, the same for one fixed random q (seed ``ROPE_SEED``), normalised to 1 at 0.
        local_window: the local layers' window in tokens, or 0.
        local_reach: the farthest key distance a local layer's query sees (``local_window // 2`` for ModernBERT's
            symmetric windows, ``local_window - 1`` for a decoder's causal ones), or 0.
    """

    inv_freq: dict[str, np.ndarray]
    distances: np.ndarray
    expected: dict[str, np.ndarray]
    sample: dict[str, np.ndarray]
    local_window: int
    local_reach: int = 0

    def rows(self) -> list[dict]:
        """One row per theta and distance."""
        return [{"theta": name, "distance": int(d), "expected": round(float(self.expected[name][i]), 6),
                 "sample": round(float(self.sample[name][i]), 6)}
                for name in self.expected for i, d in enumerate(self.distances)]


def rope_decay(inv_freq: dict[str, np.ndarray], length: int = DEFAULT_ROPE_DISTANCE, local_window: int = 0,
               seed: int = ROPE_SEED, local_reach: int | None = None) -> RopeDecay:
    """The decay curves of rotary positions with inverse frequencies ``inv_freq`` (name -> (d/2,)) over
    distances 0 .. ``length`` - 1 (see ``RopeDecay``); ``local_reach`` defaults to ``local_window // 2``.

    Example:
        >>> d = 8; freq = 10000.0 ** (-np.arange(0, d, 2) / d)
        >>> rope_decay({"global": freq}, length=3).expected["global"][0]
        1.0
    """
    if length < 1:
        raise AnalysisError(f"the decay curve needs at least 1 distance, got {length}")
    distances = np.arange(length)
    freq = {name: np.asarray(values, dtype=np.float64) for name, values in inv_freq.items()}
    expected, sample = {}, {}
    for name, values in freq.items():
        if values.ndim != 1 or not values.size:
            raise AnalysisError(f"{name} inverse frequencies must be (d/2,), got shape {values.shape}")
        cosines = np.cos(distances[:, None] * values[None])  # (N, d/2)
        pair = np.random.default_rng(seed).normal(size=(values.size, 2))  # one q, as d/2 (even, odd) pairs
        energy = (pair ** 2).sum(-1)  # (d/2,) |q_i|^2: q . R q = sum_i |q_i|^2 cos(distance * freq_i)
        expected[name] = cosines.mean(-1)
        sample[name] = cosines @ energy / energy.sum()
    return RopeDecay(inv_freq=freq, distances=distances, expected=expected, sample=sample,
                     local_window=int(local_window),
                     local_reach=int(local_window // 2 if local_reach is None else local_reach))


def rope_scheme(trace: EncoderTrace, length: int = DEFAULT_ROPE_DISTANCE) -> RopeDecay:
    """``rope_decay`` of the rotary frequencies in ``trace.position_scheme`` (``ROPE_KEYS``, ``local_window``).

    Raises:
        AnalysisError: the model has no rotary positions.
    """
    scheme = trace.position_scheme
    found = {key.removeprefix("rope_inv_freq_"): scheme[key] for key in ROPE_KEYS if key in scheme}
    if not found:
        raise AnalysisError(f"{trace.model} has no rotary positions (ModernBERT has them).")
    window, reach = (int(np.asarray(scheme[key]).reshape(-1)[0]) if key in scheme else None
                     for key in ("local_window", "local_reach"))
    return rope_decay(found, length, window or 0, local_reach=reach)


# ---------------------------------------------------------------------------------------------------------------
# The registry's lab entries: compute(inputs, options), rows(result, trace, options), limit(trace)


def compute_position_share(inputs: Inputs, options: Options) -> PositionShare:
    """``position_share`` of the trace."""
    return position_share(inputs.trace)


def logit_terms_limit(trace: EncoderTrace) -> str | None:
    """Why the trace has no logit terms to measure (``ABSOLUTE_MESSAGE``), or None."""
    return refusal(check_logit_terms, trace)


def compute_relative_bias(inputs: Inputs, options: Options) -> dict[str, np.ndarray]:
    """``relative_bias`` of the trace's model."""
    return relative_bias(inputs.trace)


def relative_bias_limit(trace: EncoderTrace) -> str | None:
    """Why the model has no relative bias by distance, or None."""
    return refusal(relative_bias, trace)


def compute_term_by_distance(inputs: Inputs, options: Options) -> dict[str, np.ndarray]:
    """``term_by_distance`` at the chosen layer (default the last)."""
    return term_by_distance(inputs.trace, chosen_layer(inputs.trace, options))


def bias_rows(result: dict[str, np.ndarray], trace: EncoderTrace, options: Options) -> tuple[list[dict], dict]:
    """A bias (or positional term) by distance: one row per head and signed distance, and the arrays as JSON."""
    return relative_bias_rows(result), result


def compute_rope(inputs: Inputs, options: Options) -> RopeDecay:
    """``rope_scheme`` of the trace's model."""
    return rope_scheme(inputs.trace)


def rope_limit(trace: EncoderTrace) -> str | None:
    """Why the model has no rotary positions, or None."""
    return refusal(rope_scheme, trace)
