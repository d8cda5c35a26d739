"""A model loaded and traced in a background thread started with the process, so the page draws at once and its
first chart follows as early as the model allows. The thread does its heavy work when the first visitor asks for a
model, or ``START_DELAY`` seconds after it started, whichever comes first (see ``START_DELAY``); a page drawn
meanwhile from the examples kept on disk (``ui.cache.examples``) defers it by ``VISITOR_GRACE`` (``hold``).

``start(source, load, first_trace)`` runs the warm-up once per process (a lock and one module-level record): what to
load and trace comes from its caller (``ui.cache.start_warm_up``: the default model and the default page's input,
then the examples written to disk), so nothing here imports the page or the model code. ``python -m ui.serving``
calls it before the server is up, ``app.main()`` on every run (plain ``streamlit run app.py``: the first visit
starts it), and any later call returns the same future. Both import the page's modules first, in the calling thread
(so the first visit finds them imported and no two threads import one package at once). The warm-up imports
TensorFlow, calls ``load`` (the default model, checksums included), then ``first_trace(model)`` (the default page's
input, which compiles the model's graph once for every length and leaves that trace in the shared cache).
``ui.cache`` hands the warmed model to ``st.cache_resource`` (``warmed_model``), so every session shares the one
instance; if the warm-up fails, the server's log says why and the model is loaded on first use, with the usual
message on the page. The operator turns it off with ``HEADLIGHT_WARM_UP=0`` (``ui.cache.start_warm_up`` passes
``enabled``).
"""

from __future__ import annotations

import gc
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from typing import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:  # the launcher imports this module before Streamlit starts: nothing heavy at import time
    from encoder.sources import LoadedModel

log = logging.getLogger("headlight.warmup")
STEPS: dict[str, float] = {}  # seconds each step took in this process (logged; read by tests and the benchmark)


class Running(NamedTuple):
    """This process's warm-up: the source it loads, and the future whose result is that model."""

    source: str
    future: Future


_lock = threading.Lock()
_running: Running | None = None
# The warm-up's heavy work (TensorFlow's import holds the GIL for ~2 s) waits until a visitor asks for the model
# (``warmed_model``) or this many seconds after ``start()``, whichever comes first: a visitor arriving while the server
# starts gets the page's controls first, and a server nobody visits yet is warm a few seconds after it starts.
START_DELAY = 3.0
# A page drawn from the examples kept on disk (no model needed) pushes the warm-up's start to at least this many
# seconds later (``hold``), so its chart is not slowed by TensorFlow's import in the same process, nor its browser's
# drawing (~1.3 s after the chart leaves the server) by that import on the same cores.
VISITOR_GRACE = 3.0
HOLD_LIMIT = 10.0  # ... but never past this many seconds after ``start()``: a stream of visitors does not keep it cold
_wanted = threading.Event()
_held_until = 0.0  # time.monotonic() before which the warm-up does not start unless a visitor needs the model
_started = 0.0  # time.monotonic() when ``start()`` started the warm-up


def start(source: str, load: Callable[[], LoadedModel], first_trace: Callable[[LoadedModel], object],
          enabled: bool = True) -> Future | None:
    """Start the warm-up in a daemon thread unless it was started before in this process, or ``enabled`` is False;
    returns its future (None when off), whose result is the model ``load()`` returns (the model named ``source``).
    ``first_trace(model)`` runs after the future is set: the first trace, which compiles the model's graph."""
    global _running, _started
    with _lock:
        if _running is None and enabled:
            _running, _started = Running(source, Future()), time.monotonic()
            threading.Thread(target=_warm_up, args=(_running.future, load, first_trace), name="headlight-warm-up",
                             daemon=True).start()
        return None if _running is None else _running.future


def warmed_model(source: str) -> LoadedModel | None:
    """The warmed model when ``source`` is the one the warm-up loaded and it loaded; else None: load it the usual
    way. Waits while the warm-up runs, whatever the source: two threads importing TensorFlow's modules at once can
    deadlock on Python's import locks (its package imports itself in cycles), so model code is imported by one
    thread at a time."""
    running = _running
    if running is None:
        return None
    _wanted.set()  # a visitor needs a model now: the warm-up starts at once if it was still waiting
    try:
        model = running.future.result()
    except Exception:  # logged by the warm-up; the caller loads the model itself and shows its own message
        return None
    return model if source == running.source else None


def ready() -> bool:
    """Whether the warm-up has loaded its model (this process may trace it without waiting)."""
    running = _running
    return running is not None and running.future.done() and running.future.exception() is None


def hold(seconds: float = VISITOR_GRACE) -> None:
    """A visitor's page is being drawn without the model: the warm-up, if it has not started its heavy work, waits
    at least ``seconds`` from now (unless a visitor needs the model), at most until ``HOLD_LIMIT`` after its start."""
    global _held_until
    with _lock:
        _held_until = max(_held_until, min(time.monotonic() + seconds, _started + HOLD_LIMIT))


def freeze_startup_objects() -> int:
    """Move every object the collector tracks now (TensorFlow's, Keras', the model's, Streamlit's, the page's modules:
    ~460,000 once warm) to its permanent generation (``gc.freeze``); returns how many.

    They live as long as the process, yet each full collection walked them all: 250-390 ms with the GIL held, the
    whole server waiting, about every 3 s under 32 visitors (docs/speed.md, "Many visitors"). Frozen, they are not
    walked; what the sessions make afterwards is collected as before. Freezing is free (no walk). What is garbage at
    this moment and in a reference cycle stays (a one-time few objects: the warm-up runs once per process)."""
    gc.freeze()
    return gc.get_freeze_count()


def _wait_for_start() -> None:
    deadline = time.monotonic() + START_DELAY
    while not _wanted.is_set() and (left := max(deadline, _held_until) - time.monotonic()) > 0:
        _wanted.wait(left)


def _warm_up(future: Future, load: Callable[[], LoadedModel], first_trace: Callable[[LoadedModel], object]) -> None:
    _wait_for_start()
    clock = time.perf_counter()

    def step(name: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        STEPS[name] = now - clock
        clock = now

    try:
        import tensorflow  # noqa: F401 - the longest step, timed on its own (in this thread, never on import)

        step("import TensorFlow")
        model = load()
        step("load the default model")
    except BaseException as error:
        log.exception("warm-up: the default model could not be loaded; it is loaded on first use instead")
        future.set_exception(error)
        return
    future.set_result(model)  # sessions waiting for the model go on; a trace they need waits for the one below
    try:
        first_trace(model)
        step("first trace (graph traced), examples kept")
    except Exception:
        log.exception("warm-up: tracing the default text failed")
    log.info("warm-up: %d objects frozen (gc.freeze)", freeze_startup_objects())
    log.info("warm-up done: %s", ", ".join(f"{name} {seconds:.2f} s" for name, seconds in STEPS.items()))
