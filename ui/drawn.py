"""What the app derives from a figure to draw it, made once per figure object (``per_figure``): figures are cached
and shared by every session (``ui.cache.get_figure``), so a figure shown again, in any session, costs no second
derivation. One such derivation is the figure as ``st.plotly_chart`` reads it (``plotly_figure``); the head
slider's split is another (``ui.scrub.scrub_chart``).
"""

from __future__ import annotations

import json
import weakref
from collections.abc import Callable, Hashable
from typing import Any, TypeVar

import plotly.graph_objects as go
import plotly.io as pio

T = TypeVar("T")
_MADE: dict[tuple[Hashable, int], Any] = {}  # (kind, id(figure)) -> what was made of it, while that figure lives


def per_figure(kind: Hashable, fig: go.Figure, make: Callable[[go.Figure], T]) -> T:
    """``make(fig)``, once per ``kind`` and figure object while ``fig`` lives (two threads may both make it the
    first time; either result serves)."""
    key = (kind, id(fig))
    made = _MADE.get(key)
    if made is None:
        made = _MADE[key] = make(fig)
        weakref.finalize(fig, _MADE.pop, key, None)
    return made


class SerialisedFigure(go.Figure):
    """A figure as ``st.plotly_chart`` reads it: its plain JSON (``spec``: typed arrays already base64), made once.

    Streamlit asks the figure it is given for ``to_dict()`` at every run (a deep copy of every trace, and typed
    arrays encoded again) before encoding that dict: ~7 ms of a change's ~20 ms of server CPU on MiniLM's figures.
    This figure's ``to_dict()`` is the spec itself, which gives the same JSON. Only ``st.plotly_chart`` gets it;
    everything else (clicks, downloads) reads the figure it was made from.
    """

    def __init__(self, figure: go.Figure) -> None:
        super().__init__()
        self._spec = json.loads(pio.to_json(figure, validate=False))

    @property
    def spec(self) -> dict:
        return self._spec

    def to_dict(self) -> dict:
        return self._spec


def plotly_figure(fig: go.Figure) -> SerialisedFigure:
    """``fig`` as ``st.plotly_chart`` reads it (``SerialisedFigure``), made once per figure object."""
    return per_figure("plotly_chart", fig, SerialisedFigure)
