"""The head slider inside a figure (``viz.scrub``): its steps reach the browser once, and the app hears where it was
let go.

Dragging the slider redraws the figure in the browser alone. The chart is drawn with the slider's steps emptied
(``viz.scrub.split_steps``): Streamlit draws every new figure from scratch (a new figure is a new element), so steps
carried in it would be sent, parsed and laid out again at every layer change although they are the same for every
layer. A small Streamlit component (custom components v2, inline JavaScript, no iframe) sits next to the chart and
holds the steps' contents, sent once per session and contents (``SENT``); it finds the chart's plot by the chart's key
(Streamlit marks a keyed element with the class ``st-key-<key>``), fills each step back in place as soon as the plot
is drawn, listens to plotly.js' ``plotly_sliderend`` and sends the step's "layer:head" as a trigger. The callback
moves the Layer and Head controls there, so the views fragment reruns once, the URL (``?layer=&head=``) follows,
and the figure comes back from the server showing the head it already showed. A page that lacks the contents (it
was reloaded into the same session) asks for them again ("missing").
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Collection

import plotly.graph_objects as go
import plotly.io as pio
import streamlit as st

from ui.drawn import SerialisedFigure, figure_properties, per_figure, plain_text
from viz.scrub import SLIDER_NAME, figure_at, split_steps

SENT = "scrub_steps_sent"  # session state: ids of the step contents this session's page holds (the newest KEEP)
KEEP = 16  # step contents a page keeps (the component's KEEP)

# The component keeps the step contents by id (the newest few), fills the steps of its chart's plot as soon as
# plotly.js has drawn it (each plot once; only when every step of the plot has contents), listens once per plot,
# and sends the released step unless it is the one the app already shows. The newest mount's sender and value are
# used.
_JS = """
const KEEP = %d;  // step contents kept in the page
const FRAMES = 120;  // about 2 s of animation frames

function fill(plot, name, held) {
  const slider = (plot.layout.sliders || []).find((s) => s.name === name);
  if (!slider || !slider.steps.every((step) => held[step.value])) return false;
  for (const step of slider.steps) {
    const [data, layout] = held[step.value];
    Object.assign(step.args[0], data);  // in place: plotly.js' own copy of the steps shares these objects
    Object.assign(step.args[1], layout);
  }
  return true;
}

