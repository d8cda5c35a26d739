"""Long traces (issue 22): the attention kept as each layer's queries and keys (``encoder.attention_store``) and
computed on demand gives the eager trace's numbers, refuses whole copies at long lengths, keeps its pieces in the
byte budget, survives NPZ, and a 4,096-token trace stays far below the L x H x T x T bytes it would take."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from encoder.attention_store import PIECES, LazyAttention, LazyVisible, piece_limit
from encoder.errors import ExportError, InputError, LongTraceError
from encoder.trace import EncoderTrace, trace_text
from encoder.trace_io import trace_from_npz, trace_to_json, trace_to_npz
from tests.support.families import load_family
from tests.support.floats import assert_close_f32

ROOT = Path(__file__).resolve().parent.parent
WORDS = ("the", "quick", "brown", "fox", "jumps", "over", "the", "lazy", "dog", "while", "a", "small", "cat",
         "sleeps", "on", "the", "warm", "mat")


def long_text(words: int) -> str:
    return " ".join(WORDS[i % len(WORDS)] for i in range(words))


def assert_lazy_matches_eager(model, text: str, ulps: float) -> EncoderTrace:
    """The lazy trace of ``text`` against the eager one: every weight within ``ulps`` float32 units (of 1, the
    largest weight), the mask and tokens equal, the hidden states within rounding."""
    eager = trace_text(model, text, lazy=False)
    lazy = trace_text(model, text, lazy=True)
    assert isinstance(lazy.attention, LazyAttention) and isinstance(eager.attention, np.ndarray)
    assert lazy.attention.shape == eager.attention.shape and lazy.tokens == eager.tokens
    assert_close_f32(np.asarray(lazy.attention), eager.attention, ulps=ulps, scale=1.0)
    for layer in (0, lazy.num_layers - 1):  # a layer, a head and rows read alone give the same numbers
        assert_close_f32(lazy.attention[layer], eager.attention[layer], ulps=ulps, scale=1.0)
        assert_close_f32(lazy.attention[layer, 1, 3:9], eager.attention[layer, 1, 3:9], ulps=ulps, scale=1.0)
    if eager.visible is None:
        assert lazy.visible is None
    else:
        assert isinstance(lazy.visible, LazyVisible)
        np.testing.assert_array_equal(np.asarray(lazy.visible), eager.visible)
        hidden = ~np.broadcast_to(eager.visible[:, None], lazy.attention.shape)  # (L, H, T, T)
        np.testing.assert_array_equal(np.asarray(lazy.attention)[hidden], 0.0)
    np.testing.assert_allclose(lazy.hidden, eager.hidden, rtol=1e-5, atol=1e-5)
    assert lazy.logit_terms == {} and lazy.outputs.keys() == eager.outputs.keys()
    return lazy


def test_minilm_at_512_tokens_lazy_equals_eager_and_the_model_run_op_by_op():
    """At 512 tokens MiniLM's lazy trace is within 32 float32 units of 1 of the compiled eager trace (measured:
    2.7e-6, about 23 units: TensorFlow's graph rewrites round a few ops differently from the same ops run one by
    one), and equal to the model run op by op (measured: bit-identical)."""
    from encoder.sources import load_source

    model = load_source("minilm")
    lazy = assert_lazy_matches_eager(model, long_text(600), ulps=32)
    assert lazy.num_tokens == 512
    ids = lazy.token_ids[None]
    op_by_op = model.model(ids, lazy.segment_ids[None], training=False)["attention"].numpy()[0]  # (L, H, T, T)
    assert_close_f32(np.asarray(lazy.attention), op_by_op, ulps=1, scale=1.0)
    assert_close_f32(lazy.attention[4, 7, 200:260], op_by_op[4, 7, 200:260], ulps=1, scale=1.0)


@pytest.mark.parametrize("family", ["llama", "modernbert", "t5-encoder"])
def test_fixtures_lazy_equal_eager(family):
    """A decoder (causal, grouped-query heads, rotary), ModernBERT (windowed and global layers, rotary) and T5's
    encoder (a relative bias) at their 64 positions, the lazy path forced."""
    assert_lazy_matches_eager(load_family(family), long_text(80), ulps=32)


@pytest.mark.parametrize("family", ["llama", "qwen3"])
def test_a_long_decoders_lm_head_goes_a_block_of_positions_at_a_time(monkeypatch, family):
    """The LM head's outputs of the lazy path, 7 positions at a time (never all (T, V) logits), a tied head's
    (Qwen3's) 97 rows of the token embedding at a time (never its whole transposed copy), equal the eager trace's:
    the same candidates, their probabilities and each following token's log-probability within rounding, NaN at
    the last position only."""
    import encoder.model

    model = load_family(family)
    monkeypatch.setattr(encoder.model, "LM_ROW_BYTES", 4 * model.config.vocab_size * 7)
    monkeypatch.setattr(encoder.model, "VOCAB_ROW_BYTES", 4 * model.config.d_model * 97)
    assert (model.model.lm_head is None) == (family == "qwen3")
    eager = trace_text(model, long_text(80), lazy=False)
    lazy = trace_text(model, long_text(80), lazy=True)
    np.testing.assert_array_equal(lazy.outputs["next_ids"], eager.outputs["next_ids"])
    assert_close_f32(lazy.outputs["next_probs"], eager.outputs["next_probs"], ulps=32, scale=1.0)
    logprob, expected = lazy.outputs["next_logprob"], eager.outputs["next_logprob"]
    assert np.isnan(logprob[-1]) and not np.isnan(logprob[:-1]).any()
    np.testing.assert_allclose(logprob[:-1], expected[:-1], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("family", ["llama", "modernbert"])
def test_a_long_inputs_mlp_goes_a_block_of_positions_at_a_time(monkeypatch, family):
    """The lazy path's layers a few positions at a time: the embeddings' norm, each layer's norm, projections and
    rotary positions (5; the queries 5 at a time as the blocks reach them), then blocks of 7 queries and their
    residual sums, norms and MLP (never all (T, dff) intermediates): the hidden states and the attention equal the
    eager trace's within rounding (gated SwiGLU: Llama; GeGLU, post-attention: ModernBERT)."""
    import encoder.attention_store
    import encoder.block
    import encoder.model

    model = load_family(family)
    text = long_text(80)
    tokens = len(model.tokenizer.encode(text, None, None).token_ids)
    monkeypatch.setattr(encoder.attention_store, "ROW_BLOCK_BYTES", 4 * model.config.num_heads * tokens * 7)
    monkeypatch.setattr(encoder.block, "MLP_ROW_BYTES", 4 * 2 * model.config.block.dff * 7)
    for module in (encoder.block, encoder.model):  # the norms, projections and rotary positions: 5 positions
        monkeypatch.setattr(module, "PROJECTION_ROWS", 5)
    assert encoder.attention_store.block_rows(model.config.num_heads, tokens) == 7
    assert model.model.encoder_layers[0].chunk_rows(7) == 7 and tokens > 7 * 4
    assert_lazy_matches_eager(model, text, ulps=32)


def test_the_path_follows_the_bytes_and_the_tokens():
    """Up to 512 tokens a trace keeps today's array (whatever the model); beyond, when its attention is over
    256 MB; DeBERTa always whole."""
    from encoder.trace import traced_lazily

    llama = load_family("llama")  # 2 layers x 4 heads: 256 MB at 2,896 tokens
    assert not traced_lazily(llama, 512) and not traced_lazily(llama, 2800)
    assert traced_lazily(llama, 3000) and traced_lazily(llama, 64, lazy=True)
    assert not traced_lazily(load_family("deberta-v3"), 100_000)


def test_a_model_whose_attention_runs_whole_refuses_the_lazy_path():
    with pytest.raises(InputError, match="DeBERTa"):
        trace_text(load_family("deberta-v3"), "a short text", lazy=True)


def test_whole_copies_over_the_limit_are_refused_with_our_error(monkeypatch):
    """8 GB of attention (8 layers, 8 heads, 4,096 tokens) from 8 MB of queries and keys: the whole array says how
    much it would take; pieces within the limit (``HEADLIGHT_CACHE_MB`` / 2) are computed, larger ones refused."""
    from encoder.attention_store import AttentionRecipe

    rng = np.random.default_rng(0)
    queries = rng.normal(size=(8, 4096, 8, 16)).astype(np.float32)
    recipe = AttentionRecipe(scaling=0.25, softcap=0.0, causal=True, windows=np.zeros(8, np.int32),
                             window_kind="symmetric")
    store = LazyAttention.of_arrays(queries, queries[:, :, :2].copy(), recipe)  # 2 key/value heads
    assert store.shape == (8, 8, 4096, 4096)
    with pytest.raises(LongTraceError, match="4,096 tokens"):
        np.asarray(store)
    monkeypatch.setenv("HEADLIGHT_CACHE_MB", "64")  # pieces up to 32 MB
    with pytest.raises(LongTraceError, match=r"attention\[layer, head, rows\]"):
        store[3, 5]  # (4096, 4096): 64 MB
    with pytest.raises(LongTraceError):
        list(store)  # every layer
    rows = store[3, 5, 4000:]
    assert rows.shape == (96, 4096)
    assert_close_f32(rows.sum(axis=-1), np.ones(96), ulps=64)
    assert np.all(rows[0, 4001:] == 0.0)  # causal: later keys exactly 0


def test_the_lru_keeps_pieces_within_its_bytes(monkeypatch):
    trace = trace_text(load_family("modernbert"), long_text(80), lazy=True)
    monkeypatch.setenv("HEADLIGHT_CACHE_MB", "1")
    PIECES.clear()
    tokens = trace.num_tokens
    first = trace.attention[0, 0, 0:40]
    assert not first.flags.writeable  # the kept piece itself, read-only
    assert trace.attention[0, 0, 0:40] is first or np.shares_memory(trace.attention[0, 0, 0:40], first)
    assert PIECES.get((trace.attention.store_id, 0, 0, 0, 40)) is not None
    whole = trace.attention[1, 2]
    assert np.shares_memory(trace.attention[1, 2, 7], whole)  # a row of a kept head is read from it
    for layer in range(trace.num_layers):
        for head in range(trace.num_heads):
            trace.attention[layer, head, 0:40]
            assert PIECES.bytes <= piece_limit()
    assert PIECES.bytes >= 4 * 40 * tokens  # something is kept


def test_npz_round_trip_keeps_a_lazy_trace_lazy_and_json_refuses_it():
    trace = trace_text(load_family("t5-encoder"), long_text(80), lazy=True)
    back = trace_from_npz(trace_to_npz(trace))
    assert isinstance(back.attention, LazyAttention)
    for layer in range(trace.num_layers):  # each layer's queries and keys as the model gives them, in the file
        for part, stored in enumerate(back.attention.queries_keys.layer(layer)):
            np.testing.assert_array_equal(stored, trace.attention.queries_keys.layer(layer)[part])
    np.testing.assert_array_equal(np.asarray(back.attention), np.asarray(trace.attention))
    assert back.visible is None and trace.visible is None
    with pytest.raises(ExportError, match="NPZ"):
        trace_to_json(trace)
    causal = trace_text(load_family("llama"), long_text(80), lazy=True)
    again = trace_from_npz(trace_to_npz(causal))
    np.testing.assert_array_equal(np.asarray(again.visible), np.asarray(causal.visible))
    np.testing.assert_array_equal(again.attention[1, 3], causal.attention[1, 3])


@pytest.mark.parametrize("family", ["llama", "modernbert", "t5-encoder", "qwen3", "gemma3", "gpt2"])
def test_the_store_recomputes_the_queries_and_keys_the_forward_pass_multiplied(family):
    """A long trace keeps no queries or keys: each layer's are computed again from the trace's own hidden state of
    that layer's input (the layer's norm, projections, q/k norms, rotary positions on all T rows at once) and equal
    the ones the pass by rows handed over (measured: bit-identical); a few layers' are kept in the LRU.
    Rotary with grouped-query heads (Llama), windowed layers (ModernBERT), a relative bias (T5), q/k norms (Qwen3),
    sandwich norms (Gemma 3), a learned table (GPT-2)."""
    from encoder.attention_store import RecomputedQueriesKeys, block_rows

    model = load_family(family)
    trace = trace_text(model, long_text(80), lazy=True)
    store = trace.attention
    assert isinstance(store.queries_keys, RecomputedQueriesKeys) and store.kept_bytes == 0
    assert store.queries_keys.hidden is trace.hidden  # the trace's own array, no copy
    given = {}
    model.encoder.forward_rows(trace.token_ids[None], trace.segment_ids[None],
                               block_rows(trace.num_heads, trace.num_tokens),
                               keep=lambda layer, q, k: given.update({layer: (q.numpy()[0], k.numpy()[0])}))
    PIECES.clear()
    for layer in range(trace.num_layers):
        queries, keys = store.queries_keys.layer(layer)
        assert queries.shape == (trace.num_tokens, trace.num_heads, model.config.head_dim)
        assert_close_f32(queries, given[layer][0], ulps=4)
        assert_close_f32(keys, given[layer][1], ulps=4)
        assert store.queries_keys.layer(layer)[0] is queries  # kept in the LRU
        assert store.queries[layer] is queries and store.keys[layer] is keys  # by layer, as the analyses read them


def test_a_long_trace_pickles_as_its_queries_and_keys_and_the_cache_counts_no_model():
    """Pickled (sent to another process), a long trace's store is its arrays, no model; the results cache
    counts its hidden states once and nothing of the model it reads."""
    import pickle

    from encoder.attention_store import StoredQueriesKeys
    from encoder.budget import held_bytes

    trace = trace_text(load_family("llama"), long_text(80), lazy=True)
    fields = {name: getattr(trace, name) for name in ("attention", "hidden")}
    assert trace.hidden.nbytes <= held_bytes(fields) < trace.hidden.nbytes + 1024  # and the recipe's few bytes
    back = pickle.loads(pickle.dumps(trace.attention))
    assert isinstance(back.queries_keys, StoredQueriesKeys)
    assert back.kept_bytes == sum(a.nbytes for layer in range(trace.num_layers)
                                  for a in trace.attention.queries_keys.layer(layer))
    np.testing.assert_array_equal(np.asarray(back), np.asarray(trace.attention))
    assert back.store_id != trace.attention.store_id  # its pieces are its own in the LRU


PEAK_SCRIPT = """
import json, resource, sys, time
import numpy as np
from tests.support.models import tiny_loaded_model
from tests.support.families import FAMILIES_DIR
from encoder.trace import trace_text
model = tiny_loaded_model(FAMILIES_DIR / "gpt2", num_layers=6, num_heads=12, d_model=384, dff=1536,
                          max_positions=8192)
words = " ".join("w%d" % (i % 97) for i in range(int(sys.argv[1])))
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
trace = trace_text(model, words, max_tokens=int(sys.argv[1]))
head = trace.attention[5, 11]
print(json.dumps({"tokens": trace.num_tokens, "before": before, "lazy": type(trace.attention).__name__,
                  "peak": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
                  "row_sum": float(head[-1].sum())}))
"""


def test_a_4096_token_trace_peaks_far_below_its_attention_bytes():
    """A MiniLM-shaped model (6 layers, 12 heads, width 384, 8,192 positions, random weights) traces 4,096 tokens
    and reads a head: its (L, H, T, T) attention would be 4.8 GB; the trace and the head take under 0.8 GB more
    than the loaded model (TensorFlow and the model: 0.7 GB)."""
    result = subprocess.run([sys.executable, "-c", PEAK_SCRIPT, "4096"], cwd=ROOT, capture_output=True, text=True,
                            timeout=600, env={**__import__("os").environ, "PYTHONPATH": str(ROOT)})
    assert result.returncode == 0, result.stderr[-2000:]
    measured = json.loads(result.stdout.strip().splitlines()[-1])
    assert measured["tokens"] == 4096 and measured["lazy"] == "LazyAttention"
    assert abs(measured["row_sum"] - 1.0) < 1e-4
    assert measured["peak"] - measured["before"] < 0.8 * 2**30  # measured: 0.56 GB, against 4.8 GB of attention


@pytest.mark.parametrize("family, layer", [("llama", 1), ("modernbert", 1)])
def test_a_block_over_the_keys_it_can_see_equals_the_whole_row(monkeypatch, family, layer):
    """Blocks of 8 queries over the keys they can see (widened to multiples of 8), a causal model's and a windowed
    layer's (ModernBERT's layer 1: an 8-token window): the forward pass equals the eager trace, and each stored
    block's weights equal the ones computed over every key of the row, masked (within float32 rounding); the keys
    left out are exactly 0."""
    import encoder.attention_store
    import encoder.parts.attention
    from encoder.parts.attention import attention_rows, heads_first, visible_keys, visible_rows

    model = load_family(family)
    heads, tokens = model.config.num_heads, trace_text(model, long_text(80), lazy=True).num_tokens
    monkeypatch.setattr(encoder.parts.attention, "KEY_GRID", 8)
    monkeypatch.setattr(encoder.attention_store, "ROW_BLOCK_BYTES", 4 * heads * tokens * 8)  # 8 queries a block
    store = assert_lazy_matches_eager(model, long_text(80), ulps=32).attention
    recipe = store.recipe
    window, causal = int(recipe.windows[layer]), recipe.causal
    assert tokens >= 40 and (causal or window == 8)
    assert visible_keys(24, 32, tokens, causal, window, recipe.window_kind, 8) == ((0, 32) if causal else (16, 40))
    queries, keys = store.queries_keys.layer(layer)  # (T, H, dh), (T, Hkv, dh)
    group = heads // keys.shape[1]
    query = heads_first(queries[None])  # (1, H, T, dh)
    key = heads_first(keys[:, np.arange(heads) // group][None])  # (1, H, T, dh): a key head per head
    whole = attention_rows(query, key, recipe.scaling, None, recipe.softcap,
                           visible_rows(0, tokens, tokens, causal, window, recipe.window_kind))[0]  # (H, T, T)
    PIECES.clear()
    blocks = store[layer]  # (H, T, T), a block of 8 queries at a time
    assert_close_f32(blocks, whole, ulps=4, scale=1.0)
    seen = visible_rows(0, tokens, tokens, causal, window, recipe.window_kind)[0]
    np.testing.assert_array_equal(blocks[:, ~seen], 0.0)


def test_rotary_positions_by_pieces_of_positions_equal_all_at_once():
    """A long input's queries and keys turn a piece of positions at a time (``RotaryLogits.prepare`` from the
    piece's first position): the same numbers, bit for bit, as all T at once (each is its own position's), a last
    piece shorter included."""
    from encoder.parts.positions import RotaryLogits, rotary_angles, rotate
    from encoder.positional import rope_frequencies

    x = np.random.default_rng(0).normal(size=(1, 2500, 3, 16)).astype(np.float32)  # (B, T, H, dh)
    frequencies = rope_frequencies(10000.0, 16)
    cos, sin = rotary_angles(frequencies, 2500)
    whole = np.asarray(rotate(x, cos, sin))
    rule = RotaryLogits(frequencies)
    for rows in (1000, 4096):
        pieces = [np.asarray(rule.prepare(None, x[:, begin:begin + rows], {"global": (cos, sin)}, begin))
                  for begin in range(0, 2500, rows)]
        assert_close_f32(np.concatenate(pieces, axis=1), whole, ulps=2)  # measured: bit for bit


def on_demand_block_max(trace: EncoderTrace, layer: int, head: int, cells: int) -> np.ndarray:
    """The block max image the views compute on demand (``viz.long_inputs.block_image`` over the head's rows, the
    cells its queries could not see left out) at ``cells`` a side."""
    from viz.long_inputs import block_image

    tokens = np.arange(trace.num_tokens)
    visible = None if trace.visible is None else np.asarray(trace.visible[layer])

    def read(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        return trace.attention[layer, head, rows], None if visible is None else ~visible[rows]

    return block_image(tokens, tokens, read, "max", cells)[0]


@pytest.mark.parametrize("family, tokens", [("llama", 64), ("llama", 61), ("modernbert", 64), ("modernbert", 57),
                                            ("t5-encoder", 50)])
def test_the_overview_images_the_pass_makes_equal_the_on_demand_block_images(monkeypatch, family, tokens):
    """Made by the forward pass (here at 16 cells a side: blocks of 4 tokens, or of 3 and 4 where 16 does not divide
    the length; the pass's blocks of 7 queries cut across them), every layer's and head's overview image equals the
    block max the views compute from the head (within 4 float32 units of 1; measured: bit-identical), NaN on the
    same blocks: a decoder (causal, grouped-query heads), ModernBERT (windowed and global layers), T5's encoder (a
    relative bias, nothing masked)."""
    import encoder.attention_store
    import encoder.overview
    import encoder.trace

    model = load_family(family)
    monkeypatch.setattr(encoder.trace, "OVERVIEW_MIN_TOKENS", 0)
    monkeypatch.setattr(encoder.overview, "OVERVIEW_CELLS", 16)
    monkeypatch.setattr(encoder.attention_store, "ROW_BLOCK_BYTES", 7 * 4 * model.config.num_heads * tokens)
    trace = trace_text(model, long_text(80), max_tokens=tokens, lazy=True)
    images = trace.attention.overview
    assert trace.num_tokens == tokens and images.shape == (trace.num_layers, trace.num_heads, 16, 16)
    for layer in range(trace.num_layers):
        for head in range(trace.num_heads):
            expected = on_demand_block_max(trace, layer, head, 16)
            np.testing.assert_array_equal(np.isnan(images[layer, head]), np.isnan(expected))
            assert_close_f32(images[layer, head], expected, ulps=4, scale=1.0)
    assert np.isnan(images).any() == (trace.visible is not None)  # masked blocks: NaN (causal, windows)


def test_a_short_long_trace_keeps_no_overview_and_a_file_keeps_it(monkeypatch):
    """Up to ``OVERVIEW_MIN_TOKENS`` a lazy trace keeps no overview images (its views compute them); above, its
    store keeps them in its bytes, and an NPZ file holds them (read back as they were); a file whose images have the
    wrong shape is refused with our error."""
    import encoder.trace
    from encoder.overview import OVERVIEW_MIN_TOKENS
    from encoder.trace_fields import read_npz

    model = load_family("llama")
    assert OVERVIEW_MIN_TOKENS >= 64 and trace_text(model, long_text(80), lazy=True).attention.overview is None
    monkeypatch.setattr(encoder.trace, "OVERVIEW_MIN_TOKENS", 0)
    trace = trace_text(model, long_text(80), lazy=True)
    store = trace.attention
    assert store.overview is not None and store.kept_bytes == store.overview.nbytes
    back = trace_from_npz(trace_to_npz(trace))
    np.testing.assert_array_equal(back.attention.overview, store.overview)  # a copy, NaN in the same places
    arrays = dict(np.load(io.BytesIO(trace_to_npz(trace))))
    arrays["attention/overview"] = arrays["attention/overview"][:, :, :8]
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    buffer.seek(0)
    with pytest.raises(ExportError, match="overview images must be"):
        read_npz(EncoderTrace, buffer, "the file")


@pytest.mark.parametrize("length, blocks", [(64, 8), (61, 8), (100, 7)])
def test_column_max_is_the_max_of_each_run(length, blocks):
    """``column_max`` (strided maxima for runs of one width, clipped gathers otherwise) equals NumPy's
    ``np.maximum.reduceat`` over the same runs, exactly (a max does not round)."""
    from encoder.overview import block_edges, column_max

    array = np.random.default_rng(length).random((3, 5, length), dtype=np.float32)
    edges = block_edges(length, blocks)
    np.testing.assert_array_equal(column_max(array, edges), np.maximum.reduceat(array, edges[:-1], axis=-1))
