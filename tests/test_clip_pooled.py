"""Which words the image model gets, on the real CLIP text fixture (``tests/fixtures/families/clip-text``): the
end-of-text (pooled) row of rollout, ALTI and value zeroing through the registry, each checked against a computation
by hand; ALTI's pre-layer-norm decomposition against the model's own layers run token by token; and the Compare
tab's minimal pair (``analysis.pooled_diff``), as numbers and in the app."""

from __future__ import annotations

import json

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from analysis import attribution, pooled_diff
from analysis.inputs import TraceInputs
from analysis.pooled import pooled_row
from encoder.errors import AnalysisError
from encoder.trace import trace_text
from tests.support.families import FAMILIES_DIR, load_family
from viz.registry import ANALYSES

TEXT = "a photo of a red car"  # 11 tokens: <|startoftext|> a p ho to of a red c ar <|endoftext|>
SAME_LENGTH = "a photo of a big car"  # "big" is one token too
OTHER_LENGTH = "a photo of a blue car"  # "bl", "ue": 12 tokens
EOS = 10


@pytest.fixture(scope="module")
def clip():
    return load_family("clip-text")


@pytest.fixture(scope="module")
def clip_trace(clip):
    return trace_text(clip, TEXT)


def _cosine(u, v) -> float:
    u, v = np.asarray(u, np.float64), np.asarray(v, np.float64)
    return float(u @ v / (np.linalg.norm(u) * np.linalg.norm(v)))


def _rollout_by_hand(layers: np.ndarray) -> np.ndarray:
    """R = C_{L-1} ... C_1 C_0 for per-layer (L, T, T) matrices."""
    rolled = np.eye(layers.shape[-1])
    for layer in layers:
        rolled = layer @ rolled
    return rolled


def test_the_pooled_row_is_the_first_end_of_text_token(clip, clip_trace, trace):
    row = pooled_row(clip_trace)
    first_eos = int(np.flatnonzero(clip_trace.token_ids == clip.config.head.eos_token_id)[0])
    assert (row.index, row.token, row.pooling) == (first_eos, "<|endoftext|>", "eos") and first_eos == EOS
    assert "what the pooled embedding reads" in row.caption
    assert pooled_row(trace) is None  # MiniLM mean-pools: no single output token


def test_rollout_eos_row_is_the_attention_product_by_hand(clip_trace):
    result = ANALYSES["rollout"].compute(TraceInputs(clip_trace), {})
    attention = clip_trace.attention.astype(np.float64).mean(axis=1)  # (L, T, T)
    mixed = 0.5 * attention + 0.5 * np.eye(clip_trace.num_tokens)
    expected = _rollout_by_hand(mixed / mixed.sum(axis=-1, keepdims=True))[EOS]
    np.testing.assert_allclose(result[-1][EOS], expected, rtol=0, atol=1e-12)
    assert result[-1][EOS].sum() == pytest.approx(1.0, abs=1e-12)
    assert (np.triu(result[-1], 1) == 0).all()  # causal: no position draws on a later token


def _layer_run(clip, layer: int, x: np.ndarray, value_mask: np.ndarray | None = None) -> np.ndarray:
    """Layer ``layer`` of the CLIP model run eagerly on ``x`` (T, D), with an optional value mask (T,): (T, D)."""
    block = clip.model.encoder_layers[layer]
    mask, bias = clip.model.layer_context(len(x))
    kept = None if value_mask is None else np.asarray(value_mask, np.float32)[None]
    output, _, _ = block(x[None], attention_mask=mask, position_bias=bias, value_mask=kept, training=False)
    return output.numpy()[0]


