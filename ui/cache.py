"""Everything the app computes, cached per process: the model once, one trace per input (and its words, merged),
one generated trace per prompt and generation settings ("Continue the text"), each analysis result once per input
and compute settings (one generic cache for every registry analysis).

Models stay in ``st.cache_resource`` (a few, bounded by count); the default one is the model ``ui.serving.warmup``
loaded in the background at start (``start_warm_up``), so every session shares that one instance; until it is loaded,
its card and its traces of the built-in examples come from disk (``examples``, ``encoder.trace_cache``: written by
the warm-up, or ``make run``), so a first visitor's default page needs no TensorFlow. A name a visitor
chose is opened through ``load_source(name, restricted=True)``: only what the operator's settings allow. Traces,
merged traces, analysis results and corpus reports share one byte budget (``RESULTS``, ``HEADLIGHT_CACHE_MB``):
results are immutable NumPy (traces hold read-only arrays), so one shared copy serves every session without pickling
75 MB of attention on each rerun.
Heavy analyses (re-running the model many times, or tracing a corpus) run at most ``HEADLIGHT_HEAVY_JOBS`` at
once across all sessions (``heavy_job``). What this session asked for is counted in its own session state
(``session_traces``), never the shared model's calls: a visitor cannot learn what others traced.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterator
from concurrent.futures import Future
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import plotly.graph_objects as go
import streamlit as st

import analysis
from analysis.steps import step_trace
from encoder.budget import ByteBudgetCache
from encoder.errors import InputError
from encoder.settings import settings
from encoder.sources import DEFAULT_SOURCE, LoadedModel, ModelCard, load_source
from encoder.trace import EncoderTrace, trace_text
from encoder.trace_cache import TraceCache, default_cache
from tutorial.dataset import load_splits
from ui.drawn import plotly_figure
from ui.inputs import DEFAULT_TEXT, EXAMPLES, token_limit, trace_budget
from ui.scrub import ScrubChart, scrub_chart
from ui.serving import warmup
from viz.kinds import ENCODER
from viz.registry import ANALYSES, analysis_trace
from viz.scrub import has_head_slider

T = TypeVar("T")
Corpus = tuple[str, tuple[str, ...]]  # (name shown in the progress bar, sentences)
# Traces (a long one by its queries and keys: ``held_bytes`` walks the ``LazyAttention``'s arrays) and results get
# HEADLIGHT_CACHE_MB less the attention pieces' LRU (``encoder.attention_store.PIECES``, half of it): together, the
# budget.
RESULTS = ByteBudgetCache(trace_budget())
HEAVY_JOBS = threading.BoundedSemaphore(settings().heavy_jobs)
HEAVY_WAIT = "Another visitor's analysis is running; yours starts when it ends."
log = logging.getLogger("headlight.cache")
TRACED = "traced"  # session state: the inputs traced for this session (the sidebar's "encoder runs")


FAILED_LOAD_SECONDS = 60.0  # a model that failed to load is not tried again for this long (a rerun is free)
FAILED_LOADS_KEPT = 256
_failed_loads: dict[str, tuple[float, Exception]] = {}
_failed_lock = threading.Lock()


def get_model(source: str) -> LoadedModel:
    """The loaded model (cached); a source that failed within ``FAILED_LOAD_SECONDS`` fails again at once with
    the same error, so reruns and other visitors' links do not repeat a refused load."""
    with _failed_lock:
        failed = _failed_loads.get(source)
    if failed is not None and time.monotonic() - failed[0] < FAILED_LOAD_SECONDS:
        raise failed[1]
    try:
        return _load_model(source)
    except Exception as error:
        with _failed_lock:
            _failed_loads[source] = (time.monotonic(), error)
            while len(_failed_loads) > FAILED_LOADS_KEPT:
                _failed_loads.pop(next(iter(_failed_loads)))
        raise


@st.cache_resource(show_spinner=False, max_entries=4)  # app.py shows the loading state in the main area
def _load_model(source: str) -> LoadedModel:
    warmed = warmup.warmed_model(source)  # waits for a warm-up still running: the model is loaded once
    return warmed if warmed is not None else load_source(source, restricted=True)  # a visitor's name


