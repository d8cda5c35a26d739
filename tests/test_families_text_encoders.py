"""The text encoders of image generators against transformers' reference (tests/fixtures/families/<name>/
reference.npz): CLIP's text transformer (``clip-text``: ``CLIPTextModelWithProjection``) and T5's encoder
(``t5-encoder``: ``T5EncoderModel``, v1.1). Tokens, attention, every hidden state and the last hidden state of every
case; CLIP's causal mask, its pooled output at the end-of-text token and its projected ``text_embeds``; the configs
we refuse before allocating anything."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from encoder.checkpoints import convert_config
from encoder.config import EncoderConfig
from encoder.errors import CheckpointError
from encoder.limits import check_config, parameter_count
from encoder.model import TransformerEncoder
from encoder.positional import relative_position_buckets
from encoder.sources import load_path
from encoder.trace import trace_text
from tests.support.families import FAMILIES_DIR, TOLERANCE, check_padded_batch, load_family, reference

CASES = {"clip-text": ("simple", "joined", "unicode"), "t5-encoder": ("simple", "pair", "unicode")}
# CLIP's hidden states before the final norm reach ~29 on this fixture (initializer_factor 3); there the float32
# reference itself is up to 1.8e-5 from the same model run in float64 (NumPy, the fixture's weights), and we are
# up to 2.9e-5 from that float64 run: ~1e-6 of the values. Everything after the final norm (the last hidden state,
# pooled, text_embeds) and all attention keep the 1e-5 bar.
MIDDLE_HIDDEN_TOLERANCE = {"clip-text": 3e-5, "t5-encoder": TOLERANCE}


def fixture_config(name: str, **changes) -> dict:
    return {**json.loads((FAMILIES_DIR / name / "config.json").read_text()), **changes}


def assert_within(actual, expected, what: str, limit: float = TOLERANCE) -> None:
    difference = float(np.abs(np.asarray(actual) - expected).max())
    assert difference < limit, f"{what} differs by {difference:.2e}"


@pytest.mark.parametrize(("name", "case"), [(name, case) for name, cases in CASES.items() for case in cases])
def test_text_encoder_matches_transformers(name, case):
    expected = reference(name)[case]
    trace = trace_text(load_family(name), str(expected["text"]), str(expected["pair"]) or None)
    assert trace.tokens == tuple(str(t) for t in expected["tokens"])
    np.testing.assert_array_equal(trace.token_ids, expected["input_ids"])
    assert_within(trace.attention, expected["attention"], f"{name}/{case} attention")
    assert_within(trace.hidden, expected["hidden_states"], f"{name}/{case} hidden states",
                  MIDDLE_HIDDEN_TOLERANCE[name])
    last = trace.outputs["last_hidden_state"] if name == "clip-text" else trace.hidden[-1]
    assert_within(last, expected["last_hidden_state"], f"{name}/{case} last hidden state")


@pytest.mark.parametrize("case", CASES["clip-text"])
def test_clip_pools_at_the_end_of_text_token_and_projects_it(case):
    expected = reference("clip-text")[case]
    trace = trace_text(load_family("clip-text"), str(expected["text"]))
    assert trace.tokens[-1] == "<|endoftext|>"
    assert_within(trace.outputs["pooled"], expected["pooled"], f"clip-text/{case} pooled")
    assert_within(trace.outputs["embedding"], expected["text_embeds"], f"clip-text/{case} text_embeds")
    assert trace.outputs["embedding"].shape == (16,)  # projection_dim
    # hidden[-1] is the last layer's output as transformers reports it; the final norm's output is separate
    assert np.abs(trace.hidden[-1] - trace.outputs["last_hidden_state"]).max() > 1.0
    np.testing.assert_array_equal(trace.outputs["pooled"], trace.outputs["last_hidden_state"][-1])


def test_clip_is_causal_with_exact_zeros_and_pools_the_first_end_of_text():
    model = load_family("clip-text")
    trace = trace_text(model, str(reference("clip-text")["unicode"]["text"]))
    above = np.triu(np.ones(trace.attention.shape[-2:], bool), k=1)
    assert (trace.attention[..., above] == 0.0).all()
    # two end-of-text tokens: the first one is pooled (transformers: the first eos_token_id)
    ids = np.array([[1498, 515, 1499, 536, 1499]], np.int32)
    outputs = model.model(ids)
    np.testing.assert_array_equal(outputs["pooled"][0], outputs["last_hidden_state"][0, 2])


def test_old_clip_configs_pool_at_the_highest_id_and_whole_clip_configs_open_their_text_half(tmp_path):
    old = convert_config(fixture_config("clip-text", eos_token_id=2))
    assert old.head.pooling == "eos" and old.head.eos_token_id == -1
    ids = np.array([[1498, 515, 1499, 536, 7]], np.int32)
    model = TransformerEncoder(old)
    outputs = model(ids)
    np.testing.assert_array_equal(outputs["pooled"][0], outputs["last_hidden_state"][0, 2])
    # a whole CLIP checkpoint (model_type "clip", text_config, vision tensors beside) opens its text model
    folder = tmp_path / "clip"
    shutil.copytree(FAMILIES_DIR / "clip-text", folder)
    text = fixture_config("clip-text")
    (folder / "config.json").write_text(json.dumps({
        "model_type": "clip", "architectures": ["CLIPModel"], "projection_dim": 16, "text_config": text,
        "vision_config": {"hidden_size": 8}}))
    whole, alone = load_path(folder, name="clip"), load_family("clip-text")
    expected = reference("clip-text")["simple"]
    for loaded in (whole, alone):
        trace = trace_text(loaded, str(expected["text"]))
        assert_within(trace.outputs["embedding"], expected["text_embeds"], "whole CLIP text_embeds")


def test_clip_text_model_without_projection_embeds_the_pooled_state():
    config = convert_config(fixture_config("clip-text", architectures=["CLIPTextModel"]))
    assert config.head.projection == 0 and config.block.activation == "quick_gelu"
    assert parameter_count(config) == TransformerEncoder(config).count_params()


@pytest.mark.parametrize("name", tuple(CASES))
def test_parameter_count_is_the_built_model(name):
    loaded = load_family(name)
    assert parameter_count(loaded.config) == loaded.model.count_params()


def test_t5_buckets_are_transformers_bidirectional_buckets():
    """transformers' ``T5Attention._relative_position_bucket(bidirectional=True)``, written out for 8 buckets and
    max_distance 16 (the fixture's): keys after the query in the upper half; |d| < 2 exact; log buckets to 16."""
    relative = np.arange(-20, 21)  # key - query
    half, exact = 4, 2
    side = np.where(relative > 0, half, 0)
    distance = np.abs(relative)
    large = exact + (np.log(np.maximum(distance, 1).astype(np.float32) / exact) / np.log(16 / exact)
                     * (half - exact)).astype(np.int64)
    expected = side + np.where(distance < exact, distance, np.minimum(large, half - 1))
    np.testing.assert_array_equal(relative_position_buckets(relative, 8, 16), expected)
    config = load_family("t5-encoder").config
    assert config.scaling == 1.0 and config.block.norm == "rmsnorm" and config.block.mlp == "gated"
    assert config.block.activation == "gelu_new" and config.positions.table == "none"


def test_t5_v1_0_relu_and_an_encoder_config_that_says_encoder_decoder(tmp_path):
    dense = convert_config(fixture_config("t5-encoder", feed_forward_proj="relu"))
    assert dense.block.mlp == "dense" and dense.block.activation == "relu"
    assert parameter_count(dense) == TransformerEncoder(dense).count_params()
    # SD3's T5EncoderModel configs say is_encoder_decoder true: the architecture decides, the encoder alone opens
    # (the token embedding under its encoder name); tests/test_families_encoder_decoder.py opens whole T5s
    from safetensors.numpy import load_file, save_file

    folder = tmp_path / "t5"
    shutil.copytree(FAMILIES_DIR / "t5-encoder", folder)
    (folder / "config.json").write_text(json.dumps(fixture_config(
        "t5-encoder", is_encoder_decoder=True, architectures=["T5EncoderModel"])))
    weights = load_file(folder / "model.safetensors")
    weights["encoder.embed_tokens.weight"] = weights.pop("shared.weight")
    save_file(weights, folder / "model.safetensors")
    expected = reference("t5-encoder")["pair"]
    trace = trace_text(load_path(folder, name="t5"), str(expected["text"]), str(expected["pair"]))
    assert_within(trace.hidden, expected["hidden_states"], "t5 encoder-decoder's encoder hidden states")


@pytest.mark.parametrize("name", tuple(CASES))
def test_a_padded_batch_gives_each_text_its_own_trace(name):
    texts = [str(reference(name)[case]["text"]) for case in ("simple", "unicode")]
    check_padded_batch(name, texts)


@pytest.mark.parametrize(("name", "changes", "what"), [
    ("t5-encoder", {"relative_attention_num_buckets": 1_000_000}, "relative-position buckets"),
    ("t5-encoder", {"relative_attention_max_distance": 10**9}, "relative distance"),
    ("t5-encoder", {"num_decoder_layers": 10_000}, "layers"),
    ("t5-encoder", {"feed_forward_proj": "gated-gelu-gelu"}, "feed_forward_proj"),
    ("clip-text", {"projection_dim": 10**9}, "text projection"),
    ("clip-text", {"eos_token_id": 10**6}, "eos_token_id"),
])
def test_hostile_configs_are_refused_before_allocation(name, changes, what):
    with pytest.raises(CheckpointError, match=what):
        check_config(convert_config(fixture_config(name, **changes)), max_parameters=10**9)


def test_a_text_projection_of_impossible_shape_is_refused(tmp_path):
    from safetensors.numpy import load_file, save_file

    folder = tmp_path / "clip"
    shutil.copytree(FAMILIES_DIR / "clip-text", folder)
    weights = load_file(folder / "model.safetensors")
    weights["text_projection.weight"] = np.zeros((16, 31), np.float32)
    save_file(weights, folder / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"text_projection\.weight has shape"):
        load_path(folder, name="clip")


def test_clip_traces_keep_their_outputs_in_npz_and_json_and_a_saved_folder_reopens(tmp_path):
    from encoder.saving import save_folder
    from encoder.trace_io import trace_from_json, trace_from_npz, trace_to_json, trace_to_npz

    loaded = load_family("clip-text")
    trace = trace_text(loaded, str(reference("clip-text")["simple"]["text"]))
    for again in (trace_from_npz(trace_to_npz(trace)), trace_from_json(trace_to_json(trace))):
        for key in ("pooled", "embedding", "last_hidden_state"):
            np.testing.assert_allclose(again.outputs[key], trace.outputs[key], atol=1e-6)
    folder = save_folder(tmp_path / "saved", loaded.model, (FAMILIES_DIR / "clip-text" / "tokenizer.json").read_text())
    reopened = trace_text(load_path(folder), str(reference("clip-text")["simple"]["text"]))
    assert reopened.tokens == trace.tokens
    np.testing.assert_array_equal(reopened.outputs["embedding"], trace.outputs["embedding"])


def test_the_gradient_explains_clips_end_of_text_embedding():
    from analysis.gradients import input_gradient, objective

    loaded = load_family("clip-text")
    trace = trace_text(loaded, str(reference("clip-text")["simple"]["text"]))
    goal = objective(loaded, trace)
    assert "end-of-text" in goal.description
    attribution = input_gradient(loaded, trace, goal)
    assert attribution.value == pytest.approx(float(np.linalg.norm(trace.outputs["pooled"])), rel=1e-5)
    assert np.isfinite(attribution.values).all() and np.abs(attribution.values).max() > 0


def test_a_long_prompt_is_cut_at_the_window_with_the_end_of_text_token_kept_last():
    loaded = load_family("clip-text")
    trace = trace_text(loaded, "a photo of a cat " * 30)
    assert len(trace.tokens) == loaded.config.max_positions == 64
    assert trace.tokens[0] == "<|startoftext|>" and trace.tokens[-1] == "<|endoftext|>"
    np.testing.assert_array_equal(trace.outputs["pooled"], trace.outputs["last_hidden_state"][-1])


def test_clip_from_vocab_and_merges_alone_tokenizes_as_its_tokenizer_json(tmp_path):
    """Stable Diffusion's ``tokenizer/`` folders ship ``vocab.json`` + ``merges.txt`` and no ``tokenizer.json``."""
    folder = tmp_path / "clip"
    shutil.copytree(FAMILIES_DIR / "clip-text", folder)
    saved = json.loads((folder / "tokenizer.json").read_text(encoding="utf-8"))
    bpe, added = saved["model"], {token["content"]: token["id"] for token in saved["added_tokens"]}
    (folder / "tokenizer.json").unlink()
    (folder / "vocab.json").write_text(json.dumps({**bpe["vocab"], **added}), encoding="utf-8")  # as CLIP's holds them
    (folder / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in bpe["merges"]),
                                       encoding="utf-8")
    alone, with_json = load_path(folder, name="clip").tokenizer, load_family("clip-text").tokenizer
    texts = [str(reference("clip-text")[case]["text"]) for case in CASES["clip-text"]]
    texts += ["  A   PHOTO of an astronaut,\n riding a horse on Mars!!  ", "it's 1984's best'd café", "a " * 80]
    for text in texts:
        mine, theirs = alone.encode(text), with_json.encode(text)
        assert mine.tokens == theirs.tokens, text
        np.testing.assert_array_equal(mine.token_ids, theirs.token_ids)
        np.testing.assert_array_equal(mine.special, theirs.special)


