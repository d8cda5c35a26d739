"""Download menus and buttons: the trace as NPZ/JSON/CSV, and the menu and button every figure download uses
(``ui.charts``). A menu's buttons are drawn only while it is open, so a layer, head or view change sends one element
per menu rather than a row of buttons.

Files are made only when a button is clicked (``data`` is a callable), so drawing the page costs nothing. A made
file stays in the server's memory for the session, so no trace download is offered above ``MAX_DOWNLOAD_BYTES``
(100 MB, estimated from above before anything is made): a 512-token MiniLM trace is 79 MB as NPZ (offered), its
CSV of all 12 heads of a layer ~103 MB (offered for the first heads that fit, 8.6 MB each). Analysis numbers are
bounded by their inputs (rollout, the largest, is ~9 MB of CSV at 512 tokens).
"""

from __future__ import annotations

import contextlib
import functools
import io
from collections.abc import Callable, Iterator

import streamlit as st

from encoder import trace_io
from encoder.budget import held_bytes
from encoder.errors import ExportError
from encoder.trace import EncoderTrace
from viz import render
from viz.kinds import ENCODER, CrossTrace, of_kind, query_side, write_kind_csv

MIME = {"png": "image/png", "svg": "image/svg+xml", "pdf": "application/pdf", "html": "text/html",
        "npz": "application/octet-stream", "json": "application/json", "csv": "text/csv"}
FULL_JSON_MAX_TOKENS = 128  # a whole trace as JSON is ~22 MB at 128 tokens and ~250 MB at 512
MAX_DOWNLOAD_BYTES = 100 * 2**20  # no trace download is larger
JSON_BYTES_PER_FLOAT = 16  # the longest float32 in its shortest decimal form, "-1.2345678e-05", and a comma
CSV_ROW_BYTES = 40  # a CSV row without its two tokens: layer, head, query, key (<= 4 digits each), weight, commas


@st.cache_data(show_spinner=False)
def image_export_available() -> bool:
    """Whether a Chromium for PNG/SVG/PDF export exists (checked once per process)."""
    try:
        render.find_browser()
    except ExportError:
        return False
    return True


@contextlib.contextmanager
def download_menu(label: str, key: str, help: str | None = None) -> Iterator[bool]:
    """A menu (a popover) whose buttons are drawn only while it is open: closed, it sends one element per run, not
    one per file; opening it re-runs only the fragment it is in. Yields whether it is open."""
    with st.popover(label, icon=":material/download:", key=key, on_change="rerun", help=help) as menu:
        yield menu.open


def download_button(label: str, data: Callable[[], bytes | str], file_name: str, fmt: str, key: str,
                    help: str | None = None) -> None:
    st.download_button(label, data, file_name=file_name, mime=MIME[fmt], on_click="ignore", key=key, help=help)


def json_bytes(trace: EncoderTrace) -> int:
    """About the most bytes ``trace_to_json(trace)`` can take: every float32 at its longest."""
    return held_bytes(trace) // 4 * JSON_BYTES_PER_FLOAT


def csv_bytes(trace: EncoderTrace | CrossTrace, heads: int) -> int:
    """At most the bytes of ``trace_to_csv`` for one layer and ``heads`` heads: Tq * Tk rows per head (queries
    ``viz.kinds.query_side``'s tokens, keys the trace's), each query written Tk times, each key Tq times."""
    queries, keys = query_side(trace).tokens, trace.tokens
    query_chars, key_chars = (_csv_chars(tuple(side)) for side in (queries, keys))
    return heads * (len(queries) * len(keys) * CSV_ROW_BYTES + len(keys) * query_chars + len(queries) * key_chars)


@functools.lru_cache(maxsize=8)
def _csv_chars(tokens: tuple[str, ...]) -> int:
    """The bytes of ``tokens`` as CSV cells, summed (kept for the last few texts: every rerun of a page asks)."""
    return sum(len(trace_io.csv_cell(token).encode("utf-8")) for token in tokens)


def kind_csv(trace: EncoderTrace, kind: str, layer: int, heads: tuple[int, ...]) -> str:
    """The CSV of ``kind`` attention of ``trace`` (``viz.kinds.write_kind_csv``), one layer's ``heads``."""
    buffer = io.StringIO()
    write_kind_csv(trace, kind, buffer, [layer], list(heads))
    return buffer.getvalue()


def heads_that_fit(trace: EncoderTrace | CrossTrace, heads: tuple[int, ...]) -> tuple[int, ...]:
    """The first of ``heads`` whose CSV (one layer) fits ``MAX_DOWNLOAD_BYTES`` (all of them, usually)."""
    return heads[:MAX_DOWNLOAD_BYTES // csv_bytes(trace, 1)]


def trace_downloads_ui(trace: EncoderTrace, stem: str, layer: int, heads: tuple[int, ...],
                       kind: str = ENCODER) -> None:
    """The trace's numbers, each file at most ``MAX_DOWNLOAD_BYTES``: NPZ (everything), JSON (everything, up to
    128 tokens), CSV (this layer's heads of the ``kind`` attention shown, or the first of them that fit)."""
    with download_menu("Trace numbers", "menu-trace-numbers", help="This trace's numbers: NPZ, JSON, CSV") as open_:
        if open_:
            _trace_buttons(trace, stem, layer, heads, kind)


def _trace_buttons(trace: EncoderTrace, stem: str, layer: int, heads: tuple[int, ...], kind: str) -> None:
    csv_heads = heads_that_fit(of_kind(trace, kind), heads)
    head_text = f"head {csv_heads[0]}" if len(csv_heads) == 1 else f"{len(csv_heads)} heads"
    which = "" if kind == ENCODER else f" of the {kind} attention"
    st.markdown(f"**This trace's numbers** · NPZ and JSON: tokens, attention of every layer and head, hidden "
                f"states, positional rows · CSV: layer {layer}, {head_text}{which}, one row per (query, key)")
    limit = f"{MAX_DOWNLOAD_BYTES // 2**20} MB"
    notes = []
    with st.container(horizontal=True, gap="small"):
        if held_bytes(trace) <= MAX_DOWNLOAD_BYTES:
            download_button("NPZ", lambda: trace_io.trace_to_npz(trace), f"{stem}-trace.npz", "npz", "dl-trace-npz")
        else:
            notes.append(f"NPZ is offered up to {limit} (this trace holds {held_bytes(trace) / 2**20:.0f} MB); the "
                         "command line (python -m cli --text … -o trace.npz) writes it.")
        if trace.num_tokens <= FULL_JSON_MAX_TOKENS and json_bytes(trace) <= MAX_DOWNLOAD_BYTES:
            download_button("JSON", lambda: trace_io.trace_to_json(trace), f"{stem}-trace.json", "json",
                            "dl-trace-json")
        else:
            notes.append(f"JSON is offered up to {FULL_JSON_MAX_TOKENS} tokens and {limit} (a {trace.num_tokens}-"
                         "token trace would be hundreds of MB); NPZ holds everything.")
        if csv_heads:
            download_button("CSV", lambda: kind_csv(trace, kind, layer, csv_heads), f"{stem}-layer{layer}.csv", "csv",
                            "dl-trace-csv")
        if len(csv_heads) < len(heads):
            notes.append(f"CSV is offered up to {limit}: " + (f"the first {len(csv_heads)} of the {len(heads)} heads "
                         "shown." if csv_heads else "not even one head of this trace fits."))
        for note in notes:
            st.caption(note)


def file_stem(source: str) -> str:
    """A file-name-safe stem naming the model."""
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in source.strip("/").split("/")[-1])
    return f"headlight-{safe or 'model'}"
