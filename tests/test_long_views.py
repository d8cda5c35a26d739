"""Views of long inputs (issue 22): a long trace's heatmap is a bounded block image whose cells are the block max
(or mean) of the head, a zoom window is the head's slice exactly, every view stays under 5 MB of JSON at 8,192
tokens, and analyses that cannot run at a length say their limit."""

from __future__ import annotations

import numpy as np
import pytest

from encoder.attention_store import LazyAttention
from encoder.trace import trace_text
from tests.support.families import FAMILIES_DIR
from viz.clicks import click_spec
from viz.long_inputs import IMAGE_CELLS
from viz.registry import build_view

FIGURE_MAX_BYTES = 5 * 2**20


def words(count: int) -> str:
    return " ".join(f"w{i % 97}" for i in range(count))


@pytest.fixture(scope="module")
def long_model():
    """A small causal decoder (GPT-2's tokenizer, an LM head, random weights) with 8,192 positions."""
    import keras

    from encoder.compiled import CompiledEncoder
    from encoder.config import AbsolutePositions, Attention, Block, Embeddings, EncoderConfig, Head
    from encoder.model import TransformerEncoder
    from encoder.sources import LoadedModel
    from encoder.tokenizer import TextTokenizer

    keras.utils.set_random_seed(22)
    config = EncoderConfig(num_layers=2, d_model=32, max_positions=8192, embeddings=Embeddings(1500, scale=False),
                           attention=Attention(2, causal=True), positions=AbsolutePositions(table="learned"),
                           block=Block(64, activation="gelu_new", placement="pre", final_norm=True),
                           head=Head(lm_head=True, tie_embeddings=True), dropout=0.0)
    tokenizer = TextTokenizer.from_folder(FAMILIES_DIR / "gpt2", config.max_positions)
    return LoadedModel("long", "a small random decoder", CompiledEncoder(TransformerEncoder(config)), tokenizer)


@pytest.fixture(scope="module")
def trace_8192(long_model):
    trace = trace_text(long_model, words(9000), max_tokens=8192, lazy=True)
    assert trace.num_tokens == 8192 and isinstance(trace.attention, LazyAttention)
    return trace


@pytest.fixture(scope="module")
def trace_2048(long_model):
    return trace_text(long_model, words(2100), max_tokens=2048, lazy=True)


def block_reduce(matrix: np.ndarray, block: int, how: str) -> np.ndarray:
    """NumPy's block max or mean of a square matrix whose side ``block`` divides."""
    side = matrix.shape[0] // block
    blocks = matrix.reshape(side, block, side, block)
    return blocks.max(axis=(1, 3)) if how == "max" else blocks.mean(axis=(1, 3))


@pytest.mark.parametrize("how", ["max", "mean"])
def test_block_image_is_the_block_reduction_of_the_materialised_head(trace_2048, how):
    """Each cell of the 2,048-token heatmap is the max (or mean over the cells the query could see) of its block
    of the head (8 x 8 tokens at 256 cells a side), and the subtitle says so."""
    fig = build_view(trace_2048, "heatmap", layer=1, head=1, reduce=how)
    image = np.asarray(fig.data[0].z, np.float64)
    assert image.shape == (IMAGE_CELLS, IMAGE_CELLS)
    side = 2048 // IMAGE_CELLS
    head = np.asarray(trace_2048.attention[1, 1], np.float64)
    seen = np.tril(np.ones(head.shape, bool))  # causal
    if how == "max":
        expected = block_reduce(head, side, "max")
    else:
        share = block_reduce(seen.astype(np.float64), side, "mean")
        expected = block_reduce(head, side, "mean") / np.maximum(share, 1e-9)
    blocks_seen = block_reduce(seen.astype(np.float64), side, "max") > 0
    np.testing.assert_allclose(image[blocks_seen], expected[blocks_seen], rtol=1e-5, atol=1e-7)
    assert np.isnan(image[~blocks_seen]).all()  # blocks above the diagonal: nothing seen, drawn grey
    assert f"each cell: {how} of {side}×{side} tokens" in fig.layout.title.subtitle.text
    assert "causal" in fig.layout.title.subtitle.text


