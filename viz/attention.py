"""Attention heatmaps: one head (or a mean or max of heads) as a query x key heatmap, and a layer's heads as small
multiples. The whole model as one mosaic is ``viz.model_view``; lines between tokens ``viz.head_lines``.

Every builder takes an ``EncoderTrace`` and returns a ``plotly.graph_objects.Figure``; none draws or shows it. Each
reads as: check the settings, select the weights (``viz.selection.shown_attention``), lay out, add the traces.

Clicks (``viz.clicks``): the heatmap's ``"cells"`` are ("query", "key"), up to ``CLICK_MAX_TOKENS`` tokens a side: an
invisible scatter layer over the cell centres (a heatmap alone sends no click events; image exports drop it).
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from encoder.errors import ViewError
from encoder.trace import EncoderTrace
from viz.clicks import click_markers, click_meta, outline
from viz.kinds import CrossTrace, is_cross, query_side
from viz.layout import (
    COLORBAR_ROOM,
    DEFAULT_SCALE,
    MASKED,
    MASKED_COLOR,
    base_layout,
    category_labels,
    finite_range,
    heatmap_cell,
    label_margin,
    log_colorbar,
    log_weights,
    mark_generated,
    new_figure,
    notes_title,
    set_notes,
    short_label,
    token_heatmap_axes,
)
from viz.long_inputs import (
    FULL_TOKENS,
    block_image,
    block_note,
    has_head_blocks,
    head_block,
    head_images,
    hidden_rows,
    is_long,
    long_mask_note,
    parse_range,
    selected_rows,
    shown_rows,
    shown_tokens,
)
from viz.scrub import Step, add_head_slider
from viz.selection import (
    AGGREGATES,
    BLOCKS,
    block_edges,
    downsample_seen,
    head_label,
    kv_heads,
    layer_heads,
    layer_name,
    select_attention,
    shown_heads,
    shown_hidden,
    shown_queries_keys,
    without_hidden,
)
from viz.validation import check_choice, check_colorscale, check_int_range, check_token

CLICK_MAX_TOKENS = 64  # beyond this many rows or columns no click layer: T² SVG markers slow drawing (~1 s at 128)
GRID_MAX_CELLS = 96  # head-grid thumbnails are block-averaged down to this many cells a side

# Layout, in pixels
COLORBAR_LENGTH = 420  # the heatmap's colour bar is at most this long
HEATMAP_MIN_WIDTH = 520
HEATMAP_TOP = 80  # top margin of the heatmap: title and subtitle
HEATMAP_AIR = 10  # below the top margin and the plot
GRID_SIDE, GRID_NARROW_SIDE = 230, 180  # a head-grid thumbnail, up to GRID_WIDE_COLUMNS columns and beyond
GRID_WIDE_COLUMNS = 4
GRID_LABEL_CELLS = 24  # head-grid thumbnails of at most this many cells a side get token labels
GRID_FONT = 9  # head-grid token labels
GRID_MAX_GROUP = 8  # a head grid puts one key/value head's query heads on a row when they are at most this many
GRID_TOP = 100  # top margin of the head grid: title, subtitle and the first row's subplot titles


def _view_rows_cols(
    trace: EncoderTrace | CrossTrace, matrix: np.ndarray, hide_special: bool, renormalize: bool, block: str | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
    """Rows (queries) and columns (keys) to show, their (R, C) weights, and notes for the title.

    Special tokens are dropped first (rows renormalised over the remaining keys when asked); a block then keeps the
    queries of one sentence and the keys of the other (weights as they are, not renormalised again).
    """
    sub, rows, cols, notes = shown_queries_keys(trace, matrix, hide_special, renormalize, say_unnormalised=True)
    if block is not None:
        row_mask, col_mask, note = _block_masks(trace, cols, block)
        rows, cols = cols[row_mask], cols[col_mask]
        sub = sub[np.ix_(row_mask, col_mask)]
        notes.append(note)
    return rows, cols, np.ascontiguousarray(sub, dtype=np.float32), notes


def _block_masks(trace: EncoderTrace | CrossTrace, shown: np.ndarray, block: str) -> tuple[np.ndarray, np.ndarray,
                                                                                          str]:
    """Of the ``shown`` tokens, which are the block's queries and which its keys (bool masks), and its note."""
    check_choice(block, BLOCKS, "block")
    if not trace.is_pair:
        raise ViewError(f"block {block!r} needs a sentence pair; this trace has one sentence")
    segments = trace.segment_ids[shown]
    row_mask, col_mask = segments == "AB".index(block[0]), segments == "AB".index(block[1])
    if not row_mask.any() or not col_mask.any():
        raise ViewError(f"block {block!r} has no tokens to show once special tokens are hidden")
    return row_mask, col_mask, f"block {block[0]} → {block[1]} (queries in sentence {block[0]}, keys in {block[1]})"


