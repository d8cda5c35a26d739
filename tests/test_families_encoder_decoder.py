"""Encoder-decoders against transformers' reference (tests/fixtures/families/{t5,bart}/reference.npz: ``T5Model`` v1.1
and ``BartModel``, teacher-forced): source and decoder tokens, the encoder's attention, the decoder's causal
self-attention, cross-attention, every hidden state of both stacks and the last hidden states of every case; the
checkpoint layouts of ``*ForConditionalGeneration``; the configs we refuse before allocating anything."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from encoder.checkpoints import convert_config, convert_decoder_config, load_hf_models, read_hf_config
from encoder.config import EncoderConfig
from encoder.errors import CheckpointError, InputError
from encoder.limits import check_config, parameter_count
from encoder.positional import relative_position_buckets
from encoder.sources import load_path
from encoder.trace import trace_text
from tests.support.families import FAMILIES_DIR, TOLERANCE, load_family, reference
from tests.test_hostile_checkpoints import MAX_GROWTH_MB, MAX_SECONDS, measure_load

FAMILIES = ("t5", "bart")
CASES = ("simple", "pair", "unicode")
# trace field -> reference key, each within TOLERANCE
COMPARED = {"attention": "encoder_attention", "hidden": "encoder_hidden_states",
            "decoder_attention": "decoder_attention", "cross_attention": "cross_attention",
            "decoder_hidden": "decoder_hidden_states"}


def fixture_config(name: str, **changes) -> dict:
    return {**json.loads((FAMILIES_DIR / name / "config.json").read_text()), **changes}


def teacher_forced(name: str, case: str):
    expected = reference(name)[case]
    return trace_text(load_family(name), str(expected["text"]), target=str(expected["target"])), expected


def differences(trace, expected) -> dict[str, float]:
    """The largest difference of every compared array, and of both last hidden states."""
    found = {field: float(np.abs(getattr(trace, field) - expected[key]).max()) for field, key in COMPARED.items()}
    found["last_hidden_state"] = float(np.abs(trace.decoder_hidden[-1] - expected["last_hidden_state"]).max())
    found["encoder_last_hidden_state"] = float(np.abs(trace.hidden[-1] - expected["encoder_last_hidden_state"]).max())
    return found


@pytest.mark.parametrize(("name", "case"), [(name, case) for name in FAMILIES for case in CASES])
def test_encoder_decoder_matches_transformers(name, case):
    trace, expected = teacher_forced(name, case)
    assert trace.tokens == tuple(str(t) for t in expected["tokens"])
    np.testing.assert_array_equal(trace.token_ids, expected["input_ids"])
    assert trace.decoder_tokens == tuple(str(t) for t in expected["decoder_tokens"])
    np.testing.assert_array_equal(trace.decoder_token_ids, expected["decoder_input_ids"])
    assert trace.target == str(expected["target"]) and trace.is_encoder_decoder
    found = differences(trace, expected)
    print(f"{name}/{case}: " + ", ".join(f"{key} {value:.1e}" for key, value in found.items()))
    for what, difference in found.items():
        assert difference < TOLERANCE, f"{name}/{case}: {what} differs by {difference:.2e}"


@pytest.mark.parametrize("name", FAMILIES)
def test_the_decoder_is_causal_and_starts_with_the_models_start_token(name):
    trace, _ = teacher_forced(name, "unicode")
    above = np.triu(np.ones(trace.decoder_attention.shape[-2:], bool), k=1)
    assert (trace.decoder_attention[..., above] == 0.0).all()
    np.testing.assert_allclose(trace.cross_attention.sum(axis=-1), 1.0, atol=1e-5)
    start = {"t5": ("<pad>", 0), "bart": ("</s>", 2)}[name]
    assert (trace.decoder_tokens[0], int(trace.decoder_token_ids[0])) == start and trace.decoder_special[0]
    decoder = trace.decoder_trace()
    np.testing.assert_array_equal(decoder.attention, trace.decoder_attention)
    assert trace.attention_of("cross").shape == (2, 4, len(trace.decoder_tokens), len(trace.tokens))


@pytest.mark.parametrize("name", FAMILIES)
def test_without_a_target_the_encoder_is_traced_alone(name):
    expected = reference(name)["simple"]
    trace = trace_text(load_family(name), str(expected["text"]))
    assert not trace.is_encoder_decoder and trace.attention_kinds == ("encoder",)
    assert np.abs(trace.attention - expected["encoder_attention"]).max() < TOLERANCE
    with pytest.raises(InputError):
        trace_text(load_family(name), str(expected["text"]), target="")


def test_a_target_for_a_single_stack_is_refused():
    with pytest.raises(InputError, match="not an encoder-decoder"):
        trace_text(load_family("t5-encoder"), "The cat sat.", target="Die Katze saß.")


@pytest.mark.parametrize("name", FAMILIES)
def test_configs_count_their_parameters_and_round_trip(name):
    loaded = load_family(name)
    decoder = loaded.decoder.model
    assert decoder.config.attention.causal and decoder.config.attention.cross
    for stack in (loaded.model, decoder):
        assert parameter_count(stack.config) == stack.count_params()
        assert EncoderConfig.from_dict(json.loads(stack.config.to_json())) == stack.config
    assert loaded.num_parameters() == loaded.model.count_params() + decoder.count_params()
    assert not loaded.model.config.attention.cross and loaded.is_encoder_decoder


def test_configs_saved_before_encoder_decoders_write_what_they_wrote():
    """New fields are written only when set: an encoder's ``to_dict`` has none of them."""
    written = json.dumps(load_family("t5-encoder").config.to_dict())
    for key in ("cross", "bidirectional", "skip_pads", "output_scale", "logit_bias"):
        assert f'"{key}"' not in written


