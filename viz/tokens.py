"""The token view: the sentence itself, each token shaded by the attention it receives from (or gives to) one
selected query token: the heatmap row or column laid out next to the words."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import plotly.graph_objects as go

from encoder.errors import ViewError
from encoder.trace import EncoderTrace
from viz.clicks import click_meta
from viz.kinds import CrossTrace, is_cross, query_side
from viz.layout import (
    DEFAULT_SCALE,
    HIGHLIGHT,
    MASKED,
    MASKED_COLOR,
    base_layout,
    display_token,
    mark_generated,
    notes_title,
    text_width,
)
from viz.long_inputs import in_full_text, windowed
from viz.scrub import Step, add_head_slider
from viz.selection import AGGREGATES, hidden_keys, select_attention, shown_queries_keys
from viz.validation import (
    check_choice,
    check_colorscale,
    check_heads,
    check_int_range,
    check_shown_token,
    check_token,
    check_token_matrix,
)

DIRECTIONS = ("from", "to")
CHAR_PIXELS = 9.0  # screen pixels per character cell at the token font size
ROW_PIXELS = 36
MIN_WIDTH_CHARS = 60  # the strip is at least this wide, so short sentences keep room for the title
TOKEN_FONT = 14
STRIP_SIDE, STRIP_BOTTOM = 20, 70  # margins: left and right, and below for the colour bar
STRIP_TOP, STRIP_TOP_WITH_NOTES = 60, 90  # top margin: the title, and a subtitle under it
COLORBAR_PIXELS = 320  # the colour bar's length, at most the strip's width


def layout_tokens(tokens: list[str], breaks: set[int], line_chars: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Place tokens left to right in lines of at most ``line_chars`` character cells, like a paragraph.

    A new line starts before index ``i`` in ``breaks`` (e.g. where sentence B begins). Returns (row, start, width)
    per token, in character cells; wide (CJK) characters count two cells and each token gets one cell of padding.
    """
    rows, starts, widths = [], [], []
    row, column = 0, 0.0
    for i, token in enumerate(tokens):
        width = min(text_width(token) + 1.2, line_chars)
        if column > 0 and (i in breaks or column + width > line_chars):
            row, column = row + 1, 0.0
        rows.append(row)
        starts.append(column)
        widths.append(width)
        column += width + 0.4
    return np.asarray(rows), np.asarray(starts, dtype=np.float32), np.asarray(widths, dtype=np.float32)


