"""Clicks: the contract between a figure and whoever shows it, and the invisible markers that carry them.

A trace whose points can be clicked carries ``meta = click_meta(*fields)``: the first ``len(fields)`` values of each
point's ``customdata`` are integers named by ``fields`` (from ``CLICK_FIELDS``); more values may follow for hover
text. The app reads the spec from the figure (``click_spec``) and moves its controls: a "query" picks the query
token, "layer" + "head" open that head. ``invisible`` traces exist only to be clicked (a heatmap alone sends no click
events), so static image exports drop them: their markers (``click_markers``) sit unseen at the cell or thumbnail
centres until one is clicked.
"""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go

from viz.layout import HIGHLIGHT

CLICK_FIELDS = ("layer", "head", "query", "key")


def click_meta(*fields: str, invisible: bool = False) -> dict:
    """``meta`` for a clickable trace whose points' ``customdata`` starts with ``fields`` (see the module docstring)."""
    unknown = [field for field in fields if field not in CLICK_FIELDS]
    if not fields or unknown:
        raise ValueError(f"click fields must come from {CLICK_FIELDS}, got {fields}")
    return {"click": list(fields), "invisible": invisible}


def click_spec(fig: go.Figure) -> dict[int, tuple[str, ...]]:
    """Trace index -> click field names, for every clickable trace of ``fig``."""
    spec = {}
    for index, trace in enumerate(fig.data):
        meta = trace.meta
        if isinstance(meta, dict) and meta.get("click"):
            spec[index] = tuple(meta["click"])
    return spec


def layer_head_points(layers: int, heads: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every (layer, head) in layer-major order: layers (N,), heads (N,) and their ``customdata`` (N, 2) int32
    [layer, head] for a ``click_meta("layer", "head")`` trace."""
    grid_layer, grid_head = np.meshgrid(np.arange(layers), np.arange(heads), indexing="ij")
    layer, head = grid_layer.ravel(), grid_head.ravel()
    return layer, head, np.stack([layer, head], axis=1).astype(np.int32)


def is_click_layer(trace: dict) -> bool:
    """Whether a trace (as plotly JSON) exists only to be clicked: images leave it out."""
    meta = trace.get("meta")
    return isinstance(meta, dict) and bool(meta.get("invisible"))


def click_markers(size: float) -> dict:
    """Scatter settings of a click layer: invisible square outlines of ``size`` pixels, a clicked one shows."""
    return dict(
        mode="markers",
        marker=dict(symbol="square-open", size=size, color=HIGHLIGHT, line=dict(width=2), opacity=0),
        selected=dict(marker=dict(opacity=1)),
        unselected=dict(marker=dict(opacity=0)),
        showlegend=False,
    )


def outline(xs: list, ys: list, size: float, name: str) -> go.Scatter:
    """A visible square outline of ``size`` pixels around cells (e.g. the selected one) at ``xs``, ``ys``."""
    return go.Scatter(x=xs, y=ys, mode="markers", name=name, showlegend=False, hoverinfo="skip",
                      marker=dict(symbol="square-open", size=max(size - 2, 6), color=HIGHLIGHT, line=dict(width=2)))
