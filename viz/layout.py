"""The shared look of every figure: colours and colour scales, token labels and ticks, heatmap sizes, the base
layout.

NumPy and Plotly only; sizes are pixels.
"""

from __future__ import annotations

import functools
import html
import math
import re
import unicodedata
from collections.abc import Iterable, Sequence

import numpy as np
import plotly.graph_objects as go
from plotly import basedatatypes


def _keep_plotly_path_parses() -> None:
    """Plotly parses a property path ("margin_t", "coloraxis_cmax", "title.text") again at every update of every
    figure, through regular expressions and string splits: about a third of building a view's figure. The parse is
    a pure function of the string (its result is read, never changed) over the few hundred paths our builders use:
    kept, once per process."""
    parse = basedatatypes._str_to_dict_path_full
    if not hasattr(parse, "cache_info"):
        basedatatypes._str_to_dict_path_full = functools.lru_cache(maxsize=2048)(parse)


_keep_plotly_path_parses()

# ---------------------------------------------------------------------------------------------------------------
# Colours

# Colour scales offered in the app; the first five are perceptually uniform and colour-blind safe.
SEQUENTIAL_SCALES = ("Blues", "Viridis", "Cividis", "Magma", "Greys", "Inferno", "YlOrRd", "Plasma", "Turbo")
DIVERGING_SCALES = ("RdBu_r", "PuOr_r", "BrBG", "PiYG", "Balance")
DEFAULT_SCALE = "Blues"
DEFAULT_DIVERGING = "RdBu_r"
LOG_FLOOR = 1e-4  # log colour shows weights below this as this
HIGHLIGHT = "#d62728"  # the selected cell or head, the query token
MASKED_COLOR = "#d4d4d4"  # cells and tokens the query could not see (a causal model's later keys)
MASKED = "masked"  # what hover says about them
FONT_FAMILY = '"DejaVu Sans", "Noto Sans CJK SC", "Noto Sans CJK JP", Arial, sans-serif'
MAX_LABEL_CHARS = 16
TAG = re.compile(r"<[^<>]*>")  # Plotly's markup in a label (<i>, <b>, <br>): escaped text has no "<" left


def finite_range(values: np.ndarray, default: tuple[float, float] = (0.0, 1.0)) -> tuple[float, float]:
    """(min, max) of the finite ``values`` (NaN marks masked cells), or ``default`` when there are none."""
    finite = values[np.isfinite(values)]
    return (float(finite.min()), float(finite.max())) if finite.size else default


def log_weights(matrix: np.ndarray) -> np.ndarray:
    """log10 of attention weights, floored at ``LOG_FLOOR`` (float32)."""
    return np.log10(np.maximum(matrix, LOG_FLOOR)).astype(np.float32)


def log_colorbar() -> dict:
    """Colour bar ticks for ``log_weights``: positions are log10 values, labels the weights."""
    exponents = list(range(round(math.log10(LOG_FLOOR)), 1))
    labels = [f"≤{10.0 ** e:g}" if i == 0 else f"{10.0 ** e:g}" for i, e in enumerate(exponents)]
    return dict(tickvals=exponents, ticktext=labels, title=dict(text="weight (log)"))


# ---------------------------------------------------------------------------------------------------------------
# Labels and layout


# Control characters written as the bytes they are ("\x01" -> "<0x01>", as SentencePiece writes bytes), a newline
# inside a token as "⏎": a byte-level vocabulary has a piece for every byte, and a raw control character is both
# invisible and fatal to the image export (SVG).
CONTROL_BYTES = {code: f"<0x{code:02X}>" for code in [*range(32), 0x7F]} | {0x0A: "⏎"}


def display_token(token: str) -> str:
    """A token as Plotly text: control characters written as bytes (``CONTROL_BYTES``), HTML special
    characters escaped (``<s>`` must not vanish as a tag), empty shown."""
    return html.escape(token.translate(CONTROL_BYTES), quote=False) if token else "∅"


def percent(p: float) -> str:
    """A probability as a percentage of three significant digits ("34.2%", "0.00312%")."""
    return f"{float(p) * 100:.3g}%"


BYTE_TOKEN = re.compile(r"(?:<0x[0-9A-F]{2}>)+")  # a token that is only bytes of a character cut between tokens


