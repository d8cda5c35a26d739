"""Gradient attributions (``analysis.gradients``) on the real MiniLM, the tutorial classifier and family fixtures:
attention x gradient and input x gradient against central finite differences of f, integrated gradients'
completeness at the default steps, a baseline equal to the input, the similarity explainer's integrated gradients,
one compiled graph per objective, and the CLI writing every new view."""

import csv
import io
import json

import numpy as np
import pytest

from analysis import gradients
from analysis.objectives import OBJECTIVES
from analysis.similarity import explain_similarity
from cli import main
from encoder.errors import AnalysisError
from encoder.trace import trace_text
from tests.support.families import load_family
from tests.support.floats import approx_f32, assert_close_f32
from tutorial.dataset import read_split
from viz.gradients import build_attention_gradient_heatmap, build_token_attribution
from viz.registry import ANALYSES
from viz.similarity import build_similarity_gradients

TEXT = "The cat sat on the mat."  # 8 tokens with [CLS] and [SEP]
REVIEW = "a dull and lifeless mess"
STEP = 0.02  # central-difference step along a unit direction (and half of it, for Richardson extrapolation)
# Central differences at STEP and STEP / 2 combined as (4 D(h / 2) - D(h)) / 3 cancel the O(h^2) truncation error
# (4e-3 relative on the random bert-cls fixture at h = 0.05); float32 f rounds at ~1e-7 relative, so the noise is
# about that over the step. A wrong gradient (sign, a missing factor, one layer off) misses by far more.
RELATIVE = 1e-3
INPUT_STEP = 0.1  # one token's embedding moves less f than the whole attention: a longer step beats the rounding
ROUNDING = 4e-7  # a few float32 roundings of f, relative to max(1, |f|), before dividing by the step


@pytest.fixture(scope="module")
def tutorial():
    from encoder.sources import load_source

    return load_source("tutorial")


@pytest.fixture(scope="module", params=["minilm", "tutorial", "bert-cls", "deberta-v3", "gpt2"])
def case(request, minilm, tutorial):
    """(model, trace) for each model kind: mean-pooled embedding, mean-pooled classifier, [CLS] classifier,
    disentangled attention, a causal pre-norm model."""
    if request.param == "minilm":
        return minilm, trace_text(minilm, TEXT)
    if request.param == "tutorial":
        return tutorial, trace_text(tutorial, REVIEW)
    model = load_family(request.param)
    return model, trace_text(model, "The quick brown fox jumps over the lazy dog.")


def _direction(gradient: np.ndarray, seed: int) -> np.ndarray:
    """A unit direction half along the gradient, half random (so f changes measurably along it)."""
    noise = np.random.default_rng(seed).standard_normal(gradient.shape)
    v = gradient / np.linalg.norm(gradient) + noise / np.linalg.norm(noise)
    return v / np.linalg.norm(v)


def _f_along(model, trace, goal, noise=None, scale=None) -> np.ndarray:
    """f at each row of ``noise`` (B, T, D) / ``scale`` (B, L, H, T, T), as float64."""
    rows = len(noise if noise is not None else scale)
    t, d = trace.num_tokens, trace.hidden.shape[-1]
    noise = np.zeros((rows, t, d), np.float32) if noise is None else noise.astype(np.float32)
    scale = (np.ones((rows, trace.num_layers, trace.num_heads, t, t), np.float32) if scale is None
             else scale.astype(np.float32))
    ids, segments = np.repeat(trace.token_ids[None], rows, 0), np.repeat(trace.segment_ids[None], rows, 0)
    f, _, _ = model.encoder.attention_gradients(OBJECTIVES[goal.kind], ids, segments, noise, scale,
                                                np.full(rows, goal.target, np.int32),
                                                np.repeat(goal.direction[None], rows, 0))
    return f.numpy().astype(np.float64)


def _tolerance(expected: float, f: float, step: float) -> float:
    """How far a finite difference may be from the gradient: RELATIVE of it, plus f's float32 rounding noise."""
    return RELATIVE * abs(expected) + ROUNDING * max(1.0, abs(f)) / step


