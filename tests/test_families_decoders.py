"""The decoder families (Llama, Mistral, Qwen2, Qwen3, Gemma 2, Gemma 3, Phi-3) against transformers' reference
(tests/fixtures/families/<name>/reference.npz): tokens, attention, every hidden state and the LM head's logits of
every case, the next-token outputs and the logit lens, causal and sliding-window masks, RoPE scaling, and the
configs we refuse."""

from __future__ import annotations

import json

import numpy as np
import pytest

from encoder.checkpoints import convert_config
from encoder.errors import CheckpointError
from encoder.limits import parameter_count
from encoder.model import TOP_K, TransformerEncoder
from encoder.positional import rope_frequencies
from encoder.trace import trace_text
from tests.support.families import FAMILIES_DIR, TOLERANCE, load_family, reference
from tests.support.floats import assert_close_f32

DECODERS = ("llama", "mistral", "qwen2", "qwen3", "gemma2", "gemma3", "phi3")
CASES = ("simple", "joined", "unicode")
WINDOWS = {"mistral": (8, 8), "gemma2": (6, 0), "gemma3": (6, 0)}  # each layer's causal window (0: full attention)


def fixture_config(name: str, **changes) -> dict:
    return {**json.loads((FAMILIES_DIR / name / "config.json").read_text()), **changes}


def forward(name: str, ids: np.ndarray) -> dict[str, np.ndarray]:
    """The model's outputs for one unpadded sequence, with the full logits (``forward_logits``)."""
    outputs = load_family(name).encoder.forward_logits(ids[None].astype(np.int32), np.zeros((1, len(ids)), np.int32))
    return {key: value.numpy()[0] for key, value in outputs.items()}


def assert_within(actual, expected, what: str) -> None:
    difference = float(np.abs(actual - expected).max())
    assert difference < TOLERANCE, f"{what} differs by {difference:.2e}"


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("name", DECODERS)
def test_decoder_matches_transformers(name, case):
    expected = reference(name)[case]
    trace = trace_text(load_family(name), str(expected["text"]))
    assert trace.tokens == tuple(str(t) for t in expected["tokens"])
    np.testing.assert_array_equal(trace.token_ids, expected["input_ids"])
    assert_within(trace.attention, expected["attention"], f"{name}/{case} attention")
    assert_within(trace.hidden, expected["hidden_states"], f"{name}/{case} hidden states")
    assert_within(trace.hidden[-1], expected["last_hidden_state"], f"{name}/{case} last hidden state")
    outputs = forward(name, trace.token_ids)
    assert_within(outputs["logits"], expected["logits"], f"{name}/{case} logits")
    np.testing.assert_array_equal(outputs["attention"], trace.attention)


@pytest.mark.parametrize("name", DECODERS)
def test_generated_text_runs_as_transformers_ran_it(name):
    """The generation case's whole forward (prompt + 10 generated tokens, no cache): the prompt's tokens, the
    attention, every hidden state and the logits, and each greedy step's choice is the top next token."""
    model, expected = load_family(name), reference(name)["gen"]
    prompt = model.tokenizer.encode(str(expected["prompt"]))
    np.testing.assert_array_equal(prompt.token_ids, expected["prompt_ids"])
    assert prompt.tokens == tuple(str(t) for t in expected["tokens"][: len(prompt.tokens)])
    outputs = forward(name, expected["input_ids"])
    assert_within(outputs["attention"], expected["attention"], f"{name}/gen attention")
    assert_within(outputs["hidden"], expected["hidden_states"], f"{name}/gen hidden states")
    assert_within(outputs["logits"], expected["logits"], f"{name}/gen logits")
    steps = len(prompt.token_ids) - 1 + np.arange(len(expected["generated_ids"]))
    np.testing.assert_array_equal(outputs["next_ids"][steps, 0], expected["generated_ids"])


