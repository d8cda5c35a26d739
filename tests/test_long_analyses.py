"""Analyses at any length (issue 22): the report card and rollout read a long trace's ``LazyAttention`` a layer
and a block of query rows at a time and give the numbers of the whole-array path (forced with ``lazy=True`` on a
short text, where both run)."""

from __future__ import annotations

import numpy as np
import pytest

from analysis.report import STATISTICS, head_report
from encoder.attention_store import LazyAttention
from encoder.trace import trace_text
from tests.support.families import load_family
from viz.registry import ANALYSES, length_limit

TEXT = "The quick brown fox, jumping over the lazy dog; then a small cat sleeps on the warm mat. " * 3


@pytest.fixture(scope="module", params=["llama", "modernbert"])
def lazy_trace(request):
    """A short text traced lazily (the long path) by a causal (llama) and a bidirectional (modernbert) fixture."""
    trace = trace_text(load_family(request.param), TEXT, lazy=True)
    assert isinstance(trace.attention, LazyAttention) and trace.num_tokens > 20
    return trace


def whole(trace):
    """The same trace with its attention as one (L, H, T, T) array (the short path)."""
    return trace.replace(attention=np.asarray(trace.attention))


def test_report_card_in_row_blocks_equals_the_whole_array(lazy_trace, monkeypatch):
    """Every statistic of every head, read in blocks of 5 query rows, equals the whole-array report within float32
    rounding of sums of up to T weights."""
    import encoder.attention_store as store

    monkeypatch.setattr(store, "ROW_BLOCK_BYTES", 4 * lazy_trace.num_heads * lazy_trace.num_tokens * 5)
    blocks, full = head_report(lazy_trace), head_report(whole(lazy_trace))
    assert blocks.num_queries == full.num_queries == lazy_trace.num_tokens
    for name in STATISTICS:
        np.testing.assert_allclose(blocks[name], full[name], rtol=1e-5, atol=1e-6, err_msg=name)
    assert not np.allclose(full["previous"], full["next"])  # the statistics differ: the comparison can fail


def test_report_card_runs_at_any_length_and_the_others_still_say_their_limit(lazy_trace):
    assert length_limit(ANALYSES["report"], lazy_trace) is None
    message = length_limit(ANALYSES["clusters"], lazy_trace)
    assert message is not None and "whole attention" in message  # a short trace made lazy: see test_long_limits


def test_report_card_runs_through_the_registry_on_a_long_trace(lazy_trace):
    from analysis.inputs import TraceInputs

    entry = ANALYSES["report"]
    result = entry.compute(TraceInputs(lazy_trace), {})
    (name, figure), = entry.figures(result, lazy_trace, {})
    assert name.startswith("report-") and np.asarray(figure.data[0].z).shape == (lazy_trace.num_layers,
                                                                                 lazy_trace.num_heads)


def test_rollout_rows_in_row_blocks_equal_the_full_rollout(lazy_trace, monkeypatch):
    """The query's and a pooled token's rows after every layer, a row vector times each layer's residual-mixed
    head-mean attention read in blocks of 3 rows, equal those rows of the (L, T, T) rollout within float64
    rounding of float32 weights; each sums to 1."""
    import encoder.attention_store as store
    from analysis.flow import RolloutRows, attention_rollout

    monkeypatch.setattr(store, "ROW_BLOCK_BYTES", 4 * lazy_trace.num_heads * lazy_trace.num_tokens * 3)
    tokens = [0, 7, lazy_trace.num_tokens - 1]
    for residual in (0.5, 0.2):
        full = attention_rollout(np.asarray(lazy_trace.attention), residual)
        rows = RolloutRows(lazy_trace.attention, residual)
        for layer in range(lazy_trace.num_layers):
            got = rows.after(layer, tokens)
            np.testing.assert_allclose(got, full[layer, tokens], rtol=1e-9, atol=1e-12)
            np.testing.assert_allclose(got.sum(axis=1), 1.0, atol=1e-9)
        assert not np.allclose(full[-1, -1], full[0, -1])  # the layers mix: the comparison can fail


def test_rollout_runs_through_the_registry_as_row_strips(lazy_trace):
    from analysis.flow import RolloutRows, attention_rollout
    from analysis.inputs import TraceInputs
    from analysis.pooled import pooled_row

    entry = ANALYSES["rollout"]
    assert length_limit(entry, lazy_trace) is None
    options = {"residual": 0.5, "query": 5}
    result = entry.compute(TraceInputs(lazy_trace), options)
    assert isinstance(result, RolloutRows)
    (name, figure), = entry.figures(result, lazy_trace, options)
    z = np.asarray(figure.data[0].z, np.float64)
    pooled = pooled_row(lazy_trace)  # llama: the last token (its LM head); modernbert: none
    shown = [5] if pooled is None else [5, pooled.index]
    full = attention_rollout(np.asarray(lazy_trace.attention))[-1, shown]
    assert name == "rollout" and z.shape == (len(shown), lazy_trace.num_tokens)
    np.testing.assert_allclose(z, full, rtol=1e-5, atol=1e-7)
    assert "not the token × token matrix" in figure.layout.title.subtitle.text
    rows, result_json = entry.rows(result, lazy_trace, options)
    assert len(rows) == len(shown) * lazy_trace.num_tokens and result_json["rows_of"] == shown


def test_a_cached_rollout_result_does_not_count_the_trace_store_again(lazy_trace):
    """The app's results cache (``encoder.budget.held_bytes``) does not count a long rollout as the trace's attention
    store it reads (the trace cache counts that); its kept rows are a few KB."""
    from analysis.flow import RolloutRows
    from encoder.budget import held_bytes

    rows = RolloutRows(lazy_trace.attention, 0.5)
    rows.after(1, [3])
    assert held_bytes(rows) == 0 < held_bytes(lazy_trace.attention)
