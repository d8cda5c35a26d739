"""Scrubbing heads inside the figure (viz.scrub), in Chromium, at 128 tokens of MiniLM: the time of one step of the
in-figure head slider, in the app and in exported HTML pages, and what the slider adds to the figure.

A step is timed in the page, from the input event (the mouse move that reaches the next tick; ``event.timeStamp``)
to the first animation frame after plotly.js finished the update (``plotly_update``): that frame paints the new
head. The mouse is held down and swept over the ticks back and forth (no release, so the app never hears of it);
each step is awaited before the next move. Median and p95 over every step of several sweeps.
"""

from __future__ import annotations

import json
import statistics
import tempfile
import urllib.parse
from pathlib import Path

from bench.encoder import text_of_length
from tests.browser_support import CHART, chromium_path, launch_chromium, streamlit_server
from viz.scrub import SLIDER_NAME, split_steps

TOKENS = 128
SWEEPS = 2  # each sweep goes over every tick and back: 2 x 22 = 44 steps with 12 heads
TARGET_MS = 50.0

_INSTRUMENT = """(selector) => {
  const plot = document.querySelector(selector);
  const probe = (window.__scrubProbe = { input: 0, start: null, samples: [] });
  window.addEventListener("mousemove", (event) => { probe.input = event.timeStamp; }, true);
  window.addEventListener("mousedown", (event) => { probe.input = event.timeStamp; }, true);
  plot.on("plotly_sliderchange", () => { probe.start = probe.input; });
  plot.on("plotly_update", () => {
    const start = probe.start;
    probe.start = null;
    if (start !== null) requestAnimationFrame(() => probe.samples.push(performance.now() - start));
  });
}"""


def _tick(page, chart: str, index: int) -> tuple[float, float]:
    tick = page.locator(f"{chart} .slider-tick-rect").nth(index).bounding_box()
    rail = page.locator(f"{chart} .slider-rail-rect").bounding_box()
    return tick["x"] + tick["width"] / 2, rail["y"] + rail["height"] / 2


def _sweep(page, chart: str) -> list[float]:
    """Hold the slider and step it over every tick and back, ``SWEEPS`` times; the time of each step in ms."""
    page.locator(f"{chart} .slider-rail-rect").scroll_into_view_if_needed()
    page.evaluate(_INSTRUMENT, chart)
    count = page.locator(f"{chart} .slider-tick-rect").count()
    active = page.evaluate("(sel) => document.querySelector(sel).layout.sliders[0].active", chart)
    page.mouse.move(*_tick(page, chart, active))
    page.mouse.down()
    path = [*range(active + 1, count), *range(count - 2, -1, -1), *range(1, active + 1)]
    for index in path * SWEEPS:
        done = page.evaluate("() => window.__scrubProbe.samples.length")
        page.mouse.move(*_tick(page, chart, index))
        page.wait_for_function("(n) => window.__scrubProbe.samples.length > n", arg=done, polling="raf")
    samples = page.evaluate("() => window.__scrubProbe.samples")
    page.mouse.up()
    return samples


def _row(what: str, samples: list[float], payload: str) -> dict:
    p95 = statistics.quantiles(samples, n=20)[-1]
    median = statistics.median(samples)
    return {"where": what, "steps": len(samples), "median ms": f"{median:.1f}", "p95 ms": f"{p95:.1f}",
            f"< {TARGET_MS:.0f} ms": "yes" if p95 < TARGET_MS else ("median only" if median < TARGET_MS else "no"),
            "figure JSON (slider's share)": payload}


def _payload(fig) -> str:
    """The figure's JSON size, and the head slider's share of it."""
    sliders = [slider for slider in fig.layout.sliders if slider.name == SLIDER_NAME]
    share = len(json.dumps([slider.to_plotly_json() for slider in sliders]))
    steps = len(sliders[0].steps) if sliders else 0
    return f"{len(fig.to_json()) / 1e6:.2f} MB ({share / 1e6:.2f} MB, {steps} steps)"


def _app_payload(fig) -> str:
    """What the app sends for the figure: the chart with its steps emptied, and the steps' contents apart
    (``ui.scrub``: once per session for each set of steps)."""
    light, held = split_steps(json.loads(fig.to_json()))
    steps = len(held)
    return (f"chart {len(json.dumps(light)) / 1e6:.2f} MB + steps {len(json.dumps(held)) / 1e6:.2f} MB once "
            f"({steps} steps)")


def main() -> list[dict]:
    from playwright.sync_api import sync_playwright

    if chromium_path() is None:
        return [{"where": "skipped: no Chromium at /usr/bin/chromium"}]
    from encoder.sources import load_source
    from encoder.trace import trace_text
    from viz import build_view
    from viz.render import figure_to_html

    model = load_source("minilm")
    text = text_of_length(model.tokenizer, TOKENS)
    trace = trace_text(model, text)
    figures = {
        "heatmap": build_view(trace, "heatmap", layer=0, head=0),
        "tokens": build_view(trace, "tokens", layer=0, heads=[0], query=5),
        "lines": build_view(trace, "lines", layer=0, heads=[0], threshold=0.1),
    }
    rows = []
    with tempfile.TemporaryDirectory() as folder, sync_playwright() as playwright:
        browser = launch_chromium(playwright)
        page = browser.new_page(viewport={"width": 1500, "height": 1100})
        page.set_default_timeout(180_000)
        for name, fig in figures.items():
            path = Path(folder) / f"{name}.html"
            path.write_text(figure_to_html(fig))
            page.goto(path.as_uri())
            page.wait_for_selector(".js-plotly-plot .slider-tick-rect")
            rows.append(_row(f"exported HTML, {name}", _sweep(page, ".js-plotly-plot"), _payload(fig)))
        with streamlit_server() as url:
            page.goto(f"{url}/?{urllib.parse.urlencode({'text': text})}")
            page.wait_for_selector(f"{CHART} .slider-tick-rect")
            # The app draws the steps emptied and fills them in the page (ui.scrub): time filled steps only.
            page.wait_for_function("(sel) => document.querySelector(sel).layout.sliders[0].steps"
                                   ".every((step) => Object.keys(step.args[0]).length > 0)", arg=CHART)
            page.wait_for_timeout(1000)
            rows.insert(0, _row("app, heatmap (Heatmap tab)", _sweep(page, CHART), _app_payload(figures["heatmap"])))
        browser.close()
    return rows


if __name__ == "__main__":
    from bench.common import print_table

    print_table(f"Head scrubbing in Chromium, MiniLM, {TOKENS} tokens", main())
