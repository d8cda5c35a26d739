"""ALBERT and GPT-2: their config mappings (pure functions), ALBERT's shared layers, GPT-2's causal attention,
truncation and padding, task-model prefixes, and tiny one-layer / one-head folders that load and trace.
The numbers themselves are compared with transformers in tests/test_families.py."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from safetensors.numpy import save_file

from encoder.checkpoints import _canonical_names, convert_config, family_of, read_safetensors
from encoder.errors import CheckpointError
from encoder.families import albert, gpt2
from encoder.sources import load_path
from encoder.trace import trace_batch, trace_text
from tests.support.families import FAMILIES_DIR, load_family
from tests.support.floats import assert_close_f32

TEXT = "The cat sat on the mat because it was tired."


def fixture_config(name: str, **changes) -> dict:
    """The fixture ``name``'s ``config.json`` with ``changes``."""
    return {**json.loads((FAMILIES_DIR / name / "config.json").read_text()), **changes}


def write_random_folder(folder, family: str, seed: int = 0, **changes):
    """A Hugging Face folder shaped like the fixture ``family`` with ``changes`` to its config: random weights of
    the fixture's tensor shapes (blocks past ``n_layer`` dropped), written with ``safetensors.numpy``, and the
    fixture's tokenizer."""
    hf = fixture_config(family, **changes)
    rng = np.random.default_rng(seed)
    layers = hf.get("n_layer", 0)
    weights = {
        name: rng.normal(1.0 if value.ndim == 1 and name.endswith(".weight") else 0.0, 0.3, value.shape)  # norms ~1
        .astype(np.float32)
        for name, value in read_safetensors(FAMILIES_DIR / family).items()
        if not (name.startswith("h.") and int(name.split(".")[1]) >= layers)
    }
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps(hf))
    save_file(weights, str(folder / "model.safetensors"))
    for file in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copyfile(FAMILIES_DIR / family / file, folder / file)
    return folder


def test_albert_config_factorises_embeddings_and_shares_one_layer():
    config = convert_config(fixture_config("albert"))
    assert family_of(fixture_config("albert")) is albert
    assert (config.num_layers, config.num_layer_groups, config.num_heads, config.d_model) == (3, 1, 4, 32)
    assert (config.embedding_size, config.embedding_width, config.type_vocab_size, config.dff) == (16, 16, 2, 64)
    assert config.activation == "gelu_new" and config.embedding_layer_norm and not config.norm_first
    assert config.num_classes == 0 and config.layer_norm_epsilon == 1e-12
    silent = {key: value for key, value in fixture_config("albert").items() if key != "hidden_act"}
    assert convert_config(silent).activation == "gelu_new"  # ALBERT's default, not BERT's
    classifier = convert_config(fixture_config("albert-cls"))
    assert (classifier.num_classes, classifier.pooling, classifier.classifier_activation) == (2, "cls", "tanh")


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"inner_group_num": 2}, "inner_group_num 2 is not supported"),
        ({"num_hidden_groups": 4}, r"num_hidden_groups \(4\) must be between 1 and num_hidden_layers \(3\)"),
        ({"embedding_size": 32}, r"embedding_size equals hidden_size \(32\)"),
        ({"num_hidden_layers": 18, "num_hidden_groups": 14}, "transformers runs group 6 at layer 9"),
        ({"position_embedding_type": "relative_key"}, "position_embedding_type is not supported"),
        ({"hidden_act": "swish"}, "hidden_act is not an activation"),
    ],
)
def test_albert_refuses_what_it_does_not_run(changes, message):
    with pytest.raises(CheckpointError, match=message):
        albert.convert_config(fixture_config("albert", **changes))


def test_albert_group_order_matches_transformers_where_accepted():
    albert.check_group_order(12, 1)
    albert.check_group_order(12, 4)
    with pytest.raises(CheckpointError):
        albert.check_group_order(27, 21)


