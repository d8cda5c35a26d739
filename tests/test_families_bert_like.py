"""RoBERTa (XLM-RoBERTa, CamemBERT), DistilBERT and ELECTRA: the config mappings (pure functions), their
classifier heads and labels, what a bad ``pad_token_id`` does, and RoBERTa's offset positions in the trace.
The numbers themselves are compared with transformers in tests/test_families.py."""

from __future__ import annotations

import json

import numpy as np
import pytest

from encoder.checkpoints import _canonical_names, convert_config, family_of, read_safetensors
from encoder.errors import CheckpointError
from encoder.families import distilbert, electra, roberta
from encoder.trace import trace_text
from tests.support.families import FAMILIES_DIR, load_family

LONG_TEXT = " ".join(["The cat sat on the mat because it was tired."] * 12)


def hf_config(name: str, **changes) -> dict:
    """The fixture's ``config.json``, with ``changes``."""
    return {**json.loads((FAMILIES_DIR / name / "config.json").read_text()), **changes}


@pytest.mark.parametrize("model_type", ["roberta", "xlm-roberta", "camembert"])
def test_roberta_family_numbers_positions_after_the_padding_id(model_type):
    config = convert_config(hf_config("roberta", model_type=model_type))
    assert family_of({"model_type": model_type}) is roberta
    assert (config.position_offset, config.max_positions, config.table_rows) == (2, 64, 66)
    assert config.type_vocab_size == 1 and config.positional == "learned" and config.num_classes == 0
    base = convert_config(hf_config("roberta", max_position_embeddings=514, pad_token_id=1))  # roberta-base
    assert (base.position_offset, base.max_positions) == (2, 512)


def test_roberta_keeps_one_token_type_whatever_the_config_says():
    assert roberta.convert_config(hf_config("roberta", type_vocab_size=2)).type_vocab_size == 1
    np.testing.assert_array_equal(roberta.first_type(np.arange(6.0).reshape(2, 3)), [[0.0, 1.0, 2.0]])


def test_roberta_needs_a_position_after_the_offset():
    with pytest.raises(CheckpointError, match=r"max_position_embeddings \(2\) leaves no position after the first 2"):
        convert_config(hf_config("roberta", max_position_embeddings=2))


def test_distilbert_config_reads_its_own_names():
    config = convert_config(hf_config("distilbert", activation="relu", layer_norm_eps=1e-5))
    assert (config.num_layers, config.num_heads, config.d_model, config.dff) == (2, 4, 32, 64)
    assert (config.vocab_size, config.max_positions, config.position_offset) == (1500, 64, 0)
    assert config.activation == "relu" and config.type_vocab_size == 0
    assert config.layer_norm_epsilon == 1e-12  # hard-coded in DistilBERT, whatever config.json says
    assert convert_config(hf_config("distilbert", sinusoidal_pos_embds=True)).positional == "learned"  # stored
    with pytest.raises(CheckpointError, match="activation is not an activation"):
        distilbert.convert_config(hf_config("distilbert", activation="swish"))


def test_electra_config_factorises_embeddings_only_when_narrower():
    config = convert_config(hf_config("electra"))
    assert (config.embedding_size, config.embedding_width, config.d_model, config.type_vocab_size) == (16, 16, 32, 2)
    assert electra.convert_config(hf_config("electra", embedding_size=32)).embedding_size == 0
    with pytest.raises(CheckpointError, match="position_embedding_type is not supported"):
        electra.convert_config(hf_config("electra", position_embedding_type="relative_key"))


@pytest.mark.parametrize(
    ("name", "head_activation", "labels"),
    [
        ("roberta-cls", "tanh", ("negative", "positive")),
        ("distilbert-cls", "relu", ("negative", "positive")),
        ("electra-cls", "gelu", ("negative", "neutral", "positive")),
    ],
)
def test_classifiers_read_their_head_and_labels(name, head_activation, labels):
    model = load_family(name)
    assert model.labels == labels
    assert model.config.pooling == "cls" and model.config.classifier_activation == head_activation
    probabilities = trace_text(model, "The cat sat on the mat.").outputs["probabilities"]
    assert probabilities.shape == (len(labels),) and probabilities.sum() == pytest.approx(1.0, abs=1e-6)


@pytest.mark.parametrize("name", ["roberta", "roberta-cls", "xlm-roberta", "distilbert", "distilbert-cls",
                                  "electra", "electra-cls"])
def test_every_stored_tensor_but_the_pooler_is_loaded(name):
    family = family_of(hf_config(name))
    model = load_family(name).model
    stored = set(_canonical_names(read_safetensors(FAMILIES_DIR / name), family.PREFIXES))
    loaded = {port_name for port_name, _, _ in family.weight_ports(model.config, model)}
    assert stored - loaded <= {"pooler.dense.weight", "pooler.dense.bias"}


@pytest.mark.parametrize("name", ["bert-cls", "roberta", "distilbert", "electra"])
def test_a_pad_token_outside_the_vocabulary_is_our_error(name):
    with pytest.raises(CheckpointError, match="pad_token_id 1500 is not a token id: the vocabulary has 1500 tokens"):
        convert_config(hf_config(name, pad_token_id=1500))
    with pytest.raises(CheckpointError, match="pad_token_id -1"):
        convert_config(hf_config(name, pad_token_id=-1))


def test_roberta_trace_shows_the_table_rows_the_model_added():
    model = load_family("roberta")
    trace = trace_text(model, "The cat sat on the mat.")
    t = trace.num_tokens
    table = read_safetensors(FAMILIES_DIR / "roberta")["embeddings.position_embeddings.weight"]  # (66, 32)
    np.testing.assert_array_equal(trace.positional_table, table)
    np.testing.assert_array_equal(trace.positional, table[2:t + 2])


def test_roberta_truncates_at_its_usable_length_and_uses_the_last_row():
    model = load_family("roberta")
    trace = trace_text(model, LONG_TEXT)
    assert trace.truncated and trace.num_tokens == 64 == model.tokenizer.max_length
    np.testing.assert_array_equal(trace.positional[-1], trace.positional_table[-1])


def test_roberta_numbers_positions_over_non_pad_tokens_as_transformers_does():
    """A typed <pad> takes the pad's row and the tokens after it keep counting from where they were (transformers'
    create_position_ids_from_input_ids); checked on the embedding output, in NumPy, against the model's own."""
    from encoder.positional import position_ids

    assert position_ids(np.array([0, 5, 1, 7, 2]), offset=2, pad_token_id=1).tolist() == [2, 3, 1, 4, 5]
    assert position_ids(np.array([[4, 5, 6]]), offset=0, pad_token_id=0).tolist() == [[0, 1, 2]]
    model = load_family("roberta")
    trace = trace_text(model, "The cat <pad> sat.")
    assert "<pad>" in trace.tokens
    rows = position_ids(trace.token_ids, model.config.position_offset, model.config.pad_token_id)
    np.testing.assert_array_equal(trace.positional, trace.positional_table[rows])
    encoder = model.model
    summed = (encoder.token_embedding.embeddings.numpy()[trace.token_ids] + trace.positional
              + encoder.segment_embedding.embeddings.numpy()[0])
    mean, var = summed.mean(-1, keepdims=True), summed.var(-1, keepdims=True)
    normed = (summed - mean) / np.sqrt(var + model.config.layer_norm_epsilon)
    expected = normed * encoder.embedding_norm.gamma.numpy() + encoder.embedding_norm.beta.numpy()
    np.testing.assert_allclose(trace.hidden[0], expected, atol=2e-5)
