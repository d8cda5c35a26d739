"""Bounded resources: one byte budget for every cached result (``encoder.budget``), the heavy-analysis limit, and the
caps on what one visitor can ask for (Max tokens, uploads, downloads)."""

from __future__ import annotations

import dataclasses
import json
import threading
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import plotly.io as pio
import pytest
from plotly.tools import return_figure_from_figure_or_data
from streamlit.testing.v1 import AppTest

from encoder.budget import ByteBudgetCache, held_bytes
from encoder.settings import settings
from tests.support.traces import synthetic_trace
from ui import cache
from ui.downloads import MAX_DOWNLOAD_BYTES, csv_bytes, heads_that_fit
from ui.scrub import scrub_chart

ROOT = Path(__file__).resolve().parent.parent
MB = 2**20
TOKENS = 512
TIMEOUT = 180


def long_trace(seed: int, layers: int = 6, heads: int = 12):
    """A MiniLM-shaped 512-token trace: 72 MB of attention (zeros: the pages are never touched, so a test can hold
    many), as a real trace holds."""
    tokens = ["[CLS]", *(f"w{seed}_{i}" for i in range(TOKENS - 2)), "[SEP]"]
    return synthetic_trace(tokens, attention=np.zeros((layers, heads, TOKENS, TOKENS), np.float32), seed=seed)


@dataclass(frozen=True)
class Result:
    """An analysis-like result: arrays in a dict, a tuple and a list."""

    matrices: dict
    pair: tuple
    rows: list


# ---------------------------------------------------------------------------------------------------------------
# What a value holds


def test_held_bytes_counts_every_array_once_and_a_view_as_what_it_keeps_alive():
    trace = long_trace(0, layers=1, heads=2)
    arrays = [trace.token_ids, trace.segment_ids, trace.special, trace.attention, trace.positional_table, trace.hidden]
    values = [getattr(trace, field.name) for field in dataclasses.fields(trace)]
    strings = [v for value in values for v in (value if isinstance(value, tuple) else (value,)) if isinstance(v, str)]
    # positional is a view of the table: counted once; the tokens and the text count as their length
    assert held_bytes(trace) == sum(a.nbytes for a in arrays) + held_bytes(tuple(strings))
    assert held_bytes(tuple(strings)) >= len(trace.text) > 0
    big = np.ones((4, 1000), np.float64)
    result = Result({"a": big, "b": np.ones(10, np.int8)}, (big[0], "text", 3), [[big[1:3]], None])
    assert held_bytes(result) == big.nbytes + 10 + 4  # the rows of ``big`` keep all of it alive, and count once
    assert held_bytes(big[:1]) == big.nbytes
    assert held_bytes("text") == held_bytes(b"text") == 4 and held_bytes(None) == held_bytes(3.5) == 0


def test_a_512_token_trace_holds_72_mb_of_attention():
    trace = long_trace(0)
    assert 72 * MB <= held_bytes(trace) < 74 * MB  # attention (6, 12, 512, 512) float32 is 72 MB


# ---------------------------------------------------------------------------------------------------------------
# The budget


def test_many_512_token_traces_stay_within_the_byte_budget_in_lru_order():
    budget = settings().cache_bytes  # HEADLIGHT_CACHE_MB, 1024 MB by default
    store = ByteBudgetCache(budget)
    size = held_bytes(long_trace(0))
    computed = []

    def trace(seed: int):
        computed.append(seed)
        return long_trace(seed)

    for seed in range(40):  # 40 x 73 MB = 2.9 GB asked for
        store.get(("trace", seed), lambda seed=seed: trace(seed))
        if seed == 20:
            store.get(("trace", 10), lambda: trace(10))  # a hit (10 is among the newest): now the newest
        assert store.kept_bytes <= budget
    fit = budget // size
    # 14 of them in 1024 MB (their token strings differ by a few bytes from seed to seed)
    assert len(store) == fit and abs(store.kept_bytes - fit * size) < fit * 10_000
    kept = store.kept_keys()
    assert kept[-1] == ("trace", 39) and ("trace", 39 - fit) not in store  # least recently used left first
    assert ("trace", 10) not in store  # it was touched at 20, then aged out like the rest
    assert computed.count(10) == 1  # ... the touch itself was a hit, not a second computation