def build_attention_heatmap(
    trace: EncoderTrace,
    layer: int = 0,
    head: int = 0,
    *,
    aggregate: str | None = None,
    heads: Iterable[int] | None = None,
    layer_mean: bool = False,
    colorscale: str = DEFAULT_SCALE,
    log_color: bool = False,
    hide_special: bool = False,
    renormalize: bool = True,
    block: str | None = None,
    selected: tuple[int, int] | None = None,
    scrub: bool = True,
    rows: str | tuple[int, int] | None = None,
    cols: str | tuple[int, int] | None = None,
    reduce: str = "max",
) -> go.Figure:
    """Attention of one head (or a head aggregate) as a heatmap: queries on y (top to bottom), keys on x.

    A long text (over ``viz.long_inputs.FULL_TOKENS`` tokens) or a zoom window (``rows``, ``cols``) is drawn from
    query rows read a block at a time (``long_heatmap``): every cell while the window has at most ``FULL_TOKENS``
    queries and keys, else a block image of at most ``IMAGE_CELLS`` cells a side.

    Args:
        trace: the EncoderTrace to show.
        layer: int, the layer (ignored when ``layer_mean``).
        head: int, the head (ignored when ``aggregate`` is set).
        aggregate: None, "mean" or "max": combine ``heads`` instead of showing one head.
        heads: ints, the heads to aggregate (default all).
        layer_mean: bool, average over all layers first.
        colorscale: a Plotly named colour scale (``viz.layout.SEQUENTIAL_SCALES`` lists good ones).
        log_color: bool, colour by log10(weight) (floored at ``LOG_FLOOR``); hover still shows the weight.
        hide_special: bool, drop [CLS]/[SEP]-like tokens from both axes.
        renormalize: bool, with ``hide_special``, rescale each row to sum to 1 over the remaining keys.
        block: None or "AA", "AB", "BA", "BB": for a sentence pair, queries of one sentence and keys of the other.
        selected: (query_index, key_index) to outline (token indices), e.g. the cell last clicked.
        scrub: bool, for one head: a slider in the figure moves through the heads in the browser
            (``viz.scrub``; its steps restyle ``z``, ``zmin``, ``zmax`` and the click layer). Short texts only.
        rows, cols: the zoom window: query and key token ranges ("a:b" or (a, b), end excluded); None: all.
        reduce: "max" or "mean": what each cell of a block image shows of its block (the subtitle says it).

    Returns:
        A figure whose first trace is the heatmap: ``z`` (R, C) float32 (log10 with ``log_color``; NaN where the
        query could not see the key), ``x``/``y`` category labels "token (index)" (``viz.layout.category_labels``).
        With at most ``CLICK_MAX_TOKENS`` rows and columns the click layer ``"cells"`` follows (``customdata``
        [query_index, key_index, weight] at the cell centres); ``selected`` adds a visible one-point trace
        ``"selected"``; masked cells add a last grey heatmap ``"masked"`` (hover: "masked").

    Example:
        >>> fig = build_attention_heatmap(trace, layer=2, head=5)  # doctest: +SKIP
    """
    check_colorscale(colorscale)
    check_choice(reduce, AGGREGATES, "reduce")
    if rows is not None or cols is not None or is_long(trace):
        return long_heatmap(trace, layer, head, aggregate=aggregate, heads=heads, layer_mean=layer_mean,
                            colorscale=colorscale, log_color=log_color, hide_special=hide_special,
                            renormalize=renormalize, block=block, selected=selected, rows=rows, cols=cols,
                            reduce=reduce)
    matrix, what = select_attention(trace, layer, head, aggregate=aggregate, heads=heads, layer_mean=layer_mean)
    rows, cols, weights, notes = _view_rows_cols(trace, matrix, hide_special, renormalize, block)
    hidden = shown_hidden(trace, layer, layer_mean, rows, cols, notes)  # (R, C) or None
    fig, clickable = _cells_figure(trace, rows, cols, weights, hidden, what, notes, colorscale, log_color, selected)
    if scrub and aggregate is None and not layer_mean:
        def step(lay: int, h: int) -> Step:
            return _heatmap_step(trace, lay, h, (hide_special, renormalize, block), rows, cols, log_color, clickable)

        family = ("heatmap", hide_special, renormalize, block, log_color, clickable, rows.tobytes(), cols.tobytes())
        add_head_slider(fig, trace, layer, head, [0, 1] if clickable else [0], step, family)
    return fig


