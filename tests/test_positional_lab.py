"""The positional lab: logit terms from the model, the position-vs-content share, and the lab's figures."""

from __future__ import annotations

import numpy as np

from analysis.words import merge_words, word_starts
from encoder.model import RELATIVE_MAX_DISTANCE
from encoder.positional import relative_position_buckets
from encoder.trace import trace_batch, trace_text
from tests.support.families import load_family

TEXT = "The cat sat on the mat because it was tired, and then it slept until the evening."


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(-1, keepdims=True))
    return shifted / shifted.sum(-1, keepdims=True)


def test_mpnet_terms_sum_to_the_logits_the_softmax_used():
    trace = trace_text(load_family("mpnet"), TEXT)
    assert set(trace.logit_terms) == {"content", "position"}
    content, position = trace.logit_terms["content"], trace.logit_terms["position"]
    assert content.shape == position.shape == trace.attention.shape
    np.testing.assert_array_equal(position, np.broadcast_to(position[:1], position.shape))  # every layer: one bias
    np.testing.assert_allclose(softmax(content + position), trace.attention, atol=1e-6, rtol=0)


def test_padded_batches_carry_the_terms_unpadded():
    loaded = load_family("mpnet")
    short, long = trace_batch(loaded, ["The cat sat.", TEXT])
    single = trace_text(loaded, "The cat sat.")
    for name in ("content", "position"):
        assert short.logit_terms[name].shape == short.attention.shape
        np.testing.assert_allclose(short.logit_terms[name], single.logit_terms[name], atol=1e-5)
    np.testing.assert_allclose(softmax(long.logit_terms["content"] + long.logit_terms["position"]), long.attention,
                               atol=1e-6, rtol=0)


def test_mpnet_position_scheme_is_the_bias_by_signed_distance():
    loaded = load_family("mpnet")
    scheme = loaded.position_scheme
    distances = scheme["distances"]
    assert distances[0] == -RELATIVE_MAX_DISTANCE and distances[-1] == RELATIVE_MAX_DISTANCE
    np.testing.assert_array_equal(scheme["buckets"], relative_position_buckets(distances))
    table = loaded.model.relative_attention_bias.embeddings.numpy()  # (32, H)
    np.testing.assert_array_equal(scheme["bias_by_distance"], table[scheme["buckets"]].T)
    assert scheme["bias_by_distance"].shape == (loaded.config.num_heads, 2 * RELATIVE_MAX_DISTANCE + 1)
    edges = scheme["bucket_edges"]
    assert np.all(np.diff(edges) > 0) and -0.5 in edges and 0.5 in edges  # 0 is a bucket of its own
    assert len(edges) == len(np.unique(scheme["buckets"])) - 1 == 30  # bucket 16 (after, distance 0) is never used
    trace = trace_text(loaded, TEXT)
    t = len(trace.tokens)
    index = np.arange(t)[None] - np.arange(t)[:, None] + RELATIVE_MAX_DISTANCE  # (T, T) key - query
    np.testing.assert_array_equal(trace.logit_terms["position"][0], scheme["bias_by_distance"][:, index])


def test_absolute_models_have_no_terms():
    trace = trace_text(load_family("roberta"), TEXT)
    assert trace.logit_terms == {} and trace.position_scheme == {}



def test_merged_words_average_the_terms_over_both_words_pieces():
    trace = trace_text(load_family("mpnet"), "Unbelievably, tokenization works.")
    merged = merge_words(trace)
    starts = np.append(word_starts(trace), trace.num_tokens)
    word = int(np.argmax(np.diff(starts)))  # a word of several pieces
    assert starts[word + 1] - starts[word] > 1
    pieces = slice(starts[word], starts[word + 1])
    for name, term in trace.logit_terms.items():
        assert merged.logit_terms[name].shape == merged.attention.shape
        expected = term[:, :, pieces, pieces].mean((-2, -1))
        np.testing.assert_allclose(merged.logit_terms[name][:, :, word, word], expected, rtol=1e-5, atol=1e-6)
