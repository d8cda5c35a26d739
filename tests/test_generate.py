"""Generation against transformers' ``generate`` (each decoder fixture's ``gen`` case): the same greedy tokens, each
step's logits within 1e-5, the final trace's attention within 1e-5, and each cached step's attention equal to the
final trace's row; sampling is seeded and its limits behave; bad settings are refused; generated traces save."""

from __future__ import annotations

import numpy as np
import pytest

from encoder.errors import InputError
from encoder.generate import (
    choose,
    continued_words,
    end_of_sequence_ids,
    generate_ids,
    generate_text,
    top_candidates,
)
from encoder.trace_io import trace_from_json, trace_from_npz, trace_to_json, trace_to_npz
from tests.support.families import TOLERANCE, load_family, reference
from tests.support.floats import assert_close_f32
from tests.support.traces import assert_same_trace

DECODERS = ["llama", "mistral", "qwen2", "qwen3", "gemma2", "gemma3", "phi3"]
STEPS = 10  # the fixtures' gen cases: 10 greedy tokens, no stop at EOS


def expected_generation(name: str) -> dict[str, np.ndarray]:
    return reference(name)["gen"]


@pytest.mark.parametrize("name", DECODERS)
def test_greedy_generation_matches_transformers_step_by_step(name):
    model, expected = load_family(name), expected_generation(name)
    prompt_ids = expected["prompt_ids"].astype(np.int32)
    run = generate_ids(model, prompt_ids, STEPS, return_logits=True, return_attention=True)
    np.testing.assert_array_equal(run.ids, expected["generated_ids"])
    assert np.abs(run.logits - expected["step_logits"]).max() < TOLERANCE
    # the trace of prompt + continuation: tokens, attention and logits of transformers' forward of that sequence
    trace = generate_text(model, str(expected["prompt"]), STEPS)
    np.testing.assert_array_equal(trace.token_ids, expected["input_ids"])
    assert trace.tokens[:len(prompt_ids)] == tuple(str(t) for t in expected["tokens"][:len(prompt_ids)])
    assert np.abs(trace.attention - expected["attention"]).max() < TOLERANCE
    assert np.abs(trace.hidden - expected["hidden_states"]).max() < TOLERANCE
    prompt = len(prompt_ids)
    assert trace.generated.tolist() == [False] * prompt + [True] * STEPS
    # each cached step's query row is the final trace's row P - 1 + k, up to float32 rounding
    for k, row in enumerate(run.attention):
        assert row.shape == (trace.num_layers, trace.num_heads, prompt + k)
        assert_close_f32(row, trace.attention[:, :, prompt - 1 + k, :prompt + k], ulps=32, scale=1.0,
                         err_msg=f"{name} step {k}")
        assert not trace.attention[:, :, prompt - 1 + k, prompt + k:].any()  # later keys: exactly 0
    # greedy steps chose from the softmax of the logits: the trace's own candidates at those rows
    rows = slice(prompt - 1, prompt - 1 + STEPS)
    np.testing.assert_array_equal(trace.outputs["step_ids"], trace.outputs["next_ids"][rows])
    assert_close_f32(trace.outputs["step_probs"], trace.outputs["next_probs"][rows], ulps=64, scale=1.0)
    assert trace.outputs["step_ids"][:, 0].tolist() == run.ids.tolist()
    np.testing.assert_array_equal(trace.vocab_pieces(trace.outputs["step_ids"][:, 0]),
                                  np.asarray(trace.tokens[prompt:], dtype=object))


def test_generation_compiles_once_for_every_prompt_and_step():
    model = load_family("llama")
    generate_ids(model, [model.config.vocab_size - 1, 5, 6], 3)
    before = model.encoder.tracing_count()
    generate_ids(model, [7, 8, 9, 10, 11], 6)
    generate_text(model, "The cat sat on the mat.", 4)
    assert model.encoder.tracing_count() == before


# --- sampling --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def llama():
    return load_family("llama")


@pytest.fixture(scope="module")
def prompt_ids():
    return expected_generation("llama")["prompt_ids"].astype(np.int32)


def test_the_same_seed_samples_the_same_tokens_and_other_seeds_differ(llama, prompt_ids):
    first = generate_ids(llama, prompt_ids, 8, temperature=3.0, seed=11)
    again = generate_ids(llama, prompt_ids, 8, temperature=3.0, seed=11)
    np.testing.assert_array_equal(first.ids, again.ids)
    others = [generate_ids(llama, prompt_ids, 8, temperature=3.0, seed=seed).ids for seed in (12, 13, 14)]
    assert any(not np.array_equal(first.ids, ids) for ids in others)  # a flat distribution: another path


