"""Long inputs (issue 22): traces of 2,048 / 4,096 / 8,192 tokens, whose attention is kept lazily
(``encoder.attention_store.LazyAttention``: a layer's queries and keys computed again from the trace's hidden states
when a view reads it, a head's (T, T) weights computed from them).

Two models with random weights, made here by ``transformers`` (no download) and saved as folders Headlight opens:

- a decoder of SmolLM2-135M's shape (``bench.decoder.make_folder``: 30 layers, 9 / 3 heads, width 576,
  vocabulary 49,152) with 8,192 positions;
- a ModernBERT-base-shaped encoder (``ModernBertModel``: 22 layers, 12 heads, width 768, feed-forward 1,152,
  vocabulary 50,368, a 128-token window in two layers of three, 8,192 positions) with the ModernBERT fixture's
  byte-level BPE tokenizer.

Each length of each model runs alone in a fresh process (``probe``): the model loaded, a trace of real prose cut to
the length (``bench.encoder.text_of_length``), its wall time, the process's peak resident memory (``getrusage``'s
``ru_maxrss``: after loading, after the trace, at the end) and its resident memory (the runtime alone, loaded,
with the trace); then the first heatmap (``build_view`` of layer 0, head 0, which reads the weights it draws, and
its JSON), a layer/head change (the last layer's head 1, likewise), one head's whole (T, T) weights materialised
(``trace.attention[layer, head]``) and a layer's queries and keys alone (a layer no view read: computed again from
the trace's hidden states, as the first heatmap and the change each do once). The trace is the first of its length
in the process, as a user waits for it (the comparison below times warm ones). Before it the probe traces and draws
a 16-token text (``WARM_TOKENS``), as the app has drawn the default text by then.

Against ``transformers`` (PyTorch, eager attention, ``attn_implementation="eager"``), one process per model,
alternating (ours, theirs with attentions, theirs without, ours, ...) after a warm-up of each at the first length,
medians of 3: our trace against their forward pass with ``output_attentions=True`` (the comparable workload: every
(H, T, T) weight computed and held; at 4,096 tokens it would hold 18 GB, so it runs at 2,048 only) and without it
(the floor: attention computed and dropped layer by layer); both with every hidden state as NumPy, and a decoder's
top-10 next tokens and next-token log-probabilities, as our trace holds them.

In the app in Chromium (``app_rows``): the encoder's folder opened by a link with an 8,192-token text, the
operator's cap raised to it (``HEADLIGHT_MAX_TOKENS``): the first chart, then head and layer changes.

``python -m bench long`` (``make bench``); parts alone: ``python -m bench.long --folders DIR`` makes the models,
then ``--probe FOLDER TOKENS``, ``--compare FOLDER decoder|encoder``, ``--app FOLDER TOKENS [--paste] [--pin]``.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ["HF_HUB_OFFLINE"] = "1"  # local folders only

ROOT = Path(__file__).resolve().parent.parent
FIXTURE = ROOT / "tests" / "fixtures" / "families" / "modernbert"  # its tokenizer: ids under 1,500
LENGTHS = (2048, 4096, 8192)
COMPARED = (2048, 4096)  # lengths traced against transformers
WITH_ATTENTIONS_MAX_BYTES = 6 * 2**30  # their output_attentions=True runs only where (L, H, T, T) fits this
REPEATS = {2048: 3, 4096: 3}
POSITIONS = 8192
WARM_TOKENS = 16  # the probe first traces and draws a text this long, as the app has by the time a long one comes
ENCODER_SHAPE = dict(vocab_size=50_368, hidden_size=768, intermediate_size=1152, num_hidden_layers=22,
                     num_attention_heads=12, max_position_embeddings=POSITIONS, local_attention=128,
                     global_attn_every_n_layers=3, pad_token_id=1498, cls_token_id=1496, sep_token_id=1497,
                     bos_token_id=1496, eos_token_id=1497)
SEED = 22
MODELS = {
    "decoder": "SmolLM2-135M-shaped decoder (30 x 9 / 3 heads, d=576)",
    "encoder": "ModernBERT-base-shaped encoder (22 x 12, d=768)",
}
APP_TOKENS = 8192
APP_CHANGES = 4  # head changes, then layer changes, in the app
PINNED = ({0}, {1})  # ``--pin``: the server's cores, Chromium's (and Playwright's driver's)
FIGURE_MAX_CELLS = 4_000_000  # a heatmap with more cells is not serialised here (an unbounded figure, see the row)


def make_encoder_folder(folder: Path) -> Path:
    """The ModernBERT-base-shaped folder: config.json + model.safetensors by ``save_pretrained``, and the
    fixture's tokenizer files."""
    import torch
    import transformers

    transformers.logging.set_verbosity_error()
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(SEED)
    transformers.ModernBertModel(transformers.ModernBertConfig(**ENCODER_SHAPE)).eval().save_pretrained(folder)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(FIXTURE / name, folder / name)
    config = json.loads((folder / "tokenizer_config.json").read_text())
    (folder / "tokenizer_config.json").write_text(json.dumps({**config, "model_max_length": POSITIONS}))
    return folder


