"""Noise stability and head ablation through forward_perturbed: exact clean runs, masks equal hand-zeroed heads."""

import json
import math

import numpy as np
import pytest

from analysis import rows_to_csv, to_json
from analysis.perturb import (
    ablate_heads,
    embedding_noise,
    embedding_rms,
    head_importance,
    head_mask,
    noise_stability,
    run_perturbed,
)
from encoder.saving import initial_model, save_folder
from encoder.sources import load_path
from encoder.trace import trace_text
from tests.support.floats import F32_EPS, approx_f32, assert_close_f32
from tests.support.models import tiny_config, write_tiny_bert_folder

SENTENCE = "The quick brown fox jumps over the lazy dog."
TINY_TEXT = "the cat sat on the mat ."
# 1 - cos of two vectors whose entries differ by a few float32 rounding units is of the order of their square
SAME_COSINE = (16 * F32_EPS) ** 2


@pytest.fixture(scope="module")
def bert_folder(tmp_path_factory):
    return write_tiny_bert_folder(tmp_path_factory.mktemp("tiny") / "bert")


@pytest.fixture(scope="module")
def classifier_folder(tmp_path_factory, bert_folder):
    """One of our folders: a tiny classic encoder (sinusoidal positions, ReLU) with a 3-class head."""
    tokenizer_json = load_path(bert_folder).tokenizer.to_str()
    model = initial_model(tiny_config(num_classes=3, num_layers=3), seed=3)
    return save_folder(tmp_path_factory.mktemp("tiny") / "classifier", model, tokenizer_json,
                       labels=("negative", "neutral", "positive"))


def silence_by_weights(model, layer: int, head: int) -> None:
    """Zero the value projection (kernel and bias) of one head: its values, hence its context vectors, are 0."""
    dense = model.model.encoder_layers[layer].attention.value_dense
    kernel, bias = dense.kernel.numpy(), dense.bias.numpy()  # (D, H, dh), (H, dh)
    kernel[:, head, :] = 0.0
    bias[head, :] = 0.0
    dense.kernel.assign(kernel)
    dense.bias.assign(bias)


# ---------------------------------------------------------------------------------------------------------------
# The clean run is the trace (to float32 rounding)


def test_zero_noise_and_full_mask_reproduce_the_trace(minilm):
    trace = trace_text(minilm, SENTENCE)
    d = trace.hidden.shape[-1]
    outputs = run_perturbed(minilm, trace, np.ones((1, 6, 12)), np.zeros((1, trace.num_tokens, d)))
    assert_close_f32(outputs["attention"][0], trace.attention, ulps=16)
    assert_close_f32(outputs["hidden"][0], trace.hidden, ulps=16)
    assert_close_f32(outputs["embedding"][0], trace.outputs["embedding"], ulps=16)


def test_masking_no_head_equals_the_plain_trace(minilm):
    trace = trace_text(minilm, SENTENCE)
    effect = ablate_heads(minilm, trace, [], keep_attention=True)
    assert_close_f32(effect.attention, trace.attention, ulps=16)
    assert_close_f32(effect.embedding, trace.outputs["embedding"], ulps=16)
    assert effect.cosine == pytest.approx(1.0, abs=SAME_COSINE)
    assert effect.probabilities is None and effect.probability_change is None
    assert effect.rows() == [{"heads": "none", "embedding_cosine": effect.cosine}]


def test_sigma_zero_gives_the_clean_trace(minilm):
    trace = trace_text(minilm, SENTENCE)
    noise = embedding_noise(trace, 0.0, 3)
    assert noise.shape == (3, trace.num_tokens, 384) and not noise.any()
    outputs = run_perturbed(minilm, trace, noise=noise[:1])
    assert_close_f32(outputs["attention"][0], trace_text(minilm, SENTENCE).attention, ulps=16)
    result = noise_stability(minilm, trace, sigmas=(0.0, 0.1), samples=3)
    assert_close_f32(result.divergence[0], 0.0, ulps=16, scale=math.log(trace.num_tokens))  # JS from float32 logs
    assert (result.spread[0] == 0.0).all()  # sigma 0 runs once: the spread of one value is exactly 0
    assert (result.divergence[1] > 0).all()


