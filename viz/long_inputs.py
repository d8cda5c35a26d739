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

import logging
import re
import threading
import time
import weakref
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import plotly.graph_objects as go

from analysis.report import sink_queries
from encoder.attention_store import LazyAttention, LazyVisible
from encoder.budget import ByteBudgetCache
from encoder.errors import ViewError
from encoder.overview import OVERVIEW_CELLS, OVERVIEW_HOW, overview_edges
from encoder.settings import settings
from encoder.trace import EncoderTrace
from viz.clicks import click_spec
from viz.kinds import CrossTrace, query_side
from viz.selection import (
    AGGREGATES,
    block_edges,
    hidden_keys,
    mask_note,
    reduce_blocks,
    renormalize_rows,
    visible_tokens,
)

log = logging.getLogger("headlight.long_inputs")
FULL_TOKENS = 512  # a heatmap shows every cell up to this many queries and keys; beyond, a block image
IMAGE_CELLS = OVERVIEW_CELLS  # a block image has at most this many cells a side (256 x 256 float32: ~0.45 MB of
# JSON); zoom windows of up to FULL_TOKENS a side show every cell
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
            piece = np.asarray(trace.attention[lay, head, begin:end], np.float32)  # read-only: never written
            per_head = piece if per_head is None else per_head + piece
        if layer_mean:
            per_head = per_head / np.float32(len(layers))
        if combined is None:
            combined = per_head if len(heads) == 1 else np.array(per_head)  # a copy to combine into
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
    if isinstance(visible, LazyVisible) and visible.causal and not visible.windows.any():  # the later keys
        return np.arange(visible.length)[None, :] > np.arange(begin, end)[:, None]
    seen = np.asarray(visible[:, begin:end]).any(axis=0) if layer_mean else np.asarray(visible[layer, begin:end])
    return ~seen


def shown_rows(trace: EncoderTrace | CrossTrace, rows: np.ndarray, cols: np.ndarray, weights_of, hidden_of,
               renormalize_over: np.ndarray | None) -> tuple[np.ndarray, np.ndarray | None]:
    """The (len(rows), len(cols)) weights and hidden cells of the shown queries ``rows`` and keys ``cols`` (sorted
    token indices), read as rows ``rows[0]`` .. ``rows[-1]`` by ``weights_of(begin, end)`` and ``hidden_of(begin,
    end)``. With ``renormalize_over`` (the keys left once special tokens are hidden), each row is first rescaled to
    sum to 1 over those keys."""
    begin, end = int(rows[0]), int(rows[-1]) + 1
    weights = _take(weights_of(begin, end), rows - begin, 0)  # (R, Tk)
    hidden = hidden_of(begin, end)
    if renormalize_over is not None:
        kept = renormalize_rows(weights[:, renormalize_over])
        weights = np.zeros_like(weights)
        weights[:, renormalize_over] = kept
    cut_hidden = None if hidden is None else _take(_take(hidden, rows - begin, 0), cols, 1)
    return _take(weights, cols, 1), cut_hidden


def _take(array: np.ndarray, indices: np.ndarray, axis: int) -> np.ndarray:
    """``array`` at ``indices`` along ``axis`` (0 or 1): a view when they are consecutive, else a copy."""
    if indices.size and indices[-1] - indices[0] + 1 == indices.size:
        cut = slice(int(indices[0]), int(indices[-1]) + 1)
        return array[cut] if axis == 0 else array[:, cut]
    return np.take(array, indices, axis=axis)


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
    images, row_edges, col_edges = block_images(rows, cols, read, (how,), cells)
    return images[how], row_edges, col_edges