@pytest.mark.parametrize("name", DECODERS)
def test_next_tokens_are_the_top_of_the_softmax_of_the_logits(name):
    expected = reference(name)["unicode"]
    outputs = forward(name, expected["input_ids"])
    logits = expected["logits"].astype(np.float64)  # (T, V)
    log_probs = logits - logits.max(-1, keepdims=True)
    log_probs -= np.log(np.exp(log_probs).sum(-1, keepdims=True))
    assert outputs["next_ids"].shape == outputs["next_probs"].shape == (len(logits), TOP_K)
    assert outputs["next_ids"].dtype == np.int32 and outputs["next_probs"].dtype == np.float32
    top = np.take_along_axis(log_probs, outputs["next_ids"].astype(np.int64), axis=-1)
    assert np.all(np.diff(top, axis=-1) <= 1e-6)  # most probable first
    assert np.all(top[:, -1] >= np.sort(log_probs, axis=-1)[:, -TOP_K] - 1e-6)  # and the K most probable
    assert_close_f32(outputs["next_probs"], np.exp(top), ulps=64)
    following = log_probs[np.arange(len(logits) - 1), expected["input_ids"][1:]]
    np.testing.assert_allclose(outputs["next_logprob"][:-1], following, atol=TOLERANCE, rtol=0)
    assert np.isnan(outputs["next_logprob"][-1])
    assert "logits" not in load_family(name).encoder.forward(expected["input_ids"][None].astype(np.int32),
                                                             np.zeros((1, len(logits)), np.int32))


@pytest.mark.parametrize("name", DECODERS)
def test_logit_lens_applies_the_final_norm_and_the_head(name):
    model, expected = load_family(name), reference(name)["simple"]
    outputs = forward(name, expected["input_ids"])
    ids, probs = model.encoder.lens_top_k(outputs["hidden"][-1], normed=True)
    np.testing.assert_array_equal(ids.numpy(), outputs["next_ids"])
    assert_close_f32(probs.numpy(), outputs["next_probs"], ulps=64)
    last = outputs["hidden"][-1]  # the last layer's residual stream is hidden[-1] before the final norm:
    lens = model.model.lens_logits(model.model.encoder_layers[-1](  # run the last layer again without it
        outputs["hidden"][-2][None], attention_mask=model.model.layer_context(len(last))[0],
        position_bias=model.model.layer_context(len(last))[1])[0]).numpy()[0]
    assert_within(lens, expected["logits"], f"{name} lens of the last layer")
    ids, _ = model.encoder.lens_top_k(outputs["hidden"][1], normed=False)
    logits = model.model.lens_logits(outputs["hidden"][1][None]).numpy()[0]
    np.testing.assert_array_equal(ids.numpy()[:, 0], logits.argmax(-1))


@pytest.mark.parametrize("name", DECODERS)
def test_causal_attention_is_exactly_zero_above_the_diagonal_and_outside_windows(name):
    expected = reference(name)["unicode"]
    trace = trace_text(load_family(name), str(expected["text"]))
    t = trace.num_tokens
    distance = np.arange(t)[:, None] - np.arange(t)[None, :]  # query - key
    windows = WINDOWS.get(name, (0, 0))
    for layer, window in enumerate(windows):
        visible = (distance >= 0) & ((distance < window) if window else True)
        np.testing.assert_array_equal(trace.visible[layer], visible)
        assert np.all(trace.attention[layer][:, ~visible] == 0.0)
        assert np.all(trace.attention[layer][:, visible] > 0.0)
    assert trace.logit_terms == {}  # decoders record no logit terms (a second product per layer)


@pytest.mark.parametrize("name", DECODERS)
def test_parameter_count_and_last_token_pooling(name):
    model = load_family(name)
    assert parameter_count(model.config) == model.model.count_params()
    expected = reference(name)["simple"]
    trace = trace_text(model, str(expected["text"]))
    assert_close_f32(trace.outputs["embedding"], trace.hidden[-1][-1])
    assert model.config.head.lm_head and model.config.pooling == "last"


def test_padded_batches_pool_each_rows_last_real_token():
    model = load_family("llama")
    ids = np.array([[5, 6, 7, 8], [5, 6, 0, 0]], np.int32)
    mask = np.array([[True] * 4, [True, True, False, False]])
    outputs = model.encoder.forward_padded(ids, np.zeros_like(ids), mask)
    hidden = outputs["hidden"].numpy()[:, -1]
    assert_close_f32(outputs["embedding"].numpy(), hidden[[0, 1], [3, 1]])


