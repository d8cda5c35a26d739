"""DeBERTa-v3: its log buckets (against a direct transcription of transformers' formula), its config mapping, the
logit terms (c2c + c2p + p2c, recomputed here in NumPy), content-only attention without the position terms, a text
longer than the bucket range, and padded batches. The fixture's own cases are compared with transformers in
tests/test_families.py."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest
from keras import ops

from encoder.checkpoints import convert_config, family_of
from encoder.config import EncoderConfig
from encoder.errors import CheckpointError
from encoder.families import deberta
from encoder.limits import parameter_count
from encoder.model import TransformerEncoder
from encoder.positional import disentangled_index, log_bucket_position
from encoder.trace import trace_text
from tests.support.families import FAMILIES_DIR, TOLERANCE, check_long_reference, check_padded_batch, load_family

TEXT = "The cat sat on the mat because it was tired, and then it slept until the evening."


def transcribed_bucket(relative: int, buckets: int, max_position: int) -> int:
    """DeBERTa's log bucket of one query - key distance, written out step by step (float32 logarithms)."""
    mid = buckets // 2
    if abs(relative) <= mid:
        return relative
    steps = (np.log(np.float32(abs(relative)) / np.float32(mid)) / np.log(np.float32((max_position - 1) / mid))
             * np.float32(mid - 1))
    return int(np.sign(relative)) * (int(np.ceil(steps)) + mid)


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(-1, keepdims=True))
    return shifted / shifted.sum(-1, keepdims=True)


def fixture_config(**changes) -> dict:
    return {**json.loads((FAMILIES_DIR / "deberta-v3" / "config.json").read_text()), **changes}


@pytest.mark.parametrize(("buckets", "max_position"), [(16, 64), (256, 512), (8, 20), (2, 4), (4, 1000)])
def test_buckets_match_the_transcribed_formula(buckets, max_position):
    relative = np.arange(-3 * max_position, 3 * max_position + 1)
    expected = [transcribed_bucket(int(r), buckets, max_position) for r in relative]
    found = log_bucket_position(relative, buckets, max_position)
    assert found.tolist() == expected
    np.testing.assert_array_equal(found, -found[::-1])  # odd: p2c's row of -(j - i) is c2p's row of i - j
    assert found[relative == max_position - 1] == buckets - 1  # the last bucket inside the table


def test_rows_saturate_at_the_ends_of_the_table():
    rows = disentangled_index(np.arange(-400, 401), 16, 16, 64)  # (query - key) -> row of 32
    by_distance = dict(zip(range(-400, 401), rows.tolist()))
    assert [by_distance[r] for r in range(-3, 4)] == [13, 14, 15, 16, 17, 18, 19]
    assert by_distance[63] == by_distance[400] == 31 and by_distance[-64] == by_distance[-400] == 0
    assert np.all(np.diff(rows) >= 0)
    np.testing.assert_array_equal(disentangled_index(np.arange(-9, 10), 4, 0, 4), np.clip(np.arange(-9, 10) + 4, 0, 7))
    with pytest.raises(ValueError, match="even number"):
        log_bucket_position(np.arange(3), 7, 64)


def test_deberta_config_mapping_and_refusals():
    config = convert_config(fixture_config())
    assert family_of(fixture_config()) is deberta
    assert (config.positional, config.type_vocab_size, config.relative_attention) == ("none", 0, "disentangled")
    assert (config.position_buckets, config.max_relative_positions, config.relative_span) == (16, 64, 16)
    assert (config.pos_att_type, config.share_att_key, config.norm_rel_ebd) == (("p2c", "c2p"), True, True)
    assert EncoderConfig.from_dict(json.loads(config.to_json())) == config
    assert config.to_dict()["positions"] == {"kind": "disentangled", "table": "none", "offset": 0, "buckets": 16,
                                             "max_distance": 64, "terms": ("p2c", "c2p"), "share_key": True,
                                             "normalize": True}
    assert parameter_count(config) == load_family("deberta-v3").model.count_params()
    own = convert_config(fixture_config(share_att_key=False, position_biased_input=True, pos_att_type="c2p|p2c",
                                        position_buckets=-1, max_relative_positions=-1, type_vocab_size=2))
    assert (own.positional, own.pos_att_type, own.relative_span) == ("learned", ("c2p", "p2c"), 64)
    model = TransformerEncoder(own)
    assert parameter_count(own) == model.count_params()
    names = [name for name, _, _ in deberta.weight_ports(own, model)]
    assert {"encoder.layer.1.attention.self.pos_key_proj.bias", "embeddings.position_embeddings.weight",
            "encoder.layer.0.attention.self.pos_query_proj.weight"} <= set(names)
    refused = {"conv_kernel_size": 3, "talking_head": True, "relative_attention": False, "embedding_size": 16,
               "attention_head_size": 4, "pos_att_type": ["p2p"], "model_type": "deberta"}
    for name, value in refused.items():
        with pytest.raises(CheckpointError, match="v1" if name == "model_type" else "."):
            convert_config(fixture_config(**{name: value}))