def test_value_zeroing_eos_row_matches_a_brute_force_rerun_per_token(clip, clip_trace):
    result = ANALYSES["value-zeroing"].compute(TraceInputs(clip_trace, clip), {})
    tokens = clip_trace.num_tokens
    layers = []
    for layer in range(clip_trace.num_layers):
        x = clip_trace.hidden[layer]
        clean = _layer_run(clip, layer, x).astype(np.float64)
        distance = np.empty((tokens, tokens))
        for j in range(tokens):
            zeroed = _layer_run(clip, layer, x, 1.0 - np.eye(tokens)[j]).astype(np.float64)
            cos = (zeroed * clean).sum(-1) / (np.linalg.norm(zeroed, axis=-1) * np.linalg.norm(clean, axis=-1))
            distance[:, j] = 1.0 - cos
        distance[np.triu_indices(tokens, 1)] = 0.0  # a later token cannot reach an earlier position (eager: ~2e-16)
        layers.append(distance / distance.sum(axis=-1, keepdims=True))
    expected = _rollout_by_hand(np.stack(layers))[EOS]
    np.testing.assert_allclose(result.rollout[-1][EOS], expected, rtol=0, atol=1e-6)  # measured 1.2e-7
    assert result.rollout[-1][EOS].sum() == pytest.approx(1.0, abs=1e-12)
    assert int(np.argmax(result.rollout[-1][EOS])) == int(np.argmax(expected))


@pytest.mark.parametrize("family", ["clip-text", "gpt2"])
def test_pre_norm_contributions_are_each_tokens_attention_output_run_alone(family):
    """In a pre-LN block, token j's part of position i after attention is what the model's own attention gives with
    only j's values kept (minus b_O), plus x_i where j = i; the parts and b_O sum to x + attention(LN(x)), the state
    the MLP then reads (so the layer's output follows); ALTI is the Manhattan closeness of these parts by hand."""
    loaded = load_family(family)
    trace = trace_text(loaded, "a photo of a red car")
    tokens = trace.num_tokens
    for layer in range(trace.num_layers):
        w = attribution.layer_weights(loaded, layer)
        assert w.pre_norm
        block = loaded.model.encoder_layers[layer]
        mask, bias = loaded.model.layer_context(tokens)
        x = trace.hidden[layer]
        normed = block.attention_norm(x[None])
        attended, pattern, _ = block.attention(normed, normed, attention_mask=mask, position_bias=bias)
        np.testing.assert_allclose(pattern.numpy()[0], trace.attention[layer], rtol=0, atol=1e-6)
        state = x + attended.numpy()[0]  # (T, D) the residual stream after attention
        after = block._feed_forward(block.output_norm(state[None]), False).numpy()[0] + state
        if layer + 1 < trace.num_layers:
            np.testing.assert_allclose(after, trace.hidden[layer + 1], rtol=0, atol=2e-5)
        parts = np.empty((tokens, tokens, x.shape[-1]))
        for j in range(tokens):
            alone, _, _ = block.attention(normed, normed, attention_mask=mask, position_bias=bias,
                                          value_mask=np.eye(tokens, dtype=np.float32)[j][None])
            parts[:, j] = alone.numpy()[0] - w.output_bias
        parts[np.arange(tokens), np.arange(tokens)] += x
        np.testing.assert_allclose(parts.sum(axis=1) + w.output_bias, state, rtol=0, atol=2e-5)
        computed, total = attribution.layer_contributions(x, trace.attention[layer], w)
        np.testing.assert_allclose(computed, parts, rtol=0, atol=2e-5)
        np.testing.assert_allclose(total, state, rtol=0, atol=2e-5)
        closeness = np.maximum(np.abs(state).sum(-1)[:, None] - np.abs(state[:, None] - parts).sum(-1), 0.0)
        alti = attribution.alti_layers(trace.hidden, trace.attention,
                                       [attribution.layer_weights(loaded, k) for k in range(trace.num_layers)])
        np.testing.assert_allclose(alti[layer], closeness / closeness.sum(-1, keepdims=True), rtol=0,
                                   atol=5e-6)  # measured 8e-7


def test_models_the_decomposition_does_not_cover_are_refused_clearly():
    with pytest.raises(AnalysisError, match=r"pre-layer-norm block with a layer norm .* llama is bias-free"):
        attribution.layer_weights(load_family("llama"), 0)


