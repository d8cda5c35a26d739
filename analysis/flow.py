"""Attention rollout and attention flow (Abnar & Zuidema, 2020) over a trace's (L, H, T, T) attention.

Shapes: L layers, H heads, T tokens; rows of ``attention[layer, head, query]`` are distributions over keys.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from analysis.checks import check_attention, check_residual, layer_rows
from analysis.inputs import Options, chosen_layer
from analysis.pooled import pooled_json, pooled_row
from analysis.tables import matrix_result, matrix_rows
from encoder.attention_store import LazyAttention, block_rows
from encoder.errors import AnalysisError

if TYPE_CHECKING:
    from analysis.inputs import Inputs
    from encoder.trace import EncoderTrace


DEFAULT_RESIDUAL = 0.5  # Abnar & Zuidema (2020): A' = 0.5 * A + 0.5 * I
MAX_FLOW_TOKENS = 32  # attention flow solves T * T max-flow problems; above this it takes too long to be live

_FLOW_EPS = 1e-12  # residual capacities and excesses at or below this count as zero (float64 capacities <= 1)
_GLOBAL_RELABEL_EVERY = 16  # push-relabel pulses between two exact relabelings (measured fastest on MiniLM)

def residual_attention(attention: np.ndarray, residual: float = DEFAULT_RESIDUAL) -> np.ndarray:
    """Per-layer attention with the residual connection folded in: (L, H, T, T) -> (L, T, T) float64.

    ``A'_l = (1 - residual) * mean_h(A_lh) + residual * I``, then every row divided by its sum (rows that sum to
    0 stay 0). ``residual = 0.5`` is Abnar & Zuidema's choice: the skip connection carries as much as attention.
    """
    attention = check_attention(attention)
    residual = check_residual(residual)
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


def rollout_token_rows(attention, tokens, layer: int, residual: float = DEFAULT_RESIDUAL) -> np.ndarray:
    """Rows ``tokens`` (n,) of ``attention_rollout(attention, residual)[layer]``: (n, T) float64, without the (L, T,
    T) rollout: row vectors times each layer's ``residual_attention`` from ``layer`` down to 0, that layer's
    head-mean attention read a block of query rows at a time (``block_rows``). O(layer * H * T^2) work, O(n * T)
    memory beyond one block; ``attention`` (L, H, T, T) array or a long trace's ``LazyAttention``.

    Example:
        >>> a = np.full((2, 1, 2, 2), 0.5, np.float32)
        >>> rollout_token_rows(a, [1], 1)
        array([[0.375, 0.625]])
    """
    residual = check_residual(residual)
    tokens = np.atleast_1d(np.asarray(tokens, np.int64))
    vectors = np.zeros((len(tokens), attention.shape[-1]))
    vectors[np.arange(len(tokens)), tokens] = 1.0
    for below in range(layer, -1, -1):
        vectors = _times_residual_layer(vectors, attention, below, residual)
    return vectors


def _times_residual_layer(vectors: np.ndarray, attention, layer: int, residual: float) -> np.ndarray:
    """(n, T) @ A' of ``layer`` ((T, T), as ``residual_attention`` makes it), A' a block of rows at a time."""
    heads, length = attention.shape[1], attention.shape[-1]
    step = block_rows(heads, length)
    out = np.zeros_like(vectors)
    for begin in range(0, length, step):
        end = min(begin + step, length)
        mixed = (1.0 - residual) * layer_rows(attention, layer, begin, end).mean(axis=0, dtype=np.float64)  # (R, T)
        mixed[np.arange(end - begin), np.arange(begin, end)] += residual
        sums = mixed.sum(axis=-1, keepdims=True)
        mixed = np.divide(mixed, sums, out=np.zeros_like(mixed), where=sums > 0)
        out += vectors[:, begin:end] @ mixed
    return out


class RolloutRows:
    """The rollout of a long trace (its attention a ``LazyAttention``), a few rows at a time: ``after(layer,
    tokens)`` (n, T) float64, each row computed once (``rollout_token_rows``) and kept (T floats a row). A plain
    class, not a dataclass: a results cache (``encoder.budget.held_bytes``) does not count the trace's attention store
    it reads (the trace cache does) nor the few KB of rows it keeps."""

    def __init__(self, attention: Any, residual: float) -> None:
        self.attention = attention
        self.residual = residual
        self.kept: dict[tuple[int, int], np.ndarray] = {}

    @property
    def num_layers(self) -> int:
        return self.attention.shape[0]

    def after(self, layer: int, tokens) -> np.ndarray:
        """(n, T): rows ``tokens`` of the rollout after ``layer``."""
        tokens = [int(token) for token in np.atleast_1d(tokens)]
        missing = [token for token in dict.fromkeys(tokens) if (layer, token) not in self.kept]
        if missing:
            for token, row in zip(missing, rollout_token_rows(self.attention, missing, layer, self.residual)):
                self.kept[layer, token] = row
        return np.stack([self.kept[layer, token] for token in tokens])


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
        AnalysisError: more than ``max_tokens`` tokens, or ``num_layers`` out of range.
    """
    attention = check_attention(attention)
    tokens = attention.shape[-1]
    if tokens > max_tokens:
        raise AnalysisError(
            f"Attention flow is limited to {max_tokens} tokens (it solves one max-flow problem per token pair); "
            f"this input has {tokens} tokens. Shorten the text or lower max tokens, or use rollout."
        )
    layers = attention.shape[0] if num_layers is None else int(num_layers)
    if not 1 <= layers <= attention.shape[0]:
        raise AnalysisError(f"num_layers must be between 1 and {attention.shape[0]}, got {num_layers}")
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
        raise AnalysisError(f"capacity must have shape (layers, T, T), got {capacity.shape}")
    if (capacity < 0).any():
        raise AnalysisError("capacities must be non-negative")
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
# The registry's rollout and flow: compute(inputs, options), rows(result, trace, options), limit(trace)