def byte_characters(tokens: Sequence[str]) -> list[str | None]:
    """For each token that is only bytes (``<0xC3>``: a character the tokenizer cut between tokens), the character
    its run of byte tokens spells ("é" for both ``<0xC3>`` and ``<0xA9>``); None for other tokens and for bytes that
    spell no character."""
    import codecs

    found: list[str | None] = [None] * len(tokens)
    decoder, pending = codecs.getincrementaldecoder("utf-8")("replace"), []
    for i, token in enumerate([*tokens, ""]):
        if i < len(tokens) and BYTE_TOKEN.fullmatch(token):
            text = decoder.decode(bytes(int(b, 16) for b in re.findall(r"<0x([0-9A-F]{2})>", token)))
            pending.append(i)
            if text:
                for j in pending:
                    found[j] = None if text == "\ufffd" else text
                pending = []
            continue
        decoder.reset()
        pending = []
    return found


def short_label(token: str) -> str:
    """A tick label: at most ``MAX_LABEL_CHARS`` characters (an ellipsis marks the cut), escaped."""
    if len(token) > MAX_LABEL_CHARS:
        token = token[: MAX_LABEL_CHARS - 1] + "…"
    return display_token(token)


def text_width(text: str) -> int:
    """Width in character cells: East Asian wide and full-width characters count 2."""
    return sum(2 if unicodedata.east_asian_width(ch) in "WF" else 1 for ch in text)


def tick_font_size(pixels_per_tick: float) -> int:
    """Font size that fits one label per ``pixels_per_tick`` pixels: 8 to 12 px."""
    return int(min(12, max(8, pixels_per_tick * 0.75)))


NICE_STRIDES = (1, 2, 4, 5, 8, 10, 16, 20, 25, 32, 50, 64, 100, 128, 200, 256, 500)


def token_ticks(tokens: Sequence[str], indices: Sequence[int], axis_pixels: float) -> tuple[dict, int]:
    """Tick settings for a category axis of ``len(indices)`` tokens (values: token indices) over ``axis_pixels``.

    When every label cannot fit (10 px each at least), only tokens whose index is a multiple of a round stride
    (2, 4, 5, 8, 10, ...) are labelled, prefixed with their index ("24 fox"), so a thinned axis still says where
    it is. Returns (axis dict, font size).
    """
    count = len(indices)
    per_token = axis_pixels / max(count, 1)
    needed = 10.0 / per_token
    stride = next((s for s in NICE_STRIDES if s >= needed), NICE_STRIDES[-1])
    if stride == 1:
        values = [int(i) for i in indices]
        text = [short_label(tokens[i]) for i in values]
    else:
        values = [int(i) for i in indices if i % stride == 0]
        text = [f"{i} {short_label(tokens[i])}" for i in values]
    size = tick_font_size(per_token * stride)
    axis = dict(tickmode="array", tickvals=values, ticktext=text, tickfont=dict(size=size), ticks="")
    return axis, size


# Token heatmaps: the longer side gets HEATMAP_SIDE pixels, each cell MIN_CELL to MAX_CELL; the axis titles need
# Y_TITLE_ROOM / X_TITLE_ROOM pixels beyond the tick labels.
HEATMAP_SIDE = 760.0
MIN_CELL, MAX_CELL = 1.0, 36.0
Y_TITLE_ROOM, X_TITLE_ROOM = 50, 40
COLORBAR_ROOM = 110  # right margin of a heatmap with a vertical colour bar


def heatmap_cell(rows: int, cols: int) -> float:
    """Pixels per cell of a token heatmap of ``rows`` x ``cols`` cells."""
    return min(MAX_CELL, max(MIN_CELL, HEATMAP_SIDE / max(rows, cols)))


def token_heatmap_axes(
    row_tokens: Sequence[str], rows: Sequence[int], col_tokens: Sequence[str], cols: Sequence[int], cell: float
) -> tuple[dict, dict, int, int]:
    """Tick settings of a token heatmap's x axis (``cols``: indices into ``col_tokens``) and y axis (``rows``), and
    the left and bottom margins (pixels) that their labels and titles need."""
    x_axis, x_font = token_ticks(col_tokens, cols, cell * len(cols))
    y_axis, y_font = token_ticks(row_tokens, rows, cell * len(rows))
    left = label_margin(y_axis["ticktext"], y_font) + Y_TITLE_ROOM
    bottom = label_margin(x_axis["ticktext"], x_font) + X_TITLE_ROOM
    return x_axis, y_axis, left, bottom


def label_margin(labels: Iterable[str], font_size: int) -> int:
    """Pixels needed for the longest label at ``font_size`` (plus a little room); markup (``<i>``, ``&lt;``) is
    measured as the text it shows."""
    widest = max((text_width(html.unescape(TAG.sub("", label))) for label in labels), default=1)
    return int(widest * font_size * 0.62) + 12