def make_folders(parent: Path) -> dict[str, Path]:
    """Both models' folders under ``parent``, by ``MODELS`` key."""
    from bench.decoder import make_folder

    return {"decoder": make_folder(parent / "smollm2-shaped"), "encoder": make_encoder_folder(parent / "modernbert")}


def _peak_bytes() -> int:
    """This process's peak resident memory so far (Linux reports kB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _resident_bytes() -> int:
    """This process's resident memory now."""
    status = Path("/proc/self/status").read_text().splitlines()
    return 1024 * next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))


def _timed(function):
    """(seconds, result) of one call."""
    start = time.perf_counter()
    result = function()
    return time.perf_counter() - start, result


def _figure(trace, layer: int, head: int) -> dict:
    """Build the heatmap of ``layer``, ``head`` (seconds) and serialise it (seconds, bytes), unless it holds over
    ``FIGURE_MAX_CELLS`` cells (then its cell count instead)."""
    from viz import build_view

    built, figure = _timed(lambda: build_view(trace, "heatmap", layer=layer, head=head))
    cells = sum(len(data.z) * len(data.z[0]) for data in figure.data if getattr(data, "z", None) is not None)
    if cells > FIGURE_MAX_CELLS:
        return {"build_s": built, "cells": cells}
    serialised, payload = _timed(figure.to_json)
    return {"build_s": built, "cells": cells, "json_s": serialised, "json_bytes": len(payload)}