def _derivative(f_at, step: float = STEP) -> float:
    """d/dh f_at(h) at 0 from ``f_at(steps) -> values`` (f at +h and -h for each step): Richardson-extrapolated
    central differences."""
    values = f_at(np.array([step, -step, step / 2, -step / 2]))
    coarse, fine = (values[0] - values[1]) / (2 * step), (values[2] - values[3]) / step
    return (4 * fine - coarse) / 3


def test_attention_gradient_is_the_finite_difference_along_the_attention_scale(case):
    model, trace = case
    goal = gradients.objective(model, trace)
    result = gradients.attention_gradient(model, trace)
    assert result.values.shape == (trace.num_layers, trace.num_heads, trace.num_tokens, trace.num_tokens)
    v = _direction(result.values, seed=1)
    expected = float((result.values * v).sum())
    finite = _derivative(lambda h: _f_along(model, trace, goal, scale=1 + h[:, None, None, None, None] * v))
    assert abs(finite - expected) <= _tolerance(expected, result.value, STEP), (finite, expected)
    assert result.value == pytest.approx(_f_along(model, trace, goal, scale=np.ones((1, *v.shape)))[0], abs=1e-6)
    if model.config.causal:  # later keys are hidden: their weights are 0, so is attention x gradient
        assert not np.triu(result.values, k=1).any()


def test_input_gradient_per_token_is_the_finite_difference_along_that_tokens_embedding(case):
    """Token j's sum_d x_jd df/dx_jd is the derivative of f(x + eps * x_j) (token j's embedding scaled)."""
    model, trace = case
    goal = gradients.objective(model, trace)
    result = gradients.input_gradient(model, trace)
    x = trace.hidden[0].astype(np.float64)
    for j in np.argsort(-np.abs(result.values))[:3]:  # the three largest attributions
        v = np.zeros_like(x)
        v[j] = x[j] / np.linalg.norm(x[j])
        finite = _derivative(lambda h, v=v: _f_along(model, trace, goal, noise=h[:, None, None] * v), INPUT_STEP)
        expected = result.values[j] / np.linalg.norm(x[j])
        assert abs(finite - expected) <= _tolerance(expected, result.value, INPUT_STEP), (j, finite, expected)


def test_the_objective_per_model_kind(minilm, tutorial):
    trace = trace_text(minilm, TEXT)
    goal = gradients.objective(minilm, trace)
    pooled = trace.hidden[-1].astype(np.float64).mean(axis=0)
    assert goal.kind == "projection" and "length" in goal.description
    assert gradients.input_gradient(minilm, trace).value == pytest.approx(np.linalg.norm(pooled), rel=1e-6)
    review = trace_text(tutorial, REVIEW)
    goal = gradients.objective(tutorial, review)
    predicted = int(np.argmax(review.outputs["probabilities"]))
    assert (goal.kind, goal.target, goal.description) == ("probability", predicted,
                                                          f"p({review.labels[predicted]})")
    assert gradients.input_gradient(tutorial, review).value == pytest.approx(
        float(review.outputs["probabilities"][predicted]), abs=1e-6)


def test_integrated_gradients_is_complete_within_1_percent_at_the_default_steps(minilm, tutorial):
    sentences = [example.text for example in read_split("data/test.tsv")][:8]
    for model in (minilm, tutorial):
        for text in [TEXT, REVIEW, *sentences]:
            trace = trace_text(model, text)
            result = gradients.integrated_gradients(model, trace)
            assert result.completeness_error < 0.01, (model.name, text, result.completeness_error)
            change = result.value - result.baseline_value
            assert abs(result.values.sum() - change) <= 0.01 * abs(change)
            if model is minilm:  # GELU is smooth: Gauss-Legendre needs no more than the default points
                assert result.steps == gradients.DEFAULT_STEPS
            fig = build_token_attribution(result, trace.readable_tokens)
            assert f"completeness error {100 * result.completeness_error:.2g}%" in fig.layout.title.text