def _cells_figure(trace: EncoderTrace | CrossTrace, rows: np.ndarray, cols: np.ndarray, weights: np.ndarray,
                  hidden: np.ndarray | None, what: str, notes: list[str], colorscale: str, log_color: bool,
                  selected: tuple[int, int] | None) -> tuple[go.Figure, bool]:
    """The heatmap of every shown cell: (R, C) ``weights`` of queries ``rows`` and keys ``cols`` (NaN where
    ``hidden``), the click layer up to ``CLICK_MAX_TOKENS`` a side, the ``selected`` outline, the masked cells;
    and whether it has the click layer."""
    weights = without_hidden(weights, hidden)
    if log_color:
        notes.append("log colour")
    cell = heatmap_cell(rows.size, cols.size)
    labels = _axis_labels(trace)
    fig = _heatmap_figure(trace, labels, rows, cols, cell, what, notes)
    clickable = rows.size <= CLICK_MAX_TOKENS and cols.size <= CLICK_MAX_TOKENS
    fig.add_trace(_weights_heatmap(labels, rows, cols, weights, cell, colorscale, log_color, hover=not clickable))
    if clickable:
        fig.add_trace(_cell_layer(labels, rows, cols, weights, cell, hidden))
    if selected is not None:
        fig.add_traces(_selected_cell(trace, selected, rows, cols, labels, cell))
    if hidden is not None:
        fig.add_trace(_masked_cells(labels, rows, cols, hidden, hover=not clickable))
    return fig, clickable


