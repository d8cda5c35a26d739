"""Figures of ``analysis.gradients``: attention x gradient as a token x token heatmap of one layer (head mean), and
input x gradient or integrated gradients as one bar per token; diverging scales centred on 0 (pure: each returns a
``go.Figure``, never shows it)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import plotly.graph_objects as go

from analysis.gradients import AttentionGradient, TokenAttribution
from analysis.inputs import chosen_layer
from viz.analysis_figures import MIN_WIDTH, Figures, Options, _reading_guide, style, token_heatmap
from viz.layout import DEFAULT_DIVERGING, base_layout, label_margin, token_ticks
from viz.validation import check_colorscale, check_index

if TYPE_CHECKING:
    from encoder.trace import EncoderTrace

TITLES = {"input-gradient": "Input × gradient", "integrated-gradients": "Integrated gradients"}
BAR_WIDTH = 28.0  # pixels per token of a bar chart of up to BAR_AXIS / BAR_WIDTH tokens
BAR_AXIS = 1000.0  # longer texts share this many pixels
BAR_SIDES = 160  # a bar chart's width beyond its axis
BAR_HEIGHT = 300  # a panel's height without its tick labels
GUIDE_GAP = 16  # pixels between the reading guide and the bars


def _bound(values: np.ndarray) -> float:
    return max(float(np.abs(values).max()) if values.size else 0.0, 1e-12)


def completeness_text(result: TokenAttribution) -> str:
    """"f(x) 0.9913, f(baseline) 0.5806, sum 0.4108: completeness error 0.02%" (integrated gradients; the sum
    should be f(x) - f(baseline))."""
    return f"{path_values_text(result)}: {completeness_error_text(result)}"


def path_values_text(result: TokenAttribution) -> str:
    """"f(x) 0.9913, f(baseline) 0.5806, sum 0.4108"."""
    return f"f(x) {result.value:.4f}, f(baseline) {result.baseline_value:.4f}, sum {result.values.sum():.4f}"


def completeness_error_text(result: TokenAttribution) -> str:
    """"completeness error 0.02%", or why it is undefined."""
    error = result.completeness_error
    shown = "undefined (f(x) = f(baseline))" if error is None or np.isnan(error) else f"{100 * error:.2g}%"
    return f"completeness error {shown}"


def build_attention_gradient_heatmap(
    result: AttentionGradient, tokens: Sequence[str], layer: int = -1, colorscale: str = DEFAULT_DIVERGING
) -> go.Figure:
    """Layer ``layer``'s attention x gradient, alpha_ij df/dalpha_ij averaged over heads, tokens on both axes."""
    check_colorscale(colorscale)
    values = np.asarray(result.values)
    if values.ndim != 4 or values.shape[2:] != (len(tokens), len(tokens)):
        raise ValueError(f"attention x gradient must be (layers, heads, T, T) for {len(tokens)} tokens, got shape "
                         f"{values.shape}")
    layer = check_index(layer % values.shape[0] if layer < 0 else layer, values.shape[0], "layer",
                        "attention x gradient")
    mean = result.head_mean(layer)
    bound = _bound(mean)
    return token_heatmap(
        mean, tokens, tokens, f"Attention × gradient of {result.objective} in layer {layer} (head mean)",
        f"Cell (i, j): α_ij ∂f/∂α_ij, how much f would change per unit relative change of the weight position i "
        f"gives token j, averaged over heads; f = {result.objective} = {result.value:.4g}. Red raises f, blue "
        f"lowers it.", colorscale, -bound, bound, "attn × grad")


def bar_axis_pixels(count: int) -> float:
    """Pixels of a token bar chart's x axis for ``count`` tokens."""
    return min(BAR_AXIS, BAR_WIDTH * max(count, 1))


def add_token_bars(fig: go.Figure, values: np.ndarray, tokens: Sequence[str], colorscale: str, bound: float,
                   name: str = "attribution", row: int | None = None, col: int | None = None) -> int:
    """One bar per token (x: token index, labelled with the tokens, thinned when they cannot all fit), coloured on
    ``colorscale`` from -bound to bound; returns the pixels its tick labels need below the axis."""
    positions = np.arange(len(tokens))
    values = np.asarray(values, np.float64)
    fig.add_trace(go.Bar(x=positions, y=values, name=name, customdata=list(tokens),
                         marker=dict(color=values, colorscale=colorscale, cmin=-bound, cmax=bound),
                         hovertemplate="%{x} %{customdata}: %{y:.5f}<extra></extra>"), row=row, col=col)
    axis, size = token_ticks(tokens, positions, bar_axis_pixels(len(tokens)))
    fig.update_xaxes(**axis, tickangle=-90, row=row, col=col)
    fig.update_yaxes(zeroline=True, zerolinecolor="#888", row=row, col=col)
    return label_margin(axis["ticktext"], size)


def build_token_attribution(
    result: TokenAttribution, tokens: Sequence[str], colorscale: str = DEFAULT_DIVERGING
) -> go.Figure:
    """One bar per token: input x gradient or integrated gradients (``result.method``); the title of integrated
    gradients states f(x), f(baseline) and the completeness error."""
    check_colorscale(colorscale)
    if result.method not in TITLES:
        raise ValueError(f"method must be one of {', '.join(TITLES)}, got {result.method!r}")
    values = np.asarray(result.values)
    if values.shape != (len(tokens),):
        raise ValueError(f"attributions must be ({len(tokens)},) for the tokens, got shape {values.shape}")
    if result.method == "integrated-gradients":
        # the error in the title; the values it comes from open the guide, which wraps (a long title would be cut)
        title = f"Integrated gradients of {result.objective}: {completeness_error_text(result)}"
        guide = (f"{path_values_text(result)}. Token j: Σ_d (x − x')_jd × the mean gradient on the straight path "
                 f"from the baseline x' "
                 f"({result.baseline}) to the input x, {result.steps} Gauss-Legendre points"
                 f"{f' on {result.panels} stretches' if (result.panels or 1) > 1 else ''}; the bars sum to "
                 f"f(x) − f(baseline) up to the completeness error. Red raises f, blue lowers it.")
    else:
        title = f"Input × gradient of {result.objective} (f = {result.value:.4f})"
        guide = ("Token j: Σ_d x_jd ∂f/∂x_jd, its input embedding times the gradient of f (a first-order share of "
                 "f). Red raises f, blue lowers it.")
    fig = go.Figure(layout=base_layout(title, int(max(MIN_WIDTH, bar_axis_pixels(len(tokens)) + BAR_SIDES)),
                                       BAR_HEIGHT))
    bottom = add_token_bars(fig, values, tokens, colorscale, _bound(values))
    fig.update_layout(showlegend=False, margin=dict(l=70, r=30, b=bottom + 40),
                      height=BAR_HEIGHT + bottom, yaxis_title="attribution")
    _reading_guide(fig, guide)
    fig.update_layout(margin=dict(t=fig.layout.margin.t + GUIDE_GAP), height=fig.layout.height + GUIDE_GAP)
    return fig


def attention_gradient_figures(result: AttentionGradient, trace: EncoderTrace, options: Options) -> Figures:
    return [("attention-gradient", build_attention_gradient_heatmap(
        result, trace.readable_tokens, chosen_layer(trace, options), **style(options)))]


def token_attribution_figures(result: TokenAttribution, trace: EncoderTrace, options: Options) -> Figures:
    """Input x gradient or integrated gradients (named by ``result.method``) as one bar per token."""
    return [(result.method, build_token_attribution(result, trace.readable_tokens, **style(options)))]
