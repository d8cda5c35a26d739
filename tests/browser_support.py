"""A real Streamlit server and a real headless Chromium, for browser tests and the app benchmark."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = os.environ.get("HEADLIGHT_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
CHART = '[data-testid="stPlotlyChart"] .js-plotly-plot'


def chromium_path() -> str | None:
    """The Chromium to drive, or None when this machine has none."""
    if os.path.isfile(CHROMIUM) and os.access(CHROMIUM, os.X_OK):
        return CHROMIUM
    return shutil.which("chromium")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ServerURL(str):
    """The server's URL, which also knows the server's process id (``.pid``), e.g. to read its memory, and when the
    process was started (``.started``, ``time.perf_counter()``)."""

    pid: int
    started: float


@contextlib.contextmanager
def streamlit_server(timeout: float = 180.0, env: dict[str, str] | None = None,
                     plain: bool = False, script: str = "app.py") -> Iterator[ServerURL]:
    """Start the app as ``make run`` does (``python -m ui.serving``: ``streamlit run app.py`` with the model warming
    from the start), or with ``plain`` as hosted services do (``streamlit run app.py``; ``script`` instead of
    app.py, e.g. the cold-start benchmark's bare app), on 127.0.0.1 and a free port, with ``env`` added to the
    environment; yield its URL; stop it afterwards."""
    port = free_port()
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "KERAS_BACKEND": "tensorflow", "HF_HUB_OFFLINE": "1",
           **(env or {})}
    launcher = ["streamlit", "run", script] if plain else ["ui.serving"]
    command = [sys.executable, "-m", *launcher, "--server.address", "127.0.0.1",
               "--server.port", str(port), "--server.headless", "true", "--browser.gatherUsageStats", "false"]
    log = open(ROOT / "tests" / f".streamlit-{port}.log", "w+b")  # noqa: SIM115 - closed below
    started = time.perf_counter()
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = ServerURL(f"http://127.0.0.1:{port}")
    url.pid, url.started = process.pid, started
    try:
        deadline = time.monotonic() + timeout
        while True:
            if process.poll() is not None:
                log.seek(0)
                raise RuntimeError(f"streamlit exited with {process.returncode}:\n{log.read().decode()[-3000:]}")
            with contextlib.suppress(OSError), urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as answer:
                if answer.status == 200:
                    break
            if time.monotonic() > deadline:
                raise TimeoutError(f"streamlit did not answer on {url} within {timeout:.0f} s")
            time.sleep(0.05)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()
        Path(log.name).unlink(missing_ok=True)


def launch_chromium(playwright):
    return playwright.chromium.launch(executable_path=chromium_path(), headless=True, args=CHROMIUM_ARGS)


def chart_title(page, index: int = 0) -> str:
    """The visible title of the ``index``-th Plotly chart on the page."""
    return page.locator(f"{CHART} .gtitle").nth(index).text_content() or ""