def test_t5_decoder_buckets_are_transformers_causal_buckets():
    """transformers' ``T5Attention._relative_position_bucket(bidirectional=False)``, written out for 8 buckets and
    max_distance 16 (the fixture's): later keys share bucket 0; distances below 4 exact; log buckets to 16."""
    relative = np.arange(-40, 10)  # key - query
    distance = np.maximum(-relative, 0)
    exact = 4
    large = exact + (np.log(np.maximum(distance, 1).astype(np.float32) / exact) / np.log(16 / exact)
                     * (8 - exact)).astype(np.int64)
    expected = np.where(distance < exact, distance, np.minimum(large, 7))
    np.testing.assert_array_equal(relative_position_buckets(relative, 8, 16, bidirectional=False), expected)
    config = load_family("t5").decoder.model.config
    assert not config.positions.bidirectional and config.scaling == 1.0


def test_bart_numbers_every_decoder_token_pads_included():
    """BART's learned positions are ``i + 2`` whatever the token (no RoBERTa-style skipping of pad tokens)."""
    loaded = load_family("bart")
    assert loaded.config.positions.offset == 2 and not loaded.config.positions.skip_pads
    trace = trace_text(loaded, "Where is it?", target="a <pad> b")
    assert "<pad>" in trace.decoder_tokens
    ids = trace.decoder_token_ids
    table = loaded.decoder.model.positions.table.embeddings.numpy()
    embedded = loaded.decoder.model.token_embedding.embeddings.numpy()[ids] + table[np.arange(len(ids)) + 2]
    mean = embedded.mean(-1, keepdims=True)
    norm = loaded.decoder.model.embedding_norm
    expected = ((embedded - mean) / np.sqrt(((embedded - mean) ** 2).mean(-1, keepdims=True) + 1e-5)
                * norm.gamma.numpy() + norm.beta.numpy())
    np.testing.assert_allclose(trace.decoder_hidden[0], expected, atol=1e-5)


def conditional_generation(name: str, folder, rename, drop: tuple[str, ...] = ()) -> None:
    """A copy of fixture ``name`` as ``*ForConditionalGeneration`` with its tensors renamed by ``rename`` and the
    config.json keys ``drop`` left out."""
    shutil.copytree(FAMILIES_DIR / name, folder)
    architecture = {"t5": "T5ForConditionalGeneration", "bart": "BartForConditionalGeneration"}[name]
    config = fixture_config(name, architectures=[architecture])
    (folder / "config.json").write_text(json.dumps({k: v for k, v in config.items() if k not in drop}))
    weights = load_file(folder / "model.safetensors")
    save_file(rename(weights), folder / "model.safetensors")