# ---------------------------------------------------------------------------------------------------------------
# Noise


def test_noise_is_added_to_the_input_embeddings_at_the_given_scale(minilm):
    trace = trace_text(minilm, SENTENCE)
    noise = embedding_noise(trace, 0.5, 2, seed=1)
    outputs = run_perturbed(minilm, trace, noise=noise)
    np.testing.assert_allclose(outputs["hidden"][:, 0] - trace.hidden[0], noise, atol=1e-5)
    measured = np.sqrt(np.mean(noise.astype(np.float64) ** 2)) / embedding_rms(trace)
    assert measured == pytest.approx(0.5, rel=0.05)  # 2 x T x 384 standard normal draws
    np.testing.assert_array_equal(embedding_noise(trace, 0.5, 2, seed=1), noise)
    assert not np.array_equal(embedding_noise(trace, 0.5, 2, seed=2), noise)
    np.testing.assert_array_equal(embedding_noise(trace, 0.25, 2, seed=1) * 2, noise)  # one direction per sample


def test_noise_stability_grows_with_sigma_and_is_reproducible(minilm):
    trace = trace_text(minilm, SENTENCE)
    calls = []
    result = noise_stability(minilm, trace, sigmas=(0.0, 0.05, 0.5), samples=4, seed=0,
                             progress=lambda done, total: calls.append((done, total)))
    assert result.divergence.shape == result.spread.shape == (3, 6, 12)
    assert calls[0] == (1, 9) and calls[-1] == (9, 9)  # 1 clean run + 2 sigmas x 4 samples
    curve = result.curve()
    assert curve[0] == approx_f32(0.0, ulps=16, scale=math.log(trace.num_tokens)) and 0.0 < curve[1] < curve[2]
    assert result.cosine[0] == pytest.approx(1.0, abs=SAME_COSINE) and result.cosine[2] < result.cosine[1] < 1.0
    again = noise_stability(minilm, trace, sigmas=(0.0, 0.05, 0.5), samples=4, seed=0)
    assert_close_f32(again.divergence, result.divergence, ulps=16, scale=math.log(trace.num_tokens))
    other = noise_stability(minilm, trace, sigmas=(0.05,), samples=4, seed=1)
    assert not np.array_equal(other.divergence[0], result.divergence[1])
    rows = result.rows()
    assert len(rows) == 3 * 72 and rows[-1]["sigma"] == 0.5 and set(rows[0]) == {
        "sigma", "layer", "head", "js_divergence", "js_std"}
    assert json.loads(to_json(result))["kind"] == "NoiseStability"


def test_noise_arguments_are_checked(minilm):
    trace = trace_text(minilm, SENTENCE)
    with pytest.raises(ValueError, match=">= 0"):
        noise_stability(minilm, trace, sigmas=(0.1, -0.2))
    with pytest.raises(ValueError, match="at least 1"):
        noise_stability(minilm, trace, samples=0)
    with pytest.raises(ValueError, match="non-empty"):
        noise_stability(minilm, trace, sigmas=())


# ---------------------------------------------------------------------------------------------------------------
# Ablation


def test_masking_a_head_equals_zeroing_its_value_projection(bert_folder):
    model, by_hand = load_path(bert_folder), load_path(bert_folder)
    silence_by_weights(by_hand, layer=0, head=1)
    trace = trace_text(model, TINY_TEXT)
    expected = trace_text(by_hand, TINY_TEXT)
    effect = ablate_heads(model, trace, [(0, 1)], keep_attention=True)
    # The same numbers: both are batch-of-one runs, and x * 0 and x @ 0 + 0 are both exactly zero context.
    assert_close_f32(effect.attention, expected.attention, ulps=16)
    assert_close_f32(effect.embedding, expected.outputs["embedding"], ulps=16)
    assert_close_f32(effect.attention[0], trace.attention[0], ulps=16)  # a mask changes outputs, not patterns
    assert np.abs(effect.attention[1] - trace.attention[1]).max() > 1e-3  # ... which the next layer sees
    assert effect.cosine < 1.0


