"""The model assembled from parts: every position scheme, norm placement, MLP kind and attention option through the
grouped config, on tiny random models."""

import dataclasses
import json

import numpy as np
import pytest
from keras import ops

from encoder.config import (
    AbsolutePositions,
    Attention,
    Block,
    DisentangledPositions,
    Embeddings,
    EncoderConfig,
    Head,
    RelativeBuckets,
    RotaryPositions,
)
from encoder.limits import parameter_count
from encoder.model import TOP_K, TransformerEncoder

EPS = float(np.finfo(np.float32).eps)
SCHEMES = {
    "sinusoidal": AbsolutePositions(),
    "learned-offset": AbsolutePositions(table="learned", offset=2),
    "relative-buckets": RelativeBuckets(table="learned", buckets=8, max_distance=16),
    "rotary": RotaryPositions(theta=10_000.0, local_theta=100.0),
    "disentangled": DisentangledPositions(buckets=4, max_distance=8, terms=("c2p", "p2c")),
    "disentangled-shared": DisentangledPositions(table="learned", terms=("p2c",), share_key=True, normalize=True,
                                                 max_distance=6),
}
TERMS = {"relative-buckets": {"content", "position"}, "rotary": {"content", "position"},
         "disentangled": {"c2c", "c2p", "p2c"}, "disentangled-shared": {"c2c", "p2c"}}


def tiny(positions, **groups) -> EncoderConfig:
    values = dict(num_layers=3, d_model=8, max_positions=12, dropout=0.0, embeddings=Embeddings(30, pad_token_id=0),
                  attention=Attention(2), positions=positions, block=Block(16), head=Head(num_classes=2))
    return EncoderConfig(**{**values, **groups})


def run(config: EncoderConfig, length: int = 7) -> dict[str, np.ndarray]:
    ids = np.random.default_rng(0).integers(1, 30, size=(2, length)).astype(np.int32)
    mask = np.ones((2, length), bool)
    mask[1, -2:] = False  # the second row is padded
    outputs = TransformerEncoder(config, name="encoder")(ids, padding_mask=mask)
    return {name: ops.convert_to_numpy(value) for name, value in outputs.items()}


@pytest.mark.parametrize("name", sorted(SCHEMES))
def test_every_scheme_gives_distributions_and_terms_that_sum_to_the_logits(name):
    config = tiny(SCHEMES[name])
    out = run(config)
    attention = out["attention"]
    assert attention.shape == (2, 3, 2, 7, 7) and out["hidden"].shape == (2, 4, 7, 8)
    np.testing.assert_allclose(attention.sum(axis=-1), 1.0, atol=8 * EPS, rtol=0)
    assert np.all(attention[1, ..., -2:] == 0.0)  # padded keys get weight exactly 0
    terms = {key.removeprefix("terms/"): value for key, value in out.items() if key.startswith("terms/")}
    assert set(terms) == TERMS.get(name, set())
    if terms:
        logits = sum(terms.values())[0]  # the unpadded row
        expected = np.exp(logits - logits.max(axis=-1, keepdims=True))
        np.testing.assert_allclose(expected / expected.sum(axis=-1, keepdims=True), attention[0], atol=1e-6, rtol=0)
    assert EncoderConfig.from_dict(json.loads(config.to_json())) == config


def test_pre_norm_gated_causal_windowed_model():
    config = tiny(RotaryPositions(), attention=Attention(2, causal=True, windows=(0, 4, 4)),
                  block=Block(16, activation="gelu", placement="pre", mlp="gated", use_bias=False, final_norm=True))
    model = TransformerEncoder(config)
    assert model.layer_groups[0].intermediate.kernel.shape == (8, 32)  # gated: twice dff
    visible = model.visible_mask(7)
    assert visible.shape == (3, 7, 7)
    np.testing.assert_array_equal(visible[0], np.tri(7, dtype=bool))
    np.testing.assert_array_equal(visible[1], np.tri(7, dtype=bool) & ~np.tri(7, k=-3, dtype=bool))  # i - j <= 2
    attention = run(config)["attention"]
    np.testing.assert_allclose(attention.sum(axis=-1), 1.0, atol=8 * EPS, rtol=0)
    assert np.all(attention[0][~np.broadcast_to(visible[:, None], attention.shape[1:])] == 0.0)


