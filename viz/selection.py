"""What a view shows of a trace: which layer and heads (one head, or their mean or max), which tokens (special
ones hidden, rows renormalised), which cells a query could not see, and block downsampling of long texts.

NumPy only; weights come back float32.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

from analysis.report import key_value_heads_of
from encoder.errors import ViewError
from encoder.overview import block_edges
from encoder.trace import EncoderTrace
from viz.kinds import CrossTrace, query_side
from viz.validation import check_choice, check_head, check_heads, check_layer

AGGREGATES = ("mean", "max")
BLOCKS = ("AA", "AB", "BA", "BB")


def select_attention(
    trace: EncoderTrace,
    layer: int,
    head: int,
    *,
    aggregate: str | None = None,
    heads: Iterable[int] | None = None,
    layer_mean: bool = False,
) -> tuple[np.ndarray, str]:
    """The (T, T) float32 attention to show, and a title fragment saying what it is.

    ``layer_mean`` averages over layers first; then ``aggregate`` ("mean" or "max") combines ``heads`` (default all),
    or, when ``aggregate`` is None, the single ``head`` is taken.
    """
    chosen, heads_text = shown_heads(trace, head, aggregate, heads)
    per_head, layer_text = layer_heads(trace, layer, layer_mean)
    what = f"{layer_text.capitalize()}, {heads_text}"
    if len(chosen) == 1:
        return np.asarray(per_head[chosen[0]], dtype=np.float32), what
    stack = per_head[chosen]  # (h, T, T)
    matrix = stack.mean(axis=0, dtype=np.float32) if aggregate == "mean" else stack.max(axis=0)
    return np.asarray(matrix, dtype=np.float32), what


def shown_heads(trace: EncoderTrace, head: int, aggregate: str | None, heads: Iterable[int] | None
                ) -> tuple[list[int], str]:
    """The heads a view combines (``[head]`` when ``aggregate`` is None, else ``heads``, default all) and their
    name ("head 5", "mean of heads 0-11")."""
    check_choice(aggregate, (None, *AGGREGATES), "aggregate")
    if aggregate is None:
        head = check_head(trace, head)
        return [head], head_label(trace, head)
    chosen = check_heads(trace, heads)
    if len(chosen) == 1:
        return chosen, head_label(trace, chosen[0])
    return chosen, f"{aggregate} of {describe_heads(chosen)}"


def layer_name(trace: EncoderTrace, layer: int, layer_mean: bool) -> str:
    """"layer 3", or "mean of layers 0-5" with ``layer_mean``."""
    return f"mean of layers 0-{trace.num_layers - 1}" if layer_mean else f"layer {check_layer(trace, layer)}"


def layer_heads(trace: EncoderTrace, layer: int, layer_mean: bool) -> tuple[np.ndarray, str]:
    """The (H, T, T) attention of ``layer`` (or the mean over layers with ``layer_mean``) and its name, "layer 3"
    or "mean of layers 0-5"."""
    name = layer_name(trace, layer, layer_mean)
    if layer_mean:
        return trace.attention.mean(axis=0, dtype=np.float32), name
    return trace.attention[layer], name


def kv_heads(trace: EncoderTrace) -> np.ndarray | None:
    """(H,) int: the key/value head each query head reads, or None when every head has its own (no grouped-query
    attention)."""
    if trace.key_value_heads in (0, trace.num_heads):
        return None
    return key_value_heads_of(trace.num_heads, trace.key_value_heads)


def head_label(trace: EncoderTrace, head: int) -> str:
    """"head 5", or "head 5 (kv 1)" when query heads share key/value heads: the one head 5 reads."""
    kv = kv_heads(trace)
    return f"head {head}" if kv is None else f"head {head} (kv {kv[head]})"


def describe_heads(heads: Sequence[int]) -> str:
    """"heads 0-11", "head 3", "heads 1, 4, 7"."""
    if len(heads) == 1:
        return f"head {heads[0]}"
    if list(heads) == list(range(heads[0], heads[-1] + 1)):
        return f"heads {heads[0]}-{heads[-1]}"
    return "heads " + ", ".join(str(h) for h in heads)


def visible_tokens(trace: EncoderTrace, hide_special: bool) -> np.ndarray:
    """Indices of the tokens to show, in sentence order: all, or all but the special ones."""
    keep = ~trace.special if hide_special else np.ones(trace.num_tokens, dtype=bool)
    indices = np.flatnonzero(keep)
    if indices.size == 0:
        raise ViewError("hiding special tokens leaves no tokens to show")
    return indices


def renormalize_rows(matrix: np.ndarray) -> np.ndarray:
    """Rows scaled to sum to 1 (rows that sum to 0 stay 0). Shape preserved, float32."""
    sums = matrix.sum(axis=-1, keepdims=True, dtype=np.float32)
    return np.divide(matrix, sums, out=np.zeros_like(matrix, dtype=np.float32), where=sums > 0)


def shown_attention(
    trace: EncoderTrace, attention: np.ndarray, hide_special: bool, renormalize: bool, *, say_unnormalised: bool = False
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """The weights to show: ``attention`` (..., T, T) cut to the shown tokens on its last two axes, and more.

    Returns (weights (..., T', T'), shown token indices (T',), notes for the subtitle). With ``hide_special`` the
    special tokens are dropped, rows renormalised over the remaining keys when ``renormalize``, and the note says
    "special tokens hidden, rows renormalised" (or "..., rows not renormalised" with ``say_unnormalised``).
    Cross-attention (queries and keys of different texts): ``shown_queries_keys``.
    """
    weights, _, shown, notes = shown_queries_keys(trace, attention, hide_special, renormalize,
                                                  say_unnormalised=say_unnormalised)
    return weights, shown, notes


def shown_queries_keys(
    trace: EncoderTrace | CrossTrace, attention: np.ndarray, hide_special: bool, renormalize: bool, *,
    say_unnormalised: bool = False,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
    """``shown_attention`` for square or rectangular attention (..., Tq, Tk): the queries are the tokens of
    ``query_side(trace)`` (the decoder's for cross-attention), the keys ``trace``'s.

    Returns (weights (..., Tq', Tk'), shown query indices (Tq',), shown key indices (Tk',), notes).
    """
    keys = visible_tokens(trace, hide_special)
    queries = keys if query_side(trace) is trace else visible_tokens(query_side(trace), hide_special)
    # The memory order of the cut decides the float32 row sums' last bit: a matrix is cut C-ordered (np.ix_), a
    # stack as fancy indexing leaves it, as the views always did.
    weights = attention[np.ix_(queries, keys)] if attention.ndim == 2 else attention[..., queries, :][..., keys]
    if not hide_special:
        return weights, queries, keys, []
    if renormalize:
        return renormalize_rows(weights), queries, keys, ["special tokens hidden, rows renormalised"]
    note = "special tokens hidden, rows not renormalised" if say_unnormalised else "special tokens hidden"
    return weights, queries, keys, [note]


def hidden_keys(trace: EncoderTrace, layer: int, layer_mean: bool) -> np.ndarray | None:
    """(T, T) bool [query, key], True where the query could not see the key in ``layer`` (with ``layer_mean``: in
    no layer); None when every key was visible (``trace.visible`` None or all True)."""
    if trace.visible is None:
        return None
    seen = trace.visible.any(axis=0) if layer_mean else trace.visible[check_layer(trace, layer)]
    return None if seen.all() else ~seen


def mask_note(hidden: np.ndarray) -> str:
    """The subtitle note for masked cells (``hidden`` (..., T, T)): "upper triangle masked (causal)" for a causal
    mask."""
    if (hidden == ~np.tri(hidden.shape[-1], dtype=bool)).all():
        return "upper triangle masked (causal)"
    return "masked: keys the query could not see"


def shown_hidden(trace: EncoderTrace, layer: int, layer_mean: bool, rows: np.ndarray, cols: np.ndarray,
                 notes: list[str]) -> np.ndarray | None:
    """(R, C) bool: which shown cells (``rows`` x ``cols`` token indices) the query could not see, or None when
    none; appends ``mask_note`` to ``notes`` when the trace masks any key."""
    hidden = hidden_keys(trace, layer, layer_mean)
    if hidden is None:
        return None
    notes.append(mask_note(hidden))
    cut = hidden[np.ix_(rows, cols)]
    return cut if cut.any() else None


def without_hidden(weights: np.ndarray, hidden: np.ndarray | None) -> np.ndarray:
    """``weights`` (..., R, C) float32 with NaN where ``hidden`` (R, C) is True: masked cells are not coloured."""
    return weights if hidden is None else np.where(hidden, np.float32(np.nan), weights).astype(np.float32)


def downsample(matrix: np.ndarray, size: int, how: str = "mean") -> np.ndarray:
    """Reduce the last two axes (R, C) to at most (size, size) by block mean or block max: each axis longer than
    ``size`` to ``size`` blocks (rectangular attention keeps its shape where it fits). Float32.

    With ``R, C <= size`` the input comes back unchanged (as float32).
    """
    check_choice(how, AGGREGATES, "downsampling")
    rows, cols = matrix.shape[-2:]
    if rows <= size and cols <= size:
        return np.asarray(matrix, dtype=np.float32)
    return _reduce(matrix, block_edges(rows, min(size, rows)), block_edges(cols, min(size, cols)), how)


def _reduce(matrix: np.ndarray, row_edges: np.ndarray, col_edges: np.ndarray, how: str) -> np.ndarray:
    """(..., R, C) -> (..., len(row_edges) - 1, len(col_edges) - 1) float32: the mean or max of each block between
    consecutive edges (positions on the last two axes, first 0, last R or C)."""
    steps = [np.diff(edges) for edges in (row_edges, col_edges)]
    if how == "max" and all(step.min() == step.max() for step in steps):  # equal blocks: one reshape, exact
        (rows, height), (cols, width) = ((step.size, int(step[0])) for step in steps)
        return matrix.reshape(*matrix.shape[:-2], rows, height, cols, width).max(axis=(-3, -1)).astype(np.float32)
    reduce = np.add if how == "mean" else np.maximum
    out = matrix
    counts = []
    for axis, edges in ((-2, row_edges), (-1, col_edges)):
        out = reduce.reduceat(out, edges[:-1], axis=axis)
        counts.append(np.diff(edges))
    if how == "mean":
        out = out / (counts[0][:, None] * counts[1][None, :])
    return out.astype(np.float32)


def reduce_blocks(matrix: np.ndarray, hidden: np.ndarray | None, row_edges: np.ndarray, col_edges: np.ndarray,
                  how: str = "mean") -> np.ndarray:
    """``matrix`` (..., R, C) reduced to the blocks between ``row_edges`` and ``col_edges`` by ``how`` ("mean" or
    "max") over the cells a query could see: ``hidden`` cells (True; any shape that broadcasts against
    ``matrix``, or None) left out, NaN for blocks of hidden cells only. Float32."""
    if hidden is None:
        return _reduce(matrix, row_edges, col_edges, how)
    seen = (_reduce(~hidden, row_edges, col_edges, "max") if how == "max"  # any seen cell per block
            else _reduce((~hidden).astype(np.float32), row_edges, col_edges, "mean"))  # the share of seen cells
    reduced = _reduce(np.where(hidden, np.float32(0.0), matrix), row_edges, col_edges, how)
    if how == "mean":
        reduced = np.divide(reduced, seen, out=np.zeros_like(reduced), where=seen > 0)
    return np.where(seen > 0, reduced, np.float32(np.nan)).astype(np.float32)


def downsample_seen(matrix: np.ndarray, hidden: np.ndarray | None, size: int, how: str = "mean") -> np.ndarray:
    """``downsample`` over the cells a query could see: ``hidden`` cells (R, C, or any shape that broadcasts
    against ``matrix``) left out of each block's mean (or max), NaN for blocks of hidden cells only. Without
    ``hidden``, ``downsample`` itself."""
    if hidden is None:
        return downsample(matrix, size, how)
    check_choice(how, AGGREGATES, "downsampling")
    rows, cols = matrix.shape[-2:]
    return reduce_blocks(matrix, hidden, block_edges(rows, min(size, rows)), block_edges(cols, min(size, cols)), how)