@pytest.mark.parametrize("name", ["rollout", "alti", "value-zeroing"])
def test_each_analysis_names_the_eos_row_through_the_registry(name, clip, clip_trace):
    entry = ANALYSES[name]
    result = entry.compute(TraceInputs(clip_trace, clip), {})
    figures = dict(entry.figures(result, clip_trace, {}))
    strip = figures[f"{name}-pooled"]
    title = strip.layout.title.text
    assert "row of &lt;|endoftext|&gt; (10): what the pooled embedding reads" in title and "layer 1" in title
    _, document = entry.rows(result, clip_trace, {})
    rolled = result.rollout if name == "value-zeroing" else result
    pooled = json.loads(json.dumps(document["pooled_row"]))
    assert (pooled["index"], pooled["token"], pooled["pooling"]) == (EOS, "<|endoftext|>", "eos")
    np.testing.assert_allclose(pooled["values"], rolled[-1][EOS], rtol=0, atol=1e-15)
    assert sum(pooled["values"]) == pytest.approx(1.0, abs=1e-9)
    shaded = next(t for t in strip.data if t.name == "tokens")
    np.testing.assert_allclose(np.asarray(shaded.marker.color, np.float64), rolled[-1][EOS], rtol=1e-6, atol=1e-7)


def test_a_mean_pooled_model_has_no_pooled_strip(trace):
    figures = dict(ANALYSES["rollout"].figures(ANALYSES["rollout"].compute(TraceInputs(trace), {}), trace, {}))
    assert list(figures) == ["rollout"]


# --- the minimal pair ------------------------------------------------------------------------------------------


def test_a_minimal_pair_of_equal_length(clip, clip_trace):
    other = trace_text(clip, SAME_LENGTH)
    diff = pooled_diff(clip_trace, other)
    for name in ("pooled", "embedding"):  # (32,) and the (16,) text projection
        expected = _cosine(clip_trace.outputs[name], other.outputs[name])
        assert diff.cosines[name] == pytest.approx(expected, abs=1e-6)
    assert diff.cosines["embedding"] < 1.0 - 1e-3
    assert diff.columns[7] == "red → big" and diff.changed.tolist() == [i == 7 for i in range(11)]
    assert diff.note == ""
    for shares, trace in ((diff.shares_a, clip_trace), (diff.shares_b, other)):
        rolled = ANALYSES["rollout"].compute(TraceInputs(trace), {})[:, EOS]  # (L, T): the EOS row, every layer
        np.testing.assert_allclose(shares, rolled, rtol=0, atol=1e-12)  # equal lengths: columns are positions
    np.testing.assert_allclose(diff.layer_change, 0.5 * np.abs(diff.shares_b - diff.shares_a).sum(1), atol=1e-15)
    assert (diff.layer_change > 0).all() and (diff.layer_change <= 1).all()
    rows = diff.rows()
    assert len(rows) == clip_trace.num_layers * 11 and rows[7] | {"change": 0} == {
        "layer": 0, "token": "red → big", "changed": True, "share_a": diff.shares_a[0, 7],
        "share_b": diff.shares_b[0, 7], "change": 0}


def test_a_minimal_pair_of_different_lengths_is_aligned_on_the_shared_tokens(clip, clip_trace):
    other = trace_text(clip, OTHER_LENGTH)
    diff = pooled_diff(clip_trace, other)
    assert other.num_tokens == 12 and len(diff.columns) == 11 and diff.columns[7] == "red → bl ue"
    assert "11 and 12 tokens" in diff.note and "(red → bl ue)" in diff.note
    rolled = ANALYSES["rollout"].compute(TraceInputs(other), {})[:, 11]  # the second text's EOS is position 11
    np.testing.assert_allclose(diff.shares_b[:, 7], rolled[:, 7] + rolled[:, 8], rtol=0, atol=1e-12)
    np.testing.assert_allclose(diff.shares_b[:, 8:], rolled[:, 9:], rtol=0, atol=1e-12)
    np.testing.assert_allclose(diff.shares_b.sum(1), 1.0, atol=1e-12)
    assert diff.cosines["pooled"] == pytest.approx(_cosine(clip_trace.outputs["pooled"], other.outputs["pooled"]),
                                                   abs=1e-6)