def test_t5_from_its_sentencepiece_model_alone_tokenizes_as_its_tokenizer_json(tmp_path):
    """T5 folders ship ``spiece.model``; read alone, it gives the tokens of ``tokenizer.json`` (``<extra_id_N>``
    appended in T5's order, ``A </s>`` and ``A </s> B </s>``)."""
    import base64

    from sentencepiece import sentencepiece_model_pb2

    folder = tmp_path / "t5"
    shutil.copytree(FAMILIES_DIR / "t5-encoder", folder)
    saved = json.loads((folder / "tokenizer.json").read_text(encoding="utf-8"))
    (folder / "tokenizer.json").unlink()
    proto = sentencepiece_model_pb2.ModelProto()
    for index, (piece, score) in enumerate(saved["model"]["vocab"]):
        proto.pieces.add(piece=piece, score=score, type={0: 3, 1: 3, 2: 2}.get(index, 1))  # control, unknown, normal
    proto.trainer_spec.model_type, proto.trainer_spec.unk_id = 1, 2  # Unigram
    proto.normalizer_spec.remove_extra_whitespaces = True
    proto.normalizer_spec.precompiled_charsmap = base64.b64decode(
        saved["normalizer"]["normalizers"][0]["precompiled_charsmap"])
    (folder / "spiece.model").write_bytes(proto.SerializeToString())
    alone, with_json = load_path(folder, name="t5").tokenizer, load_family("t5-encoder").tokenizer
    cases = [(str(e["text"]), str(e["pair"]) or None) for e in reference("t5-encoder").values()]
    # (a <extra_id_N> typed after a space differs: SentencePiece strips the space before it, tokenizer.json keeps a
    # lone "▁"; the ids of the extra tokens themselves agree)
    cases += [("Ｔｈｅ  ｃａｔ — café", None), ("fill<extra_id_0>in", "and<extra_id_7>")]
    for text, pair in cases:
        mine, theirs = alone.encode(text, pair), with_json.encode(text, pair)
        assert mine.tokens == theirs.tokens, text
        np.testing.assert_array_equal(mine.token_ids, theirs.token_ids)
        np.testing.assert_array_equal(mine.special, theirs.special)


