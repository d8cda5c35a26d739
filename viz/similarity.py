"""Figure of ``analysis.similarity``: why two texts are similar, as an A-tokens × B-tokens heatmap of each token
pair's share of the cosine (pure: returns a ``go.Figure``, never shows it)."""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go

from analysis.similarity import SimilaritySplit
from viz.analysis_figures import token_heatmap
from viz.common import DEFAULT_DIVERGING, check_colorscale


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
