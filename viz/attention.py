"""Attention figures: one head as a heatmap, a layer's heads as small multiples, the whole model as a mosaic, and
BertViz-style lines between tokens.

Every builder takes an ``EncoderTrace`` and returns a ``plotly.graph_objects.Figure``; none draws or shows it. Each
reads as: check the settings, select the weights (``viz.common.shown_attention``), lay out, add the traces.

Clicks: a clickable trace says what its points mean with ``meta=viz.common.click_meta(...)``, the names of the first
``customdata`` values (the app reads them back with ``click_spec``). The heatmap's ``"cells"`` are ("query", "key"),
up to ``CLICK_MAX_TOKENS`` tokens a side; the model view's ``"heads"`` are ("layer", "head"); the head lines' token
columns ``"tokens"`` and ``"keys"`` are ("query",). A heatmap alone sends no click events, so the first two are
invisible scatter layers over the cell / thumbnail centres (``invisible=True``: image exports drop them).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable
from typing import NamedTuple

import numpy as np
import plotly.colors
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from encoder.errors import ViewError
from encoder.trace import EncoderTrace
from viz.common import (
    AGGREGATES,
    BLOCKS,
    COLORBAR_ROOM,
    DEFAULT_SCALE,
    HIGHLIGHT,
    MASKED,
    MASKED_COLOR,
    base_layout,
    block_edges,
    category_labels,
    check_choice,
    check_colorscale,
    check_fraction,
    check_head,
    check_heads,
    check_int_range,
    check_layer,
    check_shown_token,
    check_token,
    click_meta,
    describe_heads,
    display_token,
    downsample_seen,
    finite_range,
    heatmap_cell,
    label_margin,
    layer_head_points,
    layer_heads,
    log_colorbar,
    log_weights,
    mask_note,
    new_figure,
    notes_title,
    select_attention,
    short_label,
    shown_attention,
    shown_hidden,
    token_heatmap_axes,
    token_hover_label,
    without_hidden,
)
from viz.scrub import Step, add_head_slider

CLICK_MAX_TOKENS = 64  # beyond this many rows or columns no click layer: T² SVG markers slow drawing (~1 s at 128)
GRID_MAX_CELLS = 96  # head-grid thumbnails are block-averaged down to this many cells a side
MODEL_THUMBNAIL = 64  # model-view thumbnails: at most this many cells a side
MAX_LINES = 2000  # head lines draws at most this many (the strongest); more only clutter and slow drawing
LINE_START = 0.03  # head lines run from x=LINE_START to 1-LINE_START, leaving room next to the labels

# Layout, in pixels
COLORBAR_LENGTH = 420  # the heatmap's colour bar is at most this long
HEATMAP_MIN_WIDTH = 520
HEATMAP_TOP = 80  # top margin of the heatmap: title and subtitle
HEATMAP_AIR = 10  # below the top margin and the plot
GRID_SIDE, GRID_NARROW_SIDE = 230, 180  # a head-grid thumbnail, up to GRID_WIDE_COLUMNS columns and beyond
GRID_WIDE_COLUMNS = 4
GRID_LABEL_CELLS = 24  # head-grid thumbnails of at most this many cells a side get token labels
GRID_FONT = 9  # head-grid token labels
GRID_TOP = 100  # top margin of the head grid: title, subtitle and the first row's subplot titles
THUMB_GAP = 0.12  # gap between model-view thumbnails, as a share of their side (at least one cell)
THUMB_MIN_PIXELS, THUMB_MAX_PIXELS = 34, 80  # a model-view thumbnail on screen
MODEL_VIEW_WIDTH = 960  # model-view thumbnails share this width until they reach their limits
MODEL_VIEW_MARGIN = dict(l=70, r=100, t=80, b=60)
LINES_HEIGHT = 1800.0  # head lines: all token rows share this height until they reach their limits
LINE_MIN_ROW, LINE_MAX_ROW = 4.0, 22.0  # a head-lines token row
LINE_MIN_FONT, LINE_MAX_FONT = 7, 13  # a head-lines token label (0.7 of a row)
LINE_LABEL_PIXELS = 9.0  # rows thinner than this label only every n-th token
LINES_MIN_WIDTH, LINES_MIN_GAP = 520, 360  # head lines: the figure, and the room between the label margins
LINES_TOP = 90
LEGEND_TOP, LEGEND_ROW, LEGEND_ITEMS = 30, 22, 6  # head-lines legend: padding, one row per LEGEND_ITEMS heads


def _view_rows_cols(
    trace: EncoderTrace, matrix: np.ndarray, hide_special: bool, renormalize: bool, block: str | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
    """Rows (queries) and columns (keys) to show, their (R, C) weights, and notes for the title.

    Special tokens are dropped first (rows renormalised over the remaining keys when asked); a block then keeps the
    queries of one sentence and the keys of the other (weights as they are, not renormalised again).
    """
    sub, shown, notes = shown_attention(trace, matrix, hide_special, renormalize, say_unnormalised=True)
    rows, cols = shown, shown
    if block is not None:
        check_choice(block, BLOCKS, "block")
        if not trace.is_pair:
            raise ViewError(f"block {block!r} needs a sentence pair; this trace has one sentence")
        segments = trace.segment_ids[shown]
        row_mask, col_mask = segments == "AB".index(block[0]), segments == "AB".index(block[1])
        rows, cols = shown[row_mask], shown[col_mask]
        if rows.size == 0 or cols.size == 0:
            raise ViewError(f"block {block!r} has no tokens to show once special tokens are hidden")
        sub = sub[np.ix_(row_mask, col_mask)]
        notes.append(f"block {block[0]} → {block[1]} (queries in sentence {block[0]}, keys in {block[1]})")
    return rows, cols, np.ascontiguousarray(sub, dtype=np.float32), notes


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
) -> go.Figure:
    """Attention of one head (or a head aggregate) as a heatmap: queries on y (top to bottom), keys on x.

    Args:
        trace: the EncoderTrace to show.
        layer: int, the layer (ignored when ``layer_mean``).
        head: int, the head (ignored when ``aggregate`` is set).
        aggregate: None, "mean" or "max": combine ``heads`` instead of showing one head.
        heads: ints, the heads to aggregate (default all).
        layer_mean: bool, average over all layers first.
        colorscale: a Plotly named colour scale (``viz.common.SEQUENTIAL_SCALES`` lists good ones).
        log_color: bool, colour by log10(weight) (floored at ``LOG_FLOOR``); hover still shows the weight.
        hide_special: bool, drop [CLS]/[SEP]-like tokens from both axes.
        renormalize: bool, with ``hide_special``, rescale each row to sum to 1 over the remaining keys.
        block: None or "AA", "AB", "BA", "BB": for a sentence pair, queries of one sentence and keys of the other.
        selected: (query_index, key_index) to outline (token indices), e.g. the cell last clicked.
        scrub: bool, for one head: a slider in the figure moves through the heads in the browser
            (``viz.scrub``; its steps restyle ``z``, ``zmin``, ``zmax`` and the click layer).

    Returns:
        A figure whose first trace is the heatmap: ``z`` (R, C) float32 (log10 with ``log_color``; NaN where the
        query could not see the key), ``x``/``y`` category labels "token (index)" (``viz.common.category_labels``).
        With at most ``CLICK_MAX_TOKENS`` rows and columns the click layer ``"cells"`` follows (``customdata``
        [query_index, key_index, weight] at the cell centres); ``selected`` adds a visible one-point trace
        ``"selected"``; masked cells add a last grey heatmap ``"masked"`` (hover: "masked").

    Example:
        >>> fig = build_attention_heatmap(trace, layer=2, head=5)  # doctest: +SKIP
    """
    check_colorscale(colorscale)
    matrix, what = select_attention(trace, layer, head, aggregate=aggregate, heads=heads, layer_mean=layer_mean)
    rows, cols, weights, notes = _view_rows_cols(trace, matrix, hide_special, renormalize, block)
    hidden = shown_hidden(trace, layer, layer_mean, rows, cols, notes)  # (R, C) or None
    weights = without_hidden(weights, hidden)
    if log_color:
        notes.append("log colour")

    cell = heatmap_cell(rows.size, cols.size)
    labels = category_labels(trace.readable_tokens)  # unique per position: hover names tokens without per-cell text
    fig = _heatmap_figure(trace, labels, rows, cols, cell, what, notes)
    clickable = rows.size <= CLICK_MAX_TOKENS and cols.size <= CLICK_MAX_TOKENS
    fig.add_trace(_weights_heatmap(labels, rows, cols, weights, cell, colorscale, log_color, hover=not clickable))
    if clickable:
        fig.add_trace(_cell_layer(labels, rows, cols, weights, cell, hidden))
    if selected is not None:
        fig.add_traces(_selected_cell(trace, selected, rows, cols, labels, cell))
    if hidden is not None:
        fig.add_trace(_masked_cells(labels, rows, cols, hidden, hover=not clickable))
    if scrub and aggregate is None and not layer_mean:
        def step(lay: int, h: int) -> Step:
            return _heatmap_step(trace, lay, h, (hide_special, renormalize, block), rows, cols, log_color, clickable)

        add_head_slider(fig, trace, layer, head, [0, 1] if clickable else [0], step)
    return fig


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


def _heatmap_figure(trace: EncoderTrace, labels: list[str], rows: np.ndarray, cols: np.ndarray, cell: float,
                    title: str, notes: list[str]) -> go.Figure:
    """The heatmap's figure without traces: ``cell`` pixels a cell, category axes of ``labels``, tokens as ticks."""
    tokens = trace.readable_tokens
    x_axis, y_axis, left, bottom = token_heatmap_axes(tokens, rows, tokens, cols, cell)
    x_axis["tickvals"] = [labels[i] for i in x_axis["tickvals"]]
    y_axis["tickvals"] = [labels[i] for i in y_axis["tickvals"]]
    width = int(max(cell * cols.size + left + COLORBAR_ROOM, HEATMAP_MIN_WIDTH))
    fig = new_figure(title, width, int(cell * rows.size + bottom + (HEATMAP_TOP + HEATMAP_AIR)))
    fig.update_layout(
        title=notes_title(notes),
        margin=dict(l=left, r=COLORBAR_ROOM, t=HEATMAP_TOP, b=bottom),
        xaxis=dict(type="category", title=dict(text="key", standoff=10), tickangle=-90, **x_axis,
                   showgrid=False, automargin=True),
        yaxis=dict(type="category", title=dict(text="query", standoff=10), autorange="reversed", **y_axis,
                   showgrid=False, scaleanchor="x", constrain="domain", automargin=True),
        hoverdistance=-1,
    )
    return fig


