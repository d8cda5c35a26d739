"""The attention-distance view: how far each head of a layer looks, as attention mass by query-key distance.

A head that attends to the previous token puts its mass at distance 1 (-1 signed), a positional head at a fixed
offset, a broad head spreads it; the mean distance per head (Vig & Belinkov, 2019) sums it up in one number.
"""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go

from encoder.trace import EncoderTrace
from viz.layout import DEFAULT_SCALE, new_figure
from viz.long_inputs import CHUNK_BYTES, is_long, long_mask_note, selected_rows, shown_rows, shown_tokens
from viz.selection import head_label, layer_heads, layer_name, shown_attention
from viz.validation import check_colorscale

ROW_PIXELS = 26  # screen pixels per head row
MIN_CELL_PIXELS = 6  # the plot is at least this wide per distance bin
MAX_WIDTH = 6400  # pixels: a long text's thousands of distances share this width


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
    low, count = distance_bins(positions, signed)
    mass = np.stack([distance_mass(head, positions, positions, signed, low, count) for head in attention])  # (H, K)
    return np.arange(low, low + count), (mass / attention.shape[1]).astype(np.float32)


def distance_bins(positions: np.ndarray, signed: bool) -> tuple[int, int]:
    """(lowest distance, number of distances) between tokens at ``positions`` (T,) (sorted)."""
    span = int(positions[-1] - positions[0])
    return (-span, 2 * span + 1) if signed else (0, span + 1)


def distance_mass(weights: np.ndarray, queries: np.ndarray, keys: np.ndarray, signed: bool, low: int, count: int
                  ) -> np.ndarray:
    """(count,) float64: the summed ``weights`` (R, C) of queries at positions ``queries`` (R,) on keys at
    ``keys`` (C,) by key - query distance (its absolute value unless ``signed``), distance ``low`` first."""
    offsets = keys[None, :] - queries[:, None]  # (R, C): key - query
    if not signed:
        offsets = np.abs(offsets)
    return np.bincount((offsets - low).ravel(), weights=weights.ravel(), minlength=count)


def long_distances(trace: EncoderTrace, layer: int, layer_mean: bool, signed: bool, hide_special: bool,
                   renormalize: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
    """``attention_by_distance`` (signed or not) and the unsigned mass of every head of a long trace, read one
    head and a chunk of query rows at a time: (distances (K,), mass (H, K), absolute mass (H, K'), notes)."""
    queries, keys, renormalize_over, notes = shown_tokens(trace, hide_special, renormalize)
    low, count = distance_bins(keys, signed)
    mass, absolute = np.zeros((trace.num_heads, count)), np.zeros((trace.num_heads, int(keys[-1] - keys[0]) + 1))
    step = max(1, CHUNK_BYTES // (8 * keys.size))  # (R, C) int64 offsets
    for head in range(trace.num_heads):
        def weights_of(begin: int, end: int, head: int = head) -> np.ndarray:
            return selected_rows(trace, layer, [head], None, layer_mean, begin, end)

        for first in range(0, queries.size, step):
            rows = queries[first:first + step]
            weights, _ = shown_rows(trace, rows, keys, weights_of, lambda begin, end: None, renormalize_over)
            mass[head] += distance_mass(weights, rows, keys, signed, low, count)
            absolute[head] += distance_mass(weights, rows, keys, False, 0, absolute.shape[1])
    mask = long_mask_note(trace, layer, layer_mean)
    notes.extend([mask] if mask else [])
    return (np.arange(low, low + count), (mass / queries.size).astype(np.float32),
            (absolute / queries.size).astype(np.float32), notes)


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
    notes = ["signed: negative = keys before the query" if signed else "distance = |key - query| in tokens"]
    if is_long(trace):  # one head and a chunk of rows at a time
        what = layer_name(trace, layer, layer_mean)
        distances, mass, absolute, hidden = long_distances(trace, layer, layer_mean, signed, hide_special,
                                                           renormalize)
    else:
        per_head, what = layer_heads(trace, layer, layer_mean)
        stack, shown, hidden = shown_attention(trace, per_head, hide_special, renormalize)  # (H, T', T')
        distances, mass = attention_by_distance(stack, shown, signed)
        _, absolute = attention_by_distance(stack, shown, signed=False)
    notes += hidden
    mean = absolute @ np.arange(absolute.shape[1], dtype=np.float32)  # (H,) mean |distance| per head
    rows = [f"{head_label(trace, h)} · {mean[h]:.1f}" for h in range(trace.num_heads)]

    fig = new_figure(f"{what.capitalize()}: attention by query-key distance, all {trace.num_heads} heads",
                     width=int(min(MAX_WIDTH, max(560, distances.size * MIN_CELL_PIXELS + 260))),
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
