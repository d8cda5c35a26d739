"""Figure builders: pure functions ``build_*(trace, ...) -> plotly.graph_objects.Figure`` (no Streamlit, no
TensorFlow), one registry ``VIEWS`` of them by name, and ``build_view`` to build any view from settings: the app and
the command line (``python -m viz.export``) go through the same path.

Example:
    >>> fig = build_view(trace, "heatmap", layer=2, head=5)  # doctest: +SKIP
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass

import plotly.graph_objects as go

from encoder.trace import EncoderTrace
from viz.attention import build_attention_heatmap, build_head_grid, build_head_lines, build_model_view
from viz.positional import build_position_similarity, build_positional_dimensions, build_positional_heatmap
from viz.tokens import build_token_view


@dataclass(frozen=True)
class View:
    """A figure the app and the CLI can make: its builder and a one-line description."""

    name: str
    builder: Callable[..., go.Figure]
    description: str

    @property
    def parameters(self) -> tuple[str, ...]:
        """The settings the builder takes (every parameter after ``trace``)."""
        return tuple(list(inspect.signature(self.builder).parameters)[1:])


VIEWS: dict[str, View] = {
    view.name: view
    for view in (
        View("heatmap", build_attention_heatmap, "one head (or a mean/max of heads) as a query x key heatmap"),
        View("head-grid", build_head_grid, "all heads of one layer as small multiples, one colour scale"),
        View("model", build_model_view, "every layer x head as a thumbnail, one light image"),
        View("tokens", build_token_view, "the sentence, each token shaded by attention from/to a query token"),
        View("lines", build_head_lines, "BertViz-style lines from query tokens to key tokens, one colour per head"),
        View("positional", build_positional_heatmap, "the positional-encoding table, this text's rows outlined"),
        View("position-similarity", build_position_similarity, "cosine similarity between positions"),
        View("positional-dimensions", build_positional_dimensions, "chosen positional dimensions as lines"),
    )
}


def build_view(trace: EncoderTrace, view: str, **settings) -> go.Figure:
    """Build the view named ``view`` with ``settings`` (keyword arguments of its builder).

    Raises:
        ValueError: unknown view, a setting the view does not take, or a bad setting value.
    """
    if view not in VIEWS:
        raise ValueError(f"view {view!r} is not one of {', '.join(VIEWS)}")
    accepted = VIEWS[view].parameters
    unknown = sorted(set(settings) - set(accepted))
    if unknown:
        raise ValueError(f"view {view!r} does not take {', '.join(unknown)}; it takes {', '.join(accepted)}")
    return VIEWS[view].builder(trace, **settings)


__all__ = [
    "VIEWS",
    "View",
    "build_attention_heatmap",
    "build_head_grid",
    "build_head_lines",
    "build_model_view",
    "build_position_similarity",
    "build_positional_dimensions",
    "build_positional_heatmap",
    "build_token_view",
    "build_view",
]
