"""The model view: every layer x head as a thumbnail of its (query x key) attention, tiled into one image-like
heatmap.

Clicks (``viz.clicks``): the ``"heads"`` layer is ("layer", "head"), invisible markers at the thumbnail centres (a
heatmap alone sends no click events; image exports drop it).
"""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go

from analysis.report import SINK_FROM, SINK_THRESHOLD, sink_shares
from encoder.trace import EncoderTrace
from viz.clicks import click_markers, click_meta, layer_head_points, outline
from viz.layout import new_figure, set_notes
from viz.long_inputs import head_images, is_long
from viz.selection import AGGREGATES, downsample_seen, head_label, kv_heads, mask_note, shown_queries_keys
from viz.validation import check_choice, check_colorscale, check_head, check_int_range, check_layer

MODEL_THUMBNAIL = 64  # model-view thumbnails: at most this many cells a side

# Layout, in pixels
THUMB_GAP = 0.12  # gap between model-view thumbnails, as a share of their side (at least one cell)
THUMB_MIN_PIXELS, THUMB_MAX_PIXELS = 34, 80  # a model-view thumbnail on screen
MODEL_VIEW_WIDTH = 960  # model-view thumbnails share this width until they reach their limits
MODEL_VIEW_MARGIN = dict(l=70, r=100, t=80, b=60)
SINK_COLOR = "#d62728"  # the dot on an attention sink's thumbnail
KV_LINE_COLOR = "#555555"  # the lines between key/value head groups
KV_LABEL_PIXELS = 18  # room above the mosaic for the key/value groups' names
MODEL_VIEW_MIN_WIDTH = 640  # a model of few heads still gets this width, for the title and notes


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
    sinks: bool = False,
) -> go.Figure:
    """Every layer x head as a thumbnail of its (query x key) attention, tiled into one image-like heatmap.

    One heatmap trace holds the mosaic (float32, NaN gaps), so the figure stays light at 512 tokens. Thumbnails are
    block-reduced (``reduce``: "mean" or "max") to at most ``thumbnail`` cells a side, and with ``per_head_scale``
    each is divided by its own maximum so faint heads show their pattern; the subtitle says both. Cells a query
    could not see (``trace.visible``, per layer) are left out of the blocks and NaN where a block has no other.

    Cross-attention (decoder queries down, encoder keys across) makes rectangular thumbnails: sq rows, sk columns.

    Returns:
        Trace 0: the heatmap, ``z`` of shape (L*sq + (L-1)*g, H*sk + (H-1)*g) for thumbnail sides sq (queries) and
        sk (keys, equal for self-attention) and gap g; the thumbnail of (layer l, head h) starts at row
        ``l*(sq+g)``, column ``h*(sk+g)``. Trace 1: the click layer
        ``"heads"``, L*H points at the thumbnail centres with ``customdata`` [layer, head]. ``selected`` = (layer,
        head) adds a visible outline trace ``"selected"``. With ``sinks``, a trace ``"sinks"`` puts a dot on the
        attention sinks (``analysis.report``: at least ``SINK_THRESHOLD`` of the attention of queries from
        ``SINK_FROM`` on lands on the first token; over all tokens, hidden ones included). Where query heads share
        key/value heads (``trace.key_value_heads``), lines separate the groups and the hover names each head's.
    """
    check_colorscale(colorscale)
    check_choice(reduce, AGGREGATES, "reduce")
    thumbnail = check_int_range(thumbnail, "thumbnail", 4, 512)
    if is_long(trace):  # each head read a chunk of rows at a time, never the whole (L, H, T, T)
        images = head_images(trace, range(trace.num_layers), range(trace.num_heads), thumbnail, reduce, hide_special,
                             renormalize)
        thumbs, peaks, shares, notes = images.images, images.peaks, images.sinks, images.notes
        thumb_notes = _thumb_notes(thumbs, (images.rows.size, images.cols.size), reduce, per_head_scale)
    else:
        attention, rows, cols, notes = shown_queries_keys(trace, trace.attention, hide_special, renormalize)
        hidden = None  # attention: (L, H, Tq', Tk')
        if trace.visible is not None and not trace.visible.all():
            notes.append(mask_note(~trace.visible))
            hidden = ~trace.visible[:, rows[:, None], cols[None, :]][:, None]  # (L, 1, Tq', Tk')
        thumbs = downsample_seen(attention, hidden, thumbnail, reduce)  # (L, H, sq, sk)
        thumb_notes = _thumb_notes(thumbs, attention.shape[-2:], reduce, per_head_scale)
        peaks, shares = attention.max(axis=(2, 3)), (sink_shares(trace.attention) if sinks else None)
    if per_head_scale:
        peak = np.nanmax(thumbs, axis=(2, 3), keepdims=True)
        thumbs = np.divide(thumbs, peak, out=np.zeros_like(thumbs), where=peak > 0)
    mosaic, steps = _mosaic(thumbs)
    sides = thumbs.shape[-2:]  # (layers: down, heads: across), as steps
    step, side = steps[1], sides[1]
    if sides[0] != sides[1]:
        notes.append(f"thumbnails: {sides[0]} rows (decoder tokens, the queries) × {sides[1]} columns (encoder "
                     "tokens, the keys)")

    pixels = max(THUMB_MIN_PIXELS, min(THUMB_MAX_PIXELS, MODEL_VIEW_WIDTH // trace.num_heads))  # per thumbnail
    notes += thumb_notes
    fig = _model_view_figure(mosaic.shape, trace.num_layers, trace.num_heads, sides, steps, pixels)
    fig.add_trace(go.Heatmap(
        z=mosaic, colorscale=colorscale, zmin=0.0, zmax=1.0 if per_head_scale else float(np.nanmax(mosaic)),
        hoverinfo="skip", name="mosaic",
        colorbar=dict(thickness=12, title=dict(text="share of max" if per_head_scale else "weight")),
    ))
    if kv_heads(trace) is not None:
        notes.append(_kv_groups(fig, trace, mosaic.shape[0], step, side))
    fig.add_trace(_head_layer(trace, peaks, sides, steps, pixels))
    if sinks:
        notes.append(_mark_sinks(fig, trace, shares, sides, steps, pixels))
    kv_room = KV_LABEL_PIXELS if kv_heads(trace) is not None else 0
    set_notes(fig, notes or ["full resolution"], MODEL_VIEW_MARGIN["t"] + kv_room)
    if selected is not None:
        chosen_layer, chosen_head = check_layer(trace, selected[0]), check_head(trace, selected[1])
        centre = [_centre(chosen_head, steps[1], sides[1])], [_centre(chosen_layer, steps[0], sides[0])]
        fig.add_trace(outline(*centre, pixels, "selected"))
    return fig


def _thumb_notes(thumbs: np.ndarray, shown: tuple[int, int], reduce: str, per_head_scale: bool) -> list[str]:
    """The subtitle's notes on (L, H, sq, sk) thumbnails of (Tq', Tk') shown tokens: downsampled, scaled."""
    notes = []
    if thumbs.shape[-2:] != tuple(shown):
        notes.append(f"downsampled to {thumbs.shape[-2]}×{thumbs.shape[-1]} per head (block {reduce})")
    if per_head_scale:
        notes.append("each head scaled to its own maximum")
    return notes


def _mosaic(thumbs: np.ndarray) -> tuple[np.ndarray, tuple[int, int]]:
    """(L, H, sq, sk) thumbnails tiled into one float32 image, layers down and heads across, NaN in the gaps; and
    the steps from one thumbnail to the next down and across (side + gap; one gap, from the longer side)."""
    layers, heads, rows, cols = thumbs.shape
    gap = max(1, round(max(rows, cols) * THUMB_GAP))
    down, across = rows + gap, cols + gap
    mosaic = np.full((layers * down - gap, heads * across - gap), np.nan, dtype=np.float32)
    for layer in range(layers):
        for head in range(heads):
            mosaic[layer * down:layer * down + rows, head * across:head * across + cols] = thumbs[layer, head]
    return mosaic, (down, across)


def _centre(index, step: int, side: int):
    """Mosaic coordinate of the centre of thumbnail ``index`` (an int or an array) along one axis."""
    return index * step + (side - 1) / 2


def _model_view_figure(shape: tuple[int, int], layers: int, heads: int, sides: tuple[int, int],
                       steps: tuple[int, int], pixels: int) -> go.Figure:
    """The mosaic's figure without traces: ``pixels`` per thumbnail across (as many per cell down), head and layer
    numbers at the centres; ``sides`` and ``steps`` (down, across) as ``_mosaic`` made them."""
    margin = MODEL_VIEW_MARGIN
    fig = new_figure(f"All {layers} layers × {heads} heads: queries down, keys across")
    fig.update_layout(
        width=max(MODEL_VIEW_MIN_WIDTH, heads * pixels + margin["l"] + margin["r"]),
        height=round(layers * pixels * steps[0] / steps[1]) + margin["t"] + margin["b"],
        margin=margin,
        xaxis=dict(**_mosaic_axis("head", heads, steps[1], sides[1], [-0.5, shape[1] - 0.5]), constrain="domain"),
        yaxis=dict(**_mosaic_axis("layer", layers, steps[0], sides[0], [shape[0] - 0.5, -0.5]), scaleanchor="x",
                   constrain="domain"),
        hoverdistance=-1,
    )
    return fig


def _mosaic_axis(title: str, count: int, step: int, side: int, extent: list[float]) -> dict:
    """A mosaic axis over ``extent`` numbering ``count`` thumbnails at their centres."""
    return dict(title=dict(text=title), tickmode="array", showgrid=False, zeroline=False,
                tickvals=[_centre(i, step, side) for i in range(count)], ticktext=[str(i) for i in range(count)],
                range=extent)


def _kv_groups(fig: go.Figure, trace: EncoderTrace, height: int, step: int, side: int) -> str:
    """Lines between the groups of query heads sharing a key/value head, each group's key/value head named above
    it ("kv 0"); returns the note saying so."""
    size = trace.num_heads // trace.key_value_heads
    for group in range(1, trace.key_value_heads):
        x = group * size * step - (step - side) / 2 - 0.5
        fig.add_shape(type="line", x0=x, x1=x, y0=-0.5, y1=height - 0.5, line=dict(color=KV_LINE_COLOR, width=2))
    for group in range(trace.key_value_heads):
        fig.add_annotation(text=f"kv {group}", x=(group * size + (size - 1) / 2) * step + (side - 1) / 2, y=-0.5,
                           xref="x", yref="y", yanchor="bottom", showarrow=False,
                           font=dict(size=11, color=KV_LINE_COLOR))
    fig.update_xaxes(title=dict(text="head (grouped by the key/value head they share)"))
    return f"lines: {trace.key_value_heads} key/value heads, each shared by {size} query heads"


def _mark_sinks(fig: go.Figure, trace: EncoderTrace, shares: np.ndarray, sides: tuple[int, int],
                steps: tuple[int, int], pixels: int) -> str:
    """A dot at the top-right corner of each attention sink's thumbnail (``shares`` (L, H): ``sink_shares``; hover:
    its share); returns the note that says how many there are and the rule (also when there is none)."""
    layers, heads = np.nonzero(shares >= SINK_THRESHOLD)
    inset = max(sides[1] / 8, 0.5)
    fig.add_trace(go.Scatter(
        x=(heads * steps[1] + sides[1] - 1 - inset).astype(np.float32),
        y=(layers * steps[0] + inset).astype(np.float32),
        mode="markers", name="sinks", showlegend=False,
        marker=dict(symbol="circle", size=max(6, pixels // 6), color=SINK_COLOR, line=dict(color="white", width=1)),
        text=[f"layer {lay}, {head_label(trace, h)}: attention sink, {shares[lay, h]:.2f} of attention on the first "
              "token" for lay, h in zip(layers.tolist(), heads.tolist())],
        hovertemplate="%{text}<extra></extra>",
    ))
    rule = f"≥ {SINK_THRESHOLD:g} of attention from queries {SINK_FROM}+ on the first token"
    if not layers.size:
        return f"attention sinks (red dots): none ({rule})"
    found = f"{layers.size} attention sinks" if layers.size != 1 else "1 attention sink"
    return f"red dots: {found} ({rule})"


def _head_layer(trace: EncoderTrace, peaks: np.ndarray, sides: tuple[int, int], steps: tuple[int, int],
                pixels: int) -> go.Scatter:
    """Invisible markers at the thumbnail centres (``customdata`` [layer, head]); hover names the head and its
    ``peaks`` (L, H) weight; a clicked one shows."""
    layer, head, customdata = layer_head_points(*peaks.shape)
    return go.Scatter(
        x=_centre(head, steps[1], sides[1]).astype(np.float32),
        y=_centre(layer, steps[0], sides[0]).astype(np.float32),
        customdata=customdata,
        text=[f"layer {lay}, {head_label(trace, h)} (max weight {peaks[lay, h]:.3f})"
              for lay, h in zip(layer.tolist(), head.tolist())],
        hovertemplate="%{text}<extra></extra>",
        name="heads",
        meta=click_meta("layer", "head", invisible=True),
        **click_markers(pixels - 4),
    )
