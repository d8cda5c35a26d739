"""Cold start: the page's modules import no TensorFlow, the default model is warmed once per process in the
background and shared with every session, and a failed or disabled warm-up falls back to loading on first use."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from concurrent.futures import Future
from pathlib import Path

from streamlit.testing.v1 import AppTest

from encoder.settings import Settings
from ui import cache
from ui.inputs import EXAMPLES
from ui.serving import warmup

ROOT = Path(__file__).resolve().parent.parent
TIMEOUT = 180


def _warm_up_threads() -> int:
    return sum(thread.name == "headlight-warm-up" for thread in threading.enumerate())


def test_the_page_modules_import_no_tensorflow():
    """app.py's imports (the sidebar, the views, the caches) leave TensorFlow to the model load."""
    code = ("import sys\nimport app, encoder.sources, encoder.trace_cache, ui.cache, ui.views, ui.inputs\n"
            "import ui.serving.__main__, ui.serving.warmup, ui.serving.prefetch, ui.serving.runtime\n"
            "print('tensorflow' in sys.modules, 'keras' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert result.stdout.split() == ["False", "False"], result.stderr[-2000:]


def test_app_runs_start_the_warm_up_once_and_share_its_model():
    at = AppTest.from_file("../app.py", default_timeout=TIMEOUT).run()
    assert not at.exception
    first = cache.start_warm_up()
    assert first is not None and first.result(timeout=TIMEOUT) is not None
    at.slider(key="layer").set_value(2).run()
    AppTest.from_file("../app.py", default_timeout=TIMEOUT).run()  # another session, same process
    assert cache.start_warm_up() is first  # one warm-up per process, however many runs and sessions
    assert _warm_up_threads() <= 1
    assert cache.get_model("minilm") is first.result()  # st.cache_resource holds the warmed instance
    assert "import TensorFlow" in warmup.STEPS and "load the default model" in warmup.STEPS


def test_a_failed_warm_up_loads_the_model_on_first_use(monkeypatch):
    failed: Future = Future()
    failed.set_exception(RuntimeError("no model here"))
    monkeypatch.setattr(warmup, "_running", warmup.Running("minilm", failed))
    assert warmup.warmed_model("minilm") is None  # the caller loads it itself (and shows its own message)
    assert warmup.warmed_model("tutorial") is None  # only the default is warmed


def test_the_operator_can_turn_the_warm_up_off(monkeypatch):
    monkeypatch.setenv("HEADLIGHT_WARM_UP", "0")
    assert Settings.from_env().warm_up is False
    monkeypatch.setattr(warmup, "_running", None)
    assert cache.start_warm_up() is None and warmup.warmed_model("minilm") is None
    monkeypatch.setenv("HEADLIGHT_WARM_UP", "yes")
    assert Settings.from_env().warm_up is True
    monkeypatch.delenv("HEADLIGHT_WARM_UP")
    assert Settings.from_env().warm_up is True  # on by default


def test_loading_another_model_waits_for_a_running_warm_up(monkeypatch):
    """Model code (TensorFlow) is imported by one thread at a time: another source waits for the warm-up."""
    running: Future = Future()
    monkeypatch.setattr(warmup, "_running", warmup.Running("minilm", running))
    threading.Timer(0.2, running.set_result, args=("the warmed model",)).start()
    assert warmup.warmed_model("tutorial") is None
    assert running.done()
    assert warmup.warmed_model("minilm") == "the warmed model"


def test_the_warm_up_waits_for_a_visitor_or_its_delay():
    """Started with the process, the warm-up leaves the CPU to the first page until a visitor asks for a model (or
    ``START_DELAY`` passes): TensorFlow is not imported before that, and the asked-for model is the warmed one."""
    code = ("import sys, time\nfrom ui import cache\nfrom ui.serving import warmup\nfuture = cache.start_warm_up()\n"
            "time.sleep(1.0)\n"
            "print('tensorflow' in sys.modules, future.done())\nmodel = warmup.warmed_model('minilm')\n"
            "print('tensorflow' in sys.modules, model is future.result(), warmup.START_DELAY > 1.0)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert result.stdout.split() == ["False", "False", "True", "True", "True"], result.stderr[-2000:]


def test_a_page_drawn_from_disk_holds_the_warm_up_back_and_a_visitor_needing_the_model_does_not():
    """``hold`` (a page drawn from the examples kept on disk) keeps TensorFlow's import out of the process past
    ``START_DELAY``; a visitor who needs the model starts it at once."""
    code = ("import sys, time\nfrom ui import cache\nfrom ui.serving import warmup\nfuture = cache.start_warm_up()\n"
            "warmup.hold(warmup.START_DELAY + 2.0)\ntime.sleep(warmup.START_DELAY + 0.5)\n"
            "print('tensorflow' in sys.modules, future.done())\nmodel = warmup.warmed_model('minilm')\n"
            "print('tensorflow' in sys.modules, model is future.result())")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert result.stdout.split() == ["False", "False", "True", "True"], result.stderr[-2000:]


def test_the_warm_up_keeps_the_examples_for_the_next_start(tmp_path):
    """After its first trace, the warm-up writes the default model's card and its traces of every built-in example
    to the cache folder (the next process's first page needs no model), then freezes the objects made so far
    (``gc.freeze``)."""
    code = ("import gc, time\nfrom ui import cache\nfrom ui.serving import warmup\n"
            "model = warmup.warmed_model('minilm') if cache.start_warm_up() else None\n"
            "deadline = time.monotonic() + 240\n"
            "while not gc.get_freeze_count() and time.monotonic() < deadline:\n"
            "    time.sleep(0.1)\n"
            "kept = cache.examples()\n"
            "print(kept.card() == model.card(), sum(kept.trace(text, pair or None, 512) is not None\n"
            "                                       for text, pair in cache.EXAMPLES.items()))\n"
            "print(gc.get_freeze_count() > 100_000, len(gc.get_objects()) < gc.get_freeze_count() / 4)")
    env = {**os.environ, "HEADLIGHT_EXAMPLES_CACHE": str(tmp_path)}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=ROOT,
                            env=env)
    # ... and then freezes what it made (TensorFlow, the model, the modules): full collections no longer walk them
    assert result.stdout.split() == ["True", str(len(EXAMPLES)), "True", "True"], result.stderr[-2000:]