@pytest.mark.parametrize("tokens", [2304, 2100])
def test_a_long_traces_heatmaps_are_its_overview_images_read_without_computing_a_head(long_model, tokens):
    """Above ``OVERVIEW_MIN_TOKENS`` the trace carries every head's block max image (256 cells a side: blocks of 9
    tokens, or of 8 and 9 at 2,100; the pass's causal key ranges, multiples of 64, cut across them): each head's
    whole-text heatmap draws it as it is, computing no weights, and it equals the block max read row by row (a
    whole-text zoom window, never the kept image) within 4 float32 units of 1 (measured: bit-identical), NaN above
    the diagonal."""
    from encoder.attention_store import PIECES
    from tests.support.floats import assert_close_f32

    trace = trace_text(long_model, words(tokens + 100), max_tokens=tokens, lazy=True)
    images = trace.attention.overview
    assert trace.num_tokens == tokens and images.shape == (2, 2, IMAGE_CELLS, IMAGE_CELLS)
    for layer in range(2):
        for head in range(2):
            PIECES.clear()
            kept = build_view(trace, "heatmap", layer=layer, head=head)
            assert PIECES.bytes == 0  # nothing computed: no head's weights, no layer's queries and keys
            np.testing.assert_array_equal(np.asarray(kept.data[0].z, np.float32), images[layer, head])
            read = np.asarray(build_view(trace, "heatmap", layer=layer, head=head, rows=(0, tokens)).data[0].z,
                              np.float32)
            np.testing.assert_array_equal(np.isnan(read), np.isnan(images[layer, head]))
            assert_close_f32(images[layer, head], read, ulps=4, scale=1.0)
            side, about = round(tokens / IMAGE_CELLS), "" if tokens % IMAGE_CELLS == 0 else "about "
            assert kept.layout.title.subtitle.text.endswith(f"each cell: max of {about}{side}×{side} tokens")


def test_zoom_window_is_the_heads_slice_exactly(trace_2048):
    fig = build_view(trace_2048, "heatmap", layer=0, head=1, rows="1000:1100", cols=(900, 1200))
    z = np.asarray(fig.data[0].z, np.float32)
    expected = np.array(trace_2048.attention[0, 1, 1000:1100, 900:1200])
    expected[~np.tril(np.ones((2048, 2048), bool))[1000:1100, 900:1200]] = np.nan  # masked cells: NaN
    np.testing.assert_array_equal(z, expected)
    assert len(fig.data[0].y) == 100 and len(fig.data[0].x) == 300
    assert "queries 1000-1099" in fig.layout.title.subtitle.text


def test_zoom_window_out_of_range_is_our_error(trace_2048):
    from encoder.errors import ViewError

    with pytest.raises(ViewError, match="not a range"):
        build_view(trace_2048, "heatmap", rows="100:5000")
    with pytest.raises(ViewError, match="range of token indices"):
        build_view(trace_2048, "heatmap", cols="a-b")


@pytest.mark.parametrize("view", ["heatmap", "head-grid", "model", "tokens", "lines", "distance"])
def test_every_view_of_8192_tokens_is_under_5_mb_of_json(trace_8192, view):
    fig = build_view(trace_8192, view, **({"query": 5000} if view in ("tokens", "lines") else {}))
    size = len(fig.to_json())
    assert size < FIGURE_MAX_BYTES, f"{view}: {size / 2**20:.1f} MB"
    if view in ("tokens", "lines"):
        assert "tokens 4872-5127 of 8192 (a window around the query token" in fig.layout.title.subtitle.text
        clicks = [np.asarray(fig.data[i].customdata)[:, 0] for i in click_spec(fig)]
        assert clicks and all(c.min() >= 4872 and c.max() <= 5127 for c in clicks)  # the whole text's tokens


