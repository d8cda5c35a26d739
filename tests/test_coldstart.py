"""The cold-start helper process (``ui.serving.coldstart``): a real second process with the real MiniLM, whose card
and traces the server shows while it loads the model itself; and the page that needs no model in the server for its
first chart."""

from __future__ import annotations

import json
import subprocess
import sys
from concurrent.futures import Future

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from encoder.errors import InputError
from encoder.trace import trace_text
from ui.serving import coldstart, prefetch, warmup

CASES = ["simple", "pair", "multilingual"]
TIMEOUT = 180


@pytest.fixture(scope="module")
def helper():
    started = coldstart.Helper(subprocess.Popen([sys.executable, "-m", "ui.serving.coldstart"], cwd=coldstart.ROOT,
                                                stdin=subprocess.PIPE, stdout=subprocess.PIPE))
    yield started
    started.stop()


def _inputs(reference, case):
    pair = str(reference[f"{case}/pair"])
    return str(reference[f"{case}/text"]), (pair or None)


def test_the_helper_describes_the_default_model_as_the_server_would(helper, minilm):
    card = helper.card(timeout=TIMEOUT)
    assert card == minilm.card()
    assert card.parameters == minilm.num_parameters() and card.config.num_layers == 6


@pytest.mark.parametrize("case", CASES)
def test_the_helpers_traces_are_the_models(helper, minilm, reference, case):
    """Same tokens and every array as the server's compiled graph to float32 rounding, and within 1e-4 of Hugging
    Face's as the server's own (the golden test's tolerance); validated and read-only like a trace made here."""
    text, pair = _inputs(reference, case)
    served, here = helper.trace(text, pair, 512), trace_text(minilm, text, pair, 512)
    assert served.tokens == here.tokens and served.text == text and served.pair == pair
    np.testing.assert_array_equal(served.token_ids, here.token_ids)
    np.testing.assert_allclose(served.attention, here.attention, atol=1e-5, rtol=0)
    np.testing.assert_allclose(served.hidden, here.hidden, atol=1e-5, rtol=0)
    np.testing.assert_allclose(served.attention, reference[f"{case}/attention"], atol=1e-4, rtol=0)
    np.testing.assert_allclose(served.attention.sum(-1), 1.0, atol=1e-5)
    assert not served.attention.flags.writeable
    assert helper.answered.is_set()


def test_the_longest_input_passes_through_the_helper(helper):
    """700 words: truncated to the model's 512 positions and flagged, as the server does; its ~81 MB of arrays are
    within the helper's message bound."""
    served = helper.trace("attention " * 700, None, 512)
    assert served.num_tokens == 512 and served.truncated and served.untruncated_length > 512
    assert served.attention.nbytes + served.hidden.nbytes < coldstart.MAX_MESSAGE


def test_bad_input_gets_the_servers_own_message(helper, minilm):
    with pytest.raises(InputError) as here:
        trace_text(minilm, "   ", None, 512)
    with pytest.raises(InputError) as served:
        helper.trace("   ", None, 512)
    assert str(served.value) == str(here.value)
    assert helper.trace("still answering", None, 512).num_tokens > 2


def test_a_stopped_helper_exits_and_leaves_the_work_to_the_server():
    process = subprocess.Popen([sys.executable, "-m", "ui.serving.coldstart"], cwd=coldstart.ROOT,
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    stopped = coldstart.Helper(process)
    stopped.stop()
    assert process.returncode == 0 and stopped.gone
    assert stopped.trace("The cat sat.", None, 512) is None


def test_a_helper_that_dies_is_gone_and_the_server_loads_the_model():
    dead = coldstart.Helper(subprocess.Popen([sys.executable, "-c", "import sys; sys.exit(3)"],
                                             stdin=subprocess.PIPE, stdout=subprocess.PIPE))
    assert dead.card(timeout=TIMEOUT) is None and dead.gone
    assert dead.trace("The cat sat.", None, 512) is None


def test_a_helper_that_stops_answering_is_killed_and_the_server_loads_the_model(monkeypatch):
    ready = ("import pickle, struct, sys, time\ndata = pickle.dumps(('ready', 'a card'))\n"
             "sys.stdout.buffer.write(struct.pack('!Q', len(data)) + data)\nsys.stdout.buffer.flush()\n"
             "time.sleep(120)")
    process = subprocess.Popen([sys.executable, "-c", ready], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    stuck = coldstart.Helper(process)
    monkeypatch.setattr(coldstart, "ANSWER_TIMEOUT", 0.5)
    assert stuck.card(timeout=TIMEOUT) == "a card"
    assert stuck.trace("The cat sat.", None, 512) is None
    assert stuck.gone and process.returncode is not None  # killed, not left running


def test_the_first_page_needs_no_model_in_the_server(helper, monkeypatch):
    """While the server's own warm-up is still running, the page's card and first trace come from the helper, and
    the page shows the chart's code prefetcher (the model is pending)."""
    monkeypatch.setattr(coldstart, "_helper", helper)
    monkeypatch.setattr(warmup, "_running", warmup.Running("minilm", Future()))  # still loading (a use would hang)
    text = "The helper traced this sentence for the first page."
    at = AppTest.from_file("../app.py", default_timeout=TIMEOUT)
    at.query_params["text"] = text
    at.run()
    assert not at.exception
    sidebar = " ".join(block.value for block in at.sidebar.markdown)
    assert f"{helper.card().parameters:,}" in sidebar
    heatmap = json.loads(at.get("plotly_chart")[0].proto.spec)
    assert {"traced", "sentence", "page"} <= set(heatmap["layout"]["xaxis"]["ticktext"])
    assert helper.answered.is_set() and not warmup.ready()


def test_the_chart_code_to_prefetch_is_in_the_installed_streamlit():
    """Streamlit names its lazily loaded chunks with a content hash: an upgrade that renames or drops the chart's
    chunk fails here (the page still works, only the prefetch would be lost)."""
    files = prefetch.chunk_files()
    assert sorted(name.split(".")[0] for name in files) == sorted(prefetch.CHUNKS)
    assert all(name.endswith(".js") and name.count(".") == 2 for name in files)


def test_the_servers_warm_up_waits_for_the_helpers_first_answer_then_stops_it():
    """With a helper, the server imports TensorFlow only after the helper has answered a first trace (the first
    chart is not slowed by a second import on the same 2 cores), and stops the helper once its own model is warm."""
    code = ("import sys, time\nfrom ui import cache\nfrom ui.serving import coldstart, warmup\n"
            "start = time.monotonic()\nhelper = coldstart.spawn()\nfuture = cache.start_warm_up()\n"
            "card = helper.card()\ntime.sleep(0.5)\n"
            "print('tensorflow' in sys.modules, time.monotonic() - start < warmup.HELPER_START_DELAY)\n"
            "trace = helper.trace('The cat sat on the mat.', None, 64)\nmodel = future.result(timeout=300)\n"
            "while not helper.gone:\n    time.sleep(0.1)\n"
            "print(trace.num_tokens > 2, model.card() == card, helper.gone, warmup.ready())")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                            cwd=coldstart.ROOT)
    first, second = result.stdout.split("\n")[:2]
    imported, in_time = first.split()
    assert imported == "False" or in_time == "False", result.stderr[-2000:]  # (unless the helper took > 8 s)
    assert second.split() == ["True", "True", "True", "True"], result.stderr[-2000:]