def _cached(key: tuple, compute: Callable[[], T], spinner: str | None = None, waiting: str | None = None) -> T:
    """``RESULTS.get``, with ``spinner`` shown while this session computes, and ``waiting`` (default ``spinner``)
    while it waits for the same computation in another session."""
    waiting = waiting or spinner

    def with_spinner() -> T:
        if spinner is None:
            return compute()
        with st.spinner(spinner):
            return compute()

    return RESULTS.get(key, with_spinner, waiting=lambda: st.spinner(waiting) if waiting else nullcontext())


def get_trace(source: str, text: str, pair: str | None, max_tokens: int, target: str | None = None) -> EncoderTrace:
    """The trace of this input (one encoder run per process and input; an encoder-decoder's ``target`` runs its
    decoder too), counted for this session."""
    key = _trace_key(source, text, pair, max_tokens, target)
    trace = _cached(("trace", *key), lambda: _trace(source, text, pair, max_tokens, target), "Running the encoder…")
    traced = st.session_state.setdefault(TRACED, set())
    traced.add(key)
    return trace


def _trace_key(source: str, text: str, pair: str | None, max_tokens: int, target: str | None) -> tuple:
    return (source, text, pair, max_tokens) + (() if target is None else (target,))


def is_traced(inputs: Inputs) -> bool:
    """Whether the trace ``inputs`` show is in the cache (a continued text's: always, as far as this asks)."""
    return inputs.generation is not None or ("trace", *_trace_key(inputs.source, inputs.text, inputs.pair,
                                                                   inputs.max_tokens, inputs.target)) in RESULTS


def is_encoder_decoder(source: str) -> bool:
    """Whether the model ``source`` names has a decoder (T5, BART), so the page asks for a target text. The default
    model is an encoder: never loaded for this while it is loading."""
    if _loading_default(source):
        return False
    return get_model(source).is_encoder_decoder


@dataclass(frozen=True)
class Continuation:
    """What "Continue the text" asked for: ``encoder.generate.generate_text``'s settings (greedy when
    ``temperature`` is 0; then ``top_k``, ``top_p`` and ``seed`` are their defaults, so they never split the
    cache)."""

    max_new_tokens: int
    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int | None = None


def check_new_tokens(count: int) -> int:
    """``count`` if it is a number of new tokens this server generates (1 to ``HEADLIGHT_MAX_NEW_TOKENS``).

    Raises:
        InputError: not a whole number, or outside that range (checked before anything runs).
    """
    limit = settings().max_new_tokens
    if isinstance(count, bool) or not isinstance(count, (int, np.integer)):
        raise InputError("The number of new tokens must be a whole number.")
    if not 1 <= count <= limit:
        raise InputError(f"Continue the text makes 1 to {limit} new tokens on this server; {count} were asked "
                         "for. Choose fewer.")
    return int(count)


def get_generated(source: str, text: str, max_tokens: int, generation: Continuation) -> EncoderTrace:
    """The trace of ``text`` continued by the model (``encoder.generate.generate_text``): one generation per process
    and input, counted for this session like a trace. Checked first: the number of new tokens, then that the
    prompt and its continuation fit in ``max_tokens`` (the Max tokens control: the model's positions, or the
    server's limit).

    Raises:
        InputError: too many new tokens (``check_new_tokens``), a continuation longer than ``max_tokens``, or what
            ``generate_text`` refuses.
    """
    count = check_new_tokens(generation.max_new_tokens)
    model = get_model(source)
    prompt = len(model.tokenizer.encode(text).tokens)  # the prompt generate_text continues
    if prompt + count > max_tokens:
        raise InputError(f"The text has {prompt} tokens; with {count} new ones that is more than the {max_tokens} "
                         "tokens one trace may have here (Max tokens). Shorten the text or ask for fewer tokens.")

    def generate() -> EncoderTrace:
        from encoder.generate import generate_text  # imports the model code: never before the page is drawn

        return generate_text(model, text, max_new_tokens=count, temperature=generation.temperature,
                             top_k=generation.top_k, top_p=generation.top_p, seed=generation.seed)

    trace = _cached(("generated", source, text, generation), generate, "Continuing the text…")  # any max_tokens
    st.session_state.setdefault(TRACED, set()).add((source, text, generation))
    return trace


def _loading_default(source: str) -> bool:
    """Whether ``source`` is the default model and this process is still loading it."""
    return source == DEFAULT_SOURCE and not warmup.ready()