def compute_rollout(inputs: Inputs, options: Options) -> np.ndarray | RolloutRows:
    """Attention rollout of the trace with ``options["residual"]``: (L, T, T); for a long trace (its attention a
    ``LazyAttention``) a ``RolloutRows``, whose rows the figures compute as they show them."""
    attention, residual = inputs.trace.attention, options.get("residual", DEFAULT_RESIDUAL)
    if isinstance(attention, LazyAttention):
        return RolloutRows(attention, check_residual(residual))
    return attention_rollout(attention, residual)


def _token_rows(kind: str, matrix: np.ndarray, trace: EncoderTrace, options: Options) -> tuple[list[dict], dict]:
    """A (T, T) matrix as long-format rows, and the JSON naming the input, the layer, the residual and (for a model
    with a pooled token) that token's row (``analysis.pooled``)."""
    rows = matrix_rows(matrix, trace.tokens, kind)
    return rows, matrix_result(kind, trace, chosen_layer(trace, options), rows,
                               residual=options.get("residual", DEFAULT_RESIDUAL), **pooled_json(trace, matrix))


def rollout_rows(result: np.ndarray | RolloutRows, trace: EncoderTrace, options: Options) -> tuple[list[dict], dict]:
    """The rollout after the chosen layer (default the last), one row per cell; of a long trace, the cells of the
    ``long_rollout_tokens`` rows alone (the JSON's ``rows_of`` says which)."""
    layer = chosen_layer(trace, options)
    if not isinstance(result, RolloutRows):
        return _token_rows("rollout", result[layer], trace, options)
    tokens = long_rollout_tokens(trace, options)
    rows = [{"query_index": i, "query_token": trace.tokens[i], "key_index": j, "key_token": key, "rollout": float(v)}
            for i, values in zip(tokens, result.after(layer, tokens)) for j, (key, v) in enumerate(zip(trace.tokens,
                                                                                                       values))]
    return rows, matrix_result("rollout", trace, layer, rows, residual=result.residual, rows_of=tokens)


def long_rollout_tokens(trace: EncoderTrace, options: Options) -> list[int]:
    """The rollout rows shown of a long trace: the query token's (``options["query"]``) and the pooled token's
    (``analysis.pooled``), else the first token's."""
    row = pooled_row(trace)
    chosen = [options.get("query"), None if row is None else row.index]
    return list(dict.fromkeys(int(token) for token in chosen if token is not None)) or [0]


def flow_limit(trace: EncoderTrace) -> str | None:
    """Why attention flow refuses this trace (more than ``MAX_FLOW_TOKENS`` tokens), or None."""
    if trace.num_tokens <= MAX_FLOW_TOKENS:
        return None
    return (f"Attention flow solves one max-flow problem per token pair, so it is limited to {MAX_FLOW_TOKENS} "
            f"tokens; this input has {trace.num_tokens}. Shorten the text (or set Max tokens to {MAX_FLOW_TOKENS}), "
            "or use Rollout.")


def compute_flow(inputs: Inputs, options: Options) -> np.ndarray:
    """Attention flow through layers 0 to the chosen layer (default the last): (T, T)."""
    trace = inputs.trace
    return attention_flow(trace.attention, options.get("residual", DEFAULT_RESIDUAL),
                          num_layers=chosen_layer(trace, options) + 1)


def flow_rows(result: np.ndarray, trace: EncoderTrace, options: Options) -> tuple[list[dict], dict]:
    """The flow, one row per cell."""
    return _token_rows("flow", result, trace, options)
