"""Download buttons: the trace as NPZ/JSON/CSV, and the button every figure download uses (``ui.charts``).

Files are made only when a button is clicked (``data`` is a callable), so drawing the page costs nothing.
"""

from __future__ import annotations

from collections.abc import Callable

import streamlit as st

from encoder import trace_io
from encoder.errors import ExportError
from encoder.trace import EncoderTrace
from viz import render

MIME = {"png": "image/png", "svg": "image/svg+xml", "pdf": "application/pdf", "html": "text/html",
        "npz": "application/octet-stream", "json": "application/json", "csv": "text/csv"}
FULL_JSON_MAX_TOKENS = 128  # a whole trace as JSON is ~22 MB at 128 tokens and ~250 MB at 512


@st.cache_data(show_spinner=False)
def image_export_available() -> bool:
    """Whether a Chromium for PNG/SVG/PDF export exists (checked once per process)."""
    try:
        render.find_browser()
    except ExportError:
        return False
    return True


def download_button(label: str, data: Callable[[], bytes | str], file_name: str, fmt: str, key: str,
                    help: str | None = None) -> None:
    st.download_button(label, data, file_name=file_name, mime=MIME[fmt], on_click="ignore", key=key, help=help)


def trace_downloads_ui(trace: EncoderTrace, stem: str, layer: int, heads: tuple[int, ...]) -> None:
    """The trace's numbers: NPZ (everything), JSON (everything, up to 128 tokens), CSV (this layer's heads)."""
    head_text = f"head {heads[0]}" if len(heads) == 1 else f"{len(heads)} heads"
    st.markdown(f"**This trace's numbers** · NPZ and JSON: tokens, attention of every layer and head, hidden "
                f"states, positional rows · CSV: layer {layer}, {head_text}, one row per (query, key)")
    with st.container(horizontal=True, gap="small"):
        download_button("NPZ", lambda: trace_io.trace_to_npz(trace), f"{stem}-trace.npz", "npz", "dl-trace-npz")
        if trace.num_tokens <= FULL_JSON_MAX_TOKENS:
            download_button("JSON", lambda: trace_io.trace_to_json(trace), f"{stem}-trace.json", "json",
                            "dl-trace-json")
        download_button("CSV", lambda: trace_io.trace_to_csv(trace, layers=[layer], heads=list(heads)),
                        f"{stem}-layer{layer}.csv", "csv", "dl-trace-csv")
        if trace.num_tokens > FULL_JSON_MAX_TOKENS:
            st.caption(f"JSON is offered up to {FULL_JSON_MAX_TOKENS} tokens (a {trace.num_tokens}-token trace "
                       "would be hundreds of MB); NPZ holds everything.")


def file_stem(source: str) -> str:
    """A file-name-safe stem naming the model."""
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in source.strip("/").split("/")[-1])
    return f"headlight-{safe or 'model'}"
