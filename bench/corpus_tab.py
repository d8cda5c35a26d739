"""The Corpus tab's query-key scatter (``viz.corpus.build_qk_scatter``, WebGL) at 20,000 points in Chromium: the
time to build the figure, its JSON size, and the time plotly.js takes to draw it in headless Chromium.

The draw is timed in the page, from ``Plotly.newPlot`` on a fresh element to the first animation frame after it
resolved (that frame paints the points); the first draw of a page (plotly.js and WebGL warming up) is reported
apart from the median of the next ones. Points: 10,000 queries and 10,000 keys of a head, as an index holds them
(x, y from a 2-D projection, sentence, position, token drawn from a 2,000-token vocabulary, Zipf-like).
"""

from __future__ import annotations

import json
import statistics
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from tests.browser_support import chromium_path, launch_chromium

POINTS = 20_000
REPEATS = 7
TARGET_MS = 1000.0

_DRAW = """async (figure) => {
  const element = document.createElement("div");
  document.body.appendChild(element);
  const start = performance.now();
  await Plotly.newPlot(element, figure.data, figure.layout);
  await new Promise((done) => requestAnimationFrame(() => done()));
  const took = performance.now() - start;
  const drawn = element.querySelectorAll("canvas").length;
  Plotly.purge(element);
  element.remove();
  return [took, drawn];
}"""


def sample_points(count: int = POINTS, seed: int = 0) -> SimpleNamespace:
    """``count`` points as ``CorpusIndex.qk_points`` gives them: half queries, half keys."""
    rng = np.random.default_rng(seed)
    vocabulary = np.array([f"tok{i}" for i in range(2000)])
    ranks = np.minimum(rng.zipf(1.3, count) - 1, len(vocabulary) - 1)
    return SimpleNamespace(kind=np.array(["query", "key"])[np.arange(count) % 2], x=rng.normal(size=count),
                           y=rng.normal(size=count), sentence=rng.integers(0, 50_000, count),
                           position=rng.integers(0, 128, count), token=vocabulary[ranks])


def main() -> list[dict]:
    from playwright.sync_api import sync_playwright

    from viz.corpus import build_qk_scatter
    from viz.render import figure_to_html

    if chromium_path() is None:
        return [{"figure": "skipped: no Chromium at /usr/bin/chromium"}]
    points = sample_points()
    rows = []
    with tempfile.TemporaryDirectory() as folder, sync_playwright() as playwright:
        browser = launch_chromium(playwright)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.set_default_timeout(120_000)
        for color_by in ("position", "token"):
            start = time.perf_counter()
            fig = build_qk_scatter(points, 3, 7, color_by)
            build_ms = 1000 * (time.perf_counter() - start)
            payload = json.loads(fig.to_json())
            path = Path(folder) / f"{color_by}.html"
            path.write_text(figure_to_html(fig))  # plotly.js inlined, and the figure drawn once as it loads
            page.goto(path.as_uri())
            page.wait_for_selector(".js-plotly-plot canvas")
            draws = [page.evaluate(_DRAW, payload) for _ in range(REPEATS + 1)]
            times = [took for took, _ in draws]
            median = statistics.median(times[1:])
            rows.append({"figure": f"query-key scatter, {POINTS:,} points, by {color_by}",
                         "traces": len(fig.data), "build ms": f"{build_ms:.0f}",
                         "JSON": f"{len(fig.to_json()) / 1e6:.2f} MB", "first draw ms": f"{times[0]:.0f}",
                         "draw ms (median)": f"{median:.0f}", "canvases": draws[-1][1],
                         f"< {TARGET_MS / 1000:.0f} s": "yes" if median < TARGET_MS else "no"})
        browser.close()
    return rows


if __name__ == "__main__":
    from bench.common import print_table

    print_table(f"Corpus tab: the query-key scatter of {POINTS:,} points in Chromium (WebGL)", main())