def test_a_recently_used_entry_outlives_older_ones():
    size = held_bytes(long_trace(0))
    store = ByteBudgetCache(3 * size)
    for seed in range(3):
        store.get(seed, lambda seed=seed: long_trace(seed))
    store.get(0, lambda: pytest.fail("0 is kept"))  # touch 0: 1 is now the oldest
    store.get(3, lambda: long_trace(3))
    assert store.kept_keys() == [2, 0, 3] and store.kept_bytes == 3 * size
    store.resize(2 * size)
    assert store.kept_keys() == [0, 3]


def test_an_entry_larger_than_the_budget_is_returned_but_not_kept():
    store = ByteBudgetCache(50 * MB)
    store.get("small", lambda: np.zeros(MB, np.uint8))
    trace = store.get("huge", lambda: long_trace(0))  # 73 MB > 50 MB
    assert trace.num_tokens == TOKENS
    assert "huge" not in store and store.kept_keys() == ["small"] and store.kept_bytes == MB


def test_concurrent_requests_for_one_key_compute_once():
    store = ByteBudgetCache(100 * MB)
    calls, started = [], threading.Event()

    def slow() -> np.ndarray:
        calls.append(1)
        started.set()
        time.sleep(0.3)
        return np.arange(10)

    results = [None] * 8

    def ask(i: int) -> None:
        results[i] = store.get("key", slow)

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(calls) == 1 and all(r is results[0] for r in results)


def test_an_error_reaches_every_waiter_and_is_not_kept():
    store = ByteBudgetCache(MB)
    gate = threading.Event()

    def failing():
        gate.wait(5)
        raise ValueError("empty text")

    errors = []

    def ask() -> None:
        try:
            store.get("key", failing)
        except ValueError as error:
            errors.append(str(error))

    threads = [threading.Thread(target=ask) for _ in range(3)]
    for thread in threads:
        thread.start()
    time.sleep(0.1)
    gate.set()
    for thread in threads:
        thread.join()
    assert errors == ["empty text"] * 3 and "key" not in store
    assert store.get("key", lambda: np.ones(1)).tolist() == [1.0]  # a later request computes again


def test_a_stopped_computation_lets_a_waiter_compute_it():
    """A Streamlit run stopped mid-computation raises a BaseException in its own thread; another session waiting
    for the same key must not inherit that stop, but compute the value itself."""
    store = ByteBudgetCache(MB)
    waiting = threading.Event()

    class Stopped(BaseException):
        pass

    def stopped():
        waiting.wait(5)
        time.sleep(0.1)
        raise Stopped

    got = []

    def run_stopped() -> None:
        with pytest.raises(Stopped):
            store.get("key", stopped)

    owner = threading.Thread(target=run_stopped)
    owner.start()
    time.sleep(0.05)
    waiter = threading.Thread(target=lambda: got.append(store.get("key", lambda: np.ones(2), waiting=_note(waiting))))
    waiter.start()
    owner.join()
    waiter.join()
    assert got[0].tolist() == [1.0, 1.0] and "key" in store


def _note(event: threading.Event):
    """A ``waiting`` context factory that records that the thread waited."""
    from contextlib import nullcontext

    def waiting():
        event.set()
        return nullcontext()

    return waiting


# ---------------------------------------------------------------------------------------------------------------
# The app: one budget for traces and analyses, and the heavy-analysis limit


def test_the_app_keeps_traces_and_analyses_within_one_budget(monkeypatch):
    """Five 512-token texts and an analysis of each through the app, under a budget of two traces: the kept bytes
    never exceed it, and the newest results are the ones kept."""
    trace_size = 79 * MB  # a 512-token MiniLM trace
    store = ByteBudgetCache(2 * trace_size)
    monkeypatch.setattr(cache, "RESULTS", store)
    at = AppTest.from_file("../app.py", default_timeout=TIMEOUT)
    at.query_params["view"] = "Analysis"
    at.query_params["analysis"] = "Report card"
    at.run()
    for n in range(5):
        at.text_area(key="text").set_value(f"text {n} " + "word " * 600).run()
        assert not at.exception, [e.value for e in at.exception]
        assert store.kept_bytes <= store.max_bytes
    kinds = [key[0] for key in store.kept_keys()]
    assert kinds.count("trace") <= 2 and "analysis" in kinds
    newest = [key for key in store.kept_keys() if key[0] == "trace"][-1]
    assert newest[2].startswith("text 4 ")
    sizes = {key[0]: held_bytes(store.get(key, pytest.fail)) for key in store.kept_keys()}
    assert sizes["trace"] > 70 * MB and sizes["analysis"] < 64 * 1024  # the report card is a few (L, H) maps


