"""Shared pieces of the figure builders: validators, attention selection, downsampling, labels and layout.

Everything here is NumPy and Plotly only. Validators raise ``ViewError`` (a ``ValueError``) naming the bad value and
the allowed range.
"""

from __future__ import annotations

import html
import math
import operator
import unicodedata
from collections.abc import Iterable, Sequence

import numpy as np
import plotly.colors
import plotly.graph_objects as go

from encoder.errors import ViewError
from encoder.trace import EncoderTrace

# Colour scales offered in the app; the first five are perceptually uniform and colour-blind safe.
SEQUENTIAL_SCALES = ("Blues", "Viridis", "Cividis", "Magma", "Greys", "Inferno", "YlOrRd", "Plasma", "Turbo")
DIVERGING_SCALES = ("RdBu_r", "PuOr_r", "BrBG", "PiYG", "Balance")
DEFAULT_SCALE = "Blues"
DEFAULT_DIVERGING = "RdBu_r"
AGGREGATES = ("mean", "max")
BLOCKS = ("AA", "AB", "BA", "BB")
LOG_FLOOR = 1e-4  # log colour shows weights below this as this
HIGHLIGHT = "#d62728"  # the selected cell or head, the query token
MASKED_COLOR = "#d4d4d4"  # cells and tokens the query could not see (a causal model's later keys)
MASKED = "masked"  # what hover says about them
FONT_FAMILY = '"DejaVu Sans", "Noto Sans CJK SC", "Noto Sans CJK JP", Arial, sans-serif'
MAX_LABEL_CHARS = 16
_NAMED_SCALES = frozenset(plotly.colors.named_colorscales())


# ---------------------------------------------------------------------------------------------------------------
# Clicks: the contract between a figure and whoever shows it
#
# A trace whose points can be clicked carries ``meta = click_meta(*fields)``: the first ``len(fields)`` values of
# each point's ``customdata`` are integers named by ``fields`` (from ``CLICK_FIELDS``); more values may follow for
# hover text. The app reads the spec from the figure (``click_spec``) and moves its controls: a "query" picks the
# query token, "layer" + "head" open that head. ``invisible`` traces exist only to be clicked (a heatmap alone
# sends no click events), so static image exports drop them.

CLICK_FIELDS = ("layer", "head", "query", "key")


def click_meta(*fields: str, invisible: bool = False) -> dict:
    """``meta`` for a clickable trace whose points' ``customdata`` starts with ``fields`` (see above)."""
    unknown = [field for field in fields if field not in CLICK_FIELDS]
    if not fields or unknown:
        raise ValueError(f"click fields must come from {CLICK_FIELDS}, got {fields}")
    return {"click": list(fields), "invisible": invisible}


def click_spec(fig: go.Figure) -> dict[int, tuple[str, ...]]:
    """Trace index -> click field names, for every clickable trace of ``fig``."""
    spec = {}
    for index, trace in enumerate(fig.data):
        meta = trace.meta
        if isinstance(meta, dict) and meta.get("click"):
            spec[index] = tuple(meta["click"])
    return spec


