"""MPNet: its relative-position buckets (against a direct transcription of T5's formula), its config mapping, one
bias shared by every layer, a text longer than its 32 buckets, and padded batches. The fixture's own cases are
compared with transformers in tests/test_families.py."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from keras import ops

from encoder.checkpoints import convert_config, family_of
from encoder.config import EncoderConfig
from encoder.errors import CheckpointError
from encoder.families import mpnet
from encoder.limits import parameter_count
from encoder.model import TransformerEncoder
from encoder.positional import relative_position_buckets
from encoder.trace import trace_text
from tests.support.families import FAMILIES_DIR, TOLERANCE, check_long_reference, check_padded_batch, load_family


def transcribed_bucket(relative: int, num_buckets: int, max_distance: int) -> int:
    """T5's bidirectional bucket of one key - query distance, written out step by step (float32 logarithm)."""
    half = num_buckets // 2
    bucket = half if relative > 0 else 0
    n = abs(relative)
    exact = half // 2
    if n < exact:
        return bucket + n
    scaled = np.log(np.float32(n) / np.float32(exact)) / np.float32(math.log(max_distance / exact))
    return bucket + min(exact + int(scaled * np.float32(half - exact)), half - 1)


def fixture_config(**changes) -> dict:
    return {**json.loads((FAMILIES_DIR / "mpnet" / "config.json").read_text()), **changes}


@pytest.mark.parametrize(("num_buckets", "max_distance"), [(32, 128), (8, 16), (16, 20), (4, 8)])
def test_buckets_match_the_transcribed_formula(num_buckets, max_distance):
    relative = np.arange(-3 * max_distance, 3 * max_distance + 1)
    expected = [transcribed_bucket(int(r), num_buckets, max_distance) for r in relative]
    assert relative_position_buckets(relative, num_buckets, max_distance).tolist() == expected


def test_buckets_of_mpnet_at_a_glance():
    buckets = relative_position_buckets(np.arange(-200, 201)).reshape(401)
    by_distance = dict(zip(range(-200, 201), buckets.tolist()))
    assert [by_distance[r] for r in range(-7, 8)] == [7, 6, 5, 4, 3, 2, 1, 0, 17, 18, 19, 20, 21, 22, 23]
    assert by_distance[-128] == by_distance[-200] == 15 and by_distance[128] == by_distance[200] == 31
    assert all(by_distance[r] == 16 + by_distance[-r] for r in range(1, 201))  # keys after: the upper half
    assert np.all(np.diff(buckets[:201]) <= 0) and np.all(np.diff(buckets[201:]) >= 0)
    assert relative_position_buckets(np.zeros((2, 3), int)).shape == (2, 3)
    with pytest.raises(ValueError, match="even number"):
        relative_position_buckets(np.arange(3), num_buckets=7)


def test_mpnet_config_numbers_positions_like_roberta_with_32_buckets():
    config = convert_config(fixture_config())
    assert family_of(fixture_config()) is mpnet
    assert (config.position_offset, config.max_positions, config.table_rows) == (2, 64, 66)
    assert (config.type_vocab_size, config.relative_attention_buckets, config.pad_token_id) == (0, 32, 1)
    assert config.to_dict()["positions"] == {"kind": "relative_buckets", "table": "learned", "offset": 2,
                                             "buckets": 32, "max_distance": 128}
    assert EncoderConfig.from_dict(json.loads(config.to_json())) == config
    assert parameter_count(config) == TransformerEncoder(config).count_params()
    with pytest.raises(CheckpointError, match="relative_attention_num_buckets is 64"):
        convert_config(fixture_config(relative_attention_num_buckets=64))
    with pytest.raises(CheckpointError, match="leaves no position"):
        convert_config(fixture_config(max_position_embeddings=2))
    with pytest.raises(ValueError, match="relative_attention_buckets"):
        EncoderConfig(vocab_size=9, num_layers=1, num_heads=1, d_model=4, dff=8, relative_attention_buckets=5)


def test_every_layer_adds_the_same_bias_to_its_logits():
    loaded = load_family("mpnet")
    trace = trace_text(loaded, "The cat sat on the mat because it was tired.")
    length = len(trace.tokens)
    bias = ops.convert_to_numpy(loaded.model.layer_context(length)[1])[0]  # (H, T, T)
    table = ops.convert_to_numpy(loaded.model.positions.relative_attention_bias.embeddings)  # (32, H)
    positions = np.arange(length)
    np.testing.assert_array_equal(bias, table[relative_position_buckets(positions[None] - positions[:, None])]
                                  .transpose(2, 0, 1))
    for index, layer in enumerate(loaded.model.encoder_layers):
        x = trace.hidden[index][None]  # (1, T, D)
        q = ops.convert_to_numpy(layer.attention.query_dense(x))[0]  # (T, H, dh)
        k = ops.convert_to_numpy(layer.attention.key_dense(x))[0]
        logits = np.einsum("thd,shd->hts", q, k) / math.sqrt(q.shape[-1]) + bias  # (H, T, T)
        pattern = np.exp(logits - logits.max(-1, keepdims=True))
        pattern /= pattern.sum(-1, keepdims=True)
        np.testing.assert_allclose(pattern, trace.attention[index], atol=TOLERANCE)


def test_a_text_longer_than_the_buckets_matches_transformers():
    check_long_reference("mpnet", 51)


def test_padded_batches_equal_single_traces():
    check_padded_batch("mpnet", ["The cat sat.", "Where is the station? The station is two blocks north."])