def test_head_size_and_scaling_are_the_attentions_own():
    config = tiny(AbsolutePositions(), attention=Attention(2, head_dim=6, scaling=1.0))
    model = TransformerEncoder(config)
    attention = model.encoder_layers[0].attention
    assert attention.query_dense.kernel.shape == (8, 2, 6) and attention.output_dense.kernel.shape == (2, 6, 8)
    x = np.random.default_rng(1).normal(size=(1, 5, 8)).astype(np.float32)
    _, pattern, _ = attention(x, x)
    q, k = (ops.convert_to_numpy(dense(x))[0] for dense in (attention.query_dense, attention.key_dense))
    logits = np.einsum("thd,shd->hts", q, k)  # scaling 1: no 1 / sqrt(head_dim)
    expected = np.exp(logits - logits.max(axis=-1, keepdims=True))
    np.testing.assert_allclose(ops.convert_to_numpy(pattern)[0], expected / expected.sum(axis=-1, keepdims=True),
                               atol=1e-6, rtol=0)


def test_grouped_query_attention_is_attention_with_each_key_value_head_repeated():
    grouped = TransformerEncoder(tiny(RotaryPositions(), attention=Attention(4, key_value_heads=2)))
    full = TransformerEncoder(tiny(RotaryPositions(), attention=Attention(4)))
    attention = grouped.encoder_layers[0].attention
    assert attention.query_dense.kernel.shape == (8, 4, 2) and attention.key_dense.kernel.shape == (8, 2, 2)
    values = {variable.path: variable.numpy() for variable in grouped.weights}
    for variable in full.weights:
        value = values[variable.path]
        if "/key/" in variable.path or "/value/" in variable.path:  # query heads 2h and 2h + 1 read head h
            value = np.repeat(value, 2, axis=-2)
        variable.assign(value)
    ids = np.array([[3, 1, 4, 1, 5, 9, 2]], np.int32)
    ours, theirs = grouped(ids), full(ids)
    for name in ("attention", "hidden", "terms/position"):
        np.testing.assert_allclose(ops.convert_to_numpy(ours[name]), ops.convert_to_numpy(theirs[name]), atol=1e-6,
                                   rtol=0)
    with pytest.raises(ValueError, match="must divide"):
        Attention(4, key_value_heads=3)


def test_flat_names_build_and_read_the_same_grouped_config():
    flat = EncoderConfig(vocab_size=30, num_layers=3, num_heads=2, d_model=8, dff=16, max_positions=12, dropout=0.0,
                         positional="learned", position_offset=2, relative_attention_buckets=8, num_classes=2)
    assert flat.positions == RelativeBuckets(table="learned", offset=2, buckets=8)
    assert (flat.pooling, flat.norm_first, flat.table_rows, flat.relative_attention_buckets) == ("mean", False, 14, 8)
    assert EncoderConfig(**flat.flat()) == flat == EncoderConfig.from_dict(flat.flat())
    assert dataclasses.replace(flat, pooling="cls").head == Head(pooling="cls", num_classes=2)
    with pytest.raises(TypeError, match="flat names alone or with every group"):
        EncoderConfig(vocab_size=30, num_layers=3, num_heads=2, d_model=8, dff=16, positions=RotaryPositions())
    with pytest.raises(ValueError, match="unknown EncoderConfig fields: colour"):
        EncoderConfig.from_dict({**flat.flat(), "colour": "red"})
    with pytest.raises(ValueError, match="unknown position scheme"):
        EncoderConfig.from_dict({**flat.to_dict(), "positions": {"kind": "alibi"}})


def decoder(**changes) -> EncoderConfig:
    """A tiny decoder of every new part: RMSNorm, SwiGLU, grouped-query attention with q/k norms, causal windows,
    soft-capping, sandwich norms, scaled linear RoPE on half of each head, a tied LM head with its own soft-cap."""
    groups = dict(
        attention=Attention(4, key_value_heads=2, head_dim=4, causal=True, windows=(3, 0, 3), window_kind="causal",
                            query_key_value_bias=True, output_bias=False, qk_norm=True, softcap=5.0),
        positions=RotaryPositions(rope_type="linear", factor=2.0, fraction=0.5, logit_terms=False),
        block=Block(16, activation="silu", norm="rmsnorm", placement="pre", mlp="gated", use_bias=False,
                    final_norm=True, sandwich_norms=True),
        head=Head(pooling="last", lm_head=True, tie_embeddings=True, logit_softcap=2.0))
    return tiny(**{**groups, **changes})


