"""Every view of an encoder-decoder's trace (transformers' own T5 and BART outputs, ``reference_trace``) for each
kind of attention: cross-attention drawn rectangular (decoder tokens down, encoder tokens across), the decoder's
causal self-attention as a single stack's, and every view or analysis that cannot show a kind saying why."""

from __future__ import annotations

import numpy as np
import pytest

from analysis.inputs import TraceInputs
from cli import main
from encoder.errors import ViewError
from tests.support.encoder_decoder import reference_trace
from tests.support.families import FAMILIES_DIR
from tests.support.traces import synthetic_trace
from viz.kinds import CROSS, DECODER, ENCODER, CrossTrace, kind_suffix, of_kind, query_side
from viz.layout import short_label, token_hover_label
from viz.registry import (
    ANALYSES,
    VIEWS,
    analysis_trace,
    analysis_unavailable,
    build_view,
    view_unavailable,
)
from viz.selection import downsample

FAMILIES = ["t5", "bart"]
KINDS = (ENCODER, DECODER, CROSS)


@pytest.fixture(scope="module", params=FAMILIES)
def trace(request):
    return reference_trace(request.param)


def _ticks(axis) -> list[str]:
    return list(axis.ticktext)


# --- cross-attention, drawn rectangular -------------------------------------------------------------------------


def test_cross_heatmap_has_decoder_tokens_down_and_encoder_tokens_across(trace):
    fig = build_view(trace, "heatmap", attention=CROSS, layer=1, head=2)
    target, source = len(trace.decoder_tokens), trace.num_tokens
    z = np.asarray(fig.data[0].z)
    assert z.shape == (target, source)
    np.testing.assert_allclose(z, trace.cross_attention[1, 2], rtol=0, atol=1e-7)
    np.testing.assert_allclose(z.sum(axis=1), 1.0, atol=1e-5)  # each decoder token's row over the encoder's
    decoder = trace.decoder_trace()
    assert _ticks(fig.layout.yaxis) == [short_label(t) for t in decoder.readable_tokens]
    assert _ticks(fig.layout.xaxis) == [short_label(t) for t in trace.readable_tokens]
    assert fig.layout.yaxis.title.text == "query: decoder token"
    assert fig.layout.xaxis.title.text == "key: encoder token"
    assert fig.layout.title.text.startswith("Cross-attention (decoder → encoder) · Layer 1, head 2")
    cells = next(d for d in fig.data if d.name == "cells")  # clicks: [decoder query, encoder key, weight]
    assert np.asarray(cells.customdata)[:, 0].max() == target - 1 and np.asarray(cells.customdata)[:, 1].max() == (
        source - 1)


def test_the_head_slider_names_the_kind_in_every_step(trace):
    fig = build_view(trace, "heatmap", attention=CROSS, layer=0, head=0)
    steps = fig.layout.sliders[0].steps
    assert len(steps) == trace.cross_attention.shape[0] * trace.num_heads
    assert all(step.args[1]["title.text"].startswith("Cross-attention") for step in steps)


def test_cross_heatmap_hides_special_tokens_on_each_axis_and_renormalises(trace):
    fig = build_view(trace, "heatmap", attention=CROSS, layer=0, head=1, hide_special=True)
    rows, cols = ~trace.decoder_special, ~trace.special
    z = np.asarray(fig.data[0].z)
    assert z.shape == (rows.sum(), cols.sum())
    kept = trace.cross_attention[0, 1][np.ix_(rows, cols)]
    np.testing.assert_allclose(z, kept / kept.sum(axis=1, keepdims=True), rtol=1e-5, atol=1e-7)


def test_cross_head_grid_and_model_view_are_rectangular(trace):
    target, source = len(trace.decoder_tokens), trace.num_tokens
    grid = build_view(trace, "head-grid", attention=CROSS, layer=1)
    assert len(grid.data) == trace.num_heads
    for head, heatmap in enumerate(grid.data):
        np.testing.assert_allclose(np.asarray(heatmap.z), trace.cross_attention[1, head], rtol=0, atol=1e-7)
    small = build_view(trace, "head-grid", attention=CROSS, layer=1, max_cells=8)
    assert np.asarray(small.data[0].z).shape == (8, 8)
    model = build_view(trace, "model", attention=CROSS)
    layers, heads = trace.cross_attention.shape[:2]
    mosaic = np.asarray(model.data[0].z)
    gap = max(1, round(max(target, source) * 0.12))
    assert mosaic.shape == (layers * (target + gap) - gap, heads * (source + gap) - gap)
    thumb = mosaic[target + gap:2 * target + gap, source + gap:2 * source + gap]  # layer 1, head 1
    weights = trace.cross_attention[1, 1]
    np.testing.assert_allclose(thumb, weights / weights.max(), rtol=1e-6, atol=1e-7)
    assert any("decoder tokens" in line for line in model.layout.title.subtitle.text.split("<br>"))