def test_umt5_reads_a_bias_table_in_every_layer(tmp_path):
    """umT5 is T5's encoder with its own relative-bias table in each layer: with layer 1's table a copy of layer 0's
    it is the T5 fixture exactly; with another table, layer 0 is unchanged and layer 1's position term is that
    table read at T5's buckets."""
    from safetensors.numpy import load_file, save_file

    folder = tmp_path / "umt5"
    shutil.copytree(FAMILIES_DIR / "t5-encoder", folder)
    (folder / "config.json").write_text(json.dumps(fixture_config("t5-encoder", model_type="umt5",
                                                                  architectures=["UMT5EncoderModel"])))
    weights = load_file(folder / "model.safetensors")
    name = "encoder.block.{}.layer.0.SelfAttention.relative_attention_bias.weight"
    weights[name.format(1)] = weights[name.format(0)].copy()
    save_file(weights, folder / "model.safetensors")
    expected = reference("t5-encoder")["simple"]
    same = trace_text(load_path(folder, name="umt5"), str(expected["text"]))
    assert_within(same.hidden, expected["hidden_states"], "umt5 with equal tables, hidden states")
    assert_within(same.attention, expected["attention"], "umt5 with equal tables, attention")
    config = load_path(folder, name="umt5").config
    assert parameter_count(config) == load_path(folder, name="umt5").model.count_params()
    assert config.positions.per_layer and EncoderConfig.from_dict(json.loads(config.to_json())) == config

    table = np.random.default_rng(0).normal(size=weights[name.format(0)].shape).astype(np.float32)
    weights[name.format(1)] = table
    save_file(weights, folder / "model.safetensors")
    other = trace_text(load_path(folder, name="umt5"), str(expected["text"]))
    np.testing.assert_allclose(other.attention[0], same.attention[0], atol=1e-6)
    assert np.abs(other.attention[1] - same.attention[1]).max() > 1e-2
    t = len(other.tokens)
    positions = np.arange(t)
    buckets = relative_position_buckets(positions[None, :] - positions[:, None], 8, 16)  # (T, T): key - query
    np.testing.assert_allclose(other.logit_terms["position"][1], table[buckets].transpose(2, 0, 1), atol=1e-6)