def _views(trace) -> dict:
    """The first heatmap (layer 0, head 0) and a change (the last layer's head 1) of ``trace``, each from nothing
    materialised (``_figure``: the view reads the weights it needs), then one whole head's (T, T) weights
    materialised apart (the last layer's head 2, as ``trace.attention[layer, head]`` gives it); and the bytes the
    trace keeps of its attention."""
    attention = trace.attention
    layers, heads, tokens = attention.shape[:3]
    numbers = {"tokens": tokens, "lazy": type(attention).__name__, "whole_bytes": 4 * layers * heads * tokens ** 2,
               "kept_bytes": getattr(attention, "kept_bytes", attention.nbytes), "hidden_bytes": trace.hidden.nbytes}
    numbers["first"] = _figure(trace, 0, 0)
    numbers["change"] = _figure(trace, layers - 1, 1 % heads)
    numbers["head_s"] = _timed(lambda: attention[layers - 1, 2 % heads])[0]
    if hasattr(attention, "queries_keys"):  # a layer no view read: its queries and keys computed (or read) alone
        numbers["layer_s"] = _timed(lambda: attention.queries_keys.layer(layers // 2))[0]
    return numbers


def probe(folder: Path, length: int) -> dict:
    """One model at one length, in this (fresh) process: load, trace, first heatmap, a layer/head change (see the
    module docstring); seconds and bytes."""
    import encoder.compiled  # noqa: F401  TensorFlow and Keras: the runtime's own memory, before the model
    from bench.encoder import text_of_length
    from encoder.sources import load_path
    from encoder.trace import trace_text
    from viz import build_view

    runtime = _resident_bytes()
    loaded = load_path(folder, name=folder.name)
    build_view(trace_text(loaded, text_of_length(loaded.tokenizer, WARM_TOKENS)), "heatmap")  # as the app has
    text = text_of_length(loaded.tokenizer, length)
    numbers = {"runtime_resident": runtime, "loaded_peak": _peak_bytes(), "loaded_resident": _resident_bytes()}
    trace_s, trace = _timed(lambda: trace_text(loaded, text))
    numbers.update(trace_s=trace_s, traced_peak=_peak_bytes(), traced_resident=_resident_bytes())
    numbers.update(_views(trace))
    return {**numbers, "end_peak": _peak_bytes()}


def measure(folder: Path, length: int) -> dict:
    """``probe(folder, length)`` in a fresh process."""
    result = subprocess.run([sys.executable, "-m", "bench.long", "--probe", str(folder), str(length)], cwd=ROOT,
                            capture_output=True, text=True, timeout=1800)
    if result.returncode:
        return {"error": result.stderr.strip().splitlines()[-1][:300] if result.stderr.strip() else "failed"}
    return json.loads(result.stdout.strip().splitlines()[-1])


def _gb(nbytes: float) -> str:
    return f"{nbytes / 2**30:.2f} GB"


def _figure_text(figure: dict) -> str:
    """The time to one heatmap (``_figure``'s numbers): built (its weights read), then serialised."""
    build = 1000 * figure["build_s"]
    if "json_s" not in figure:
        return f"{build:.0f} ms built; {figure['cells']:,} cells: no JSON"
    json_ms = 1000 * figure["json_s"]
    return (f"{build + json_ms:.0f} ms (figure {build:.0f} + JSON {json_ms:.0f} ms, "
            f"{figure['json_bytes'] / 2**20:.1f} MB)")


def probe_row(kind: str, m: dict) -> dict:
    """The table row of ``measure``'s numbers ``m`` for the model ``kind``."""
    if "error" in m:
        return {"model": MODELS[kind], "tokens": "", "trace": m["error"]}
    return {
        "model": MODELS[kind], "tokens": f"{m['tokens']:,}", "trace": f"{m['trace_s']:.1f} s",
        "peak memory: loaded / traced / at the end":
            f"{_gb(m['loaded_peak'])} / {_gb(m['traced_peak'])} / {_gb(m['end_peak'])}",
        "resident: runtime / loaded / with the trace":
            f"{_gb(m['runtime_resident'])} / {_gb(m['loaded_resident'])} / {_gb(m['traced_resident'])}",
        "trace holds: hidden states + attention's own (whole would be)":
            f"{_gb(m['hidden_bytes'])} + {_gb(m['kept_bytes'])} ({_gb(m['whole_bytes'])})",
        "first heatmap, layer 0 head 0": _figure_text(m["first"]),
        "layer/head change": _figure_text(m["change"]),
        "one head's (T, T) materialised": f"{1000 * m['head_s']:.0f} ms",
        "a new layer's queries and keys": f"{1000 * m['layer_s']:.0f} ms" if "layer_s" in m else ""}


def probe_rows(folders: dict[str, Path], lengths=LENGTHS) -> list[dict]:
    """``measure`` of each model at each length, as table rows (and the raw numbers as JSON lines on stderr)."""
    rows = []
    for kind, folder in folders.items():
        for length in lengths:
            m = measure(folder, length)
            print(json.dumps({"kind": kind, **m}), file=sys.stderr, flush=True)
            rows.append(probe_row(kind, m))
    return rows


def theirs_trace(folder: Path, kind: str):
    """transformers' side of the comparison: ``trace(text, attentions)`` -> (attentions (L of (H, T, T)) or None,
    hidden (L + 1, T, D), and a decoder's top-k ids (T, K) and next-token log-probabilities (T,)) as NumPy."""
    import numpy as np
    import torch
    import transformers

    from bench.decoder import _threads, next_token_outputs

    _threads()
    transformers.logging.set_verbosity_error()
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    auto = transformers.AutoModelForCausalLM if kind == "decoder" else transformers.AutoModel
    model = auto.from_pretrained(folder, attn_implementation="eager", dtype=torch.float32).eval()

    def trace(text: str, attentions: bool):
        batch = tokenizer(text, return_tensors="pt")
        with torch.inference_mode():
            out = model(**batch, output_attentions=attentions, output_hidden_states=True)
            hidden = np.stack([h[0].numpy() for h in out.hidden_states])
            weights = [a[0].numpy() for a in out.attentions] if attentions else None
            extra = next_token_outputs(out.logits[0], batch["input_ids"][0]) if kind == "decoder" else ()
        return weights, hidden, *extra

    return trace, tokenizer


def compare(folder: Path, kind: str, lengths=COMPARED) -> list[dict]:
    """Our trace against transformers at ``lengths``, alternating in this process (see the module docstring)."""
    from encoder.sources import load_path

    ours = load_path(folder, name=folder.name)
    theirs, tokenizer = theirs_trace(folder, kind)
    return [_compare_length(ours, theirs, tokenizer, kind, length, warm_up=length == lengths[0])
            for length in lengths]


def _compare_length(ours, theirs, tokenizer, kind: str, length: int, warm_up: bool = True) -> dict:
    """``compare``'s row at ``length`` tokens, after an untimed run of each side if ``warm_up`` (the first length:
    the code warm; a later length's first runs only touch fresh memory, which the median of the repeats leaves
    out)."""
    from bench.encoder import text_of_length
    from encoder.trace import trace_text

    text = text_of_length(ours.tokenizer, length)
    tokens = int(tokenizer(text, return_tensors="pt")["input_ids"].shape[1])
    whole = 4 * ours.config.num_layers * ours.config.num_heads * length * length
    runs = {"ours": lambda: trace_text(ours, text), "without": lambda: theirs(text, False)}
    if whole <= WITH_ATTENTIONS_MAX_BYTES:
        runs["with"] = lambda: theirs(text, True)
    for run in runs.values() if warm_up else ():  # not measured
        run()
    samples: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(REPEATS[length]):
        for name, run in runs.items():
            samples[name].append(_timed(run)[0])
    print(json.dumps({"kind": kind, "length": length, **samples}), file=sys.stderr, flush=True)
    median = {name: statistics.median(values) for name, values in samples.items()}
    with_text = (f"{median['with']:.1f} s (ratio {median['ours'] / median['with']:.2f})" if "with" in median
                 else f"not run: (L, H, T, T) would hold {_gb(whole)}")
    return {"model": MODELS[kind], "tokens": f"{length:,} (theirs {tokens:,})",
            "Headlight trace": f"{median['ours']:.1f} s", "transformers, output_attentions (ratio)": with_text,
            "transformers, no attentions (ratio)":
                f"{median['without']:.1f} s (ratio {median['ours'] / median['without']:.2f})",
            "runs": f"median of {REPEATS[length]}, alternating"}


def compare_rows(folders: dict[str, Path]) -> list[dict]:
    """``compare`` of each model, each in a fresh process (its rows as JSON)."""
    rows = []
    for kind, folder in folders.items():
        result = subprocess.run([sys.executable, "-m", "bench.long", "--compare", str(folder), kind], cwd=ROOT,
                                capture_output=True, text=True, timeout=3600)
        sys.stderr.write(result.stderr[-4000:])
        if result.returncode:
            rows.append({"model": MODELS[kind], "tokens": "", "Headlight trace": "failed"})
            continue
        rows += json.loads(result.stdout.strip().splitlines()[-1])
    return rows


# In the page: the arrival time and size of each large WebSocket message (a chart), before Streamlit handles it,
# and the time of each message the page sends (a widget's new value).
FRAME_PROBE = """
(() => {
  const Native = window.WebSocket;
  window.__charts = [];
  window.__sent = [];
  window.WebSocket = class extends Native {
    constructor(...args) {
      super(...args);
      this.addEventListener("message", (event) => {
        const size = event.data.byteLength ?? event.data.size ?? event.data.length ?? 0;
        if (size > 100000) window.__charts.push([performance.now(), size]);
      });
    }
    send(data) {
      window.__sent.push(performance.now());
      return super.send(data);
    }
  };
})();
"""
TRACED = r"/(^|\n)tokens: \d/.test(document.querySelector('[data-testid=\"stSidebar\"]')?.innerText ?? '')"
AHEAD_WAIT_SECONDS = 900.0  # the longest the bench waits for the heads computed ahead (the server's CPU idle)
IDLE_CPU = 0.1  # the server is idle when it used less CPU than this per second, twice in a row
PASTE_CHARS = 100_000  # "a 200-page text"
FIRST_TICK = '[data-testid="stPlotlyChart"] .js-plotly-plot .xtick text'
CHANGE_PAUSE = 0.3  # seconds between one change's chart and the next key press


def _wait_idle(pid: int, limit: float = AHEAD_WAIT_SECONDS) -> float:
    """Seconds until the process ``pid`` used under ``IDLE_CPU`` s of CPU in each of two consecutive seconds (the
    heads computed ahead are done), at most ``limit``."""
    from bench.common import cpu_seconds

    start, quiet, last = time.perf_counter(), 0, cpu_seconds(pid)
    while quiet < 2 and time.perf_counter() - start < limit:
        time.sleep(1.0)
        now = cpu_seconds(pid)
        quiet, last = (quiet + 1 if now - last < IDLE_CPU else 0), now
    return time.perf_counter() - start - 2.0


def _change(page, slider, key: str, title: str) -> dict:
    """One change: ``key`` pressed on ``slider`` until the chart's title starts with ``title``; seconds in all,
    until the page sent the new value (the page's part before the server), and until the chart's message reached
    the page (the server's part ends there; the rest is the browser's)."""
    from bench.app import _wait_title

    page.evaluate("window.__charts = []; window.__sent = []")
    before, start = page.evaluate("performance.now()"), time.perf_counter()
    slider.press(key)
    _wait_title(page, title, timeout_ms=600_000)
    total = time.perf_counter() - start
    charts, sent = page.evaluate("[window.__charts, window.__sent]")
    message = (charts[-1][0] - before) / 1000 if charts else float("nan")
    time.sleep(CHANGE_PAUSE)
    return {"total": total, "message": message, "sent": (sent[0] - before) / 1000 if sent else float("nan")}


def _changes_text(changes: list[dict]) -> str:
    """"median / max ms (sent median + server median + browser median ms)"."""
    totals = [c["total"] for c in changes]
    sent = [c["sent"] for c in changes]
    server = [c["message"] - c["sent"] for c in changes]
    browser = [c["total"] - c["message"] for c in changes]
    return (f"{1000 * statistics.median(totals):.0f} / {1000 * max(totals):.0f} ms (the page sends the value "
            f"{1000 * statistics.median(sent):.0f} + the server to the chart's message "
            f"{1000 * statistics.median(server):.0f} + browser {1000 * statistics.median(browser):.0f} ms)")


def _paste(page, length: int, layer: int, head: int) -> list[dict]:
    """A 200-page paste (``PASTE_CHARS`` characters of prose) into the text box, the chart showing ``layer``,
    ``head``: the cut message, the time to the chart of the cut text, and a head change afterwards."""
    from bench.encoder import TEXT

    prose = (TEXT * (PASTE_CHARS // len(TEXT) + 1))[:PASTE_CHARS]
    text = "Zebras " + prose[len("Zebras "):]
    first = page.locator(FIRST_TICK).first.text_content()
    box = page.get_by_role("textbox", name="Text", exact=True)
    box.fill(text)
    start = time.perf_counter()
    box.press("Control+Enter")
    page.wait_for_function("([sel, old]) => { const t = document.querySelector(sel); return t && t.textContent !== "
                           "old; }", arg=[FIRST_TICK, first], polling=100, timeout=1_800_000)
    drawn = time.perf_counter() - start
    cut = [alert for alert in page.locator('[data-testid="stAlert"]').all_text_contents() if "sees the first" in alert]
    slider = page.get_by_role("slider", name="Head")
    slider.focus()
    change = _change(page, slider, "ArrowLeft", f"Layer {layer}, head {head - 1}")
    return [
        {"measure": f"a {PASTE_CHARS:,}-character paste: cut to {length:,} tokens with a message",
         "value": cut[0][:120] if cut else "no message"},
        {"measure": "the paste, committed to its chart drawn (its trace included)", "value": f"{drawn:.1f} s"},
        {"measure": "then a head change", "value": _changes_text([change])},
    ]


@contextlib.contextmanager
def _cores(cores: set[int] | None) -> Iterator[None]:
    """Processes started meanwhile (by this one) run on ``cores`` only (None: as this process does); this process's
    own affinity is restored afterwards."""
    if cores is None:
        yield
        return
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, cores)
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


def app_rows(folder: Path, length: int = APP_TOKENS, paste: bool = False, pin: bool = False) -> list[dict]:
    """The app in Chromium on ``folder``'s model at ``length`` tokens (the text in the link, the operator's token
    cap raised to it, and the cache to 6 GB so the trace fits it): the first chart (from opening the link; and
    from the trace's end, when the sidebar shows its tokens), the heads computed ahead (until the server is idle),
    head and layer changes (kept images), a far layer's (End: not computed ahead; a trace over 2,048 tokens carries
    its block max image), each split into the server's
    part (to the chart's message, ``FRAME_PROBE``) and the browser's; CPU per change; with ``paste``, a 200-page
    paste (``_paste``). With ``pin``, the server runs on core 0 and Chromium (with Playwright's driver) on core 1
    (``PINNED``), as a visitor's browser runs on another machine than the server; else both share every core."""
    import urllib.parse

    from playwright.sync_api import TimeoutError as PlaywrightTimeout
    from playwright.sync_api import sync_playwright

    from bench.app import _wait_title
    from bench.common import browser_cpu, cpu_seconds
    from bench.encoder import text_of_length
    from encoder.tokenizer import TextTokenizer
    from tests.browser_support import chromium_path, launch_chromium, streamlit_server

    if chromium_path() is None:
        return [{"measure": "skipped: no Chromium at /usr/bin/chromium", "value": ""}]
    text = text_of_length(TextTokenizer.from_folder(folder, POSITIONS), length)
    layers = json.loads((folder / "config.json").read_text())["num_hidden_layers"]
    query = urllib.parse.urlencode({"model": "folder or hub id…", "source": str(folder), "text": text})
    env = {"HEADLIGHT_MODEL_ROOTS": str(folder.parent), "HEADLIGHT_MAX_TOKENS": str(length), "HEADLIGHT_WARM_UP": "0",
           "HEADLIGHT_CACHE_MB": "6144"}
    server_cores, browser_cores = PINNED if pin else (None, None)
    with _cores(server_cores), streamlit_server(env=env) as url, _cores(browser_cores), \
            sync_playwright() as playwright:
        browser = launch_chromium(playwright)
        page = browser.new_page(viewport={"width": 1500, "height": 1100})
        page.add_init_script(FRAME_PROBE)
        page.set_default_timeout(600_000)
        start = time.perf_counter()
        page.goto(f"{url}/?{query}")
        try:
            page.wait_for_function(TRACED, polling=50, timeout=1_800_000)
            traced = time.perf_counter()
            _wait_title(page, "Layer 0, head 0", timeout_ms=600_000)
        except PlaywrightTimeout as error:  # what the page showed instead is the result
            shown = page.locator('[data-testid="stAlert"]').all_text_contents()
            return [{"measure": f"first chart at {length:,} tokens", "value": f"not drawn: {shown or error}"[:300]}]
        drawn = time.perf_counter()
        ahead = _wait_idle(url.pid)
        server, client = cpu_seconds(url.pid), browser_cpu(url.pid)
        head = page.get_by_role("slider", name="Head")
        head.focus()
        heads = [_change(page, head, "ArrowRight", f"Layer 0, head {h}") for h in range(1, APP_CHANGES + 1)]
        layer = page.get_by_role("slider", name="Layer")
        layer.focus()
        layer_changes = [_change(page, layer, "ArrowRight", f"Layer {lay}, head {APP_CHANGES}")
                         for lay in range(1, APP_CHANGES + 1)]
        count = len(heads) + len(layer_changes)
        server, client = (cpu_seconds(url.pid) - server) / count, (browser_cpu(url.pid) - client) / count
        far = _change(page, layer, "End", f"Layer {layers - 1}, head {APP_CHANGES}")
        rows = [
            {"measure": f"first chart from opening the link ({length:,} tokens; the trace included)",
             "value": f"{drawn - start:.1f} s"},
            {"measure": "first chart after the trace (the sidebar showing its tokens to the chart drawn)",
             "value": f"{drawn - traced:.2f} s"},
            {"measure": "heads computed ahead (until the server is idle)", "value": f"{ahead:.0f} s"},
            {"measure": f"head change (kept image), median / max of {len(heads)}", "value": _changes_text(heads)},
            {"measure": f"layer change (kept image), median / max of {len(layer_changes)}",
             "value": _changes_text(layer_changes)},
            {"measure": "CPU per change: server / Chromium (with Playwright's driver)",
             "value": f"{1000 * server:.0f} / {1000 * client:.0f} ms"},
            {"measure": f"a far layer (End: layer {layers - 1}, not computed ahead)", "value": _changes_text([far])},
        ]
        print(json.dumps(rows), file=sys.stderr, flush=True)  # kept should the paste fail
        if paste:
            rows += _paste(page, length, layers - 1, APP_CHANGES)
        browser.close()
    return rows


def main() -> list[dict]:
    from bench.common import print_table

    with tempfile.TemporaryDirectory(prefix="headlight-long-") as temp:
        folders = make_folders(Path(temp))
        print_table("Long inputs: trace, peak memory, first heatmap and a layer/head change, each length in a "
                    "fresh process", probe_rows(folders))
        print_table("Long inputs: trace against transformers (PyTorch, eager attention), median of alternating "
                    "runs", compare_rows(folders))
        print_table(f"Long inputs: the app in Chromium, {MODELS['encoder']}, {APP_TOKENS:,} tokens",
                    app_rows(folders["encoder"]))
    return []


if __name__ == "__main__":
    if sys.argv[1:2] == ["--probe"]:
        print(json.dumps(probe(Path(sys.argv[2]), int(sys.argv[3]))))
    elif sys.argv[1:2] == ["--compare"]:
        print(json.dumps(compare(Path(sys.argv[2]), sys.argv[3])))
    elif sys.argv[1:2] == ["--app"]:
        from bench.common import print_table

        pin = "--pin" in sys.argv[4:]
        print_table(f"Long inputs: the app in Chromium, {sys.argv[2]} at {int(sys.argv[3]):,} tokens, "
                    + ("server on core 0, Chromium on core 1" if pin else "server and Chromium sharing the cores"),
                    app_rows(Path(sys.argv[2]), int(sys.argv[3]), paste="--paste" in sys.argv[4:], pin=pin))
    elif sys.argv[1:2] == ["--folders"]:  # make the folders under a given parent (to run the parts by hand)
        print(json.dumps({kind: str(path) for kind, path in make_folders(Path(sys.argv[2])).items()}))
    else:
        main()