def test_unknown_rope_types_are_refused_by_name():
    for name in ("llama", "gemma3"):
        scaled = {"rope_type": "yarn", "rope_theta": 1e4, "factor": 4.0}
        parameters = scaled if name == "llama" else {"full_attention": scaled, "sliding_attention": scaled}
        with pytest.raises(CheckpointError, match="rope_type 'yarn'"):
            convert_config(fixture_config(name, rope_parameters=parameters))
    with pytest.raises(CheckpointError, match="rope_type 'longrope'"):
        convert_config(fixture_config("phi3", rope_parameters=None, rope_theta=1e4,
                                      rope_scaling={"type": "longrope", "short_factor": [1.0] * 4}))
    with pytest.raises(CheckpointError, match="asks for a rope_type") as refused:  # text of its own is not echoed
        convert_config(fixture_config("llama", rope_parameters={"rope_type": "<b>mine</b>", "rope_theta": 1e4}))
    assert "<b>" not in str(refused.value)


def test_key_value_heads_must_divide_the_heads():
    with pytest.raises(CheckpointError, match="num_key_value_heads must divide num_attention_heads"):
        convert_config(fixture_config("llama", num_key_value_heads=3))


def test_old_configs_give_the_same_model():
    """Hub configs of transformers 4 (``rope_theta`` + ``rope_scaling``, no ``layer_types``) map as transformers 5's
    do."""
    llama = fixture_config("llama", rope_theta=500000.0)
    del llama["rope_parameters"]
    assert convert_config(llama) == convert_config(fixture_config("llama"))
    qwen2 = {k: v for k, v in fixture_config("qwen2", rope_theta=1e6).items() if k not in ("layer_types",
                                                                                            "rope_parameters")}
    assert convert_config(qwen2) == convert_config(fixture_config("qwen2"))
    windowed = convert_config({**qwen2, "use_sliding_window": True, "sliding_window": 4, "max_window_layers": 1})
    assert windowed.attention.windows == (0, 4) and windowed.attention.window_kind == "causal"


