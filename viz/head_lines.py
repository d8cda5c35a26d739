"""Head lines: BertViz-style lines from each query token (left) to the key tokens it attends to (right), one colour
per head. Cross-attention draws two columns of different lengths: the decoder's tokens (queries) left, the
encoder's (keys) right (BertViz's encoder-decoder view).

Clicks (``viz.clicks``): the token columns ``"tokens"`` and ``"keys"`` are ("query",); for cross-attention only the
left one (its tokens are the queries).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable
from typing import NamedTuple

import numpy as np
import plotly.colors
import plotly.graph_objects as go

from encoder.trace import EncoderTrace
from viz.clicks import click_meta
from viz.kinds import CrossTrace, is_cross, query_side
from viz.layout import (
    HIGHLIGHT,
    base_layout,
    display_token,
    label_margin,
    mark_generated,
    short_label,
    token_hover_label,
)
from viz.long_inputs import in_full_text, windowed
from viz.scrub import Step, add_head_slider
from viz.selection import describe_heads, head_label, shown_queries_keys
from viz.validation import check_fraction, check_heads, check_int_range, check_layer, check_shown_token

MAX_LINES = 2000  # head lines draws at most this many (the strongest); more only clutter and slow drawing
LAYER_STEPS_BYTES = 32 * 2**20  # the head slider's steps are made a layer at a time when its weights take at most this
SCRUBBED_LINES = "lines"  # the line traces' name under the head slider (one name for every head it shows)
LINE_START = 0.03  # head lines run from x=LINE_START to 1-LINE_START, leaving room next to the labels

# Layout, in pixels
LINES_HEIGHT = 1800.0  # head lines: all token rows share this height until they reach their limits
LINE_MIN_ROW, LINE_MAX_ROW = 4.0, 22.0  # a head-lines token row
LINE_MIN_FONT, LINE_MAX_FONT = 7, 13  # a head-lines token label (0.7 of a row)
LINE_LABEL_PIXELS = 9.0  # rows thinner than this label only every n-th token
LINES_MIN_WIDTH, LINES_MIN_GAP = 520, 360  # head lines: the figure, and the room between the label margins
LINES_TOP = 90
LEGEND_TOP, LEGEND_ROW, LEGEND_ITEMS = 30, 22, 6  # head-lines legend: padding, one row per LEGEND_ITEMS heads


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
    trace: EncoderTrace | CrossTrace,
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
    trace, query, window = windowed(trace, query)
    threshold = check_fraction(threshold, "threshold")
    max_lines = check_int_range(max_lines, "max_lines", 1, 1_000_000)
    queries = query_side(trace)  # the decoder's tokens for cross-attention, else the trace itself
    stack, shown, keys, hidden = shown_queries_keys(trace, trace.attention[layer][chosen], hide_special, renormalize)
    notes = [f"lines for weights ≥ {threshold:g}"]
    query_row = None
    if query is not None:
        query = check_shown_token(queries, query, shown)
        query_row = int(np.searchsorted(shown, query))
        notes.append(f"from {display_token(queries.readable_tokens[query])} ({query}) only")
    notes.extend(hidden)
    drawn = [*notes]
    lines = _drawn_lines(stack, threshold, query_row, max_lines, drawn)  # stack: (h, Tq', Tk')
    scrubbing = scrub and len(chosen) == 1

    rows = _token_rows(max(shown.size, keys.size))
    labels = [mark_generated(side, index, [short_label(side.readable_tokens[i]) for i in index], drawn)
              for side, index in ((queries, shown), (trace, keys))]
    if is_cross(trace):
        drawn.append("left: decoder tokens (queries), right: encoder tokens (keys)")
    named = head_label(trace, chosen[0]) if len(chosen) == 1 else describe_heads(chosen)  # as the steps name it
    fig = _lines_figure(f"Layer {layer}, {named}: who attends to whom", drawn, labels, rows,
                        len(chosen))
    fig.add_traces(_line_traces(lines, chosen, threshold, every_bin=scrubbing))
    fig.add_traces(_token_columns(trace, (shown, keys), query, labels, rows))
    if scrubbing:
        made: dict[int, list[Step]] = {}
        whole_layers = trace.num_heads * stack.shape[-2] * stack.shape[-1] * 4 <= LAYER_STEPS_BYTES

        def step(lay: int, h: int) -> Step:
            if not whole_layers:  # a long text: one head's weights at a time
                return _layer_steps(trace, lay, hide_special, renormalize, threshold, query_row, max_lines, notes,
                                    (h,))[0]
            if lay not in made:  # every head of a layer at once: a slider carries them all
                made[lay] = _layer_steps(trace, lay, hide_special, renormalize, threshold, query_row, max_lines, notes)
            return made[lay][h]

        family = ("lines", hide_special, renormalize, threshold, query_row, max_lines, tuple(notes))
        if add_head_slider(fig, trace, layer, chosen[0], list(range(1, 1 + len(_weight_bins(threshold)))), step,
                           family):
            # the title names the head: no legend, and the traces' names left out (the same for every step)
            fig.update_traces(showlegend=False, name=SCRUBBED_LINES, legendgroup=SCRUBBED_LINES,
                              selector=dict(name=f"head {chosen[0]}"))
    return in_full_text(fig, window)


def _layer_steps(trace: EncoderTrace | CrossTrace, layer: int, hide_special: bool, renormalize: bool, threshold: float,
                 query_row: int | None, max_lines: int, notes: list[str], chosen: tuple[int, ...] | None = None
                 ) -> list[Step]:
    """The head slider's step of each head of ``layer`` (or of its ``chosen`` heads): the lines of each weight bin
    (``_line_traces`` with ``every_bin``) and the title, as the figure built at that head draws them. Made for the
    heads together in a few array operations (one head at a time cost ~0.1 ms each, most of a figure's steps); a
    head with more than ``max_lines`` lines takes ``_drawn_lines``' own path (its strongest lines)."""
    chosen = tuple(range(trace.attention[layer].shape[0])) if chosen is None else chosen
    heads = len(chosen)
    bins = len(_weight_bins(threshold))
    ones = [shown_queries_keys(trace, trace.attention[layer][[h]], hide_special, renormalize)[0] for h in chosen]
    lines = _Lines.above(np.concatenate(ones), threshold)  # in (head, query, key) order, as each head's own
    if query_row is not None:
        lines = lines.take(lines.query == query_row)
    subtitles = [[*notes] for _ in range(heads)]
    crowded = np.flatnonzero(np.bincount(lines.head, minlength=heads) > max_lines)
    if crowded.size:
        parts = [lines.take(~np.isin(lines.head, crowded))]
        for h in crowded:
            own = _drawn_lines(ones[h], threshold, query_row, max_lines, subtitles[h])
            parts.append(own._replace(head=np.full(own.head.size, h, dtype=lines.head.dtype)))
        lines = _Lines(*(np.concatenate(values) for values in zip(*parts)))
    group = lines.head * bins + _bin_of(lines.weight, threshold)
    order = np.argsort(group, kind="stable")  # each (head, bin) together, its lines in their own order
    ends = np.searchsorted(group[order], np.arange(heads * bins + 1))
    ys = np.stack([lines.query[order], lines.key[order], np.full(order.size, np.nan)], axis=1).astype(np.float32)
    xs = np.tile(np.array([LINE_START, 1.0 - LINE_START, np.nan], dtype=np.float32), order.size)
    steps = []
    for h in range(heads):
        spans = [(ends[h * bins + b], ends[h * bins + b + 1]) for b in range(bins)]
        data = {"x": [xs[: 3 * (stop - start)] for start, stop in spans],
                "y": [ys[start:stop].ravel() for start, stop in spans]}
        steps.append((data, {"title.text": f"Layer {layer}, {head_label(trace, chosen[h])}: who attends to whom",
                             "title.subtitle.text": " · ".join(subtitles[h])}))
    return steps


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


def _lines_figure(title: str, notes: list[str], labels: list[list[str]], rows: _TokenRows, heads: int
                  ) -> go.Figure:
    """The head lines' figure without traces: token rows down (as many as the longer of the two ``labels`` columns,
    queries and keys), labels in the side margins, the legend below."""
    left, right = (label_margin(column, rows.font) + 20 for column in labels)
    count = max(len(column) for column in labels)
    legend_h = LEGEND_TOP + LEGEND_ROW * math.ceil(heads / LEGEND_ITEMS)
    layout = base_layout(title)
    layout["title"].update(subtitle=dict(text=" · ".join(notes)))
    layout.update(  # one layout made whole, not a figure updated (Plotly's update_layout costs as much again)
        width=int(max(LINES_MIN_WIDTH, left + right + LINES_MIN_GAP)),
        height=int(rows.pixels * count + LINES_TOP + legend_h),
        margin=dict(l=left, r=right, t=LINES_TOP, b=legend_h),
        xaxis=dict(range=[0, 1], visible=False, fixedrange=True),
        yaxis=dict(range=[count - 0.5, -0.5], visible=False),
        legend=dict(orientation="h", yanchor="top", y=0, x=0, font=dict(size=10), itemwidth=30),
        hovermode="closest",
    )
    return go.Figure(layout=layout)


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
    which_bin = _bin_of(lines.weight, threshold)
    return [(lines.head == n) & (which_bin == b) for b in range(len(_weight_bins(threshold)))]


def _bin_of(weights: np.ndarray, threshold: float) -> np.ndarray:
    """The weight bin (``_weight_bins``' index) of each of ``weights``."""
    return np.searchsorted([high for _, high in _weight_bins(threshold)], weights, side="right")


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


def _token_columns(trace: EncoderTrace | CrossTrace, shown: tuple[np.ndarray, np.ndarray], query: int | None,
                   labels: list[list[str]], rows: _TokenRows) -> list[go.Scatter]:
    """The token labels at the left (``"tokens"``: the ``shown[0]`` queries) and right (``"keys"``: the ``shown[1]``
    keys) edges, clickable where their tokens are queries, ``query`` highlighted (on the left; on both sides when
    queries and keys are one text)."""
    cross = is_cross(trace)
    columns = []
    for x, anchor, name, side, index, text in ((0.0, "middle left", "tokens", query_side(trace), shown[0], labels[0]),
                                               (1.0, "middle right", "keys", trace, shown[1], labels[1])):
        count = index.size
        marked = query if not (cross and name == "keys") else None
        colors = [HIGHLIGHT if marked is not None and i == marked else "#222" for i in index]
        columns.append(go.Scatter(
            x=np.full(count, x, dtype=np.float32), y=np.arange(count, dtype=np.float32),
            mode="markers+text", text=[text[i] if i % rows.stride == 0 else "" for i in range(count)],
            textposition=anchor, textfont=dict(size=rows.font, color=colors),
            cliponaxis=False, marker=dict(size=max(4, rows.pixels - 2), color="#444", opacity=0.0),
            customdata=index.astype(np.int32)[:, None],
            hovertext=[token_hover_label(side.readable_tokens[i], int(i)) for i in index],
            meta=None if cross and name == "keys" else click_meta("query"),
            hovertemplate="%{hovertext}<extra></extra>", name=name, showlegend=False,
        ))
    return columns


def _weight_bins(threshold: float) -> list[tuple[float, float]]:
    """Half-open weight ranges for opacity levels, covering [threshold, 1]."""
    edges = sorted({threshold, 0.1, 0.2, 0.4, 0.7} | {1.0 + 1e-6})
    edges = [e for e in edges if e >= threshold]
    return list(itertools.pairwise(edges))