def test_the_distance_view_of_a_long_trace_equals_the_whole_heads(trace_2048):
    """Read a chunk of rows at a time, the distance masses equal ``attention_by_distance`` of the whole heads."""
    from viz.distance import attention_by_distance

    fig = build_view(trace_2048, "distance", layer=1, signed=True)
    stack = np.stack([np.asarray(trace_2048.attention[1, h]) for h in range(trace_2048.num_heads)])
    distances, mass = attention_by_distance(stack, np.arange(2048), signed=True)
    np.testing.assert_array_equal(np.asarray(fig.data[0].x), distances)
    np.testing.assert_allclose(np.asarray(fig.data[0].z, np.float64), mass, rtol=1e-4, atol=1e-7)
    assert "causal" in fig.layout.title.subtitle.text


def test_analyses_of_a_long_trace_run_or_say_their_length_limit(trace_8192):
    """One mechanism (``viz.registry.length_limit``): an analysis that reads every layer's whole attention says the
    length it is limited to for this model and why; the logit lens (a window of positions), rollout (rows) and the
    report card (row blocks) run at any length."""
    from viz.registry import ANALYSES, analysis_unavailable, longest_whole

    most = longest_whole(trace_8192.num_layers, trace_8192.num_heads)
    for name in ("flow", "value-zeroing", "integrated-gradients", "norm"):
        why, own = analysis_unavailable(ANALYSES[name], trace_8192), ANALYSES[name].max_tokens  # flow's 32, ...
        limit = most if own is None else min(most, own(trace_8192))
        assert why is not None and f"limited to {limit:,} tokens" in why and "8,192 tokens" in why, name
        assert "whole attention" in why
    for name in ("lens", "rollout", "report"):
        assert analysis_unavailable(ANALYSES[name], trace_8192) is None, name
    assert most < 8192 < 4 * most


def test_the_app_cuts_a_100000_character_paste_and_shows_the_long_heatmap_without_rerunning(tmp_path, monkeypatch):
    """A 100,000-character paste into a model of 2,048 positions is cut to 2,048 tokens with a message and traced
    lazily (3 layers of 8 heads: 400 MB of attention); the heatmap is a block image (said in its subtitle); a layer
    change re-runs nothing."""
    from tests.support.models import write_tiny_bert_folder
    from tests.test_app import _app, _encoder_runs, _figures, _no_errors
    from ui.cache import RESULTS

    monkeypatch.setenv("HEADLIGHT_MODEL_ROOTS", str(tmp_path))
    folder = write_tiny_bert_folder(tmp_path / "long", max_position_embeddings=2048, num_hidden_layers=3,
                                    num_attention_heads=8, hidden_size=16)
    at = _app(model="folder or hub id…", source=str(folder))
    at.text_area(key="text").set_value("word " * 20_000).run()  # 100,000 characters
    _no_errors(at)
    assert any("first 2048" in info.value for info in at.info)
    figure = _figures(at)[0]
    side = 2048 // IMAGE_CELLS
    assert f"each cell: max of {side}×{side} tokens" in figure["layout"]["title"]["subtitle"]["text"]
    runs = _encoder_runs(at)
    at.slider(key="layer").set_value(1).run()
    _no_errors(at)
    assert _figures(at)[0]["layout"]["title"]["text"].startswith("Layer 1, head 0")
    at.slider(key="head").set_value(7).run()
    _no_errors(at)
    assert _figures(at)[0]["layout"]["title"]["text"].startswith("Layer 1, head 7")
    assert _encoder_runs(at) == runs
    (key,) = [key for key in RESULTS.kept_keys() if key[:3] == ("trace", str(folder), "word " * 20_000)]
    assert isinstance(RESULTS.get(key, lambda: None).attention, LazyAttention)  # kept: traced once, lazily


