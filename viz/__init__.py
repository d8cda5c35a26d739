"""Figures: pure builders ``build_*(trace, ...) -> plotly.graph_objects.Figure`` (no Streamlit, no TensorFlow) and
the registry of every view and analysis (``viz.registry``), read by the app and the command line alike.

Modules: shared by every figure: ``validation`` (settings checked, ``ViewError`` naming the value and the range),
``selection`` (which layer, heads and tokens a view shows; downsampling), ``layout`` (colours, token labels, the base
layout), ``clicks`` (the click contract and its invisible markers). Views of one trace: ``attention`` (heatmap, head
grid), ``model_view``, ``head_lines``, ``tokens``, ``distance``, ``positional``, ``next_token`` (a decoder's surprisal
and candidates); ``scrub`` (the head slider inside a figure). ``analysis_figures`` (figures of analysis results;
``lens`` and the other per-topic modules), ``options`` (settings declared once), ``registry``
(``VIEWS``, ``ANALYSES``), ``render`` (PNG/SVG/PDF via kaleido, offline HTML), ``training`` (the tutorial model's
training curve).

Example:
    >>> fig = build_view(trace, "heatmap", layer=2, head=5)  # doctest: +SKIP
"""

from __future__ import annotations

from viz.attention import build_attention_heatmap, build_head_grid
from viz.distance import build_distance_histogram
from viz.head_lines import build_head_lines
from viz.model_view import build_model_view
from viz.positional import build_position_similarity, build_positional_dimensions, build_positional_heatmap
from viz.registry import ANALYSES, VIEWS, Analysis, View, build_view
from viz.tokens import build_token_view

__all__ = [
    "ANALYSES",
    "VIEWS",
    "Analysis",
    "View",
    "build_attention_heatmap",
    "build_distance_histogram",
    "build_head_grid",
    "build_head_lines",
    "build_model_view",
    "build_position_similarity",
    "build_positional_dimensions",
    "build_positional_heatmap",
    "build_token_view",
    "build_view",
]
