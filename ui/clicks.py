"""Chart clicks move the controls, decoded in one place from the click spec the figure itself carries.

A figure marks its clickable traces with ``viz.clicks.click_meta`` (which values each point's ``customdata``
holds); ``on_select`` reads the spec and sets the controls: a "query" picks the query token (with a "key", the
heatmap cell is outlined), a "layer" and "head" open that head in the Heatmap tab.
"""

from __future__ import annotations

from collections.abc import Sequence

import plotly.graph_objects as go
import streamlit as st

from encoder.trace import EncoderTrace
from viz.clicks import click_spec
from viz.kinds import CrossTrace, query_side

SELECTED_CELL = "selected_cell"  # session state: the clicked heatmap cell (query, key)


def on_select(fig: go.Figure, chart_key: str, tokens: Sequence[str]):
    """The ``on_select`` callback for ``fig`` shown under ``chart_key``, or "ignore" when nothing in it clicks."""
    spec = click_spec(fig)
    if not spec:
        return "ignore"
    return lambda: apply_click(st.session_state.get(chart_key) or {}, spec, tokens)


def clicked_values(event: dict, spec: dict[int, tuple[str, ...]]) -> dict[str, int]:
    """The named values of the first clicked point of a clickable trace (empty when none)."""
    for point in event.get("selection", {}).get("points", []):
        fields = spec.get(point.get("curve_number"))
        custom = point.get("customdata")
        if fields and custom is not None:
            if isinstance(custom, dict):  # typed-array customdata comes back as {"0": ..., "1": ...}
                custom = [custom[k] for k in sorted(custom, key=int)]
            elif not isinstance(custom, list):
                custom = [custom]
            return {name: int(value) for name, value in zip(fields, custom)}
    return {}


def apply_click(event: dict, spec: dict[int, tuple[str, ...]], tokens: Sequence[str]) -> None:
    """Move the controls to what was clicked."""
    values = clicked_values(event, spec)
    if "layer" in values and "head" in values:
        st.session_state.update(layer=values["layer"], head=values["head"], head_mode="one head", view="Heatmap",
                                layer_mean=False)
    if "query" in values and 0 <= values["query"] < len(tokens):
        query = values["query"]
        st.session_state["query"] = f"{query}: {tokens[query]}"
        if "key" in values:
            st.session_state[SELECTED_CELL] = (query, values["key"])


def selected_cell(trace: EncoderTrace | CrossTrace, query: int) -> tuple[int, int] | None:
    """The clicked heatmap cell, while it still belongs to this trace (its queries and keys: ``viz.kinds``) and the
    query token it was clicked on."""
    cell = st.session_state.get(SELECTED_CELL)
    if cell and cell[0] < query_side(trace).num_tokens and cell[1] < trace.num_tokens and cell[0] == query:
        return tuple(cell)
    return None