def long_heatmap(
    trace: EncoderTrace | CrossTrace, layer: int, head: int, *, aggregate: str | None, heads: Iterable[int] | None,
    layer_mean: bool, colorscale: str, log_color: bool, hide_special: bool, renormalize: bool, block: str | None,
    selected: tuple[int, int] | None, rows, cols, reduce: str,
) -> go.Figure:
    """``build_attention_heatmap`` of a long text or a zoom window, read a block of query rows at a time
    (``viz.long_inputs``): every cell of a window of at most ``FULL_TOKENS`` queries and keys, else a block image
    (each cell the ``reduce`` of its block, said in the subtitle). No head slider (each head is computed on
    demand)."""
    chosen, heads_text = shown_heads(trace, head, aggregate, heads)
    what = f"{layer_name(trace, layer, layer_mean).capitalize()}, {heads_text}"
    queries, keys, renormalize_over, notes = _long_tokens(trace, hide_special, renormalize, block, rows, cols)

    def read(row_indices: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        return shown_rows(trace, row_indices, keys,
                          lambda begin, end: selected_rows(trace, layer, chosen, aggregate, layer_mean, begin, end),
                          lambda begin, end: hidden_rows(trace, layer, layer_mean, begin, end), renormalize_over)

    mask = long_mask_note(trace, layer, layer_mean)
    notes.extend([mask] if mask else [])
    if queries.size <= FULL_TOKENS and keys.size <= FULL_TOKENS:
        weights, hidden = read(queries)
        hidden = hidden if hidden is not None and hidden.any() else None
        return _cells_figure(trace, queries, keys, weights, hidden, what, notes, colorscale, log_color, selected)[0]
    whole_head = aggregate is None and not (layer_mean or hide_special) and (block, rows, cols) == (None,) * 3
    if whole_head and has_head_blocks(trace):  # one head of the whole text: kept (computed ahead in the app)
        image, row_edges, col_edges = head_block(trace, layer, chosen[0], reduce)
    else:
        image, row_edges, col_edges = block_image(queries, keys, read, reduce)
    notes.append(block_note(row_edges, col_edges, reduce))
    return _image_figure(trace, image, queries[row_edges[:-1]], keys[col_edges[:-1]], what, notes, colorscale,
                         log_color, reduce)


def _long_tokens(trace: EncoderTrace | CrossTrace, hide_special: bool, renormalize: bool, block: str | None,
                 rows, cols) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, list[str]]:
    """The shown query and key token indices of a long heatmap (special tokens hidden, a block's sentences, the
    zoom window), the keys rows are renormalised over (None: as they are), and the notes."""
    queries, keys, renormalize_over, notes = shown_tokens(trace, hide_special, renormalize)
    if block is not None:
        row_mask, col_mask, note = _block_masks(trace, keys, block)
        queries, keys = keys[row_mask], keys[col_mask]
        notes.append(note)
    for name, value, side in (("rows", rows, "queries"), ("cols", cols, "keys")):
        shown = queries if side == "queries" else keys
        window = parse_range(value, (query_side(trace) if side == "queries" else trace).num_tokens, name)
        if window is None:
            continue
        shown = shown[(shown >= window[0]) & (shown < window[1])]
        if shown.size == 0:
            raise ViewError(f"{name} {window[0]}:{window[1]} has no tokens to show")
        notes.append(f"{side} {window[0]}-{window[1] - 1}")
        queries, keys = (shown, keys) if side == "queries" else (queries, shown)
    return queries, keys, renormalize_over, notes


IMAGE_SIDE = 640  # pixels: a block image's plot is this many a side
IMAGE_TICKS = 12  # token labels on each axis of a block image


def _image_figure(trace: EncoderTrace | CrossTrace, image: np.ndarray, query_starts: np.ndarray,
                  key_starts: np.ndarray, what: str, notes: list[str], colorscale: str, log_color: bool,
                  reduce: str) -> go.Figure:
    """A block image: ``image`` (sr, sc) at numeric axes (the first token index of each block's queries and keys),
    a few token labels as ticks, NaN blocks (masked) in ``MASKED_COLOR``."""
    z = log_weights(image) if log_color else image
    if log_color:
        notes.append("log colour")
    low, high = finite_range(z)
    layout = base_layout(what, IMAGE_SIDE + 2 * COLORBAR_ROOM, IMAGE_SIDE + HEATMAP_TOP + 2 * COLORBAR_ROOM)
    x_title, y_title = ("key: encoder token", "query: decoder token") if is_cross(trace) else ("key", "query")
    layout["title"].update(notes_title(notes))
    layout.update(  # one layout made whole, not a figure updated: Plotly's update_layout costs 20-100 ms a change
        margin=dict(l=COLORBAR_ROOM + 40, r=COLORBAR_ROOM, t=HEATMAP_TOP, b=COLORBAR_ROOM),
        xaxis=dict(title=dict(text=x_title), showgrid=False, **_image_ticks(trace, key_starts), tickangle=-90),
        yaxis=dict(title=dict(text=y_title), autorange="reversed", showgrid=False, scaleanchor="x",
                   constrain="domain", **_image_ticks(query_side(trace), query_starts)),
        plot_bgcolor=MASKED_COLOR if np.isnan(image).any() else None,  # None: Plotly's own (white)
    )
    fig = go.Figure(layout=layout)
    fig.add_trace(go.Heatmap(
        z=z, x=key_starts.astype(np.int32), y=query_starts.astype(np.int32), colorscale=colorscale,
        zmin=low if log_color else 0.0, zmax=high, colorbar=_weight_colorbar(log_color, 0.8), name="attention",
        hovertemplate=f"queries from %{{y}}, keys from %{{x}}: {reduce} {_value_format(log_color)}<extra></extra>",
        hoverongaps=False))
    return fig


