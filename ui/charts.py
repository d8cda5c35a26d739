"""One chart and its downloads, used by every tab: the figure (clicks wired from its own click spec; a head slider in
it drawn with its steps sent apart and synced back to the controls, ``ui.scrub``), then a Download menu: PNG, SVG,
PDF (when a browser exists), HTML, and the numbers behind it as CSV/JSON where it has them."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import plotly.graph_objects as go
import streamlit as st

from ui import clicks
from ui.downloads import download_button, download_menu, image_export_available
from ui.drawn import plotly_figure
from ui.scrub import ScrubChart, scrub_chart, scrub_sync_ui
from viz import render
from viz.scrub import has_head_slider


def chart_ui(name: str, fig: go.Figure, stem: str, tokens: Sequence[str] = (),
             numbers: dict[str, Callable[[], str]] | None = None, shown: ScrubChart | None = None,
             own: Callable[[], go.Figure] | None = None) -> None:
    """Show ``fig`` under the key ``chart-{name}`` with its Download menu (files named ``{stem}-{name}.{fmt}``).

    ``tokens`` are the trace's tokens when clicks may pick a query token; ``numbers`` maps "csv"/"json" to makers
    of the figure's numbers (called only when the button is clicked). ``shown``: draw this step of ``fig``'s head
    slider instead of ``fig`` (the figure of another layer or head: ``ui.cache.get_view_chart``); then ``own()``
    builds that figure for the downloads, when one is asked for.
    """
    key = f"chart-{name}"
    scrub = shown or (scrub_chart(fig) if has_head_slider(fig) else None)
    st.plotly_chart(plotly_figure(fig) if scrub is None else scrub.drawn, theme=None, key=key, width="content",
                    config={"displaylogo": False}, on_select=clicks.on_select(fig, key, tokens),
                    selection_mode="points")
    if scrub is not None:
        scrub_sync_ui(key, scrub)
    figure_downloads_ui(name, fig if own is None else own, stem, numbers)


def figure_downloads_ui(name: str, fig: go.Figure | Callable[[], go.Figure], stem: str,
                        numbers: dict[str, Callable[[], str]] | None = None) -> None:
    """A Download menu under a figure (or under what ``fig()`` builds, built when a button is clicked) holding a row of
    buttons, drawn only while it is open: PNG, SVG, PDF (when a browser exists), HTML, and ``numbers`` formats."""
    with download_menu("Download", f"menu-{name}", help="This figure as an image, a page or its numbers") as open_:
        if open_:
            _figure_buttons(name, fig if callable(fig) else lambda: fig, stem, numbers)


def _figure_buttons(name: str, figure: Callable[[], go.Figure], stem: str,
                    numbers: dict[str, Callable[[], str]] | None) -> None:
    images = image_export_available()
    with st.container(horizontal=True, gap="small"):
        if images:
            for fmt in render.IMAGE_FORMATS:
                download_button(fmt.upper(), lambda fmt=fmt: render.figure_to_bytes(figure(), fmt),
                                f"{stem}-{name}.{fmt}", fmt, f"dl-{name}-{fmt}")
        download_button("HTML", lambda: render.figure_to_html(figure()), f"{stem}-{name}.html", "html",
                        f"dl-{name}-html", help="A self-contained page that works offline (plotly.js inlined)")
        for fmt, make in (numbers or {}).items():
            download_button(f"{fmt.upper()} (numbers)", make, f"{stem}-{name}.{fmt}", fmt, f"dl-{name}-{fmt}")
        if not images:
            st.caption("PNG/SVG/PDF need Chrome or Chromium (Debian: `apt-get install chromium`, or set "
                       "BROWSER_PATH); HTML and data downloads work.")
