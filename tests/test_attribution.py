"""Norm-based attribution, GlobEnc and ALTI (``analysis.attribution``) with the real MiniLM: the norm-based
vectors sum to the model's own attention output, GlobEnc and ALTI rows sum to 1, and the CLI writes each."""

import csv
import dataclasses
import io
import json

import numpy as np
import pytest

from analysis import attribution
from cli import main
from encoder.errors import AnalysisError
from tests.support.floats import assert_close_f32

TEXT = "The cat sat on the mat."  # 9 tokens with [CLS] and [SEP]


@pytest.fixture(scope="module")
def weights(minilm, trace):
    return [attribution.layer_weights(minilm, layer) for layer in range(trace.num_layers)]


def test_norm_based_vectors_sum_to_the_models_attention_output(minilm, trace, weights):
    """sum_h sum_j alpha_hij f_h(x_j) + b_O is the attention block's output (before the residual), every layer."""
    for layer, w in enumerate(weights):
        block = minilm.model.encoder_layers[layer]
        x = trace.hidden[layer][None]  # (1, T, D)
        output, pattern, _ = block.attention(x, x)
        assert_close_f32(pattern.numpy()[0], trace.attention[layer], ulps=16)  # the layer alone, as in the model
        vectors = attribution.weighted_vectors(trace.hidden[layer], trace.attention[layer], w)  # (H, T, T, D)
        np.testing.assert_allclose(vectors.sum(axis=(0, 2)) + w.output_bias, output.numpy()[0], atol=1e-5)
        _, normed = attribution.layer_contributions(trace.hidden[layer], trace.attention[layer], w)
        np.testing.assert_allclose(normed, block.attention_norm(x + output).numpy()[0], atol=1e-5)
    norms = attribution.norm_based(trace.hidden, trace.attention, weights)
    assert norms.shape == (trace.num_layers, trace.num_heads, trace.num_tokens, trace.num_tokens)
    assert (norms >= 0).all()


def test_each_heads_norm_based_vectors_sum_to_that_heads_attention_output(minilm, trace, weights):
    """With only head h kept (head_mask), the attention block's output is sum_j alpha_hij f_h(x_j) + b_O."""
    for layer, w in enumerate(weights):
        x = trace.hidden[layer][None]  # (1, T, D)
        vectors = attribution.weighted_vectors(trace.hidden[layer], trace.attention[layer], w)  # (H, T, T, D)
        for head in range(trace.num_heads):
            keep = np.eye(trace.num_heads, dtype=np.float32)[head][None]  # (1, H)
            output, _, _ = minilm.model.encoder_layers[layer].attention(x, x, head_mask=keep)
            np.testing.assert_allclose(vectors[head].sum(axis=1) + w.output_bias, output.numpy()[0], atol=1e-5,
                                       rtol=0, err_msg=f"layer {layer} head {head}")


@pytest.mark.parametrize("method", [attribution.globenc_layers, attribution.alti_layers])
def test_globenc_and_alti_rows_sum_to_1_and_roll_out(trace, weights, method):
    layers = method(trace.hidden, trace.attention, weights)
    assert layers.shape == (trace.num_layers, trace.num_tokens, trace.num_tokens) and (layers >= 0).all()
    np.testing.assert_allclose(layers.sum(axis=-1), 1.0, atol=1e-12)
    rolled = attribution.rollout(layers)
    np.testing.assert_allclose(rolled.sum(axis=-1), 1.0, atol=1e-12)
    np.testing.assert_allclose(rolled[1], layers[1] @ layers[0], atol=1e-15)


def test_a_pre_norm_model_with_rmsnorm_is_refused_with_a_clear_message(minilm):
    class PreNorm:
        name = "llama-like"
        config = dataclasses.replace(minilm.config, block=dataclasses.replace(minilm.config.block, placement="pre",
                                                                             norm="rmsnorm"))

    with pytest.raises(AnalysisError, match=r"post-layer-norm BERT block .* llama-like is pre-layer-norm with RMSNorm"):
        attribution.layer_weights(PreNorm(), 0)


@pytest.mark.parametrize("view", ["norm", "globenc", "alti"])
def test_the_cli_writes_each(view, image_browser, tmp_path, capsys):
    args = ["--text", TEXT, "--view", view, "--layer", "2", "-o"]
    for suffix in ("csv", "json", "html", "png"):
        assert main([*args, str(tmp_path / f"{view}.{suffix}")]) == 0, capsys.readouterr().err
    rows = list(csv.DictReader(io.StringIO((tmp_path / f"{view}.csv").read_text(encoding="utf-8"))))
    assert len(rows) == 9 * 9 and list(rows[0]) == ["query_index", "query_token", "key_index", "key_token", view]
    if view != "norm":
        assert sum(float(row[view]) for row in rows[:9]) == pytest.approx(1.0, abs=1e-9)
    data = json.loads((tmp_path / f"{view}.json").read_text(encoding="utf-8"))
    assert (data["kind"], data["layer"], data["text"]) == (view, 2, TEXT)
    assert "layer 2" in (tmp_path / f"{view}.html").read_text(encoding="utf-8")
    assert (tmp_path / f"{view}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
