"""The positional lab: logit terms from the model, the position-vs-content share, and the lab's figures."""

from __future__ import annotations

import keras
import numpy as np
import pytest
from keras import ops

from analysis.inputs import TraceInputs
from analysis.positional import ROPE_SEED, position_share, rope_decay, term_share
from analysis.words import merge_words, word_starts
from encoder.config import EncoderConfig
from encoder.errors import AnalysisError
from encoder.model import TransformerEncoder
from encoder.positional import relative_position_buckets
from encoder.trace import trace_batch, trace_text
from tests.support.families import load_family
from viz.clicks import click_spec
from viz.registry import ANALYSES

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
    scheme, reach = loaded.position_scheme, loaded.config.positions.max_distance
    distances = scheme["distances"]
    assert reach == 128 and distances[0] == -reach and distances[-1] == reach
    np.testing.assert_array_equal(scheme["buckets"], relative_position_buckets(distances))
    table = loaded.model.positions.relative_attention_bias.embeddings.numpy()  # (32, H)
    np.testing.assert_array_equal(scheme["bias_by_distance"], table[scheme["buckets"]].T)
    assert scheme["bias_by_distance"].shape == (loaded.config.num_heads, 2 * reach + 1)
    edges = scheme["bucket_edges"]
    assert np.all(np.diff(edges) > 0) and -0.5 in edges and 0.5 in edges  # 0 is a bucket of its own
    assert len(edges) == len(np.unique(scheme["buckets"])) - 1 == 30  # bucket 16 (after, distance 0) is never used
    trace = trace_text(loaded, TEXT)
    t = len(trace.tokens)
    index = np.arange(t)[None] - np.arange(t)[:, None] + reach  # (T, T) key - query
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


def small_mpnet(seed: int = 0) -> TransformerEncoder:
    keras.utils.set_random_seed(seed)
    config = EncoderConfig(vocab_size=40, num_layers=2, num_heads=3, d_model=12, dff=16, positional="learned",
                           max_positions=32, relative_attention_buckets=32)
    model = TransformerEncoder(config)
    table = model.positions.relative_attention_bias.embeddings
    table.assign(np.random.default_rng(seed).normal(size=table.shape).astype("float32"))
    return model


def model_share(model: TransformerEncoder):
    outputs = model(np.arange(1, 11, dtype="int32")[None], training=False)
    terms = {name.split("/", 1)[1]: ops.convert_to_numpy(value)[0] for name, value in outputs.items()
             if name.startswith("terms/")}
    return term_share(terms)


def test_share_is_one_when_the_content_projections_are_zeroed():
    model = small_mpnet()
    for layer in model.encoder_layers:
        for dense in (layer.attention.query_dense, layer.attention.key_dense):
            for weight in dense.weights:
                weight.assign(np.zeros(weight.shape, "float32"))
    share = model_share(model)
    np.testing.assert_array_equal(share.share, 1.0)
    np.testing.assert_array_equal(share.content, 0.0)


def test_share_is_zero_when_the_positional_term_is_removed():
    model = small_mpnet()
    bias = model.positions.relative_attention_bias.embeddings
    bias.assign(np.zeros(bias.shape, "float32"))
    share = model_share(model)
    np.testing.assert_array_equal(share.share, 0.0)
    assert np.all(share.content > 0)


def test_share_of_a_mixed_model_lies_strictly_between():
    share = model_share(small_mpnet())
    assert np.all((share.share > 0) & (share.share < 1))


def test_share_counts_only_visible_keys_and_ignores_row_constants():
    rng = np.random.default_rng(0)
    content = rng.normal(size=(1, 2, 4, 4))
    row_constant = np.repeat(rng.normal(size=(1, 2, 4, 1)) * 100, 4, axis=-1)  # shifts whole rows: no effect
    hidden = np.zeros((1, 2, 4, 4))
    hidden[..., 3] = 1000.0  # only on the masked key
    visible = np.ones((1, 4, 4), bool)
    visible[..., 3] = False
    share = term_share({"content": content, "position": row_constant + hidden}, visible)
    np.testing.assert_allclose(share.share, 0.0, atol=1e-12)
    expected = content[..., :3].var(-1).mean(-1)
    np.testing.assert_allclose(share.content, expected)


def test_deberta_terms_sum_their_positional_parts():
    rng = np.random.default_rng(1)
    c2c, c2p, p2c = (rng.normal(size=(2, 2, 5, 5)) for _ in range(3))
    share = term_share({"c2c": c2c, "c2p": c2p, "p2c": p2c})
    assert share.content_terms == ("c2c",) and share.position_terms == ("c2p", "p2c")
    np.testing.assert_allclose(share.position, (c2p + p2c).var(-1).mean(-1))
    with pytest.raises(AnalysisError, match="neither content"):
        term_share({"content": c2c, "rotary": c2p})


