"""The attention-distance view: how far each head of a layer looks, as attention mass by query-key distance.

A head that attends to the previous token puts its mass at distance 1 (-1 signed), a positional head at a fixed
offset, a broad head spreads it; the mean distance per head (Vig & Belinkov, 2019) sums it up in one number.
"""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go

from encoder.attention_store import LazyAttention
from encoder.trace import EncoderTrace
from viz.layout import DEFAULT_SCALE, new_figure
from viz.long_inputs import FULL_TOKENS
from viz.selection import head_label, layer_heads, shown_attention
from viz.validation import check_colorscale

ROW_PIXELS = 26  # screen pixels per head row
MIN_CELL_PIXELS = 6  # the plot is at least this wide per distance bin


def attention_by_distance(attention: np.ndarray, positions: np.ndarray, signed: bool) -> tuple[np.ndarray, np.ndarray]:
    """Mass of each head's attention at each query-key distance, averaged over queries.

    Args:
        attention: (H, T, T) rows over keys (each sums to 1, or 0 where everything was hidden).
        positions: (T,) token positions of the rows/columns (distances are differences of these).
        signed: key minus query (negative: keys before the query); else its absolute value.

    Returns:
        (distances (K,) int, mass (H, K) float32): ``mass[h, k]`` is the mean over queries of the weight head ``h``
        puts on keys at ``distances[k]``; each row sums to the mean row sum (1 for softmax rows).
    """
    offsets = positions[None, :] - positions[:, None]  # (T, T): key - query
    if not signed:
        offsets = np.abs(offsets)
    low = int(offsets.min())
    bins = (offsets - low).ravel()
    count = int(offsets.max()) - low + 1
    mass = np.stack([np.bincount(bins, weights=head.ravel(), minlength=count) for head in attention])  # (H, K)
    return np.arange(low, low + count), (mass / attention.shape[1]).astype(np.float32)


def distance_unavailable(trace: EncoderTrace) -> str | None:
    """Why the distance view cannot show a long trace (its attention kept lazily: the view reads a layer's whole
    (H, T, T) at once), or None."""
    if not isinstance(trace.attention, LazyAttention):
        return None
    return (f"The attention distance view reads a layer's whole attention at once; this input has "
            f"{trace.num_tokens:,} tokens, kept a piece at a time. Set Max tokens to "
            f"{FULL_TOKENS} or fewer, or read distances in the heatmap.")


def build_distance_histogram(
    trace: EncoderTrace, layer: int = 0, *, layer_mean: bool = False, signed: bool = False,
    colorscale: str = DEFAULT_SCALE, hide_special: bool = False, renormalize: bool = True,
) -> go.Figure:
    """Each head of ``layer`` (or the mean over layers) as one row: its attention mass by query-key distance.

    Returns:
        A figure whose heatmap ``z`` (H, K) float32 is ``attention_by_distance`` (rows: heads, columns: distances
        ``x``); row labels give each head's mean distance (of |key - query|, in tokens).
    """
    check_colorscale(colorscale)
    per_head, what = layer_heads(trace, layer, layer_mean)
    stack, shown, hidden = shown_attention(trace, per_head, hide_special, renormalize)  # (H, T', T')
    notes = ["signed: negative = keys before the query" if signed else "distance = |key - query| in tokens", *hidden]
    distances, mass = attention_by_distance(stack, shown, signed)
    _, absolute = attention_by_distance(stack, shown, signed=False)
    mean = absolute @ np.arange(absolute.shape[1], dtype=np.float32)  # (H,) mean |distance| per head
    rows = [f"{head_label(trace, h)} · {mean[h]:.1f}" for h in range(trace.num_heads)]

    fig = new_figure(f"{what.capitalize()}: attention by query-key distance, all {trace.num_heads} heads",
                     width=int(max(560, distances.size * MIN_CELL_PIXELS + 260)),
                     height=int(trace.num_heads * ROW_PIXELS + 190))
    fig.update_layout(
        title=dict(subtitle=dict(text=" · ".join(notes) + " · row label: mean distance")),
        margin=dict(l=110, r=90, t=90, b=60),
        xaxis=dict(title=dict(text="key - query (tokens)" if signed else "distance (tokens)"), showgrid=False,
                   zeroline=False),
        yaxis=dict(autorange="reversed", showgrid=False, zeroline=False),
    )
    fig.add_trace(go.Heatmap(
        z=mass, x=distances.astype(np.int32), y=rows, colorscale=colorscale, zmin=0.0, name="distance",
        colorbar=dict(thickness=12, title=dict(text="mass")),
        hovertemplate="%{y}: distance %{x}: %{z:.4f}<extra></extra>",
    ))
    return fig
