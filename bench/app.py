"""The app in Chromium, warm: reload, and a control change (slider release to updated chart).

Drives the app as ``make run`` starts it (``python -m ui.serving``) on 127.0.0.1 with Playwright and Debian's
Chromium, with a 128-token input given in the URL. A change is timed from the key press on the slider to the moment
the chart's title shows the new layer/head (polled every animation frame). Cold starts (first paint, first chart
from process start) are ``bench.coldstart``'s suite.
"""

from __future__ import annotations

import statistics
import time
import urllib.parse

from bench.encoder import text_of_length
from encoder.sources import load_source
from tests.browser_support import CHART, chromium_path, launch_chromium, streamlit_server

TOKENS = 128
CHANGES = 12


def _wait_title(page, prefix: str, timeout_ms: float = 60_000) -> None:
    page.wait_for_function(
        "([sel, prefix]) => { const t = document.querySelector(sel); return t && t.textContent.startsWith(prefix); }",
        arg=[f"{CHART} .gtitle", prefix], polling="raf", timeout=timeout_ms)


def _time_changes(page, slider_name: str, titles: list[str]) -> list[float]:
    slider = page.get_by_role("slider", name=slider_name)
    slider.focus()
    samples = []
    for title in titles:
        start = time.perf_counter()
        slider.press("ArrowRight")
        _wait_title(page, title)
        samples.append(time.perf_counter() - start)
        time.sleep(0.15)
    return samples


def _view_url(url: str, text: str) -> str:
    return f"{url}/?{urllib.parse.urlencode({'text': text})}"


def main() -> list[dict]:
    from playwright.sync_api import sync_playwright

    if chromium_path() is None:
        return [{"measure": "skipped: no Chromium at /usr/bin/chromium", "value": ""}]
    text = text_of_length(load_source("minilm").tokenizer, TOKENS)
    with sync_playwright() as playwright, streamlit_server() as url:
        browser = launch_chromium(playwright)
        page = browser.new_page(viewport={"width": 1500, "height": 1100})
        page.set_default_timeout(180_000)
        page.goto(_view_url(url, text))
        page.wait_for_selector(CHART)
        reloads = []
        for _ in range(5):
            start = time.perf_counter()
            page.reload()
            page.wait_for_selector(CHART)
            reloads.append(time.perf_counter() - start)
        _wait_title(page, "Layer 0, head 0")
        heads = _time_changes(page, "Head", [f"Layer 0, head {h}" for h in range(1, CHANGES)])
        layers = _time_changes(page, "Layer", [f"Layer {layer}, head {CHANGES - 1}" for layer in range(1, 6)])
        browser.close()
    both = heads + layers

    return [
        {"measure": "warm reload to chart (median of 5)", "value": f"{statistics.median(reloads):.2f} s"},
        {"measure": f"one change: head, slider release to updated chart, median of {len(heads)}", "value":
            f"{1000 * statistics.median(heads):.0f} ms"},
        {"measure": f"one change: layer, median of {len(layers)}", "value":
            f"{1000 * statistics.median(layers):.0f} ms"},
        {"measure": "all changes: median / max", "value":
            f"{1000 * statistics.median(both):.0f} / {1000 * max(both):.0f} ms"},
    ]


if __name__ == "__main__":
    from bench.common import print_table

    print_table(f"App in Chromium, MiniLM, {TOKENS} tokens", main())
