"""An encoder-decoder in the app (the t5 test fixture, a real ``T5ForConditionalGeneration`` folder): the target
text, the Attention radio next to Layer and Head, views and analyses of each kind from one trace (never a re-run),
the URL and the downloads keeping the choice, and links that name a kind for a model without one."""

from __future__ import annotations

import json
import re

import pytest
import streamlit as st
from streamlit.testing.v1 import AppTest

from tests.support.app import open_downloads
from tests.support.families import FAMILIES_DIR

TIMEOUT = 180
OTHER_MODEL = "folder or hub id…"
TARGET = "Die Katze saß."


@pytest.fixture
def t5(monkeypatch) -> dict[str, str]:
    """The URL of the t5 fixture, opened under the model roots."""
    monkeypatch.setenv("HEADLIGHT_MODEL_ROOTS", str(FAMILIES_DIR))
    return {"model": OTHER_MODEL, "source": str(FAMILIES_DIR / "t5"), "text": "The cat sat on the mat."}


def _app(**params) -> AppTest:
    at = AppTest.from_file("../app.py", default_timeout=TIMEOUT)
    for key, value in params.items():
        at.query_params[key] = value
    return at.run()


def _no_errors(at: AppTest) -> None:
    assert not at.exception, [e.value for e in at.exception]


def _figures(at: AppTest) -> list[dict]:
    return [json.loads(chart.proto.spec) for chart in at.get("plotly_chart")]


def _runs(at: AppTest) -> int:
    text = "\n".join(m.value for m in at.sidebar.markdown)
    return int(re.search(r"\*\*encoder runs\*\*: (\d+)", text).group(1))


def _texts(at: AppTest) -> str:
    """The page's messages as read (markdown escapes resolved)."""
    shown = "\n".join(str(element.value) for kind in ("info", "warning", "error") for element in at.get(kind))
    return re.sub(r"\\(.)", r"\1", shown)


def test_an_encoder_decoder_asks_for_a_target_and_offers_the_three_kinds(t5):
    at = _app(**t5)
    _no_errors(at)
    assert at.text_area(key="target").value  # the default target: decoder and cross-attention from the start
    assert list(at.radio(key="attention").options) == ["encoder", "decoder", "cross"]
    (figure,) = _figures(at)
    assert figure["layout"]["title"]["text"].startswith("Encoder · Layer 0, head 0")


def test_cross_attention_from_the_url_then_the_decoder_without_a_rerun(t5):
    at = _app(**t5, target=TARGET, attention="cross")
    _no_errors(at)
    (figure,) = _figures(at)
    assert figure["layout"]["title"]["text"].startswith("Cross-attention (decoder → encoder) · Layer 0, head 0")
    heatmap = next(t for t in figure["data"] if t["type"] == "heatmap")
    rows, cols = len(heatmap["y"]), len(heatmap["x"])
    assert rows != cols and figure["layout"]["yaxis"]["title"]["text"] == "query: decoder token"
    runs = _runs(at)
    at.radio(key="attention").set_value("decoder").run()
    _no_errors(at)
    (figure,) = _figures(at)
    assert figure["layout"]["title"]["text"].startswith("Decoder (causal)")
    heatmap = next(t for t in figure["data"] if t["type"] == "heatmap")
    assert len(heatmap["x"]) == len(heatmap["y"]) == rows  # the decoder's tokens both ways
    assert _runs(at) == runs  # the trace holds every kind: no new run
    assert at.radio(key="attention").value == "decoder" and at.text_area(key="target").value == TARGET


def test_views_and_analyses_that_cannot_show_cross_attention_say_why(t5):
    at = _app(**t5, target=TARGET, attention="cross", view="Attention distance")
    _no_errors(at)
    assert "not cross-attention" in _texts(at) and not _figures(at)
    at = _app(**t5, target=TARGET, attention="cross", view="Analysis")
    _no_errors(at)
    assert "needs square attention" in _texts(at)
    at = _app(**t5, target=TARGET, attention="decoder", view="Analysis")  # rollout of the decoder's attention
    _no_errors(at)
    assert any(f["layout"]["title"]["text"] for f in _figures(at))


def test_downloads_name_the_kind(t5, monkeypatch):
    names = set()
    original = st.download_button

    def record(label, data, file_name=None, **kwargs):  # Streamlit's button, its file name noted on the way
        names.add(file_name)
        return original(label, data, file_name=file_name, **kwargs)

    monkeypatch.setattr(st, "download_button", record)
    _no_errors(open_downloads(_app(**t5, target=TARGET, attention="cross")))
    assert any(name.endswith("-cross-heatmap.html") for name in names), names
    assert any(name.endswith("-cross-layer0.csv") for name in names), names


def test_a_single_stack_model_ignores_a_target_and_a_kind_in_the_link():
    at = _app(target="[x](http://example.com)", attention="cross")
    _no_errors(at)
    assert not at.get("radio") or "attention" not in {r.key for r in at.get("radio")}
    assert "target" not in {t.key for t in at.text_area}
    (figure,) = _figures(at)
    assert figure["layout"]["title"]["text"].startswith("Layer 0, head 0")


def test_an_empty_target_traces_the_encoder_alone(t5):
    at = _app(**t5, target=" ")
    _no_errors(at)
    assert "attention" not in {r.key for r in at.get("radio")}
    (figure,) = _figures(at)
    assert figure["layout"]["title"]["text"].startswith("Layer 0, head 0")  # one stack: no kind named


def test_a_crafted_target_is_traced_as_text_and_never_rendered_as_markdown(t5):
    crafted = "[click](http://example.com) ![x](http://example.com/a.png) **bold**"
    at = _app(**t5, target=crafted, attention="cross")
    _no_errors(at)
    for kind in ("markdown", "caption", "error", "warning", "info", "success"):
        for element in at.get(kind):
            assert not re.search(r"(?<!\\)\]\(", str(element.value)), element.value
    (figure,) = _figures(at)
    assert "Cross-attention" in figure["layout"]["title"]["text"]
    assert not any("<a " in str(label) for label in figure["layout"]["yaxis"]["ticktext"])
