"""Figure builders and export on MiniLM (6x12): build time, figure JSON size and draw time of every view at 32, 128
and 512 tokens; image export first (starts Chromium) and repeated; trace data export.

Build and serialise times are medians of repeated runs. "Draw" is a warm PNG export of the figure at scale 1 in
headless Chromium (plotly.js drawing it plus PNG encoding): an upper bound on drawing it in the app's browser.
"""

from __future__ import annotations

import os
import time

from bench.common import median_ms, print_table

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

LENGTHS = (32, 128, 512)
SETTINGS = {
    "heatmap": dict(layer=2, head=5),
    "head-grid": dict(layer=2),
    "model": {},
    "tokens": dict(layer=2, query=1),
    "lines": dict(layer=2),
    "distance": dict(layer=2),
    "positional": {},
    "position-similarity": {},
    "positional-dimensions": {},
}


def main(repeats: int = 5) -> None:
    from bench.encoder import text_of_length
    from encoder.sources import load_source
    from encoder.trace import trace_text
    from encoder.trace_io import trace_to_csv, trace_to_json, trace_to_npz
    from viz import VIEWS, build_view
    from viz.render import figure_to_bytes, figure_to_html

    model = load_source("minilm")
    traces = {n: trace_text(model, text_of_length(model.tokenizer, n)) for n in LENGTHS}
    for n, trace in traces.items():
        assert trace.num_tokens == n, (n, trace.num_tokens)

    # The first image export starts Chromium: measure it before anything else renders.
    small = build_view(traces[32], "heatmap", **SETTINGS["heatmap"])
    start = time.perf_counter()
    figure_to_bytes(small, "png")
    first_ms = 1000 * (time.perf_counter() - start)

    rows = []
    for view in VIEWS:
        for n, trace in traces.items():
            options = SETTINGS.get(view, {})
            fig = build_view(trace, view, **options)
            payload = fig.to_json()
            rows.append({
                "view": view,
                "tokens": n,
                "build ms": f"{median_ms(lambda t=trace, v=view, o=options: build_view(t, v, **o), repeats):.1f}",
                "to_json ms": f"{median_ms(fig.to_json, repeats):.1f}",
                "JSON MB": f"{len(payload) / 1e6:.2f}",
                "traces": len(fig.data),
                "draw (PNG) ms": f"{median_ms(lambda f=fig: figure_to_bytes(f, 'png'), 3):.0f}",
            })
    print_table("Figure builders, MiniLM (6x12): median build time, figure JSON size, warm draw in Chromium", rows)

    fig = build_view(traces[128], "heatmap", **SETTINGS["heatmap"])
    model_512 = build_view(traces[512], "model")
    export_rows = [{"what": "PNG, heatmap 32 tokens, first (starts Chromium)", "ms": f"{first_ms:.0f}", "size": "-"}]
    for fmt in ("png", "svg", "pdf"):
        data = figure_to_bytes(fig, fmt)
        export_rows.append({"what": f"{fmt.upper()}, heatmap 128 tokens, repeated (median)",
                            "ms": f"{median_ms(lambda f=fmt: figure_to_bytes(fig, f), repeats):.0f}",
                            "size": f"{len(data) / 1e3:.0f} kB"})
    data = figure_to_bytes(model_512, "png", scale=2)
    export_rows.append({"what": "PNG x2, model view 512 tokens, repeated (median)",
                        "ms": f"{median_ms(lambda: figure_to_bytes(model_512, 'png', scale=2), 3):.0f}",
                        "size": f"{len(data) / 1e3:.0f} kB"})
    page = figure_to_html(fig)
    export_rows.append({"what": "HTML (plotly.js inlined), heatmap 128 tokens",
                        "ms": f"{median_ms(lambda: figure_to_html(fig), repeats):.0f}",
                        "size": f"{len(page.encode()) / 1e6:.2f} MB"})
    for name, function in (("NPZ", trace_to_npz), ("JSON", trace_to_json), ("CSV (all layers, heads)", trace_to_csv)):
        for n in (32, 128):
            data = function(traces[n])
            size = len(data) if isinstance(data, bytes) else len(data.encode())
            export_rows.append({"what": f"trace -> {name}, {n} tokens",
                                "ms": f"{median_ms(lambda f=function, t=traces[n]: f(t), 3):.0f}",
                                "size": f"{size / 1e6:.2f} MB"})
    print_table("Export", export_rows)


if __name__ == "__main__":
    main()