def _trace(source: str, text: str, pair: str | None, max_tokens: int, target: str | None = None) -> EncoderTrace:
    """One encoder run: the default model's from the examples kept on disk (``examples``) while this process is
    still loading the model, else here (an encoder-decoder's with its decoder on ``target``)."""
    if target is None and _loading_default(source) and (kept := examples()) is not None:
        trace = kept.trace(text, pair, max_tokens)
        if trace is not None:
            warmup.hold()  # a visitor's page is drawing: TensorFlow's import waits a moment longer
            return trace
    return trace_text(get_model(source), text, pair, max_tokens, target=target)


def get_card(source: str) -> ModelCard:
    """What the page shows about a model: the default model's card comes from disk (``examples``) while this
    process is still loading the model (the page and an example's chart need no model here), else from the
    model."""
    if _loading_default(source) and (card := _kept_card()) is not None:
        warmup.hold()
        return card
    return get_model(source).card()


def model_pending(source: str) -> bool:
    """Whether the page will wait for the model ``source`` names: the default one, while it is still loading and
    its card is not on disk."""
    return _loading_default(source) and _kept_card() is None


def examples() -> TraceCache | None:
    """The default model's traces kept on disk (``encoder.trace_cache``, in ``HEADLIGHT_EXAMPLES_CACHE``), or None:
    the setting is off, or the model's files are missing or do not match."""
    folder = settings().examples_cache
    return None if folder is None else default_cache(folder, DEFAULT_SOURCE)


def _kept_card() -> ModelCard | None:
    kept = examples()
    return None if kept is None else kept.card()


def warm_trace(model: LoadedModel, text: str, pair: str | None, max_tokens: int) -> EncoderTrace:
    """Trace an input of ``model`` (the source ``model.name``) into the shared cache without counting it for any
    session: the warm-up's first run, which also traces the model's graph once for every later length."""
    return _cached(("trace", model.name, text, pair, max_tokens), lambda: trace_text(model, text, pair, max_tokens))


def _warm_default_page(model: LoadedModel) -> None:
    warm_trace(model, DEFAULT_TEXT, None, token_limit(model.config.max_positions, model.config))
    keep_examples(model)


def keep_examples(model: LoadedModel) -> int:
    """Write to disk (``examples``) the card of the default ``model`` and its traces of the built-in examples
    (``ui.inputs.EXAMPLES``, each with its pair, at the page's default Max tokens), those not already there and
    valid; returns how many traces were written (0 when the setting is off). The warm-up calls it after its first
    trace; ``python -m ui.serving --keep-examples`` (``make run``) before the server starts."""
    kept = examples()
    if kept is None or model.name != DEFAULT_SOURCE:
        return 0
    max_tokens = token_limit(model.config.max_positions, model.config)
    written = 0
    try:
        if kept.card() is None:
            kept.save_card(model.card())
        for text, pair in EXAMPLES.items():
            if kept.trace(text, pair or None, max_tokens) is None:
                kept.save_trace(warm_trace(model, text, pair or None, max_tokens), max_tokens)
                written += 1
    except OSError as error:  # a read-only or full disk: the page works as without the cache
        log.warning("the examples' traces could not be kept in %s: %s", kept.folder, error)
    return written


def start_warm_up() -> Future | None:
    """Load the default model and trace the default page's input in the background, once per process
    (``ui.serving.warmup``; off when the operator sets ``HEADLIGHT_WARM_UP=0``), then keep the examples on disk
    (``keep_examples``); returns the warm-up's future, or None when off. ``app.main()`` calls it on every run,
    ``python -m ui.serving`` before the server starts."""
    return warmup.start(DEFAULT_SOURCE, lambda: load_source(DEFAULT_SOURCE), _warm_default_page,
                        enabled=settings().warm_up)


def session_traces() -> int:
    """Encoder runs for this session: the distinct inputs it traced (each is one forward pass, whether this
    session ran it or found it in the shared cache, so the number never depends on other visitors)."""
    return len(st.session_state.get(TRACED, ()))


def get_word_trace(inputs: Inputs) -> EncoderTrace:
    """``inputs.trace`` with sub-words merged into words (``analysis.merge_words``): NumPy on the cached trace, never
    the encoder again.

    Raises:
        AnalysisError: the trace does not say which word each token belongs to.
    """
    return _cached(("words", *inputs.key), lambda: analysis.merge_words(inputs.trace))