def test_t5_for_conditional_generation_opens_with_its_tensor_names(tmp_path):
    """``encoder.embed_tokens.weight`` in place of ``shared.weight`` and no ``lm_head.weight`` (tied): the same
    numbers, and an LM head that is the shared table; the decoder's output scaled by d_model ** -0.5 first when
    ``scale_decoder_outputs`` says so, or, in configs older than it (v1.0), when ``tie_word_embeddings``."""
    def rename(weights):
        weights["encoder.embed_tokens.weight"] = weights.pop("shared.weight")
        return weights

    conditional_generation("t5", tmp_path / "t5", rename, drop=("scale_decoder_outputs",))
    loaded = load_path(tmp_path / "t5", name="t5")
    head = loaded.decoder.model.config.head
    assert head.lm_head and head.output_scale == pytest.approx(32 ** -0.5)
    generating = fixture_config("t5", architectures=["T5ForConditionalGeneration"])
    assert convert_decoder_config(generating, convert_config(generating)).head.output_scale == 1.0
    np.testing.assert_array_equal(loaded.decoder.model.lm_head.kernel.numpy(),
                                  load_family("t5").model.token_embedding.embeddings.numpy().T)
    expected = reference("t5")["pair"]
    trace = trace_text(loaded, str(expected["text"]), target=str(expected["target"]))
    assert max(differences(trace, expected).values()) < TOLERANCE


def test_bart_for_conditional_generation_opens_with_its_model_prefix(tmp_path):
    """transformers writes ``model.shared.weight``, ``model.encoder.*``, ``model.decoder.*`` and
    ``final_logits_bias`` (1, V); older checkpoints also the stacks' own ``embed_tokens``."""
    bias = np.linspace(-1, 1, 1500, dtype=np.float32)[None]

    def rename(weights):
        renamed = {f"model.{name}": value for name, value in weights.items()}
        renamed["model.encoder.embed_tokens.weight"] = renamed["model.decoder.embed_tokens.weight"] = weights[
            "shared.weight"]
        return {**renamed, "final_logits_bias": bias}

    conditional_generation("bart", tmp_path / "bart", rename)
    loaded = load_path(tmp_path / "bart", name="bart")
    np.testing.assert_array_equal(loaded.decoder.model.logit_bias.numpy(), bias[0])
    assert loaded.decoder_start == 2
    expected = reference("bart")["simple"]
    trace = trace_text(loaded, str(expected["text"]), target=str(expected["target"]))
    assert max(differences(trace, expected).values()) < TOLERANCE


@pytest.mark.parametrize(("name", "changes", "what"), [
    ("t5", {"num_decoder_layers": 10_000}, "layers"),
    ("t5", {"relative_attention_num_buckets": 1_000_000}, "relative-position buckets"),
    ("bart", {"decoder_layers": 10_000}, "layers"),
    ("bart", {"decoder_attention_heads": 10_000}, "attention heads"),
    ("bart", {"decoder_ffn_dim": 10**9}, "feed-forward width"),
    ("bart", {"decoder_start_token_id": 10**6}, "decoder_start_token_id"),
    ("bart", {"activation_function": "swish-ish"}, "activation_function"),
])
def test_hostile_configs_are_refused_before_allocation(name, changes, what, tmp_path):
    folder = tmp_path / name
    shutil.copytree(FAMILIES_DIR / name, folder)
    (folder / "config.json").write_text(json.dumps(fixture_config(name, **changes)))
    with pytest.raises(CheckpointError, match=what) as refused:
        load_hf_models(folder)
    assert str(tmp_path) not in str(refused.value)


def test_the_parameter_cap_counts_both_stacks(tmp_path, monkeypatch):
    """A cap above the encoder alone but below encoder + decoder refuses the folder before anything is built."""
    config = convert_config(fixture_config("bart"))
    decoder = convert_decoder_config(fixture_config("bart"), config)
    check_config(config, parameter_count(config))
    monkeypatch.setenv("HEADLIGHT_MAX_PARAMETERS", str(parameter_count(config) + parameter_count(decoder) - 1))
    with pytest.raises(CheckpointError, match="larger than this server runs"):
        load_hf_models(FAMILIES_DIR / "bart")
    monkeypatch.setenv("HEADLIGHT_MAX_PARAMETERS", str(parameter_count(config) + parameter_count(decoder)))
    assert load_hf_models(FAMILIES_DIR / "bart").decoder is not None


def test_a_checkpoint_without_its_decoder_is_refused(tmp_path):
    folder = tmp_path / "t5"
    shutil.copytree(FAMILIES_DIR / "t5", folder)
    weights = load_file(folder / "model.safetensors")
    save_file({k: v for k, v in weights.items() if not k.startswith("decoder.block.1.")}, folder / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"lacks \d+ tensors the model needs: decoder\.block\.1"):
        load_path(folder)
    assert convert_decoder_config(read_hf_config(FAMILIES_DIR / "t5-encoder"),
                                  convert_config(read_hf_config(FAMILIES_DIR / "t5-encoder"))) is None


