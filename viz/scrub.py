"""Scrubbing: a slider inside a figure that moves through heads in the browser, with no server round trip.

A view of one head (heatmap, token view, head lines) carries the other heads of its layer, or of every layer when
they fit, in the steps of a Plotly slider (``layout.sliders``, named ``SLIDER_NAME``). Each step is an ``update``
(restyle + relayout) of the few arrays and titles that differ between heads; arrays travel as base64 float32
(Plotly's typed arrays), so the values are exact and 4 bytes each. Dragging the slider redraws the figure in the
browser alone, in the app and in an exported HTML page alike.

Payload bound: the steps hold at most ``SCRUB_MAX_BYTES`` of arrays and text. Every layer's heads when they fit
(MiniLM: up to ~85 tokens for the heatmap), else the current layer's heads (up to ~200 tokens), else no slider (the
app's Layer and Head controls still work, through the server).

Each step's ``value`` is "layer:head": the app reads it back when the slider is released (``ui.scrub``). Static
images drop the slider and the room it takes (``without_slider``). The app draws the figure with its steps emptied and
hands their contents to the browser separately, once per session (``split_steps``): what a step restyles is the same
for every layer the controls pick, so a layer change need not carry it, parse it and lay it out again.
"""

from __future__ import annotations

import base64
import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Any

import numpy as np
import plotly.graph_objects as go

from encoder.settings import settings
from encoder.trace import EncoderTrace
from viz.selection import head_label

SLIDER_NAME = "heads"
SCRUB_MAX_BYTES = 2 * 2**20  # arrays and text the slider steps may carry (2 MiB; ~2.8 MB as base64 JSON)
SLIDER_ROOM = 64  # pixels added to the top margin for the slider (title above it, the plot below)
SLIDER_GAP = 6  # pixels between the slider and the plot
LABELLED_STEPS = 24  # more steps than this: no label under each tick, only the current value above the rail
KEPT_STEPS_BYTES = 32 * 2**20  # at most this many bytes of slider steps kept for the next figure of the same view
STEPS_SHARE = 32  # ... and at most this share of the byte budget (``HEADLIGHT_CACHE_MB`` / 32)

# A step: attribute -> one value per updated trace (None leaves that trace's attribute unset), and layout changes.
Step = tuple[dict[str, list], dict[str, Any]]


def typed_array(values: np.ndarray) -> dict | list:
    """``values`` as Plotly's typed array (float32, little-endian, base64, with its shape past one dimension, written
    as Plotly writes it; an empty array as an empty list, as Plotly writes it): exact, 4 bytes each, and the same
    JSON as the figure's own float32 arrays."""
    array = np.ascontiguousarray(values, dtype="<f4")
    if array.size == 0:
        return []
    spec = {"dtype": "f4", "bdata": base64.b64encode(array.tobytes()).decode("ascii")}
    if array.ndim > 1:
        spec["shape"] = ", ".join(str(n) for n in array.shape)
    return spec


def from_typed_array(spec: dict | list) -> np.ndarray:
    """The float32 array a ``typed_array`` holds."""
    if isinstance(spec, list):
        return np.asarray(spec, dtype=np.float32)
    shape = tuple(int(n) for n in str(spec.get("shape", "-1")).split(","))
    return np.frombuffer(base64.b64decode(spec["bdata"]), dtype=np.dtype(spec["dtype"])).reshape(shape)


def payload_bytes(step: Step) -> int:
    """Bytes of the arrays (float32) and strings one step carries."""
    total = 0
    for values in step[0].values():
        for value in values:
            if isinstance(value, np.ndarray):
                total += value.size * 4
            elif isinstance(value, (list, tuple)):
                total += sum(len(str(item)) for item in value)
    return total


def scrub_heads(trace: EncoderTrace, layer: int, head_bytes: int) -> list[tuple[int, int]]:
    """The (layer, head) pairs the slider carries at ``head_bytes`` each: every head of every layer when they fit
    ``SCRUB_MAX_BYTES`` (and every layer masks alike), else the heads of ``layer`` when they fit, else none."""
    layers, heads = trace.num_layers, trace.num_heads
    same_mask = trace.visible is None or bool((trace.visible == trace.visible[:1]).all())
    if same_mask and layers * heads * head_bytes <= SCRUB_MAX_BYTES:
        return [(lay, h) for lay in range(layers) for h in range(heads)]
    if heads * head_bytes <= SCRUB_MAX_BYTES:
        return [(layer, h) for h in range(heads)]
    return []