def test_a_figure_is_built_once_per_input_and_settings_and_counted_in_the_budget(monkeypatch):
    """A layer or head change draws the kept figure moved to that step of its head slider (no figure built; the
    step's figure is the one built there: tests/test_scrub.py); moving back shows the kept figure itself; each kept
    figure holds its arrays in the budget."""
    store = ByteBudgetCache(settings().cache_bytes)
    monkeypatch.setattr(cache, "RESULTS", store)
    at = AppTest.from_file("../app.py", default_timeout=TIMEOUT).run()
    first = at.get("plotly_chart")[0].proto.spec
    at.slider(key="layer").set_value(1).run()
    at.slider(key="head").set_value(5).run()
    assert not at.exception
    figures = [key for key in store.kept_keys() if key[0] == "figure"]
    assert len(figures) == 1 and figures[0][1] == "heatmap"
    kept = store.get(figures[0], pytest.fail)
    moved = at.get("plotly_chart")[0].proto.spec
    assert json.loads(moved)["layout"]["title"]["text"].startswith("Layer 1, head 5")
    assert moved == pio.to_json(return_figure_from_figure_or_data(kept.scrub.at_step("1:5").drawn, True),
                                validate=False)
    built: list[tuple] = []
    monkeypatch.setattr(store, "_keep", lambda key, value: built.append(key))  # any new entry would show here
    at.slider(key="layer").set_value(0).run()
    at.slider(key="head").set_value(0).run()
    assert not at.exception and built == []
    assert at.get("plotly_chart")[0].proto.spec == first
    # the figure's arrays, and the figure the app draws: its own arrays and the slider steps' contents sent apart
    assert kept.scrub is not None and kept.scrub is scrub_chart(kept.figure)
    # ... and the JSON st.plotly_chart is given, made once: the same JSON Streamlit makes of the figure itself
    assert kept.drawn is kept.scrub.drawn.text
    assert first == pio.to_json(return_figure_from_figure_or_data(kept.scrub.drawn, True), validate=False)
    assert held_bytes(kept) == sum(a.nbytes for a in kept.arrays) + len(kept.scrub.steps) + held_bytes(
        (kept.scrub.steps_id, kept.scrub.values, kept.scrub.active, kept.scrub.spans)) + held_bytes(kept.drawn)
    assert len(kept.scrub.steps) > sum(a.nbytes for a in kept.arrays)  # the steps: most of what a figure holds


def test_corpus_results_are_kept_under_a_digest_of_the_sentences_not_the_sentences(monkeypatch):
    """The budget counts arrays; a key holding an uploaded corpus (up to 5 MB of text) would escape it."""
    store = ByteBudgetCache(settings().cache_bytes)
    monkeypatch.setattr(cache, "RESULTS", store)
    at = AppTest.from_file("../app.py", default_timeout=TIMEOUT)
    for name, value in {"view": "Analysis", "analysis": "Report card", "corpus": "test sentences"}.items():
        at.query_params[name] = value
    at.run()
    at.slider(key="corpus_size").set_value(50).run()
    assert not at.exception and "50 texts" in at.get("plotly_chart")[0].proto.spec
    kinds = [key[0] for key in store.kept_keys()]
    assert "corpus" in kinds and "analysis" in kinds
    assert all(len(repr(key)) < 1000 for key in store.kept_keys())


