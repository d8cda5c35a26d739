"""Figures of ``analysis.similarity``: why two texts are similar, as an A-tokens × B-tokens heatmap of each token
pair's share of the cosine, and the integrated gradients of the cosine over each text's tokens (pure: each returns
a ``go.Figure``, never shows it)."""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from analysis.similarity import SimilaritySplit
from viz.analysis_figures import MIN_WIDTH, Figures, Options, _reading_guide, style, token_heatmap
from viz.gradients import BAR_HEIGHT, BAR_SIDES, add_token_bars, bar_axis_pixels, completeness_text
from viz.layout import DEFAULT_DIVERGING, base_layout
from viz.validation import check_colorscale

SUBPLOT_TITLE = 40  # pixels above the panels for their titles, below the reading guide
TITLE_CHARACTER = 9  # pixels per character of a panel title (16 px font)


def build_similarity_heatmap(split: SimilaritySplit, colorscale: str = DEFAULT_DIVERGING) -> go.Figure:
    """Token pair (i, j)'s contribution to the cosine of A's and B's sentence embeddings: A's tokens down, B's
    across, a diverging scale centred on 0; the title shows that the cells sum to the model's own cosine."""
    check_colorscale(colorscale)
    values = np.asarray(split.contributions)
    if values.shape != (len(split.readable_a), len(split.readable_b)):
        raise ValueError(f"contributions must be (n, m) = ({len(split.readable_a)}, {len(split.readable_b)}) for "
                         f"the tokens of A and B, got shape {values.shape}")
    bound = max(float(np.abs(values).max()), 1e-9)
    fig = token_heatmap(
        values, split.readable_a, split.readable_b,
        f"Why similar? Cells sum to {values.sum():.4f} = the model's cosine {split.model_cosine:.4f}",
        "Cell (i, j): token i of A and token j of B's share of the cosine of the mean-pooled embeddings, "
        "(h_i · g_j) / (n m ‖a‖ ‖b‖). Red pairs pull the texts together, blue pairs push them apart.",
        colorscale, -bound, bound, "contribution", "text B token", "text A token",
    )
    fig.update_traces(hovertemplate="A %{y} · B %{x}: %{z:.5f}<extra></extra>")
    return fig


def build_similarity_gradients(split: SimilaritySplit, colorscale: str = DEFAULT_DIVERGING) -> go.Figure:
    """Integrated gradients of the cosine over each text's tokens (``split.gradients_a`` / ``gradients_b``): two
    bar panels, A above B, one diverging colour scale centred on 0; each panel's title states f(x), f(baseline),
    what its bars sum to and the completeness error."""
    check_colorscale(colorscale)
    sides = (("A", split.gradients_a, split.readable_a), ("B", split.gradients_b, split.readable_b))
    for name, result, tokens in sides:
        if result is None:
            raise ValueError(f"the split has no integrated gradients for text {name} (use explain_similarity)")
        if np.shape(result.values) != (len(tokens),):
            raise ValueError(f"text {name}'s attributions must be ({len(tokens)},), got {np.shape(result.values)}")
    bound = max(max(float(np.abs(result.values).max()) for _, result, _ in sides), 1e-12)
    titles = [f"Text {name}: {completeness_text(result)}" for name, result, _ in sides]
    longest = max(len(split.readable_a), len(split.readable_b))
    width = int(max(MIN_WIDTH, bar_axis_pixels(longest) + BAR_SIDES,
                    TITLE_CHARACTER * max(map(len, titles)) + BAR_SIDES))
    fig = make_subplots(rows=2, cols=1, subplot_titles=titles, vertical_spacing=0.3)
    fig.update_layout(base_layout(f"Why similar? Integrated gradients of cos(A, B) = {split.cosine:.4f}", width),
                      showlegend=False)
    bottom = max(add_token_bars(fig, result.values, tokens, colorscale, bound, f"text {name}", row, 1)
                 for row, (name, result, tokens) in enumerate(sides, start=1))
    fig.update_yaxes(title_text="attribution")
    fig.update_layout(height=2 * (BAR_HEIGHT + bottom), margin=dict(l=70, r=30, b=bottom + 20))
    _reading_guide(fig, "Each text's tokens, the other text's embedding held fixed: Σ_d (x − x')_jd × the mean "
                        "gradient of the cosine on the straight path from the baseline x' (every non-special token "
                        "replaced by the pad token) to the text. The bars sum to cos(A, B) − cos(baseline, other). "
                        "Red tokens make the texts more similar, blue less.")
    fig.update_layout(margin=dict(t=fig.layout.margin.t + SUBPLOT_TITLE))
    return fig


def similarity_figures(result: SimilaritySplit, trace, options: Options) -> Figures:
    """The token-pair heatmap, then the integrated gradients of the cosine."""
    return [("similarity", build_similarity_heatmap(result, **style(options))),
            ("similarity-gradients", build_similarity_gradients(result, **style(options)))]