def test_the_cache_counts_a_long_trace_by_its_real_bytes_and_leaves_the_pieces_their_share(trace_8192, long_model):
    """A cached long trace holds its hidden states (held_bytes; its queries and keys are computed again from them),
    not the L x H x T x T floats its attention would take; the results cache, the attention pieces' LRU and the head
    images share HEADLIGHT_CACHE_MB."""
    from encoder.attention_store import piece_limit
    from encoder.budget import held_bytes
    from encoder.settings import settings
    from ui.cache import RESULTS
    from ui.inputs import trace_bytes
    from viz.long_inputs import image_limit
    from viz.scrub import steps_limit

    held = held_bytes(trace_8192)
    store = trace_8192.attention
    assert store.kept_bytes + trace_8192.hidden.nbytes <= held < store.nbytes / 8
    assert RESULTS.max_bytes + piece_limit() + image_limit() + steps_limit() == settings().cache_bytes
    assert held <= trace_bytes(long_model.config, 8192) < 3 * held  # the Max tokens cap's estimate: from above


def test_the_cli_zooms_a_long_heatmap_and_the_operators_cap_bounds_it(tmp_path, monkeypatch, capsys):
    """``--rows``/``--cols`` zoom the heatmap from the command line; HEADLIGHT_MAX_TOKENS bounds the trace."""
    from cli import main
    from tests.support.models import write_tiny_bert_folder

    folder = write_tiny_bert_folder(tmp_path / "long", max_position_embeddings=2048)
    out = tmp_path / "zoom.html"
    assert main(["--model", str(folder), "--text", words(1000), "--view", "heatmap", "--rows", "600:700",
                 "--cols", "500:800", "-o", str(out)]) == 0
    page = out.read_text(encoding="utf-8")
    assert "queries 600-699" in page and "keys 500-799" in page
    monkeypatch.setenv("HEADLIGHT_MAX_TOKENS", "600")
    assert main(["--model", str(folder), "--text", words(1000), "--view", "heatmap", "--rows", "600:700",
                 "-o", str(out)]) == 2  # the trace is cut to 600 tokens: rows 600:700 are out of range
    assert "not a range of token indices in 0:600" in capsys.readouterr().err


def test_the_model_view_redrawn_with_another_head_outlined_computes_nothing_again(trace_2048):
    """The trace keeps its head images: a second model view with another head outlined reuses the same ones."""
    from viz.long_inputs import _KEPT_IMAGES

    first = build_view(trace_2048, "model", selected=(0, 0))
    kept = dict(_KEPT_IMAGES[trace_2048.attention])
    again = build_view(trace_2048, "model", selected=(1, 1))
    assert kept and all(_KEPT_IMAGES[trace_2048.attention][key] is value for key, value in kept.items())
    np.testing.assert_array_equal(np.asarray(again.data[0].z), np.asarray(first.data[0].z))


def test_max_tokens_stops_where_a_trace_no_longer_fits_the_cache(monkeypatch):
    """A ModernBERT-base-shaped model (22 layers, 12 heads, width 768, 8,192 positions) keeps about 75 KB a token
    once long: with the default budget Max tokens stops where its trace fits the cache (so a change of view never
    re-runs it); a budget of 4 GB lets it reach 8,192. MiniLM's 512 always fit."""
    from encoder.config import EncoderConfig
    from ui.inputs import cached_tokens, token_limit, trace_budget, trace_bytes

    modernbert = EncoderConfig(num_layers=22, num_heads=12, d_model=768, dff=1152, max_positions=8192,
                               vocab_size=50368)
    minilm = EncoderConfig(num_layers=6, num_heads=12, d_model=384, dff=1536, max_positions=512, vocab_size=30522)
    limit = token_limit(8192, modernbert)
    assert 1024 < limit < 8192 and trace_bytes(modernbert, limit) <= trace_budget() < trace_bytes(modernbert, limit + 1)
    assert token_limit(512, minilm) == 512
    monkeypatch.setenv("HEADLIGHT_CACHE_MB", "4096")
    assert cached_tokens(modernbert, 8192) == 8192
