"""The app in Chromium: cold start (first paint, first chart from process start), warm reload, and a control change
(slider release to updated chart).

Drives the app as ``make run`` starts it (``python -m ui.serving``: ``streamlit run app.py``, with the cold-start helper
process loading the default model from the process's start, ``ui.serving.coldstart``) on 127.0.0.1 with Playwright and
Debian's Chromium, with a 128-token input given in the URL. The browser asks for the page as soon as the server
answers its health check. First paint is from that request to the sidebar's Text box being drawn (the page's
controls); first chart is from the process's start to the chart showing "Layer 0, head 0". A change is timed from
the key press on the slider to the moment the chart's title shows the new layer/head (polled every animation frame).
Cold starts are repeated (a new server each time) and their medians reported, with the CPU seconds each process used
until the first chart: on 2 cores, half their sum is a floor for the first chart's time.
"""

from __future__ import annotations

import statistics
import time
import urllib.parse

from bench.common import browser_cpu, children_cpu, cpu_seconds
from bench.encoder import text_of_length
from encoder.sources import load_source
from tests.browser_support import CHART, chromium_path, launch_chromium, streamlit_server

TOKENS = 128
CHANGES = 12
COLD_STARTS = 5
TEXT_BOX = '[data-testid="stSidebar"] [data-testid="stTextArea"] textarea'
LOADING = "Loading the model"


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


def _cold_start(playwright, text: str) -> dict:
    """One fresh server: server up, first paint, loading state seen, first chart (seconds), and the CPU seconds the
    server, its cold-start helper and Chromium (with Playwright's driver) used from the process's start to the
    chart."""
    browser = launch_chromium(playwright)  # started first: Chromium's own start is not the app's
    page = browser.new_page(viewport={"width": 1500, "height": 1100})
    page.set_default_timeout(180_000)
    page.goto("about:blank")
    with streamlit_server() as url:
        up = time.perf_counter()
        browser_before = browser_cpu(url.pid)
        page.goto(_view_url(url, text), wait_until="commit")
        page.wait_for_selector(TEXT_BOX)
        painted = time.perf_counter()
        loading = page.get_by_text(LOADING).count() > 0 or page.locator(CHART).count() == 0
        _wait_title(page, "Layer 0, head 0")
        chart = time.perf_counter()
        cpu = {"server": cpu_seconds(url.pid), "helper": children_cpu(url.pid),
               "chromium": browser_cpu(url.pid) - browser_before}
    browser.close()
    return {"up": up - url.started, "paint": painted - up, "loading": loading, "chart": chart - url.started,
            "cpu": cpu}


def main() -> list[dict]:
    from playwright.sync_api import sync_playwright

    if chromium_path() is None:
        return [{"measure": "skipped: no Chromium at /usr/bin/chromium", "value": ""}]
    text = text_of_length(load_source("minilm").tokenizer, TOKENS)
    with sync_playwright() as playwright:
        colds = [_cold_start(playwright, text) for _ in range(COLD_STARTS)]
        with streamlit_server() as url:
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

    def median(key: str) -> float:
        return statistics.median(cold[key] for cold in colds)

    seen = sum(cold["loading"] for cold in colds)
    cpu = {name: statistics.median(cold["cpu"][name] for cold in colds) for name in ("server", "helper", "chromium")}
    charts = [cold["chart"] for cold in colds]
    return [
        {"measure": f"server up (process start to health check), median of {COLD_STARTS}", "value":
            f"{median('up'):.2f} s"},
        {"measure": "first paint (page request to controls drawn), median", "value": f"{median('paint'):.2f} s"},
        {"measure": "loading state shown at first paint", "value": f"{seen} of {COLD_STARTS}"},
        {"measure": f"first chart from process start ({TOKENS} tokens), median (all)", "value":
            f"{median('chart'):.2f} s ({', '.join(f'{seconds:.2f}' for seconds in charts)})"},
        {"measure": "CPU until the first chart: server / cold-start helper / Chromium (medians; 2 cores)", "value":
            f"{cpu['server']:.2f} / {cpu['helper']:.2f} / {cpu['chromium']:.2f} s "
            f"(sum {sum(cpu.values()):.2f} s)"},
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