def tiny_decoder_outputs(config: EncoderConfig, length: int = 7):
    model = TransformerEncoder(config, name="encoder")
    ids = np.random.default_rng(0).integers(1, 30, size=(1, length)).astype(np.int32)
    outputs = model(ids, full_logits=True)
    return model, ids, {name: ops.convert_to_numpy(value) for name, value in outputs.items()}


def test_decoder_parts_mask_cap_and_predict_the_next_token():
    model, ids, out = tiny_decoder_outputs(decoder())
    assert parameter_count(model.config) == model.count_params()
    visible = model.visible_mask(7)
    distance = np.arange(7)[:, None] - np.arange(7)[None, :]
    np.testing.assert_array_equal(visible[0], (distance >= 0) & (distance < 3))  # causal window: 0 <= i - j < 3
    np.testing.assert_array_equal(visible[1], distance >= 0)
    attention = out["attention"][0]
    assert np.all(attention[~np.broadcast_to(visible[:, None], attention.shape)] == 0.0)
    assert np.all(attention[np.broadcast_to(visible[:, None], attention.shape)] > 0.0)
    logits = out["logits"][0]  # (T, V), soft-capped: within (-2, 2)
    assert logits.shape == (7, 30) and np.abs(logits).max() < 2.0
    log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    np.testing.assert_array_equal(out["next_ids"][0], np.argsort(-logits, axis=-1, kind="stable")[:, :TOP_K])
    np.testing.assert_allclose(out["next_probs"][0], np.exp(np.sort(log_probs, -1)[:, ::-1][:, :TOP_K]), atol=1e-6)
    np.testing.assert_allclose(out["next_logprob"][0][:-1], log_probs[np.arange(6), ids[0, 1:]], atol=1e-5)
    assert np.isnan(out["next_logprob"][0][-1])
    np.testing.assert_array_equal(out["embedding"][0], out["hidden"][0][-1][-1])  # "last": the last token's
    lens = ops.convert_to_numpy(model.lens_logits(out["hidden"][:, 1]))  # any layer's residual stream
    assert lens.shape == (1, 7, 30)
    assert EncoderConfig.from_dict(json.loads(model.config.to_json())) == model.config


def test_rms_norm_is_x_over_its_root_mean_square_times_the_weight():
    from encoder.parts.norms import RMSNorm

    norm = RMSNorm(epsilon=1e-5)
    x = np.random.default_rng(2).normal(size=(2, 3, 8)).astype(np.float32)
    norm.build(x.shape)
    weight = np.linspace(0.5, 1.5, 8, dtype=np.float32)
    norm.gamma.assign(weight)
    expected = x / np.sqrt((x.astype(np.float64) ** 2).mean(-1, keepdims=True) + 1e-5) * weight
    np.testing.assert_allclose(ops.convert_to_numpy(norm(x)), expected, atol=1e-6, rtol=0)
    assert norm.beta is None


def test_untied_head_and_separate_biases_have_their_own_weights():
    model, _, _ = tiny_decoder_outputs(decoder(head=Head(pooling="last", lm_head=True)))
    attention = model.encoder_layers[0].attention
    assert attention.query_dense.bias is not None and attention.output_dense.bias is None
    assert attention.key_dense.kernel.shape == (8, 2, 4) and attention.query_norm.gamma.shape == (4,)
    assert model.lm_head.kernel.shape == (8, 30)
    assert parameter_count(model.config) == model.count_params()


def test_flat_changes_keep_what_the_flat_names_do_not_say():
    config = decoder()
    changed = dataclasses.replace(config, pooling="mean", num_layers=3)
    assert changed.head == dataclasses.replace(config.head, pooling="mean")
    assert (changed.attention, changed.positions, changed.block) == (config.attention, config.positions,
                                                                     config.block)


def test_configs_refuse_what_the_parts_cannot_run():
    with pytest.raises(ValueError, match="window_kind"):
        Attention(2, window_kind="left")
    with pytest.raises(ValueError, match="rope_type"):
        RotaryPositions(rope_type="yarn")
    with pytest.raises(ValueError, match="partial_rotary_factor"):
        RotaryPositions(fraction=0.0)
    with pytest.raises(ValueError, match="sandwich norms"):
        Block(16, sandwich_norms=True)
    with pytest.raises(ValueError, match="pooling"):
        Head(pooling="max")
    with pytest.raises(ValueError, match="tied"):
        tiny(RotaryPositions(), embeddings=Embeddings(30, width=4), head=Head(lm_head=True, tie_embeddings=True))