def test_a_session_waits_for_a_heavy_job_slot_and_says_so(monkeypatch):
    notes = []

    class Placeholder:
        def info(self, text, **kwargs):
            notes.append(text)

        def empty(self):
            notes.append(None)

    monkeypatch.setattr(cache.st, "empty", Placeholder)
    monkeypatch.setattr(cache, "HEAVY_JOBS", threading.BoundedSemaphore(1))
    cache.HEAVY_JOBS.acquire()  # another visitor's analysis is running
    ran = threading.Event()

    def job() -> None:
        with cache.heavy_job():
            ran.set()

    waiting = threading.Thread(target=job)
    waiting.start()
    time.sleep(1.5)
    assert not ran.is_set() and notes and notes[0] == cache.HEAVY_WAIT
    assert notes[-1].startswith(cache.HEAVY_WAIT) and "waiting 1 s" in notes[-1]
    cache.HEAVY_JOBS.release()
    waiting.join(5)
    assert ran.is_set() and notes[-1] is None  # the message is gone once it runs
    with cache.heavy_job():  # the slot was given back
        pass


# ---------------------------------------------------------------------------------------------------------------
# Caps


def test_max_tokens_is_capped_by_the_server_and_by_the_model(monkeypatch):
    at = AppTest.from_file("../app.py", default_timeout=TIMEOUT).run()
    box = at.number_input(key="max_tokens")
    assert (box.max, box.value) == (512, 512)  # MiniLM has 512 positions; the server allows 512
    monkeypatch.setenv("HEADLIGHT_MAX_TOKENS", "64")
    at = AppTest.from_file("../app.py", default_timeout=TIMEOUT)
    at.query_params["text"] = "word " * 100
    at.run()
    box = at.number_input(key="max_tokens")
    assert (box.max, box.value) == (64, 64)
    assert any("first 64" in i.value for i in at.info)  # the trace was truncated to the cap
    linked = AppTest.from_file("../app.py", default_timeout=TIMEOUT)
    linked.query_params["max_tokens"] = "4096"  # a link cannot ask for more
    linked.query_params["text"] = "word " * 100
    linked.run()
    assert not linked.exception
    assert any("first 64" in i.value for i in linked.info)


def test_uploads_are_small():
    config = tomllib.loads((ROOT / ".streamlit" / "config.toml").read_text(encoding="utf-8"))
    assert config["server"]["maxUploadSize"] <= 5  # MB, instead of Streamlit's 200


def test_a_trace_csv_never_exceeds_the_download_cap():
    from encoder.trace_io import trace_to_csv

    small = long_trace(1, layers=1, heads=2)
    csv = trace_to_csv(small, layers=[0], heads=[0])
    assert len(csv.encode()) <= csv_bytes(small, 1)  # the estimate is an upper bound
    trace = long_trace(0)  # 512 tokens, 12 heads: ~100 MB of CSV for a whole layer
    heads = heads_that_fit(trace, tuple(range(12)))
    assert 1 <= len(heads) < 12 and heads == tuple(range(len(heads)))
    assert csv_bytes(trace, len(heads)) <= MAX_DOWNLOAD_BYTES < csv_bytes(trace, len(heads) + 1)
    assert heads_that_fit(long_trace(0, layers=1, heads=2), (0, 1)) == (0, 1)


@pytest.mark.parametrize(("view", "name"), [("Heatmap", "heatmap"), ("Token view", "tokens"), ("Head lines", "lines")])
def test_layer_and_head_changes_of_every_sliding_view_build_no_figure(monkeypatch, view, name):
    """The views with the head slider build one figure per input and settings; a layer or head change draws it at
    that step (the title names the new head)."""
    store = ByteBudgetCache(settings().cache_bytes)
    monkeypatch.setattr(cache, "RESULTS", store)
    at = AppTest.from_file("../app.py", default_timeout=TIMEOUT)
    at.query_params["view"] = view
    at.run()
    at.slider(key="layer").set_value(2).run()
    at.slider(key="head").set_value(9).run()
    assert not at.exception
    figures = [key for key in store.kept_keys() if key[0] == "figure"]
    assert [key[1] for key in figures] == [name]
    (chart,) = at.get("plotly_chart")
    assert json.loads(chart.proto.spec)["layout"]["title"]["text"].startswith("Layer 2, head 9")
