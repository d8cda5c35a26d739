"""The head slider inside a figure (``viz.scrub``) tells the app where it was let go.

Dragging the slider redraws the figure in the browser alone. ``st.plotly_chart`` reports clicks and selections but
not slider events, so a small Streamlit component (custom components v2, inline JavaScript, no iframe) sits next to
the chart: it finds the chart's plot by the chart's key (Streamlit marks a keyed element with the class
``st-key-<key>``), listens to plotly.js' ``plotly_sliderend`` and sends the step's "layer:head" as a trigger. The
callback moves the Layer and Head controls there, so the views fragment reruns once, the URL (``?layer=&head=``)
follows, and the figure comes back from the server showing the head it already showed.
"""

from __future__ import annotations

import plotly.graph_objects as go
import streamlit as st

from viz.scrub import SLIDER_NAME

# The component finds its chart's plot (it may mount later, or be redrawn), listens once per plot, and sends the
# released step unless it is the one the app already shows. The newest mount's sender and value are used.
_JS = """
export default function ({ data, setTriggerValue }) {
  const charts = (window.__headlightScrub ??= {});
  charts[data.chart] = { send: setTriggerValue, value: data.value };
  const attach = () => {
    const plot = document.querySelector(`.st-key-${data.chart} .js-plotly-plot`);
    if (!plot || typeof plot.on !== "function" || plot.__headlightScrub) return;
    plot.__headlightScrub = true;
    plot.on("plotly_sliderend", (event) => {
      const value = event && event.step && event.step.value;
      const chart = charts[data.chart];
      if (typeof value === "string" && chart && value !== chart.value) {
        chart.value = value;
        chart.send("head", value);
      }
    });
  };
  attach();
  const timer = setInterval(attach, 200);
  return () => clearInterval(timer);
}
"""
_sync = st.components.v2.component("headlight_scrub_sync", js=_JS)


def scrub_sync_ui(chart_key: str, fig: go.Figure) -> None:
    """Mount the listener for the chart of ``fig`` (which carries the head slider) shown under ``chart_key``."""
    slider = next(slider for slider in fig.layout.sliders if slider.name == SLIDER_NAME)
    steps = [step.value for step in slider.steps]
    key = f"scrub-{chart_key}"
    _sync(key=key, data={"chart": chart_key, "value": steps[slider.active]}, height=0,
          on_head_change=lambda: released(st.session_state[key].get("head"), steps))


def released(value: object, steps: list[str]) -> None:
    """Move the Layer and Head controls to the released step "layer:head"; anything but one of the figure's
    ``steps`` is ignored (the value comes from the browser)."""
    if isinstance(value, str) and value in steps:
        layer, head = (int(part) for part in value.split(":"))
        st.session_state.update(layer=layer, head=head)