def test_albert_holds_its_shared_layer_once():
    loaded = load_family("albert")
    model = loaded.model
    assert len(model.layer_groups) == 1 and all(layer is model.layer_groups[0] for layer in model.encoder_layers)
    paths = [variable.path for variable in model.weights]
    assert len(paths) == len(set(paths))
    assert len(model.weights) == 3 + 2 + 2 + len(model.layer_groups[0].weights)  # tables, norm, projection, layer
    stored = read_safetensors(FAMILIES_DIR / "albert")
    stored_size = sum(value.size for name, value in stored.items() if not name.startswith("pooler."))
    assert loaded.num_parameters() == stored_size  # one layer's weights, not three


@pytest.mark.parametrize("name", ["albert", "albert-cls", "gpt2"])
def test_every_stored_tensor_but_the_pooler_is_loaded(name):
    family = family_of(fixture_config(name))
    model = load_family(name).model
    stored = set(_canonical_names(read_safetensors(FAMILIES_DIR / name), family.PREFIXES))
    loaded = {port_name for port_name, _, _ in family.weight_ports(model.config, model)}
    assert stored - loaded <= ({"pooler.weight", "pooler.bias"} if name == "albert" else set())


def test_albert_classifier_reads_its_labels_and_predicts():
    model = load_family("albert-cls")
    assert model.labels == ("negative", "positive")
    probabilities = trace_text(model, TEXT).outputs["probabilities"]
    assert probabilities.shape == (2,) and probabilities.sum() == pytest.approx(1.0, abs=1e-6)


def test_gpt2_config_is_causal_pre_norm_with_a_final_norm():
    config = convert_config(fixture_config("gpt2"))
    assert family_of(fixture_config("gpt2")) is gpt2
    assert (config.num_layers, config.num_heads, config.d_model, config.dff) == (2, 4, 32, 128)
    assert config.max_positions == config.table_rows == 64
    assert config.causal and config.norm_first and config.final_norm and config.activation == "gelu_new"
    assert config.type_vocab_size == 0 and not config.embedding_layer_norm and not config.scale_embeddings
    assert config.embedding_size == 0 and config.position_offset == 0 and config.layer_norm_epsilon == 1e-5
    assert config.pad_token_id == 1499  # pad_token_id is null: the end-of-text token pads
    assert convert_config(fixture_config("gpt2", n_inner=None)).dff == 4 * 32
    assert convert_config(fixture_config("gpt2", pad_token_id=7)).pad_token_id == 7
    assert convert_config(fixture_config("gpt2", eos_token_id=None)).pad_token_id == 0
    assert convert_config(fixture_config("gpt2", reorder_and_upcast_attn=True)) == config  # same float32 logits
    classifier = fixture_config("gpt2", architectures=["GPT2ForSequenceClassification"], num_labels=2)
    assert convert_config(classifier).num_classes == 0  # its head reads the last token: not run


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"scale_attn_by_inverse_layer_idx": True}, "scale_attn_by_inverse_layer_idx true"),
        ({"scale_attn_weights": False}, "scale_attn_weights false"),
        ({"activation_function": "swish"}, "activation_function is not an activation"),
        ({"eos_token_id": 1500}, "pad_token_id 1500 is not a token id"),
        ({"n_head": 5}, "impossible model"),
    ],
)
def test_gpt2_refuses_what_it_does_not_run(changes, message):
    with pytest.raises(CheckpointError, match=message):
        gpt2.convert_config(fixture_config("gpt2", **changes))


def test_gpt2_attention_is_zero_above_the_diagonal_and_rows_sum_to_one():
    trace = trace_text(load_family("gpt2"), TEXT)
    t = trace.num_tokens
    above = ~np.tri(t, dtype=bool)
    assert (trace.attention[:, :, above] == 0.0).all()
    np.testing.assert_allclose(trace.attention.sum(-1), 1.0, atol=1e-6)
    assert not trace.special.any()  # no special tokens added: the first token is a word, which sees only itself
    assert_close_f32(trace.attention[:, :, 0, 0], 1.0)  # a softmax of one logit, exp(0) / exp(0), rounds on some CPUs