def _weights_heatmap(labels: list[str], rows: np.ndarray, cols: np.ndarray, weights: np.ndarray, cell: float,
                     colorscale: str, log_color: bool, hover: bool) -> go.Heatmap:
    """The (R, C) ``weights`` as a heatmap on the category axes (log10 colour with ``log_color``; NaN cells, the
    masked ones, neither coloured nor hovered); without ``hover`` when a click layer on top carries it."""
    z = log_weights(weights) if log_color else weights
    low, high = finite_range(z)
    return go.Heatmap(
        z=z,
        x=[labels[i] for i in cols.tolist()],
        y=[labels[i] for i in rows.tolist()],
        colorscale=colorscale,
        zmin=low if log_color else 0.0,
        zmax=high,
        colorbar=_weight_colorbar(log_color, min(1.0, COLORBAR_LENGTH / max(cell * rows.size, 1))),
        name="attention",
        hovertemplate="%{y} → %{x}: " + _value_format(log_color) + "<extra></extra>",
        hoverinfo=None if hover else "skip",
        hoverongaps=False,
    )


def _masked_cells(labels: list[str], rows: np.ndarray, cols: np.ndarray, hidden: np.ndarray, hover: bool
                  ) -> go.Heatmap:
    """The (R, C) ``hidden`` cells in ``MASKED_COLOR`` (the others are gaps), hover "masked" unless a click layer
    carries it."""
    return go.Heatmap(
        z=np.where(hidden, np.float32(0.0), np.float32(np.nan)),
        x=[labels[i] for i in cols.tolist()],
        y=[labels[i] for i in rows.tolist()],
        colorscale=[[0.0, MASKED_COLOR], [1.0, MASKED_COLOR]],
        showscale=False,
        name=MASKED,
        hovertemplate=f"%{{y}} → %{{x}}: {MASKED}<extra></extra>",
        hoverinfo=None if hover else "skip",
        hoverongaps=False,
    )