def add_head_slider(fig: go.Figure, trace: EncoderTrace, layer: int, head: int, traces: list[int],
                    step: Callable[[int, int], Step], family: Hashable | None = None) -> bool:
    """Add the head slider to ``fig`` (showing ``layer``, ``head``): ``step(layer, head)`` gives what changes in
    ``traces`` (trace indices) and the layout for that head. Nothing is added for a model of one head, or when the
    heads do not fit ``SCRUB_MAX_BYTES`` (``scrub_heads``). Returns whether it was added.

    ``family``: everything else the steps depend on (the view and the settings ``step`` was made with), when
    ``step`` is pure: then the steps of one trace and family are made once and kept (``KEPT``), and the next figure
    of that view, at another layer or head, takes them (its own step dicts, the same contents).

    Keep steps cheap to draw: a step that changes only data plotly.js restyles in place (a heatmap's ``z``, bar
    colours) redraws in a few ms; one that changes a colour axis' range or per-point text re-lays out the figure
    (~3 times slower for the token view's 128 bars).
    """
    current = step(layer, head)
    size = payload_bytes(current)
    heads = scrub_heads(trace, layer, size)
    if trace.num_layers * trace.num_heads == 1 or len(heads) < 2:
        return False
    every_layer = heads[0][0] != heads[-1][0]
    key = None if family is None else (id(trace), family, tuple(traces), tuple(heads))
    KEPT.max_bytes = steps_limit()  # the operator's setting, read at each use (tests change it)
    made = None if key is None else KEPT.get(key, trace)
    if made is None:
        made = [_slider_step(lay, head_label(trace, h).removeprefix("head "),
                             current if (lay, h) == (layer, head) else step(lay, h), traces, every_layer, h)
                for lay, h in heads]
        if key is not None:
            KEPT.keep(key, trace, made, size * len(heads))
    steps = [dict(made_step) for made_step in made]  # this figure's own: ``viz.kinds.name_kind`` sets a step's args
    labelled = len(steps) <= LABELLED_STEPS
    height, margin = fig.layout.height, fig.layout.margin
    plot_height = height - margin.t - margin.b  # pixels; paper y=1 is the plot's top edge
    fig.layout.height = height + SLIDER_ROOM
    fig.layout.margin.t = margin.t + SLIDER_ROOM
    fig.layout.title.update(yref="container", y=1.0, yanchor="top", pad=dict(t=14))
    slider = go.layout.Slider(
        name=SLIDER_NAME,
        active=heads.index((layer, head)),
        x=0.0, xanchor="left", len=1.0,
        y=1.0 + SLIDER_GAP / plot_height, yanchor="bottom",
        pad=dict(t=0, b=0, l=0, r=0),
        currentvalue=dict(prefix="Drag: " if every_layer else f"Drag: layer {layer}, head ", xanchor="left",
                          font=dict(size=12, color="#444")),
        font=dict(size=10, color="#444" if labelled else "rgba(0,0,0,0)"),
        ticklen=4 if labelled else 3, minorticklen=2,
        transition=dict(duration=0),
    ).to_plotly_json()  # validated alone, then set with its steps as they are (``_set_as_given``)
    _set_as_given(fig.layout, "sliders", [{**slider, "steps": steps}])
    return True