def _image_ticks(trace: EncoderTrace, starts: np.ndarray) -> dict:
    """About ``IMAGE_TICKS`` tick labels "token (index)" at block starts ``starts`` (token indices)."""
    picked = starts[np.unique(np.linspace(0, starts.size - 1, min(IMAGE_TICKS, starts.size)).round().astype(int))]
    return dict(tickmode="array", tickvals=picked.tolist(),
                ticktext=[f"{short_label(trace.readable_tokens[i])} ({i})" for i in picked.tolist()])


def _heatmap_step(trace: EncoderTrace, layer: int, head: int, display: tuple, rows: np.ndarray, cols: np.ndarray,
                  log_color: bool, clickable: bool) -> Step:
    """What changes when the heatmap shows (``layer``, ``head``): the weights trace's ``z`` and colour range, the
    click layer's values, the title. ``display``: (hide_special, renormalize, block), as the figure was built."""
    matrix, what = select_attention(trace, layer, head)
    _, _, weights, _ = _view_rows_cols(trace, matrix, *display)
    hidden = shown_hidden(trace, layer, False, rows, cols, [])
    weights = without_hidden(weights, hidden)
    z = log_weights(weights) if log_color else weights
    low, high = finite_range(z)
    data = {"z": [z], "zmin": [low if log_color else 0.0], "zmax": [high]}
    if clickable:
        customdata, text = _cell_values(rows, cols, weights, hidden)
        data = {key: [*values, None] for key, values in data.items()}
        data["customdata"] = [None, customdata]
        if text is not None:
            data["text"] = [None, text]
    return data, {"title.text": what}


Labels = tuple[list[str], list[str]]  # category labels of the query tokens (rows) and of the key tokens (columns)


def _axis_labels(trace: EncoderTrace | CrossTrace) -> Labels:
    """(query labels, key labels): one unique category per position, "token (index)", so hover names tokens
    without per-cell text; the same list twice unless the queries are another text's (cross-attention)."""
    keys = category_labels(trace.readable_tokens)
    return (category_labels(query_side(trace).readable_tokens) if is_cross(trace) else keys), keys


def _heatmap_figure(trace: EncoderTrace | CrossTrace, labels: Labels, rows: np.ndarray, cols: np.ndarray,
                    cell: float, title: str, notes: list[str]) -> go.Figure:
    """The heatmap's figure without traces: ``cell`` pixels a cell, category axes of ``labels`` (rows, columns),
    tokens as ticks; for cross-attention the axes say which text each is."""
    queries = query_side(trace)
    x_axis, y_axis, left, bottom = token_heatmap_axes(queries.readable_tokens, rows, trace.readable_tokens, cols,
                                                      cell)
    x_axis["ticktext"] = mark_generated(trace, x_axis["tickvals"], x_axis["ticktext"], notes)
    y_axis["ticktext"] = mark_generated(queries, y_axis["tickvals"], y_axis["ticktext"], notes)
    x_axis["tickvals"] = [labels[1][i] for i in x_axis["tickvals"]]
    y_axis["tickvals"] = [labels[0][i] for i in y_axis["tickvals"]]
    x_title, y_title = ("key: encoder token", "query: decoder token") if is_cross(trace) else ("key", "query")
    width = int(max(cell * cols.size + left + COLORBAR_ROOM, HEATMAP_MIN_WIDTH))
    fig = new_figure(title, width, int(cell * rows.size + bottom + (HEATMAP_TOP + HEATMAP_AIR)))
    fig.update_layout(
        title=notes_title(notes),
        margin=dict(l=left, r=COLORBAR_ROOM, t=HEATMAP_TOP, b=bottom),
        xaxis=dict(type="category", title=dict(text=x_title, standoff=10), tickangle=-90, **x_axis,
                   showgrid=False, automargin=True),
        yaxis=dict(type="category", title=dict(text=y_title, standoff=10), autorange="reversed", **y_axis,
                   showgrid=False, scaleanchor="x", constrain="domain", automargin=True),
        hoverdistance=-1,
    )
    return fig