def test_mpnet_fixture_shares_lie_in_zero_one():
    trace = trace_text(load_family("mpnet"), TEXT)
    share = position_share(trace)
    assert share.share.shape == (trace.num_layers, trace.num_heads)
    assert np.all((share.share >= 0) & (share.share <= 1))
    rows = share.rows()
    assert len(rows) == trace.num_layers * trace.num_heads and {"layer", "head", "share"} <= set(rows[0])


def test_absolute_models_get_a_message_not_a_crash():
    trace = trace_text(load_family("roberta"), "The cat sat.")
    for name in ("position-share", "relative-bias", "rope"):
        message = ANALYSES[name].limit(trace)
        assert message and "Traceback" not in message
    assert "input embeddings" in ANALYSES["position-share"].limit(trace)
    with pytest.raises(AnalysisError, match="input embeddings"):
        position_share(trace)


def test_the_lab_entries_draw_mpnet_through_the_registry():
    trace = trace_text(load_family("mpnet"), TEXT)
    inputs = TraceInputs(trace)
    assert ANALYSES["position-share"].limit(trace) is None and ANALYSES["relative-bias"].limit(trace) is None
    assert ANALYSES["rope"].limit(trace)  # MPNet has no rotary positions
    share = ANALYSES["position-share"].compute(inputs, {})
    (_, fig), = ANALYSES["position-share"].figures(share, trace, {})
    np.testing.assert_allclose(np.asarray(fig.data[0].z, dtype=float), share.share)
    assert click_spec(fig)  # a clickable head map
    bias = ANALYSES["relative-bias"].compute(inputs, {})
    (_, fig), = ANALYSES["relative-bias"].figures(bias, trace, {})
    assert len(fig.data) == trace.num_heads
    edges = {shape.x0 for shape in fig.layout.shapes if shape.line.dash == "dot"}
    assert edges == set(bias["bucket_edges"].tolist())
    rows, _ = ANALYSES["relative-bias"].rows(bias, trace, {})
    assert len(rows) == trace.num_heads * len(bias["distances"])


def inverse_frequencies(theta: float, head_dim: int) -> np.ndarray:
    return theta ** (-np.arange(0, head_dim, 2) / head_dim)


def test_rope_decay_on_a_synthetic_scheme():
    freq = {"global": inverse_frequencies(160_000.0, 16), "local": inverse_frequencies(10_000.0, 16)}
    decay = rope_decay(freq, length=600, local_window=128)
    for name in freq:
        assert decay.expected[name][0] == pytest.approx(1.0) and decay.sample[name][0] == pytest.approx(1.0)
        np.testing.assert_allclose(decay.expected[name], np.cos(np.outer(decay.distances, freq[name])).mean(-1))
    # the sample is q . R(d) q / |q|^2 for one fixed q, computed directly with rotation matrices
    q = np.random.default_rng(ROPE_SEED).normal(size=(8, 2))
    d = 37
    angle = d * freq["local"]
    rotated = np.stack([q[:, 0] * np.cos(angle) - q[:, 1] * np.sin(angle),
                        q[:, 0] * np.sin(angle) + q[:, 1] * np.cos(angle)], -1)
    assert decay.sample["local"][d] == pytest.approx((q * rotated).sum() / (q ** 2).sum())


def test_rope_entry_lights_up_when_the_scheme_has_frequencies():
    trace = trace_text(load_family("mpnet"), "The cat sat.")
    scheme = {"rope_inv_freq_global": inverse_frequencies(160_000.0, 16).astype("float32"),
              "rope_inv_freq_local": inverse_frequencies(10_000.0, 16).astype("float32"),
              "local_window": np.array(128)}
    rotary = trace.replace(position_scheme=scheme)
    assert ANALYSES["rope"].limit(rotary) is None
    decay = ANALYSES["rope"].compute(TraceInputs(rotary), {})
    assert decay.local_window == 128 and set(decay.expected) == {"global", "local"}
    (name, fig), = ANALYSES["rope"].figures(decay, rotary, {})
    assert name == "rope" and len(fig.data) == 6
    assert any(shape.x0 == 64 for shape in fig.layout.shapes)
    rows, _ = ANALYSES["rope"].rows(decay, rotary, {})
    assert len(rows) == 2 * len(decay.distances)


