"""Per-session privacy: what the page shows one visitor never depends on what another visitor did. Two AppTest
sessions in one process share the model and every cached result, as two browsers on one server do."""

from __future__ import annotations

import re

from streamlit.testing.v1 import AppTest

TIMEOUT = 180


def _session(text: str) -> AppTest:
    at = AppTest.from_file("../app.py", default_timeout=TIMEOUT)
    at.query_params["text"] = text
    return at.run()


def _sidebar(at: AppTest) -> str:
    assert not at.exception, [e.value for e in at.exception]
    return "\n".join(m.value for m in at.sidebar.markdown)


def _encoder_runs(at: AppTest) -> int:
    return int(re.search(r"\*\*encoder runs\*\*: (\d+)", _sidebar(at)).group(1))


def test_one_session_does_not_move_another_sessions_counters():
    a = _session("Visitor A traces this first.")
    b = _session("Visitor B reads something else.")
    assert _encoder_runs(a) == _encoder_runs(b) == 1
    before = _sidebar(b)
    for text in ("A's second text.", "A's third text.", "Visitor B reads something else."):  # the last is B's text
        a.text_area(key="text").set_value(text).run()
    a.slider(key="layer").set_value(2).run()  # a view change is no encoder run
    assert _encoder_runs(a) == 4
    b.run()
    assert _sidebar(b) == before  # B's sidebar did not move because of A


def test_a_text_someone_else_traced_counts_as_a_run_for_you():
    """The counter is "forward passes run for you": a text another visitor already traced (a shared cache hit) adds
    one, as a text nobody traced does, so the number cannot tell whether someone else traced it."""
    first = _session("Was this exact sentence traced by someone?")
    fresh = _session("A sentence nobody has traced before, surely.")
    again = _session("Was this exact sentence traced by someone?")  # a hit in the shared cache
    assert _encoder_runs(first) == _encoder_runs(fresh) == _encoder_runs(again) == 1
    fresh.text_area(key="text").set_value("Yet another sentence nobody traced.").run()
    again.text_area(key="text").set_value("A sentence nobody has traced before, surely.").run()  # fresh traced it
    assert _encoder_runs(fresh) == _encoder_runs(again) == 2
    fresh_rows = [line for line in _sidebar(fresh).splitlines() if "encoder runs" in line]
    again_rows = [line for line in _sidebar(again).splitlines() if "encoder runs" in line]
    assert fresh_rows == again_rows  # the same words whether the text was new to the server or not