def test_gpt2_truncates_a_text_longer_than_its_positions():
    model = load_family("gpt2")
    trace = trace_text(model, " ".join([TEXT] * 12))
    assert trace.truncated and trace.num_tokens == 64 == model.config.max_positions
    assert trace.untruncated_length > 64
    assert trace.hidden.shape == (3, 64, 32) and trace.attention.shape == (2, 4, 64, 64)
    short = trace_text(model, TEXT)  # the long text's first tokens: a causal model reads them the same way
    assert trace.tokens[:short.num_tokens] == short.tokens
    np.testing.assert_allclose(trace.attention[:, :, :short.num_tokens, :short.num_tokens], short.attention, atol=1e-6)


def test_gpt2_padded_batches_equal_single_traces():
    model = load_family("gpt2")
    texts = [TEXT, "Hi.", "Café naïve résumé, with a few more words."]
    for alone, batched in zip([trace_text(model, t) for t in texts], trace_batch(model, texts)):
        assert alone.tokens == batched.tokens
        np.testing.assert_allclose(batched.attention, alone.attention, atol=2e-6)
        np.testing.assert_allclose(batched.hidden, alone.hidden, atol=1e-5)


def test_gpt2_lm_head_folders_load_through_the_transformer_prefix(tmp_path):
    folder = tmp_path / "lm"
    shutil.copytree(FAMILIES_DIR / "gpt2", folder)
    weights = {f"transformer.{name}": value for name, value in read_safetensors(folder).items()}
    weights["lm_head.weight"] = weights["transformer.wte.weight"]
    save_file(weights, str(folder / "model.safetensors"))
    lm, base = trace_text(load_path(folder), TEXT), trace_text(load_family("gpt2"), TEXT)
    assert_close_f32(lm.attention, base.attention, ulps=16)
    assert_close_f32(lm.hidden, base.hidden, ulps=16)


@pytest.mark.parametrize(
    ("family", "changes", "layers", "heads"),
    [
        ("albert", {"num_hidden_layers": 1}, 1, 4),
        ("albert", {"num_attention_heads": 1}, 3, 1),
        ("gpt2", {"n_layer": 1}, 1, 4),
        ("gpt2", {"n_head": 1}, 2, 1),
    ],
)
def test_one_layer_and_one_head_folders_load_and_trace(tmp_path, family, changes, layers, heads):
    model = load_path(write_random_folder(tmp_path / family, family, **changes))
    trace = trace_text(model, TEXT)
    t = trace.num_tokens
    assert trace.attention.shape == (layers, heads, t, t) and trace.hidden.shape == (layers + 1, t, 32)
    np.testing.assert_allclose(trace.attention.sum(-1), 1.0, atol=1e-5)
    assert np.isfinite(trace.hidden).all()
    if family == "gpt2":
        assert (trace.attention[:, :, ~np.tri(t, dtype=bool)] == 0.0).all()


@pytest.mark.parametrize(
    ("family", "tensor", "message"),
    [
        ("gpt2", "h.1.attn.c_attn.weight", r"h.1.attn.c_attn.weight has shape \(32, 64\), which gives \(32, 0\)"),
        ("albert", "encoder.albert_layer_groups.0.albert_layers.0.attention.query.weight",
         r"attention.query.weight has shape \(32, 16\), which gives \(16, 32\) but the model expects \(32, 4, 8\)"),
    ],
)
def test_an_attention_tensor_of_the_wrong_size_is_our_error(tmp_path, family, tensor, message):
    folder = tmp_path / family
    shutil.copytree(FAMILIES_DIR / family, folder)
    weights = read_safetensors(folder)
    weights[tensor] = weights[tensor][..., :-32] if family == "gpt2" else weights[tensor][:, :16]
    save_file(weights, str(folder / "model.safetensors"))
    with pytest.raises(CheckpointError, match=message):
        load_path(folder)