def build_token_view(
    trace: EncoderTrace | CrossTrace,
    layer: int = 0,
    heads: Iterable[int] | None = None,
    query: int = 1,
    direction: str = "from",
    *,
    aggregate: str = "mean",
    layer_mean: bool = False,
    colorscale: str = DEFAULT_SCALE,
    hide_special: bool = False,
    renormalize: bool = True,
    line_chars: int = 72,
    label: str | None = None,
    weights: np.ndarray | None = None,
    scrub: bool = True,
) -> go.Figure:
    """The sentence as a strip of tokens shaded by attention from the ``query`` token ("from") or to it ("to").

    "from": token j is shaded by A[query, j], what the query looks at (its heatmap row). "to": token j is shaded by
    A[j, query], how much each token looks at the query (its heatmap column). A is the ``aggregate`` ("mean" or
    "max") of ``heads`` (default all) in ``layer`` (or the mean over layers with ``layer_mean``), or ``weights``
    when given: any (T, T) token-to-token matrix of this trace, e.g. a rollout after one layer. ``label`` names
    what the weights are in the title instead of the layer and heads. With ``scrub`` and one head of one layer, a
    slider in the figure moves through the heads in the browser (``viz.scrub``: its steps restyle the bars' colours
    and the title); then one colour scale, up to the largest weight of any of its heads, serves them all, so the
    colours compare across heads and a step never re-lays out the strip. Cross-attention: ``query`` is a decoder
    token and the strip the encoder's tokens, shaded by what it looks at ("from" only).

    Returns:
        A figure with one horizontal bar trace ``"tokens"``: one bar per shown token in sentence order, its
        ``marker.color`` the weight, ``text`` the token as people read it, ``customdata`` [token_index] (click a
        token to make it the query). The query's bar is outlined. Tokens the query cannot see ("from": later keys of
        a causal model) or that cannot see it ("to") are left out of it and drawn grey by a second bar trace
        ``"masked"`` (hover: "masked").
    """
    check_colorscale(colorscale)
    check_choice(direction, DIRECTIONS, "direction")
    check_choice(aggregate, AGGREGATES, "aggregate")
    line_chars = check_int_range(line_chars, "line_chars", 20, 400)
    if is_cross(trace) and direction != "from":
        raise ViewError("cross-attention goes from decoder tokens to encoder tokens: the token view shows what a "
                        "decoder token looks at (direction 'from')")
    trace, query, window = windowed(trace, query) if weights is None else (trace, query, None)
    queries = query_side(trace)
    query = check_token(queries, query, "query")
    if weights is None:
        matrix, what = select_attention(trace, layer, 0, aggregate=aggregate, heads=heads, layer_mean=layer_mean)
    else:
        matrix, what = check_token_matrix(trace, weights), "weights"
    sub, rows, shown, notes = shown_queries_keys(trace, matrix, hide_special, renormalize)
    check_shown_token(queries, query, rows)
    at = int(np.flatnonzero(rows == query)[0])  # the query's row among the shown tokens
    shares = np.ascontiguousarray(sub[at] if direction == "from" else sub[:, at], dtype=np.float32)
    masked = _masked_tokens(trace, layer, layer_mean, query, direction, shown, notes) if weights is None else None

    tokens = [trace.readable_tokens[i] for i in shown]
    labels = mark_generated(trace, shown, [_box_label(token, line_chars) for token in tokens], notes)
    boxes = layout_tokens(tokens, _sentence_break(trace, shown), line_chars)
    q_label = display_token(queries.readable_tokens[query])
    headline, hover = _headline_and_hover(label or what, q_label, query, direction, labels, shown)
    peak = float(shares.max()) if shares.size and shares.max() > 0 else 1.0
    fig = _strip_figure(headline, notes, boxes, colorscale, peak)
    if masked is None:
        fig.add_trace(_token_bars(boxes, labels, hover, shares, shown, None if is_cross(trace) else query))
    else:
        _add_masked_bars(fig, masked, (boxes, labels, hover, shares, shown), query)
    chosen = check_heads(trace, heads)
    if scrub and weights is None and not layer_mean and len(chosen) == 1:
        peaks = [peak]

        def step(lay: int, h: int) -> Step:
            matrix, what = select_attention(trace, lay, h)
            sub, _, _, _ = shown_queries_keys(trace, matrix, hide_special, renormalize)
            shares = np.ascontiguousarray(sub[at] if direction == "from" else sub[:, at], dtype=np.float32)
            peaks.append(float(shares.max()))
            title = _headline_and_hover(label or what, q_label, query, direction, labels, shown)[0]
            return {"marker.color": [shares if masked is None else shares[~masked]]}, {"title.text": title}

        if add_head_slider(fig, trace, layer, chosen[0], [0], step):
            fig.update_layout(coloraxis_cmax=max(peaks))
            fig.layout.title.subtitle.text = " · ".join([*notes, "one colour scale for every head of the slider"])
    return in_full_text(fig, window)


def _headline_and_hover(what: str, q_label: str, query: int, direction: str, labels: list[str], shown: np.ndarray
                        ) -> tuple[str, list[str]]:
    """The title, and each token's hover up to its weight: "query → token: " ("from") or "token → query: " ("to");
    the hover template adds the weight, the bar's colour value (so a head slider restyles the colours only)."""
    if direction == "from":
        headline = f"{what}: attention from “{q_label}” ({query}) to each token"
        return headline, [f"{q_label} ({query}) → {text} ({i}): " for text, i in zip(labels, shown)]
    headline = f"{what}: attention to “{q_label}” ({query}) from each token"
    return headline, [f"{text} ({i}) → {q_label} ({query}): " for text, i in zip(labels, shown)]


def _add_masked_bars(fig: go.Figure, masked: np.ndarray, bars: tuple, query: int) -> None:
    """The ``"tokens"`` bars of the tokens not ``masked``, then the ``"masked"`` ones (grey, hover "masked");
    ``bars`` are ``_token_bars``' per-token arguments (boxes, labels, hover, weights, shown)."""
    boxes, labels, hover, weights, shown = bars
    hover = [f"{text} ({i}): {MASKED}" if m else h for text, i, m, h in zip(labels, shown, masked, hover)]
    for keep, name in ((~masked, "tokens"), (masked, MASKED)):
        index = np.flatnonzero(keep)
        fig.add_trace(_token_bars(tuple(values[keep] for values in boxes), [labels[i] for i in index],
                                  [hover[i] for i in index], weights[keep], shown[keep], query, name))
    fig.update_layout(barmode="overlay")  # the two traces' bars share each row instead of splitting it