def test_a_minimal_pair_by_alti_reads_each_texts_alti_eos_row(clip, clip_trace):
    other = trace_text(clip, OTHER_LENGTH)
    rolled = tuple(ANALYSES["alti"].compute(TraceInputs(t, clip), {}) for t in (clip_trace, other))
    diff = pooled_diff(clip_trace, other, rolled=rolled, method="ALTI")
    assert diff.method == "ALTI"
    np.testing.assert_allclose(diff.shares_a, rolled[0][:, EOS], rtol=0, atol=1e-15)  # first text: one per column
    np.testing.assert_allclose(diff.shares_b[:, 7], rolled[1][:, 11, 7] + rolled[1][:, 11, 8], rtol=0, atol=1e-15)
    with pytest.raises(AnalysisError, match=r"ALTI must be \(2, 11, 11\)"):
        pooled_diff(clip_trace, other, rolled=rolled[::-1], method="ALTI")


def test_the_pooled_comparison_needs_one_pooled_model(clip_trace, trace):
    with pytest.raises(AnalysisError, match="one model"):
        pooled_diff(clip_trace, trace)
    with pytest.raises(AnalysisError, match="no pooled-token row"):
        pooled_diff(trace, trace)


def _clip_app(monkeypatch, **params) -> AppTest:
    """The app on the CLIP fixture folder (opened under the model roots) with ``params`` in the URL."""
    monkeypatch.setenv("HEADLIGHT_MODEL_ROOTS", str(FAMILIES_DIR))
    at = AppTest.from_file("../app.py", default_timeout=180)
    for key, value in {"model": "folder or hub id…", "source": str(FAMILIES_DIR / "clip-text"), "text": TEXT,
                       **params}.items():
        at.query_params[key] = value
    return at.run()


def test_the_analysis_tab_shows_alti_and_its_eos_row(monkeypatch):
    at = _clip_app(monkeypatch, view="Analysis", analysis="ALTI")
    assert not at.exception and not at.warning, [e.value for e in at.exception]
    titles = [json.loads(chart.proto.spec)["layout"]["title"]["text"] for chart in at.get("plotly_chart")]
    assert titles == ["ALTI rollout after layer 0", "Attention rollout after layer 0 (residual weight 0.5)",  # beside
                      "ALTI rollout after layer 0: row of &lt;|endoftext|&gt; (10): what the pooled embedding reads"]


def test_the_compare_tab_shows_the_minimal_pair_from_the_eos_row(monkeypatch):
    at = _clip_app(monkeypatch, view="Compare")
    at.text_area(key="other_text").set_value(SAME_LENGTH).run()
    assert not at.exception, [e.value for e in at.exception]
    titles = [json.loads(chart.proto.spec)["layout"]["title"]["text"] for chart in at.get("plotly_chart")]
    assert titles[0].startswith("Row of &lt;|endoftext|&gt;, second text minus first text: cos(pooled) ")
    assert any("second text minus first text" in t and t.startswith("Layer") for t in titles)  # the heads, too
    cosines = {metric.label: float(metric.value) for metric in at.metric}
    assert set(cosines) == {"cosine of the two pooled vectors", "cosine of the two embedding vectors"}
    at.text_area(key="other_text").set_value(OTHER_LENGTH).run()
    assert not at.exception and not at.warning
    assert any("11 and 12 tokens" in info.value for info in at.info)
    (figure,) = [json.loads(chart.proto.spec) for chart in at.get("plotly_chart")]  # no head-by-head difference
    assert figure["layout"]["xaxis"]["ticktext"][7] == "red → bl ue"
    assert figure["layout"]["yaxis"]["ticktext"][0].startswith("L0 Δ 0.")
    for method in ("ALTI", "value zeroing"):  # through the registry's cached analyses of both texts
        at.segmented_control(key="pooled_method").set_value(method).run()
        assert not at.exception and not at.warning, [e.value for e in at.exception]
        (figure,) = [json.loads(chart.proto.spec) for chart in at.get("plotly_chart")]
        assert f"reads, by {method} after each layer" in figure["layout"]["title"]["subtitle"]["text"]