def title_width(title: str, width: int) -> int:
    """``width`` (pixels), grown to fit ``title`` (15 px font, ~0.55 em per character)."""
    return max(width, int(text_width(title) * 15 * 0.55) + 40)


def base_layout(title: str, width: int | None = None, height: int | None = None) -> dict:
    """Shared layout: white background, our font, a title at the top left, the size when given (pixels).

    A given width grows to fit the title (15 px font, ~0.55 em per character).
    """
    if width is not None:
        width = title_width(title, width)
    size = {key: int(value) for key, value in (("width", width), ("height", height)) if value is not None}
    return dict(
        title=dict(text=title, x=0.015, xanchor="left", font=dict(size=15)),
        **size,
        font=dict(family=FONT_FAMILY, size=12, color="#222"),
        paper_bgcolor="white",
        plot_bgcolor="white",
        template="none",
    )


def notes_title(notes: Sequence[str]) -> dict:
    """A ``title`` update whose subtitle lists ``notes`` ("a · b"); empty without notes."""
    return dict(subtitle=dict(text=" · ".join(notes))) if notes else {}


SUBTITLE_CHAR_PIXELS, SUBTITLE_LINE_PIXELS = 6.6, 16  # the subtitle's 12 px font: per character, per line


def wrap_notes(notes: Sequence[str], width: int) -> list[str]:
    """``notes`` joined by " · " into lines that fit ``width`` pixels: a line breaks between notes, and inside a
    note only where the note alone is too long (between words)."""
    limit = max(30, int((width - 30) / SUBTITLE_CHAR_PIXELS))
    lines: list[str] = []
    for note in notes:
        words = note.split()
        if not words:
            continue
        if lines and len(lines[-1]) + 3 + len(note) <= limit:
            lines[-1] += " · " + note
            continue
        lines.append(words[0])
        for word in words[1:]:
            if len(lines[-1]) + 1 + len(word) > limit:
                lines.append(word)
            else:
                lines[-1] += " " + word
    return lines


def set_notes(fig: go.Figure, notes: Sequence[str], top: int) -> int:
    """Write ``notes`` as the subtitle, wrapped to the figure's width (``wrap_notes``), with a top margin of
    ``top`` pixels for one line and ``SUBTITLE_LINE_PIXELS`` more per further line; the figure's height (when set)
    grows by as much. Returns the top margin."""
    lines = wrap_notes(notes, int(fig.layout.width or 700)) if notes else []
    extra = SUBTITLE_LINE_PIXELS * max(0, len(lines) - 1)
    fig.update_layout(title=dict(subtitle=dict(text="<br>".join(lines))), margin=dict(t=top + extra))
    if fig.layout.height:
        fig.update_layout(height=fig.layout.height + extra)
    return top + extra


def new_figure(title: str, width: int | None = None, height: int | None = None) -> go.Figure:
    return go.Figure(layout=base_layout(title, width, height))


GENERATED_NOTE = "italic: generated by the model"


def mark_generated(trace, indices: Iterable[int], labels: Sequence[str], notes: list[str] | None = None) -> list[str]:
    """``labels`` of the tokens at ``indices``, in italics where the model generated the token
    (``trace.generated``); appends ``GENERATED_NOTE`` to ``notes`` when any is."""
    if trace.generated is None:
        return list(labels)
    made = [bool(trace.generated[int(i)]) for i in indices]
    if notes is not None and any(made) and GENERATED_NOTE not in notes:
        notes.append(GENERATED_NOTE)
    return [f"<i>{label}</i>" if m else label for label, m in zip(labels, made)]


def token_hover_label(token: str, index: int) -> str:
    """Hover text for one token: the token and its position, escaped."""
    return f"{display_token(token)} ({index})"


def category_labels(tokens: Sequence[str]) -> list[str]:
    """One unique category per position, "token (index)": a category axis keeps repeated tokens apart and hover
    templates (``%{x}``) name the token without per-cell text."""
    return [token_hover_label(token, index) for index, token in enumerate(tokens)]


# ---------------------------------------------------------------------------------------------------------------
# What an image model reads of its text encoder (``encoder.diffusers.ImageModelReads``)

CUT_COLOR = "#7f7f7f"  # the line where an image model's token window ends
READ_MARK = "▸"  # before the number of a layer the image model reads


