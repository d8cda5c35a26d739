"""The app in Chromium: cold start to first chart, warm reload, and layer/head change to updated chart.

Drives `streamlit run app.py` on 127.0.0.1 with Playwright and Debian's Chromium, with a 128-token input given in
the URL. A change is timed from the key press on the slider to the moment the chart's title shows the new
layer/head (polled every animation frame).
"""

from __future__ import annotations

import statistics
import time
import urllib.parse

from bench.encoder import text_of_length
from tests.browser_support import CHART, chromium_path, launch_chromium, streamlit_server

TOKENS = 128
CHANGES = 12


def _wait_title(page, prefix: str) -> None:
    page.wait_for_function(
        "([sel, prefix]) => { const t = document.querySelector(sel); return t && t.textContent.startsWith(prefix); }",
        arg=[f"{CHART} .gtitle", prefix], polling="raf", timeout=60_000)


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


def main() -> list[dict]:
    from playwright.sync_api import sync_playwright

    if chromium_path() is None:
        return [{"measure": "skipped: no Chromium at /usr/bin/chromium", "value": ""}]
    from encoder.sources import load_source

    text = text_of_length(load_source("minilm").tokenizer, TOKENS)
    rows = []
    started = time.perf_counter()
    with streamlit_server() as url, sync_playwright() as playwright:
        server_ready = time.perf_counter() - started
        browser = launch_chromium(playwright)
        page = browser.new_page(viewport={"width": 1500, "height": 1100})
        page.set_default_timeout(180_000)
        view_url = f"{url}/?{urllib.parse.urlencode({'text': text})}"
        page.goto(view_url)
        page.wait_for_selector(CHART)
        cold = time.perf_counter() - started
        reloads = []
        for _ in range(3):
            start = time.perf_counter()
            page.reload()
            page.wait_for_selector(CHART)
            reloads.append(time.perf_counter() - start)
        _wait_title(page, "Layer 0, head 0")
        heads = _time_changes(page, "Head", [f"Layer 0, head {h}" for h in range(1, CHANGES)])
        layers = _time_changes(page, "Layer", [f"Layer {layer}, head {CHANGES - 1}" for layer in range(1, 6)])
        browser.close()
    both = heads + layers
    rows += [
        {"measure": "server start (streamlit up, TF imported)", "value": f"{server_ready:.1f} s"},
        {"measure": f"cold start to first chart ({TOKENS} tokens, includes model load)", "value": f"{cold:.1f} s"},
        {"measure": "warm reload to chart (median of 3)", "value": f"{statistics.median(reloads):.2f} s"},
        {"measure": f"head change to updated chart, median of {len(heads)}", "value":
            f"{1000 * statistics.median(heads):.0f} ms"},
        {"measure": f"layer change to updated chart, median of {len(layers)}", "value":
            f"{1000 * statistics.median(layers):.0f} ms"},
        {"measure": "all changes: median / max", "value":
            f"{1000 * statistics.median(both):.0f} / {1000 * max(both):.0f} ms"},
    ]
    return rows


if __name__ == "__main__":
    from bench.common import print_table

    print_table(f"App in Chromium, MiniLM, {TOKENS} tokens", main())
