"""Attention figures against the trace they show: heatmap, head grid, model view, head lines."""

import json

import numpy as np
import pytest

from encoder.trace import trace_text
from tests.support.traces import synthetic_trace
from viz.attention import CLICK_MAX_TOKENS, build_attention_heatmap, build_head_grid
from viz.head_lines import build_head_lines
from viz.layout import LOG_FLOOR, category_labels
from viz.model_view import build_model_view
from viz.scrub import SCRUB_MAX_BYTES
from viz.selection import downsample

TEXT = "The cat sat on the mat because the cat was tired."


@pytest.fixture(scope="module")
def trace(minilm):
    return trace_text(minilm, TEXT)


@pytest.fixture(scope="module")
def pair(minilm):
    return trace_text(minilm, "The cat sat on the mat.", "It was tired.")


@pytest.fixture(scope="module")
def long_trace(minilm):
    return trace_text(minilm, " ".join([TEXT] * 60), max_tokens=512)


def _cells(fig):
    return next(t for t in fig.data if t.name == "cells")


# --- heatmap ---------------------------------------------------------------------------------------------------


def test_heatmap_z_is_the_trace_slice_with_tokens_on_both_axes(trace):
    fig = build_attention_heatmap(trace, layer=2, head=5)
    heatmap = fig.data[0]
    np.testing.assert_array_equal(heatmap.z, trace.attention[2, 5])
    assert heatmap.z.dtype == np.float32
    labels = [f"{token} ({i})" for i, token in enumerate(trace.tokens)]
    assert list(heatmap.x) == labels and list(heatmap.y) == labels  # keys across, queries down, by position
    assert list(fig.layout.xaxis.ticktext) == list(trace.tokens)
    assert list(fig.layout.yaxis.ticktext) == list(trace.tokens)
    assert list(fig.layout.xaxis.tickvals) == labels
    assert heatmap.hovertemplate.startswith("%{y} → %{x}: %{z")
    assert fig.layout.yaxis.autorange == "reversed"  # first query on top
    assert "Layer 2" in fig.layout.title.text and "head 5" in fig.layout.title.text


def test_duplicate_tokens_stay_distinct_columns(trace):
    assert trace.tokens.count("the") == 3 and trace.tokens.count("cat") == 2
    fig = build_attention_heatmap(trace, layer=0, head=0)
    assert len(set(fig.data[0].x)) == trace.num_tokens
    assert list(fig.layout.xaxis.ticktext).count("the") == 3


def test_click_layer_covers_every_cell_with_query_and_key_indices(trace):
    fig = build_attention_heatmap(trace, layer=1, head=3)
    cells = _cells(fig)
    count = trace.num_tokens
    assert len(cells.customdata) == count * count
    assert cells.marker.opacity == 0 and cells.meta == {"click": ["query", "key"], "invisible": True}
    query, key = 4, 9
    point = query * count + key
    weight = trace.attention[1, 3, query, key]
    assert cells.customdata[point].tolist() == [query, key, weight]
    assert (cells.x[point], cells.y[point]) == ("cat (9)", "on (4)")  # the cell centre: key across, query down
    assert cells.hovertemplate == "%{y} → %{x}: %{customdata[2]:.4f}<extra></extra>"
    assert fig.data[0].hoverinfo == "skip"  # the click layer carries the hover


def test_selected_cell_is_outlined(trace):
    fig = build_attention_heatmap(trace, layer=0, head=0, selected=(2, 3))
    outline = fig.data[-1]
    assert outline.name == "selected" and (list(outline.x), list(outline.y)) == (["sat (3)"], ["cat (2)"])
    hidden = build_attention_heatmap(trace, layer=0, head=0, selected=(0, 3), hide_special=True)
    assert "selected" not in [t.name for t in hidden.data]  # [CLS] is not shown, so neither is its cell
    with pytest.raises(ValueError, match="selected key 99 is out of range"):
        build_attention_heatmap(trace, selected=(2, 99))


