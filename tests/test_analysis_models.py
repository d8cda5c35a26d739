"""Analyses on real model output: MiniLM traces, corpus batches, and a diff of two models sharing a tokenizer."""

import math

import numpy as np
import pytest

from analysis import (
    attention_flow,
    attention_rollout,
    corpus_head_report,
    diff_traces,
    head_divergence,
    head_report,
    iter_traces,
    residual_attention,
)
from encoder.sources import load_path
from encoder.trace import trace_text
from tests.support.models import write_tiny_bert_folder
from tests.test_analysis import dense_graph, edmonds_karp

SENTENCES = [
    "The cat sat on the mat.",
    "Attention heads, it turns out, often look at the separator.",
    "Short one.",
    "A somewhat longer sentence with a few more words, and a comma or two, to vary the length.",
    "Why?",
]


def test_report_card_of_minilm_is_in_range(minilm):
    trace = trace_text(minilm, SENTENCES[1])
    report = head_report(trace)
    t = trace.num_tokens
    assert (report["entropy"] >= 0).all() and (report["entropy"] <= math.log(t) + 1e-6).all()
    for name in ("cls", "sep", "punctuation", "self", "previous", "next"):
        assert (report[name] >= -1e-7).all() and (report[name] <= 1 + 1e-6).all(), name
    assert (report["distance"] <= t - 1).all()
    # cls + sep + punctuation + the rest of the keys = 1 for every query, so the three never exceed 1 together.
    assert (report["cls"] + report["sep"] + report["punctuation"] <= 1 + 1e-6).all()
    assert report["previous"].max() > 0.5  # MiniLM has previous-token heads (Clark et al. found them in BERT)


def test_corpus_report_of_batched_traces_equals_one_by_one(minilm):
    batched = corpus_head_report(iter_traces(minilm, SENTENCES, batch_size=2), total=len(SENTENCES))
    alone = [trace_text(minilm, s) for s in SENTENCES]
    expected = corpus_head_report(alone)
    assert batched.num_texts == 5 and batched.num_queries == sum(t.num_tokens for t in alone)
    for name in batched.statistics:
        np.testing.assert_allclose(batched[name], expected[name], atol=1e-6, err_msg=name)
    np.testing.assert_allclose(batched.distance, expected.distance, atol=1e-6)


def test_iter_traces_truncates_and_checks_batch_size(minilm):
    traces = list(iter_traces(minilm, [" ".join(["word"] * 300)], max_tokens=40))
    assert traces[0].num_tokens == 40 and traces[0].truncated
    with pytest.raises(ValueError, match="at least 1"):
        list(iter_traces(minilm, SENTENCES, batch_size=0))


def test_flow_and_rollout_of_minilm(minilm):
    trace = trace_text(minilm, "The cat sat on the mat.")
    flow = attention_flow(trace.attention)
    t = trace.num_tokens
    graph = dense_graph(residual_attention(trace.attention))
    for i, j in [(0, 0), (2, 2), (3, 1), (t - 1, 4)]:
        assert flow[i, j] == pytest.approx(edmonds_karp(graph, j, 6 * t + i), abs=1e-10)
    rollout = attention_rollout(trace_text(minilm, " ".join(["word"] * 600)).attention)
    assert rollout.shape == (6, 512, 512)
    np.testing.assert_allclose(rollout.sum(-1), 1.0, atol=1e-9)


def test_diff_of_two_models_sharing_a_tokenizer(tmp_path):
    first = load_path(write_tiny_bert_folder(tmp_path / "a", seed=0))
    second = load_path(write_tiny_bert_folder(tmp_path / "b", seed=1))
    a, b = trace_text(first, "the cat sat on the mat ."), trace_text(second, "the cat sat on the mat .")
    diff = diff_traces(a, b, "seed 0", "seed 1")
    np.testing.assert_array_equal(diff.difference, b.attention - a.attention)
    np.testing.assert_array_equal(diff.divergence, head_divergence(a.attention, b.attention))
    assert (diff.divergence > 0).all() and diff.ranking().shape == (4, 2)
    assert (diff_traces(a, a).divergence == 0).all()
