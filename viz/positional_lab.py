"""The positional lab's figures: position vs content share per head, a relative bias by signed distance, and what
rotary positions do (frequencies, long-range decay). Pure builders over ``analysis.positional`` results."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from analysis.positional import PositionShare, RopeDecay
from viz.analysis_figures import Figures, Options, build_head_map, style
from viz.layout import base_layout

if TYPE_CHECKING:
    from encoder.trace import EncoderTrace

EDGE_COLOR = "#bbbbbb"  # bucket boundaries
REACH_COLOR = "#d62728"  # this text's longest distance; the local window
THETA_COLORS = {"global": "#1f77b4", "local": "#ff7f0e"}
GRID = dict(showgrid=True, gridcolor="#eee")


def build_position_share_map(result: PositionShare, colorscale: str = "Purples") -> go.Figure:
    """The share of each head's logit variance that comes from position, layers x heads, 0 to 1 (clickable)."""
    position = " + ".join(result.position_terms) or "none"
    content = " + ".join(result.content_terms)
    subtitle = (f"V(position) / (V(content) + V(position)): variance over each query's visible keys, averaged over "
                f"queries. Position = {position}; content = {content}. 1: only position moves the logits.")
    return build_head_map(result.share, "Position vs content share of the attention logits", subtitle,
                          "position share", colorscale=colorscale, zmin=0.0, zmax=1.0)


def build_relative_bias(bias: dict[str, np.ndarray], tokens: int | None = None,
                        title: str = "Relative attention bias by signed distance",
                        value: str = "bias added to the logit") -> go.Figure:
    """One line per head: the bias added to the logit (or another ``value``) against signed distance key - query;
    bucket boundaries as grey lines, and +-(tokens - 1), the farthest this text reaches, in red."""
    distances, values = bias["distances"], bias["bias_by_distance"]  # (N,), (H, N)
    fig = go.Figure(layout=base_layout(title, 900, 480))
    fig.update_layout(xaxis=dict(title=dict(text="key position - query position (tokens)"), **GRID),
                      yaxis=dict(title=dict(text=value), **GRID),
                      legend=dict(title=dict(text="head")), margin=dict(l=70, r=30, b=60))
    for edge in bias["bucket_edges"]:
        fig.add_vline(x=float(edge), line=dict(color=EDGE_COLOR, width=1, dash="dot"))
    if tokens and tokens > 1:
        for reach in (1 - tokens, tokens - 1):
            fig.add_vline(x=reach, line=dict(color=REACH_COLOR, width=1, dash="dash"))
    for head, line in enumerate(values):
        fig.add_trace(go.Scatter(x=distances, y=line, mode="lines", name=str(head), line=dict(width=1.5),
                                 hovertemplate=f"head {head}, distance %{{x}}: %{{y:.4f}}<extra></extra>"))
    return fig


def build_rope_view(decay: RopeDecay) -> go.Figure:
    """Left: each dimension pair's rotation per token (log scale), per theta. Right: the expected q . k of a
    content pair against distance (solid) and one fixed random pair (dotted), 1 at distance 0; the local
    layers' reach (the farthest key they see) dashed."""
    fig = make_subplots(rows=1, cols=2, column_widths=[0.4, 0.6], horizontal_spacing=0.1, subplot_titles=(
        "rotation per token of each dimension pair", "q . R(distance) q, relative to distance 0"))
    fig.update_layout(base_layout("Rotary positions: frequencies and long-range decay", 1000, 460),
                      legend=dict(orientation="h", y=-0.2), margin=dict(l=70, r=30, b=90))
    for name, freq in decay.inv_freq.items():
        color = THETA_COLORS.get(name)
        fig.add_trace(go.Scatter(x=np.arange(freq.size), y=freq, mode="lines+markers", name=f"{name}: frequency",
                                 line=dict(color=color), marker=dict(size=4),
                                 hovertemplate=f"{name}, pair %{{x}}: %{{y:.3g}} rad/token<extra></extra>"),
                      row=1, col=1)
        fig.add_trace(go.Scatter(x=decay.distances, y=decay.expected[name], mode="lines", name=f"{name}: expected",
                                 line=dict(color=color, width=2),
                                 hovertemplate=f"{name}, distance %{{x}}: %{{y:.3f}}<extra></extra>"), row=1, col=2)
        fig.add_trace(go.Scatter(x=decay.distances, y=decay.sample[name], mode="lines", name=f"{name}: one pair",
                                 line=dict(color=color, width=1, dash="dot"),
                                 hovertemplate=f"{name}, one pair, distance %{{x}}: %{{y:.3f}}<extra></extra>"),
                      row=1, col=2)
    if decay.local_reach:
        fig.add_vline(x=decay.local_reach, line=dict(color=REACH_COLOR, width=1, dash="dash"), row=1, col=2)
    fig.update_xaxes(title_text="dimension pair i", row=1, col=1, **GRID)
    fig.update_yaxes(title_text="radians per token", type="log", row=1, col=1, **GRID)
    fig.update_xaxes(title_text="distance (tokens)", row=1, col=2, **GRID)
    fig.update_yaxes(title_text="relative q . k", row=1, col=2, **GRID)
    return fig


def position_share_figures(result: PositionShare, trace: EncoderTrace, options: Options) -> Figures:
    return [("position-share", build_position_share_map(result, **style(options)))]


def relative_bias_figures(result: dict[str, np.ndarray], trace: EncoderTrace, options: Options) -> Figures:
    return [("relative-bias", build_relative_bias(result, trace.num_tokens))]


def term_by_distance_figures(result: dict[str, np.ndarray], trace: EncoderTrace, options: Options) -> Figures:
    title = f"Positional logit term by signed distance, layer {int(result['layer'][0])}"
    return [("position-by-distance", build_relative_bias(result, trace.num_tokens, title,
                                                         "mean positional term (this text)"))]


def rope_figures(result: RopeDecay, trace: EncoderTrace, options: Options) -> Figures:
    return [("rope", build_rope_view(result))]