def test_longer_text_hovers_on_the_heatmap_without_a_click_layer_or_per_cell_text(minilm):
    medium = trace_text(minilm, " ".join([TEXT] * 8), max_tokens=100)
    assert medium.num_tokens > CLICK_MAX_TOKENS
    fig = build_attention_heatmap(medium, layer=3, head=2)
    assert [t.name for t in fig.data] == ["attention"]
    assert fig.data[0].text is None and fig.data[0].hovertemplate == "%{y} → %{x}: %{z:.4f}<extra></extra>"
    assert (fig.data[0].y[5], fig.data[0].x[7]) == ("the (5)", "because (7)")
    plain = build_attention_heatmap(medium, layer=3, head=2, scrub=False)
    assert len(plain.to_json()) < 60_000  # z as a float32 typed array plus 2 x 100 labels
    # The head slider carries this layer's 12 heads (all 72 would pass SCRUB_MAX_BYTES), as base64 float32.
    assert [step.value for step in fig.layout.sliders[0].steps] == [f"3:{h}" for h in range(12)]
    assert len(fig.to_json()) < 60_000 + 4 / 3 * SCRUB_MAX_BYTES


def test_aggregates_and_layer_mean_match_numpy(trace):
    fig = build_attention_heatmap(trace, layer=3, aggregate="mean", heads=[1, 4, 7])
    np.testing.assert_allclose(fig.data[0].z, trace.attention[3, [1, 4, 7]].mean(axis=0), rtol=1e-6)
    assert "mean of heads 1, 4, 7" in fig.layout.title.text
    fig = build_attention_heatmap(trace, layer=3, aggregate="max")
    np.testing.assert_array_equal(fig.data[0].z, trace.attention[3].max(axis=0))
    assert "max of heads 0-11" in fig.layout.title.text
    fig = build_attention_heatmap(trace, head=2, layer_mean=True)
    np.testing.assert_allclose(fig.data[0].z, trace.attention[:, 2].mean(axis=0), rtol=1e-6)
    assert fig.layout.title.text == "Mean of layers 0-5, head 2"


def test_hide_special_renormalises_rows_or_not_and_says_so(trace):
    words = np.flatnonzero(~trace.special)
    block = trace.attention[2, 5][np.ix_(words, words)]
    fig = build_attention_heatmap(trace, layer=2, head=5, hide_special=True)
    np.testing.assert_allclose(fig.data[0].z, block / block.sum(axis=1, keepdims=True), rtol=1e-6)
    np.testing.assert_allclose(fig.data[0].z.sum(axis=1), 1.0, rtol=1e-5)
    assert "[CLS]" not in fig.layout.xaxis.ticktext
    assert list(fig.data[0].x) == [category_labels(trace.tokens)[i] for i in words]
    assert "rows renormalised" in fig.layout.title.subtitle.text
    raw = build_attention_heatmap(trace, layer=2, head=5, hide_special=True, renormalize=False)
    np.testing.assert_array_equal(raw.data[0].z, block)
    assert "rows not renormalised" in raw.layout.title.subtitle.text


def test_sentence_pair_blocks(pair):
    a, b = np.flatnonzero(pair.segment_ids == 0), np.flatnonzero(pair.segment_ids == 1)
    fig = build_attention_heatmap(pair, layer=1, head=2, block="AB")
    np.testing.assert_array_equal(fig.data[0].z, pair.attention[1, 2][np.ix_(a, b)])
    labels = category_labels(pair.tokens)
    assert list(fig.data[0].y) == [labels[i] for i in a] and list(fig.data[0].x) == [labels[i] for i in b]
    assert "block A → B" in fig.layout.title.subtitle.text
    fig = build_attention_heatmap(pair, layer=1, head=2, block="BA", hide_special=True, renormalize=False)
    a_words, b_words = a[~pair.special[a]], b[~pair.special[b]]
    np.testing.assert_array_equal(fig.data[0].z, pair.attention[1, 2][np.ix_(b_words, a_words)])


def test_block_needs_a_pair_and_a_known_name(trace, pair):
    with pytest.raises(ValueError, match="block 'AB' needs a sentence pair; this trace has one sentence"):
        build_attention_heatmap(trace, block="AB")
    with pytest.raises(ValueError, match="block 'AC' is not one of 'AA', 'AB', 'BA', 'BB'"):
        build_attention_heatmap(pair, block="AC")


def test_log_colour_is_log10_of_the_weights_with_labelled_colour_bar(trace):
    fig = build_attention_heatmap(trace, layer=0, head=1, log_color=True)
    expected = np.log10(np.maximum(trace.attention[0, 1], LOG_FLOOR))
    np.testing.assert_allclose(fig.data[0].z, expected, rtol=1e-6)
    assert list(fig.data[0].colorbar.ticktext)[-1] == "1"
    assert "log colour" in fig.layout.title.subtitle.text
    weight = trace.attention[0, 1, 0, 0]
    assert _cells(fig).customdata[0][2] == weight  # hover still shows the weight itself


