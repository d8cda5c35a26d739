"""What decoders add to the views: attention sinks, grouped-query head labels, the Next-token view, the logit lens
and generated tokens marked."""

from __future__ import annotations

import numpy as np
import pytest

from analysis.report import SINK_FROM, SINK_THRESHOLD, head_report, sink_queries
from tests.support.floats import approx_f32
from tests.support.traces import synthetic_trace
from viz.analysis_figures import build_report_heatmap
from viz.attention import build_attention_heatmap, build_head_grid
from viz.model_view import build_model_view
from viz.selection import head_label

WORDS = ("The", "cat", "sat", "on", "the", "mat", "today")


def sink_trace(key_value_heads: int = 0):
    """A causal 7-token trace of 1 layer x 4 heads: head 0 puts everything on the first token (a sink), head 1 on
    the token itself, head 2 splits evenly between the first token and itself, head 3 is uniform over what it
    sees."""
    t = len(WORDS)
    first = np.zeros((t, t))
    first[:, 0] = 1
    own = np.eye(t)
    half = (first + own) / 2
    half[0, 0] = 1
    uniform = np.tri(t) / np.arange(1, t + 1)[:, None]
    attention = np.stack([first, own, half, uniform])[None].astype(np.float32)
    return synthetic_trace(WORDS, attention=attention, visible="causal").replace(key_value_heads=key_value_heads)


def test_sink_statistic_averages_the_queries_after_the_first_few():
    assert (SINK_FROM, SINK_THRESHOLD) == (4, 0.5)
    assert sink_queries(7) == slice(4, 7) and sink_queries(3) == slice(2, 3) and sink_queries(1) == slice(0, 1)
    report = head_report(sink_trace())
    uniform = np.mean([1 / 5, 1 / 6, 1 / 7])  # queries 4, 5 and 6 see 5, 6 and 7 keys
    assert report["sink"][0].tolist() == [approx_f32(1.0), 0.0, approx_f32(0.5), approx_f32(uniform)]
    assert report.sinks() == [(0, 0, approx_f32(1.0)), (0, 2, approx_f32(0.5))]  # 0.5 counts: at least
    assert report["cls"][0, 2] > report["sink"][0, 2]  # "cls" counts the first queries too


def test_report_card_names_the_sinks_and_the_key_value_heads():
    plain = head_report(sink_trace())
    subtitle = build_report_heatmap(plain, "sink").layout.title.subtitle.text.replace("<br>", " ")
    assert "Attention sinks (≥ 0.5 of attention from queries 4+ on the first token): L0 H0 (1.00), L0 H2 (0.50)." \
        in subtitle
    assert "kv" not in subtitle and "kv_head" not in plain.rows()[0]
    grouped = head_report(sink_trace(key_value_heads=2))
    subtitle = build_report_heatmap(grouped, "entropy").layout.title.subtitle.text.replace("<br>", " ")
    assert "query heads 0-1 share kv head 0; heads 2-3 share kv head 1." in subtitle
    assert [row["kv_head"] for row in grouped.rows()] == [0, 0, 1, 1]
    assert list(grouped.rows()[0])[:3] == ["layer", "head", "kv_head"]


def test_no_sinks_is_said():
    t = len(WORDS)
    attention = np.eye(t, dtype=np.float32)[None, None]
    report = head_report(synthetic_trace(WORDS, attention=attention, visible="causal"))
    assert report.sinks() == []
    assert "on the first token): none." in build_report_heatmap(report, "sink").layout.title.subtitle.text


def test_model_view_marks_the_sinks():
    trace = sink_trace()
    fig = build_model_view(trace, sinks=True)
    sinks = next(t for t in fig.data if t.name == "sinks")
    assert len(sinks.x) == 2 and ["head 0:" in text or "head 2:" in text for text in sinks.text] == [True, True]
    assert "red dots: 2 attention sinks" in fig.layout.title.subtitle.text
    assert "sinks" not in [t.name for t in build_model_view(trace).data]


def test_grouped_query_heads_are_labelled_and_grouped():
    trace = sink_trace(key_value_heads=2)
    assert [head_label(trace, h) for h in range(4)] == ["head 0 (kv 0)", "head 1 (kv 0)", "head 2 (kv 1)",
                                                        "head 3 (kv 1)"]
    assert head_label(sink_trace(), 3) == "head 3"
    assert "head 3 (kv 1)" in build_attention_heatmap(trace, 0, head=3).layout.title.text
    grid = build_head_grid(trace, 0)
    assert [a.text for a in grid.layout.annotations][:4] == [head_label(trace, h) for h in range(4)]
    # One key/value head a row: head 2 starts the second row, under head 0.
    layout = grid.layout
    assert layout.xaxis3.domain == layout.xaxis.domain and layout.yaxis3.domain[1] < layout.yaxis.domain[0]
    model = build_model_view(trace)
    assert len(model.layout.shapes) == 1 and "2 key/value heads, each shared by 2" in model.layout.title.subtitle.text
    assert "layer 0, head 3 (kv 1)" in next(t for t in model.data if t.name == "heads").text[3]


def test_key_value_heads_must_divide_the_heads():
    with pytest.raises(ValueError, match=r"key_value_heads \(3\) must divide the 4 heads"):
        sink_trace(key_value_heads=3)
