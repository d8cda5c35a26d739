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

**Long traces.** A long trace (``LazyAttention``) keeps no logit terms, only each layer's queries and keys as the
logit rule multiplied them; the terms are recomputed from those, a layer at a time (``layer_terms``), never a
layer's (H, T, T). The content term is a product a_q . b_k, and so is the rotary positional one (q' . k' - q . k =
[q', q] . [k', -k], primes rotated), so each row's sums over its visible keys come from the keys' first and second
moments (``Moments``, O(T m^2) per head) plus the cells near the block's edges; a relative bias's from its prefix
sums along the distances. Position by distance sums all T - |d| cells at a distance (a long trace's mask depends
on the distance alone): a bias is itself, a rotary term a cross-correlation by FFT. A short trace of a rotary
decoder records no terms (its second product is left out: ``UNRECORDED_MESSAGE``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from analysis.inputs import chosen_layer, refusal
from encoder.attention_store import LazyAttention
from encoder.errors import AnalysisError
from encoder.numerics import stacked_product, unrotated
from encoder.trace import EncoderTrace

if TYPE_CHECKING:
    from analysis.checks import Progress
    from analysis.inputs import Inputs, Options

POSITION_TERMS = ("position", "c2p", "p2c")  # terms that depend on where the tokens are
CONTENT_TERMS = ("content", "c2c")  # terms that depend only on what the tokens are
ABSOLUTE_MESSAGE = ("{model} adds its positions to the input embeddings (an absolute table, see Positional "
                    "encodings), not to the attention logits, so its logits have no separate positional term to "
                    "measure.")
UNRECORDED_MESSAGE = ("{model}'s trace does not split its logits into content and position: a rotary decoder leaves "
                      "out that second product per layer in a trace kept whole (a short input); a long trace "
                      "recomputes the split from its queries and keys.")
RELATIVE_BIAS_KEYS = ("distances", "bias_by_distance", "bucket_edges")
ROPE_KEYS = ("rope_inv_freq_global", "rope_inv_freq_local")
LONG_ROWS = 128  # query rows per block of a long trace's terms (``layer_variances``)
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
    return shares(content, position, {name: row_variance(term, visible) for name, term in terms.items()},
                  content_names, position_names)


def shares(content: np.ndarray, position: np.ndarray, terms: dict[str, np.ndarray],
           content_names: tuple[str, ...], position_names: tuple[str, ...]) -> PositionShare:
    """The ``PositionShare`` of the variances V(C) and V(P), each (L, H), and each term's."""
    total = content + position
    with np.errstate(invalid="ignore", divide="ignore"):
        share = np.where(total > 0, position / total, np.nan)
    return PositionShare(share=share, content=content, position=position, terms=terms,
                         content_terms=content_names, position_terms=position_names)


def position_share(trace: EncoderTrace, progress: Progress | None = None) -> PositionShare:
    """The position vs content share of every head of ``trace`` (over the cells its ``visible`` mask shows): of its
    ``logit_terms``, or for a long trace of the terms its queries and keys give (``long_position_share``, calling
    ``progress(layers done, layers)`` after each layer).

    Raises:
        AnalysisError: the trace has no logit terms to split (``terms_unavailable``).
    """
    check_logit_terms(trace)
    if not trace.logit_terms:
        return long_position_share(trace, progress)
    return term_share(trace.logit_terms, trace.visible)


def check_logit_terms(trace: EncoderTrace) -> None:
    """Raise AnalysisError (``terms_unavailable``'s message) when ``trace`` has no logit terms to split."""
    why = terms_unavailable(trace)
    if why is not None:
        raise AnalysisError(why)


def terms_unavailable(trace: EncoderTrace) -> str | None:
    """Why ``trace`` has no logit terms to split, or None: absolute positions (``ABSOLUTE_MESSAGE``), or a trace
    kept whole of a rotary decoder, which leaves out the product that splits them (``UNRECORDED_MESSAGE``). A long
    trace (``LazyAttention``) of a relative bias or rotary positions has them in its queries and keys."""
    if trace.logit_terms:
        return None
    rotary = any(key in trace.position_scheme for key in ROPE_KEYS)
    if isinstance(trace.attention, LazyAttention):
        if rotary or trace.attention.recipe.bias_table is not None:
            return None
        return ABSOLUTE_MESSAGE.format(model=trace.model)
    return (UNRECORDED_MESSAGE if rotary else ABSOLUTE_MESSAGE).format(model=trace.model)


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
        AnalysisError: no positional logit terms (``terms_unavailable``), or a layer out of range.
    """
    check_logit_terms(trace)
    if not 0 <= layer < trace.num_layers:
        raise AnalysisError(f"layer {layer} is out of range: the model has {trace.num_layers} layers "
                            f"(0-{trace.num_layers - 1})")
    if not trace.logit_terms:
        return long_term_by_distance(trace, layer)
    position = sum(np.asarray(trace.logit_terms[name][layer], dtype=np.float64)
                   for name in POSITION_TERMS if name in trace.logit_terms)  # (H, T, T)
    count = trace.num_tokens
    offsets = np.arange(count)[None, :] - np.arange(count)[:, None]  # (T, T): key - query
    visible = np.ones((count, count), bool) if trace.visible is None else np.asarray(trace.visible[layer], bool)
    bins = (offsets + count - 1)[visible]
    cells = np.bincount(bins, minlength=2 * count - 1)
    sums = np.stack([np.bincount(bins, weights=head[visible], minlength=2 * count - 1) for head in position])
    seen = cells > 0  # distances no visible cell has (outside a sliding window, after a causal mask) are left out
    return by_distance(trace, layer, sums[:, seen] / cells[seen], np.arange(1 - count, count)[seen])


def by_distance(trace: EncoderTrace, layer: int, means: np.ndarray, distances: np.ndarray) -> dict[str, np.ndarray]:
    """``term_by_distance``'s result: ``means`` (H, K) at ``distances`` (K,), the scheme's bucket edges."""
    edges = np.asarray(trace.position_scheme.get("bucket_edges", np.zeros(0)))
    return {"distances": distances, "bias_by_distance": means, "bucket_edges": edges[np.abs(edges) < trace.num_tokens],
            "layer": np.array([layer])}


# ---------------------------------------------------------------------------------------------------------------
# A long trace's terms, from its queries and keys (never a layer's (H, T, T) at once)


@dataclass(frozen=True)
class Bilinear:
    """A logit term that is a product, X[q, k] = a_q . b_k: ``a`` (H, T, m) and ``b`` (Hkv, T, m) float64 (query
    head h reads key head ``h // (H / Hkv)``). The content term is one (a = scaled queries, b = keys), and so is the
    rotary positional term: q' . k' - q . k = [q', q] . [k', -k] (primes: rotated)."""

    a: np.ndarray
    b: np.ndarray

    @property
    def groups(self) -> np.ndarray:
        """(H,) int: the key head each query head reads."""
        heads, key_heads = len(self.a), len(self.b)
        return np.arange(heads) // (heads // key_heads)

    def moments(self, lo: int, hi: int) -> tuple[np.ndarray, np.ndarray]:
        """``(sum of b (Hkv, m), sum of b b^T (Hkv, m, m))`` over keys ``lo`` .. ``hi - 1``."""
        keys = self.b[:, lo:hi]
        return keys.sum(1), stacked_product(keys.transpose(0, 2, 1), keys)

    def cells(self, begin: int, end: int, lo: int, hi: int) -> np.ndarray:
        """(H, R, S) float64: the term of queries ``begin`` .. ``end - 1`` over keys ``lo`` .. ``hi - 1``."""
        return stacked_product(self.a[:, begin:end], self.b[:, lo:hi].transpose(0, 2, 1)[self.groups])


@dataclass(frozen=True)
class LayerTerms:
    """One layer's ``content`` and ``position`` terms of a long trace (``layer_terms``): the content ``Bilinear``;
    the positional one ``Bilinear`` (rotary positions) or a relative bias ``line`` (H, 2T - 1) float64, the bias at
    each key - query distance from 1 - T to T - 1."""

    content: Bilinear
    position: Bilinear | None = None
    line: np.ndarray | None = None


def layer_terms(trace: EncoderTrace, layer: int) -> LayerTerms:
    """Layer ``layer``'s logit terms as the logit rules define them (``encoder.parts.positions``), from a long
    trace's queries and keys (``LazyAttention``): content q.k * scaling of the queries and keys as projected (and
    normalised); position a relative bias (``AttentionRecipe.bias``), or the rotated product minus the content. The
    store keeps rotary queries and keys rotated: they are turned back by the same angles (``rotary_angles`` of the
    scheme's frequencies, the local ones in a windowed layer), the inverse rotation."""
    store: LazyAttention = trace.attention
    recipe, length = store.recipe, trace.num_tokens
    layer_queries, layer_keys = store.queries_keys.layer(layer)  # (T, H, dh), (T, Hkv, dh)
    queries = layer_queries.transpose(1, 0, 2).astype(np.float64) * recipe.scaling  # (H, T, dh)
    keys = layer_keys.transpose(1, 0, 2).astype(np.float64)  # (Hkv, T, dh)
    if recipe.bias_table is not None:
        heads = np.arange(trace.num_heads)
        line = recipe.bias(layer, heads, length - 1, length, 2 * length - 1)  # query T - 1 over 2T - 1 keys
        return LayerTerms(Bilinear(queries, keys), line=np.asarray(line)[0, :, 0].astype(np.float64))
    plain_queries, plain_keys = unrotated(queries, keys, rotary_frequencies(trace, layer))
    return LayerTerms(Bilinear(plain_queries, plain_keys),
                      Bilinear(np.concatenate([queries, plain_queries], -1), np.concatenate([keys, -plain_keys], -1)))


def rotary_frequencies(trace: EncoderTrace, layer: int) -> np.ndarray:
    """(d / 2,) float32: the rotary frequencies of ``layer`` (the local ones in a windowed layer)."""
    scheme, local = trace.position_scheme, bool(trace.attention.recipe.windows[layer])
    return np.asarray(scheme[ROPE_KEYS[1] if local and ROPE_KEYS[1] in scheme else ROPE_KEYS[0]], np.float32)


def long_position_share(trace: EncoderTrace, progress: Progress | None = None) -> PositionShare:
    """``position_share`` of a long trace (``LazyAttention``): each layer's ``layer_terms``, their variances over
    each query row's visible keys from sums (``layer_variances``), a block of ``LONG_ROWS`` query rows at a time;
    ``progress(layers done, layers)`` after each layer."""
    layers, heads = trace.num_layers, trace.num_heads
    content, position = np.zeros((layers, heads)), np.zeros((layers, heads))
    for layer in range(layers):
        content[layer], position[layer] = layer_variances(layer_terms(trace, layer), trace.visible, layer)
        if progress is not None:
            progress(layer + 1, layers)
    return shares(content, position, {"content": content, "position": position}, ("content",), ("position",))


def layer_variances(terms: LayerTerms, visible, layer: int) -> tuple[np.ndarray, np.ndarray]:
    """``(V(C), V(P))``, each (H,) float64, of one layer (module docstring). Each query row's variance over its
    visible keys is E[x^2] - E[x]^2 of sums in float64: a bilinear term's sums over the keys every row of a block
    sees come from their moments (``Moments``), the others' from the cells themselves (at most ``LONG_ROWS`` wide
    each side); a bias's from its prefix sums along the distances. The visible keys of a row are contiguous (a
    causal mask, a window): ``visible`` (L, T, T) bool (a ``LazyVisible``) or None."""
    heads, length = terms.content.a.shape[:2]
    content, position = Moments(terms.content), None if terms.position is None else Moments(terms.position)
    line_sums = None if terms.line is None else [np.concatenate([np.zeros((heads, 1)), np.cumsum(power, -1)], -1)
                                                 for power in (terms.line, terms.line ** 2)]  # (H, 2T)
    totals, rows = np.zeros((2, heads)), 0
    for begin in range(0, length, LONG_ROWS):
        end = min(begin + LONG_ROWS, length)
        seen = None if visible is None else np.asarray(visible[layer, begin:end], bool)  # (R, T)
        lo, hi = key_ranges(seen, begin, end, length)
        count = hi - lo  # (R,)
        kept = count > 0
        parts = [content.sums(seen, begin, end, lo, hi)]
        if position is not None:
            parts.append(position.sums(seen, begin, end, lo, hi))
        else:
            first, last = lo - np.arange(begin, end) + length - 1, hi - np.arange(begin, end) + length - 1
            parts.append(tuple(prefix[:, last] - prefix[:, first] for prefix in line_sums))
        for place, (first_sum, second_sum) in enumerate(parts):  # each (H, R)
            mean = first_sum[:, kept] / count[kept]
            totals[place] += np.maximum(second_sum[:, kept] / count[kept] - mean ** 2, 0.0).sum(-1)
        rows += int(kept.sum())
    return (totals[0] / rows, totals[1] / rows) if rows else (np.full(heads, np.nan), np.full(heads, np.nan))


def key_ranges(seen: np.ndarray | None, begin: int, end: int, length: int) -> tuple[np.ndarray, np.ndarray]:
    """``(lo, hi)``, each (R,) int: the keys ``lo`` .. ``hi - 1`` each query row ``begin`` .. ``end - 1`` sees
    (``seen`` (R, T) bool; None: every key); a row that sees none has lo = hi.

    Raises:
        AnalysisError: a row whose visible keys are not contiguous.
    """
    rows = end - begin
    if seen is None:
        return np.zeros(rows, np.int64), np.full(rows, length, np.int64)
    lo, hi = seen.argmax(-1), length - seen[:, ::-1].argmax(-1)
    count = seen.sum(-1)
    hi = np.where(count > 0, hi, lo)
    if np.any(hi - lo != count):
        raise AnalysisError("a query's visible keys are not contiguous, which the long positional lab needs")
    return lo, hi


class Moments:
    """The row sums of one bilinear term (``Bilinear``) over each row's visible keys: over the keys every row of a
    block sees (the core) from their moments, kept as the blocks move (keys enter and leave once each), and over
    the others from the cells.

    Args:
        term: ``Bilinear``.
    """

    def __init__(self, term: Bilinear):
        self.term = term
        self.lo = self.hi = 0
        self.first, self.second = term.moments(0, 0)  # (Hkv, m), (Hkv, m, m)

    def sums(self, seen: np.ndarray | None, begin: int, end: int, lo: np.ndarray, hi: np.ndarray
             ) -> tuple[np.ndarray, np.ndarray]:
        """``(sum of x, sum of x^2)``, each (H, R) float64, over the keys ``lo`` .. ``hi - 1`` of each query row
        ``begin`` .. ``end - 1`` (``key_ranges``; ``seen`` their (R, T) mask or None)."""
        kept = hi > lo
        if not kept.any():
            heads = len(self.term.a)
            return np.zeros((heads, end - begin)), np.zeros((heads, end - begin))
        core_lo, core_hi = int(lo[kept].max()), int(hi[kept].min())
        core_hi = max(core_hi, core_lo)
        self.move(core_lo, core_hi)
        a = self.term.a[:, begin:end]  # (H, R, m)
        groups = self.term.groups
        first = (a * self.first[groups][:, None]).sum(-1)  # (H, R)
        second = (stacked_product(a, self.second[groups]) * a).sum(-1)
        first[:, ~kept] = 0.0
        second[:, ~kept] = 0.0
        span_lo, span_hi = int(lo[kept].min()), int(hi[kept].max())
        for edge_lo, edge_hi in ((span_lo, core_lo), (core_hi, span_hi)):
            if edge_hi > edge_lo:
                cells = self.term.cells(begin, end, edge_lo, edge_hi)  # (H, R, E)
                columns = np.arange(edge_lo, edge_hi)
                inside = (columns >= lo[:, None]) & (columns < hi[:, None])  # (R, E)
                cells = np.where(inside, cells, 0.0)
                first += cells.sum(-1)
                second += (cells * cells).sum(-1)
        return first, second

    def move(self, lo: int, hi: int) -> None:
        """Keep the moments of keys ``lo`` .. ``hi - 1``: add the keys that enter and take out those that leave, or
        sum them afresh when the range jumps."""
        if lo < self.lo or hi < self.hi or lo >= self.hi:
            self.lo = self.hi = lo
            self.first, self.second = self.term.moments(lo, lo)
        for sign, (first, last) in ((1.0, (self.hi, hi)), (-1.0, (self.lo, lo))):
            if last > first:
                added = self.term.moments(first, last)
                self.first, self.second = self.first + sign * added[0], self.second + sign * added[1]
        self.lo, self.hi = lo, hi


def long_term_by_distance(trace: EncoderTrace, layer: int) -> dict[str, np.ndarray]:
    """``term_by_distance`` of a long trace (``LazyAttention``): a long trace's mask depends on the distance alone
    (causal, a window), so every cell at a visible distance d is visible and the mean is the sum over all T - |d|
    cells. A relative bias's is the bias itself; a rotary term's sums of a_q . b_(q + d) over q are each head's
    cross-correlation, by FFT (float64)."""
    length = trace.num_tokens
    terms = layer_terms(trace, layer)
    distances = np.arange(1 - length, length)
    mask = trace.attention.recipe.visible(layer, length - 1, length, 2 * length - 1)  # query T - 1 over 2T - 1 keys
    seen = np.ones(len(distances), bool) if mask is None else mask[0, 0]
    if terms.line is not None:
        return by_distance(trace, layer, terms.line[:, seen], distances[seen])
    a, b, groups = terms.position.a, terms.position.b, terms.position.groups
    size = 2 * length  # no wrap-around: distances span 2T - 1
    key_spectra = np.fft.rfft(b, size, axis=1)  # (Hkv, F, m)
    sums = np.empty((len(a), len(distances)))
    for head, queries in enumerate(a):  # (T, m)
        spectrum = (np.conj(np.fft.rfft(queries, size, axis=0)) * key_spectra[groups[head]]).sum(-1)  # (F,)
        correlation = np.fft.irfft(spectrum, size)  # [d mod size] = sum over q of a_q . b_(q + d)
        sums[head] = correlation[distances % size]
    cells = length - np.abs(distances)
    return by_distance(trace, layer, (sums / cells)[:, seen], distances[seen])


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
    """``position_share`` of the trace (a long trace's with a progress bar of layers)."""
    trace = inputs.trace
    return position_share(trace, None if trace.logit_terms else inputs.progress("layers"))


def logit_terms_limit(trace: EncoderTrace) -> str | None:
    """Why the trace has no logit terms to measure (``terms_unavailable``), or None."""
    return terms_unavailable(trace)


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
