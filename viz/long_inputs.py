"""Views of long inputs (issue 22): weights read a block of query rows at a time (``trace.attention[layer, head,
rows]``, computed on demand for a long trace's ``LazyAttention``), never a layer's whole (H, T, T).

- ``selected_rows``: rows ``begin`` .. ``end - 1`` of what a heatmap shows (one head, a mean/max of heads, the mean
  of layers), (R, T) float32.
- ``block_image``: the shown queries x keys reduced to at most ``IMAGE_CELLS`` cells a side by block max or mean,
  computed in row chunks of ``CHUNK_BYTES``; cells no query could see are left out (NaN when a block has none).
- ``token_window``: the range of tokens around the query token that the token view and head lines show.
- ``parse_range``: a ``rows=a:b`` / ``cols=a:b`` zoom window, checked.

NumPy only; ``viz.attention`` draws the figures.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

from encoder.errors import ViewError
from encoder.trace import EncoderTrace
from viz.kinds import CrossTrace, query_side
from viz.selection import AGGREGATES, block_edges, reduce_blocks, renormalize_rows

FULL_TOKENS = 512  # a heatmap shows every cell up to this many queries and keys; beyond, a block image
IMAGE_CELLS = 512  # a block image has at most this many cells a side (512 x 512 float32: ~3 MB of JSON)
CHUNK_BYTES = 32 * 2**20  # the (R, T) float32 rows one step of a block image reads at once
TOKEN_WINDOW = 256  # the token view and head lines show at most this many tokens around the query token


def parse_range(value: str | Sequence[int] | None, count: int, what: str) -> tuple[int, int] | None:
    """``"a:b"`` (either side may be empty), ``(a, b)`` or None (the whole axis) as ``(a, b)`` with ``0 <= a < b <=
    count``, or None.

    Raises:
        ViewError: not a range, or empty or outside ``range(count)``.
    """
    if value is None or value == "":
        return None
    if isinstance(value, str):
        match = re.fullmatch(r"\s*(\d*)\s*:\s*(\d*)\s*", value)
        if match is None:
            raise ViewError(f"{what} must be a range of token indices like 100:356, got {value!r}")
        begin, end = int(match[1] or 0), int(match[2] or count)
    else:
        begin, end = (int(v) for v in value)
    if not 0 <= begin < end <= count:
        raise ViewError(f"{what} {begin}:{end} is not a range of token indices in 0:{count} (start before end)")
    return begin, end


def selected_rows(trace: EncoderTrace | CrossTrace, layer: int, heads: Sequence[int], aggregate: str | None,
                  layer_mean: bool, begin: int, end: int) -> np.ndarray:
    """(R, Tk) float32: queries ``begin`` .. ``end - 1`` of the weights a heatmap shows: ``heads[0]`` alone
    (``aggregate`` None), or the "mean" / "max" of ``heads``, each head first averaged over layers with
    ``layer_mean``. Reads ``trace.attention[layer, head, begin:end]`` one head at a time."""
    layers = range(trace.num_layers) if layer_mean else (layer,)
    combined = None
    for head in heads:
        per_head = None
        for lay in layers:
            piece = np.asarray(trace.attention[lay, head, begin:end], np.float32)
            per_head = piece.copy() if per_head is None else per_head + piece
        if layer_mean:
            per_head /= np.float32(len(layers))
        if combined is None:
            combined = per_head
        elif aggregate == "max":
            np.maximum(combined, per_head, out=combined)
        else:
            combined += per_head
    if aggregate == "mean" and len(heads) > 1:
        combined /= np.float32(len(heads))
    return combined


def hidden_rows(trace: EncoderTrace | CrossTrace, layer: int, layer_mean: bool, begin: int, end: int
                ) -> np.ndarray | None:
    """(R, Tk) bool: True where queries ``begin`` .. ``end - 1`` could not see the key (in ``layer``, or in no
    layer with ``layer_mean``); None when the trace masks nothing."""
    visible = getattr(trace, "visible", None)
    if visible is None:
        return None
    seen = np.asarray(visible[:, begin:end]).any(axis=0) if layer_mean else np.asarray(visible[layer, begin:end])
    return ~seen


def shown_rows(trace: EncoderTrace | CrossTrace, rows: np.ndarray, cols: np.ndarray, weights_of, hidden_of,
               renormalize_over: np.ndarray | None) -> tuple[np.ndarray, np.ndarray | None]:
    """The (len(rows), len(cols)) weights and hidden cells of the shown queries ``rows`` and keys ``cols`` (sorted
    token indices), read as rows ``rows[0]`` .. ``rows[-1]`` by ``weights_of(begin, end)`` and ``hidden_of(begin,
    end)``. With ``renormalize_over`` (the keys left once special tokens are hidden), each row is first rescaled to
    sum to 1 over those keys."""
    begin, end = int(rows[0]), int(rows[-1]) + 1
    weights = weights_of(begin, end)[rows - begin]  # (R, Tk)
    hidden = hidden_of(begin, end)
    if renormalize_over is not None:
        kept = renormalize_rows(weights[:, renormalize_over])
        weights = np.zeros_like(weights)
        weights[:, renormalize_over] = kept
    cut_hidden = None if hidden is None else hidden[rows - begin][:, cols]
    return np.ascontiguousarray(weights[:, cols]), cut_hidden


def block_image(rows: np.ndarray, cols: np.ndarray, read, how: str, cells: int = IMAGE_CELLS
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The shown weights reduced to at most ``cells`` x ``cells`` blocks by ``how`` ("max" or "mean").

    Args:
        rows, cols: (R,), (C,) sorted token indices of the shown queries and keys.
        read: ``read(row_indices) -> (weights (r, C), hidden (r, C) bool or None)`` (``shown_rows``).
        how: "max" or "mean" of each block (over the cells its queries could see).
        cells: the most cells a side.

    Returns:
        (image (sr, sc) float32, NaN where a block has no seen cell; row edges (sr + 1,) and column edges (sc + 1,)
        as positions in ``rows`` / ``cols``). Rows are read in chunks of whole blocks within ``CHUNK_BYTES``.
    """
    if how not in AGGREGATES:
        raise ViewError(f"block reduction {how!r} is not one of {', '.join(AGGREGATES)}")
    row_edges = block_edges(rows.size, min(cells, rows.size))
    col_edges = block_edges(cols.size, min(cells, cols.size))
    image = np.empty((row_edges.size - 1, col_edges.size - 1), np.float32)
    tallest = int(np.diff(row_edges).max())
    per_chunk = max(1, CHUNK_BYTES // (4 * tallest * max(cols.size, 1)))  # blocks of rows per chunk
    for first in range(0, row_edges.size - 1, per_chunk):
        last = min(first + per_chunk, row_edges.size - 1)
        weights, hidden = read(rows[row_edges[first]:row_edges[last]])
        local = row_edges[first:last + 1] - row_edges[first]
        image[first:last] = reduce_blocks(weights, hidden, local, col_edges, how)
    return image, row_edges, col_edges


def block_note(row_edges: np.ndarray, col_edges: np.ndarray, how: str) -> str:
    """"each cell: max of 16×16 tokens" (or "about 16×16" when the blocks differ by a token)."""
    heights, widths = np.diff(row_edges), np.diff(col_edges)
    uniform = heights.min() == heights.max() and widths.min() == widths.max()
    size = f"{round(float(heights.mean()))}×{round(float(widths.mean()))}"
    return f"each cell: {how} of {'' if uniform else 'about '}{size} tokens"


def token_window(trace: EncoderTrace | CrossTrace, query: int, size: int = TOKEN_WINDOW) -> tuple[int, int] | None:
    """The ``size`` query tokens around ``query`` (``(begin, end)``, clipped to the text) that a view of a long
    text shows, or None when the whole text fits."""
    count = query_side(trace).num_tokens
    if count <= size:
        return None
    begin = min(max(0, int(query) - size // 2), count - size)
    return begin, begin + size