def test_cross_head_lines_draw_two_token_columns_of_their_own_lengths(trace):
    fig = build_view(trace, "lines", attention=CROSS, layer=1, heads=[0], threshold=0.05)
    left, right = fig.data[-2], fig.data[-1]
    target, source = len(trace.decoder_tokens), trace.num_tokens
    assert (left.name, right.name) == ("tokens", "keys")
    assert len(left.customdata) == target and len(right.customdata) == source
    decoder, encoder = trace.decoder_trace().readable_tokens, trace.readable_tokens
    assert list(left.hovertext) == [token_hover_label(token, i) for i, token in enumerate(decoder)]
    assert list(right.hovertext) == [token_hover_label(token, i) for i, token in enumerate(encoder)]
    assert right.meta is None and left.meta["click"] == ["query"]  # only decoder tokens are queries
    assert tuple(fig.layout.yaxis.range) == (max(target, source) - 0.5, -0.5)
    lines = [d for d in fig.data[:-2] if d.x is not None and len(d.x) > 1]
    ys = np.concatenate([np.asarray(d.y, dtype=float).reshape(-1, 3)[:, :2] for d in lines])
    assert ys[:, 0].max() < target and ys[:, 1].max() < source
    expected = int((trace.cross_attention[1, 0] >= 0.05).sum())
    assert len(ys) == expected  # one line per weight at or above the threshold


def test_cross_token_view_shades_the_encoder_tokens_from_a_decoder_token(trace):
    fig = build_view(trace, "tokens", attention=CROSS, layer=0, heads=[1, 3], query=4)
    bars = fig.data[0]
    assert len(bars.x) == trace.num_tokens
    expected = trace.cross_attention[0, [1, 3]].mean(axis=0)[4]
    np.testing.assert_allclose(np.asarray(bars.marker.color), expected, rtol=1e-6)
    assert bars.meta is None  # clicking an encoder token does not make it a (decoder) query
    with pytest.raises(ViewError, match="from decoder tokens to encoder tokens"):
        build_view(trace, "tokens", attention=CROSS, query=4, direction="to")
    with pytest.raises(ViewError, match="out of range"):
        build_view(trace, "tokens", attention=CROSS, query=len(trace.decoder_tokens))


# --- the decoder's self-attention -------------------------------------------------------------------------------


def test_decoder_views_show_the_causal_self_attention(trace):
    fig = build_view(trace, "heatmap", attention=DECODER, layer=1, head=0)
    target = len(trace.decoder_tokens)
    z = np.asarray(fig.data[0].z, dtype=float)
    assert z.shape == (target, target)
    np.testing.assert_allclose(np.tril(z), np.tril(trace.decoder_attention[1, 0]), atol=1e-7)
    assert np.isnan(z[np.triu_indices(target, 1)]).all()  # masked, not coloured
    assert "causal" in fig.layout.title.subtitle.text
    assert fig.layout.title.text.startswith("Decoder (causal) · ")
    assert build_view(trace, "heatmap", attention=ENCODER).layout.title.text.startswith("Encoder · ")


# --- every view and analysis, every kind: a figure or a clear refusal ------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_every_view_builds_or_says_why_not(trace, kind):
    for view in VIEWS.values():
        why = view_unavailable(view, trace, kind)
        if why is None:
            assert build_view(trace, view.name, attention=kind).data, (view.name, kind)
            continue
        with pytest.raises(ViewError) as refused:
            build_view(trace, view.name, attention=kind)
        assert str(refused.value) == why
        assert "Traceback" not in why and len(why) < 400
    shown = {name for name, view in VIEWS.items() if view_unavailable(view, trace, kind) is None}
    assert {"heatmap", "head-grid", "model", "tokens", "lines"} <= shown
    if kind == CROSS:
        assert shown == {"heatmap", "head-grid", "model", "tokens", "lines"}


def test_refusals_say_what_to_pick(trace):
    distance = view_unavailable(VIEWS["distance"], trace, CROSS)
    assert "not cross-attention" in distance and "Pick encoder or decoder attention" in distance
    positions = view_unavailable(VIEWS["positional"], trace, DECODER)
    assert "encoder's positional encodings" in positions and "Pick encoder attention" in positions


def test_a_single_stack_trace_has_only_encoder_attention():
    plain = synthetic_trace(["[CLS]", "a", "b", "[SEP]"])
    assert build_view(plain, "heatmap").layout.title.text == "Layer 0, head 0"  # no kind named
    for kind in (DECODER, CROSS):
        assert "no " + kind + " attention" in view_unavailable(VIEWS["heatmap"], plain, kind)
        with pytest.raises(ViewError, match="not an encoder-decoder"):
            build_view(plain, "heatmap", attention=kind)
    with pytest.raises(ViewError, match="is not one of"):
        build_view(plain, "heatmap", attention="self")


