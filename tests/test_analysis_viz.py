"""Analysis figures: the numbers drawn are the numbers computed, titles and axes say what they are, bad input fails."""

import numpy as np
import plotly.graph_objects as go
import pytest

from analysis import (
    STATISTICS,
    attention_flow,
    attention_rollout,
    cluster_heads,
    diff_traces,
    head_distances,
    head_report,
)
from analysis.perturb import (
    AblationEffect,
    HeadImportance,
    NoiseStability,
    ablate_heads,
    head_importance,
    noise_stability,
)
from encoder.trace import trace_text
from tests.support.traces import random_attention, synthetic_trace
from viz.analysis_figures import (
    build_ablation_chart,
    build_clustering_heatmap,
    build_diff_heatmap,
    build_diff_map,
    build_diff_ranking,
    build_flow_heatmap,
    build_head_map,
    build_importance_heatmap,
    build_noise_curve,
    build_noise_heatmap,
    build_report_heatmap,
    build_rollout_heatmap,
    report_table,
)

TOKENS = ("[CLS]", "the", "cat", "sat", ".", "[SEP]")


@pytest.fixture(scope="module")
def trace():
    return synthetic_trace(TOKENS, attention=random_attention(np.random.default_rng(0), 3, 4, len(TOKENS)))


def subtitle_lines(fig: go.Figure) -> list[str]:
    return fig.layout.title.subtitle.text.split("<br>")


def test_rollout_heatmap_draws_the_chosen_layer(trace):
    rollout = attention_rollout(trace.attention)
    fig = build_rollout_heatmap(rollout, trace.tokens, layer=1)
    np.testing.assert_allclose(fig.data[0].z, rollout[1], rtol=1e-6)
    assert fig.layout.title.text.startswith("Attention rollout after layer 1")
    assert list(fig.layout.xaxis.ticktext) == list(TOKENS) == list(fig.layout.yaxis.ticktext)
    assert "rows sum to 1" in fig.layout.title.subtitle.text
    np.testing.assert_allclose(build_rollout_heatmap(rollout, trace.tokens).data[0].z, rollout[-1], rtol=1e-6)
    with pytest.raises(ValueError, match=r"layer 3 is out of range"):
        build_rollout_heatmap(rollout, trace.tokens, layer=3)
    with pytest.raises(ValueError, match="for 5 tokens"):
        build_rollout_heatmap(rollout, trace.tokens[:5])


def test_flow_heatmap(trace):
    flow = attention_flow(trace.attention)
    fig = build_flow_heatmap(flow, trace.tokens, 3)
    np.testing.assert_allclose(fig.data[0].z, flow, rtol=1e-6)
    assert "max flow" in fig.layout.title.subtitle.text.replace("<br>", " ")
    assert fig.layout.title.text == "Attention flow through 3 layers (residual weight 0.5)"


@pytest.mark.parametrize("statistic", list(STATISTICS))
def test_report_heatmap_for_every_statistic(trace, statistic):
    report = head_report(trace)
    fig = build_report_heatmap(report, statistic)
    np.testing.assert_allclose(fig.data[0].z, report[statistic], rtol=1e-6)
    assert STATISTICS[statistic] in fig.layout.title.text and "this text" in fig.layout.title.text
    cells = fig.data[1]
    assert cells.name == "cells" and len(cells.customdata) == 12
    assert cells.customdata[5].tolist() == [1, 1]  # layer-major: cell 5 is layer 1, head 1
    assert cells.text[5] == f"{report[statistic][1, 1]:.3f}"
    assert fig.layout.yaxis.autorange == "reversed" and fig.layout.xaxis.title.text == "head"


def test_report_table_and_unknown_statistic(trace):
    report = head_report(trace)
    rows = report_table(report, decimals=2)
    assert len(rows) == 12 and list(rows[0]) == ["layer", "head", *STATISTICS]
    assert rows[7]["entropy"] == round(float(report["entropy"][1, 3]), 2)
    with pytest.raises(ValueError, match="unknown statistic 'beauty'"):
        build_report_heatmap(report, "beauty")


def test_clustering_heatmap_is_in_cluster_order(trace):
    clustering = cluster_heads(head_distances(trace.attention), 3, 4)
    fig = build_clustering_heatmap(clustering, clusters=3)
    order = clustering.order
    np.testing.assert_allclose(fig.data[0].z, clustering.distance[np.ix_(order, order)], rtol=1e-6)
    assert list(fig.layout.xaxis.ticktext) == [clustering.labels()[n] for n in order]
    assert len(fig.layout.shapes) == 3
    assert fig.layout.shapes[0].x0 == -0.5 and fig.layout.shapes[-1].x1 == 11.5


def test_diff_figures(trace):
    other = trace.attention.copy()
    other[2, 3] = other[2, 3, :, ::-1]
    diff = diff_traces(trace, trace.replace(attention=other, model="b"))
    fig = build_diff_heatmap(diff, 2, 3)
    np.testing.assert_allclose(fig.data[0].z, other[2, 3] - trace.attention[2, 3], atol=1e-7)
    assert fig.data[0].zmin == -fig.data[0].zmax
    assert fig.layout.title.text == "Layer 2 head 3: b minus synthetic"
    ranking = build_diff_ranking(diff, top=3)
    assert ranking.data[0].y[0] == "L2 H3" and len(ranking.data[0].y) == 3
    assert ranking.data[0].x[0] == pytest.approx(diff.divergence[2, 3])
    np.testing.assert_allclose(build_diff_map(diff).data[0].z, diff.divergence, rtol=1e-6)
    with pytest.raises(ValueError, match="head 4 is out of range"):
        build_diff_heatmap(diff, 0, 4)
    with pytest.raises(ValueError, match="at least 1"):
        build_diff_ranking(diff, top=0)