def test_integrated_gradients_refines_the_path_until_complete(tutorial):
    """The tutorial model's ReLUs put kinks on the path; where f(x) - f(x') is small next to f's swing along it
    (here 4e-4 against 0.03), the stretches with the largest errors are halved until the error is below 1%."""
    text = ("It's neither as romantic nor as thrilling as it should be. But it offers plenty to ponder and chew on "
            "as its unusual relationship slowly unfolds.")
    trace = trace_text(tutorial, text)
    fixed = gradients.integrated_gradients(tutorial, trace, tolerance=None)
    assert fixed.steps == gradients.DEFAULT_STEPS and fixed.completeness_error > 0.01
    refined = gradients.integrated_gradients(tutorial, trace)
    assert refined.steps > gradients.DEFAULT_STEPS and refined.panels > 1 and refined.completeness_error < 0.01
    assert fixed.panels == 1
    assert refined.value == approx_f32(fixed.value, ulps=16)
    assert refined.baseline_value == approx_f32(fixed.baseline_value, ulps=16)


def test_integrated_gradients_from_the_input_itself_is_zero(minilm):
    trace = trace_text(minilm, TEXT)
    result = gradients.integrated_gradients(minilm, trace, baseline=trace.hidden[0], tolerance=None)
    assert not result.values.any()
    assert result.value == approx_f32(result.baseline_value, ulps=16) and np.isnan(result.completeness_error)
    assert "undefined" in build_token_attribution(result, trace.readable_tokens).layout.title.text


def test_the_baseline_pads_every_non_special_token(minilm):
    trace = trace_text(minilm, TEXT)
    ids = gradients.baseline_ids(minilm, trace)
    assert ids[0] == trace.token_ids[0] and ids[-1] == trace.token_ids[-1]  # [CLS], [SEP] kept
    assert (ids[1:-1] == minilm.config.pad_token_id).all()
    padded = trace_text(minilm, TEXT)  # the same shape
    embedded = minilm.encoder.embed(ids[None], padded.segment_ids[None]).numpy()[0]
    assert_close_f32(gradients.baseline_embedding(minilm, trace), embedded, ulps=16)
    assert_close_f32(minilm.encoder.embed(trace.token_ids[None], trace.segment_ids[None]).numpy()[0], trace.hidden[0],
                     ulps=16)


def test_bad_steps_and_baselines_are_refused(minilm):
    trace = trace_text(minilm, TEXT)
    with pytest.raises(AnalysisError, match="steps must be between 1 and"):
        gradients.integrated_gradients(minilm, trace, steps=0)
    with pytest.raises(AnalysisError, match="baseline must have the embedding's shape"):
        gradients.integrated_gradients(minilm, trace, baseline=np.zeros((3, 4)))


def test_similarity_gradients_sum_to_the_change_of_the_cosine(minilm):
    a, b = "A man is playing a guitar.", "Someone plays an instrument."
    split = explain_similarity(minilm, a, b)
    for result, text, other in ((split.gradients_a, a, b), (split.gradients_b, b, a)):
        trace, fixed = trace_text(minilm, text), trace_text(minilm, other).hidden[-1].astype(np.float64).mean(0)
        ids = gradients.baseline_ids(minilm, trace)
        baseline = minilm.encoder.forward(ids[None], trace.segment_ids[None])["hidden"].numpy()[0, -1]
        pooled = baseline.astype(np.float64).mean(axis=0)
        cos_baseline = pooled @ fixed / (np.linalg.norm(pooled) * np.linalg.norm(fixed))
        assert result.value == pytest.approx(split.cosine, abs=1e-6)
        assert result.baseline_value == pytest.approx(cos_baseline, abs=1e-6)
        change = split.cosine - cos_baseline
        assert abs(result.values.sum() - change) <= 0.01 * abs(change)
        assert result.tokens == trace.tokens
    fig = build_similarity_gradients(split)
    assert [bar.name for bar in fig.data] == ["text A", "text B"]
    titles = [a.text for a in fig.layout.annotations]
    assert any(f"completeness error {100 * split.gradients_a.completeness_error:.2g}%" in t for t in titles)


