"""Attention math on traces, NumPy only: rollout, flow, head report cards, Jensen-Shannon divergence, head
clustering, and diffs between two traces.

Shapes: L layers, H heads, T tokens, N = L * H heads in layer-major order (head ``n`` is layer ``n // H``, head
``n % H``). ``attention[layer, head, query, key]`` rows are probability distributions over keys. Logarithms are
natural (entropies and divergences in nats). Every function here takes and returns plain NumPy or the small
frozen dataclasses below; nothing imports TensorFlow.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import unicodedata
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from encoder.trace import EncoderTrace, trace_batch

if TYPE_CHECKING:
    from encoder.sources import LoadedModel

DEFAULT_RESIDUAL = 0.5  # Abnar & Zuidema (2020): A' = 0.5 * A + 0.5 * I
MAX_FLOW_TOKENS = 32  # attention flow solves T * T max-flow problems; above this it takes too long to be live
LN2 = math.log(2.0)
_FLOW_EPS = 1e-12  # residual capacities and excesses at or below this count as zero (float64 capacities <= 1)
_GLOBAL_RELABEL_EVERY = 16  # push-relabel pulses between two exact relabelings (measured fastest on MiniLM)

Progress = Callable[[int, int | None], None]  # progress(done, total or None)
_LARGE_FIELDS = ("attention", "difference")  # (L, H, T, T) fields that to_json leaves out by default


# ---------------------------------------------------------------------------------------------------------------
# Checks


def check_attention(attention: np.ndarray, what: str = "attention") -> np.ndarray:
    """``attention`` as an array of shape (L, H, T, T), else ValueError naming the shape."""
    attention = np.asarray(attention)
    if attention.ndim != 4 or attention.shape[2] != attention.shape[3]:
        raise ValueError(f"{what} must have shape (layers, heads, T, T), got {attention.shape}")
    if attention.shape[2] == 0:
        raise ValueError(f"{what} has no tokens")
    return attention


def _check_residual(residual: float) -> float:
    residual = float(residual)
    if not 0.0 <= residual <= 1.0:
        raise ValueError(f"residual must be between 0 and 1 (the weight of the identity), got {residual}")
    return residual


# ---------------------------------------------------------------------------------------------------------------
# Rollout and flow (Abnar & Zuidema, 2020)


def residual_attention(attention: np.ndarray, residual: float = DEFAULT_RESIDUAL) -> np.ndarray:
    """Per-layer attention with the residual connection folded in: (L, H, T, T) -> (L, T, T) float64.

    ``A'_l = (1 - residual) * mean_h(A_lh) + residual * I``, then every row divided by its sum (rows that sum to
    0 stay 0). ``residual = 0.5`` is Abnar & Zuidema's choice: the skip connection carries as much as attention.
    """
    attention = check_attention(attention)
    residual = _check_residual(residual)
    mixed = (1.0 - residual) * attention.mean(axis=1, dtype=np.float64)  # (L, T, T)
    mixed += residual * np.eye(attention.shape[-1])
    sums = mixed.sum(axis=-1, keepdims=True)
    return np.divide(mixed, sums, out=np.zeros_like(mixed), where=sums > 0)


def attention_rollout(attention: np.ndarray, residual: float = DEFAULT_RESIDUAL) -> np.ndarray:
    """Attention rollout: (L, H, T, T) -> (L, T, T) float64, the cumulative mixing after each layer.

    ``rollout_0 = A'_0`` and ``rollout_l = A'_l @ rollout_{l-1}`` with ``A'`` from ``residual_attention``.
    ``rollout[l, i, j]`` is the share of input token ``j`` in position ``i`` after layer ``l`` if information
    mixed only through attention and the residual; every row sums to 1.

    Example:
        >>> a = np.full((2, 1, 2, 2), 0.5, np.float32)
        >>> attention_rollout(a)[-1]  # A' = [[.75, .25], [.25, .75]], squared
        array([[0.625, 0.375],
               [0.375, 0.625]])
    """
    layers = residual_attention(attention, residual)
    out = np.empty_like(layers)
    out[0] = layers[0]
    for index in range(1, len(layers)):
        out[index] = layers[index] @ out[index - 1]
    return out


def attention_flow(
    attention: np.ndarray,
    residual: float = DEFAULT_RESIDUAL,
    num_layers: int | None = None,
    max_tokens: int = MAX_FLOW_TOKENS,
) -> np.ndarray:
    """Attention flow: (L, H, T, T) -> (T, T) float64; ``flow[i, j]`` = the maximum flow from input token ``j``
    to position ``i`` after the last layer used.

    The graph has a node per token per layer (inputs are layer 0); the edge from node ``(l - 1, j)`` to
    ``(l, i)`` has capacity ``A'_l[i, j]`` (``residual_attention``). Each of the T * T values is a maximum flow,
    found exactly (to ~1e-12) by a push-relabel algorithm that runs all T * T problems side by side in NumPy.

    Args:
        attention: (L, H, T, T) attention weights.
        residual: weight of the identity in ``A'`` (0.5 as in the paper).
        num_layers: use only the first this many layers (default all).
        max_tokens: refuse longer inputs (the cost grows like T^4 times the layers).

    Raises:
        ValueError: more than ``max_tokens`` tokens, or ``num_layers`` out of range.
    """
    attention = check_attention(attention)
    tokens = attention.shape[-1]
    if tokens > max_tokens:
        raise ValueError(
            f"Attention flow is limited to {max_tokens} tokens (it solves one max-flow problem per token pair); "
            f"this input has {tokens} tokens. Shorten the text or lower max tokens, or use rollout."
        )
    layers = attention.shape[0] if num_layers is None else int(num_layers)
    if not 1 <= layers <= attention.shape[0]:
        raise ValueError(f"num_layers must be between 1 and {attention.shape[0]}, got {num_layers}")
    return layered_max_flow(residual_attention(attention[:layers], residual))


def layered_max_flow(capacity: np.ndarray) -> np.ndarray:
    """Max flow from every input node ``(0, j)`` to every output node ``(L, i)`` of a layered graph whose edge
    ``(l, k) -> (l + 1, m)`` has capacity ``capacity[l, m, k] >= 0``: (L, T, T) -> (T, T) float64, ``[i, j]``.

    Problem ``p`` has sink ``i = p // T`` and source ``j = p % T``. The first phase of Goldberg-Tarjan
    push-relabel (a maximum preflow) gives the flow value as the excess reaching the sink. Each pulse, every
    active node of every unfinished problem pushes its excess along admissible edges (forward edges first), then
    nodes with excess left are relabelled; every ``_GLOBAL_RELABEL_EVERY`` pulses the heights are reset to exact
    residual distances to the sink. Finished problems drop out of the arrays.
    """
    capacity = np.asarray(capacity, dtype=np.float64)
    if capacity.ndim != 3 or capacity.shape[1] != capacity.shape[2]:
        raise ValueError(f"capacity must have shape (layers, T, T), got {capacity.shape}")
    if (capacity < 0).any():
        raise ValueError("capacities must be non-negative")
    num_layers, tokens, _ = capacity.shape
    problems = tokens * tokens
    sink, source = np.divmod(np.arange(problems), tokens)
    unreachable = (num_layers + 1) * tokens  # a height no node that can still reach the sink has
    result = np.zeros(problems)
    ids = np.arange(problems)
    flow = np.zeros((problems, num_layers, tokens, tokens))  # flow[p, l, m, k] on (l, k) -> (l + 1, m)
    flow[ids, 0, :, source] = capacity[0][:, source].T
    if num_layers == 1:
        flow[:, 0] *= np.arange(tokens)[None, :, None] == sink[:, None, None]
    excess = np.zeros((problems, num_layers + 1, tokens))
    excess[:, 1] = flow[:, 0].sum(axis=2)
    height = _distances_to_sink(capacity, flow, source, sink, unreachable)
    columns = np.arange(tokens)
    pulses = 0
    while True:
        active = (excess > _FLOW_EPS) & (height < unreachable)
        active[:, 0] = active[:, num_layers] = False  # sources and sinks never push
        live = active.any(axis=(1, 2))
        if live.sum() < 0.75 * ids.size:  # compact when a quarter of the problems has finished
            done = ~live
            result[ids[done]] = excess[done, num_layers, sink[done]]
            if not live.any():
                break
            ids, flow, excess, height, sink, source, active = (
                ids[live], flow[live], excess[live], height[live], sink[live], source[live], active[live]
            )
        pulses += 1
        if pulses % _GLOBAL_RELABEL_EVERY == 0:
            height = _distances_to_sink(capacity, flow, source, sink, unreachable)
            continue
        p, lay, k = np.nonzero(active)  # one row per active node (problem, layer, token)
        node_excess, node_height = excess[p, lay, k], height[p, lay, k]
        forward_capacity = capacity[lay, :, k]  # (N, T) to the next layer
        at_last = lay == num_layers - 1
        forward_capacity = np.where(at_last[:, None] & (columns != sink[p][:, None]), 0.0, forward_capacity)
        residual = np.concatenate([forward_capacity - flow[p, lay, :, k], flow[p, lay - 1, k, :]], axis=1)  # (N, 2T)
        neighbour_height = np.concatenate([height[p, lay + 1, :], height[p, lay - 1, :]], axis=1)
        admissible = np.where((residual > _FLOW_EPS) & (neighbour_height == node_height[:, None] - 1), residual, 0.0)
        before = np.cumsum(admissible, axis=1) - admissible
        push = np.clip(node_excess[:, None] - before, 0.0, admissible)  # greedy: fill edges in order
        flow[p, lay, :, k] += push[:, :tokens]
        flow[p, lay - 1, k, :] -= push[:, tokens:]
        sent = push.sum(axis=1)
        excess[p, lay, k] -= sent
        base = (p * (num_layers + 1) + lay) * tokens
        targets = np.concatenate([(base + tokens)[:, None] + columns, (base - tokens)[:, None] + columns], axis=1)
        excess += np.bincount(targets.ravel(), weights=push.ravel(), minlength=excess.size).reshape(excess.shape)
        stuck = np.flatnonzero(node_excess - sent > _FLOW_EPS)  # all admissible edges full: relabel
        left = residual[stuck] - push[stuck] > _FLOW_EPS
        lowest = np.where(left, neighbour_height[stuck], unreachable).min(axis=1) + 1
        height[p[stuck], lay[stuck], k[stuck]] = np.minimum(lowest, unreachable)
    return result.reshape(tokens, tokens)


def _distances_to_sink(
    capacity: np.ndarray, flow: np.ndarray, source: np.ndarray, sink: np.ndarray, unreachable: int
) -> np.ndarray:
    """Exact heights: residual-graph distance of every node to its problem's sink (``unreachable`` if none).
    Layer 0 (the source and the other inputs) is set to ``unreachable``. Returns (P, L + 1, T) int64."""
    problems, num_layers, tokens, _ = flow.shape
    rows = np.arange(problems)
    forward = (capacity[None] - flow) > _FLOW_EPS  # (P, L, m, k): edge (l, k) -> (l + 1, m) not saturated
    columns = np.arange(tokens)
    forward[:, 0] &= (columns[None, :] == source[:, None])[:, None, :]
    forward[:, num_layers - 1] &= (columns[None, :] == sink[:, None])[:, :, None]
    backward = flow > _FLOW_EPS  # edge (l + 1, m) -> (l, k) exists where flow runs forward
    height = np.full((problems, num_layers + 1, tokens), unreachable, dtype=np.int64)
    height[rows, num_layers, sink] = 0
    frontier = np.zeros(height.shape, dtype=bool)
    frontier[rows, num_layers, sink] = True
    distance = 0
    while True:
        distance += 1
        reached = np.zeros_like(frontier)
        reached[:, :num_layers] = (forward & frontier[:, 1:, :, None]).any(axis=2)
        reached[:, 1:] |= (backward & frontier[:, :num_layers, None, :]).any(axis=3)
        reached &= height == unreachable
        if not reached.any():
            break
        height[reached] = distance
        frontier = reached
    height[:, 0] = unreachable
    return height


# ---------------------------------------------------------------------------------------------------------------
# Entropy and Jensen-Shannon divergence


def _xlogx(values: np.ndarray) -> np.ndarray:
    """x * ln(x) with 0 * ln(0) = 0, in float64."""
    values = np.asarray(values, dtype=np.float64)
    return values * np.log(np.where(values > 0, values, 1.0))


def entropy(p: np.ndarray, axis: int = -1) -> np.ndarray:
    """Shannon entropy in nats of the distributions along ``axis`` (zeros contribute 0). Float64."""
    return -_xlogx(p).sum(axis=axis)


def js_divergence(p: np.ndarray, q: np.ndarray, axis: int = -1) -> np.ndarray:
    """Jensen-Shannon divergence in nats between distributions along ``axis`` (broadcasting).

    ``JS(p, q) = H((p + q) / 2) - (H(p) + H(q)) / 2``: symmetric, 0 exactly when ``p == q``, at most ln 2 (for
    disjoint supports); zeros are safe (``0 ln 0 = 0``). Rows are taken as given (they should sum to 1); the
    result is clipped to [0, ln 2] against rounding.
    """
    p = np.asarray(p, dtype=np.float64)
    q = np.asarray(q, dtype=np.float64)
    if p.shape[axis] != q.shape[axis]:
        raise ValueError(f"distributions of different lengths: {p.shape[axis]} and {q.shape[axis]}")
    mixture = entropy((p + q) * 0.5, axis=axis)
    value = mixture - 0.5 * (entropy(p, axis=axis) + entropy(q, axis=axis))
    return np.clip(value, 0.0, LN2)


def xlogx_sums(attention: np.ndarray) -> np.ndarray:
    """``sum x ln x`` over the last two axes (minus the summed row entropies): (..., T, T) -> (...) float64.

    Logarithms and row sums in float32 (the attention's own precision), the sum over rows in float64: ~3x faster
    than float64 throughout, error below 1e-7 nats per row. Zeros count 0 (weights below 1e-30 as if 1e-30).
    """
    values = np.asarray(attention, dtype=np.float32)
    logs = np.log(np.maximum(values, np.float32(1e-30)))
    return np.einsum("...ij,...ij->...i", values, logs).sum(axis=-1, dtype=np.float64)


def head_divergence(a: np.ndarray, b: np.ndarray, a_sums: np.ndarray | None = None) -> np.ndarray:
    """Per-head mean Jensen-Shannon divergence (nats) between two attention stacks of the same shape.

    (L, H, T, T) x (L, H, T, T) -> (L, H) float64: for each head, JS between its two rows for every query,
    averaged over the T queries (``mean_i [H(m_i) - (H(a_i) + H(b_i)) / 2]`` with ``m = (a + b) / 2``, see
    ``xlogx_sums`` for the precision). Heads whose two patterns are equal give exactly 0. ``a_sums`` may pass
    ``xlogx_sums(a)`` when ``a`` is compared with many ``b``.
    """
    a, b = check_attention(a, "first attention"), check_attention(b, "second attention")
    if a.shape != b.shape:
        raise ValueError(f"attention shapes differ: {a.shape} and {b.shape}")
    a, b = a.astype(np.float32, copy=False), b.astype(np.float32, copy=False)
    a_sums = xlogx_sums(a) if a_sums is None else a_sums
    mixture = a + b
    mixture *= np.float32(0.5)
    value = (0.5 * (a_sums + xlogx_sums(b)) - xlogx_sums(mixture)) / a.shape[-1]
    value[(a == b).all(axis=(2, 3))] = 0.0
    return np.clip(value, 0.0, LN2)


def head_distances(attention: np.ndarray) -> np.ndarray:
    """Distance between every two heads of one input: (L, H, T, T) -> (N, N) float64.

    ``distance[m, n]`` = mean over the T queries of JS(head m's row, head n's row), in nats (0 on the diagonal,
    symmetric, at most ln 2), computed like ``head_divergence``.
    """
    attention = check_attention(attention)
    layers, heads, tokens, _ = attention.shape
    rows = attention.reshape(layers * heads, tokens, tokens).astype(np.float32, copy=False)
    own = xlogx_sums(rows)  # (N,)
    count = layers * heads
    distance = np.zeros((count, count))
    for m in range(count - 1):
        mixture = rows[m + 1:] + rows[m]  # (N - m - 1, T, T): head m against every later head
        mixture *= np.float32(0.5)
        values = (0.5 * (own[m + 1:] + own[m]) - xlogx_sums(mixture)) / tokens
        for n in np.flatnonzero(values < 1e-9):  # equal patterns are exactly 0, not rounding noise
            if np.array_equal(rows[m], rows[m + 1 + n]):
                values[n] = 0.0
        distance[m, m + 1:] = distance[m + 1:, m] = np.clip(values, 0.0, LN2)
    return distance


# ---------------------------------------------------------------------------------------------------------------
# Head report card (Clark et al., 2019, "What does BERT look at?")

STATISTICS: dict[str, str] = {
    "entropy": "mean attention entropy (nats): low = focused on few tokens, high = spread out",
    "cls": "attention to [CLS]",
    "sep": "attention to [SEP]",
    "punctuation": "attention to punctuation",
    "self": "attention to the token itself",
    "previous": "attention to the previous token",
    "next": "attention to the next token",
    "distance": "mean attention distance (tokens): sum_j a_ij |i - j|",
}
_SUBWORD_MARKS = ("##", "▁", "Ġ")


def token_classes(tokens: Sequence[str], special: np.ndarray) -> dict[str, np.ndarray]:
    """Which tokens count as [CLS], [SEP] and punctuation for the report card. Each value is (T,) bool.

    - ``cls``: the first token, when it is special (BERT-family tokenizers put [CLS] there).
    - ``sep``: every other special token ([SEP] after each sentence; [PAD] never occurs in a trace).
    - ``punctuation``: a non-special token whose text, without a subword mark (``##``, ``▁``, ``Ġ``), is
      non-empty and made only of Unicode punctuation (categories P*: ``. , ; ! ? " ' ( ) -`` ...).
    """
    special = np.asarray(special, dtype=bool)
    if special.shape != (len(tokens),):
        raise ValueError(f"special has shape {special.shape}, while there are {len(tokens)} tokens")
    cls = np.zeros(len(tokens), dtype=bool)
    if len(tokens) and special[0]:
        cls[0] = True
    punctuation = np.array([not s and _is_punctuation(t) for t, s in zip(tokens, special)], dtype=bool)
    return {"cls": cls, "sep": special & ~cls, "punctuation": punctuation}


def _is_punctuation(token: str) -> bool:
    for mark in _SUBWORD_MARKS:
        if token.startswith(mark):
            token = token[len(mark):]
            break
    return bool(token) and all(unicodedata.category(ch).startswith("P") for ch in token)


@dataclass(frozen=True, eq=False)
class HeadReport:
    """Report card of every head: each statistic of ``STATISTICS`` as an (L, H) float64 array.

    Each statistic is a mean over query tokens (see ``head_report``); over a corpus every query token of every
    text counts once (token-weighted), so long texts weigh more than short ones.
    ``distance`` (optional) is the (N, N) head distance of ``head_distances``, averaged the same way.
    """

    statistics: dict[str, np.ndarray]
    num_texts: int
    num_queries: int
    distance: np.ndarray | None = None

    @property
    def num_layers(self) -> int:
        return self.statistics["entropy"].shape[0]

    @property
    def num_heads(self) -> int:
        return self.statistics["entropy"].shape[1]

    def __getitem__(self, name: str) -> np.ndarray:
        if name not in self.statistics:
            raise KeyError(f"unknown statistic {name!r}; choose from {', '.join(STATISTICS)}")
        return self.statistics[name]

    def rows(self) -> list[dict]:
        """One dict per head (layer, head, then every statistic): the sortable table, or CSV rows."""
        return [
            {"layer": layer, "head": head, **{name: float(self.statistics[name][layer, head]) for name in STATISTICS}}
            for layer in range(self.num_layers)
            for head in range(self.num_heads)
        ]


@dataclass
class _ReportSums:
    """Running sums for a token-weighted report over many traces."""

    distances: bool
    sums: dict[str, np.ndarray] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    distance: np.ndarray | None = None
    texts: int = 0
    queries: int = 0
    shape: tuple[int, int] | None = None

    def add(self, attention: np.ndarray, tokens: Sequence[str], special: np.ndarray) -> None:
        attention = check_attention(attention)
        if len(tokens) != attention.shape[-1]:
            raise ValueError(f"attention has {attention.shape[-1]} positions, while there are {len(tokens)} tokens")
        if self.shape is None:
            self.shape = attention.shape[:2]
        elif attention.shape[:2] != self.shape:
            raise ValueError(
                f"all traces must come from one model: {self.shape[0]}x{self.shape[1]} heads, then "
                f"{attention.shape[0]}x{attention.shape[1]}"
            )
        for name, (total, count) in _statistic_sums(attention, tokens, special).items():
            self.sums[name] = self.sums.get(name, 0.0) + total
            self.counts[name] = self.counts.get(name, 0) + count
        if self.distances:
            weighted = head_distances(attention) * attention.shape[-1]  # token-weighted, like the statistics
            self.distance = weighted if self.distance is None else self.distance + weighted
        self.texts += 1
        self.queries += attention.shape[-1]

    def report(self) -> HeadReport:
        if self.texts == 0:
            raise ValueError("no traces to report on: the corpus is empty")
        statistics = {name: self.sums[name] / max(self.counts[name], 1) for name in STATISTICS}
        distance = None if self.distance is None else self.distance / self.queries
        return HeadReport(statistics, self.texts, self.queries, distance)


def _statistic_sums(
    attention: np.ndarray, tokens: Sequence[str], special: np.ndarray
) -> dict[str, tuple[np.ndarray, int]]:
    """For each statistic: its (L, H) sum over the queries where it is defined, and how many queries that is."""
    t = attention.shape[-1]
    classes = token_classes(tokens, special)
    index = np.arange(t)
    diagonal = attention[:, :, index, index]  # (L, H, T)
    out = {
        "entropy": (-xlogx_sums(attention), t),
        "self": (diagonal.sum(axis=-1, dtype=np.float64), t),
        "previous": (attention[:, :, index[1:], index[:-1]].sum(axis=-1, dtype=np.float64), t - 1),
        "next": (attention[:, :, index[:-1], index[1:]].sum(axis=-1, dtype=np.float64), t - 1),
        "distance": (
            np.einsum("lhij,ij->lh", attention, np.abs(index[:, None] - index[None, :]).astype(attention.dtype),
                      dtype=np.float64),
            t,
        ),
    }
    key_totals = attention.sum(axis=2, dtype=np.float64)  # (L, H, T): each key's weight summed over queries
    for name in ("cls", "sep", "punctuation"):
        out[name] = (key_totals[:, :, classes[name]].sum(axis=-1), t)
    return out


def head_report(trace: EncoderTrace, distances: bool = False) -> HeadReport:
    """Report card of every head for one trace.

    For a head with attention ``a`` (T x T), averaged over the query tokens ``i`` (all T, specials included):

    - ``entropy``: ``-sum_j a_ij ln a_ij`` (nats; 0 ln 0 = 0), from 0 (one key) to ln T (uniform).
    - ``cls``, ``sep``, ``punctuation``: ``sum_{j in class} a_ij``, with the classes of ``token_classes``.
    - ``self``: ``a_ii``.
    - ``previous``: ``a_{i, i-1}``, averaged over the T - 1 queries that have a previous token.
    - ``next``: ``a_{i, i+1}``, averaged over the T - 1 queries that have a next token.
    - ``distance``: ``sum_j a_ij |i - j|`` in tokens.

    With ``distances=True`` the report also carries the head distance matrix (for ``cluster_heads``).
    """
    sums = _ReportSums(distances)
    sums.add(trace.attention, trace.tokens, trace.special)
    return sums.report()


def corpus_head_report(
    traces: Iterable[EncoderTrace],
    total: int | None = None,
    progress: Progress | None = None,
    distances: bool = True,
) -> HeadReport:
    """Report card aggregated over many traces (of one model), token-weighted: every statistic is the mean over
    all query tokens of all texts where it is defined (``head_report`` gives the per-query definitions).

    Args:
        traces: any iterable of traces, e.g. ``iter_traces(model, sentences)`` (consumed once, lazily).
        total: how many traces to expect, passed on to ``progress``.
        progress: called as ``progress(done, total)`` after each trace.
        distances: also average the head distance matrix (costs about as much as the encoder at ~25 tokens).

    Raises:
        ValueError: no traces, or traces from models of different shapes.
    """
    sums = _ReportSums(distances)
    for trace in traces:
        sums.add(trace.attention, trace.tokens, trace.special)
        if progress is not None:
            progress(sums.texts, total)
    return sums.report()


def iter_traces(
    model: LoadedModel, texts: Sequence[str], batch_size: int = 64, max_tokens: int | None = 128
) -> Iterator[EncoderTrace]:
    """Trace ``texts`` lazily in batches (``encoder.trace.trace_batch``), yielding traces in input order.

    ``max_tokens`` truncates long lines (128 by default, so one long line cannot dominate a corpus).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    for start in range(0, len(texts), batch_size):
        yield from trace_batch(model, texts[start:start + batch_size], max_tokens=max_tokens, batch_size=batch_size)


def sentences_from_text(text: str, limit: int = 5000) -> list[str]:
    """The non-blank lines of an uploaded text file (one sentence per line), stripped, at most ``limit``.

    Raises:
        ValueError: no non-blank line.
    """
    lines = [line.strip() for line in text.splitlines()]
    sentences = [line for line in lines if line][:limit]
    if not sentences:
        raise ValueError("The file has no sentences: put one sentence per line.")
    return sentences


# ---------------------------------------------------------------------------------------------------------------
# Head clustering


@dataclass(frozen=True, eq=False)
class HeadClustering:
    """Heads clustered by average linkage (UPGMA) on a head distance matrix.

    ``distance`` (N, N) as given; ``order`` (N,) head indices in dendrogram leaf order (similar heads adjacent);
    ``merges`` (N - 1, 4) rows ``[cluster a, cluster b, distance, size]`` in SciPy's linkage convention
    (clusters ``0..N-1`` are heads, ``N + r`` is the cluster made by row ``r``).
    """

    distance: np.ndarray
    order: np.ndarray
    merges: np.ndarray
    num_layers: int
    num_heads: int

    def labels(self) -> list[str]:
        """"L2 H5" for every head, in head-index order."""
        return [f"L{n // self.num_heads} H{n % self.num_heads}" for n in range(self.num_layers * self.num_heads)]

    def clusters(self, count: int) -> np.ndarray:
        """(N,) cluster number (0..count-1, numbered by first appearance in ``order``) when cut into ``count``."""
        n = len(self.order)
        if not 1 <= count <= n:
            raise ValueError(f"count must be between 1 and {n}, got {count}")
        members = {i: [i] for i in range(n)}
        for row, (a, b, _, _) in enumerate(self.merges[: n - count]):
            members[n + row] = members.pop(int(a)) + members.pop(int(b))
        label = np.empty(n, dtype=np.int64)
        for number, group in enumerate(sorted(members.values(), key=lambda g: min(self._rank[h] for h in g))):
            label[group] = number
        return label

    @property
    def _rank(self) -> np.ndarray:
        rank = np.empty(len(self.order), dtype=np.int64)
        rank[self.order] = np.arange(len(self.order))
        return rank

    def rows(self, count: int = 4) -> list[dict]:
        """One dict per head in cluster order: position, layer, head, cluster (cut into ``count``)."""
        label = self.clusters(min(count, len(self.order)))
        return [
            {"position": position, "layer": int(n) // self.num_heads, "head": int(n) % self.num_heads,
             "cluster": int(label[n])}
            for position, n in enumerate(self.order)
        ]


def cluster_heads(distance: np.ndarray, num_layers: int, num_heads: int) -> HeadClustering:
    """Average-linkage hierarchical clustering of the heads from an (N, N) distance matrix (N = L * H).

    At each step the two closest clusters merge; the distance between clusters is the mean distance between
    their members (UPGMA, updated by Lance-Williams). Ties go to the lowest indices, so the result is
    deterministic.
    """
    distance = np.asarray(distance, dtype=np.float64)
    n = num_layers * num_heads
    if distance.shape != (n, n):
        raise ValueError(f"distance has shape {distance.shape}, while {num_layers}x{num_heads} heads need {(n, n)}")
    if not np.allclose(distance, distance.T, atol=1e-12):
        raise ValueError("distance must be symmetric")
    work = distance.copy()
    np.fill_diagonal(work, np.inf)
    size = np.ones(n)
    cluster_id = np.arange(n)
    merges = np.zeros((max(n - 1, 0), 4))
    children: dict[int, tuple[int, int]] = {}
    for row in range(n - 1):
        flat = int(np.argmin(work))
        a, b = divmod(flat, n)
        a, b = min(a, b), max(a, b)
        first, second = sorted((int(cluster_id[a]), int(cluster_id[b])))
        merges[row] = (first, second, work[a, b], size[a] + size[b])
        children[n + row] = (first, second)
        merged = (size[a] * work[a] + size[b] * work[b]) / (size[a] + size[b])
        work[a], work[:, a] = merged, merged
        work[a, a] = np.inf
        work[b], work[:, b] = np.inf, np.inf
        size[a] += size[b]
        cluster_id[a] = n + row
    order = _leaf_order(children, n, 2 * n - 2 if n > 1 else 0)
    return HeadClustering(distance, order, merges, num_layers, num_heads)


def _leaf_order(children: dict[int, tuple[int, int]], n: int, root: int) -> np.ndarray:
    order, stack = [], [root]
    while stack:
        node = stack.pop()
        if node < n:
            order.append(node)
        else:
            left, right = children[node]
            stack.extend((right, left))
    return np.array(order, dtype=np.int64)


# ---------------------------------------------------------------------------------------------------------------
# Diff of two traces


@dataclass(frozen=True, eq=False)
class AttentionDiff:
    """Two traces of the same length compared head by head.

    ``difference`` (L, H, T, T) float32 is ``b - a``; ``divergence`` (L, H) float64 the mean over queries of
    JS(a row, b row) in nats. ``tokens_a`` / ``tokens_b`` label the axes (equal when one text went through two
    models).
    """

    label_a: str
    label_b: str
    tokens_a: tuple[str, ...]
    tokens_b: tuple[str, ...]
    difference: np.ndarray
    divergence: np.ndarray

    def ranking(self) -> np.ndarray:
        """(N, 2) int64 ``(layer, head)`` pairs, the most changed head first (ties: lower layer, then head)."""
        flat = self.divergence.ravel()
        order = np.lexsort((np.arange(flat.size), -flat))
        return np.stack(np.divmod(order, self.divergence.shape[1]), axis=1).astype(np.int64)

    def rows(self) -> list[dict]:
        """One dict per head, ranked: rank, layer, head, JS divergence, max |difference|."""
        peak = np.abs(self.difference).max(axis=(2, 3))
        return [
            {"rank": rank + 1, "layer": int(layer), "head": int(head),
             "js_divergence": float(self.divergence[layer, head]), "max_abs_difference": float(peak[layer, head])}
            for rank, (layer, head) in enumerate(self.ranking())
        ]


def diff_traces(
    a: EncoderTrace, b: EncoderTrace, label_a: str | None = None, label_b: str | None = None
) -> AttentionDiff:
    """Compare two traces: the same text through two models that share a tokenizer, or a minimal pair (two texts
    with the same number of tokens) through one model.

    Raises:
        ValueError: different token counts (both named), different tokens for the same text (the models do not
            share a tokenizer), or models of different shapes.
    """
    same_input = a.text == b.text and a.pair == b.pair
    if a.num_tokens != b.num_tokens:
        what = "the two models tokenize the text differently" if same_input else "a minimal pair needs equal lengths"
        raise ValueError(
            f"Cannot compare: the first input has {a.num_tokens} tokens, the second {b.num_tokens} ({what})."
        )
    if same_input and a.tokens != b.tokens:
        raise ValueError(
            f"Cannot compare: the same text gives different tokens ({a.num_tokens} and {b.num_tokens}); the two "
            "models must share a tokenizer."
        )
    if a.attention.shape[:2] != b.attention.shape[:2]:
        raise ValueError(
            f"Cannot compare models of different shapes: {a.num_layers}x{a.num_heads} and "
            f"{b.num_layers}x{b.num_heads} (layers x heads)."
        )
    difference = b.attention.astype(np.float32) - a.attention.astype(np.float32)
    divergence = head_divergence(a.attention, b.attention)
    return AttentionDiff(label_a or a.model, label_b or b.model, a.tokens, b.tokens, difference, divergence)


# ---------------------------------------------------------------------------------------------------------------
# Export of numbers


def matrix_rows(values: np.ndarray, tokens: Sequence[str], name: str = "value") -> list[dict]:
    """Long-format rows of a (T, T) or (L, T, T) token matrix (rollout, flow): [layer,] query, key, value."""
    values = np.asarray(values)
    if values.ndim not in (2, 3) or values.shape[-2:] != (len(tokens), len(tokens)):
        raise ValueError(f"values must be (T, T) or (L, T, T) for {len(tokens)} tokens, got shape {values.shape}")
    stack = values[None] if values.ndim == 2 else values
    rows = []
    for layer, matrix in enumerate(stack):
        for i, query in enumerate(tokens):
            for j, key in enumerate(tokens):
                row = {"layer": layer} if values.ndim == 3 else {}
                row.update(query_index=i, query_token=query, key_index=j, key_token=key)
                row[name] = float(matrix[i, j])
                rows.append(row)
    return rows


def head_rows(values: np.ndarray, name: str = "value") -> list[dict]:
    """Long-format rows of an (L, H) per-head map: layer, head, value."""
    values = np.asarray(values)
    if values.ndim != 2:
        raise ValueError(f"values must be (layers, heads), got shape {values.shape}")
    return [{"layer": layer, "head": head, name: float(values[layer, head])}
            for layer in range(values.shape[0]) for head in range(values.shape[1])]


def rows_to_csv(rows: Sequence[dict]) -> str:
    """CSV text of dict rows (the header from the first row's keys)."""
    if not rows:
        raise ValueError("no rows to write")
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()


def to_json(result, include_large: bool = False) -> str:
    """JSON text of an analysis result (any dataclass here or in ``encoder.perturb``, an array, or a dict):
    arrays become nested lists, the class name is kept under ``"kind"``.

    The (L, H, T, T) fields ``attention`` and ``difference`` are left out unless ``include_large`` (at 512 tokens
    they are 19 million numbers; export one head with ``matrix_rows`` instead).
    """
    data = _jsonable(result)
    if not include_large and isinstance(data, dict):
        data = {k: v for k, v in data.items() if k not in _LARGE_FIELDS}
    return json.dumps(data)


def _jsonable(value):
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {"kind": type(value).__name__,
                **{f.name: _jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}}
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value