def test_rope_scaling_types():
    """Linear scaling divides the frequencies by the factor; Llama 3's keeps high frequencies, divides low ones by
    the factor and interpolates between (transformers' ``_compute_llama3_parameters``)."""
    base = rope_frequencies(500_000.0, 64)
    assert_close_f32(rope_frequencies(500_000.0, 64, "linear", factor=4.0), base / np.float32(4.0), ulps=1)
    llama3 = rope_frequencies(500_000.0, 64, "llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                              original_max_positions=8192)
    wavelength = 2 * np.pi / base
    assert np.array_equal(llama3[wavelength < 8192 / 4], base[wavelength < 8192 / 4])
    assert_close_f32(llama3[wavelength > 8192], base[wavelength > 8192] / 8, ulps=1)
    medium = (wavelength >= 8192 / 4) & (wavelength <= 8192)
    assert medium.any() and np.all(llama3[medium] < base[medium]) and np.all(llama3[medium] > base[medium] / 8)
    config = convert_config(fixture_config("llama", rope_parameters={
        "rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
        "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}))
    assert (config.positions.rope_type, config.positions.factor, config.positions.original_max_positions) == (
        "llama3", 8.0, 8192)


def test_rope_frequencies_match_transformers():
    """Bit for bit the inverse frequencies transformers computes (default, linear, llama3), when it is installed."""
    torch = pytest.importorskip("torch")
    rope_utils = pytest.importorskip("transformers.modeling_rope_utils")
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

    scalings = {"default": {}, "linear": {"factor": 4.0},
                "llama3": {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                           "original_max_position_embeddings": 8192}}
    for rope_type, extra in scalings.items():
        config = LlamaConfig(hidden_size=2048, num_attention_heads=16, max_position_embeddings=131072,
                             rope_parameters={"rope_type": rope_type, "rope_theta": 500000.0, **extra})
        compute = (LlamaRotaryEmbedding.compute_default_rope_parameters if rope_type == "default"
                   else rope_utils.ROPE_INIT_FUNCTIONS[rope_type])
        expected, _ = compute(config, device=torch.device("cpu"))
        ours = rope_frequencies(500_000.0, 128, rope_type, **{
            "original_max_positions" if k == "original_max_position_embeddings" else k: v for k, v in extra.items()})
        np.testing.assert_array_equal(ours, expected.numpy())


def test_a_tied_head_is_the_token_embedding_and_an_untied_one_its_own():
    tied, untied = load_family("qwen2"), load_family("llama")
    assert tied.model.lm_head is None and tied.config.head.tie_embeddings
    assert untied.model.lm_head is not None and not untied.config.head.tie_embeddings
    assert TransformerEncoder(untied.config).count_params() == parameter_count(untied.config)


# Options the fixtures do not have, against transformers itself (a tiny random model saved and loaded back):
# the config.json as transformers 5 saves it, or rewritten in the older form (``rope_theta`` + ``rope_scaling``).
VARIANTS = {
    "llama-llama3-biases": ("llama", dict(
        attention_bias=True, mlp_bias=True, rope_parameters={
            "rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 64}), None),
    "mistral-linear": ("mistral", dict(sliding_window=5, rope_parameters={
        "rope_type": "linear", "rope_theta": 10000.0, "factor": 3.0}), None),
    "qwen2-windows": ("qwen2", dict(use_sliding_window=True, sliding_window=4, max_window_layers=1), None),
    "qwen3-old-config": ("qwen3", dict(head_dim=8, rope_parameters={
        "rope_type": "linear", "rope_theta": 1e6, "factor": 2.0}), {}),
    "phi3-partial-rotary": ("phi3", dict(sliding_window=5, rope_parameters={
        "rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.5}), None),
    "gemma2-softcaps": ("gemma2", dict(attn_logit_softcapping=5.0, final_logit_softcapping=2.0, sliding_window=4,
                                       query_pre_attn_scalar=12), None),
    "gemma3-old-config": ("gemma3_text", dict(sliding_window=4, sliding_window_pattern=2, rope_parameters={
        "full_attention": {"rope_type": "linear", "factor": 4.0, "rope_theta": 1e6},
        "sliding_attention": {"rope_type": "default", "rope_theta": 1e4}}), {"sliding_window_pattern": 2}),
}


def tiny_transformers_model(model_type: str, changes: dict, old: dict | None, folder):
    """A random transformers model of ``model_type`` (2 layers, 4 query / 2 key-value heads) saved in ``folder``;
    with ``old``, its config.json rewritten in the older form (``rope_theta`` + ``rope_scaling``, Gemma 3's
    ``rope_local_base_freq``, no ``layer_types``), ``old`` added."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    transformers.logging.set_verbosity_error()
    sizes = dict(vocab_size=120, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, max_position_embeddings=64, initializer_range=0.2, pad_token_id=0,
                 bos_token_id=1, eos_token_id=2)
    if model_type.startswith("gemma"):
        sizes.update(head_dim=16, query_pre_attn_scalar=16)
    config = transformers.AutoConfig.for_model(model_type, **{**sizes, **changes})
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(config, attn_implementation="eager").eval()
    with torch.no_grad():  # Gemma's norms start at w = 0 (factor 1): randomise them, as the fixtures do
        for name, parameter in model.named_parameters():
            if "norm" in name:
                parameter.add_(0.1 * torch.randn_like(parameter))
    model.save_pretrained(folder)
    if old is not None:
        path = folder / "config.json"
        saved = json.loads(path.read_text())
        saved.pop("layer_types", None)
        rope = saved.pop("rope_parameters")
        if "full_attention" in rope:  # Gemma 3: the sliding layers' base apart, the scaling for full layers
            saved["rope_local_base_freq"] = rope["sliding_attention"]["rope_theta"]
            rope = rope["full_attention"]
        saved["rope_theta"] = rope.pop("rope_theta")
        if rope["rope_type"] != "default":
            saved["rope_scaling"] = rope
        path.write_text(json.dumps({**saved, **old}))
    return model


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_options_beyond_the_fixtures_match_transformers(variant, tmp_path):
    torch = pytest.importorskip("torch")
    from encoder.checkpoints import load_hf_folder
    from encoder.compiled import CompiledEncoder

    model_type, changes, old = VARIANTS[variant]
    theirs = tiny_transformers_model(model_type, changes, old, tmp_path)
    ids = np.random.default_rng(1).integers(3, 120, size=(1, 40))
    with torch.no_grad():
        expected = theirs(torch.tensor(ids), output_attentions=True, output_hidden_states=True)
    model, _ = load_hf_folder(tmp_path)
    ours = CompiledEncoder(model).forward_logits(ids.astype(np.int32), np.zeros_like(ids, np.int32))
    attention = torch.stack(expected.attentions, dim=1)[0].numpy()
    assert_within(ours["attention"].numpy()[0], attention, f"{variant} attention")
    assert_within(ours["hidden"].numpy()[0], torch.stack(expected.hidden_states, dim=1)[0].numpy(),
                  f"{variant} hidden states")
    assert_within(ours["logits"].numpy()[0], expected.logits[0].numpy(), f"{variant} logits")
    windows = model.config.attention.windows
    if windows:  # the windows are the ones transformers applied: exactly zero outside them
        visible = model.visible_mask(40)
        np.testing.assert_array_equal(attention > 0, np.broadcast_to(visible[:, None], attention.shape))


def test_a_multimodal_gemma3_config_runs_its_language_model():
    text = {k: v for k, v in fixture_config("gemma3").items() if k not in ("architectures", "tie_word_embeddings")}
    multimodal = {"model_type": "gemma3", "architectures": ["Gemma3ForConditionalGeneration"], "text_config": text,
                  "vision_config": {"model_type": "siglip_vision_model"}, "tie_word_embeddings": True}
    assert convert_config(multimodal) == convert_config(fixture_config("gemma3"))
    with pytest.raises(CheckpointError, match="more layers"):  # the text_config's sizes are bounded too
        convert_config({**multimodal, "text_config": {**text, "num_hidden_layers": 10_000}})
    with pytest.raises(CheckpointError, match="bidirectional"):
        convert_config(fixture_config("gemma3", use_bidirectional_attention=True))


@pytest.mark.parametrize("name", ("gemma2", "mistral"))
def test_padded_batches_and_new_lengths_need_no_new_graph(name):
    from tests.support.families import check_padded_batch

    model = load_family(name)
    texts = [str(reference(name)[case]["text"]) for case in CASES]
    check_padded_batch(name, texts)
    forward(name, reference(name)["simple"]["input_ids"])
    model.encoder.lens_top_k(np.zeros((3, model.config.d_model), np.float32), normed=False)
    before = model.encoder.tracing_count()
    for length in (5, 9, 33):
        forward(name, np.arange(3, 3 + length))
        model.encoder.lens_top_k(np.zeros((length, model.config.d_model), np.float32), normed=True)
    assert model.encoder.tracing_count() == before


@pytest.mark.parametrize("name", ("gemma3", "qwen2"))
def test_one_layer_alone_and_perturbed_runs_give_the_whole_models_numbers(name):
    """Value zeroing's probe (one layer run alone) and the perturbed path (head mask, embedding noise) on a
    decoder: with nothing zeroed, masked or added they give the plain forward's numbers."""
    from encoder.probes import LayerProbe

    model, expected = load_family(name), reference(name)["unicode"]
    outputs = forward(name, expected["input_ids"])
    hidden = outputs["hidden"]  # (L + 1, T, D)
    probe = LayerProbe(model.model)
    for layer in range(model.config.num_layers):
        alone = probe.run(layer, hidden[layer][None], np.ones((1, len(hidden[0])), np.float32))
        if layer + 1 == model.config.num_layers:  # hidden[-1] is after the final norm
            alone = model.model.final_norm(alone).numpy()
        np.testing.assert_allclose(alone[0], hidden[layer + 1], atol=1e-5, rtol=0)
    ids = expected["input_ids"][None].astype(np.int32)
    perturbed = model.encoder.forward_perturbed(
        ids, np.zeros_like(ids), np.ones(ids.shape, bool), np.ones((1, model.config.num_layers,
                                                                    model.config.num_heads), np.float32),
        np.zeros((1, ids.shape[1], model.config.d_model), np.float32))
    np.testing.assert_allclose(perturbed["attention"].numpy()[0], outputs["attention"], atol=1e-6, rtol=0)
    np.testing.assert_array_equal(perturbed["next_ids"].numpy()[0][:, 0], outputs["next_ids"][:, 0])


@pytest.mark.parametrize("name", ("gemma3", "llama"))
def test_a_decoder_saved_in_headlights_format_reads_back_the_same(name, tmp_path):
    from encoder.saving import save_folder
    from encoder.sources import load_path

    model = load_family(name)
    save_folder(tmp_path, model.model, model.tokenizer.to_str())
    again = load_path(tmp_path, name=name)
    assert again.config == model.config
    text = str(reference(name)["unicode"]["text"])
    first, second = trace_text(model, text), trace_text(again, text)
    np.testing.assert_array_equal(second.attention, first.attention)
    np.testing.assert_array_equal(second.outputs["next_ids"], first.outputs["next_ids"])
