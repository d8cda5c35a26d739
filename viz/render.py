"""Figures out of the app: PNG, SVG and PDF through kaleido and Chromium, or one self-contained HTML page.

Image export keeps one headless Chromium open (through kaleido) in a background thread: the first export pays the
browser start (~1.5 s), later ones ~0.15 s. We run that browser ourselves instead of ``kaleido.start_sync_server()``
because its server thread waits forever when the browser fails to start; here a failure raises ``ExportError``.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import logging
import os
import threading

import plotly.graph_objects as go

from encoder.errors import ExportError
from viz.clicks import is_click_layer
from viz.scrub import without_slider

IMAGE_FORMATS = ("png", "svg", "pdf")
FIGURE_FORMATS = (*IMAGE_FORMATS, "html")
# plotly.js 4 shows a "Share chart" button that uploads to Plotly's cloud; an offline page must not offer it.
HTML_CONFIG = {"displaylogo": False, "showSendToCloud": False, "toImageButtonOptions": {"format": "svg"}}
START_TIMEOUT = 60.0  # seconds for Chromium to start
RENDER_TIMEOUT = 120.0  # seconds for one image


def find_browser() -> str:
    """Path of the Chromium kaleido will drive: ``BROWSER_PATH`` if set, else the first Chrome/Chromium found.

    Raises:
        ExportError: none found (the message says how to get one).
    """
    configured = os.environ.get("BROWSER_PATH")
    if configured:
        if not (os.path.isfile(configured) and os.access(configured, os.X_OK)):
            raise ExportError(
                f"BROWSER_PATH={configured!r} is not an executable file. Point it at Chrome or Chromium "
                "(e.g. /usr/bin/chromium) or unset it."
            )
        return configured
    from choreographer.browsers import Chromium

    found = Chromium.find_browser(skip_local=False)
    if found is None:
        raise ExportError(
            "PNG, SVG and PDF export need Chrome or Chromium, and none was found. Install one "
            "(Debian/Ubuntu: `sudo apt-get install chromium`; or `kaleido_get_chrome`) or set BROWSER_PATH to its "
            "executable. HTML export and the data formats (npz, json, csv) work without a browser."
        )
    return str(found)


class _Renderer:
    """One kaleido browser kept open on an event loop in a daemon thread; calls from any thread are serialised."""

    def __init__(self, browser: str):
        import kaleido

        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="headlight-kaleido", daemon=True)
        self._thread.start()

        async def open_browser() -> kaleido.Kaleido:
            instance = kaleido.Kaleido(path=browser, mathjax=False)  # mathjax=False: never fetch it from a CDN
            await instance.open()
            return instance

        try:
            self._kaleido = self._run(open_browser(), START_TIMEOUT)
        except BaseException as error:
            self._stop_loop()
            raise ExportError(
                f"Chromium at {browser} did not start for image export ({type(error).__name__}: {error}). "
                "Check that it runs (`chromium --headless --version`) or set BROWSER_PATH to a working one."
            ) from error

    def _run(self, coroutine, timeout: float):
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout)

    def render(self, figure: dict, fmt: str, width: int, height: int, scale: float) -> bytes:
        opts = dict(format=fmt, width=width, height=height, scale=scale)
        return self._run(self._kaleido.calc_fig(figure, opts=opts), RENDER_TIMEOUT)

    def close(self) -> None:
        # Chromium's goodbye ("{bye}") can reach choreographer's reader, which logs it as a JSON error: not ours.
        logging.getLogger("choreographer").setLevel(logging.CRITICAL)
        with contextlib.suppress(Exception):  # closing at exit is best effort; the browser dies with us anyway
            self._run(self._kaleido.close(), 10.0)
        self._stop_loop()

    def _stop_loop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5.0)


_renderer: _Renderer | None = None
_renderer_lock = threading.Lock()


def _get_renderer() -> _Renderer:
    global _renderer
    with _renderer_lock:
        if _renderer is None:
            _renderer = _Renderer(find_browser())
            atexit.register(_close_renderer)
        return _renderer


def _close_renderer() -> None:
    global _renderer
    with _renderer_lock:
        if _renderer is not None:
            _renderer.close()
            _renderer = None


def figure_to_bytes(
    fig: go.Figure, fmt: str = "png", *, width: int | None = None, height: int | None = None, scale: float = 1.0
) -> bytes:
    """Render ``fig`` to PNG, SVG or PDF bytes with Chromium (size from the figure's layout unless given; a head
    slider and the room above the plot it takes are left out: the image shows the head the figure was built at).

    ``scale`` multiplies the pixel size of PNGs (2 for print). The first call starts a browser (~1.5 s); later
    calls reuse it.

    Raises:
        ExportError: unknown format, no browser, or the browser failed.
    """
    fmt = _check_format(fmt, IMAGE_FORMATS)
    if scale <= 0:
        raise ExportError(f"scale must be positive, got {scale}")
    # The head slider and invisible click layers only serve the browser; an image shows the head it was made at.
    figure = without_slider(fig.to_plotly_json())
    figure["data"] = [t for t in figure.get("data", []) if not is_click_layer(t)]
    width = int(width or figure["layout"].get("width") or 800)
    height = int(height or figure["layout"].get("height") or 600)
    renderer = _get_renderer()
    try:
        return renderer.render(figure, fmt, width, height, scale)
    except Exception as error:
        if _browser_broken(error):  # drop it; the next export starts a fresh browser
            _discard_renderer(renderer)
        raise ExportError(f"{fmt.upper()} export failed ({type(error).__name__}: {error})") from error


def _browser_broken(error: Exception) -> bool:
    from choreographer.channels import ChannelClosedError
    from kaleido.errors import BrowserClosedError, BrowserFailedError

    return isinstance(error, (TimeoutError, ChannelClosedError, BrowserClosedError, BrowserFailedError))


def _discard_renderer(renderer: _Renderer) -> None:
    global _renderer
    with _renderer_lock:
        if _renderer is renderer:
            _renderer = None
    renderer.close()


def figure_to_html(fig: go.Figure) -> str:
    """A complete HTML page that shows ``fig`` offline: plotly.js is inlined, nothing is loaded from a URL; a head
    slider (``viz.scrub``) keeps working in it."""
    return fig.to_html(
        include_plotlyjs=True,
        include_mathjax=False,
        full_html=True,
        config=HTML_CONFIG,
    )


def _check_format(fmt: str, allowed: tuple[str, ...]) -> str:
    normalized = str(fmt).lower().lstrip(".")
    if normalized not in allowed:
        raise ExportError(f"format {fmt!r} is not one of {', '.join(allowed)}")
    return normalized

