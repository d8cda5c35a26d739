"""Cold start in Chromium: a new server each time, first paint and first chart from the server process's start.

Both launchers: ``make run``'s (``python -m ui.serving``) and plain ``streamlit run app.py`` (how hosted Streamlit
services start an app); two pages: the default page (its text is an example, kept on disk: no model needed for it)
and a link with a 128-token text (no example: the model loads in the server first). The browser (Debian's Chromium,
headless, driven by Playwright) is started first, and asks for the page as soon as the server answers its health
check. First paint is the sidebar's Text box drawn; first chart is the heatmap showing "Layer 0, head 0"; both from
the process's start. "TF at chart" counts the cold starts whose server had TensorFlow's library mapped when the chart
showed (/proc/<pid>/maps). CPU is the seconds each process used until the first chart (medians): the server, its
children (a cold-start helper, where the design has one) and Chromium with Playwright's driver; on 2 cores, half
their sum is a floor under the first chart.

The examples are kept (``ui.cache.keep_examples``) in a temporary folder first; a checkout without them (the
cold-start helper process, before it was removed) is measured the same way, and the table says which design ran.
The title gives TensorFlow's import time on this machine (a fresh process, median of 3).
"""

from __future__ import annotations

import importlib.util
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
from pathlib import Path

from bench.common import browser_cpu, children_cpu, cpu_seconds, print_table
from bench.encoder import text_of_length
from encoder.sources import load_source
from tests.browser_support import CHART, chromium_path, launch_chromium, streamlit_server

COLD_STARTS = 5
LINK_COLD_STARTS = 3  # the 128-token link: the slower path, measured fewer times
TOKENS = 128
TEXT_BOX = '[data-testid="stSidebar"] [data-testid="stTextArea"] textarea'
LAUNCHERS = {"make run (python -m ui.serving)": False, "streamlit run app.py": True}
IMPORT_TF = ("import resource, time; start = time.perf_counter(); import tensorflow; "
             "usage = resource.getrusage(resource.RUSAGE_SELF); "
             "print(time.perf_counter() - start, usage.ru_utime + usage.ru_stime)")


def design() -> str:
    """Which cold-start design this checkout has."""
    if importlib.util.find_spec("ui.serving.coldstart") is not None:
        return "cold-start helper process"
    return "examples kept on disk"


def tensorflow_import() -> tuple[float, float]:
    """``import tensorflow`` in a fresh process: (wall seconds, CPU seconds of the whole process), medians of 3."""
    runs = []
    for _ in range(3):
        done = subprocess.run([sys.executable, "-c", IMPORT_TF], capture_output=True, text=True, check=True,
                              env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
        runs.append([float(value) for value in done.stdout.split()[-2:]])
    return statistics.median(run[0] for run in runs), statistics.median(run[1] for run in runs)


def _tensorflow_mapped(pid: int) -> bool:
    return "libtensorflow" in Path(f"/proc/{pid}/maps").read_text()


def cold_start(playwright, query: str, plain: bool, env: dict[str, str]) -> dict:
    """One fresh server and page ``/?query``: seconds from the process's start to the server's health check
    (``up``), to the page's controls (``paint``) and to the first chart (``chart``); whether TensorFlow was loaded
    in the server then (``tf``); CPU seconds by then (``cpu``: server, its children, Chromium)."""
    browser = launch_chromium(playwright)  # started first: Chromium's own start is not the app's
    page = browser.new_page(viewport={"width": 1500, "height": 1100})
    page.set_default_timeout(180_000)
    page.goto("about:blank")
    with streamlit_server(env=env, plain=plain) as url:
        up = time.perf_counter()
        browser_before = browser_cpu(url.pid)
        page.goto(f"{url}/?{query}", wait_until="commit")
        page.wait_for_selector(TEXT_BOX)
        painted = time.perf_counter()
        page.wait_for_function("sel => document.querySelector(sel)?.textContent.startsWith('Layer 0, head 0')",
                               arg=f"{CHART} .gtitle", polling="raf", timeout=180_000)
        chart = time.perf_counter()
        tf = _tensorflow_mapped(url.pid)
        cpu = (cpu_seconds(url.pid), children_cpu(url.pid), browser_cpu(url.pid) - browser_before)
    browser.close()
    return {"up": up - url.started, "paint": painted - url.started, "chart": chart - url.started, "tf": tf,
            "cpu": cpu}


def _row(launcher: str, page: str, colds: list[dict]) -> dict:
    def median(key: str) -> float:
        return statistics.median(cold[key] for cold in colds)

    cpu = [statistics.median(cold["cpu"][index] for cold in colds) for index in range(3)]
    charts = [cold["chart"] for cold in colds]
    return {
        "launcher": launcher, "page": page, "server up": f"{median('up'):.2f} s",
        "first paint": f"{median('paint'):.2f} s",
        "first chart (each)": f"**{median('chart'):.2f} s** ({', '.join(f'{chart:.2f}' for chart in charts)})",
        "TF in server at chart": f"{sum(cold['tf'] for cold in colds)} of {len(colds)}",
        "CPU server / children / Chromium": " / ".join(f"{seconds:.2f}" for seconds in cpu) + " s",
        "load": f"{os.getloadavg()[0]:.1f}",
    }


def main() -> list[dict]:
    from playwright.sync_api import sync_playwright

    if chromium_path() is None:
        return [{"measure": "skipped: no Chromium at /usr/bin/chromium", "value": ""}]
    model = load_source("minilm")
    link = urllib.parse.urlencode({"text": text_of_length(model.tokenizer, TOKENS)})
    pages = {"default page": ("", COLD_STARTS), f"{TOKENS}-token link": (link, LINK_COLD_STARTS)}
    wall, cpu = tensorflow_import()
    with tempfile.TemporaryDirectory(prefix="headlight-examples-") as folder:
        env = {"HEADLIGHT_EXAMPLES_CACHE": folder}
        os.environ.update(env)
        try:
            from ui.cache import keep_examples
        except ImportError:  # the helper design: nothing kept
            pass
        else:
            keep_examples(model)
        rows = []
        with sync_playwright() as playwright:
            for launcher, plain in LAUNCHERS.items():
                for page, (query, count) in pages.items():
                    colds = [cold_start(playwright, query, plain, env) for _ in range(count)]
                    rows.append(_row(launcher, page, colds))
    print_table(f"Cold start in Chromium ({design()}), median of {COLD_STARTS} ({LINK_COLD_STARTS} for the link); "
                f"import tensorflow here: {wall:.2f} s wall, {cpu:.2f} s CPU (median of 3)", rows)
    return []


if __name__ == "__main__":
    main()