def test_terms_are_the_disentangled_formula_and_sum_to_the_logits():
    loaded = load_family("deberta-v3")
    trace = trace_text(loaded, TEXT)
    assert set(trace.logit_terms) == {"c2c", "c2p", "p2c"}
    np.testing.assert_allclose(softmax(sum(trace.logit_terms.values())), trace.attention, atol=1e-6, rtol=0)
    t, scale = len(trace.tokens), math.sqrt(loaded.config.head_dim * 3)
    table, index = (ops.convert_to_numpy(part) for part in loaded.model.layer_context(t)[1])
    assert table.shape == (32, 32) and index.shape == (t, t)
    np.testing.assert_array_equal(index, disentangled_index(np.arange(t)[:, None] - np.arange(t), 16, 16, 64))
    for layer_index, layer in enumerate(loaded.model.encoder_layers):
        attention = layer.attention
        x = trace.hidden[layer_index][None]  # (1, T, D)
        q, k = (ops.convert_to_numpy(dense(x))[0] for dense in (attention.query_dense, attention.key_dense))
        pq, pk = (ops.convert_to_numpy(dense(table[None]))[0] for dense in (attention.query_dense,
                                                                            attention.key_dense))  # shared keys
        expected = {"c2c": np.einsum("ihd,jhd->hij", q, k) / scale,
                    "c2p": np.einsum("ihd,ijhd->hij", q, pk[index]) / scale,
                    "p2c": np.einsum("jhd,ijhd->hij", k, pq[index]) / scale}
        for name, term in expected.items():
            np.testing.assert_allclose(trace.logit_terms[name][layer_index], term, atol=TOLERANCE, rtol=0)
    scheme = loaded.position_scheme
    assert set(scheme) == {"distances", "buckets", "bucket_edges", "relative_embeddings"}
    np.testing.assert_array_equal(scheme["buckets"], disentangled_index(-scheme["distances"], 16, 16, 64))
    np.testing.assert_array_equal(scheme["relative_embeddings"], table)
    assert len(scheme["bucket_edges"]) == 31 and 0.5 in scheme["bucket_edges"]  # every row is read


def copy_weights(source: TransformerEncoder, target: TransformerEncoder) -> None:
    values = {variable.path: variable for variable in source.weights}
    for variable in target.weights:
        variable.assign(values[variable.path])


def test_without_position_terms_attention_is_plain_content_attention():
    loaded = load_family("deberta-v3")
    cfg = loaded.config
    content = TransformerEncoder(dataclasses.replace(cfg, pos_att_type=()), name="encoder")
    plain = TransformerEncoder(dataclasses.replace(cfg, relative_attention="", pos_att_type=(), position_buckets=0,
                                                   max_relative_positions=0, share_att_key=False, norm_rel_ebd=False),
                               name="encoder")
    copy_weights(loaded.model, content)
    copy_weights(loaded.model, plain)
    ids = np.array([loaded.tokenizer.encode(TEXT).token_ids], np.int32)
    full, content_out, plain_out = (model(ids) for model in (loaded.model, content, plain))
    assert set(k for k in content_out if k.startswith("terms/")) == {"terms/c2c"}
    # The two scale the logits at different points (the key over sqrt(dh * 1) vs the logits over sqrt(dh)): their
    # float32 roundings differ by a few ulps of the logits: 1.0e-6 of a weight measured on one CPU (oneDNN).
    np.testing.assert_allclose(ops.convert_to_numpy(content_out["attention"]),
                               ops.convert_to_numpy(plain_out["attention"]), atol=4e-6, rtol=0)
    np.testing.assert_allclose(ops.convert_to_numpy(content_out["hidden"]), ops.convert_to_numpy(plain_out["hidden"]),
                               atol=TOLERANCE, rtol=0)
    # The first layer sees the same input: its content term is the content-only logits over sqrt(3).
    np.testing.assert_allclose(ops.convert_to_numpy(full["terms/c2c"])[:, 0] * math.sqrt(3),
                               ops.convert_to_numpy(content_out["terms/c2c"])[:, 0], atol=1e-5, rtol=0)


def test_a_text_longer_than_the_buckets_matches_transformers():
    check_long_reference("deberta-v3", 60)  # distances up to 59: the log buckets, both sides, to the last row


def test_padded_batches_equal_single_traces():
    check_padded_batch("deberta-v3", ["The cat sat.", "Where is the station? The station is two blocks north."])