def test_heatmap_validators(trace):
    with pytest.raises(ValueError, match=r"layer 7 is out of range: the model has 6 layers \(0-5\)"):
        build_attention_heatmap(trace, layer=7)
    with pytest.raises(ValueError, match=r"head 12 is out of range: the model has 12 heads \(0-11\)"):
        build_attention_heatmap(trace, layer=0, head=12)
    with pytest.raises(ValueError, match="colour scale 'nope'"):
        build_attention_heatmap(trace, colorscale="nope")


def test_special_tokens_that_look_like_html_are_escaped():
    trace = synthetic_trace(["<s>", "a", "&", "</s>"])
    fig = build_attention_heatmap(trace)
    assert list(fig.layout.xaxis.ticktext) == ["&lt;s&gt;", "a", "&amp;", "&lt;/s&gt;"]


def test_long_text_thins_ticks_and_drops_the_click_layer(long_trace):
    assert long_trace.num_tokens == 512 > CLICK_MAX_TOKENS
    fig = build_attention_heatmap(long_trace, layer=0, head=0)
    assert len(fig.data) == 1
    labels = category_labels(long_trace.tokens)
    ticks = [labels.index(value) for value in fig.layout.xaxis.tickvals]  # positions of the labelled tokens
    assert 16 <= len(ticks) <= 80 and ticks[1] - ticks[0] in (8, 10, 16)
    assert fig.layout.xaxis.ticktext[1] == f"{ticks[1]} {long_trace.tokens[ticks[1]]}"
    assert fig.layout.height <= 1100
    assert len(fig.to_json()) < 2_500_000


# --- head grid -------------------------------------------------------------------------------------------------


def test_head_grid_has_one_subplot_per_head_with_a_shared_scale(trace):
    fig = build_head_grid(trace, layer=4)
    assert len(fig.data) == trace.num_heads
    for head, heatmap in enumerate(fig.data):
        np.testing.assert_array_equal(heatmap.z, trace.attention[4, head])
        assert heatmap.coloraxis == "coloraxis"
    assert [a.text for a in fig.layout.annotations] == [f"head {h}" for h in range(12)]
    assert list(fig.data[0].x) == list(range(trace.num_tokens))  # token indices on category axes
    assert list(fig.layout.yaxis.ticktext) == list(trace.tokens)
    hidden = build_head_grid(trace, layer=4, hide_special=True, renormalize=False)
    words = np.flatnonzero(~trace.special)
    assert list(hidden.data[0].y) == list(words)
    np.testing.assert_array_equal(hidden.data[2].z, trace.attention[4, 2][np.ix_(words, words)])
    assert fig.layout.coloraxis.cmax == pytest.approx(float(trace.attention[4].max()))
    assert "Layer 4" in fig.layout.title.text


def test_head_grid_downsamples_long_texts_and_says_so(long_trace):
    fig = build_head_grid(long_trace, layer=1, max_cells=64)
    np.testing.assert_allclose(fig.data[3].z, downsample(long_trace.attention[1, 3], 64), rtol=1e-6)
    assert fig.data[3].z.shape == (64, 64)
    assert "downsampled to 64×64 per head" in fig.layout.title.subtitle.text
    assert list(fig.data[3].x[:3]) == [0, 8, 16]  # each block is named by its first token
    with pytest.raises(ValueError, match="max_cells 1 must be an integer from 2 to 1024"):
        build_head_grid(long_trace, max_cells=1)


# --- model view ------------------------------------------------------------------------------------------------


def test_model_view_tiles_every_layer_and_head_into_one_heatmap(trace):
    fig = build_model_view(trace)
    heatmaps = [t for t in fig.data if t.type == "heatmap"]
    assert len(heatmaps) == 1
    heads = next(t for t in fig.data if t.name == "heads")
    layers, count = trace.num_layers, trace.num_heads
    assert len(heads.customdata) == layers * count  # one thumbnail per (layer, head)
    assert heads.customdata[count + 3].tolist() == [1, 3]
    mosaic = heatmaps[0].z
    size, gap = trace.num_tokens, max(1, round(trace.num_tokens * 0.12))
    step = size + gap
    assert mosaic.shape == (layers * step - gap, count * step - gap)
    thumb = mosaic[2 * step:2 * step + size, 7 * step:7 * step + size]
    np.testing.assert_allclose(thumb, trace.attention[2, 7] / trace.attention[2, 7].max(), rtol=1e-6)
    assert np.isnan(mosaic[size:step]).all()  # the gap between layer rows is transparent
    assert heads.meta == {"click": ["layer", "head"], "invisible": True}
    chosen = build_model_view(trace, selected=(1, 3)).data[-1]
    assert chosen.name == "selected" and (chosen.x[0], chosen.y[0]) == (heads.x[count + 3], heads.y[count + 3])
    with pytest.raises(ValueError, match="head 12 is out of range"):
        build_model_view(trace, selected=(1, 12))


