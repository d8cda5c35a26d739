"""The logit lens as a figure (``analysis.lens``): layers x positions, each cell the top next-token candidate of
that layer's residual stream at that position, coloured by its probability, the top-K in the hover."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import plotly.graph_objects as go

from analysis.lens import LENS_WINDOW, LogitLens
from encoder.trace import EncoderTrace
from viz.layout import (
    COLORBAR_ROOM,
    byte_characters,
    display_token,
    label_margin,
    mark_generated,
    new_figure,
    percent,
    set_notes,
    short_label,
)
from viz.validation import check_colorscale

LENS_CELL_WIDTH, LENS_CELL_HEIGHT = 50, 24  # pixels per cell
LENS_CELL_CHARS = 6  # a cell's text: at most this many characters of the top token
LENS_FONT = 10
LENS_SIDES, LENS_TOP = 40, 90  # beyond the cells: the right margin's colour bar aside, and the top margin
LENS_COLORBAR_MIN = 150  # the colour bar is at least this long (pixels), however few the rows


def lens_row_names(rows: int) -> list[str]:
    """The rows' labels, top to bottom: "embeddings", "after layer 0", ..., the last "after layer L - 1 (output)"."""
    names = ["embeddings", *(f"after layer {layer}" for layer in range(rows - 1))]
    names[-1] += " (output)"
    return names


def build_logit_lens(lens: LogitLens, trace: EncoderTrace, colorscale: str = "Blues") -> go.Figure:
    """The lens as a heatmap: rows the embeddings (top), then each layer's output, the last row the model's own
    prediction; columns the window's positions, labelled with the token at each position (the cell predicts the
    token after it; generated tokens in italics). Cell text: the top candidate, bold where it is the token that
    actually follows.

    Returns:
        A figure with one heatmap trace ``"lens"``: ``z`` (L + 1, W) the top candidate's probability, ``text`` the
        cell labels, ``hovertext`` the top-K with their probabilities.
    """
    check_colorscale(colorscale)
    rows, width = lens.ids.shape[:2]
    top = lens.probs[:, :, 0]  # (L + 1, W)
    hits = lens.ids[:, :, 0] == lens.following[None, :]
    cells = [[_cell_text(lens.texts[r][c][0], hits[r, c]) for c in range(width)] for r in range(rows)]
    layer_names = lens_row_names(rows)
    positions = lens.positions.tolist()
    tokens = [trace.readable_tokens[p] for p in positions]
    follows = [trace.readable_tokens[p + 1] if p + 1 < trace.num_tokens else None for p in positions]
    spelled = byte_characters(trace.readable_tokens)  # a byte token's character
    where = [f"“{display_token(token)}”" + ("" if spelled[p] is None else f", a byte of “{display_token(spelled[p])}”")
             for token, p in zip(tokens, positions)]
    hover = [[_hover(lens, r, c, layer_names[r], where[c], follows[c]) for c in range(width)] for r in range(rows)]
    notes = ["each row: the final norm and the LM head applied to the residual stream after that layer",
             "colour: the top candidate's probability", "bold: it is the token that actually follows"]
    x_labels = mark_generated(trace, positions, [f"{short_label(token)} ({p})" for token, p in zip(tokens, positions)],
                              notes)
    if len(positions) == LENS_WINDOW and positions[0] > 0:
        notes.append(f"the {LENS_WINDOW} positions up to {positions[-1]}")

    left = label_margin(layer_names, 12) + 20
    bottom = label_margin(x_labels, LENS_FONT + 1) + 40
    title = f"Logit lens: the top next-token candidate of each layer, positions {positions[0]}–{positions[-1]}"
    fig = new_figure(title, width * LENS_CELL_WIDTH + left + COLORBAR_ROOM + LENS_SIDES,
                     rows * LENS_CELL_HEIGHT + bottom + LENS_TOP)
    top_margin = set_notes(fig, notes, LENS_TOP)
    fig.update_layout(
        margin=dict(l=left, r=COLORBAR_ROOM, b=bottom, t=top_margin),
        xaxis=dict(title=dict(text="position: the token there (the cells predict the token after it)", standoff=8),
                   tickangle=-90, tickmode="array", tickvals=list(range(width)), ticktext=x_labels,
                   tickfont=dict(size=LENS_FONT + 1), showgrid=False, zeroline=False, automargin=True),
        yaxis=dict(tickmode="array", tickvals=list(range(rows)), ticktext=layer_names, autorange="reversed",
                   showgrid=False, zeroline=False, automargin=True),
    )
    fig.add_trace(go.Heatmap(
        z=top.astype(np.float32), x=np.arange(width, dtype=np.int32), y=np.arange(rows, dtype=np.int32),
        colorscale=colorscale, zmin=0.0, zmax=1.0, text=cells, texttemplate="%{text}",
        textfont=dict(size=LENS_FONT), hovertext=hover, hovertemplate="%{hovertext}<extra></extra>",
        colorbar=dict(thickness=14, lenmode="pixels", len=max(rows * LENS_CELL_HEIGHT, LENS_COLORBAR_MIN), y=1.0,
                      yanchor="top", tickformat=".0%", title=dict(text="top<br>probability")),
        name="lens", xgap=1, ygap=1,
    ))
    return fig


def _cell_text(text: str, hit: bool) -> str:
    """A cell's label: the token cut to ``LENS_CELL_CHARS`` characters, bold when it is the token that follows."""
    cut = text if len(text) <= LENS_CELL_CHARS else text[:LENS_CELL_CHARS - 1] + "…"
    label = display_token(cut)
    return f"<b>{label}</b>" if hit else label


def _hover(lens: LogitLens, row: int, col: int, layer: str, token: str, follows: str | None) -> str:
    """The top-K of one cell, one per line with its probability, and the token that actually follows (``token``:
    the position's token as hover text)."""
    position = int(lens.positions[col])
    after = "the text ends here" if follows is None else f"“{display_token(follows)}” follows"
    lines = [f"{layer}, position {position} {token} ({after}):"]
    lines += [f"{rank}. {display_token(lens.texts[row][col][rank - 1])}: {percent(lens.probs[row, col, rank - 1])}"
              + (" (follows)" if lens.ids[row, col, rank - 1] == lens.following[col] else "")
              for rank in range(1, lens.ids.shape[2] + 1)]
    return "<br>".join(lines)


def lens_figures(result: LogitLens, trace: EncoderTrace, options: Mapping[str, Any]) -> list[tuple[str, go.Figure]]:
    """The registry's figures of the logit lens: the heatmap."""
    style = {"colorscale": options["colorscale"]} if options.get("colorscale") else {}
    return [("lens", build_logit_lens(result, trace, **style))]