def test_top_k_one_and_a_tiny_top_p_are_greedy(llama, prompt_ids):
    greedy = expected_generation("llama")["generated_ids"]
    np.testing.assert_array_equal(generate_ids(llama, prompt_ids, STEPS, temperature=2.0, top_k=1, seed=1).ids,
                                  greedy)
    np.testing.assert_array_equal(generate_ids(llama, prompt_ids, STEPS, temperature=2.0, top_p=1e-6, seed=2).ids,
                                  greedy)


def test_sampled_steps_keep_the_distribution_they_sampled_from(llama, prompt_ids):
    run = generate_ids(llama, prompt_ids, 5, temperature=0.7, top_k=50, seed=3, return_logits=True)
    for k in range(5):
        scaled = run.logits[k].astype(np.float64) / 0.7
        probs = np.exp(scaled - scaled.max())
        top = np.sort(probs)[::-1][:50]
        expected = top[:10] / top.sum()
        assert_close_f32(run.step_probs[k], expected, ulps=16, scale=1.0)
        assert run.ids[k] in np.argsort(-probs)[:50]  # sampled among the top 50
    trace = generate_text(llama, "Once upon a time", 5, temperature=0.7, top_k=50, seed=3)
    assert trace.outputs["step_probs"].shape == (5, 10) and trace.generated.sum() == 5


def test_choose_keeps_the_nucleus_and_the_top_k():
    logits = np.log(np.array([0.1, 0.5, 0.05, 0.3, 0.05])).astype(np.float32)
    rng = np.random.default_rng(0)
    seen = {choose(logits, 1.0, 0, 0.7, rng)[0] for _ in range(200)}
    assert seen == {1, 3}  # 0.5 alone is below 0.7; 0.5 + 0.3 reaches it
    token, ids, probs = choose(logits, 1.0, 2, 1.0, rng)
    assert token in (1, 3) and ids[:2].tolist() == [1, 3]
    assert probs[:2].tolist() == pytest.approx([0.5 / 0.8, 0.3 / 0.8]) and probs[2:].tolist() == [0.0] * 3
    token, ids, probs = choose(logits, 0.0, 0, 1.0, rng)
    assert token == 1 and ids.tolist() == [1, 3, 0, 2, 4]  # equal probabilities: the lower id first


def test_top_candidates_are_sorted_with_ties_by_id():
    probs = np.array([0.1, 0.3, 0.1, 0.3, 0.2])
    ids, values = top_candidates(probs, 4)
    assert ids.tolist() == [1, 3, 4, 0] and values.dtype == np.float32


# --- limits ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("count", [0, -1, 1.5, True, "3", 54, 10**9])
def test_max_new_tokens_is_a_whole_number_within_the_models_positions(llama, prompt_ids, count):
    with pytest.raises(InputError, match="max_new_tokens"):  # 11 prompt tokens of 64 positions: 53 at most
        generate_ids(llama, prompt_ids, count)


def test_the_longest_continuation_fills_the_positions(llama, prompt_ids):
    run = generate_ids(llama, prompt_ids, 64 - len(prompt_ids))
    assert len(run.ids) == 53


@pytest.mark.parametrize(("setting", "match"), [
    ({"temperature": -0.5}, "temperature"), ({"temperature": float("nan")}, "temperature"),
    ({"temperature": 1e9}, "temperature"), ({"temperature": "hot"}, "temperature"),
    ({"top_k": -1}, "top_k"), ({"top_k": 2.5}, "top_k"), ({"top_p": 0.0}, "top_p"), ({"top_p": 1.5}, "top_p"),
    ({"seed": 1.5}, "seed"),
])
def test_sampling_settings_out_of_range_are_refused(llama, prompt_ids, setting, match):
    with pytest.raises(InputError, match=match):
        generate_ids(llama, prompt_ids, 2, **setting)


def test_a_model_without_an_lm_head_is_refused(minilm):
    with pytest.raises(InputError, match="language-model head"):
        generate_text(minilm, "The cat sat.", 3)


@pytest.mark.parametrize("prompt", ["", "   \n"])
def test_an_empty_prompt_is_refused_as_trace_text_refuses_it(llama, prompt):
    with pytest.raises(InputError):
        generate_text(llama, prompt, 3)


def test_prompt_ids_outside_the_vocabulary_are_refused(llama):
    with pytest.raises(InputError, match="token ids"):
        generate_ids(llama, [1, llama.config.vocab_size], 2)
    with pytest.raises(InputError, match="token ids"):
        generate_ids(llama, [], 2)