def test_model_view_at_512_tokens_is_one_light_downsampled_image(long_trace):
    fig = build_model_view(long_trace, per_head_scale=False)
    mosaic = fig.data[0].z
    assert mosaic.dtype == np.float32
    step = 64 + max(1, round(64 * 0.12))
    np.testing.assert_allclose(mosaic[step:step + 64, :64], downsample(long_trace.attention[1, 0], 64), rtol=1e-6)
    assert "downsampled to 64×64 per head (block mean)" in fig.layout.title.subtitle.text
    payload = fig.to_json()
    assert len(payload) < 5_000_000
    assert '"dtype":"f4"' in payload  # typed array, not a list of numbers


def test_model_view_validators(trace):
    with pytest.raises(ValueError, match="thumbnail 2 must be an integer from 4 to 512"):
        build_model_view(trace, thumbnail=2)
    with pytest.raises(ValueError, match="reduce 'median' is not one of 'mean', 'max'"):
        build_model_view(trace, reduce="median")


# --- head lines ------------------------------------------------------------------------------------------------


def _segments(fig):
    """{(head name, query row, key row)} of every line drawn."""
    drawn = set()
    for t in fig.data:
        if t.mode == "lines" and t.x is not None and len(t.x) > 1:
            ys = np.asarray(t.y, dtype=float).reshape(-1, 3)
            drawn |= {(t.name, int(q), int(k)) for q, k, _ in ys}
    return drawn


def test_head_lines_draw_exactly_the_weights_above_the_threshold(trace):
    fig = build_head_lines(trace, layer=2, heads=[0, 8], threshold=0.2)
    expected = {
        (f"head {h}", int(q), int(k))
        for h in (0, 8)
        for q, k in zip(*np.nonzero(trace.attention[2, h] >= 0.2))
    }
    assert _segments(fig) == expected
    legend = [t.name for t in fig.data if t.showlegend is not False and t.name.startswith("head")]
    assert legend == ["head 0", "head 8"]
    tokens = next(t for t in fig.data if t.name == "tokens")
    assert list(tokens.text) == list(trace.tokens)
    assert [row[0] for row in tokens.customdata] == list(range(trace.num_tokens))
    assert "Layer 2, heads 0, 8" in fig.layout.title.text


def test_head_lines_for_one_query(trace):
    fig = build_head_lines(trace, layer=1, heads=[3], threshold=0.0, query=2, scrub=False)
    assert _segments(fig) == {("head 3", 2, k) for k in range(trace.num_tokens)}
    # Under the head slider the traces are named alike for every step (the title names the head).
    scrubbed = build_head_lines(trace, layer=1, heads=[3], threshold=0.0, query=2)
    assert {(q, k) for _, q, k in _segments(scrubbed)} == {(2, k) for k in range(trace.num_tokens)}
    assert {name for name, _, _ in _segments(scrubbed)} == {"lines"}
    assert scrubbed.layout.title.text.startswith("Layer 1, head 3:")
    with pytest.raises(ValueError, match=r"threshold 1\.5 is out of range"):
        build_head_lines(trace, threshold=1.5)
    with pytest.raises(ValueError, match=r"query 0 \(\[CLS\]\) is a special token, which is hidden"):
        build_head_lines(trace, query=0, hide_special=True)


def test_head_lines_keep_only_the_strongest_lines(trace):
    fig = build_head_lines(trace, layer=0, threshold=0.0, max_lines=50)
    drawn = _segments(fig)
    assert len(drawn) == 50
    weights = np.sort(trace.attention[0].ravel())
    smallest_drawn = min(trace.attention[0, int(name.split()[1]), q, k] for name, q, k in drawn)
    assert smallest_drawn == weights[-50]
    assert f"strongest 50 of {12 * trace.num_tokens ** 2:,} lines" in fig.layout.title.subtitle.text