export default function ({ data, setTriggerValue }) {
  const store = (window.__headlightScrub ??= { charts: {}, steps: new Map() });
  if (data.steps) {
    store.steps.delete(data.steps_id);
    store.steps.set(data.steps_id, JSON.parse(data.steps));
    while (store.steps.size > KEEP) store.steps.delete(store.steps.keys().next().value);
  }
  const held = store.steps.get(data.steps_id);
  if (!held) setTriggerValue("missing", data.steps_id);
  store.charts[data.chart] = { send: setTriggerValue, value: data.value };
  let frame = 0;
  const attach = () => {
    const plot = document.querySelector(`.st-key-${data.chart} .js-plotly-plot`);
    if (!plot || typeof plot.on !== "function" || !plot._fullLayout) return false;
    if (held && plot.__headlightSteps !== data.steps_id) {
      if (!fill(plot, data.slider, held)) return false;
      plot.__headlightSteps = data.steps_id;
    }
    if (!plot.__headlightScrub) {
      plot.__headlightScrub = true;
      plot.on("plotly_sliderend", (event) => {
        const value = event && event.step && event.step.value;
        const chart = store.charts[data.chart];
        if (typeof value === "string" && chart && value !== chart.value) {
          chart.value = value;
          chart.send("head", value);
        }
      });
    }
    return true;
  };
  let frames = 0;  // every frame until the plot is drawn, at most FRAMES: a drag right after a change finds its steps
  const soon = () => { frame = attach() || ++frames > FRAMES ? 0 : requestAnimationFrame(soon); };
  soon();
  const timer = setInterval(attach, 200);  // and every 200 ms: the plot may be drawn again
  return () => { cancelAnimationFrame(frame); clearInterval(timer); };
}
"""
_sync = st.components.v2.component("headlight_scrub_sync", js=_JS % KEEP)


@dataclasses.dataclass(frozen=True)
class ScrubChart:
    """A figure with the head slider as the app draws it: ``drawn``, the figure as ``st.plotly_chart`` reads it, with
    the steps emptied; their contents as JSON (``steps``: value -> [data update, layout update], named by
    ``steps_id``, a hash of them), the steps' values and the one the figure shows; ``spans``, where each step's
    contents lie in ``steps`` (``update_at`` reads one back), from which the figure at another step is made
    (``at_step``).

    The contents stay text: kept as Python dicts and lists (~500 of them per figure: ~80,000 for 32 visitors' views),
    they were walked by every full collection of the garbage collector, which holds the GIL (docs/speed.md, "Many
    visitors")."""

    drawn: SerialisedFigure
    steps_id: str
    steps: str
    values: tuple[str, ...]
    active: str
    spans: dict[str, tuple[int, int]] = dataclasses.field(repr=False, compare=False, default_factory=dict)

    def update_at(self, value: str) -> list:
        """Step ``value``'s contents, [data update, layout update], as ``steps`` reads back.

        Raises:
            KeyError: ``value`` is not one of ``values``.
        """
        start, end = self.spans[value]
        return json.loads(self.steps[start:end])

    def at_step(self, value: str) -> ScrubChart:
        """This chart as it shows step ``value`` (one of ``values``): the same steps, the figure as the browser
        draws it when the slider moves there (``viz.scrub.figure_at``), which is the figure the view builds for
        that layer and head (tests compare every step's JSON). Made in well under a millisecond: no figure object,
        no validation, one step's JSON read, nothing encoded but what differs.

        Raises:
            KeyError: ``value`` is not one of ``values``.
        """
        if value == self.active:
            return self
        moved = figure_at(self.drawn.spec, {value: self.update_at(value)}, value)
        return dataclasses.replace(self, drawn=SerialisedFigure(moved), active=value)


def scrub_chart(fig: go.Figure) -> ScrubChart:
    """``fig`` (which carries the head slider) split for drawing, once per figure object (``ui.drawn.per_figure``):
    figures are cached and shared (``ui.cache.get_figure``), so a figure shown again costs no second split."""
    return per_figure("scrub", fig, _split)


def _split(fig: go.Figure) -> ScrubChart:
    light, held = split_steps(figure_properties(fig))  # the steps' contents are Plotly's JSON as made (viz.scrub)
    steps, spans = steps_json(held)
    slider = next(slider for slider in light["layout"]["sliders"] if slider["name"] == SLIDER_NAME)
    values = tuple(step["value"] for step in slider["steps"])
    return ScrubChart(SerialisedFigure(text=plain_text(light)), hashlib.sha256(steps.encode()).hexdigest()[:20], steps,
                      values, values[slider["active"]], spans)


def steps_json(held: dict[str, list]) -> tuple[str, dict[str, tuple[int, int]]]:
    """``held`` (step value -> its contents) as one JSON object, as Plotly's JSON encoder writes it (NumPy scalars
    as numbers, NaN and infinities as null), and where each value's contents lie in that text (start, end)."""
    parts, spans, at = [], {}, 1  # after the opening brace
    for value, update in held.items():
        key, text = json.dumps(value) + ":", pio.json.to_json_plotly(update)
        spans[value] = (at + len(key), at + len(key) + len(text))
        parts.append(key + text)
        at += len(key) + len(text) + 1  # and the comma
    return "{" + ",".join(parts) + "}", spans


def scrub_sync_ui(chart_key: str, chart: ScrubChart) -> None:
    """Mount the step holder and listener for ``chart`` shown under ``chart_key``; the step contents go along unless
    this session's page already holds them."""
    key = f"scrub-{chart_key}"
    sent = st.session_state.setdefault(SENT, {})  # an ordered set: id -> None, oldest first
    steps = None if chart.steps_id in sent else chart.steps
    sent.pop(chart.steps_id, None)
    sent[chart.steps_id] = None
    while len(sent) > KEEP:  # the page forgets its oldest contents: so does the server
        sent.pop(next(iter(sent)))
    data = {"chart": chart_key, "slider": SLIDER_NAME, "value": chart.active, "steps_id": chart.steps_id,
            "steps": steps}
    _sync(key=key, data=data, height=0,
          on_head_change=lambda: released(st.session_state[key].get("head"), chart.values),
          on_missing_change=lambda: sent.pop(st.session_state[key].get("missing"), None))


def released(value: object, steps: Collection[str]) -> None:
    """Move the Layer and Head controls to the released step "layer:head"; anything but one of the figure's
    ``steps`` is ignored (the value comes from the browser)."""
    if isinstance(value, str) and value in steps:
        layer, head = (int(part) for part in value.split(":"))
        st.session_state.update(layer=layer, head=head)
