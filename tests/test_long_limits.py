"""Analyses that do not run at length (issue 22) say, through the registry (``viz.registry.length_limit``), what
length they are limited to on this model and their own reason; those that run at any length run."""

from __future__ import annotations

import pytest

from analysis.flow import MAX_FLOW_TOKENS
from analysis.value_zeroing import max_tokens
from encoder.attention_store import LazyAttention
from encoder.trace import trace_text
from tests.support.families import load_family
from tests.support.models import write_tiny_bert_folder
from viz.registry import ANALYSES, analysis_unavailable, length_limit, longest_whole

LAYERS, HEADS, WIDTH, TOKENS = 4, 32, 384, 800
# The analyses that name their own reason, and a phrase of it (the module's real bottleneck).
REASONS = {
    "flow": "max-flow problem for every token pair", "norm": "H × T × T vectors", "globenc": "T × T vectors",
    "alti": "T × T vectors", "value-zeroing": "re-runs every layer once per token", "clusters": "every pair of heads",
    "importance": "once per head", "ablation": "heads silenced", "noise": "noisy copies",
    "faithfulness": "once per token removed", "input-gradient": "backpropagates through every layer's whole attention",
    "integrated-gradients": "once per point on the path", "attention-gradient": "L × H × T × T",
    "similarity": "traces each text alone",
}


@pytest.fixture(scope="module")
def long_trace(tmp_path_factory):
    """800 tokens of a BERT folder of 4 layers x 32 heads, width 384 (random weights): 327 MB of attention, so
    ``trace_text`` keeps it lazily on its own; the longest whole trace of this shape is 724 tokens, and value
    zeroing's own bound at this width 615."""
    from encoder.sources import load_path

    folder = write_tiny_bert_folder(tmp_path_factory.mktemp("limits") / "bert", num_hidden_layers=LAYERS,
                                    num_attention_heads=HEADS, hidden_size=WIDTH, intermediate_size=64,
                                    max_position_embeddings=TOKENS)
    trace = trace_text(load_path(folder, name="bert"), "the cat sat on the mat . " * 200)
    assert isinstance(trace.attention, LazyAttention) and trace.num_tokens == TOKENS
    return folder, trace


def expected_limit(name: str) -> int:
    """The length each analysis is limited to on the fixture's model, from the bounds themselves."""
    whole = longest_whole(LAYERS, HEADS)
    own = {"flow": MAX_FLOW_TOKENS, "value-zeroing": max_tokens(LAYERS, WIDTH)}.get(name, whole)
    return min(own, whole)


def test_each_analysis_says_its_length_and_its_own_reason(long_trace):
    """Flow (32 tokens) and value zeroing (its work bound) name their own, smaller length; the others the longest
    trace whose whole attention is kept."""
    folder, trace = long_trace
    assert expected_limit("flow") < expected_limit("value-zeroing") < expected_limit("clusters") < TOKENS
    messages = {}
    for name, entry in ANALYSES.items():
        why = analysis_unavailable(entry, trace)  # what the app and the command line show
        if entry.any_length:
            assert length_limit(entry, trace) is None, name
            continue
        most = expected_limit(name)
        assert why == length_limit(entry, trace) and why.startswith(entry.label), name
        assert f"limited to {most:,} tokens on this model" in why and f"{TOKENS:,} tokens" in why, why
        assert f"Max tokens (--max-tokens) to {most:,} or fewer" in why and "Rollout" in why, why
        assert str(folder) not in why and "/" not in why, why  # no server path
        if name in REASONS:
            assert entry.length_reason and entry.length_reason in why and REASONS[name] in why, why
            messages[name] = why
    assert REASONS.keys() <= messages.keys()
    reasons = {ANALYSES[name].length_reason for name in REASONS}
    assert len(reasons) >= len(REASONS) - 2  # GlobEnc and ALTI share one, as do input and integrated gradients


def test_the_whole_attention_bound_names_the_bytes(long_trace):
    _, trace = long_trace
    why = length_limit(ANALYSES["clusters"], trace)
    gb = 4 * LAYERS * HEADS * TOKENS**2 / 2**30
    assert f"({LAYERS} layers × {HEADS} heads: 256 MB)" in why and f"({gb:,.1f} GB of attention)" in why
    assert "GB" not in length_limit(ANALYSES["flow"], trace)


def test_a_short_trace_kept_lazily_on_purpose_is_asked_to_be_traced_whole():
    """A few tokens made lazy by ``lazy=True`` are within every bound: the message says to trace them whole."""
    trace = trace_text(load_family("llama"), "the cat sat on the mat", lazy=True)
    for name in ("clusters", "flow", "value-zeroing"):
        why = length_limit(ANALYSES[name], trace)
        assert "lazy=False" in why and "limited to" not in why and ANALYSES[name].length_reason in why, why
