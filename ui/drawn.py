"""What the app derives from a figure to draw it, made once per figure object (``per_figure``): figures are cached
and shared by every session (``ui.cache.get_figure``), so a figure shown again, in any session, costs no second
derivation. One such derivation is the figure as ``st.plotly_chart`` reads it (``plotly_figure``); the head
slider's split is another (``ui.scrub.scrub_chart``). Both start from the figure's plain JSON (``plain_text``).
"""

from __future__ import annotations

import json
import weakref
from collections.abc import Callable, Hashable
from typing import Any, TypeVar

import plotly.graph_objects as go
import plotly.io as pio
from _plotly_utils.utils import is_homogeneous_array, is_skipped_key, to_typed_array_spec

T = TypeVar("T")
_SCALARS = (str, int, float, type(None))  # JSON's scalars (bool is an int): no array, nothing inside
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


def figure_properties(fig: go.Figure) -> dict:
    """``fig``'s own properties as a figure dict ("data", "layout", "frames" when it has some), read in place: not
    copied, arrays as they are held (NumPy), so never to be changed."""
    props = {"data": fig._data, "layout": fig._layout}
    if fig.frames:
        props["frames"] = [frame.to_plotly_json() for frame in fig.frames]
    return props


def plain_text(props: dict) -> str:
    """A figure dict of properties (``figure_properties``) as Plotly's JSON text, exactly ``pio.to_json`` of the
    figure, made without ``Figure.to_dict``'s deep copy of every trace and of the layout (the head slider's steps: ~70
    of them): its arrays converted to typed arrays as ``to_dict`` does (``_typed``), then encoded."""
    return pio.to_json(_typed(props), validate=False)


def _typed(value: Any) -> Any:
    """``value`` (a figure's properties: dicts, lists, arrays, scalars) with every array under a dict key turned into
    Plotly's typed array, as ``plotly``'s ``convert_to_base64`` does in place on a copy; new dicts and lists, the
    figure's own left as they are (scalars, the most numerous, pass untouched)."""
    if isinstance(value, dict):
        return {key: item if isinstance(item, _SCALARS) or is_skipped_key(key) else
                to_typed_array_spec(item) if is_homogeneous_array(item) else _typed(item)
                for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [item if isinstance(item, _SCALARS) else _typed(item) for item in value]
    return value


class SerialisedFigure(go.Figure):
    """A figure as ``st.plotly_chart`` reads it: its plain JSON (``spec``: typed arrays already base64), made once.

    Streamlit asks the figure it is given for ``to_dict()`` at every run (a deep copy of every trace, and typed
    arrays encoded again) before encoding that dict: ~7 ms of a change's ~20 ms of server CPU on MiniLM's figures.
    This figure's ``to_dict()`` is the spec itself, which gives the same JSON. Only ``st.plotly_chart`` gets it;
    everything else (clicks, downloads) reads the figure it was made from.

    A kept figure (``plotly_figure``, ``ui.scrub.scrub_chart``) holds its spec as JSON text (``text``), read at each
    use (~0.1 ms for a 15-token view): as dicts and lists, every kept figure's spec (its head slider's ~70 empty steps
    among them) was walked by each full collection of the garbage collector, with the GIL held.
    """

    def __init__(self, spec: dict | None = None, *, text: str | None = None) -> None:
        # Plotly's own state is left unmade: ``st.plotly_chart`` reads the figure only through ``to_dict`` (Plotly's
        # ``return_figure_from_figure_or_data``). Made, it was a Layout, a template and their validators, linked
        # to the figure both ways: a reference cycle per change, which held the figure's spec (~200 lists and
        # dicts) until a full collection of the garbage collector found it (ten a second under 32 visitors).
        if (spec is None) == (text is None):
            raise ValueError("a SerialisedFigure holds either a spec or its text")
        self._spec, self._text = spec, text

    @property
    def spec(self) -> dict:
        """The figure's plain JSON (a new dict at each read when the figure holds its text)."""
        return self._spec if self._spec is not None else json.loads(self._text)

    @property
    def text(self) -> str:
        """The figure's JSON text (made at each read when the figure holds a spec)."""
        return self._text if self._text is not None else json.dumps(self._spec)

    def to_dict(self) -> dict:
        return self.spec

    to_plotly_json = to_dict

    def __repr__(self) -> str:
        return f"SerialisedFigure({self.text[:60]}…)"


def plotly_figure(fig: go.Figure) -> SerialisedFigure:
    """``fig`` as ``st.plotly_chart`` reads it (``SerialisedFigure``), made once per figure object."""
    return per_figure("plotly_chart", fig,
                      lambda figure: SerialisedFigure(text=plain_text(figure_properties(figure))))
