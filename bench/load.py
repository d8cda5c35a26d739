"""One visitor in Chromium: the browser's own cost of a change, measured apart from the server's (`python -m bench
browser`).

How many visitors one server serves is measured by protocol-level clients (``bench.protocol``, `python -m bench
load`), which speak Streamlit's WebSocket protocol and draw nothing. What each visitor's browser spends on a change
(parsing the new figure and drawing it) is measured here, with a single headless Chromium page against a server
started as `make run` does: the page loaded with a 15-token sentence, then the Layer control moved 10 times with the
arrow keys, each change timed from the key press to the chart's title showing the new layer (polled every animation
frame); the CPU seconds Chromium (with Playwright's driver) and the server used over the changes, per change, and
Chromium's CPU for the page's load. On a deployment that CPU is spent on each visitor's own machine: here it shares
the server's 2 cores, which is why many Chromium pages on this machine measure the browsers, not the server.
"""

from __future__ import annotations

import statistics
import time
import urllib.parse

from bench.app import _wait_title
from bench.common import browser_cpu, cpu_seconds
from bench.protocol import client_text, percentile
from tests.browser_support import CHART, chromium_path, launch_chromium, streamlit_server

CHANGES = 10
LAYERS = 6  # MiniLM


def _visit(playwright, url) -> dict:
    """One page: its load's Chromium CPU, then ``CHANGES`` layer changes (up and back down), each timed, with the
    CPU Chromium and the server used over them."""
    browser = launch_chromium(playwright)
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.set_default_timeout(120_000)
    loading = browser_cpu(url.pid)
    page.goto(f"{url}/?{urllib.parse.urlencode({'text': client_text(0)})}")
    page.wait_for_selector(CHART)
    chromium, server = browser_cpu(url.pid), cpu_seconds(url.pid)
    slider = page.get_by_role("slider", name="Layer")
    slider.focus()
    samples, layer = [], 0
    for step in range(CHANGES):  # up to the last layer, then back down
        key, layer = ("ArrowRight", layer + 1) if step < LAYERS - 1 else ("ArrowLeft", layer - 1)
        start = time.perf_counter()
        slider.press(key)
        _wait_title(page, f"Layer {layer}, head 0")
        samples.append(time.perf_counter() - start)
    result = {"samples": samples, "load_chromium": chromium - loading, "chromium": browser_cpu(url.pid) - chromium,
              "server": cpu_seconds(url.pid) - server}
    browser.close()
    return result


def main() -> list[dict]:
    if chromium_path() is None:
        return [{"visitor": "skipped: no Chromium at /usr/bin/chromium"}]
    from playwright.sync_api import sync_playwright

    with streamlit_server() as url, sync_playwright() as playwright:
        _visit(playwright, url)  # warm the server: model loaded, graphs traced, figures' code paths run
        result = _visit(playwright, url)
    samples, count = result["samples"], len(result["samples"])
    return [{
        "changes": count,
        "median": f"{1000 * statistics.median(samples):.0f} ms", "p95": f"{1000 * percentile(samples, 0.95):.0f} ms",
        "Chromium CPU / change": f"{1000 * result['chromium'] / count:.0f} ms",
        "server CPU / change": f"{1000 * result['server'] / count:.0f} ms",
        "Chromium CPU, page load": f"{result['load_chromium']:.1f} s",
    }]


if __name__ == "__main__":
    from bench.common import print_table

    print_table("One visitor in Chromium, MiniLM", main())
