"""The positional lab at any length (issue 22): a long trace keeps no logit terms, so Position vs content and
Position by distance recompute them from its queries and keys (``analysis.positional.layer_terms``), a layer at a
time from sums (``layer_variances``, ``long_term_by_distance``). A short text traced lazily (the long path) gives
the numbers of the eager trace's recorded terms; thousands of tokens run through the registry within bounded
memory."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

import analysis.positional as lab
from analysis.inputs import TraceInputs
from encoder.attention_store import LazyAttention
from encoder.trace import trace_text
from tests.support.families import FAMILIES_DIR, load_family
from tests.support.floats import assert_close_f32
from viz.registry import ANALYSES, analysis_unavailable

TEXT = "The quick brown fox, jumping over the lazy dog; then a small cat sleeps on the warm mat. " * 3


def words(count: int) -> str:
    return " ".join(f"w{i % 97}" for i in range(count))


DECODERS = ("llama", "phi3", "mistral", "gemma3")  # rotary decoders: their short traces record no terms


def recording(family: str):
    """The decoder fixture ``family`` loaded afresh with its rotary logit rules recording the content and position
    terms (a decoder leaves them out: ``RotaryPositions.logit_terms``), so its eager trace holds the reference
    terms."""
    from encoder.sources import load_path

    model = load_path(FAMILIES_DIR / family, name=family)
    for layer in model.model.encoder_layers:
        layer.attention.logits.terms = True
    return model


def assert_same_lab_numbers(eager, lazy, ulps: float = 16) -> None:
    """Position vs content and Position by distance (every layer) of ``lazy`` equal ``eager``'s within ``ulps``
    float32 units of the largest variance or mean (the terms are float32 products of that size)."""
    assert isinstance(lazy.attention, LazyAttention) and not lazy.logit_terms and eager.logit_terms
    assert lazy.tokens == eager.tokens
    want, got = lab.position_share(eager), lab.position_share(lazy)
    scale = float(np.nanmax(want.content))
    for name in ("content", "position"):
        assert_close_f32(getattr(got, name), getattr(want, name), ulps, scale=scale, err_msg=name)
    assert_close_f32(got.share, want.share, ulps, scale=1.0, err_msg="share")
    assert np.all(want.position > 0) and not np.allclose(want.share, want.share.mean())  # a comparison that can fail
    for layer in range(eager.num_layers):
        want, got = lab.term_by_distance(eager, layer), lab.term_by_distance(lazy, layer)
        np.testing.assert_array_equal(got["distances"], want["distances"])
        np.testing.assert_array_equal(got["bucket_edges"], want["bucket_edges"])
        assert_close_f32(got["bias_by_distance"], want["bias_by_distance"], ulps, err_msg=f"layer {layer}")


@pytest.mark.parametrize("family", [*DECODERS, "modernbert", "t5-encoder", "mpnet"])
def test_a_lazy_trace_gives_the_eager_traces_lab_numbers(family, monkeypatch):
    """Rotary causal grouped-query heads (llama, phi3), causal windows (mistral), windowed layers with their own
    theta (gemma3; ModernBERT's symmetric ones), a relative bias (T5's encoder, MPNet): blocks
    of 5 query rows, so the kept moments move and the edges are summed cell by cell, as at 8,192 tokens."""
    monkeypatch.setattr(lab, "LONG_ROWS", 5)
    model = load_family(family)
    eager = trace_text(recording(family) if family in DECODERS else model, TEXT, lazy=False)
    assert_same_lab_numbers(eager, trace_text(model, TEXT, lazy=True))


def test_a_short_rotary_decoder_trace_says_why_it_has_no_terms_and_a_long_one_runs():
    model = load_family("llama")
    eager, lazy = trace_text(model, TEXT, lazy=False), trace_text(model, TEXT, lazy=True)
    for name in ("position-share", "position-by-distance"):
        why = analysis_unavailable(ANALYSES[name], eager)
        assert why and "rotary decoder" in why and "input embeddings" not in why
        assert analysis_unavailable(ANALYSES[name], lazy) is None


def test_an_absolute_model_still_refuses_a_long_trace_with_its_reason():
    trace = trace_text(load_family("gpt2"), TEXT, lazy=True)
    assert isinstance(trace.attention, LazyAttention)
    for name in ("position-share", "position-by-distance"):
        assert "input embeddings" in analysis_unavailable(ANALYSES[name], trace)


def small_model(positions, causal: bool, windows: tuple[int, ...] = ()):
    """A random 2-layer model (GPT-2's tokenizer, 4 heads sharing 2 key/value heads when causal) with 4,096
    positions and the position scheme ``positions``."""
    import keras

    from encoder.compiled import CompiledEncoder
    from encoder.config import Attention, Block, Embeddings, EncoderConfig
    from encoder.model import TransformerEncoder
    from encoder.sources import LoadedModel
    from encoder.tokenizer import TextTokenizer

    keras.utils.set_random_seed(22)
    config = EncoderConfig(num_layers=2, d_model=32, max_positions=4096, embeddings=Embeddings(1500, scale=False),
                           attention=Attention(4, key_value_heads=2 if causal else 0, causal=causal, windows=windows,
                                               window_kind="causal"),
                           positions=positions, block=Block(64, activation="gelu_new", placement="pre",
                                                            final_norm=True), dropout=0.0)
    tokenizer = TextTokenizer.from_folder(FAMILIES_DIR / "gpt2", config.max_positions)
    return LoadedModel("small", "a small random model", CompiledEncoder(TransformerEncoder(config)), tokenizer)


def rotary_decoder():
    """Causal, a global and a 64-token windowed layer with its own theta, rotary positions on half of each head's
    dimensions (``fraction``), recording their terms."""
    from encoder.config import RotaryPositions

    positions = RotaryPositions(theta=10_000.0, local_theta=1_000.0, fraction=0.5, logit_terms=True)
    return small_model(positions, True, (0, 64))


def relative_encoder():
    from encoder.config import RelativeBuckets

    return small_model(RelativeBuckets(table="none", buckets=32, max_distance=128), False)


def test_a_windowed_rotary_decoder_over_several_blocks_equals_its_eager_terms():
    """600 tokens: five blocks of ``LONG_ROWS`` rows, the window's kept moments sliding (keys enter and leave)."""
    model = rotary_decoder()
    text = words(700)
    eager = trace_text(model, text, max_tokens=600, lazy=False)
    assert eager.num_tokens == 600 and 4 * lab.LONG_ROWS < 600
    assert_same_lab_numbers(eager, trace_text(model, text, max_tokens=600, lazy=True), ulps=32)


@pytest.mark.parametrize("make", [rotary_decoder, relative_encoder])
def test_thousands_of_tokens_run_through_the_registry_in_bounded_memory(make):
    """3,000 tokens: no refusal; the NumPy memory the two analyses allocate stays under a tenth of one layer's
    (H, T, T) float32 (a layer's terms are O(T): queries and keys, blocks of ``LONG_ROWS`` rows)."""
    trace = trace_text(make(), words(3100), max_tokens=3000, lazy=True)
    assert trace.num_tokens == 3000 and isinstance(trace.attention, LazyAttention)
    one_layer = 4 * trace.num_heads * trace.num_tokens ** 2
    inputs = TraceInputs(trace)
    for name in ("position-share", "position-by-distance"):
        entry = ANALYSES[name]
        assert analysis_unavailable(entry, trace) is None, name
        tracemalloc.start()
        try:
            result = entry.compute(inputs, {"layer": 1})
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert peak < one_layer / 10, (name, peak, one_layer)
        (_, figure), = entry.figures(result, trace, {"layer": 1})
        assert figure.data, name
    done = []
    share = ANALYSES["position-share"].compute(TraceInputs(trace, on_progress=lambda what: lambda *step: done.append(
        (what, *step))), {})
    assert share.share.shape == (2, 4) and np.all((share.share >= 0) & (share.share <= 1))
    assert done == [("layers", 1, 2), ("layers", 2, 2)]  # the app's progress bar
    distance = ANALYSES["position-by-distance"].compute(inputs, {"layer": 1})
    if trace.attention.recipe.bias_table is not None:  # a relative bias: its mean by distance is the bias itself
        scheme = trace.position_scheme
        inside = np.isin(distance["distances"], scheme["distances"])
        expected = scheme["bias_by_distance"][:, np.searchsorted(scheme["distances"], distance["distances"][inside])]
        assert_close_f32(distance["bias_by_distance"][:, inside], expected, 1)
        assert len(distance["distances"]) == 2 * 3000 - 1
    else:  # causal, windowed layer 1: the distances -63 .. 0
        np.testing.assert_array_equal(distance["distances"], np.arange(-63, 1))
