"""Generation replayed (``analysis.steps``): a causal trace cut to its first tokens is the trace of those tokens
alone, checked against the model itself."""

from __future__ import annotations

import numpy as np
import pytest

from analysis.steps import generation_steps, is_causal, prompt_length, step_trace, trace_prefix
from encoder.errors import AnalysisError
from tests.support.floats import assert_close_f32
from tests.support.traces import synthetic_trace

CAUSAL = ["gpt2", "llama", "mistral", "gemma2"]


def _assert_same_trace(cut, fresh) -> None:
    assert cut.tokens == fresh.tokens
    np.testing.assert_array_equal(cut.token_ids, fresh.token_ids)
    np.testing.assert_array_equal(cut.visible, fresh.visible)
    assert_close_f32(cut.attention, fresh.attention, ulps=16)
    assert_close_f32(cut.hidden, fresh.hidden, ulps=64)
    assert_close_f32(cut.positional, fresh.positional)
    if "next_ids" in fresh.outputs:
        np.testing.assert_array_equal(cut.outputs["next_ids"][:, 0], fresh.outputs["next_ids"][:, 0])  # top token
        assert_close_f32(cut.outputs["next_probs"][:, 0], fresh.outputs["next_probs"][:, 0], ulps=64)
    if "next_logprob" in fresh.outputs:
        assert np.isnan(cut.outputs["next_logprob"][-1]) and np.isnan(fresh.outputs["next_logprob"][-1])
        assert_close_f32(cut.outputs["next_logprob"][:-1], fresh.outputs["next_logprob"][:-1], ulps=64)


@pytest.mark.parametrize("name", CAUSAL)
def test_a_causal_trace_cut_to_its_first_tokens_is_the_trace_of_those_tokens(name):
    from encoder.trace import trace_text
    from tests.support.families import load_family

    model = load_family(name)
    whole = trace_text(model, "the cat sat on the mat because it was tired")
    fresh = trace_text(model, "the cat sat on the mat")
    cut = trace_prefix(whole, fresh.num_tokens)
    assert is_causal(whole) and cut.num_tokens < whole.num_tokens
    _assert_same_trace(cut, fresh)
    assert "embedding" not in cut.outputs  # pooled over the whole sequence: not the prefix's


def test_steps_count_from_the_prompt_and_cut_the_step_outputs():
    trace = synthetic_trace(["a", "b", "c", "d", "e"], visible="causal")
    assert (prompt_length(trace), generation_steps(trace)) == (5, 0)
    assert step_trace(trace, 0) is trace
    if not hasattr(trace, "generated"):
        pytest.skip("EncoderTrace has no generated mask yet")
    generated = np.array([False, False, True, True, True])
    outputs = {"step_ids": np.arange(30, dtype=np.int32).reshape(3, 10),
               "step_probs": np.full((3, 10), 0.1, np.float32),
               "next_logprob": np.array([-1.0, -2.0, -3.0, -4.0, np.nan], np.float32)}
    trace = trace.replace(generated=generated, outputs=outputs)
    assert (prompt_length(trace), generation_steps(trace)) == (2, 3)
    first = step_trace(trace, 1)
    assert first.tokens == ("a", "b", "c") and first.generated.tolist() == [False, False, True]
    np.testing.assert_array_equal(first.outputs["step_ids"], outputs["step_ids"][:1])
    assert first.outputs["next_logprob"][:2].tolist() == [-1.0, -2.0] and np.isnan(first.outputs["next_logprob"][2])
    assert step_trace(trace, 0).outputs["step_ids"].shape == (0, 10)
    assert step_trace(trace, 3) is trace


def test_only_causal_traces_and_real_lengths_are_cut():
    with pytest.raises(AnalysisError, match="causal"):
        trace_prefix(synthetic_trace(["[CLS]", "a", "[SEP]"]), 2)
    causal = synthetic_trace(["a", "b", "c"], visible="causal")
    for bad in (0, 4, -1, 1.5, True, "2"):
        with pytest.raises(AnalysisError, match="between 1 and 3"):
            trace_prefix(causal, bad)
    with pytest.raises(AnalysisError, match="steps 0 to 0"):
        step_trace(causal, 1)



@pytest.mark.parametrize("name", ["llama", "gemma3"])
def test_each_step_of_a_generation_is_the_shorter_generation(name):
    """Step k of a greedy generation of 6 tokens is what generating k tokens gives: tokens, mask, attention,
    hidden states and the candidates of each step."""
    from encoder.generate import generate_text
    from tests.support.families import load_family

    model = load_family(name)
    whole = generate_text(model, "Once upon a time", max_new_tokens=6)
    assert generation_steps(whole) == 6
    for step in (1, 3, 5):
        fresh = generate_text(model, "Once upon a time", max_new_tokens=step)
        cut = step_trace(whole, step)
        _assert_same_trace(cut, fresh)
        np.testing.assert_array_equal(cut.generated, fresh.generated)
        np.testing.assert_array_equal(cut.outputs["step_ids"], fresh.outputs["step_ids"])
        assert_close_f32(cut.outputs["step_probs"], fresh.outputs["step_probs"], ulps=64)
    assert step_trace(whole, 0).generated.sum() == 0