def test_generated_pieces_continue_the_prompts_words():
    words = np.array([-1, 0, 1, 1], np.int32)  # <s> ▁The ▁ca t
    pieces = ("s", "▁on", "▁the", "</s>", "▁mat")
    special = np.array([False, False, False, True, False])
    assert continued_words(words, pieces, special, "metaspace").tolist() == [-1, 0, 1, 1, 1, 2, 3, -1, 4]
    assert continued_words(words, ("Ġon", "ward"), np.zeros(2, bool), "bytelevel").tolist()[4:] == [2, 2]
    assert continued_words(words, ("on", "##ward"), np.zeros(2, bool), "wordpiece").tolist()[4:] == [2, 2]
    assert continued_words(None, pieces, special, "metaspace") is None


def test_the_end_of_sequence_ids_come_from_the_folder():
    assert end_of_sequence_ids(load_family("llama")) == {1496}
    assert end_of_sequence_ids(load_family("gemma2")) == {1}


# --- trace files -----------------------------------------------------------------------------------------------


def test_a_generated_trace_round_trips_through_npz_and_json(llama, tmp_path):
    trace = generate_text(llama, "The weather today is", 4, temperature=1.0, seed=5)
    assert np.isnan(trace.outputs["next_logprob"][-1])
    assert trace.vocab_ids is not None and trace.key_value_heads == 2
    for back in (trace_from_npz(trace_to_npz(trace)), trace_from_json(trace_to_json(trace)),
                 type(trace).load(trace.save(tmp_path / "generated.npz"))):
        assert_same_trace(back, trace)
        assert back.generated.sum() == 4
        assert back.vocab_text(back.outputs["step_ids"]).shape == (4, 10)
    assert trace.text.startswith("The weather today is") and len(trace.text) > len("The weather today is")
    assert trace.words.shape == (trace.num_tokens,) and (trace.words[trace.generated] >= 0).all()
    assert not trace.special[trace.generated].any()


# --- the cached steps of other position schemes ----------------------------------------------------------------


def test_cached_steps_of_a_learned_position_table_equal_the_full_forward():
    """A GPT-2-like decoder (learned absolute positions, LayerNorm, a tied LM head): each step reads its own row of
    the table (``start``), and its logits and attention equal the full forward pass's at that position."""
    import keras

    from encoder.compiled import CompiledEncoder
    from encoder.config import AbsolutePositions, Attention, Block, Embeddings, EncoderConfig, Head
    from encoder.model import TransformerEncoder

    keras.utils.set_random_seed(4)
    config = EncoderConfig(num_layers=2, d_model=16, max_positions=32, embeddings=Embeddings(60, scale=False),
                           attention=Attention(4, causal=True), positions=AbsolutePositions(table="learned"),
                           block=Block(32, activation="gelu_new", placement="pre", final_norm=True),
                           head=Head(lm_head=True, tie_embeddings=True), dropout=0.0)
    encoder = CompiledEncoder(TransformerEncoder(config))
    ids = np.random.default_rng(4).integers(0, 60, (1, 12)).astype(np.int32)
    full = encoder.forward_logits(ids, np.zeros_like(ids))
    logits, attention = full["logits"].numpy()[0], full["attention"].numpy()[0]
    keys, values = encoder.empty_cache()
    step = encoder.extend(ids[:, :5], np.int32(0), keys, values)
    for position in range(4, 12):
        assert_close_f32(step["logits"].numpy()[0], logits[position], ulps=64)
        assert_close_f32(step["attention"].numpy()[0], attention[:, :, position, :position + 1], ulps=32, scale=1.0)
        if position < 11:
            step = encoder.extend(ids[:, position + 1:position + 2], np.int32(position + 1), step["keys"],
                                  step["values"])


def test_stop_at_eos_stops_after_the_folders_end_token(tmp_path):
    """A copy of the llama fixture whose generation_config.json names the 4th greedy token as its end: generation
    stops right after writing it (and only when asked)."""
    import json
    import shutil

    from encoder.sources import load_path
    from tests.support.families import FAMILIES_DIR

    expected = expected_generation("llama")
    folder = shutil.copytree(FAMILIES_DIR / "llama", tmp_path / "llama")
    settings = json.loads((folder / "generation_config.json").read_text())
    settings["eos_token_id"] = [int(expected["generated_ids"][3]), 1496]
    (folder / "generation_config.json").write_text(json.dumps(settings))
    model = load_path(folder, name="llama-copy")
    prompt = expected["prompt_ids"].astype(np.int32)
    stopped = generate_ids(model, prompt, STEPS, stop_at_eos=True)
    np.testing.assert_array_equal(stopped.ids, expected["generated_ids"][:4])
    assert stopped.step_ids.shape == (4, 10)
    assert len(generate_ids(model, prompt, STEPS).ids) == STEPS
    trace = generate_text(model, str(expected["prompt"]), STEPS, stop_at_eos=True)
    assert trace.generated.sum() == 4 and trace.num_tokens == len(prompt) + 4
