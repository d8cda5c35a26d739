"""The pieces every figure shares: validators (``viz.validation``), attention selection and downsampling
(``viz.selection``), labels (``viz.layout``), the click contract (``viz.clicks``), and the view registry."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from analysis import head_report
from encoder.errors import HeadlightError, ViewError
from tests.support.traces import synthetic_trace
from viz import VIEWS, build_view
from viz.analysis_figures import build_report_heatmap
from viz.attention import build_attention_heatmap
from viz.clicks import click_spec
from viz.head_lines import build_head_lines
from viz.layout import byte_characters, display_token, label_margin, text_width, token_ticks, wrap_notes
from viz.model_view import build_model_view
from viz.selection import downsample, renormalize_rows, select_attention, shown_attention
from viz.tokens import build_token_view
from viz.validation import check_colorscale, check_heads, check_layer, check_token

ROOT = Path(__file__).resolve().parent.parent


SENTENCE = ["[CLS]", "the", "cat", "sat", "on", "the", "mat", "[SEP]"]


def test_validators_name_the_bad_value_and_the_range():
    trace = synthetic_trace(SENTENCE, layers=6, heads=4)
    with pytest.raises(ValueError, match=r"layer 7 is out of range: the model has 6 layers \(0-5\)"):
        check_layer(trace, 7)
    with pytest.raises(ValueError, match=r"layer must be an integer, got 'x'"):
        check_layer(trace, "x")
    with pytest.raises(ValueError, match=r"layer must be an integer, got True"):
        check_layer(trace, True)
    assert check_layer(trace, np.int64(5)) == 5
    with pytest.raises(ValueError, match=r"head 4 is out of range: the model has 4 heads \(0-3\)"):
        check_heads(trace, [0, 4])
    with pytest.raises(ValueError, match="lists a head twice"):
        check_heads(trace, [1, 1])
    with pytest.raises(ValueError, match="heads is empty"):
        check_heads(trace, [])
    assert check_heads(trace, [3, 0]) == [0, 3]
    assert check_heads(trace, None) == [0, 1, 2, 3]
    with pytest.raises(ValueError, match=r"query 8 is out of range: the text has 8 tokens \(0-7\)"):
        check_token(trace, 8, "query")
    with pytest.raises(ValueError, match="colour scale 'Rainbowish'"):
        check_colorscale("Rainbowish")
    assert check_colorscale("viridis_r") == "viridis_r"


def test_a_bad_setting_is_a_view_error_the_app_can_show():
    trace = synthetic_trace(SENTENCE, layers=6, heads=4)
    with pytest.raises(ViewError, match="layer 6 is out of range") as caught:
        build_attention_heatmap(trace, layer=6)
    assert isinstance(caught.value, HeadlightError)
    with pytest.raises(ViewError, match="hiding special tokens leaves no tokens to show"):
        shown_attention(synthetic_trace(["[CLS]", "[SEP]"]), np.eye(2), hide_special=True, renormalize=True)


def test_shown_attention_cuts_renormalises_and_says_so():
    trace = synthetic_trace(SENTENCE, layers=2, heads=3)
    inner = np.arange(1, 7)
    weights, shown, notes = shown_attention(trace, trace.attention, hide_special=False, renormalize=True)
    np.testing.assert_array_equal(weights, trace.attention)
    assert shown.tolist() == list(range(8)) and notes == []
    weights, shown, notes = shown_attention(trace, trace.attention[1, 2], hide_special=True, renormalize=True)
    assert shown.tolist() == inner.tolist() and notes == ["special tokens hidden, rows renormalised"]
    np.testing.assert_allclose(weights.sum(axis=-1), 1.0, rtol=1e-6)
    cut = trace.attention[1][:, inner][:, :, inner]
    weights, _, notes = shown_attention(trace, trace.attention[1], hide_special=True, renormalize=False)
    np.testing.assert_array_equal(weights, cut)
    assert notes == ["special tokens hidden"]
    _, _, notes = shown_attention(trace, trace.attention[1], True, False, say_unnormalised=True)
    assert notes == ["special tokens hidden, rows not renormalised"]


def test_click_spec_names_the_clickable_traces_of_every_view():
    trace = synthetic_trace(SENTENCE, layers=2, heads=3)
    heatmap = build_attention_heatmap(trace, 1, 2, selected=(2, 3))
    assert click_spec(heatmap) == {1: ("query", "key")}
    long = synthetic_trace([f"t{i}" for i in range(70)])
    assert click_spec(build_attention_heatmap(long)) == {}  # more than CLICK_MAX_TOKENS: no click layer
    assert click_spec(build_model_view(trace, selected=(1, 2))) == {1: ("layer", "head")}
    assert click_spec(build_token_view(trace, 1, query=2)) == {0: ("query",)}
    lines = build_head_lines(trace, 1, threshold=0.0)
    count = len(lines.data)
    assert click_spec(lines) == {count - 2: ("query",), count - 1: ("query",)}
    report = build_report_heatmap(head_report(trace), "entropy")
    assert click_spec(report) == {1: ("layer", "head")}
    assert report.data[1].name == "cells" and report.data[1].meta["invisible"]


def test_select_attention_single_head_mean_max_and_layer_mean():
    trace = synthetic_trace(SENTENCE, layers=3, heads=4)
    one, title = select_attention(trace, 2, 1)
    np.testing.assert_array_equal(one, trace.attention[2, 1])
    assert title == "Layer 2, head 1"
    mean, title = select_attention(trace, 1, 0, aggregate="mean", heads=[0, 2])
    np.testing.assert_allclose(mean, (trace.attention[1, 0] + trace.attention[1, 2]) / 2, rtol=1e-6)
    assert title == "Layer 1, mean of heads 0, 2"
    single, title = select_attention(trace, 1, 0, aggregate="mean", heads=[2])
    np.testing.assert_array_equal(single, trace.attention[1, 2])
    assert title == "Layer 1, head 2"
    peak, title = select_attention(trace, 1, 0, aggregate="max")
    np.testing.assert_array_equal(peak, trace.attention[1].max(axis=0))
    assert title == "Layer 1, max of heads 0-3"
    layers, title = select_attention(trace, 0, 3, layer_mean=True)
    np.testing.assert_allclose(layers, trace.attention[:, 3].mean(axis=0), rtol=1e-6)
    assert title == "Mean of layers 0-2, head 3"
    with pytest.raises(ValueError, match="aggregate 'median' is not one of None, 'mean', 'max'"):
        select_attention(trace, 0, 0, aggregate="median")


def test_downsample_is_block_mean_or_max_with_uneven_blocks():
    matrix = np.arange(25, dtype=np.float32).reshape(5, 5)
    small = downsample(matrix, 2)  # blocks [0:2] and [2:5] (linspace edges 0, 2.5->2, 5)
    expected = np.array([
        [matrix[:2, :2].mean(), matrix[:2, 2:].mean()],
        [matrix[2:, :2].mean(), matrix[2:, 2:].mean()],
    ])
    np.testing.assert_allclose(small, expected, rtol=1e-6)
    np.testing.assert_array_equal(downsample(matrix, 2, "max"), [[6, 9], [21, 24]])
    np.testing.assert_array_equal(downsample(matrix, 8), matrix)
    stacked = downsample(np.stack([matrix, 2 * matrix]), 2)
    np.testing.assert_allclose(stacked[1], 2 * expected, rtol=1e-6)


def test_renormalize_rows_keeps_zero_rows_zero():
    rows = renormalize_rows(np.array([[1.0, 3.0], [0.0, 0.0]], dtype=np.float32))
    np.testing.assert_array_equal(rows, [[0.25, 0.75], [0.0, 0.0]])


def test_labels_escape_html_and_count_wide_characters():
    assert display_token("<s>") == "&lt;s&gt;"
    assert display_token("") == "∅"
    # A byte-level vocabulary has a piece for every byte: control characters are written as bytes (raw, they are
    # invisible and break the SVG export), a newline inside a piece as ⏎.
    assert display_token("a\x01b") == "a&lt;0x01&gt;b" and display_token("\x7f") == "&lt;0x7F&gt;"
    assert display_token("x\ny") == "x⏎y" and display_token("\t") == "&lt;0x09&gt;"
    assert label_margin(["<i>cat</i>"], 10) == label_margin(["cat"], 10)  # markup is not measured
    assert label_margin(["&lt;s&gt;"], 10) == label_margin(["abc"], 10)  # escaped: measured as "<s>"
    assert text_width("東京") == 4
    assert text_width("cat") == 3


def test_byte_tokens_name_the_character_their_run_spells():
    tokens = ["Caf", "<0xC3>", "<0xA9>", "x", "<0xF0>", "<0x9F>", "<0x8D>", "<0xA3>", "<0xC3>", "y", "<0xA9>"]
    assert byte_characters(tokens) == [None, "é", "é", None, "🍣", "🍣", "🍣", "🍣", None, None, None]


def test_notes_wrap_between_notes_to_the_figure_width():
    assert wrap_notes(["short", "notes"], 700) == ["short · notes"]
    long = ["a" * 50, "b" * 50, "c" * 20]
    assert wrap_notes(long, 600) == ["a" * 50, "b" * 50 + " · " + "c" * 20]
    assert wrap_notes(["one two three four"], 10) == ["one two three four"]  # 30 characters at the least
    assert wrap_notes(["word " * 20], 230) == [("word " * 6).strip()] * 3 + ["word word"]  # a long note: by words


def test_token_ticks_thin_long_axes_on_round_strides():
    tokens = [f"t{i}" for i in range(512)]
    axis, size = token_ticks(tokens, list(range(512)), 760)
    assert axis["tickvals"][:3] == [0, 8, 16]
    assert axis["ticktext"][1] == "8 t8"
    assert 8 <= size <= 12
    short, _ = token_ticks(SENTENCE, list(range(8)), 300)
    assert short["tickvals"] == list(range(8))
    assert short["ticktext"] == ["[CLS]", "the", "cat", "sat", "on", "the", "mat", "[SEP]"]


def test_build_view_dispatches_and_rejects_unknown_settings():
    trace = synthetic_trace(SENTENCE)
    fig = build_view(trace, "heatmap", layer=1, head=2)
    np.testing.assert_array_equal(fig.data[0].z, trace.attention[1, 2])
    with pytest.raises(ValueError, match="view 'heatmp' is not one of heatmap, head-grid"):
        build_view(trace, "heatmp")
    with pytest.raises(ValueError, match="view 'model' does not take layer"):
        build_view(trace, "model", layer=1)
    assert VIEWS["tokens"].parameters[:4] == ("layer", "heads", "query", "direction")
    for name, view in VIEWS.items():
        if view.available(trace):  # the Next-token view needs an LM head (tests/test_decoder_views.py)
            assert build_view(trace, name).data, name


def test_viz_imports_neither_tensorflow_nor_streamlit():
    code = (
        "import sys, viz, viz.render, viz.validation, viz.selection, viz.layout, viz.clicks\n"
        "import analysis, encoder.trace_io\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'keras', 'streamlit'))\n"
        "print(bad)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