def test_masking_a_set_of_heads_in_a_classifier(classifier_folder):
    model, by_hand = load_path(classifier_folder), load_path(classifier_folder)
    silence_by_weights(by_hand, layer=0, head=0)
    silence_by_weights(by_hand, layer=2, head=1)
    trace = trace_text(model, TINY_TEXT)
    expected = trace_text(by_hand, TINY_TEXT)
    effect = ablate_heads(model, trace, [(2, 1), (0, 0), (0, 0)])
    assert effect.heads == ((0, 0), (2, 1))
    assert effect.attention is None  # kept only when asked for (72 MB at 512 tokens; no figure needs it)
    assert_close_f32(effect.probabilities, expected.outputs["probabilities"], ulps=16)
    np.testing.assert_allclose(effect.probability_change, expected.outputs["probabilities"]
                               - trace.outputs["probabilities"], atol=1e-6)
    rows = effect.rows()
    assert [row["label"] for row in rows] == ["negative", "neutral", "positive"]
    assert rows[0]["heads"] == "L0H0 L2H1"


def test_importance_map_equals_each_head_silenced_alone(classifier_folder):
    model = load_path(classifier_folder)
    trace = trace_text(model, TINY_TEXT)
    result = head_importance(model, trace)
    predicted = int(np.argmax(trace.outputs["probabilities"]))
    assert result.predicted == predicted and result.probabilities.shape == (3, 2, 3)
    assert result.metric == f"drop in P({trace.labels[predicted]}) with the head silenced"
    for layer in range(3):
        for head in range(2):
            alone = ablate_heads(model, trace, [(layer, head)])
            drop = trace.outputs["probabilities"][predicted] - alone.probabilities[predicted]
            assert result.importance[layer, head] == pytest.approx(drop, abs=1e-6)
            assert result.cosine[layer, head] == pytest.approx(alone.cosine, abs=1e-6)


def test_importance_map_of_minilm(minilm):
    trace = trace_text(minilm, SENTENCE)
    calls = []
    result = head_importance(minilm, trace, progress=lambda done, total: calls.append((done, total)))
    assert result.importance.shape == (6, 12) and result.probabilities is None
    assert calls[-1] == (72, 72)
    np.testing.assert_allclose(result.importance, 1.0 - result.cosine)
    assert (result.importance > 0).all() and (result.importance < 1).all()
    for layer, head in [(0, 0), (3, 7), (5, 11)]:
        alone = ablate_heads(minilm, trace, [(layer, head)])
        assert result.cosine[layer, head] == pytest.approx(alone.cosine, abs=1e-6)
    rows = result.rows()
    assert len(rows) == 72 and rows_to_csv(rows).splitlines()[0] == "layer,head,importance,embedding_cosine"


def test_bad_heads_and_foreign_traces_are_clear_errors(minilm, bert_folder):
    trace = trace_text(minilm, SENTENCE)
    with pytest.raises(ValueError, match=r"layer 6 is out of range: the model has 6 layers \(0-5\)"):
        ablate_heads(minilm, trace, [(6, 0)])
    with pytest.raises(ValueError, match=r"head 12 is out of range"):
        head_mask(6, 12, [(0, 12)])
    tiny = load_path(bert_folder)
    with pytest.raises(ValueError, match="comes from model 'minilm'"):
        ablate_heads(tiny, trace, [])
    with pytest.raises(ValueError, match="2x2 heads of width 8; the model 6x12 of width 384"):
        noise_stability(minilm, trace_text(tiny, TINY_TEXT).replace(model="minilm"))
