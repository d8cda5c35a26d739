"""The token view: the sentence shaded by one query token's attention row (or column)."""

import numpy as np
import pytest

from encoder.trace import trace_text
from tests.support.traces import synthetic_trace
from viz.tokens import build_token_view, layout_tokens


@pytest.fixture(scope="module")
def trace(minilm):
    return trace_text(minilm, "The cat sat on the mat because it was tired.")


def test_from_shades_each_token_by_the_query_row(trace):
    fig = build_token_view(trace, layer=2, heads=[1, 5], query=8, direction="from")
    bars = fig.data[0]
    expected = trace.attention[2, [1, 5], 8, :].mean(axis=0)
    np.testing.assert_allclose(bars.marker.color, expected, rtol=1e-6)
    assert list(bars.text) == list(trace.tokens)
    assert [row[0] for row in bars.customdata] == list(range(trace.num_tokens))
    assert "Layer 2, mean of heads 1, 5: attention from “it” (8)" in fig.layout.title.text
    assert bars.hovertext[10] == "it (8) → tired (10): "  # the template adds the weight, the bar's colour value
    assert bars.hovertemplate == "%{hovertext}%{marker.color:.4f}<extra></extra>"
    widths = np.asarray(bars.marker.line.width)
    assert widths[8] > widths[0]  # the query is outlined


def test_to_shades_each_token_by_the_query_column(trace):
    fig = build_token_view(trace, layer=4, query=2, direction="to", aggregate="max")
    np.testing.assert_allclose(fig.data[0].marker.color, trace.attention[4, :, :, 2].max(axis=0), rtol=1e-6)
    assert "attention to “cat” (2) from each token" in fig.layout.title.text
    assert fig.layout.coloraxis.cmax == pytest.approx(float(trace.attention[4, :, :, 2].max()))


def test_hiding_special_tokens_renormalises_and_rejects_a_special_query(trace):
    fig = build_token_view(trace, layer=0, query=3, hide_special=True)
    words = np.flatnonzero(~trace.special)
    row = trace.attention[0].mean(axis=0)[3, words]
    np.testing.assert_allclose(fig.data[0].marker.color, row / row.sum(), rtol=1e-5)
    assert "[CLS]" not in fig.data[0].text
    with pytest.raises(ValueError, match=r"query 0 \(\[CLS\]\) is a special token, which is hidden"):
        build_token_view(trace, query=0, hide_special=True)
    with pytest.raises(ValueError, match="direction 'sideways' is not one of 'from', 'to'"):
        build_token_view(trace, direction="sideways")
    with pytest.raises(ValueError, match=r"query 40 is out of range: the text has 13 tokens \(0-12\)"):
        build_token_view(trace, query=40)


def test_tokens_wrap_into_lines_and_a_pair_starts_sentence_b_on_a_new_line(minilm):
    pair = trace_text(minilm, "The cat sat on the mat.", "It was tired.")
    bars = build_token_view(pair, query=2).data[0]
    first_b = int(np.flatnonzero(pair.segment_ids == 1)[0])
    assert bars.y[first_b] == bars.y[first_b - 1] + 1 and bars.base[first_b] == 0
    rows, starts, widths = layout_tokens(["word"] * 40, set(), 30)
    assert rows.max() >= 7
    assert (starts + widths).max() <= 30
    assert np.all(np.diff(starts[rows == 0]) > 0)


def test_wide_characters_get_wider_boxes():
    trace = synthetic_trace(["[CLS]", "東", "a", "[SEP]"])
    bars = build_token_view(trace, query=1).data[0]
    assert bars.x[1] > bars.x[2]


def test_tokens_the_query_cannot_see_are_grey_and_say_masked():
    tokens = ["The", "Ġcat", "Ġsat", "Ġon", "Ġthe", "Ġmat", "."]
    causal = synthetic_trace(tokens, visible="causal", token_style="bytelevel")
    fig = build_token_view(causal, layer=1, query=3, direction="from")
    seen, masked = fig.data
    assert (seen.name, masked.name) == ("tokens", "masked")
    assert [row[0] for row in seen.customdata] == [0, 1, 2, 3] and list(seen.text) == ["The", "cat", "sat", "on"]
    np.testing.assert_allclose(seen.marker.color, causal.attention[1, :, 3, :4].mean(axis=0), rtol=1e-6)
    assert [row[0] for row in masked.customdata] == [4, 5, 6] and masked.marker.color == "#d4d4d4"
    assert masked.hovertext[0] == "the (4): masked" and fig.layout.barmode == "overlay"
    assert "grey: masked, tokens the query cannot see" in fig.layout.title.subtitle.text
    to = build_token_view(causal, layer=1, query=3, direction="to")
    assert [row[0] for row in to.data[1].customdata] == [0, 1, 2]  # earlier tokens cannot see a later query
    assert [t.name for t in build_token_view(causal, query=6).data] == ["tokens"]  # the last sees everything