@dataclass(frozen=True)
class _Chart:
    """A built figure in the byte budget: ``arrays`` are the figure's own top-level trace arrays (the same buffers,
    so ``held_bytes`` counts what the figure holds); with a head slider, ``scrub`` (its steps' contents, one JSON
    string, counted too); ``drawn`` is the JSON ``st.plotly_chart`` is given (``ui.drawn.plotly_figure``, or the
    scrub's figure with its steps emptied), made once too and counted."""

    figure: go.Figure
    arrays: tuple[np.ndarray, ...]
    scrub: ScrubChart | None = None
    drawn: str | None = None


def _trace_arrays(figure: go.Figure) -> tuple[np.ndarray, ...]:
    """The arrays ``figure``'s traces hold at their top level, the figure's own buffers (read in place: no copy)."""
    return tuple(value for props in figure._data for value in props.values() if isinstance(value, np.ndarray))


def get_figure(key: tuple, build: Callable[[], go.Figure]) -> go.Figure:
    """The figure ``build()`` makes, built once per process for ``key`` (everything the figure depends on: the
    input, the view, its settings): moving a control back, or a second visitor on the same view, costs no rebuild.
    Streamlit only reads a figure it shows (it serialises a copy), so one figure serves every session. A key that
    cannot be hashed is built every time."""
    try:
        hash(key)
    except TypeError:
        return build()

    def chart() -> _Chart:
        figure = build()
        scrub = scrub_chart(figure) if has_head_slider(figure) else None  # split once, while the figure is kept
        drawn = (plotly_figure(figure) if scrub is None else scrub.drawn).text  # serialised once, too
        return _Chart(figure, _trace_arrays(figure), scrub, drawn)

    return _cached(("figure", *key), chart).figure


@dataclass(frozen=True)
class ViewChart:
    """A view's chart for the page: ``figure``, the figure built for it, or (when ``shown`` is set) the one of the
    same view and settings at another layer or head whose head slider ``shown`` steps (same traces, same clicks);
    ``shown``, then, the chart to draw (``ui.scrub.ScrubChart.at_step``); ``build()``, this chart's own figure,
    built once on demand (what its downloads export)."""

    figure: go.Figure
    shown: ScrubChart | None
    build: Callable[[], go.Figure]


_BUILT: OrderedDict[Hashable, tuple] = OrderedDict()  # a view family -> the key of its figure built last
_BUILT_KEPT = 1024  # families remembered (keys only; their figures live in ``RESULTS``, under its byte budget)
_built_lock = threading.Lock()


def get_view_chart(key: tuple, build: Callable[[], go.Figure], family: Hashable, step: str) -> ViewChart:
    """The chart of a view for ``key`` (``get_figure``'s): its figure when built before; else, when a figure of the
    same ``family`` (the view, the input and every setting but the layer and head) is kept and its head slider has
    ``step`` ("layer:head"), that figure moved to the step as the browser moves it, which is the figure ``build``
    makes (a layer or head change builds no figure: ~10 ms of a change's server CPU on MiniLM's views); else
    ``build()``, kept, and remembered for its family. One difference can remain: which heads the slider carries
    depends on the payload of the head a figure is built at (``viz.scrub.scrub_heads``), and head lines' payload
    varies by head, so near ``SCRUB_MAX_BYTES`` the moved figure may carry every layer where one built at that head
    would carry only its own layer; what it shows of that head is the same."""
    own = lambda: get_figure(key, build)  # noqa: E731 - the same figure, whichever path made this chart
    if ("figure", *key) not in RESULTS:
        with _built_lock:
            sibling = _BUILT.get(family)
        kept = None if sibling is None else RESULTS.peek(("figure", *sibling))
        if kept is not None and kept.scrub is not None and step in kept.scrub.values:
            return ViewChart(kept.figure, kept.scrub.at_step(step), own)
    figure = own()
    with _built_lock:
        _BUILT[family] = key
        _BUILT.move_to_end(family)
        while len(_BUILT) > _BUILT_KEPT:
            _BUILT.popitem(last=False)
    return ViewChart(figure, None, own)


@contextmanager
def heavy_job() -> Iterator[None]:
    """Hold one of the process-wide heavy-analysis slots; while waiting for one, say so (updated every second,
    which also lets Streamlit stop this run if the visitor moves on)."""
    if not HEAVY_JOBS.acquire(blocking=False):
        started, note = time.monotonic(), st.empty()
        note.info(HEAVY_WAIT, icon="⏳")
        while not HEAVY_JOBS.acquire(timeout=1.0):
            note.info(f"{HEAVY_WAIT} (waiting {time.monotonic() - started:.0f} s)", icon="⏳")
        note.empty()
    try:
        yield
    finally:
        HEAVY_JOBS.release()


