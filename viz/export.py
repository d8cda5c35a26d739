"""Everything that leaves the app: figures as PNG/SVG/PDF (kaleido + Chromium) or self-contained HTML, traces as
NPZ/JSON/CSV, and the command line ``python -m viz.export`` for making figures in batch outside the browser.

Image export keeps one headless Chromium open (through kaleido) in a background thread: the first export pays the
browser start (~1.5 s), later ones ~0.15 s. We run that browser ourselves instead of ``kaleido.start_sync_server()``
because its server thread waits forever when the browser fails to start; here a failure raises ``ExportError``.
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import contextlib
import csv
import io
import json
import logging
import os
import re
import sys
import tempfile
import threading
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import plotly.graph_objects as go

from encoder.errors import HeadlightError
from encoder.trace import EncoderTrace
from viz.attention import CLICK_LAYER

IMAGE_FORMATS = ("png", "svg", "pdf")
FIGURE_FORMATS = (*IMAGE_FORMATS, "html")
DATA_FORMATS = ("npz", "json", "csv")
FORMATS = (*FIGURE_FORMATS, *DATA_FORMATS)
CSV_HEADER = ("layer", "head", "query_index", "query_token", "key_index", "key_token", "weight")
JSON_FORMAT = "headlight-trace"
# plotly.js 4 shows a "Share chart" button that uploads to Plotly's cloud; an offline page must not offer it.
HTML_CONFIG = {"displaylogo": False, "showSendToCloud": False, "toImageButtonOptions": {"format": "svg"}}
START_TIMEOUT = 60.0  # seconds for Chromium to start
RENDER_TIMEOUT = 120.0  # seconds for one image


class ExportError(HeadlightError):
    """A figure or trace cannot be exported: no browser for images, a format we do not write, ..."""


# ---------------------------------------------------------------------------------------------------------------
# Figures -> PNG / SVG / PDF / HTML


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
    """Render ``fig`` to PNG, SVG or PDF bytes with Chromium (size from the figure's layout unless given).

    ``scale`` multiplies the pixel size of PNGs (2 for print). The first call starts a browser (~1.5 s); later
    calls reuse it.

    Raises:
        ExportError: unknown format, no browser, or the browser failed.
    """
    fmt = _check_format(fmt, IMAGE_FORMATS)
    width = int(width or fig.layout.width or 800)
    height = int(height or fig.layout.height or 600)
    if scale <= 0:
        raise ExportError(f"scale must be positive, got {scale}")
    figure = fig.to_plotly_json()
    # Invisible click layers only serve the browser; in an image they cost drawing time and nothing else.
    figure["data"] = [t for t in figure.get("data", []) if t.get("meta") != CLICK_LAYER]
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
    """A complete HTML page that shows ``fig`` offline: plotly.js is inlined, nothing is loaded from a URL."""
    return fig.to_html(
        include_plotlyjs=True,
        include_mathjax=False,
        full_html=True,
        config=HTML_CONFIG,
    )


# ---------------------------------------------------------------------------------------------------------------
# Traces -> NPZ / JSON / CSV, and back


def trace_to_npz(trace: EncoderTrace) -> bytes:
    """The whole trace as compressed NPZ bytes (``EncoderTrace.save`` format; read back with ``EncoderTrace.load``)."""
    with tempfile.TemporaryDirectory() as folder:
        path = trace.save(Path(folder) / "trace.npz")
        return path.read_bytes()


def trace_to_json(trace: EncoderTrace) -> str:
    """The whole trace as JSON: metadata plus every array as nested lists (read back with ``trace_from_json``).

    Floats are written as the shortest decimal that reads back to the same float32, so the round trip is exact.
    A full trace is large (~19 MB at 128 tokens for MiniLM); the CSV export can hold just one layer or head.
    """
    meta = {
        "format": JSON_FORMAT,
        "version": 1,
        "model": trace.model,
        "text": trace.text,
        "pair": trace.pair,
        "truncated": trace.truncated,
        "untruncated_length": trace.untruncated_length,
        "labels": list(trace.labels),
        "tokens": list(trace.tokens),
        "shapes": {"layers": trace.num_layers, "heads": trace.num_heads, "tokens": trace.num_tokens},
        "token_ids": trace.token_ids.tolist(),
        "segment_ids": trace.segment_ids.tolist(),
        "special": trace.special.tolist(),
        "dtypes": {name: str(np.asarray(value).dtype) for name, value in trace.outputs.items()},
    }
    arrays = {
        "attention": trace.attention,
        "positional": trace.positional,
        "positional_table": trace.positional_table,
        "hidden": trace.hidden,
    }
    parts = [json.dumps(meta, ensure_ascii=False, separators=(",", ":"))[:-1]]
    parts += [f',"{name}":{_json_array(value)}' for name, value in arrays.items()]
    outputs = ",".join(f"{json.dumps(name)}:{_json_array(np.asarray(v))}" for name, v in trace.outputs.items())
    parts.append(f',"outputs":{{{outputs}}}}}')
    return "".join(parts)


def _json_array(array: np.ndarray) -> str:
    """A nested JSON list; float32 values in their shortest exact decimal form (NumPy's repr)."""
    if array.dtype.kind != "f":
        return json.dumps(array.tolist())
    if not np.all(np.isfinite(array)):
        raise ExportError("the trace holds NaN or infinite values, which JSON cannot store")
    text = array.astype(str)

    def nest(block: np.ndarray) -> str:
        if block.ndim == 1:
            return "[" + ",".join(block.tolist()) + "]"
        return "[" + ",".join(nest(inner) for inner in block) + "]"

    return nest(text) if array.ndim else str(text)


def trace_from_json(text: str) -> EncoderTrace:
    """Read a trace written by ``trace_to_json``.

    Raises:
        ExportError: not JSON, or not a Headlight trace.
    """
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise ExportError(f"not a JSON trace: {error}") from error
    if not isinstance(data, dict) or data.get("format") != JSON_FORMAT:
        raise ExportError(f"not a Headlight trace: expected \"format\": \"{JSON_FORMAT}\"")
    return EncoderTrace(
        model=data["model"],
        tokens=tuple(data["tokens"]),
        token_ids=np.asarray(data["token_ids"], dtype=np.int32),
        segment_ids=np.asarray(data["segment_ids"], dtype=np.int32),
        special=np.asarray(data["special"], dtype=bool),
        attention=np.asarray(data["attention"], dtype=np.float32),
        positional=np.asarray(data["positional"], dtype=np.float32),
        positional_table=np.asarray(data["positional_table"], dtype=np.float32),
        hidden=np.asarray(data["hidden"], dtype=np.float32),
        outputs={k: np.asarray(v, dtype=data["dtypes"][k]) for k, v in data["outputs"].items()},
        text=data["text"],
        pair=data["pair"],
        truncated=data["truncated"],
        untruncated_length=data["untruncated_length"],
        labels=tuple(data["labels"]),
    )


def write_attention_csv(
    trace: EncoderTrace,
    handle,
    layers: Iterable[int] | None = None,
    heads: Iterable[int] | None = None,
) -> int:
    """Write attention in long format to a text ``handle``; returns the number of data rows.

    Columns: layer, head, query_index, query_token, key_index, key_token, weight (one row per weight, in
    (layer, head, query, key) order; weights in the shortest decimal that reads back to the same float32).
    ``layers``/``heads`` restrict the rows (default all); a full trace has L*H*T*T rows.
    """
    from viz.common import check_heads, check_layer

    chosen_layers = sorted({check_layer(trace, x) for x in layers}) if layers is not None else range(trace.num_layers)
    chosen_heads = check_heads(trace, heads)
    writer = csv.writer(handle, lineterminator="\n")
    writer.writerow(CSV_HEADER)
    quoted = [_csv_field(t) for t in trace.tokens]
    count = trace.num_tokens
    key_parts = [f"{k},{quoted[k]}," for k in range(count)]
    rows = 0
    for layer in chosen_layers:
        for head in chosen_heads:
            for query in range(count):
                prefix = f"{layer},{head},{query},{quoted[query]},"
                values = trace.attention[layer, head, query].astype(str)
                handle.write("".join(f"{prefix}{key_parts[k]}{values[k]}\n" for k in range(count)))
                rows += count
    return rows


def trace_to_csv(trace: EncoderTrace, layers: Iterable[int] | None = None, heads: Iterable[int] | None = None) -> str:
    """``write_attention_csv`` into a string."""
    buffer = io.StringIO()
    write_attention_csv(trace, buffer, layers, heads)
    return buffer.getvalue()


def attention_from_csv(text: str) -> tuple[tuple[str, ...], np.ndarray, list[int], list[int]]:
    """Read long-format attention CSV back: (tokens, attention (L', H', T, T) float32, layers, heads).

    ``layers`` and ``heads`` list which of the trace's layers and heads the rows held, in order.

    Raises:
        ExportError: wrong header, or rows missing for a (layer, head, query, key).
    """
    reader = csv.reader(io.StringIO(text))
    header = next(reader, None)
    if tuple(header or ()) != CSV_HEADER:
        raise ExportError(f"CSV header is {header}, expected {list(CSV_HEADER)}")
    records = list(reader)
    if not records:
        raise ExportError("CSV has a header but no rows")
    columns = list(zip(*records))
    layer_col, head_col, query_col, key_col = (np.asarray(columns[i], dtype=np.int64) for i in (0, 1, 2, 4))
    weights = np.asarray(columns[6], dtype=np.float32)
    layers, heads = sorted(set(layer_col.tolist())), sorted(set(head_col.tolist()))
    count = int(max(query_col.max(), key_col.max())) + 1
    tokens = [""] * count
    for index, token in zip(query_col.tolist(), columns[3]):
        tokens[index] = token
    for index, token in zip(key_col.tolist(), columns[5]):
        tokens[index] = token
    expected = len(layers) * len(heads) * count * count
    if len(records) != expected:
        raise ExportError(f"CSV has {len(records)} rows; {len(layers)} layers x {len(heads)} heads x {count}² "
                          f"tokens need {expected}")
    attention = np.zeros((len(layers), len(heads), count, count), dtype=np.float32)
    attention[np.searchsorted(layers, layer_col), np.searchsorted(heads, head_col), query_col, key_col] = weights
    return tuple(tokens), attention, layers, heads


def _csv_field(token: str) -> str:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="").writerow([token])
    return buffer.getvalue()


def _check_format(fmt: str, allowed: tuple[str, ...]) -> str:
    normalized = str(fmt).lower().lstrip(".")
    if normalized not in allowed:
        raise ExportError(f"format {fmt!r} is not one of {', '.join(allowed)}")
    return normalized


# ---------------------------------------------------------------------------------------------------------------
# Command line


def _int_list(text: str) -> list[int]:
    try:
        return [int(part) for part in re.split(r"[,\s]+", text.strip()) if part]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected integers separated by commas, got {text!r}") from None


def _parser() -> argparse.ArgumentParser:
    from viz import VIEWS

    views = "\n".join(f"  {name:22} {view.description}" for name, view in VIEWS.items())
    parser = argparse.ArgumentParser(
        prog="python -m viz.export",
        description="Make a Headlight figure (png, svg, pdf, html) or export a trace's data (npz, json, csv).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=f"views:\n{views}\n\nexamples:\n"
               '  python -m viz.export --text "The cat sat on the mat." --view heatmap --layer 2 --head 5 -o fig.svg\n'
               '  python -m viz.export --text "The cat sat." --pair "It was tired." --view model -o model.png\n'
               '  python -m viz.export --text "The cat sat." --format csv --layer 0 -o layer0.csv\n'
               "  python -m viz.export --trace saved.npz --view tokens --query 2 -o tokens.pdf",
    )
    source = parser.add_argument_group("input")
    source.add_argument("--model", default="minilm", help="model source: minilm (default), tutorial, a folder, ...")
    source.add_argument("--text", help="the sentence to trace")
    source.add_argument("--pair", help="an optional second sentence")
    source.add_argument("--max-tokens", type=int, help="keep at most this many tokens")
    source.add_argument("--trace", type=Path, help="a saved trace (.npz or .json) instead of --model/--text")
    output = parser.add_argument_group("output")
    output.add_argument("-o", "--output", type=Path, required=True, help="file to write")
    output.add_argument("--format", choices=FORMATS, help="default: the output file's extension")
    output.add_argument("--view", default="heatmap", choices=list(VIEWS), help="figure to make (default heatmap)")
    output.add_argument("--width", type=int, help="image width in pixels (default: the figure's)")
    output.add_argument("--height", type=int, help="image height in pixels (default: the figure's)")
    output.add_argument("--scale", type=float, default=1.0, help="PNG pixel scale, e.g. 2 for print")
    settings = parser.add_argument_group("view settings (each applies to the views that take it)")
    settings.add_argument("--layer", type=int, help="layer (default 0); for csv: only this layer")
    settings.add_argument("--head", type=int, help="head (default 0); for csv: only this head")
    settings.add_argument("--heads", type=_int_list, help="heads, e.g. 0,3,5 (aggregate, tokens, lines)")
    settings.add_argument("--aggregate", choices=["mean", "max"], help="combine heads instead of one head")
    settings.add_argument("--layer-mean", action="store_true", help="average over all layers")
    settings.add_argument("--colorscale", help="Plotly colour scale name, e.g. Viridis, Cividis, Blues")
    settings.add_argument("--log-color", action="store_true", help="colour by log10(weight)")
    settings.add_argument("--hide-special", action="store_true", help="hide [CLS], [SEP] and similar tokens")
    settings.add_argument("--no-renormalize", action="store_true", help="with --hide-special, keep rows as they are")
    settings.add_argument("--block", choices=["AA", "AB", "BA", "BB"], help="sentence-pair block of the heatmap")
    settings.add_argument("--query", type=int, help="query token index (tokens, lines)")
    settings.add_argument("--direction", choices=["from", "to"], help="tokens: attention from or to the query")
    settings.add_argument("--threshold", type=float, help="lines: smallest weight drawn (default 0.05)")
    settings.add_argument("--dims", type=_int_list, help="positional-dimensions: dimensions to plot, e.g. 0,1,64")
    settings.add_argument("--thumbnail", type=int, help="model: cells per thumbnail side (default 64)")
    settings.add_argument("--max-positions", type=int, help="positional views: show the first N positions only")
    return parser


# CLI options that are view settings: each is the builder keyword of the same name (--hide-special -> hide_special).
_SETTINGS = ("layer", "head", "heads", "aggregate", "layer_mean", "colorscale", "log_color", "hide_special", "block",
             "query", "direction", "threshold", "dims", "thumbnail", "max_positions")


def _load_trace(args: argparse.Namespace) -> EncoderTrace:
    if args.trace is not None:
        if args.text is not None:
            raise ExportError("give either --trace or --text, not both")
        if not args.trace.is_file():
            raise ExportError(f"{args.trace} does not exist")
        if args.trace.suffix.lower() == ".json":
            return trace_from_json(args.trace.read_text(encoding="utf-8"))
        try:
            return EncoderTrace.load(args.trace)
        except (OSError, KeyError, ValueError) as error:
            raise ExportError(f"{args.trace} is not a saved trace: {error}") from error
    if args.text is None:
        raise ExportError("give --text (the sentence to trace) or --trace (a saved trace)")
    from encoder.sources import load_source
    from encoder.trace import trace_text

    return trace_text(load_source(args.model), args.text, args.pair, args.max_tokens)


def run(argv: list[str] | None = None) -> Path:
    """Parse ``argv``, make the figure or data file, write it; returns the path written."""
    from viz import VIEWS, build_view

    args = _parser().parse_args(argv)
    fmt = args.format or args.output.suffix.lower().lstrip(".")
    if fmt not in FORMATS:
        raise ExportError(f"cannot tell the format from {args.output.name!r}: use --format ({', '.join(FORMATS)})")
    given = {key: getattr(args, key) for key in _SETTINGS if getattr(args, key) not in (None, False)}
    if args.no_renormalize:
        given["renormalize"] = False
    trace = _load_trace(args)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "npz":
        trace.save(args.output)
    elif fmt == "json":
        args.output.write_text(trace_to_json(trace), encoding="utf-8")
    elif fmt == "csv":
        layers = [given["layer"]] if "layer" in given else None
        heads = given.get("heads", [given["head"]] if "head" in given else None)
        with args.output.open("w", encoding="utf-8", newline="") as handle:
            write_attention_csv(trace, handle, layers, heads)
    else:
        accepted = VIEWS[args.view].parameters
        ignored = ", ".join("--" + k.replace("_", "-") for k in sorted(set(given) - set(accepted)))
        if ignored:
            raise ExportError(f"view {args.view!r} does not take {ignored}")
        fig = build_view(trace, args.view, **given)
        if fmt == "html":
            args.output.write_text(figure_to_html(fig), encoding="utf-8")
        else:
            args.output.write_bytes(figure_to_bytes(fig, fmt, width=args.width, height=args.height, scale=args.scale))
    return args.output


def main(argv: list[str] | None = None) -> int:
    """Entry point: exit code 0 on success, 2 with a one-line message (no traceback) on bad input."""
    try:
        path = run(argv)
    except (HeadlightError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