@pytest.mark.parametrize("family", ["modernbert", "deberta-v3"])
def test_the_lab_draws_the_real_rotary_and_disentangled_fixtures(family):
    """ModernBERT's scheme (a (1,) local_window) and DeBERTa's terms go through the registry entries as the app
    and the CLI run them."""
    from encoder.trace import trace_text
    from tests.support.families import load_family

    trace = trace_text(load_family(family), "The cat sat on the mat because it was tired, and then it slept.")
    entries = ["position-share", "rope"] if family == "modernbert" else ["position-share"]
    for name in entries:
        entry = ANALYSES[name]
        result = entry.compute(TraceInputs(trace), {})
        figures = entry.figures(result, trace, {})
        assert figures and figures[0][1].data, (family, name)
        rows, _ = entry.rows(result, trace, {})
        assert rows, (family, name)
    share = ANALYSES["position-share"].compute(TraceInputs(trace), {})
    values = np.asarray(getattr(share, "share", share))
    assert np.all((values >= 0) & (values <= 1))


def test_position_by_distance_is_the_bias_for_mpnet_and_respects_windows():
    """MPNet's positional term does not depend on the tokens: its mean by distance is the bias itself. ModernBERT's
    local layer has no distance beyond its window; DeBERTa's is c2p + p2c, averaged per distance by hand."""
    from analysis.positional import term_by_distance
    from encoder.trace import trace_text
    from tests.support.families import load_family

    text = "The cat sat on the mat because it was tired, and then it slept until the evening."
    mpnet = trace_text(load_family("mpnet"), text)
    result = term_by_distance(mpnet, 1)
    scheme = mpnet.position_scheme
    columns = np.searchsorted(scheme["distances"], result["distances"])
    np.testing.assert_allclose(result["bias_by_distance"], scheme["bias_by_distance"][:, columns], atol=1e-6)
    modern = trace_text(load_family("modernbert"), text)
    local = term_by_distance(modern, 1)  # layer 1 is local: |distance| <= window / 2
    assert np.abs(local["distances"]).max() == int(modern.position_scheme["local_window"][0]) // 2
    assert term_by_distance(modern, 0)["distances"].max() == modern.num_tokens - 1
    deberta = trace_text(load_family("deberta-v3"), text)
    got = term_by_distance(deberta, 0)
    position = deberta.logit_terms["c2p"][0] + deberta.logit_terms["p2c"][0]  # (H, T, T)
    head, distance = 2, 3
    cells = [position[head, q, q + distance] for q in range(deberta.num_tokens - distance)]
    column = list(got["distances"]).index(distance)
    assert got["bias_by_distance"][head, column] == pytest.approx(np.mean(cells), rel=1e-6)
    assert np.isfinite(got["bias_by_distance"]).all()


@pytest.mark.parametrize(("view", "family"), [("position-share", "mpnet"), ("relative-bias", "mpnet"),
                                              ("position-by-distance", "deberta-v3"), ("rope", "modernbert")])
def test_every_lab_view_exports_through_the_cli(view, family, tmp_path, image_browser):
    from cli import main
    from tests.support.families import FAMILIES_DIR

    base = ["--model", str(FAMILIES_DIR / family), "--text", "The cat sat on the mat because it was tired.",
            "--view", view, "--layer", "1"] if view == "position-by-distance" else [
        "--model", str(FAMILIES_DIR / family), "--text", "The cat sat on the mat because it was tired.", "--view", view]
    for ext in ("png", "html", "csv", "json"):
        out = tmp_path / f"{view}.{ext}"
        assert main([*base, "-o", str(out)]) == 0, ext
        assert out.stat().st_size > 200, ext
    assert (tmp_path / f"{view}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_rope_lab_of_decoders_reads_causal_windows():
    """A decoder's causal window (query i sees key j when 0 <= i - j < window) reaches window - 1 tokens back; a
    decoder without windows has no local frequencies to draw."""
    from analysis.positional import rope_scheme
    from encoder.trace import trace_text
    from tests.support.families import load_family

    text = "The cat sat on the mat because it was tired, and then it slept until the evening."
    mistral = trace_text(load_family("mistral"), text)  # sliding_window 8 in every layer
    assert mistral.position_scheme["local_reach"].tolist() == [7]
    assert rope_scheme(mistral).local_reach == 7
    reach = (mistral.attention[0] > 0).any(axis=0)  # (T, T): keys some head of layer 0 attends to
    rows, columns = np.nonzero(reach)
    assert (rows - columns).max() == 7
    llama = trace_text(load_family("llama"), text)
    assert "rope_inv_freq_local" not in llama.position_scheme
    decay = rope_scheme(llama)
    assert set(decay.expected) == {"global"} and decay.local_reach == 0
