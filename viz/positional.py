"""Positional-encoding figures: the table as a heatmap, cosine similarity between positions, chosen dimensions as
lines. Each marks the positions the current text uses. Works for the sinusoidal table and for a learned one."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import plotly.graph_objects as go

from encoder.errors import ViewError
from encoder.positional import sinusoidal_encoding  # NumPy only: the closed form, to name the table's kind
from encoder.trace import EncoderTrace
from viz.layout import DEFAULT_DIVERGING, new_figure
from viz.validation import check_colorscale, check_index

USED_COLOR = "#222"
SIMILARITY_MAX_POSITIONS = 512  # the similarity figure's default: a P x P matrix is 95 MB of JSON at P = 4096


def used_positions(trace: EncoderTrace) -> np.ndarray:
    """Table rows the text's tokens received, (T,) int: 0..T-1 when the rows are the table's first T rows, else the
    nearest table row of each positional row."""
    table, rows = trace.positional_table, trace.positional
    count = trace.num_tokens
    if count <= table.shape[0] and np.array_equal(rows, table[:count]):
        return np.arange(count)
    distance = (table * table).sum(axis=1)[None, :] - 2.0 * rows @ table.T  # (T, P), up to a per-row constant
    return distance.argmin(axis=1)


def table_kind(trace: EncoderTrace) -> str:
    """"sinusoidal" when the table equals the closed form (to float32 rounding), else "learned"."""
    table = trace.positional_table
    closed_form = sinusoidal_encoding(*table.shape)
    return "sinusoidal" if np.allclose(table, closed_form, atol=1e-5) else "learned"


def _positions(trace: EncoderTrace, max_positions: int | None) -> int:
    total = trace.positional_table.shape[0]
    if max_positions is None:
        return total
    if isinstance(max_positions, bool) or not isinstance(max_positions, (int, np.integer)):
        raise ViewError(f"max_positions must be an integer, got {max_positions!r}")
    if not 1 <= max_positions <= total:
        raise ViewError(f"max_positions {max_positions} is out of range: the table has {total} positions (1-{total})")
    return int(max_positions)


def _runs(positions: np.ndarray) -> list[tuple[int, int]]:
    """Contiguous runs of sorted distinct positions as (first, last) pairs."""
    ordered = np.unique(positions)
    splits = np.flatnonzero(np.diff(ordered) != 1) + 1
    return [(int(run[0]), int(run[-1])) for run in np.split(ordered, splits)]


def _used_text(trace: EncoderTrace, shown: int) -> str:
    runs = [(a, b) for a, b in _runs(used_positions(trace)) if a < shown]
    spans = ", ".join(f"{a}-{min(b, shown - 1)}" for a, b in runs)
    return f"this text uses positions {spans} ({trace.num_tokens} tokens)"


def build_positional_heatmap(
    trace: EncoderTrace, *, max_positions: int | None = None, colorscale: str = DEFAULT_DIVERGING
) -> go.Figure:
    """The positional table (positions down, dimensions across) with the rows this text uses outlined.

    Returns:
        A figure whose heatmap ``z`` is ``positional_table[:max_positions]`` (P', D) float32, centred at 0.
    """
    check_colorscale(colorscale)
    shown = _positions(trace, max_positions)
    table = np.ascontiguousarray(trace.positional_table[:shown], dtype=np.float32)
    depth = table.shape[1]
    limit = float(np.percentile(np.abs(table), 99.5)) or 1.0  # a few outliers must not wash out the rest
    clipped = float(np.abs(table).max()) > limit
    height = int(min(760, max(360, shown * 2 + 160)))
    fig = new_figure(f"Positional encodings: {table_kind(trace)} table, {shown} positions × {depth} dimensions",
                     int(min(1000, max(560, depth * 2 + 200))), height)
    fig.update_layout(
        title=dict(subtitle=dict(text=_used_text(trace, shown) + " (outlined)"
                                 + (f" · colours clipped at ±{limit:.3g} (99.5th percentile of |value|)" if clipped
                                    else ""))),
        margin=dict(l=70, r=100, t=90, b=60),
        xaxis=dict(title=dict(text="dimension"), showgrid=False, zeroline=False),
        yaxis=dict(title=dict(text="position"), autorange="reversed", showgrid=False, zeroline=False),
    )
    fig.add_trace(go.Heatmap(
        z=table, colorscale=colorscale, zmid=0.0, zmin=-limit, zmax=limit, name="table",
        colorbar=dict(thickness=12, title=dict(text="value")),
        hovertemplate="position %{y}, dimension %{x}: %{z:.4f}<extra></extra>",
    ))
    for first, last in _runs(used_positions(trace)):
        if first < shown:
            fig.add_shape(type="rect", x0=-0.5, x1=depth - 0.5, y0=first - 0.5, y1=min(last, shown - 1) + 0.5,
                          line=dict(color=USED_COLOR, width=2), name="used positions")
    return fig


def build_position_similarity(
    trace: EncoderTrace, *, max_positions: int | None = None, colorscale: str = DEFAULT_DIVERGING
) -> go.Figure:
    """Cosine similarity between the positional vectors of every two positions (P' x P'), text's square outlined.

    Args:
        max_positions: int, the first P' positions shown (default: all, at most ``SIMILARITY_MAX_POSITIONS``; the
            subtitle says when positions were left out).

    Returns:
        A figure whose heatmap ``z`` (P', P') float32 is ``cos(table[i], table[j])`` (0 for an all-zero row).
    """
    check_colorscale(colorscale)
    total = trace.positional_table.shape[0]
    shown = _positions(trace, min(total, SIMILARITY_MAX_POSITIONS) if max_positions is None else max_positions)
    cut = f" · the first {shown} of {total} positions" if shown < total else ""
    table = trace.positional_table[:shown].astype(np.float64)
    norms = np.linalg.norm(table, axis=1, keepdims=True)
    unit = np.divide(table, norms, out=np.zeros_like(table), where=norms > 0)
    similarity = (unit @ unit.T).astype(np.float32)  # (P', P')
    side = int(min(720, max(360, shown * 1.4)))
    fig = new_figure(f"Positional encodings: cosine similarity between positions ({table_kind(trace)} table)",
                     side + 180, side + 150)
    fig.update_layout(
        title=dict(subtitle=dict(text=_used_text(trace, shown) + " (outlined)" + cut)),
        margin=dict(l=80, r=100, t=90, b=60),
        xaxis=dict(title=dict(text="position"), showgrid=False, zeroline=False, constrain="domain"),
        yaxis=dict(title=dict(text="position"), autorange="reversed", showgrid=False, zeroline=False,
                   scaleanchor="x", constrain="domain"),
    )
    fig.add_trace(go.Heatmap(
        z=similarity, colorscale=colorscale, zmid=0.0, zmin=-1.0, zmax=1.0, name="similarity",
        colorbar=dict(thickness=12, title=dict(text="cosine")),
        hovertemplate="positions %{y} and %{x}: %{z:.3f}<extra></extra>",
    ))
    for first, last in _runs(used_positions(trace)):
        if first < shown:
            end = min(last, shown - 1) + 0.5
            fig.add_shape(type="rect", x0=first - 0.5, x1=end, y0=first - 0.5, y1=end,
                          line=dict(color=USED_COLOR, width=2), name="used positions")
    return fig


def default_dimensions(depth: int) -> list[int]:
    """Four dimensions spread over the width: 0, 1, D/4, D/2 (for a sinusoidal table: the fastest sine and cosine,
    then slower sines)."""
    return sorted({0, min(1, depth - 1), (depth // 4) // 2 * 2, (depth // 2) // 2 * 2})


def build_positional_dimensions(
    trace: EncoderTrace, dims: Iterable[int] | None = None, *, max_positions: int | None = None
) -> go.Figure:
    """Chosen dimensions of the positional table as lines over position; the text's positions shaded.

    Returns:
        One line trace per dimension (``name`` "dimension d", ``y`` = ``positional_table[:P', d]`` float32).
    """
    depth = trace.positional_table.shape[1]
    chosen = default_dimensions(depth) if dims is None else [check_index(d, depth, "dimension", "table") for d in dims]
    if not chosen:
        raise ViewError("dims is empty: choose at least one dimension")
    if len(set(chosen)) != len(chosen):
        raise ViewError(f"dims {chosen} lists a dimension twice")
    shown = _positions(trace, max_positions)
    positions = np.arange(shown, dtype=np.int32)
    fig = new_figure(f"Positional encodings: {len(chosen)} dimensions over position ({table_kind(trace)} table)",
                     900, 500)
    fig.update_layout(
        title=dict(subtitle=dict(text=_used_text(trace, shown) + " (shaded)")),
        margin=dict(l=70, r=30, t=90, b=100),
        xaxis=dict(title=dict(text="position"), showgrid=True, gridcolor="#eee", zeroline=False,
                   range=[-0.5, shown - 0.5]),
        yaxis=dict(title=dict(text="value"), showgrid=True, gridcolor="#eee", zerolinecolor="#bbb"),
        legend=dict(orientation="h", yanchor="top", y=-0.2, x=0),
        hovermode="x unified",
    )
    for first, last in _runs(used_positions(trace)):
        if first < shown:
            fig.add_vrect(x0=first - 0.5, x1=min(last, shown - 1) + 0.5, fillcolor="#999", opacity=0.18,
                          line_width=0, layer="below")
    for d in chosen:
        fig.add_trace(go.Scatter(
            x=positions, y=np.ascontiguousarray(trace.positional_table[:shown, d], dtype=np.float32),
            mode="lines", name=f"dimension {d}", line=dict(width=1.6),
            hovertemplate=f"dimension {d}: %{{y:.4f}}<extra></extra>",
        ))
    return fig