def generating_folder(name: str, folder):
    """The fixture as ``*ForConditionalGeneration`` with an LM head of its own: T5 an ``lm_head.weight``, BART the
    shared table (no ``lm_head.weight``) and a ``final_logits_bias``, both random and large enough that each step's
    choice is clear."""
    rng = np.random.default_rng(21)

    def with_head(weights):
        vocab, width = weights["shared.weight"].shape
        if name == "t5":
            return {**weights, "lm_head.weight": rng.normal(0, 2.0, (vocab, width)).astype(np.float32)}
        return {**weights, "final_logits_bias": rng.normal(0, 2.0, (1, vocab)).astype(np.float32)}

    conditional_generation(name, folder, with_head)
    return load_path(folder, name=name)


@pytest.mark.parametrize("name", FAMILIES)
def test_an_encoder_decoder_writes_a_target_and_traces_it_teacher_forced(name, tmp_path):
    from encoder.generate import generate_ids, generate_text

    loaded = generating_folder(name, tmp_path / name)
    source = str(reference(name)["simple"]["text"])
    source_ids = loaded.tokenizer.encode(source).token_ids
    run = generate_ids(loaded, source_ids, 6, return_logits=True)
    assert len(run.ids) == 6
    np.testing.assert_array_equal(run.ids, run.logits.argmax(axis=-1))  # greedy: each token the argmax of its step
    # each step's logits are the LM head at its row of the decoder run once on the start token + what it wrote
    states = trace_text(loaded, source).hidden[-1]
    decoder_ids = np.concatenate([[loaded.decoder_start], run.ids[:-1]]).astype(np.int32)
    whole = loaded.decoder.forward_decoder(decoder_ids[None], states[None], logits=True)["logits"].numpy()[0]
    np.testing.assert_allclose(run.logits, whole, atol=1e-4)

    trace = generate_text(loaded, source, max_new_tokens=6)  # teacher-forced on the 6 tokens: 5 + the start
    np.testing.assert_array_equal(trace.decoder_token_ids, decoder_ids)
    assert trace.target == loaded.tokenizer.decode(run.ids) and trace.decoder_hidden.shape[1] == 6
    sampled = [generate_ids(loaded, source_ids, 4, temperature=5.0, seed=seed).ids for seed in (1, 1, 2)]
    np.testing.assert_array_equal(sampled[0], sampled[1])


def test_generation_stops_at_the_end_token_and_needs_an_lm_head(tmp_path):
    """LM-head rows swapped so that the model writes "▁The" then </s>: stopped there, its trace is trace_text's of
    the text it wrote ("The", which tokenizes back to "▁The </s>")."""
    from encoder.generate import generate_ids, generate_text

    loaded = generating_folder("t5", tmp_path / "t5")
    source_ids = loaded.tokenizer.encode("The cat sat.").token_ids
    folder, the = tmp_path / "t5", loaded.tokenizer.token_to_id("▁The")
    for step, wanted in enumerate((the, 1)):  # the first token: ▁The; the second: </s>
        chosen = int(generate_ids(load_path(folder), source_ids, 2).ids[step])
        weights = load_file(folder / "model.safetensors")
        weights["lm_head.weight"][[chosen, wanted]] = weights["lm_head.weight"][[wanted, chosen]]
        save_file(weights, folder / "model.safetensors")
    stopping = load_path(folder, name="t5")
    np.testing.assert_array_equal(generate_ids(stopping, source_ids, 5, stop_at_eos=True).ids, [the, 1])
    trace = generate_text(stopping, "The cat sat.", max_new_tokens=5, stop_at_eos=True)
    again = trace_text(stopping, "The cat sat.", target=trace.target)
    assert trace.target == "The" and again.decoder_tokens == trace.decoder_tokens == ("<pad>", "▁The")
    for field in ("cross_attention", "decoder_attention", "decoder_hidden", "attention", "hidden"):
        np.testing.assert_allclose(getattr(again, field), getattr(trace, field), atol=1e-6)
    with pytest.raises(InputError, match="has no language-model head"):
        generate_text(load_family("t5"), "The cat sat.")
    with pytest.raises(InputError, match="max_new_tokens"):
        generate_ids(loaded, source_ids, 10_000)


def test_transformers_generates_the_same_tokens(tmp_path):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from encoder.generate import generate_ids

    loaded = generating_folder("t5", tmp_path / "t5")
    model = transformers.T5ForConditionalGeneration.from_pretrained(tmp_path / "t5").eval()
    source_ids = loaded.tokenizer.encode("The cat sat on the mat.").token_ids
    with torch.no_grad():
        theirs = model.generate(torch.tensor(source_ids[None], dtype=torch.long), max_new_tokens=6, do_sample=False,
                                min_new_tokens=6)[0, 1:].numpy()
    np.testing.assert_array_equal(generate_ids(loaded, source_ids, 6).ids, theirs)