def layer_head_points(layers: int, heads: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every (layer, head) in layer-major order: layers (N,), heads (N,) and their ``customdata`` (N, 2) int32
    [layer, head] for a ``click_meta("layer", "head")`` trace."""
    grid_layer, grid_head = np.meshgrid(np.arange(layers), np.arange(heads), indexing="ij")
    layer, head = grid_layer.ravel(), grid_head.ravel()
    return layer, head, np.stack([layer, head], axis=1).astype(np.int32)


def is_click_layer(trace: dict) -> bool:
    """Whether a trace (as plotly JSON) exists only to be clicked: images leave it out."""
    meta = trace.get("meta")
    return isinstance(meta, dict) and bool(meta.get("invisible"))


# ---------------------------------------------------------------------------------------------------------------
# Validators


def _integer(value, what: str, kind: str) -> int:
    """``value`` as a Python int (NumPy integers too, never a bool), else ViewError "{what} must be {kind}"."""
    if isinstance(value, bool):
        raise ViewError(f"{what} must be {kind}, got {value!r}")
    try:
        return operator.index(value)
    except TypeError:
        raise ViewError(f"{what} must be {kind}, got {value!r}") from None


def check_index(value, count: int, what: str, owner: str) -> int:
    """``value`` as an int in ``range(count)``, else ViewError ("layer 7 is out of range: the model has 6 layers
    (0-5)")."""
    index = _integer(value, what, "an integer")
    if not 0 <= index < count:
        raise ViewError(f"{what} {index} is out of range: the {owner} has {count} {what}s (0-{count - 1})")
    return index


def check_int_range(value, what: str, low: int, high: int) -> int:
    """``value`` as an int in [low, high], else ViewError naming it ("thumbnail 2 must be an integer from 4 to
    512")."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not low <= value <= high:
        raise ViewError(f"{what} {value!r} must be an integer from {low} to {high}")
    return int(value)


def check_layer(trace: EncoderTrace, layer) -> int:
    return check_index(layer, trace.num_layers, "layer", "model")


def check_head(trace: EncoderTrace, head) -> int:
    return check_index(head, trace.num_heads, "head", "model")


def check_token(trace: EncoderTrace, index, what: str = "token") -> int:
    position = _integer(index, what, "a token index")
    count = trace.num_tokens
    if not 0 <= position < count:
        raise ViewError(f"{what} {position} is out of range: the text has {count} tokens (0-{count - 1})")
    return position


def check_heads(trace: EncoderTrace, heads: Iterable[int] | None) -> list[int]:
    """A sorted list of distinct heads; ``None`` means all heads."""
    if heads is None:
        return list(range(trace.num_heads))
    if isinstance(heads, (int, np.integer)) and not isinstance(heads, bool):
        heads = [heads]
    chosen = [check_head(trace, h) for h in heads]
    if not chosen:
        raise ViewError("heads is empty: choose at least one head")
    if len(set(chosen)) != len(chosen):
        raise ViewError(f"heads {chosen} lists a head twice")
    return sorted(chosen)


def check_choice(value, choices: Sequence, what: str):
    if value not in choices:
        allowed = ", ".join(repr(c) for c in choices)
        raise ViewError(f"{what} {value!r} is not one of {allowed}")
    return value


def check_colorscale(name: str) -> str:
    """A Plotly named colour scale, optionally reversed with the suffix ``_r`` (case-insensitive)."""
    if not isinstance(name, str) or name.lower().removesuffix("_r") not in _NAMED_SCALES:
        raise ViewError(
            f"colour scale {name!r} is not a Plotly named colour scale; try one of {', '.join(SEQUENTIAL_SCALES)}"
        )
    return name


def check_fraction(value, what: str) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ViewError(f"{what} must be a number between 0 and 1, got {value!r}") from None
    if not 0.0 <= number <= 1.0:
        raise ViewError(f"{what} {number} is out of range: it must lie between 0 and 1")
    return number


# ---------------------------------------------------------------------------------------------------------------
# Attention selection


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
    check_choice(aggregate, (None, *AGGREGATES), "aggregate")
    per_head, layer_text = layer_heads(trace, layer, layer_mean)
    if aggregate is None:
        head = check_head(trace, head)
        return np.asarray(per_head[head], dtype=np.float32), f"{layer_text.capitalize()}, head {head}"
    chosen = check_heads(trace, heads)
    if len(chosen) == 1:
        return np.asarray(per_head[chosen[0]], dtype=np.float32), f"{layer_text.capitalize()}, head {chosen[0]}"
    stack = per_head[chosen]  # (h, T, T)
    matrix = stack.mean(axis=0, dtype=np.float32) if aggregate == "mean" else stack.max(axis=0)
    return np.asarray(matrix, dtype=np.float32), f"{layer_text.capitalize()}, {aggregate} of {describe_heads(chosen)}"


def layer_heads(trace: EncoderTrace, layer: int, layer_mean: bool) -> tuple[np.ndarray, str]:
    """The (H, T, T) attention of ``layer`` (or the mean over layers with ``layer_mean``) and its name, "layer 3"
    or "mean of layers 0-5"."""
    if layer_mean:
        return trace.attention.mean(axis=0, dtype=np.float32), f"mean of layers 0-{trace.num_layers - 1}"
    layer = check_layer(trace, layer)
    return trace.attention[layer], f"layer {layer}"


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
    """
    shown = visible_tokens(trace, hide_special)
    # The memory order of the cut decides the float32 row sums' last bit: a matrix is cut C-ordered (np.ix_), a
    # stack as fancy indexing leaves it, as the views always did.
    weights = attention[np.ix_(shown, shown)] if attention.ndim == 2 else attention[..., shown, :][..., shown]
    if not hide_special:
        return weights, shown, []
    if renormalize:
        return renormalize_rows(weights), shown, ["special tokens hidden, rows renormalised"]
    note = "special tokens hidden, rows not renormalised" if say_unnormalised else "special tokens hidden"
    return weights, shown, [note]


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


def finite_range(values: np.ndarray, default: tuple[float, float] = (0.0, 1.0)) -> tuple[float, float]:
    """(min, max) of the finite ``values`` (NaN marks masked cells), or ``default`` when there are none."""
    finite = values[np.isfinite(values)]
    return (float(finite.min()), float(finite.max())) if finite.size else default


def check_token_matrix(trace: EncoderTrace, weights) -> np.ndarray:
    """``weights`` as a (T, T) float32 matrix over this trace's tokens (ViewError naming both shapes otherwise)."""
    matrix = np.asarray(weights, dtype=np.float32)
    count = trace.num_tokens
    if matrix.shape != (count, count):
        raise ViewError(f"weights have shape {matrix.shape}, while the text's {count} tokens need ({count}, {count})")
    return matrix


def check_shown_token(trace: EncoderTrace, index, shown: np.ndarray, what: str = "query") -> int:
    """``check_token``, and the token must be among ``shown`` (not a hidden special token)."""
    position = check_token(trace, index, what)
    if position not in shown:
        raise ViewError(f"{what} {position} ({trace.readable_tokens[position]}) is a special token, which is hidden")
    return position


def block_edges(length: int, size: int) -> np.ndarray:
    """``size + 1`` edges splitting ``range(length)`` into ``size`` nearly equal, non-empty blocks."""
    return np.linspace(0, length, size + 1).round().astype(np.int64)


def downsample(matrix: np.ndarray, size: int, how: str = "mean") -> np.ndarray:
    """Reduce the last two axes (T, T) to at most (size, size) by block mean or block max. Float32.

    With ``T <= size`` the input comes back unchanged (as float32).
    """
    check_choice(how, AGGREGATES, "downsampling")
    length = matrix.shape[-1]
    if length <= size:
        return np.asarray(matrix, dtype=np.float32)
    starts = block_edges(length, size)[:-1]
    reduce = np.add if how == "mean" else np.maximum
    out = reduce.reduceat(reduce.reduceat(matrix, starts, axis=-2), starts, axis=-1)
    if how == "mean":
        counts = np.diff(block_edges(length, size))
        out = out / (counts[:, None] * counts[None, :])
    return out.astype(np.float32)


def downsample_seen(matrix: np.ndarray, hidden: np.ndarray | None, size: int, how: str = "mean") -> np.ndarray:
    """``downsample`` over the cells a query could see: ``hidden`` cells (T, T, or any shape that broadcasts
    against ``matrix``) left out of each block's mean (or max), NaN for blocks of hidden cells only. Without
    ``hidden``, ``downsample`` itself."""
    if hidden is None:
        return downsample(matrix, size, how)
    seen = downsample((~hidden).astype(np.float32), size)  # (s, s) share of seen cells per block
    reduced = downsample(np.where(hidden, np.float32(0.0), matrix), size, how)
    if how == "mean":
        reduced = np.divide(reduced, seen, out=np.zeros_like(reduced), where=seen > 0)
    return np.where(seen > 0, reduced, np.float32(np.nan)).astype(np.float32)


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


def display_token(token: str) -> str:
    """A token as Plotly text: HTML special characters escaped (``<s>`` must not vanish as a tag), empty shown."""
    return html.escape(token, quote=False) if token else "∅"


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
    """Pixels needed for the longest label at ``font_size`` (plus a little room)."""
    widest = max((text_width(html.unescape(label)) for label in labels), default=1)
    return int(widest * font_size * 0.62) + 12


def base_layout(title: str, width: int | None = None, height: int | None = None) -> dict:
    """Shared layout: white background, our font, a title at the top left, the size when given (pixels).

    A given width grows to fit the title (15 px font, ~0.55 em per character).
    """
    if width is not None:
        width = max(width, int(text_width(title) * 15 * 0.55) + 40)
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


def new_figure(title: str, width: int | None = None, height: int | None = None) -> go.Figure:
    return go.Figure(layout=base_layout(title, width, height))


def token_hover_label(token: str, index: int) -> str:
    """Hover text for one token: the token and its position, escaped."""
    return f"{display_token(token)} ({index})"


def category_labels(tokens: Sequence[str]) -> list[str]:
    """One unique category per position, "token (index)": a category axis keeps repeated tokens apart and hover
    templates (``%{x}``) name the token without per-cell text."""
    return [token_hover_label(token, index) for index, token in enumerate(tokens)]