class KeptSteps:
    """Slider steps made for a trace (held by a weak reference: a trace gone takes its steps' entry with it on the
    next look-up) and a family, the most recently used kept up to ``max_bytes`` of their payload. Thread-safe."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._kept: OrderedDict[Hashable, tuple[weakref.ref, list[dict], int]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def get(self, key: Hashable, trace: Any) -> list[dict] | None:
        """The steps kept for ``key`` if they were made for ``trace`` itself (an id may be reused), else None."""
        with self._lock:
            kept = self._kept.get(key)
            if kept is None or kept[0]() is not trace:
                return None
            self._kept.move_to_end(key)
            return kept[1]

    def keep(self, key: Hashable, trace: Any, steps: list[dict], size: int) -> None:
        """Keep ``steps`` (``size`` bytes of payload) for ``key`` and ``trace``, dropping the least recently used
        beyond ``max_bytes``; a trace that takes no weak reference keeps nothing."""
        try:
            ref = weakref.ref(trace)
        except TypeError:
            return
        with self._lock:
            old = self._kept.pop(key, None)
            self._bytes -= old[2] if old is not None else 0
            self._kept[key] = (ref, steps, size)
            self._bytes += size
            while self._bytes > self.max_bytes and self._kept:
                self._bytes -= self._kept.popitem(last=False)[1][2]


def steps_limit() -> int:
    """Bytes of payload the kept slider steps may hold (``KEPT``): ``HEADLIGHT_CACHE_MB`` / ``STEPS_SHARE``, at most
    ``KEPT_STEPS_BYTES``; the app's byte budget leaves them that share (``ui.inputs.trace_budget``)."""
    return min(settings().cache_bytes // STEPS_SHARE, KEPT_STEPS_BYTES)


KEPT = KeptSteps(steps_limit())


def _set_as_given(obj: Any, name: str, value: Any) -> None:
    """``obj[name] = value`` without Plotly's per-property validation: for the slider's steps, already Plotly's JSON
    (plain dicts, typed arrays) made here, which validating would only copy again, step by step (about a third of
    building a figure with the head slider)."""
    obj._validate = False
    try:
        obj[name] = value
    finally:
        obj._validate = True


def step_value(layer: int, head: int) -> str:
    """The slider step's value of ``layer``, ``head`` ("layer:head"): what the app reads back and moves to."""
    return f"{layer}:{head}"


def _slider_step(layer: int, name: str, update: Step, traces: list[int], every_layer: bool, head: int) -> dict:
    """One slider step: ``name`` is the head as labelled ("5", or "5 (kv 1)" where heads share key/value heads)."""
    data, layout = update
    encoded = {key: [typed_array(v) if isinstance(v, np.ndarray) else v for v in values]
               for key, values in data.items()}
    return dict(method="update", args=[encoded, layout, traces], value=step_value(layer, head),
                label=f"layer {layer}, head {name}" if every_layer else name)


def has_head_slider(fig: go.Figure) -> bool:
    """Whether ``fig`` carries the head slider."""
    return any(slider.name == SLIDER_NAME for slider in fig.layout.sliders)


def split_steps(figure: dict) -> tuple[dict, dict[str, list]]:
    """A figure's plotly JSON with the head slider's steps emptied (each step's ``args`` become ``[{}, {}, traces]``:
    a no-op until filled in), and what they held: step value "layer:head" -> [data update, layout update]. Filling
    each step's first two arguments back in place gives ``figure`` again. A figure without the slider comes back
    unchanged, with no steps."""
    layout = figure.get("layout", {})
    sliders = layout.get("sliders") or []
    if not any(slider.get("name") == SLIDER_NAME for slider in sliders):
        return figure, {}
    held: dict[str, list] = {}
    emptied = []
    for slider in sliders:
        if slider.get("name") == SLIDER_NAME:
            steps = []
            for step in slider["steps"]:
                data, layout_update, traces = step["args"]
                held[step["value"]] = [data, layout_update]
                steps.append({**step, "args": [{}, {}, traces]})
            slider = {**slider, "steps": steps}
        emptied.append(slider)
    return {**figure, "layout": {**layout, "sliders": emptied}}, held


def figure_at(figure: dict, held: dict[str, list], value: str) -> dict:
    """A figure's plotly JSON with its head slider emptied (``split_steps``) as the browser draws it once the slider
    moved to step ``value``: that step's update (``held[value]``: [data update, layout update]) applied as
    ``Plotly.update`` applies it (attribute paths with dots; a None value removes the attribute), the slider's
    ``active`` on it. New dicts and lists along the changed paths; everything else is ``figure``'s own.

    Raises:
        KeyError: ``value`` is not one of the slider's steps.
    """
    data_update, layout_update = held[value]
    layout = dict(figure["layout"])
    sliders = []
    for slider in layout["sliders"]:
        if slider.get("name") == SLIDER_NAME:
            steps = slider["steps"]
            values = [step["value"] for step in steps]
            traces = steps[values.index(value)]["args"][2]
            slider = {**slider, "active": values.index(value)}
        sliders.append(slider)
    layout["sliders"] = sliders
    data = list(figure["data"])
    for path, values in data_update.items():
        for index, item in zip(traces, values):
            data[index] = _with_path(data[index], path, item)
    for path, item in layout_update.items():
        layout = _with_path(layout, path, item)
    return {**figure, "data": data, "layout": layout}


def _with_path(properties: dict, path: str, value: Any) -> dict:
    """``properties`` with the attribute at the dotted ``path`` set to ``value`` (None: removed), as a new dict
    (and new dicts along the path)."""
    name, _, rest = path.partition(".")
    changed = dict(properties)
    if rest:
        changed[name] = _with_path(properties.get(name) or {}, rest, value)
    elif value is None:
        changed.pop(name, None)
    else:
        changed[name] = value
    return changed


def without_slider(figure: dict) -> dict:
    """A figure's plotly JSON without the head slider and the room it takes: for static images."""
    layout = figure.get("layout", {})
    sliders = layout.get("sliders") or []
    kept = [slider for slider in sliders if slider.get("name") != SLIDER_NAME]
    if len(kept) == len(sliders):
        return figure
    layout = {**layout, "sliders": kept, "height": layout["height"] - SLIDER_ROOM,
              "margin": {**layout["margin"], "t": layout["margin"]["t"] - SLIDER_ROOM}}
    return {**figure, "layout": layout}