def _weights_heatmap(labels: Labels, rows: np.ndarray, cols: np.ndarray, weights: np.ndarray, cell: float,
                     colorscale: str, log_color: bool, hover: bool) -> go.Heatmap:
    """The (R, C) ``weights`` as a heatmap on the category axes (log10 colour with ``log_color``; NaN cells, the
    masked ones, neither coloured nor hovered); without ``hover`` when a click layer on top carries it."""
    z = log_weights(weights) if log_color else weights
    low, high = finite_range(z)
    return go.Heatmap(
        z=z,
        x=[labels[1][i] for i in cols.tolist()],
        y=[labels[0][i] for i in rows.tolist()],
        colorscale=colorscale,
        zmin=low if log_color else 0.0,
        zmax=high,
        colorbar=_weight_colorbar(log_color, min(1.0, COLORBAR_LENGTH / max(cell * rows.size, 1))),
        name="attention",
        hovertemplate="%{y} → %{x}: " + _value_format(log_color) + "<extra></extra>",
        hoverinfo=None if hover else "skip",
        hoverongaps=False,
    )


def _masked_cells(labels: Labels, rows: np.ndarray, cols: np.ndarray, hidden: np.ndarray, hover: bool
                  ) -> go.Heatmap:
    """The (R, C) ``hidden`` cells in ``MASKED_COLOR`` (the others are gaps), hover "masked" unless a click layer
    carries it."""
    return go.Heatmap(
        z=np.where(hidden, np.float32(0.0), np.float32(np.nan)),
        x=[labels[1][i] for i in cols.tolist()],
        y=[labels[0][i] for i in rows.tolist()],
        colorscale=[[0.0, MASKED_COLOR], [1.0, MASKED_COLOR]],
        showscale=False,
        name=MASKED,
        hovertemplate=f"%{{y}} → %{{x}}: {MASKED}<extra></extra>",
        hoverinfo=None if hover else "skip",
        hoverongaps=False,
    )


def _weight_colorbar(log_color: bool, length: float) -> dict:
    """A colour bar hanging from the top right, ``length`` (share of the plot height) long, of weights or their
    log10 (``viz.layout.log_colorbar``)."""
    scale = log_colorbar() if log_color else dict(title=dict(text="weight"))
    return dict(thickness=14, len=length, y=1.0, yanchor="top", **scale)


def _value_format(log_color: bool) -> str:
    """Hover format of a cell's colour value ``z``: the weight, or its log10 as a power."""
    return "10^%{z:.2f}" if log_color else "%{z:.4f}"


def _cell_layer(labels: Labels, rows: np.ndarray, cols: np.ndarray, weights: np.ndarray, cell: float,
                hidden: np.ndarray | None = None) -> go.Scatter:
    """Invisible markers at the cell centres (``customdata`` [query, key, weight]); a clicked one shows. Where
    ``hidden`` (R, C) is True the hover says "masked" (the weight is NaN)."""
    query_grid, key_grid = np.meshgrid(rows, cols, indexing="ij")  # (R, C) token indices
    customdata, text = _cell_values(rows, cols, weights, hidden)
    value = "%{customdata[2]:.4f}" if text is None else "%{text}"
    return go.Scatter(
        x=[labels[1][i] for i in key_grid.ravel().tolist()],
        y=[labels[0][i] for i in query_grid.ravel().tolist()],
        customdata=customdata,
        text=text,
        hovertemplate=f"%{{y}} → %{{x}}: {value}<extra></extra>",
        name="cells",
        meta=click_meta("query", "key", invisible=True),
        **click_markers(max(cell - 2, 4)),
    )


def _cell_values(rows: np.ndarray, cols: np.ndarray, weights: np.ndarray, hidden: np.ndarray | None
                 ) -> tuple[np.ndarray, list[str] | None]:
    """The click layer's ``customdata`` (R*C, 3) float32 [query, key, weight] and, where cells are ``hidden``, its
    hover ``text`` ("masked" or the weight)."""
    query_grid, key_grid = np.meshgrid(rows, cols, indexing="ij")  # (R, C) token indices
    customdata = np.stack([query_grid.ravel(), key_grid.ravel(), weights.ravel()], axis=1).astype(np.float32)
    if hidden is None:
        return customdata, None
    return customdata, [MASKED if h else f"{w:.4f}" for h, w in zip(hidden.ravel(), weights.ravel())]


