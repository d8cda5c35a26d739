"""The first visitor's chart while the server's own model is still loading: a helper process, started by
``python -m ui.serving`` at the process's first moment, that imports TensorFlow, loads the default model and traces
what the page asks for, in parallel with Streamlit starting in the server.

Why a process: TensorFlow's import is ~2 s of Python that holds the server's GIL, so loading the model in a thread
of the server either delays the page (started at once: first paint 2.5 s) or the chart (started when the first
visitor asks: 5.5 s from the process's start). In a second process it runs on the other core while the server
starts, serves the page and the browser loads it. The server's own warm-up (``ui.serving.warmup``) starts once this
process has answered a first visitor and the page has had a moment to draw it (``warmup.ANSWER_GRACE``), or
``warmup.HELPER_START_DELAY`` after the start, or when a visitor needs the model itself; when it is done this process
is told to exit: every later trace, and every analysis, runs in the server.

The helper runs the server's own code (``encoder.sources.load_source``, checksums included, and
``encoder.trace.trace_text``), eagerly: compiling the graph would cost its first trace ~0.25 s more, and it serves only
the first seconds. Its numbers equal the compiled graph's to float32 rounding (the graph fuses some operations; about
2e-6 on attention), and both are within 1e-5 of Hugging Face's (``tests/test_coldstart.py``). It only ever opens the
default built-in model, and reads only what the server sends over its private pipe: texts the server already
bounded, one request at a time. If it fails to start, dies, or stops answering (``LOAD_TIMEOUT``,
``ANSWER_TIMEOUT``: then it is killed), the server loads the model itself, as with plain ``streamlit run app.py``.

Protocol, on the helper's stdin and (a duplicate of) its original stdout, each message a pickle with an 8-byte
length: the helper first sends ``("ready", ModelCard)`` or ``("failed", reason)``; then for each request
``(text, pair, max_tokens)`` it answers ``("trace", fields)`` (the trace's dataclass fields, rebuilt and validated
here), ``("error", HeadlightError)`` (bad input: the page shows its message) or ``("crash", reason)``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
import select
import struct
import subprocess
import sys
import threading
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

if TYPE_CHECKING:  # the launcher imports this module first of all: nothing heavy at import time
    from encoder.sources import ModelCard
    from encoder.trace import EncoderTrace

log = logging.getLogger("headlight.coldstart")
ROOT = Path(__file__).resolve().parent.parent.parent
_HEADER = struct.Struct("!Q")
MAX_MESSAGE = 256 * 2**20  # the default model's 512-token trace is ~81 MB; a longer message is a broken helper
LOAD_TIMEOUT = 120.0  # seconds a page waits for the helper to load the model before loading it in the server
ANSWER_TIMEOUT = 60.0  # seconds a trace may take in the helper (MiniLM at 512 tokens: ~0.3 s) before it is stopped
_helper: Helper | None = None


class Helper:
    """The server's side of the helper process: ``card()`` and ``trace()`` each wait for the helper, one request at
    a time; both return None once the helper is gone (failed, stopped, or died), and the caller loads the model."""

    def __init__(self, process: subprocess.Popen):
        self._process = process
        self._lock = threading.Lock()
        self._card: ModelCard | None = None
        self.gone = False  # failed, stopped or died: every call returns None
        self.loaded = threading.Event()  # the helper said whether it loaded the model (set either way)
        self.answered = threading.Event()  # the helper has answered a first trace (the server may warm up now)
        threading.Thread(target=self._read_card, name="headlight-coldstart", daemon=True).start()

    def card(self, timeout: float = LOAD_TIMEOUT) -> ModelCard | None:
        """The default model's card, once the helper has loaded it (waits up to ``timeout`` seconds); None if it
        could not, or not in time."""
        self.loaded.wait(timeout)
        return self._card

    def trace(self, text: str, pair: str | None, max_tokens: int) -> EncoderTrace | None:
        """The default model's trace of this input, from the helper; None if the helper is gone.

        Raises:
            HeadlightError: the input cannot be traced (the same error the server's own run would raise).
        """
        from encoder.trace import EncoderTrace  # here, not at the top: the launcher imports this module first of all

        if not self.loaded.wait(LOAD_TIMEOUT):
            return None
        with self._lock:
            if self.gone:
                return None
            try:
                _send(self._process.stdin, (text, pair, max_tokens))
                if not select.select([self._process.stdout], [], [], ANSWER_TIMEOUT)[0]:
                    raise TimeoutError(f"no answer in {ANSWER_TIMEOUT:.0f} s")
                kind, value = _receive(self._process.stdout)
            except (OSError, EOFError, ValueError, pickle.UnpicklingError) as error:
                self._close(f"the cold-start helper stopped answering ({error}); the server loads the model itself",
                            kill=True)
                return None
            self.answered.set()
            if kind == "error":
                raise value
            if kind != "trace":
                self._close(f"the cold-start helper failed ({value}); the server loads the model itself")
                return None
            return EncoderTrace(**value)  # validated (shapes) and read-only, as the server's own traces

    def stop(self) -> None:
        """Tell the helper to exit (after a request in flight) and reap it."""
        self.loaded.wait(LOAD_TIMEOUT)
        with self._lock:
            self._close(None, kill=not self.loaded.is_set())

    def _read_card(self) -> None:
        """The helper's first message (in a thread of its own, from the start)."""
        try:
            kind, value = _receive(self._process.stdout)
        except (OSError, EOFError, ValueError, pickle.UnpicklingError):
            kind, value = "failed", "it exited"
        if kind == "ready":
            self._card = value
        else:
            with self._lock:
                self._close(f"the cold-start helper could not load the default model ({value}); see above")
        self.loaded.set()

    def _close(self, reason: str | None, kill: bool = False) -> None:
        """Mark the helper gone and end it: closing its stdin ends its loop; a stuck one (``kill``, or still running
        10 s later) is killed."""
        if self.gone:
            return
        self.gone = True
        if reason:
            log.warning(reason)
        with contextlib.suppress(OSError):
            self._process.stdin.close()
        if kill:
            self._process.kill()
        try:
            self._process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        self._process.stdout.close()


def spawn() -> Helper | None:
    """Start the helper (once per process); None if it could not be started (the server warms up alone)."""
    global _helper
    if _helper is None:
        try:
            process = subprocess.Popen([sys.executable, "-m", "ui.serving.coldstart"], cwd=ROOT,
                                       stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        except OSError:
            log.exception("the cold-start helper could not be started; the server loads the model itself")
            return None
        _helper = Helper(process)
    return _helper


def helper() -> Helper | None:
    """The helper this process started, if any (``python -m ui.serving`` starts it; plain ``streamlit run`` not)."""
    return _helper


def _send(stream: IO[bytes], message: Any) -> None:
    data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    stream.write(_HEADER.pack(len(data)))
    stream.write(data)
    stream.flush()


def _receive(stream: IO[bytes]) -> Any:
    """One message; EOFError when the other side closed the pipe."""
    header = stream.read(_HEADER.size)
    if len(header) < _HEADER.size:
        raise EOFError("pipe closed")
    (size,) = _HEADER.unpack(header)
    if size > MAX_MESSAGE:
        raise ValueError(f"message of {size} bytes")
    data = stream.read(size)
    if len(data) < size:
        raise EOFError("pipe closed")
    return pickle.loads(data)  # our own process, on a pipe only the two of us hold


def _serve(requests: IO[bytes], answers: IO[bytes]) -> None:
    """The helper's loop: load the default model, say so, then trace each request until the server closes the
    pipe."""
    import dataclasses

    from encoder.errors import HeadlightError  # the helper process's imports: none of them is the launcher's

    try:
        import tensorflow as tf

        from encoder.sources import DEFAULT_SOURCE, load_source

        tf.config.run_functions_eagerly(True)  # no graph to compile: see the module's docstring
        model = load_source(DEFAULT_SOURCE)
    except Exception as error:  # the server logs it and loads the model itself (with the page's usual message)
        log.exception("cold-start helper: the default model could not be loaded")
        _send(answers, ("failed", type(error).__name__))
        return
    _send(answers, ("ready", model.card()))
    from encoder.trace import trace_text

    while True:
        try:
            text, pair, max_tokens = _receive(requests)
        except EOFError:
            return
        try:
            trace = trace_text(model, text, pair, max_tokens)
            answer = ("trace", {field.name: getattr(trace, field.name) for field in dataclasses.fields(trace)})
        except HeadlightError as error:
            answer = ("error", error)
        except Exception as error:
            log.exception("cold-start helper: tracing failed")
            answer = ("crash", type(error).__name__)
        _send(answers, answer)


def main() -> None:
    answers = os.fdopen(os.dup(sys.stdout.fileno()), "wb")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())  # a library's print goes to the log, never into the protocol
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    logging.basicConfig(level=logging.INFO)
    with contextlib.suppress(BrokenPipeError), answers:  # the server stopped first: nothing left to do
        _serve(sys.stdin.buffer, answers)


if __name__ == "__main__":
    main()
