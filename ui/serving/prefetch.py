"""Load the chart's code in the browser while the model loads, so the first chart draws as soon as its numbers arrive.

Streamlit loads each kind of element's code the first time the page shows one; the chart's (plotly.js, ~4.7 MB) takes
about a second to fetch and compile on a cold page, and while it loads Streamlit hides the page. Shown while the
server waits for the model, this invisible component (custom components v2, inline JavaScript, no iframe) imports
that code once the page's controls are drawn and the browser is idle, through the same URL Streamlit's own lazy
import uses, so Streamlit later finds it already loaded. Measured on a cold start: the controls draw as before and
the chart appears ~0.5 s sooner. The chunk's file name is Streamlit's own (it carries a content hash), found in the
installed Streamlit's static folder; if it is not there (another Streamlit), nothing is prefetched.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

import streamlit as st

# Streamlit's lazily loaded code (static/js/<name>.<hash>.js) of the elements the first chart comes with: the chart, and
# the widgets drawn with it (the controls' sliders, checkboxes, button groups; the max-tokens number input).
CHUNKS = ("PlotlyChart", "Slider", "Checkbox", "ButtonGroup", "NumberInput")

_JS = """
export default function ({ data }) {
  const done = (window.__headlightPrefetch ??= new Set());
  const index = document.querySelector('script[src*="/static/js/index."]');
  if (!index) return;
  const load = () => {
    for (const name of data.chunks) {
      if (done.has(name)) continue;
      done.add(name);
      import(new URL(name, index.src).href).catch(() => done.delete(name));
    }
  };
  // after the page's controls are drawn (compiling the chart code would hold them back), when the browser is idle
  const started = performance.now();
  const wait = () => {
    const drawn = document.querySelector(data.drawn);
    if ((drawn && drawn.offsetParent !== null) || performance.now() - started > 5000) {
      const idle = () => (window.requestIdleCallback || ((f) => setTimeout(f, 50)))(load, { timeout: 1000 });
      requestAnimationFrame(() => requestAnimationFrame(() => setTimeout(idle, 100)));  // a frame shows them first
    } else {
      setTimeout(wait, 50);
    }
  };
  wait();
}
"""
_prefetch = st.components.v2.component("headlight_prefetch", js=_JS)


@cache
def chunk_files() -> tuple[str, ...]:
    """The file names of ``CHUNKS`` found in the installed Streamlit, e.g. ``PlotlyChart.D9Z0_fxz.js``."""
    folder = Path(st.__file__).resolve().parent / "static" / "static" / "js"
    return tuple(sorted(path.name for name in CHUNKS for path in folder.glob(f"{name}.*.js")))


def prefetch_ui(drawn: str) -> None:
    """Mount the prefetcher (draws nothing); it fetches once the element the CSS selector ``drawn`` names is visible
    (the page's controls: at most 5 s). A no-op when none of ``CHUNKS`` can be found."""
    if chunk_files():
        # a tuple, not a list: Streamlit looks for data frames among a component's data, and a list makes it import
        # pandas and pyarrow to check (~0.2 s of CPU before the first chart; a tuple is passed over as JSON's array)
        _prefetch(key="prefetch", data={"chunks": chunk_files(), "drawn": drawn}, height=0)
