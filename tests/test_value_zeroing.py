"""Value zeroing (``analysis.value_zeroing``) with the real MiniLM (post-LN BERT) and the GPT-2 (pre-LN, causal,
final norm), DeBERTa-v3 (disentangled positions) and ModernBERT (rotary, local windows, final norm) fixtures: with
no token zeroed each layer gives the trace's next hidden state, rows sum to 1, tokens a query cannot see get 0,
one row re-computed by hand, one compiled graph per layer, the size limit and the CLI export."""

import csv
import io
import json

import numpy as np
import pytest

from analysis import attribution
from analysis.value_zeroing import (
    cosine_distance,
    layer_distances,
    max_tokens,
    probe,
    size_limit,
    value_zeroing,
)
from cli import main
from encoder.errors import AnalysisError
from encoder.trace import trace_text
from tests.support.families import load_family
from tests.support.floats import assert_close_f32
from tests.support.traces import synthetic_trace
from viz.registry import ANALYSES

TEXT = "The cat sat on the mat."  # 9 tokens in MiniLM with [CLS] and [SEP]
FAMILIES = ["minilm", "gpt2", "deberta-v3", "modernbert"]
ZERO = 1e-12  # float32 rounding of an unchanged output, seen through a cosine (largest measured: 1.4e-13)


@pytest.fixture(scope="module")
def cases(minilm):
    """name -> (model, trace, ValueZeroing) of ``TEXT``."""
    found = {}
    for name in FAMILIES:
        model = minilm if name == "minilm" else load_family(name)
        clean = trace_text(model, TEXT)
        found[name] = (model, clean, value_zeroing(model, clean))
    return found


@pytest.mark.parametrize("name", FAMILIES)
def test_with_no_token_zeroed_each_layer_gives_the_traces_next_hidden_state(cases, name):
    model, clean, _ = cases[name]
    runs = probe(model)
    for layer in range(clean.num_layers):
        output = runs.run(layer, clean.hidden[layer][None], np.ones((1, clean.num_tokens)))  # (1, T, D)
        if layer == clean.num_layers - 1 and model.model.final_norm is not None:  # the trace reports it normed
            output = model.model.final_norm(output).numpy()
        np.testing.assert_allclose(output[0], clean.hidden[layer + 1], atol=1e-5, rtol=0, err_msg=f"layer {layer}")


@pytest.mark.parametrize("name", ["tutorial", "roberta", "distilbert", "electra", "albert", "mpnet"])
def test_every_other_family_runs_its_layers_as_the_model_does(name):
    """The classic tutorial encoder and the remaining families: no token zeroed gives the trace's next hidden state,
    and every row of value zeroing sums to 1."""
    from encoder.sources import load_source

    model = load_source("tutorial") if name == "tutorial" else load_family(name)
    clean = trace_text(model, TEXT)
    for layer in range(clean.num_layers):
        output = probe(model).run(layer, clean.hidden[layer][None], np.ones((1, clean.num_tokens)))
        np.testing.assert_allclose(output[0], clean.hidden[layer + 1], atol=1e-5, rtol=0, err_msg=f"layer {layer}")
    np.testing.assert_allclose(value_zeroing(model, clean).rollout.sum(axis=-1), 1.0, atol=1e-12)


@pytest.mark.parametrize("name", FAMILIES)
def test_rows_sum_to_1_and_roll_out(cases, name):
    _, clean, result = cases[name]
    shape = (clean.num_layers, clean.num_tokens, clean.num_tokens)
    assert result.layers.shape == result.rollout.shape == shape
    assert (result.layers >= 0).all()
    np.testing.assert_allclose(result.layers.sum(axis=-1), 1.0, atol=1e-12)
    np.testing.assert_allclose(result.rollout.sum(axis=-1), 1.0, atol=1e-12)
    np.testing.assert_array_equal(result.rollout, attribution.rollout(result.layers))


def test_a_causal_model_gives_later_tokens_nothing(cases):
    _, clean, result = cases["gpt2"]
    later = np.triu(np.ones((clean.num_tokens, clean.num_tokens), bool), 1)  # key j > query i
    assert result.layers[:, later].max() <= ZERO
    assert result.rollout[:, later].max() <= ZERO
    assert (result.layers[:, ~later] > 0).mean() > 0.9  # what a query sees does move it


def test_a_local_layer_gives_tokens_outside_its_window_nothing(cases):
    model, clean, result = cases["modernbert"]
    reach = model.config.local_attention // 2
    positions = np.arange(clean.num_tokens)
    outside = np.abs(positions[:, None] - positions[None, :]) > reach
    assert outside.any()
    for layer in range(clean.num_layers):
        if model.config.is_local(layer):
            assert result.layers[layer][outside].max() <= ZERO
        else:
            assert result.layers[layer][outside].min() > 1e3 * ZERO  # a global layer: every token counts