def _weight_colorbar(log_color: bool, length: float) -> dict:
    """A colour bar hanging from the top right, ``length`` (share of the plot height) long, of weights or their
    log10 (``viz.common.log_colorbar``)."""
    scale = log_colorbar() if log_color else dict(title=dict(text="weight"))
    return dict(thickness=14, len=length, y=1.0, yanchor="top", **scale)


def _value_format(log_color: bool) -> str:
    """Hover format of a cell's colour value ``z``: the weight, or its log10 as a power."""
    return "10^%{z:.2f}" if log_color else "%{z:.4f}"


def _click_markers(size: float) -> dict:
    """Scatter settings of a click layer: invisible square outlines of ``size`` pixels, a clicked one shows."""
    return dict(
        mode="markers",
        marker=dict(symbol="square-open", size=size, color=HIGHLIGHT, line=dict(width=2), opacity=0),
        selected=dict(marker=dict(opacity=1)),
        unselected=dict(marker=dict(opacity=0)),
        showlegend=False,
    )


def _outline(xs: list, ys: list, size: float, name: str) -> go.Scatter:
    """A visible square outline around cells (e.g. the selected one)."""
    return go.Scatter(x=xs, y=ys, mode="markers", name=name, showlegend=False, hoverinfo="skip",
                      marker=dict(symbol="square-open", size=max(size - 2, 6), color=HIGHLIGHT, line=dict(width=2)))


