"""Cold start in Chromium: a new server each time, first paint and first chart from the server process's start.

Both launchers: ``make run``'s (``python -m ui.serving``) and plain ``streamlit run app.py`` (how hosted Streamlit
services start an app); and the floor: a bare Streamlit app (``FLOOR``: the same Text box in the sidebar and one
small heatmap titled the same, no Headlight code) under plain ``streamlit run`` with the project's settings,
measured the same way: what Streamlit's own server start and its page in Chromium cost on this machine. Two pages:
the default page (its text is an example, kept on disk: no model needed for it) and a link with a 128-token text (no
example: the model loads in the server first). The browser (Debian's Chromium, headless, driven by Playwright) is
started first, and asks for the page as soon as the server answers its health check. First paint is the sidebar's
Text box drawn; first chart is the heatmap showing "Layer 0, head 0"; both from the process's start. "socket / msg"
columns: when the browser received the session's first WebSocket frame (the page loaded, its socket open: the script
starts then), the frame carrying the Text box and the one carrying the chart (from the same start): from the socket
to a msg is the server's part (the page's script up to that element), what follows a msg is the browser's drawing.
"TF at chart" counts the cold starts whose server had TensorFlow's library mapped when the chart showed
(/proc/<pid>/maps). CPU is the seconds each process used until the first chart (medians): the server, its children
(a cold-start helper, where the design has one) and Chromium with Playwright's driver; on 2 cores, half their sum is
a floor under the first chart.

Python's bytecode is compiled first (``compileall``, into the usual ``__pycache__`` folders, which git ignores) and
the server may write it, as any start after the first does: an environment with ``PYTHONDONTWRITEBYTECODE`` set
(these sessions') would otherwise make every start compile ~110 of the project's modules again (~0.15 s of CPU).

The examples are kept (``ui.cache.keep_examples``) in a temporary folder first; a checkout without them (the
cold-start helper process, before it was removed) is measured the same way, and the table says which design ran. The
title gives TensorFlow's import time on this machine (a fresh process, median of 3).
"""

from __future__ import annotations

import compileall
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
from tests.browser_support import CHART, ROOT, chromium_path, launch_chromium, streamlit_server
from ui.inputs import DEFAULT_TEXT

COLD_STARTS = 5
LINK_COLD_STARTS = 3  # the 128-token link: the slower path, measured fewer times
TOKENS = 128
TEXT_BOX = '[data-testid="stSidebar"] [data-testid="stTextArea"] textarea'
LAUNCHERS = {"make run (python -m ui.serving)": False, "streamlit run app.py": True}
FLOOR_LAUNCHER = "streamlit run bare.py (floor)"
# The floor: a bare Streamlit app with the default page's first control and a chart like its first one.
FLOOR = f"""
import numpy as np
import plotly.graph_objects as go
import streamlit as st

st.set_page_config(page_title="Floor", layout="wide")
with st.sidebar:
    st.title("Floor")
    st.text_area("Text", {DEFAULT_TEXT!r}, height=100)
cells = np.random.default_rng(0).random((12, 12))
st.plotly_chart(go.Figure(go.Heatmap(z=cells), layout={{"title": {{"text": "Layer 0, head 0"}}}}))
"""
SOURCES = ("app.py", "ui", "encoder", "viz", "analysis", "tutorial")  # what the page imports: compiled first
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