@pytest.mark.parametrize("name", FAMILIES)
def test_one_row_by_hand(cases, name):
    """Layer 1, query 3: the layer run eagerly, one input per zeroed token; cosine distances, normalised."""
    model, clean, result = cases[name]
    layer, query, tokens = 1, 3, clean.num_tokens
    block = model.model.encoder_layers[layer]
    attention_mask, position_bias = model.model.layer_context(tokens)

    def output(value_mask: np.ndarray) -> np.ndarray:
        out, _, _ = block(clean.hidden[layer][None], attention_mask=attention_mask, position_bias=position_bias,
                          value_mask=value_mask[None].astype(np.float32), training=False)
        return np.asarray(out[0, query], np.float64)  # (D,)

    reference = output(np.ones(tokens))
    distances = []
    for j in range(tokens):
        mask = np.ones(tokens)
        mask[j] = 0.0
        zeroed = output(mask)
        distances.append(1.0 - zeroed @ reference / (np.linalg.norm(zeroed) * np.linalg.norm(reference)))
    distances = np.array(distances)
    assert_close_f32(layer_distances(model, layer, clean.hidden[layer])[query], distances, ulps=8)  # batched vs alone
    np.testing.assert_allclose(result.layers[layer, query], distances / distances.sum(), atol=1e-6, rtol=0)


def test_cosine_distance_is_exactly_0_for_equal_vectors():
    a = np.array([[0.1, 0.7, -0.3]], np.float32)
    assert cosine_distance(a, a.copy())[0] == 0.0
    assert cosine_distance(a, -a)[0] == pytest.approx(2.0)


def test_each_layer_is_compiled_once_for_every_length(minilm, cases):
    runs = probe(minilm)
    layer_distances(minilm, 0, trace_text(minilm, "A much longer sentence than the first one, with commas.").hidden[0])
    assert runs.tracing_count() == minilm.config.num_layers
    with pytest.raises(ValueError, match=r"value_mask must be \(B, T\) = \(1, 9\)"):
        runs.run(0, cases["minilm"][1].hidden[0][None], np.ones((1, 4)))


def test_the_size_limit(minilm):
    assert max_tokens(6, 384) == 512 and size_limit(6, 384, 512) is None
    assert max_tokens(12, 768) < 512
    message = size_limit(12, 768, 300)
    assert message == ("Value zeroing runs every layer once per token, so on a model of this size (12 layers of "
                       f"width 768) it is limited to {max_tokens(12, 768)} tokens; this input has 300. Shorten the "
                       f"text (or set Max tokens to {max_tokens(12, 768)}).")
    too_long = synthetic_trace(["w"] * 300, layers=12, heads=1, table=np.zeros((300, 768), np.float32))
    assert ANALYSES["value-zeroing"].limit(too_long) == message
    with pytest.raises(AnalysisError, match="limited to"):
        value_zeroing(minilm, too_long.replace(model=minilm.name))


def test_a_trace_of_another_model_is_refused(cases):
    with pytest.raises(AnalysisError, match="trace the text again"):
        value_zeroing(cases["gpt2"][0], cases["minilm"][1])


def test_the_cli_writes_csv_json_and_png(cases, image_browser, tmp_path, capsys):
    _, clean, result = cases["minilm"]
    args = ["--text", TEXT, "--view", "value-zeroing", "--layer", "2", "-o"]
    for suffix in ("csv", "json", "png"):
        assert main([*args, str(tmp_path / f"vz.{suffix}")]) == 0, capsys.readouterr().err
    reader = csv.DictReader(io.StringIO((tmp_path / "vz.csv").read_text(encoding="utf-8")))
    assert reader.fieldnames == ["query_index", "query_token", "key_index", "key_token", "value-zeroing",
                                 "layer_share"]
    rows = list(reader)
    np.testing.assert_allclose([float(r["value-zeroing"]) for r in rows], result.rollout[2].ravel(), atol=1e-9)
    np.testing.assert_allclose([float(r["layer_share"]) for r in rows], result.layers[2].ravel(), atol=1e-9)
    data = json.loads((tmp_path / "vz.json").read_text(encoding="utf-8"))
    assert (data["kind"], data["layer"], data["tokens"]) == ("value-zeroing", 2, list(clean.tokens))
    assert (tmp_path / "vz.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    figures = ANALYSES["value-zeroing"].figures(result, clean, {"layer": 2})
    assert [name for name, _ in figures] == ["value-zeroing", "value-zeroing-layer"]
    assert figures[1][1].layout.title.text == "Value zeroing in layer 2"
    np.testing.assert_allclose(figures[1][1].data[0].z, result.layers[2].astype(np.float32))