def _cell_layer(labels: list[str], rows: np.ndarray, cols: np.ndarray, weights: np.ndarray, cell: float,
                hidden: np.ndarray | None = None) -> go.Scatter:
    """Invisible markers at the cell centres (``customdata`` [query, key, weight]); a clicked one shows. Where
    ``hidden`` (R, C) is True the hover says "masked" (the weight is NaN)."""
    query_grid, key_grid = np.meshgrid(rows, cols, indexing="ij")  # (R, C) token indices
    customdata, text = _cell_values(rows, cols, weights, hidden)
    value = "%{customdata[2]:.4f}" if text is None else "%{text}"
    return go.Scatter(
        x=[labels[i] for i in key_grid.ravel().tolist()],
        y=[labels[i] for i in query_grid.ravel().tolist()],
        customdata=customdata,
        text=text,
        hovertemplate=f"%{{y}} → %{{x}}: {value}<extra></extra>",
        name="cells",
        meta=click_meta("query", "key", invisible=True),
        **_click_markers(max(cell - 2, 4)),
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


def _selected_cell(trace: EncoderTrace, selected: tuple[int, int], rows: np.ndarray, cols: np.ndarray,
                   labels: list[str], cell: float) -> list[go.Scatter]:
    """The outline of the ``selected`` (query, key) cell; none when that cell is not shown."""
    query = check_token(trace, selected[0], "selected query")
    key = check_token(trace, selected[1], "selected key")
    if query in rows and key in cols:
        return [_outline([labels[key]], [labels[query]], cell, "selected")]
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

    Each subplot's heatmap ``z`` is that head's (T, T) weights, block-averaged to ``max_cells`` a side when the text
    is longer (the title says so). Cells the query could not see (``trace.visible``) are NaN, drawn grey (the plot
    background), and left out of a block's mean. Subplot titles name the heads; trace ``i`` is head ``i``.
    """
    check_colorscale(colorscale)
    max_cells = check_int_range(max_cells, "max_cells", 2, 1024)
    per_head, layer_text = layer_heads(trace, layer, layer_mean)
    stack, shown, notes = shown_attention(trace, per_head, hide_special, renormalize)  # (H, T', T')
    hidden = shown_hidden(trace, layer, layer_mean, shown, shown, notes)
    stack = downsample_seen(stack, hidden, max_cells)  # (H, s, s), NaN where masked
    size = stack.shape[-1]
    downsampled = size < shown.size
    if downsampled:
        notes.append(f"downsampled to {size}×{size} per head (block mean)")
    if log_color:
        stack = log_weights(stack)
        notes.append("log colour")
    # Each cell's coordinate is the token index of its (first) query and key, on category axes.
    positions = shown[block_edges(shown.size, size)[:-1]].astype(np.int32)
    labels = [short_label(trace.readable_tokens[i]) for i in shown] if size <= GRID_LABEL_CELLS else None

    heads = trace.num_heads
    low, high = finite_range(stack)
    coloraxis = dict(colorscale=colorscale, cmin=low if log_color else 0.0, cmax=high,
                     colorbar=_weight_colorbar(log_color, 0.6))
    title = f"{layer_text.capitalize()}: all {heads} heads"
    fig, columns = _grid_figure(title, notes, heads, positions, labels, coloraxis)
    if hidden is not None:
        fig.update_layout(plot_bgcolor=MASKED_COLOR)  # shows through the NaN cells
    where = "queries from %{y}, keys from %{x}" if downsampled else "query %{y} → key %{x}"
    for h in range(heads):
        fig.add_trace(
            go.Heatmap(z=stack[h], x=positions, y=positions, coloraxis="coloraxis", name=f"head {h}",
                       hovertemplate=f"head {h}: {where}: {_value_format(log_color)}<extra></extra>",
                       hoverongaps=False),
            row=h // columns + 1,
            col=h % columns + 1,
        )
    return fig


def _grid_figure(
    title: str, notes: list[str], heads: int, positions: np.ndarray, labels: list[str] | None, coloraxis: dict
) -> tuple[go.Figure, int]:
    """Subplots for ``heads`` square thumbnails in about 4:3 sharing ``coloraxis``, and the number of columns.
    ``labels`` (one per token position) go on the left column and the bottom row."""
    columns = min(heads, max(1, math.ceil(math.sqrt(heads * 4 / 3))))
    grid_rows = math.ceil(heads / columns)
    side = GRID_SIDE if columns <= GRID_WIDE_COLUMNS else GRID_NARROW_SIDE
    labelled = labels is not None
    left = (label_margin(labels, GRID_FONT) if labelled else 20) + 20
    bottom = left - 10 if labelled else 30
    fig = make_subplots(
        rows=grid_rows,
        cols=columns,
        subplot_titles=[f"head {h}" for h in range(heads)],
        horizontal_spacing=0.03 if labelled else 0.02,
        vertical_spacing=0.05 if labelled else 0.06,
    )
    fig.update_layout(**base_layout(title))
    fig.update_layout(
        width=int(columns * side + left + COLORBAR_ROOM),
        height=int(grid_rows * side + bottom + GRID_TOP),
        margin=dict(l=left, r=COLORBAR_ROOM, t=GRID_TOP, b=bottom),
        title=notes_title(notes),
        coloraxis=coloraxis,
    )
    fig.update_annotations(font=dict(size=11))
    _grid_axes(fig, heads, columns, positions, labels)
    return fig, columns


def _grid_axes(fig: go.Figure, heads: int, columns: int, positions: np.ndarray, labels: list[str] | None) -> None:
    """Square category axes without ticks, queries down; with ``labels``, tokens on the outer axes."""
    axes = dict(type="category", showticklabels=False, ticks="", showgrid=False, zeroline=False, constrain="domain")
    fig.update_xaxes(**axes)
    fig.update_yaxes(**axes, autorange="reversed")
    for h in range(heads):
        fig.update_yaxes(scaleanchor=f"x{'' if h == 0 else h + 1}", row=h // columns + 1, col=h % columns + 1)
    if labels is not None:
        ticks = dict(tickmode="array", tickvals=positions.tolist(), ticktext=labels, showticklabels=True,
                     tickfont=dict(size=GRID_FONT))
        fig.update_yaxes(**ticks, col=1)
        fig.update_xaxes(**ticks, tickangle=-90, row=math.ceil(heads / columns))


def build_model_view(
    trace: EncoderTrace,
    *,
    thumbnail: int = MODEL_THUMBNAIL,
    reduce: str = "mean",
    per_head_scale: bool = True,
    colorscale: str = "Viridis",
    hide_special: bool = False,
    renormalize: bool = True,
    selected: tuple[int, int] | None = None,
) -> go.Figure:
    """Every layer x head as a thumbnail of its (query x key) attention, tiled into one image-like heatmap.

    One heatmap trace holds the mosaic (float32, NaN gaps), so the figure stays light at 512 tokens. Thumbnails are
    block-reduced (``reduce``: "mean" or "max") to at most ``thumbnail`` cells a side, and with ``per_head_scale``
    each is divided by its own maximum so faint heads show their pattern; the subtitle says both. Cells a query
    could not see (``trace.visible``, per layer) are left out of the blocks and NaN where a block has no other.

    Returns:
        Trace 0: the heatmap, ``z`` of shape (L*s + (L-1)*g, H*s + (H-1)*g) for thumbnail side s and gap g; the
        thumbnail of (layer l, head h) starts at row ``l*(s+g)``, column ``h*(s+g)``. Trace 1: the click layer
        ``"heads"``, L*H points at the thumbnail centres with ``customdata`` [layer, head]. ``selected`` = (layer,
        head) adds a visible outline trace ``"selected"``.
    """
    check_colorscale(colorscale)
    check_choice(reduce, AGGREGATES, "reduce")
    thumbnail = check_int_range(thumbnail, "thumbnail", 4, 512)
    attention, shown, notes = shown_attention(trace, trace.attention, hide_special, renormalize)  # (L, H, T', T')
    hidden = None
    if trace.visible is not None and not trace.visible.all():
        notes.append(mask_note(~trace.visible))
        hidden = ~trace.visible[:, shown[:, None], shown[None, :]][:, None]  # (L, 1, T', T')
    thumbs, thumb_notes = _thumbnails(attention, thumbnail, reduce, per_head_scale, hidden)  # (L, H, s, s)
    mosaic, step = _mosaic(thumbs)
    side = thumbs.shape[-1]

    pixels = max(THUMB_MIN_PIXELS, min(THUMB_MAX_PIXELS, MODEL_VIEW_WIDTH // trace.num_heads))  # per thumbnail
    fig = _model_view_figure(mosaic.shape, trace.num_layers, trace.num_heads, side, step, pixels,
                             notes + thumb_notes)
    fig.add_trace(go.Heatmap(
        z=mosaic, colorscale=colorscale, zmin=0.0, zmax=1.0 if per_head_scale else float(np.nanmax(mosaic)),
        hoverinfo="skip", name="mosaic",
        colorbar=dict(thickness=12, title=dict(text="share of max" if per_head_scale else "weight")),
    ))
    fig.add_trace(_head_layer(attention.max(axis=(2, 3)), side, step, pixels))
    if selected is not None:
        chosen_layer, chosen_head = check_layer(trace, selected[0]), check_head(trace, selected[1])
        centre = [_centre(chosen_head, step, side)], [_centre(chosen_layer, step, side)]
        fig.add_trace(_outline(*centre, pixels, "selected"))
    return fig


def _thumbnails(attention: np.ndarray, thumbnail: int, reduce: str, per_head_scale: bool,
                hidden: np.ndarray | None = None) -> tuple[np.ndarray, list[str]]:
    """(L, H, T, T) attention as (L, H, s, s) thumbnails of at most ``thumbnail`` cells a side (block ``reduce``
    over the cells not ``hidden``, NaN where a block has none), each divided by its own maximum with
    ``per_head_scale``; and notes saying so."""
    thumbs = downsample_seen(attention, hidden, thumbnail, reduce)
    side = thumbs.shape[-1]
    notes = []
    if side < attention.shape[-1]:
        notes.append(f"downsampled to {side}×{side} per head (block {reduce})")
    if per_head_scale:
        peak = np.nanmax(thumbs, axis=(2, 3), keepdims=True)
        thumbs = np.divide(thumbs, peak, out=np.zeros_like(thumbs), where=peak > 0)
        notes.append("each head scaled to its own maximum")
    return thumbs, notes


def _mosaic(thumbs: np.ndarray) -> tuple[np.ndarray, int]:
    """(L, H, s, s) thumbnails tiled into one float32 image, layers down and heads across, NaN in the gaps; and
    the step from one thumbnail to the next (s + gap)."""
    layers, heads, side = thumbs.shape[:3]
    gap = max(1, round(side * THUMB_GAP))
    step = side + gap
    mosaic = np.full((layers * step - gap, heads * step - gap), np.nan, dtype=np.float32)
    for layer in range(layers):
        for head in range(heads):
            mosaic[layer * step:layer * step + side, head * step:head * step + side] = thumbs[layer, head]
    return mosaic, step


def _centre(index, step: int, side: int):
    """Mosaic coordinate of the centre of thumbnail ``index`` (an int or an array) along one axis."""
    return index * step + (side - 1) / 2


def _model_view_figure(shape: tuple[int, int], layers: int, heads: int, side: int, step: int, pixels: int,
                       notes: list[str]) -> go.Figure:
    """The mosaic's figure without traces: ``pixels`` per thumbnail, head and layer numbers at the centres."""
    margin = MODEL_VIEW_MARGIN
    fig = new_figure(f"All {layers} layers × {heads} heads: queries down, keys across")
    fig.update_layout(
        width=heads * pixels + margin["l"] + margin["r"],
        height=layers * pixels + margin["t"] + margin["b"],
        margin=margin,
        title=dict(subtitle=dict(text=" · ".join(notes) if notes else "full resolution")),
        xaxis=dict(**_mosaic_axis("head", heads, step, side, [-0.5, shape[1] - 0.5]), constrain="domain"),
        yaxis=dict(**_mosaic_axis("layer", layers, step, side, [shape[0] - 0.5, -0.5]), scaleanchor="x",
                   constrain="domain"),
        hoverdistance=-1,
    )
    return fig


def _mosaic_axis(title: str, count: int, step: int, side: int, extent: list[float]) -> dict:
    """A mosaic axis over ``extent`` numbering ``count`` thumbnails at their centres."""
    return dict(title=dict(text=title), tickmode="array", showgrid=False, zeroline=False,
                tickvals=[_centre(i, step, side) for i in range(count)], ticktext=[str(i) for i in range(count)],
                range=extent)


def _head_layer(peaks: np.ndarray, side: int, step: int, pixels: int) -> go.Scatter:
    """Invisible markers at the thumbnail centres (``customdata`` [layer, head]); hover names the head and its
    ``peaks`` (L, H) weight; a clicked one shows."""
    layer, head, customdata = layer_head_points(*peaks.shape)
    return go.Scatter(
        x=_centre(head, step, side).astype(np.float32),
        y=_centre(layer, step, side).astype(np.float32),
        customdata=customdata,
        text=[f"layer {lay}, head {h} (max weight {peaks[lay, h]:.3f})"
              for lay, h in zip(layer.tolist(), head.tolist())],
        hovertemplate="%{text}<extra></extra>",
        name="heads",
        meta=click_meta("layer", "head", invisible=True),
        **_click_markers(pixels - 4),
    )


class _Lines(NamedTuple):
    """Head lines, one entry per line: the head's place among the chosen heads, query row, key row, weight."""

    head: np.ndarray
    query: np.ndarray
    key: np.ndarray
    weight: np.ndarray

    @classmethod
    def above(cls, stack: np.ndarray, threshold: float) -> _Lines:
        """Every weight of the (h, T', T') ``stack`` at or above ``threshold``."""
        head, query, key = np.nonzero(stack >= threshold)
        return cls(head, query, key, stack[head, query, key])

    def take(self, keep: np.ndarray) -> _Lines:
        """The lines that ``keep`` (a mask or indices) selects."""
        return _Lines(*(values[keep] for values in self))

    def strongest(self, count: int) -> _Lines:
        """The ``count`` lines of the largest weights (in no particular order)."""
        cut = self.weight.size - count
        return self.take(np.argpartition(self.weight, cut)[cut:])


class _TokenRows(NamedTuple):
    """Head lines' token columns: pixels per token, label font size, a label on every ``stride``-th token."""

    pixels: float
    font: int
    stride: int


def build_head_lines(
    trace: EncoderTrace,
    layer: int = 0,
    heads: Iterable[int] | None = None,
    threshold: float = 0.05,
    *,
    query: int | None = None,
    hide_special: bool = False,
    renormalize: bool = True,
    max_lines: int = MAX_LINES,
    scrub: bool = True,
) -> go.Figure:
    """BertViz-style lines from each query token (left) to the key tokens it attends to (right).

    One colour per head; a line's opacity and width grow with its weight; weights below ``threshold`` are not drawn,
    and of the rest only the strongest ``max_lines`` (the subtitle says when lines were left out). With ``query``
    only that token's lines are drawn. Lines are grouped per head into a few weight bins (one trace each, segments
    separated by NaN, y = row of the query then of the key). The last two traces are the token labels, left
    (``"tokens"``) and right (``"keys"``), clickable: ``customdata`` [token_index]. With ``scrub`` and one head, a
    slider in the figure moves through the heads in the browser (``viz.scrub``): then every weight bin has its
    trace, empty or not, the steps restyle their ``x`` and ``y`` and the title, and no legend (the title names the
    head).
    """
    layer = check_layer(trace, layer)
    chosen = check_heads(trace, heads)
    threshold = check_fraction(threshold, "threshold")
    max_lines = check_int_range(max_lines, "max_lines", 1, 1_000_000)
    stack, shown, hidden = shown_attention(trace, trace.attention[layer][chosen], hide_special, renormalize)
    notes = [f"lines for weights ≥ {threshold:g}"]
    query_row = None
    if query is not None:
        query = check_shown_token(trace, query, shown)
        query_row = int(np.searchsorted(shown, query))
        notes.append(f"from {display_token(trace.readable_tokens[query])} ({query}) only")
    notes.extend(hidden)
    drawn = [*notes]
    lines = _drawn_lines(stack, threshold, query_row, max_lines, drawn)  # stack: (h, T', T')
    scrubbing = scrub and len(chosen) == 1

    rows = _token_rows(shown.size)
    labels = [short_label(trace.readable_tokens[i]) for i in shown]
    fig = _lines_figure(f"Layer {layer}, {describe_heads(chosen)}: who attends to whom", drawn, labels, rows,
                        len(chosen))
    fig.add_traces(_line_traces(lines, chosen, threshold, every_bin=scrubbing))
    fig.add_traces(_token_columns(trace, shown, query, labels, rows))
    if scrubbing:
        def step(lay: int, h: int) -> Step:
            one, _, _ = shown_attention(trace, trace.attention[lay][[h]], hide_special, renormalize)
            subtitle = [*notes]
            lines = _drawn_lines(one, threshold, query_row, max_lines, subtitle)
            segments = [_segments(lines.query[drawn], lines.key[drawn]) for drawn in _bin_masks(lines, 0, threshold)]
            data = {"x": [xs for xs, _ in segments], "y": [ys for _, ys in segments]}
            return data, {"title.text": f"Layer {lay}, head {h}: who attends to whom",
                          "title.subtitle.text": " · ".join(subtitle)}

        if add_head_slider(fig, trace, layer, chosen[0], list(range(1, 1 + len(_weight_bins(threshold)))), step):
            fig.update_traces(showlegend=False, selector=dict(name=f"head {chosen[0]}"))  # the title names the head
    return fig


def _drawn_lines(stack: np.ndarray, threshold: float, query_row: int | None, max_lines: int, notes: list[str]
                 ) -> _Lines:
    """The lines of the (h, T', T') ``stack`` to draw: weights at or above ``threshold``, from ``query_row`` only
    when given, the strongest ``max_lines`` of them (then a note in ``notes`` says so)."""
    lines = _Lines.above(stack, threshold)
    if query_row is not None:
        lines = lines.take(lines.query == query_row)
    if lines.weight.size > max_lines:
        notes.append(f"strongest {max_lines:,} of {lines.weight.size:,} lines")
        lines = lines.strongest(max_lines)
    return lines


def _token_rows(count: int) -> _TokenRows:
    """Token rows for ``count`` tokens: ``LINES_HEIGHT`` shared, each row ``LINE_MIN_ROW`` to ``LINE_MAX_ROW``;
    labels thinned out to one per ``LINE_LABEL_PIXELS``."""
    pixels = max(LINE_MIN_ROW, min(LINE_MAX_ROW, LINES_HEIGHT / count))
    font = int(min(LINE_MAX_FONT, max(LINE_MIN_FONT, pixels * 0.7)))
    return _TokenRows(pixels, font, max(1, math.ceil(LINE_LABEL_PIXELS / pixels)))


def _lines_figure(title: str, notes: list[str], labels: list[str], rows: _TokenRows, heads: int) -> go.Figure:
    """The head lines' figure without traces: token rows down, labels in the side margins, the legend below."""
    side = label_margin(labels, rows.font) + 20
    legend_h = LEGEND_TOP + LEGEND_ROW * math.ceil(heads / LEGEND_ITEMS)
    fig = new_figure(title)
    fig.update_layout(
        width=int(max(LINES_MIN_WIDTH, 2 * side + LINES_MIN_GAP)),
        height=int(rows.pixels * len(labels) + LINES_TOP + legend_h),
        margin=dict(l=side, r=side, t=LINES_TOP, b=legend_h),
        title=dict(subtitle=dict(text=" · ".join(notes))),
        xaxis=dict(range=[0, 1], visible=False, fixedrange=True),
        yaxis=dict(range=[len(labels) - 0.5, -0.5], visible=False),
        legend=dict(orientation="h", yanchor="top", y=0, x=0, font=dict(size=10), itemwidth=30),
        hovermode="closest",
    )
    return fig


def _line_traces(lines: _Lines, chosen: list[int], threshold: float, every_bin: bool = False) -> list[go.Scatter]:
    """Per head a legend entry, then a trace per weight bin that has lines (stronger bins wider and more opaque;
    with ``every_bin`` also the empty ones, so a slider can restyle a fixed set of traces)."""
    palette = plotly.colors.qualitative.D3 if len(chosen) <= 10 else plotly.colors.qualitative.Dark24
    bins = _weight_bins(threshold)
    traces = []
    for n, head in enumerate(chosen):
        color = palette[n % len(palette)]
        traces.append(go.Scatter(x=[None], y=[None], mode="lines", line=dict(color=color, width=3),
                                 name=f"head {head}", legendgroup=f"head {head}"))
        for (low, high), drawn in zip(bins, _bin_masks(lines, n, threshold)):
            if every_bin or drawn.any():
                traces.append(_bin_trace(lines.query[drawn], lines.key[drawn], min(1.0, (low + high) / 2), color,
                                         head))
    return traces


def _bin_masks(lines: _Lines, n: int, threshold: float) -> list[np.ndarray]:
    """For each weight bin (``_weight_bins``), which ``lines`` of the ``n``-th chosen head fall in it."""
    bins = _weight_bins(threshold)
    which_bin = np.searchsorted([high for _, high in bins], lines.weight, side="right")
    return [(lines.head == n) & (which_bin == b) for b in range(len(bins))]


def _segments(queries: np.ndarray, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """x and y (float32) of lines from rows ``queries`` (left) to rows ``keys`` (right), separated by NaN."""
    xs = np.tile(np.array([LINE_START, 1.0 - LINE_START, np.nan], dtype=np.float32), queries.size)
    ys = np.stack([queries, keys, np.full(queries.size, np.nan)], axis=1).astype(np.float32)
    return xs, ys.ravel()


def _bin_trace(queries: np.ndarray, keys: np.ndarray, strength: float, color: str, head: int) -> go.Scatter:
    """Lines from rows ``queries`` (left) to rows ``keys`` (right) as one trace, segments separated by NaN; width
    and opacity grow with ``strength`` (0 to 1)."""
    xs, ys = _segments(queries, keys)
    return go.Scatter(
        x=xs, y=ys, mode="lines", hoverinfo="skip",
        line=dict(color=color, width=0.6 + 2.4 * strength), opacity=0.15 + 0.85 * strength,
        name=f"head {head}", legendgroup=f"head {head}", showlegend=False,
    )


def _token_columns(trace: EncoderTrace, shown: np.ndarray, query: int | None, labels: list[str], rows: _TokenRows
                   ) -> list[go.Scatter]:
    """The token labels at the left (``"tokens"``) and right (``"keys"``) edges, clickable, ``query`` highlighted."""
    count = shown.size
    colors = [HIGHLIGHT if query is not None and i == query else "#222" for i in shown]
    hover = [token_hover_label(trace.readable_tokens[i], int(i)) for i in shown]
    text = [labels[i] if i % rows.stride == 0 else "" for i in range(count)]
    return [
        go.Scatter(
            x=np.full(count, x, dtype=np.float32), y=np.arange(count, dtype=np.float32),
            mode="markers+text", text=text, textposition=anchor, textfont=dict(size=rows.font, color=colors),
            cliponaxis=False, marker=dict(size=max(4, rows.pixels - 2), color="#444", opacity=0.0),
            customdata=shown.astype(np.int32)[:, None], hovertext=hover, meta=click_meta("query"),
            hovertemplate="%{hovertext}<extra></extra>", name=name, showlegend=False,
        )
        for x, anchor, name in ((0.0, "middle left", "tokens"), (1.0, "middle right", "keys"))
    ]


def _weight_bins(threshold: float) -> list[tuple[float, float]]:
    """Half-open weight ranges for opacity levels, covering [threshold, 1]."""
    edges = sorted({threshold, 0.1, 0.2, 0.4, 0.7} | {1.0 + 1e-6})
    edges = [e for e in edges if e >= threshold]
    return list(itertools.pairwise(edges))