def _masked_tokens(trace: EncoderTrace, layer: int, layer_mean: bool, query: int, direction: str,
                   shown: np.ndarray, notes: list[str]) -> np.ndarray | None:
    """(T',) bool over ``shown``: the tokens the query could not see ("from") or that could not see it ("to");
    None when there are none (then no note either)."""
    hidden = hidden_keys(trace, layer, layer_mean)
    if hidden is None:
        return None
    masked = hidden[query, shown] if direction == "from" else hidden[shown, query]
    if not masked.any():
        return None
    notes.append("grey: masked, tokens the query cannot see" if direction == "from" else
                 "grey: masked, tokens that cannot see the query")
    return masked


def _box_label(token: str, line_chars: int) -> str:
    """A token as the text of its box, cut with an ellipsis to fit a line of ``line_chars`` cells."""
    return display_token(token) if len(token) < line_chars - 2 else display_token(token[: line_chars - 3] + "…")


def _sentence_break(trace: EncoderTrace, shown: np.ndarray) -> set[int]:
    """For a sentence pair, the position among ``shown`` where sentence B starts (a line break there)."""
    if not trace.is_pair:
        return set()
    first_b = np.flatnonzero(trace.segment_ids[shown] == 1)
    return {int(first_b[0])} if first_b.size else set()


def _strip_figure(headline: str, notes: list[str], boxes: tuple[np.ndarray, ...], colorscale: str, peak: float
                  ) -> go.Figure:
    """The strip's figure without traces: ``CHAR_PIXELS`` per character cell, ``ROW_PIXELS`` per line, the colour
    bar (0 to ``peak``) along the bottom."""
    rows, starts, widths = boxes
    line_count = int(rows.max()) + 1
    content = max(float((starts + widths).max()), MIN_WIDTH_CHARS)
    plot_w, plot_h = content * CHAR_PIXELS, line_count * ROW_PIXELS
    top = STRIP_TOP_WITH_NOTES if notes else STRIP_TOP
    layout = base_layout(headline, int(plot_w + 2 * STRIP_SIDE), int(plot_h + top + STRIP_BOTTOM))
    layout["title"].update(notes_title(notes))
    layout.update(  # one layout made whole, not a figure updated (Plotly's update_layout: ~half the figure's cost)
        margin=dict(l=STRIP_SIDE, r=STRIP_SIDE, t=top, b=STRIP_BOTTOM),
        xaxis=dict(range=[-0.5, content + 0.5], visible=False, fixedrange=True),
        yaxis=dict(range=[line_count - 0.5, -0.5], visible=False, fixedrange=True),
        bargap=0.22,
        coloraxis=dict(colorscale=colorscale, cmin=0.0, cmax=peak,
                       colorbar=dict(orientation="h", thickness=10, lenmode="pixels", len=min(COLORBAR_PIXELS, plot_w),
                                     x=0, xanchor="left", yref="container", y=0.0, ypad=14, yanchor="bottom",
                                     title=dict(text="weight", side="right"))),
        uniformtext=dict(minsize=9, mode="show"),
    )
    return go.Figure(layout=layout)


def _token_bars(boxes: tuple[np.ndarray, ...], labels: list[str], hover: list[str], weights: np.ndarray,
                shown: np.ndarray, query: int | None, name: str = "tokens") -> go.Bar:
    """One bar per token at its box, coloured by weight (``MASKED_COLOR`` for the ``"masked"`` trace), the query
    outlined; clicking a bar makes its token the query (``query`` None: the bars are another text's tokens, the keys
    of cross-attention: no outline, no clicks). The text is black or white, whichever reads better on the
    fill (plotly.js picks it when no text colour is set); hover ends with the weight, the colour value."""
    rows, starts, widths = boxes
    colors = [HIGHLIGHT if i == query else "white" for i in shown]
    outline = dict(width=np.where(shown == query, 3.0, 1.0), color=colors)
    fill = dict(color=MASKED_COLOR) if name == MASKED else dict(color=weights, coloraxis="coloraxis")
    return go.Bar(
        y=rows.astype(np.int32),
        x=widths,
        base=starts,
        orientation="h",
        marker=dict(**fill, line=outline),
        text=labels,
        textposition="inside",
        insidetextanchor="middle",
        textangle=0,
        textfont=dict(size=TOKEN_FONT),
        customdata=shown.astype(np.int32)[:, None],
        meta=None if query is None else click_meta("query"),
        hovertext=hover,
        hovertemplate="%{hovertext}" + ("" if name == MASKED else "%{marker.color:.4f}") + "<extra></extra>",
        name=name,
        showlegend=False,
    )