def test_umt5_encoder_decoder_reads_a_bias_table_in_every_layer_of_both_stacks(tmp_path):
    """umT5: each layer of each stack has its own table; with layer 1's a copy of layer 0's it is the T5 fixture."""
    folder = tmp_path / "umt5"
    shutil.copytree(FAMILIES_DIR / "t5", folder)
    (folder / "config.json").write_text(json.dumps(fixture_config("t5", model_type="umt5")))
    weights = load_file(folder / "model.safetensors")
    for stack in ("encoder", "decoder"):
        name = stack + ".block.{}.layer.0.SelfAttention.relative_attention_bias.weight"
        weights[name.format(1)] = weights[name.format(0)].copy()
    save_file(weights, folder / "model.safetensors")
    loaded = load_path(folder, name="umt5")
    assert loaded.decoder.model.config.positions.per_layer
    assert parameter_count(loaded.decoder.model.config) == loaded.decoder.model.count_params()
    expected = reference("t5")["unicode"]
    trace = trace_text(loaded, str(expected["text"]), target=str(expected["target"]))
    assert max(differences(trace, expected).values()) < TOLERANCE


@pytest.mark.slow
def test_hostile_encoder_decoders_are_refused_fast_and_small_in_a_fresh_process(tmp_path):
    """A decoder of 10,000 layers (config.json), and 90 decoder layers of width 60,000 over the fixture's few
    weights (the stored tensors): our error, in under a second and 50 MB (``measure_load``)."""
    cases = {"t5": {"num_decoder_layers": 10_000}, "bart": {"decoder_layers": 90, "decoder_ffn_dim": 60_000}}
    for name, changes in cases.items():
        folder = tmp_path / name
        shutil.copytree(FAMILIES_DIR / name, folder)
        (folder / "config.json").write_text(json.dumps(fixture_config(name, **changes)))
        result = measure_load(folder)
        print(f"{name} {changes}: {result['seconds'] * 1000:.1f} ms, +{result['growth_mb']:.1f} MB; "
              f"{result['outcome']}")
        assert result["outcome"].startswith("CheckpointError"), result
        assert result["seconds"] < MAX_SECONDS and result["growth_mb"] + result["slack_mb"] < MAX_GROWTH_MB, result


def test_t5_v1_0_decoder_has_a_relu_mlp_after_its_cross_attention():
    """T5 v1.0 (``feed_forward_proj`` "relu"): the decoder's ``layer.2`` is ``wi`` / ``wo``; counts as built."""
    from encoder.families import t5
    from encoder.model import TransformerEncoder

    hf = fixture_config("t5", feed_forward_proj="relu", architectures=["T5ForConditionalGeneration"])
    decoder = convert_decoder_config(hf, convert_config(hf))
    model = TransformerEncoder(decoder)
    assert decoder.block.mlp == "dense" and parameter_count(decoder) == model.count_params()
    names = [name for name, _, _ in t5.decoder_weight_ports(decoder, model)]
    assert names[-3:] == ["decoder.block.1.layer.2.DenseReluDense.wo.weight", "decoder.final_layer_norm.weight",
                          "lm_head.weight"]
    assert "decoder.block.0.layer.1.EncDecAttention.q.weight" in names


@pytest.mark.parametrize("name", FAMILIES)
def test_a_padded_batch_with_targets_gives_each_pair_its_own_trace(name):
    from encoder.trace import trace_batch

    loaded, cases = load_family(name), [reference(name)[case] for case in CASES]
    texts, targets = [str(case["text"]) for case in cases], [str(case["target"]) for case in cases]
    batched = trace_batch(loaded, texts, targets=[*targets[:2], None])
    for single, traced in zip((trace_text(loaded, t, target=g) for t, g in zip(texts[:2], targets)), batched):
        assert traced.decoder_tokens == single.decoder_tokens
        for field in ("attention", "cross_attention", "decoder_attention", "decoder_hidden"):  # float32 rounding
            np.testing.assert_allclose(getattr(traced, field), getattr(single, field), atol=TOLERANCE)
    assert not batched[2].is_encoder_decoder
    with pytest.raises(InputError, match="3 texts but 2 targets"):
        trace_batch(loaded, texts, targets=targets[:2])
    with pytest.raises(InputError, match="not an encoder-decoder"):
        trace_batch(load_family("t5-encoder"), texts, targets=targets)