def cold_start(playwright, query: str, plain: bool, env: dict[str, str], text: str = DEFAULT_TEXT,
               script: str = "app.py") -> dict:
    """One fresh server (``script`` under plain ``streamlit run``) and page ``/?query`` whose Text box holds
    ``text``: seconds from the process's start to the server's health check (``up``), to the page's controls
    (``paint``) and to the first chart (``chart``), and to the browser's receiving the frames that carry them
    (``text msg``, ``chart msg``) and the session's first frame (``socket``); whether TensorFlow was loaded in the
    server then (``tf``); CPU seconds by then (``cpu``: server, its children, Chromium)."""
    browser = launch_chromium(playwright)  # started first: Chromium's own start is not the app's
    page = browser.new_page(viewport={"width": 1500, "height": 1100})
    page.set_default_timeout(180_000)
    page.goto("about:blank")
    marks = {"text msg": text.encode(), "chart msg": b"Layer 0, head 0"}
    received: dict[str, float] = {}

    def frame(payload: bytes | str) -> None:
        data = payload if isinstance(payload, bytes) else payload.encode()
        received.setdefault("socket", time.perf_counter())  # the first frame: the session's start
        for name, mark in marks.items():
            if name not in received and mark in data:
                received[name] = time.perf_counter()

    page.on("websocket", lambda socket: socket.on("framereceived", frame))
    with streamlit_server(env=env, plain=plain, script=script) as url:
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
            "cpu": cpu, **{name: received.get(name, float("nan")) - url.started for name in ("socket", *marks)}}


def _row(launcher: str, page: str, colds: list[dict]) -> dict:
    def median(key: str) -> float:
        return statistics.median(cold[key] for cold in colds)

    cpu = [statistics.median(cold["cpu"][index] for cold in colds) for index in range(3)]
    charts = [cold["chart"] for cold in colds]
    return {
        "launcher": launcher, "page": page, "server up": f"{median('up'):.2f} s",
        "socket / text msg / chart msg": f"{median('socket'):.2f} / {median('text msg'):.2f} / "
                                         f"{median('chart msg'):.2f} s",
        "first paint": f"{median('paint'):.2f} s",
        "first chart (each)": f"**{median('chart'):.2f} s** ({', '.join(f'{chart:.2f}' for chart in charts)})",
        "TF in server at chart": f"{sum(cold['tf'] for cold in colds)} of {len(colds)}",
        "CPU server / children / Chromium": " / ".join(f"{seconds:.2f}" for seconds in cpu) + " s",
        "load": f"{os.getloadavg()[0]:.1f}",
    }


def compile_sources() -> None:
    """The project's bytecode written as a first start writes it (and the servers allowed to write more)."""
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
    for name in SOURCES:
        path = ROOT / name
        if path.is_dir():
            compileall.compile_dir(path, quiet=1)
        else:
            compileall.compile_file(path, quiet=1)


def floor_row(playwright, env: dict[str, str], folder: str) -> dict:
    """The floor: ``FLOOR`` (in ``folder``) under plain ``streamlit run``, default page, ``COLD_STARTS`` times."""
    script = Path(folder) / "bare.py"
    script.write_text(FLOOR)
    colds = [cold_start(playwright, "", True, env, script=str(script)) for _ in range(COLD_STARTS)]
    return _row(FLOOR_LAUNCHER, "Text box + one heatmap", colds)


def main() -> list[dict]:
    from playwright.sync_api import sync_playwright

    if chromium_path() is None:
        return [{"measure": "skipped: no Chromium at /usr/bin/chromium", "value": ""}]
    compile_sources()
    model = load_source("minilm")
    text = text_of_length(model.tokenizer, TOKENS)
    pages = {"default page": ("", DEFAULT_TEXT, COLD_STARTS),
             f"{TOKENS}-token link": (urllib.parse.urlencode({"text": text}), text, LINK_COLD_STARTS)}
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
            rows.append(floor_row(playwright, env, folder))
            for launcher, plain in LAUNCHERS.items():
                for page, (query, shown, count) in pages.items():
                    colds = [cold_start(playwright, query, plain, env, shown) for _ in range(count)]
                    rows.append(_row(launcher, page, colds))
    print_table(f"Cold start in Chromium ({design()}), median of {COLD_STARTS} ({LINK_COLD_STARTS} for the link); "
                f"import tensorflow here: {wall:.2f} s wall, {cpu:.2f} s CPU (median of 3)", rows)
    return []


if __name__ == "__main__":
    main()