@dataclass(frozen=True)
class Inputs:
    """What was traced (the cache key of every analysis): the text (an encoder-decoder's with its decoder on
    ``target``), or the text continued by the model (``generation``) and shown up to a ``step`` of that generation
    (None: all of it); which attention of an encoder-decoder an analysis runs on (``attention``: "decoder" makes
    ``trace`` the decoder's side; views take the whole trace, with the default "encoder"); and the corpus chosen
    for corpus analyses. Implements ``analysis.inputs.Inputs`` with the caches here."""

    source: str
    text: str
    pair: str | None
    max_tokens: int
    generation: Continuation | None = None
    step: int | None = None
    target: str | None = None
    attention: str = ENCODER
    corpus: Corpus | None = None

    @property
    def key(self) -> tuple:
        return (self.source, self.text, self.pair, self.max_tokens, self.generation, self.step, self.target,
                self.attention)

    @property
    def trace(self) -> EncoderTrace:
        if self.generation is None:
            whole = get_trace(self.source, self.text, self.pair, self.max_tokens, self.target)
        else:
            whole = get_generated(self.source, self.text, self.max_tokens, self.generation)
            whole = whole if self.step is None else step_trace(whole, self.step)
        return analysis_trace(whole, self.attention)

    def model(self) -> LoadedModel:
        return get_model(self.source)

    def corpus_report(self, distances: bool) -> analysis.HeadReport | None:
        """The corpus report, always with head distances: one cached run serves the report card and clusters."""
        return None if self.corpus is None else corpus_report(self.source, *self.corpus)

    def progress(self, what: str) -> analysis.Progress | None:
        return progress_bar(what)

    def corpus_sentences(self) -> Corpus | None:
        return self.corpus


def analysis_result(name: str, inputs: Inputs, options: tuple[tuple[str, Any], ...]) -> Any:
    """The registry analysis ``name`` on ``inputs`` with its compute ``options`` (sorted (name, value) pairs);
    analyses that re-run the model take a heavy-job slot."""
    entry = ANALYSES[name]

    def compute() -> Any:
        if not entry.needs_model:
            return entry.compute(inputs, dict(options))
        with heavy_job():
            return entry.compute(inputs, dict(options))

    key = ("analysis", name, inputs.key, _corpus_key(inputs.corpus), options)
    return _cached(key, compute, entry.spinner)


def progress_bar(what: str, start: str | None = None) -> analysis.Progress:
    """A progress bar shown now ("12 / 100 sentences scored"), updated at most once per percent and removed when
    the run is done; ``start`` is its text before the first step (default "0 {what}")."""
    bar = st.progress(0.0, text=start or f"0 {what}")
    shown = -1

    def show(done: int, total: int | None) -> None:
        nonlocal shown
        percent = done * 100 // total if total else done
        if done == total:
            bar.empty()
        elif percent != shown:
            shown = percent
            count = f"{done:,} / {total:,}" if total else f"{done:,}"
            bar.progress(min(done / max(total or 1, 1), 1.0), text=f"{count} {what}")

    return show


def corpus_report(source: str, corpus_name: str, sentences: tuple[str, ...]) -> analysis.HeadReport:
    """Report card over many sentences, with a progress bar while it runs (a heavy job; cached afterwards)."""

    def compute() -> analysis.HeadReport:
        with heavy_job():
            progress = progress_bar(f"sentences of {corpus_name}",
                                    start=f"Tracing {len(sentences):,} sentences of {corpus_name}…")
            return analysis.corpus_head_report(analysis.iter_traces(get_model(source), list(sentences)),
                                               total=len(sentences), progress=progress)

    return _cached(("corpus", source, _corpus_key((corpus_name, sentences))), compute,
                   waiting=f"Tracing {corpus_name}…")


def _corpus_key(corpus: Corpus | None) -> tuple[str, str] | None:
    """A corpus in a cache key: its name and a digest of its sentences (a key kept in the cache must not hold 5 MB
    of uploaded text, which the byte budget does not count)."""
    if corpus is None:
        return None
    name, sentences = corpus
    return name, hashlib.sha256("\n".join(sentences).encode("utf-8")).hexdigest()  # lines hold no newline


@st.cache_resource(show_spinner=False)
def test_sentences() -> tuple[str, ...]:
    """The held-out test sentences shipped in data/test.tsv (the tutorial model never trained on them)."""
    return tuple(example.text for example in load_splits()["test"])