def test_minimal_pair_labels_show_both_tokens(trace):
    swapped = synthetic_trace(("[CLS]", "the", "dog", "sat", ".", "[SEP]"), attention=trace.attention, text="other")
    fig = build_diff_heatmap(diff_traces(trace, swapped), 0, 0)
    assert fig.layout.xaxis.ticktext[2] == "cat/dog"


def test_noise_figures():
    divergence = np.stack([np.zeros((2, 3)), np.full((2, 3), 0.01), np.arange(6.0).reshape(2, 3) / 10])
    stability = NoiseStability(np.array([0.0, 0.1, 0.5]), divergence, divergence / 2, np.array([1.0, 0.99, 0.9]),
                               samples=4, seed=0, rms=0.8)
    heat = build_noise_heatmap(stability)
    np.testing.assert_allclose(heat.data[0].z, divergence[2])
    assert "sigma 0.5" in heat.layout.title.text
    np.testing.assert_allclose(build_noise_heatmap(stability, 0.1).data[0].z, divergence[1])
    with pytest.raises(ValueError, match=r"sigma 0\.3 was not measured; measured: 0, 0\.1, 0\.5"):
        build_noise_heatmap(stability, 0.3)
    curve = build_noise_curve(stability)
    assert [t.name for t in curve.data] == ["layer 0", "layer 1", "all heads"]
    np.testing.assert_allclose(curve.data[1].y, divergence[:, 1].mean(axis=1))
    np.testing.assert_allclose(curve.data[-1].y, [0.0, 0.01, 0.25])


def test_importance_and_ablation_figures():
    classifier = HeadImportance(np.array([[0.2, -0.1]]), "drop in P(positive) with the head silenced",
                                np.ones((1, 2)), np.zeros((1, 2, 2)), np.array([0.3, 0.7]), 1, ("negative", "positive"))
    fig = build_importance_heatmap(classifier)
    assert fig.data[0].zmin == -0.2 and fig.data[0].zmax == 0.2
    assert "drop in P(positive)" in fig.layout.title.subtitle.text
    effect = AblationEffect(((0, 1),), 0.95, np.ones(3), np.ones(3), np.array([0.6, 0.4]), np.array([0.3, 0.7]),
                            ("negative", "positive"), np.zeros((1, 2, 3, 3)))
    bars = build_ablation_chart(effect)
    assert [t.name for t in bars.data] == ["clean", "heads silenced"]
    assert list(bars.data[0].x) == ["negative", "positive"]
    np.testing.assert_allclose(bars.data[1].customdata, [0.3, -0.3])
    assert bars.layout.title.text == "Silencing L0 H1: class probabilities"


def test_head_map_wraps_its_reading_guide():
    fig = build_head_map(np.ones((2, 2)), "t", "word " * 80, "v")
    lines = subtitle_lines(fig)
    assert len(lines) > 1 and all(len(line) <= int((fig.layout.width - 30) / 6.6) for line in lines)
    assert fig.layout.margin.t == 72 + 16 * len(lines)
    with pytest.raises(ValueError, match=r"\(layers, heads\)"):
        build_head_map(np.ones(3), "t", "s", "v")


def test_every_figure_from_real_minilm_runs(minilm):
    trace = trace_text(minilm, "The cat sat on the mat.")
    importance = head_importance(minilm, trace)
    fig = build_importance_heatmap(importance)
    np.testing.assert_allclose(fig.data[0].z, importance.importance, rtol=1e-6)
    assert fig.data[0].zmin == 0.0 and "1 - cosine" in fig.layout.title.subtitle.text
    chart = build_ablation_chart(ablate_heads(minilm, trace, [(5, 3)]))
    assert chart.data[0].y == ("cosine",) and chart.layout.title.text == "Silencing L5 H3: sentence embedding"
    curve = build_noise_curve(noise_stability(minilm, trace, sigmas=(0.0, 0.2), samples=2))
    assert len(curve.data) == 7 and curve.data[-1].y[0] == 0.0


def test_report_card_of_a_model_without_cls_names_the_first_token():
    tokens = ("The", "Ġcat", "Ġsat", ".")
    gpt2 = synthetic_trace(tokens, visible="causal", token_style="bytelevel")
    report = head_report(gpt2)
    fig = build_report_heatmap(report, "cls")
    assert fig.layout.title.text == "Head report card: attention to the first token, this text"
    assert "first token" in fig.layout.title.subtitle.text and fig.data[1].hovertemplate.count("first_token") == 1
    assert "first_token" in report_table(report)[0]
    assert "[CLS]" in build_report_heatmap(head_report(synthetic_trace(TOKENS)), "cls").layout.title.text


def test_rollout_and_flow_of_the_registry_label_tokens_as_people_read_them():
    from analysis.inputs import TraceInputs
    from viz.registry import ANALYSES

    trace = synthetic_trace(("The", "Ġcat", "Ġsat", "Ċ"), visible="causal", token_style="bytelevel")
    for name in ("rollout", "flow"):
        entry = ANALYSES[name]
        result = entry.compute(TraceInputs(trace), {})
        fig = entry.figures(result, trace, {})[0][1]
        assert list(fig.layout.xaxis.ticktext) == ["The", "cat", "sat", "⏎"], name
        rows, _ = entry.rows(result, trace, {})
        assert rows[1]["key_token"] == "Ġcat"  # the numbers keep the tokenizer's own tokens
    rollout = ANALYSES["rollout"].compute(TraceInputs(trace), {})
    np.testing.assert_allclose(rollout.sum(-1), 1.0, atol=1e-5)  # still row-stochastic on the causal graph