def _selected_cell(trace: EncoderTrace | CrossTrace, selected: tuple[int, int], rows: np.ndarray, cols: np.ndarray,
                   labels: Labels, cell: float) -> list[go.Scatter]:
    """The outline of the ``selected`` (query, key) cell; none when that cell is not shown."""
    query = check_token(query_side(trace), selected[0], "selected query")
    key = check_token(trace, selected[1], "selected key")
    if query in rows and key in cols:
        return [outline([labels[1][key]], [labels[0][query]], cell, "selected")]
    return []


def build_head_grid(
    trace: EncoderTrace,
    layer: int = 0,
    *,
    layer_mean: bool = False,
    colorscale: str = DEFAULT_SCALE,
    log_color: bool = False,
    hide_special: bool = False,
    renormalize: bool = True,
    max_cells: int = GRID_MAX_CELLS,
) -> go.Figure:
    """All heads of one layer as small multiples (queries down, keys across) with one shared colour scale.

    Each subplot's heatmap ``z`` is that head's (Tq, Tk) weights (square but for cross-attention: decoder queries
    down, encoder keys across), block-averaged to ``max_cells`` a side when the text is longer (the title says so).
    Cells the query could not see (``trace.visible``) are NaN, drawn grey (the plot background), and left out of a
    block's mean. Subplot titles name the heads; trace ``i`` is head ``i``.
    """
    check_colorscale(colorscale)
    max_cells = check_int_range(max_cells, "max_cells", 2, 1024)
    if is_long(trace):  # one head and a chunk of rows at a time
        layer_text = layer_name(trace, layer, layer_mean)
        images = head_images(trace, [0 if layer_mean else layer], range(trace.num_heads), max_cells, "mean",
                             hide_special, renormalize, layer_mean)
        stack, rows, cols, notes = images.images[0], images.rows, images.cols, images.notes
        hidden = None if getattr(trace, "visible", None) is None else True  # masked blocks: NaN, grey
    else:
        per_head, layer_text = layer_heads(trace, layer, layer_mean)
        stack, rows, cols, notes = shown_queries_keys(trace, per_head, hide_special, renormalize)  # (H, Tq', Tk')
        hidden = shown_hidden(trace, layer, layer_mean, rows, cols, notes)
        stack = downsample_seen(stack, hidden, max_cells)  # (H, sq, sk), NaN where masked
    size = stack.shape[-2:]
    downsampled = size != (rows.size, cols.size)
    if downsampled:
        notes.append(f"downsampled to {size[0]}×{size[1]} per head (block mean)")
    if log_color:
        stack = log_weights(stack)
        notes.append("log colour")
    labelled = max(size) <= GRID_LABEL_CELLS
    ticks = [_grid_ticks(side, shown, count, labelled, notes)
             for side, shown, count in ((query_side(trace), rows, size[0]), (trace, cols, size[1]))]

    heads = trace.num_heads
    low, high = finite_range(stack)
    coloraxis = dict(colorscale=colorscale, cmin=low if log_color else 0.0, cmax=high,
                     colorbar=_weight_colorbar(log_color, 0.6))
    title = f"{layer_text.capitalize()}: all {heads} heads"
    kv = kv_heads(trace)
    if kv is not None:
        notes.append(f"one row per key/value head: its {heads // trace.key_value_heads} query heads")
    titles = [head_label(trace, h) for h in range(heads)]
    fig, columns = _grid_figure(title, notes, titles, ticks, coloraxis,
                                None if kv is None else heads // trace.key_value_heads)
    if hidden is not None:
        fig.update_layout(plot_bgcolor=MASKED_COLOR)  # shows through the NaN cells
    where = "queries from %{y}, keys from %{x}" if downsampled else "query %{y} → key %{x}"
    for h in range(heads):
        fig.add_trace(
            go.Heatmap(z=stack[h], x=ticks[1][0], y=ticks[0][0], coloraxis="coloraxis", name=f"head {h}",
                       hovertemplate=f"{head_label(trace, h)}: {where}: {_value_format(log_color)}<extra></extra>",
                       hoverongaps=False),
            row=h // columns + 1,
            col=h % columns + 1,
        )
    return fig


GridTicks = tuple[np.ndarray, list[str] | None]  # one axis' cell positions (token indices) and token labels


def _grid_ticks(trace: EncoderTrace, shown: np.ndarray, size: int, labelled: bool, notes: list[str]) -> GridTicks:
    """One head-grid axis over the ``shown`` tokens of ``trace`` reduced to ``size`` cells: each cell's coordinate
    is the token index of its (first) token, on category axes; with ``labelled``, the tokens as tick labels."""
    positions = shown[block_edges(shown.size, size)[:-1]].astype(np.int32)
    if not labelled:
        return positions, None
    return positions, mark_generated(trace, shown, [short_label(trace.readable_tokens[i]) for i in shown], notes)


def _grid_figure(
    title: str, notes: list[str], titles: list[str], ticks: list[GridTicks], coloraxis: dict,
    group: int | None = None,
) -> tuple[go.Figure, int]:
    """Subplots for ``len(titles)`` thumbnails sharing ``coloraxis``, and the number of columns: ``group``
    (the query heads of one key/value head, one group a row) when given and at most ``GRID_MAX_GROUP``, else about
    4:3. ``ticks`` are the (query, key) axes: labels (one per token position) go on the left column and the bottom
    row."""
    heads = len(titles)
    labels = None if ticks[0][1] is None else ticks[0][1] + ticks[1][1]  # both axes' labels, for the margins
    columns = min(heads, max(1, math.ceil(math.sqrt(heads * 4 / 3))))
    if group is not None and group <= GRID_MAX_GROUP:
        columns = group
    grid_rows = math.ceil(heads / columns)
    side = GRID_SIDE if columns <= GRID_WIDE_COLUMNS else GRID_NARROW_SIDE
    labelled = labels is not None
    left = (label_margin(labels, GRID_FONT) if labelled else 20) + 20
    bottom = left - 10 if labelled else 30
    fig = make_subplots(
        rows=grid_rows,
        cols=columns,
        subplot_titles=titles,
        horizontal_spacing=0.03 if labelled else 0.02,
        vertical_spacing=0.05 if labelled else 0.06,
    )
    fig.update_layout(**base_layout(title))
    fig.update_layout(
        width=int(columns * side + left + COLORBAR_ROOM),
        height=int(grid_rows * side + bottom + GRID_TOP),
        margin=dict(l=left, r=COLORBAR_ROOM, t=GRID_TOP, b=bottom),
        coloraxis=coloraxis,
    )
    set_notes(fig, notes, GRID_TOP)  # wrapped to the width: a small grid is narrower than its notes
    fig.update_annotations(font=dict(size=11))
    _grid_axes(fig, heads, columns, ticks)
    return fig, columns


def _grid_axes(fig: go.Figure, heads: int, columns: int, ticks: list[GridTicks]) -> None:
    """Category axes without ticks, queries down, cells square; with labels, tokens on the outer axes."""
    axes = dict(type="category", showticklabels=False, ticks="", showgrid=False, zeroline=False, constrain="domain")
    fig.update_xaxes(**axes)
    fig.update_yaxes(**axes, autorange="reversed")
    for h in range(heads):
        fig.update_yaxes(scaleanchor=f"x{'' if h == 0 else h + 1}", row=h // columns + 1, col=h % columns + 1)
    (query_positions, query_labels), (key_positions, key_labels) = ticks
    if query_labels is not None:
        font = dict(tickmode="array", showticklabels=True, tickfont=dict(size=GRID_FONT))
        fig.update_yaxes(**font, tickvals=query_positions.tolist(), ticktext=query_labels, col=1)
        fig.update_xaxes(**font, tickvals=key_positions.tolist(), ticktext=key_labels, tickangle=-90,
                         row=math.ceil(heads / columns))
