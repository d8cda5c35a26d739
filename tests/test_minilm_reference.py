"""MiniLM against an independent implementation (Hugging Face transformers, PyTorch): the golden numeric test."""

import numpy as np
import pytest

from encoder.trace import trace_batch, trace_text

CASES = ["simple", "pair", "multilingual"]


def _inputs(reference, case):
    pair = str(reference[f"{case}/pair"])
    return str(reference[f"{case}/text"]), (pair or None)


@pytest.mark.parametrize("case", CASES)
def test_tokens_ids_and_segments_match_the_reference(minilm, reference, case):
    trace = trace_text(minilm, *_inputs(reference, case))
    assert list(trace.tokens) == [str(t) for t in reference[f"{case}/tokens"]]
    np.testing.assert_array_equal(trace.token_ids, reference[f"{case}/input_ids"])
    np.testing.assert_array_equal(trace.segment_ids, reference[f"{case}/token_type_ids"])


@pytest.mark.parametrize("case", CASES)
def test_attention_and_last_hidden_state_match_within_1e4(minilm, reference, case):
    trace = trace_text(minilm, *_inputs(reference, case))
    expected = reference[f"{case}/attention"]
    assert trace.attention.shape == expected.shape == (6, 12, len(trace.tokens), len(trace.tokens))
    np.testing.assert_allclose(trace.attention, expected, atol=1e-4, rtol=0)
    np.testing.assert_allclose(trace.hidden[-1], reference[f"{case}/last_hidden_state"], atol=1e-4, rtol=0)


def test_pair_case_really_has_two_segments(minilm, reference):
    trace = trace_text(minilm, *_inputs(reference, "pair"))
    assert trace.is_pair and set(np.unique(trace.segment_ids)) == {0, 1}
    assert trace.tokens.count("[SEP]") == 2


def test_batched_traces_match_the_reference_too(minilm, reference):
    inputs = [_inputs(reference, case) for case in CASES]
    traces = trace_batch(minilm, [t for t, _ in inputs], [p for _, p in inputs])
    for case, trace in zip(CASES, traces):
        np.testing.assert_allclose(trace.attention, reference[f"{case}/attention"], atol=1e-4, rtol=0)


def test_sentence_embedding_is_mean_pooled_and_normalised(minilm, reference):
    trace = trace_text(minilm, *_inputs(reference, "simple"))
    pooled = reference["simple/last_hidden_state"].mean(axis=0)
    np.testing.assert_allclose(trace.outputs["embedding"], pooled / np.linalg.norm(pooled), atol=1e-5)