def block_images(rows: np.ndarray, cols: np.ndarray, read, hows: Sequence[str], cells: int = IMAGE_CELLS,
                 chunk_bytes: int = CHUNK_BYTES) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
    """``block_image`` by each of ``hows`` from one read of the rows, in chunks of ``chunk_bytes``: ({how: image
    (sr, sc)}, row edges, column edges)."""
    for how in hows:
        if how not in AGGREGATES:
            raise ViewError(f"block reduction {how!r} is not one of {', '.join(AGGREGATES)}")
    row_edges = block_edges(rows.size, min(cells, rows.size))
    col_edges = block_edges(cols.size, min(cells, cols.size))
    images = {how: np.empty((row_edges.size - 1, col_edges.size - 1), np.float32) for how in hows}
    tallest = int(np.diff(row_edges).max())
    per_chunk = max(1, chunk_bytes // (4 * tallest * max(cols.size, 1)))  # blocks of rows per chunk
    for first in range(0, row_edges.size - 1, per_chunk):
        last = min(first + per_chunk, row_edges.size - 1)
        weights, hidden = read(rows[row_edges[first]:row_edges[last]])
        local = row_edges[first:last + 1] - row_edges[first]
        for how, image in images.items():
            image[first:last] = reduce_blocks(weights, hidden, local, col_edges, how)
    return images, row_edges, col_edges


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


def is_long(trace: EncoderTrace | CrossTrace) -> bool:
    """Whether views read ``trace`` a block of rows at a time: over ``FULL_TOKENS`` queries or keys."""
    return max(query_side(trace).num_tokens, trace.num_tokens) > FULL_TOKENS


@dataclass(frozen=True)
class HeadImages:
    """Block images of several heads (``head_images``).

    Attributes:
        images: (l, h, sq, sk) float32, NaN where a block has no seen cell.
        peaks: (l, h) float32, each head's largest shown weight.
        sinks: (l, h) float64, each head's attention on the first token averaged over ``sink_queries`` (the
            ``analysis.report`` sink share), over the queries read.
        rows, cols: (Tq',), (Tk',) the shown query and key token indices.
        row_edges, col_edges: the blocks' edges, as positions in ``rows`` / ``cols``.
        notes: what the subtitle says (special tokens hidden, the mask).
    """

    images: np.ndarray
    peaks: np.ndarray
    sinks: np.ndarray
    rows: np.ndarray
    cols: np.ndarray
    row_edges: np.ndarray
    col_edges: np.ndarray
    notes: list[str]


_KEPT_IMAGES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # a lazy attention -> {settings: HeadImages}
KEPT_IMAGE_SETTINGS = 8  # head images kept per trace (the last settings asked)


def head_images(trace: EncoderTrace | CrossTrace, layers: Sequence[int], heads: Sequence[int], cells: int, how: str,
                hide_special: bool, renormalize: bool, layer_mean: bool = False) -> HeadImages:
    """Each of ``heads`` in each of ``layers`` (with ``layer_mean``: averaged over every layer, ``layers`` one
    entry) as a ``block_image`` of at most ``cells`` a side, read one head and a chunk of rows at a time. A lazy
    trace keeps the last ``KEPT_IMAGE_SETTINGS`` results while it lives (a few MB): the model view redrawn with
    another head outlined computes nothing again."""
    settings = (tuple(layers), tuple(heads), cells, how, hide_special, renormalize, layer_mean)
    attention = trace.attention
    if not isinstance(attention, LazyAttention):
        return _head_images(trace, *settings)
    kept = _KEPT_IMAGES.setdefault(attention, {})
    if settings not in kept:
        kept[settings] = _head_images(trace, *settings)
        while len(kept) > KEPT_IMAGE_SETTINGS:
            kept.pop(next(iter(kept)))
    return kept[settings]


def _head_images(trace: EncoderTrace | CrossTrace, layers: Sequence[int], heads: Sequence[int], cells: int, how: str,
                 hide_special: bool, renormalize: bool, layer_mean: bool) -> HeadImages:
    queries, keys, renormalize_over, notes = shown_tokens(trace, hide_special, renormalize)
    sink_rows = sink_queries(query_side(trace).num_tokens)
    images, peaks, sinks = [], np.zeros((len(layers), len(heads)), np.float32), np.zeros((len(layers), len(heads)))
    edges = (None, None)
    for li, layer in enumerate(layers):
        for hi, head in enumerate(heads):
            def weights_of(begin: int, end: int, layer=layer, head=head, at=(li, hi)) -> np.ndarray:
                block = selected_rows(trace, layer, [head], None, layer_mean, begin, end)
                start = max(begin, sink_rows.start)
                if start < end:
                    sinks[at] += block[start - begin:, 0].sum(dtype=np.float64)
                return block

            def read(row_indices: np.ndarray, layer=layer, at=(li, hi)) -> tuple[np.ndarray, np.ndarray | None]:
                weights, hidden = shown_rows(trace, row_indices, keys, weights_of,
                                             lambda begin, end: hidden_rows(trace, layer, layer_mean, begin, end),
                                             renormalize_over)
                peaks[at] = max(peaks[at], float(weights.max(initial=0.0)))
                return weights, hidden

            image, *edges = block_image(queries, keys, read, how, cells)
            images.append(image)
    sinks /= max(1, sink_rows.stop - sink_rows.start)
    mask = long_mask_note(trace, layers[0], layer_mean)
    notes.extend([mask] if mask else [])
    stack = np.stack(images).reshape(len(layers), len(heads), *images[0].shape)
    return HeadImages(stack, peaks, sinks, queries, keys, edges[0], edges[1], notes)


def shown_tokens(trace: EncoderTrace | CrossTrace, hide_special: bool, renormalize: bool
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, list[str]]:
    """The query and key token indices a long view shows (special tokens hidden or not), the keys each row is
    renormalised over (None: rows as they are), and the subtitle's note."""
    keys = visible_tokens(trace, hide_special)
    queries = keys if query_side(trace) is trace else visible_tokens(query_side(trace), hide_special)
    notes = [f"special tokens hidden, rows {'' if renormalize else 'not '}renormalised"] if hide_special else []
    return queries, keys, (keys if hide_special and renormalize else None), notes


def long_mask_note(trace: EncoderTrace | CrossTrace, layer: int, layer_mean: bool) -> str | None:
    """The subtitle's mask note (``viz.selection.mask_note``) read from the mask's recipe for a long trace, without
    the whole (T, T) mask; None when nothing is masked."""
    visible = getattr(trace, "visible", None)
    if visible is None:
        return None
    if isinstance(visible, LazyVisible):
        return "upper triangle masked (causal)" if visible.causal and not visible.windows.any() else (
            "masked: keys the query could not see")
    hidden = hidden_keys(trace, layer, layer_mean)
    return None if hidden is None else mask_note(hidden)


def window_trace(trace: EncoderTrace, begin: int, end: int) -> EncoderTrace:
    """The tokens ``begin`` .. ``end - 1`` of ``trace`` as a short trace: their tokens, hidden states and positional
    rows, and the (L, H, W, W) attention among them, read one head at a time (a long trace never materialises more
    than W rows of one head). Whole-text outputs and logit terms are dropped."""
    attention = np.empty((trace.num_layers, trace.num_heads, end - begin, end - begin), np.float32)
    for layer in range(trace.num_layers):
        for head in range(trace.num_heads):
            attention[layer, head] = trace.attention[layer, head, begin:end][:, begin:end]
    visible = None if trace.visible is None else np.stack(
        [np.asarray(trace.visible[layer, begin:end])[:, begin:end] for layer in range(trace.num_layers)])
    cut = slice(begin, end)
    optional = {name: getattr(trace, name)[cut] for name in ("words", "generated") if getattr(trace, name) is not None}
    return trace.replace(tokens=trace.tokens[cut], token_ids=trace.token_ids[cut], segment_ids=trace.segment_ids[cut],
                         special=trace.special[cut], attention=attention, positional=trace.positional[cut],
                         hidden=trace.hidden[:, cut], visible=visible, outputs={}, logit_terms={},
                         untruncated_length=end - begin, truncated=False, **optional)


def windowed(trace: EncoderTrace | CrossTrace, query: int | None) -> tuple[EncoderTrace | CrossTrace, int | None,
                                                                              tuple[int, str] | None]:
    """A long trace cut to the ``token_window`` around ``query`` (the token view, head lines): the window's trace,
    the query's index in it, and (its first token, the subtitle note) for ``in_full_text``; a short trace (or
    cross-attention) as it is, with None."""
    if not is_long(trace) or query_side(trace) is not trace:
        return trace, query, None
    if query is not None and not 0 <= query < trace.num_tokens:
        raise ViewError(f"query {query} is out of range: the text has {trace.num_tokens} tokens")
    begin, end = token_window(trace, 0 if query is None else query)
    note = (f"tokens {begin}-{end - 1} of {trace.num_tokens} (a window around the query token; the indices in "
            f"labels count from {begin}, clicks pick the token of the whole text)")
    return window_trace(trace, begin, end), (None if query is None else query - begin), (begin, note)


def in_full_text(fig: go.Figure, window: tuple[int, str] | None) -> go.Figure:
    """``fig`` drawn on a ``windowed`` trace, back in the whole text's terms: its clickable points' "query" and
    "key" values (``viz.clicks``) moved by the window's first token, the window's note on the subtitle."""
    if window is None:
        return fig
    begin, note = window
    for index, fields in click_spec(fig).items():
        columns = [column for column, name in enumerate(fields) if name in ("query", "key")]
        data = fig.data[index].customdata
        if columns and data is not None and len(data):
            shifted = np.array(data, dtype=np.float64 if np.asarray(data).dtype.kind == "f" else np.int64)
            shifted[:, columns] += begin
            fig.data[index].customdata = shifted
    subtitle = fig.layout.title.subtitle.text
    fig.update_layout(title_subtitle_text=f"{subtitle} · {note}" if subtitle else note)
    return fig


# ---------------------------------------------------------------------------------------------------------------
# Each head's whole-text block image: the trace's own overview image (``encoder.overview``: the block max, made by
# the forward pass), or kept here and computed ahead (the app's layer and head changes read it from here).

HEAD_BLOCK_HOWS = ("max", "mean")  # the reductions a head's block image is kept by (one read of the head makes all)
IMAGE_SHARE = 8  # the kept head images hold at most HEADLIGHT_CACHE_MB / IMAGE_SHARE bytes ...
IMAGE_MAX_BYTES = 128 * 2**20  # ... and at most this (64 heads' two images; the rest of a big budget goes to traces)
AHEAD_SHARE = 2  # one trace's images computed ahead hold at most half of that: the heads nearest the shown one ...
AHEAD_HEADS = 32  # ... and at most this many (the background work per trace stays bounded as images get smaller)
IDLE_SECONDS = 30.0  # a precompute thread with nothing left to do ends after this long (``focus`` starts another)
AHEAD_CHUNK_BYTES = 8 * 2**20  # computing ahead reads smaller chunks than a view: it pauses for views sooner
SETTLE_SECONDS = 1.0  # computing ahead waits this long after the focus moved: the change is drawn first
FOREGROUND_WAIT_SECONDS = 30.0  # the longest a precompute step waits for a view being computed now to finish


def image_limit() -> int:
    """Bytes the kept head images may hold (``HEAD_BLOCKS``): ``HEADLIGHT_CACHE_MB`` / ``IMAGE_SHARE``, at most
    ``IMAGE_MAX_BYTES``."""
    return min(settings().cache_bytes // IMAGE_SHARE, IMAGE_MAX_BYTES)


HEAD_BLOCKS = ByteBudgetCache(image_limit())  # (store id, layer, head, cells, how) -> (image, row and column edges)


class _Cancelled(BaseException):
    """Raised inside a precompute step's read once it is cancelled (a BaseException: ``ByteBudgetCache`` lets
    whoever waits for the same image compute it instead)."""


class _Foreground:
    """How many views are being computed now (``foreground``), and which heads' images they wait for
    (``head_block``): computing ahead waits for none, before each head and each chunk of its rows, unless a view
    waits for the very head it computes."""

    def __init__(self) -> None:
        self._busy = 0
        self._wanted: dict[tuple, int] = {}
        self._condition = threading.Condition()

    @contextmanager
    def computing(self, head: tuple | None = None) -> Iterator[None]:
        with self._condition:
            self._busy += 1
            if head is not None:
                self._wanted[head] = self._wanted.get(head, 0) + 1
            self._condition.notify_all()
        try:
            yield
        finally:
            with self._condition:
                self._busy -= 1
                if head is not None:
                    self._wanted[head] -= 1
                    if not self._wanted[head]:
                        del self._wanted[head]
                self._condition.notify_all()

    def wait_idle(self, timeout: float, head: tuple | None = None) -> None:
        """Until no view is being computed, or one waits for ``head``'s images (at most ``timeout`` seconds)."""
        with self._condition:
            self._condition.wait_for(lambda: self._busy == 0 or head in self._wanted, timeout=timeout)


_FOREGROUND = _Foreground()


def foreground():
    """A context manager around work a visitor waits for (the app's views fragment): computing ahead pauses
    meanwhile (at its next chunk of rows)."""
    return _FOREGROUND.computing()

_AHEAD_SLOT = threading.Lock()  # one precompute step at a time in the process, whatever the sessions


def has_head_blocks(trace: EncoderTrace | CrossTrace) -> bool:
    """Whether ``head_block`` serves ``trace``: a long self-attention kept lazily (``LazyAttention``)."""
    return isinstance(trace.attention, LazyAttention) and query_side(trace) is trace and is_long(trace)


def _head_id(trace: EncoderTrace, layer: int, head: int) -> tuple[int, int, int]:
    return trace.attention.store_id, int(layer), int(head)


def _block_key(trace: EncoderTrace, layer: int, head: int, how: str) -> tuple:
    return *_head_id(trace, layer, head), IMAGE_CELLS, how


def _resized() -> ByteBudgetCache:
    limit = image_limit()
    if HEAD_BLOCKS.max_bytes != limit:  # the operator's setting, read at each use (tests change it)
        HEAD_BLOCKS.resize(limit)
    return HEAD_BLOCKS


def overview_image(trace: EncoderTrace, layer: int, head: int, how: str
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """``head_block`` read from the trace's overview images when it has them and ``how`` is theirs (``OVERVIEW_HOW``),
    else None."""
    overview = getattr(trace.attention, "overview", None)
    if overview is None or how != OVERVIEW_HOW:
        return None
    edges = overview_edges(trace.num_tokens)
    return overview[layer, head], edges, edges


def computed_hows(trace: EncoderTrace) -> tuple[str, ...]:
    """The reductions of ``HEAD_BLOCK_HOWS`` that ``head_block`` computes for ``trace`` (not its overview's)."""
    kept = () if getattr(trace.attention, "overview", None) is None else (OVERVIEW_HOW,)
    return tuple(how for how in HEAD_BLOCK_HOWS if how not in kept)


def head_block(trace: EncoderTrace, layer: int, head: int, how: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``block_image`` of one head of the whole text (no token hidden) by ``how``: (image (sr, sc), row edges,
    column edges): the trace's overview image (``overview_image``), or from ``HEAD_BLOCKS`` (computed ahead by
    ``HeadPrecompute``, or now, and kept). For traces that ``has_head_blocks``."""
    kept = overview_image(trace, layer, head, how)
    if kept is not None:
        return kept
    key = _block_key(trace, layer, head, how)
    with _FOREGROUND.computing(_head_id(trace, layer, head)):
        return _resized().get(key, lambda: _head_blocks(trace, layer, head, (how,))[how])


def _head_blocks(trace: EncoderTrace, layer: int, head: int, hows: Sequence[str],
                 cancelled: threading.Event | None = None) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """{how: (image, row edges, column edges)} of one head's whole-text block images, read once (as
    ``viz.attention.long_heatmap`` reads it: the same rows, the same reduction); ``_Cancelled`` between chunks of
    rows once ``cancelled`` is set."""
    tokens = np.arange(trace.num_tokens)

    def read(row_indices: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        if cancelled is not None:  # computing ahead: pause for views being computed, stop once cancelled
            _FOREGROUND.wait_idle(FOREGROUND_WAIT_SECONDS, _head_id(trace, layer, head))
            if cancelled.is_set():
                raise _Cancelled
        return shown_rows(trace, row_indices, tokens,
                          lambda begin, end: selected_rows(trace, layer, [head], None, False, begin, end),
                          lambda begin, end: hidden_rows(trace, layer, False, begin, end), None)

    chunk = CHUNK_BYTES if cancelled is None else AHEAD_CHUNK_BYTES
    images, row_edges, col_edges = block_images(tokens, tokens, read, hows, chunk_bytes=chunk)
    return {how: (images[how], row_edges, col_edges) for how in hows}


def ahead_order(layers: int, heads: int, layer: int, head: int, count: int) -> list[tuple[int, int]]:
    """The ``count`` (layer, head) pairs nearest the shown ``layer``, ``head`` (steps of the Layer and Head
    sliders apart; forward steps first), the shown one first."""
    def distance(pair: tuple[int, int]) -> tuple[int, ...]:
        d_layer, d_head = pair[0] - layer, pair[1] - head
        return abs(d_layer) + abs(d_head), d_layer < 0, d_head < 0, abs(d_layer)

    pairs = [(lay, h) for lay in range(layers) for h in range(heads)]
    return sorted(pairs, key=distance)[:count]


class HeadPrecompute:
    """Block images (``computed_hows``: the reductions that are not the trace's overview images) of a long trace's
    heads computed in a background thread into ``HEAD_BLOCKS``, nearest the shown head first (``ahead_order``), at
    most ``image_limit() / AHEAD_SHARE`` bytes and ``AHEAD_HEADS`` heads of them: a layer or head change then reads
    its image instead of computing the head's (T, T) weights.

    Bounded: one step (a head) at a time in the process, only ``SETTLE_SECONDS`` after the focus last moved (a
    layer or head change is drawn first, its cores not shared) and only while no view is computing one; the trace held
    weakly (a step holds it while it runs), so a trace dropped from the app's cache is not kept alive here;
    ``cancel`` stops it within a chunk of rows; it pauses (before each chunk) while a view is being computed,
    unless that view waits for the head it computes. A head not computed yet is computed by the view that asks for it
    (``head_block``), once: a view asking for the head being computed here waits for it.
    """

    def __init__(self, trace: EncoderTrace) -> None:
        self.store_id = trace.attention.store_id
        self.hows = computed_hows(trace)
        self._trace = weakref.ref(trace)
        self._shape = (trace.num_layers, trace.num_heads)
        self._focus = (0, 0)
        self._moved = time.monotonic()  # when the focus last moved
        self._done: set[tuple[int, int]] = set()  # computed here since the focus last moved: never twice
        self._changed = threading.Event()
        self._cancelled = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def focus(self, layer: int, head: int) -> None:
        """Compute ahead around ``layer``, ``head`` (the shown one), starting the thread if it is not running."""
        with self._lock:
            if self._cancelled.is_set():
                return
            if (int(layer), int(head)) != self._focus:
                self._focus = (int(layer), int(head))
                self._moved = time.monotonic()
                self._done.clear()
            self._changed.set()
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="headlight-head-images", daemon=True)
                self._thread.start()

    def cancel(self) -> None:
        """Stop (the step running ends at its next chunk of rows); ``focus`` no longer starts anything."""
        self._cancelled.set()
        self._changed.set()

    def join(self, timeout: float | None = None) -> None:
        thread = self._thread
        if thread is not None:
            thread.join(timeout)

    def pending(self) -> list[tuple[int, int]]:
        """The (layer, head) pairs around the focus whose images are not kept yet, nearest first, but for those
        computed here since the focus last moved (other traces' images may have pushed them out of the budget:
        they are not computed again until the focus moves); none once cancelled or once the trace is gone."""
        if self._cancelled.is_set() or self._trace() is None:
            return []
        per_head = len(self.hows) * 4 * IMAGE_CELLS * IMAGE_CELLS
        count = max(1, min(AHEAD_HEADS, image_limit() // AHEAD_SHARE // per_head))
        kept = _resized()
        with self._lock:
            focus, done = self._focus, set(self._done)
        return [(layer, head) for layer, head in ahead_order(*self._shape, *focus, count) if (layer, head) not in done
                and any((self.store_id, layer, head, IMAGE_CELLS, how) not in kept for how in self.hows)]

    def _run(self) -> None:
        while not self._cancelled.is_set():
            self._changed.clear()
            todo = self.pending()
            if not todo:
                if not self._changed.wait(IDLE_SECONDS):
                    return
                continue
            settling = self._moved + SETTLE_SECONDS - time.monotonic()
            if settling > 0:  # the focus just moved: the page's rerun and the browser's drawing first
                self._changed.wait(settling)
                continue
            with _AHEAD_SLOT:
                _FOREGROUND.wait_idle(FOREGROUND_WAIT_SECONDS)
                trace = self._trace()
                if trace is None or self._cancelled.is_set():
                    return
                try:
                    self._step(trace, *todo[0])
                except _Cancelled:
                    return
                except Exception:  # a head that cannot be computed: its view says why when asked
                    log.exception("computing a head's block images ahead failed")
                finally:
                    del trace
                with self._lock:
                    self._done.add(todo[0])

    def _step(self, trace: EncoderTrace, layer: int, head: int) -> None:
        """One head's images, from one read of its rows (an image a view already kept is not recomputed)."""
        made: dict = {}

        def image(how: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
            if not made:
                made.update(_head_blocks(trace, layer, head, self.hows, self._cancelled))
            return made[how]

        for how in self.hows:
            HEAD_BLOCKS.get(_block_key(trace, layer, head, how), lambda how=how: image(how))