def mark_image_model(fig: go.Figure, trace, reads, layer: int | None = None) -> go.Figure:
    """Mark on a built view what the image model reads of this text encoder (``reads``, an
    ``encoder.diffusers.ImageModelReads``; None: ``fig`` as it is), in place:

    - a figure with a layer axis (``yaxis`` titled "layer", a tick per layer: the model view): ``READ_MARK``
      before the number of each layer the image model reads, in ``HIGHLIGHT``;
    - a figure of one ``layer``: whether the image model reads that layer's output, or nothing past an earlier one;
    - a trace cut at its window (``trace.truncated``): the caption "N tokens past CLIP's 77-token window are
      dropped" (``ImageModelReads.cut_note``), and a dashed line after the last token of a heatmap (``xaxis``
      titled "key": keys across) or of the token strip (horizontal bars: one per token).

    The notes go on lines of their own under the subtitle (the top margin and the height grow by as many)."""
    if reads is None:
        return fig
    marks = reads.marks(trace.num_layers)
    notes = []
    if _is_layer_axis(fig.layout.yaxis, trace.num_layers):
        text = list(fig.layout.yaxis.ticktext)
        for index in marks:
            if 0 <= index < len(text):
                text[index] = f'<span style="color:{HIGHLIGHT}">{READ_MARK} {text[index]}</span>'
        fig.update_yaxes(ticktext=text)
        notes.append(f"{READ_MARK} read by the {reads.reader}: "
                     + "; ".join(f"layer {index}, {what}" for index, what in sorted(marks.items())))
    elif layer is not None:
        notes.append(_layer_note(int(layer), marks, reads.reader))
    cut = reads.cut_note(trace.num_tokens, trace.untruncated_length) if trace.truncated else ""
    if cut:
        notes.append(f"✂ {cut}")
        _draw_cut(fig)
    _add_note_lines(fig, notes)
    return fig


def _is_layer_axis(axis, layers: int) -> bool:
    title = axis.title.text if axis.title is not None else None
    return title == "layer" and axis.ticktext is not None and len(axis.ticktext) == layers


def _layer_note(layer: int, marks: dict[int, str], reader: str) -> str:
    """What the image model does with the output of ``layer``."""
    if layer in marks:
        return f"layer {layer} is read by the {reader}: {marks[layer]}"
    last = max(marks, default=-1)
    if layer > last:
        return f"layer {layer} is not read by the {reader}: it reads layer {last}'s output"
    return f"layer {layer} leads to what the {reader} reads (layer {last})"


def _draw_cut(fig: go.Figure) -> None:
    """A dashed line (and ✂) after the last token: at the right edge of a heatmap's keys, or after the last box of
    a token strip."""
    title = fig.layout.xaxis.title.text if fig.layout.xaxis.title is not None else None
    line = dict(color=CUT_COLOR, width=2, dash="dash")
    heatmap = next((d for d in fig.data if d.type == "heatmap" and d.x is not None), None)
    bars = [d for d in fig.data if d.type == "bar" and d.orientation == "h" and d.base is not None and len(d.y)]
    if title == "key" and heatmap is not None:  # the scissors above the line
        x, y0, y1, yref = len(heatmap.x) - 0.5, 0, 1, "paper"
        scissors = dict(y=1, xanchor="center", yanchor="bottom")
    elif bars:  # the scissors right of the line
        row, end = max((float(y), float(b) + float(w)) for d in bars for y, b, w in zip(d.y, d.base, d.x))
        x, y0, y1, yref = end + 0.2, row - 0.45, row + 0.45, "y"
        scissors = dict(y=row, xanchor="left", yanchor="middle")
    else:
        return
    fig.add_shape(type="line", x0=x, x1=x, y0=y0, y1=y1, xref="x", yref=yref, line=line, name="cut")
    fig.add_annotation(text="✂", x=x, xref="x", yref=yref, showarrow=False, font=dict(color=CUT_COLOR, size=14),
                       name="cut", **scissors)


def _add_note_lines(fig: go.Figure, notes: list[str]) -> None:
    """``notes`` on lines of their own under the subtitle, wrapped to the figure's width (``wrap_notes``); the top
    margin (and the height, when set) grow by one line each."""
    if not notes:
        return
    lines = [html.escape(line, quote=False) for line in wrap_notes(notes, int(fig.layout.width or 700))]
    subtitle = fig.layout.title.subtitle.text if fig.layout.title.subtitle is not None else None
    fig.update_layout(title=dict(subtitle=dict(text="<br>".join([*([subtitle] if subtitle else []), *lines]))))
    extra = SUBTITLE_LINE_PIXELS * len(lines)
    top = fig.layout.margin.t if fig.layout.margin.t is not None else 80
    fig.update_layout(margin=dict(t=top + extra))
    if fig.layout.height:
        fig.update_layout(height=fig.layout.height + extra)