@pytest.mark.parametrize("kind", KINDS)
def test_every_analysis_runs_or_says_why_not(trace, kind):
    """Analyses that need no model run on the encoder's trace or on the decoder's; none on cross-attention."""
    for entry in ANALYSES.values():
        why = analysis_unavailable(entry, trace, kind)
        if kind == CROSS:
            assert why is not None and "needs square attention" in why, entry.name
            continue
        if kind == DECODER and entry.needs_model:
            assert why is not None and "re-runs the model on the encoder's input" in why, entry.name
            continue
        if why is not None or entry.needs_model:
            continue  # its own limit (said in its message), or a model to run
        shown = analysis_trace(trace, kind)
        result = entry.compute(TraceInputs(shown), {})
        layer = {"layer": shown.num_layers - 1} if entry.layer else {}
        assert entry.figures(result, shown, layer), (entry.name, kind)


def test_decoder_analyses_read_the_decoder_tokens(trace):
    shown = analysis_trace(trace, DECODER)
    rollout = ANALYSES["rollout"].compute(TraceInputs(shown), {"residual": 0.5})
    target = len(trace.decoder_tokens)
    assert rollout.shape[-2:] == (target, target)
    assert np.allclose(np.triu(rollout[-1], 1), 0.0)  # causal all the way through


# --- downsampling, file names, the command line -----------------------------------------------------------------


def test_downsample_reduces_each_axis_on_its_own():
    matrix = np.arange(6 * 10, dtype=np.float32).reshape(6, 10)
    out = downsample(matrix, 5)
    assert out.shape == (5, 5)  # rows: 6 -> 5 blocks; columns: 10 -> 5 blocks of 2
    np.testing.assert_allclose(out[0, 0], matrix[0:1, 0:2].mean())
    assert downsample(matrix, 8).shape == (6, 8)  # only the longer axis is reduced
    np.testing.assert_allclose(downsample(matrix, 10), matrix)


def test_cross_trace_reads_like_a_trace_of_decoder_queries_and_encoder_keys(trace):
    cross = of_kind(trace, CROSS)
    assert isinstance(cross, CrossTrace) and cross.attention is trace.cross_attention
    assert cross.num_tokens == trace.num_tokens and query_side(cross).tokens == trace.decoder_tokens
    assert (kind_suffix(ENCODER), kind_suffix(CROSS)) == ("", "-cross")


def test_cli_draws_and_exports_each_kind_and_refuses_plainly(trace, tmp_path, capsys):
    saved = trace.save(tmp_path / "trace.npz")
    html = tmp_path / "cross.html"
    assert main(["--trace", str(saved), "--attention", "cross", "--view", "heatmap", "--layer", "1",
                 "-o", str(html)]) == 0
    assert "Cross-attention (decoder " in html.read_text(encoding="utf-8")
    rows = tmp_path / "cross.csv"
    assert main(["--trace", str(saved), "--attention", "cross", "--layer", "1", "--head", "0", "-o", str(rows)]) == 0
    lines = rows.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 1 + len(trace.decoder_tokens) * trace.num_tokens
    _, _, query, query_token, key, key_token, weight = lines[2].split(",")
    assert (query, key) == ("0", "1") and query_token == trace.decoder_tokens[0] and key_token == trace.tokens[1]
    assert float(weight) == pytest.approx(float(trace.cross_attention[1, 0, 0, 1]), rel=1e-6)
    decoder = tmp_path / "rollout.json"
    assert main(["--trace", str(saved), "--attention", "decoder", "--view", "rollout", "-o", str(decoder)]) == 0
    capsys.readouterr()
    for argv, said in (
        (["--attention", "cross", "--view", "distance"], "not cross-attention"),
        (["--attention", "cross", "--view", "rollout"], "needs square attention"),
        (["--merge-words"], "two"),
    ):
        assert main(["--trace", str(saved), *argv, "-o", str(tmp_path / "x.html")]) == 2
        err = capsys.readouterr().err
        assert said in err and "Traceback" not in err
    assert main(["--trace", str(saved), "--target", "Hallo", "-o", str(tmp_path / "y.html")]) == 2
    assert "not both" in capsys.readouterr().err


@pytest.mark.parametrize("family", FAMILIES)
def test_cli_traces_a_target_and_writes_the_cross_attention_the_model_computed(family, tmp_path):
    from encoder.sources import load_source
    from encoder.trace import trace_text

    folder = str(FAMILIES_DIR / family)
    text, target = "The cat sat on the mat.", "Die Katze saß."
    rows = tmp_path / "cross.csv"
    assert main(["--model", folder, "--text", text, "--target", target, "--attention", "cross", "--layer", "1",
                 "--head", "2", "-o", str(rows)]) == 0
    expected = trace_text(load_source(folder), text, target=target).cross_attention[1, 2]  # (Td, T)
    lines = rows.read_text(encoding="utf-8").splitlines()[1:]
    weights = np.array([float(line.rsplit(",", 1)[1]) for line in lines], dtype=np.float32)
    np.testing.assert_allclose(weights.reshape(expected.shape), expected, rtol=1e-6, atol=1e-8)
    figure = tmp_path / "lines.html"
    assert main(["--model", folder, "--text", text, "--target", target, "--attention", "cross", "--view", "lines",
                 "-o", str(figure)]) == 0