def test_gradient_functions_trace_once_for_every_length(minilm):
    gradients.attention_gradient(minilm, trace_text(minilm, TEXT))
    gradients.integrated_gradients(minilm, trace_text(minilm, TEXT), steps=4, tolerance=None)
    before = minilm.encoder.tracing_count()
    longer = trace_text(minilm, "Attention lets every token look at every other token, and each head learns.")
    gradients.attention_gradient(minilm, longer)
    gradients.integrated_gradients(minilm, longer, steps=7, tolerance=None)
    gradients.input_gradient(minilm, longer)
    assert minilm.encoder.tracing_count() == before


def test_figures_are_diverging_and_centred_on_zero(minilm):
    trace = trace_text(minilm, TEXT)
    result = gradients.attention_gradient(minilm, trace)
    fig = build_attention_gradient_heatmap(result, trace.readable_tokens, 2)
    heat = fig.data[0]
    assert heat.zmin == -heat.zmax and heat.colorscale[0][1] != heat.colorscale[-1][1]
    np.testing.assert_allclose(np.asarray(heat.z), result.values[2].mean(axis=0), rtol=1e-6, atol=1e-9)
    assert fig.layout.title.text.startswith("Attention × gradient of the mean-pooled embedding's length")


@pytest.mark.parametrize("view", ["attention-gradient", "input-gradient", "integrated-gradients"])
def test_the_cli_writes_numbers_and_html(view, minilm, tmp_path, capsys):
    args = ["--text", TEXT, "--view", view, *(["--layer", "2"] if view == "attention-gradient" else []), "-o"]
    for suffix in ("csv", "json", "html"):
        assert main([*args, str(tmp_path / f"{view}.{suffix}")]) == 0, capsys.readouterr().err
    rows = list(csv.DictReader(io.StringIO((tmp_path / f"{view}.csv").read_text(encoding="utf-8"))))
    data = json.loads((tmp_path / f"{view}.json").read_text(encoding="utf-8"))
    page = (tmp_path / f"{view}.html").read_text(encoding="utf-8")
    trace = trace_text(minilm, TEXT)
    if view == "attention-gradient":
        assert len(rows) == 9 * 9 and list(rows[0])[-1] == "attention_gradient"
        expected = gradients.attention_gradient(minilm, trace).head_mean(2)
        np.testing.assert_allclose([float(row["attention_gradient"]) for row in rows], expected.ravel(),
                                   rtol=1e-5, atol=1e-9)
        assert (data["kind"], data["layer"]) == ("attention-gradient", 2)
        assert "in layer 2 (head mean)" in page
        return
    assert list(rows[0]) == ["index", "token", "attribution"] and len(rows) == 9
    assert data["kind"] == "TokenAttribution" and data["method"] == view
    if view == "integrated-gradients":
        assert data["steps"] == gradients.DEFAULT_STEPS and data["completeness_error"] < 0.01
        assert "completeness error" in page
        assert sum(float(row["attribution"]) for row in rows) == pytest.approx(
            data["value"] - data["baseline_value"], rel=0.01)


def test_the_cli_steps_flag(tmp_path, capsys):
    out = tmp_path / "ig.json"
    assert main(["--text", TEXT, "--view", "integrated-gradients", "--steps", "16", "-o", str(out)]) == 0
    assert json.loads(out.read_text(encoding="utf-8"))["steps"] >= 16
    assert main(["--text", TEXT, "--view", "integrated-gradients", "--steps", "0", "-o", str(out)]) == 2
    assert capsys.readouterr().err.endswith("error: --steps must be between 1 and 1600, got 0\n")


def test_registry_entries_need_the_model():
    for name in ("attention-gradient", "input-gradient", "integrated-gradients"):
        assert ANALYSES[name].needs_model
    assert ANALYSES["attention-gradient"].layer == "figure"