def test_figures_serialise_to_json(trace):
    for fig in (build_attention_heatmap(trace), build_head_grid(trace), build_model_view(trace),
                build_head_lines(trace)):
        assert json.loads(fig.to_json())["data"]


# --- masked attention (a causal model) and tokens as people read them ---------------------------------------------

CAUSAL_TOKENS = ["The", "Ġcat", "Ġsat", "Ġon", "Ġthe", "Ġmat", "Ċ", "ĠCaf", "Ã©", "."]


@pytest.fixture(scope="module")
def causal():
    return synthetic_trace(CAUSAL_TOKENS, visible="causal", layers=2, heads=3, token_style="bytelevel")


def test_masked_cells_of_a_causal_heatmap_are_nan_grey_and_say_masked(causal):
    fig = build_attention_heatmap(causal, layer=1, head=2)
    z = fig.data[0].z
    above = ~np.tri(causal.num_tokens, dtype=bool)
    assert np.isnan(z[above]).all()
    np.testing.assert_array_equal(z[~above], causal.attention[1, 2][~above])
    assert "upper triangle masked (causal)" in fig.layout.title.subtitle.text
    assert fig.data[0].zmax == pytest.approx(float(np.nanmax(z)))
    masked = fig.data[-1]
    assert masked.name == "masked" and masked.type == "heatmap"
    assert np.array_equal(np.isnan(masked.z), ~above)  # grey exactly on the masked cells
    cells = _cells(fig)
    text = np.asarray(cells.text).reshape(z.shape)
    assert (text[above] == "masked").all() and text[1, 0] == f"{z[1, 0]:.4f}"
    assert "%{text}" in cells.hovertemplate
    log = build_attention_heatmap(causal, layer=1, head=2, log_color=True).data[0]
    assert np.isnan(log.z[above]).all() and np.isfinite(log.zmin)


def test_a_long_causal_heatmap_hovers_masked_on_the_grey_layer():
    tokens = [f"Ġw{i}" for i in range(CLICK_MAX_TOKENS + 6)]
    fig = build_attention_heatmap(synthetic_trace(tokens, visible="causal", layers=1, heads=1, seed=3,
                                                  token_style="bytelevel"))
    assert not any(t.name == "cells" for t in fig.data)
    masked = fig.data[-1]
    assert masked.name == "masked" and masked.hoverinfo is None and "masked" in masked.hovertemplate
    assert fig.data[0].hoverongaps is False and masked.hoverongaps is False


def test_masked_cells_in_the_head_grid_and_model_view_are_nan(causal):
    above = ~np.tri(causal.num_tokens, dtype=bool)
    grid = build_head_grid(causal, layer=0)
    for h in range(causal.num_heads):
        assert np.isnan(grid.data[h].z[above]).all()
        np.testing.assert_allclose(grid.data[h].z[~above], causal.attention[0, h][~above])
    assert "upper triangle masked (causal)" in grid.layout.title.subtitle.text
    small = build_head_grid(causal, layer=0, max_cells=5).data[0].z  # blocks average only the cells they see
    weights = causal.attention[0, 0]
    assert small[0, 0] == pytest.approx(weights[:2, :2][~above[:2, :2]].mean(), rel=1e-6)
    assert np.isnan(small[0, 1:]).all()
    model = build_model_view(causal, per_head_scale=False)
    thumb = model.data[0].z[:causal.num_tokens, :causal.num_tokens]  # layer 0, head 0
    assert np.isnan(thumb[above]).all()
    np.testing.assert_allclose(thumb[~above], weights[~above])
    assert "upper triangle masked (causal)" in model.layout.title.subtitle.text


def test_views_label_byte_level_tokens_as_people_read_them(causal):
    heatmap = build_attention_heatmap(causal)
    assert list(heatmap.layout.xaxis.ticktext) == ["The", "cat", "sat", "on", "the", "mat", "⏎", "Caf", "é", "."]
    assert heatmap.data[0].x[8] == "é (8)"
    assert list(build_head_grid(causal).layout.yaxis.ticktext)[:2] == ["The", "cat"]
    lines = build_head_lines(causal, query=8, threshold=0.0)
    assert "from é (8) only" in lines.layout.title.subtitle.text
    assert "Ġ" not in "".join(lines.data[-1].text) and lines.data[-1].hovertext[8] == "é (8)"
