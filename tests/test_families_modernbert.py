"""ModernBERT: which layers are local, the sliding window (attention exactly 0 outside it, drawn as masked), the
logit terms of rotary positions, the RoPE frequencies, its config mapping and parameter count. The fixture's own
cases are compared with transformers in tests/test_families.py."""

from __future__ import annotations

import json

import numpy as np
import pytest

from encoder.checkpoints import convert_config
from encoder.errors import CheckpointError
from encoder.limits import parameter_count
from encoder.model import TransformerEncoder
from encoder.positional import rotary_frequencies
from encoder.trace import trace_text
from tests.support.families import FAMILIES_DIR, load_family

TEXT = "Café naïve résumé — 東京の寿司 🍣 was great 🙂!"  # 52 tokens: far longer than the 8-token window


def fixture_config(**changes) -> dict:
    return {**json.loads((FAMILIES_DIR / "modernbert" / "config.json").read_text()), **changes}


def test_every_second_layer_is_global_and_the_rest_local():
    config = convert_config(fixture_config())
    assert [config.is_local(i) for i in range(config.num_layers)] == [False, True, False]
    assert (config.local_attention, config.rope_theta, config.rope_local_theta) == (8, 160_000.0, 10_000.0)
    assert (config.use_bias, config.gated_feed_forward, config.first_attention_norm) == (False, True, False)
    hub = {k: v for k, v in fixture_config().items() if k not in ("layer_types", "rope_parameters")}
    assert convert_config(hub) == config  # the Hub's keys alone give the same model


def test_configs_we_do_not_run_are_refused():
    with pytest.raises(CheckpointError, match="layer_types"):
        convert_config(fixture_config(layer_types=["full_attention"] * 3))
    with pytest.raises(CheckpointError, match="differ"):
        convert_config(fixture_config(mlp_bias=True))
    scaled = {"full_attention": {"rope_type": "linear", "rope_theta": 1e4, "factor": 2.0}}
    with pytest.raises(CheckpointError, match="rope_type"):
        convert_config(fixture_config(rope_parameters=scaled))


def test_parameter_count_has_no_biases_and_a_doubled_input_projection():
    config = convert_config(fixture_config())
    assert parameter_count(config) == TransformerEncoder(config).count_params()
    d, f, v, layers = 32, 64, 1500, 3
    expected = v * d + d + layers * (4 * d * d + d * 2 * f + f * d + 2 * d) - d + d
    assert parameter_count(config) == expected


def test_local_layers_attend_only_within_the_window_and_show_it():
    trace = trace_text(load_family("modernbert"), TEXT)
    t = len(trace.tokens)
    distance = np.abs(np.arange(t)[:, None] - np.arange(t)[None, :])
    outside = distance > 4
    assert t > 8 and outside.any()
    assert np.all(trace.attention[1][:, outside] == 0.0)  # layer 1 is local: exactly 0 outside the window
    assert np.all(trace.attention[[0, 2]][:, :, outside] > 0.0)  # global layers see every key
    np.testing.assert_array_equal(trace.visible[1], ~outside)
    assert trace.visible[[0, 2]].all()


def test_rotary_terms_sum_to_the_logits_the_softmax_used():
    trace = trace_text(load_family("modernbert"), TEXT)
    content, position = trace.logit_terms["content"], trace.logit_terms["position"]
    logits = content + position  # (L, H, T, T)
    shifted = np.where(trace.visible[:, None], logits, -np.inf)
    weights = np.exp(shifted - shifted.max(axis=-1, keepdims=True))
    np.testing.assert_allclose(weights / weights.sum(axis=-1, keepdims=True), trace.attention, atol=2e-6)
    assert np.abs(position).max() > 0.1 * np.abs(content).max()  # rotation changes the logits


def test_rope_frequencies_are_theta_to_the_minus_2i_over_d():
    scheme = load_family("modernbert").position_scheme
    assert set(scheme) == {"rope_inv_freq_global", "rope_inv_freq_local", "local_window", "local_reach"}
    for key, theta in (("rope_inv_freq_global", 160_000.0), ("rope_inv_freq_local", 10_000.0)):
        assert scheme[key].dtype == np.float32 and scheme[key].shape == (4,)
        np.testing.assert_allclose(scheme[key], theta ** (-np.arange(0, 8, 2) / 8), rtol=1e-6)
    assert scheme["local_window"].tolist() == [8] and scheme["local_reach"].tolist() == [4]
    np.testing.assert_allclose(rotary_frequencies(10_000.0, 64), 10_000.0 ** (-np.arange(0, 64, 2) / 64), rtol=1e-6)
