"""Closed-form checks on real MiniLM attention, odd inputs, retracing, batch padding (files: test_trace_io)."""

import numpy as np
import pytest

from encoder.errors import InputError
from encoder.trace import pad_batch, trace_batch, trace_text
from tests.support.families import FAMILIES_DIR
from tests.support.models import tiny_loaded_model

SENTENCE = "The quick brown fox jumps over the lazy dog."


def test_every_attention_row_sums_to_one(minilm):
    trace = trace_text(minilm, SENTENCE)
    np.testing.assert_allclose(trace.attention.sum(axis=-1), 1.0, atol=1e-5)
    assert (trace.attention >= 0).all()


def test_padded_keys_get_exactly_zero_and_batch_equals_alone(minilm):
    texts = [SENTENCE, "Hi.", "A much longer sentence, with commas, clauses and several more words in it."]
    alone = [trace_text(minilm, t) for t in texts]
    batched = trace_batch(minilm, texts)
    for a, b in zip(alone, batched):
        assert a.tokens == b.tokens
        np.testing.assert_allclose(b.attention, a.attention, atol=2e-6)  # float32 rounding of other matmul shapes
        np.testing.assert_allclose(b.hidden, a.hidden, atol=1e-5)
    # The raw padded batch: keys past each sentence's end get weight exactly 0.
    ids = np.zeros((2, 12), np.int32)
    mask = np.zeros((2, 12), bool)
    encoded = minilm.tokenizer.encode("Hi.")
    n = len(encoded.token_ids)
    ids[:, :n], mask[:, :n] = encoded.token_ids, True
    attention = minilm.encoder.forward_padded(ids, np.zeros_like(ids), mask)["attention"].numpy()
    assert (attention[:, :, :, :, n:] == 0.0).all()
    np.testing.assert_allclose(attention[:, :, :, :n, :n].sum(-1), 1.0, atol=1e-5)


def test_trace_fields_are_consistent(minilm):
    trace = trace_text(minilm, SENTENCE, "It was fast.")
    t = trace.num_tokens
    assert trace.attention.dtype == np.float32
    assert trace.hidden.shape == (7, t, 384)
    assert trace.positional.shape == (t, 384) and trace.positional_table.shape == (512, 384)
    np.testing.assert_array_equal(trace.positional, trace.positional_table[:t])
    assert trace.special[0] and trace.special[-1] and trace.tokens[0] == "[CLS]"
    assert trace.special.sum() == 3  # [CLS], [SEP], [SEP]
    assert trace.visible is None and trace.token_style == "wordpiece"  # MiniLM sees every key
    words = trace.words.tolist()
    assert words[0] == words[-1] == -1 and words[1:4] == [0, 1, 2]
    first_b = int(np.flatnonzero(trace.segment_ids == 1)[0])
    assert words[first_b] == max(words[:first_b]) + 1  # sentence B's words are numbered on after A's


def test_a_causal_model_marks_later_keys_invisible_and_they_get_zero():
    model = tiny_loaded_model(FAMILIES_DIR / "gpt2", causal=True)
    trace = trace_text(model, "Café naïve, hello world.", "Again.")
    t = trace.num_tokens
    assert trace.visible.shape == (2, t, t) and trace.visible.dtype == bool
    np.testing.assert_array_equal(trace.visible[1], np.tri(t, dtype=bool))
    assert (trace.attention[:, :, ~np.tri(t, dtype=bool)] == 0.0).all()
    np.testing.assert_allclose(trace.attention.sum(-1), 1.0, atol=1e-5)
    assert trace.token_style == "bytelevel" and trace.words.min() == 0  # GPT-2 adds no special tokens


def test_one_word_text(minilm):
    trace = trace_text(minilm, "cat")
    assert trace.tokens == ("[CLS]", "cat", "[SEP]")
    np.testing.assert_allclose(trace.attention.sum(-1), 1.0, atol=1e-5)


def test_long_text_is_truncated_to_512_and_flagged(minilm):
    text = " ".join(["word"] * 700)
    trace = trace_text(minilm, text)
    assert trace.num_tokens == 512 and trace.truncated and trace.untruncated_length == 702
    assert trace.tokens[-1] == "[SEP]"
    np.testing.assert_allclose(trace.attention.sum(-1), 1.0, atol=1e-4)
    short = trace_text(minilm, text, max_tokens=40)
    assert short.num_tokens == 40 and short.truncated
    assert not trace_text(minilm, SENTENCE).truncated


@pytest.mark.parametrize("text", ["", "   ", "\n\t  \n"])
def test_whitespace_only_text_is_a_clear_error(minilm, text):
    with pytest.raises(InputError, match="empty"):
        trace_text(minilm, text)


def test_huge_text_is_a_clear_error(minilm):
    with pytest.raises(InputError, match="limit"):
        trace_text(minilm, "a" * 200_001)


def test_control_characters_alone_are_a_clear_error(minilm):
    with pytest.raises(InputError, match="no tokens"):
        trace_text(minilm, "\u200b\u200b")


@pytest.mark.parametrize(
    "text, expected",
    [
        ("注意力就是你所需要的一切", "力"),  # CJK characters split one by one
        ("I love it 🙂🙂", "[UNK]"),
        ("<b>bold</b> &amp; <script>alert(1)</script>", "<"),
        ("Café naïve ÆØÅ ﬁ", "cafe"),
    ],
)
def test_odd_unicode_traces_correctly(minilm, text, expected):
    trace = trace_text(minilm, text)
    assert expected in trace.tokens
    np.testing.assert_allclose(trace.attention.sum(-1), 1.0, atol=1e-5)


def test_new_lengths_do_not_retrace(minilm):
    trace_text(minilm, "warm up")
    trace_batch(minilm, ["warm up", "warm up the batch path too"])
    before = minilm.encoder.tracing_count()
    for n in (3, 17, 64, 200):
        trace_text(minilm, " ".join(["x"] * n))
    trace_batch(minilm, ["one", "two three four five six seven"])
    assert minilm.encoder.tracing_count() == before


def test_trace_validation_names_both_numbers(minilm):
    trace = trace_text(minilm, SENTENCE)
    message = r"attention has shape \(6, 12, 3, 3\), while 12 tokens need \(6, 12, 12, 12\)"
    with pytest.raises(ValueError, match=message):
        trace.replace(attention=trace.attention[:, :, :3, :3])
    with pytest.raises(ValueError, match=r"words has shape \(3,\), while 12 tokens need \(12,\)"):
        trace.replace(words=np.arange(3, dtype=np.int32))
    with pytest.raises(ValueError, match=r"visible has shape \(6, 3, 3\), while 12 tokens need \(6, 12, 12\)"):
        trace.replace(visible=np.ones((6, 3, 3), dtype=bool))
    with pytest.raises(ValueError, match="visible must be bool, got dtype float32"):
        trace.replace(visible=np.ones((6, 12, 12), dtype=np.float32))
    with pytest.raises(ValueError, match="token_style 'bpe' is not one of"):
        trace.replace(token_style="bpe")


def test_pad_batch_pads_right_and_masks_the_padding():
    ids, segments, mask = pad_batch([np.array([2, 7, 3]), np.array([2, 3])], pad_id=9,
                                    segments=[np.array([0, 0, 1]), np.array([0, 1])], width=4)
    assert ids.dtype == segments.dtype == np.int32 and mask.dtype == bool
    assert ids.tolist() == [[2, 7, 3, 9], [2, 3, 9, 9]]
    assert segments.tolist() == [[0, 0, 1, 0], [0, 1, 0, 0]]
    assert mask.tolist() == [[True, True, True, False], [True, True, False, False]]
    assert pad_batch([np.array([5])], pad_id=0)[1].tolist() == [[0]]  # segments default to 0
    with pytest.raises(ValueError, match=r"width 2 is shorter than the longest sequence \(3 tokens\)"):
        pad_batch([np.array([2, 7, 3])], pad_id=0, width=2)


# --- a decoder's LM head in the trace ---------------------------------------------------------------------------


def test_a_decoders_trace_keeps_its_next_token_candidates_and_surprisal():
    from tests.support.families import load_family, reference

    model, expected = load_family("qwen2"), reference("qwen2")["simple"]
    trace = trace_text(model, str(expected["text"]), full_logits=True)
    t, logits = trace.num_tokens, expected["logits"].astype(np.float64)  # (T, V) transformers' LM head
    assert np.abs(trace.outputs["logits"] - expected["logits"]).max() < 1e-5
    assert trace.outputs["next_ids"].shape == trace.outputs["next_probs"].shape == (t, 10)
    assert trace.outputs["next_ids"].dtype == np.int32 and trace.outputs["next_probs"].dtype == np.float32
    log_softmax = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True)) \
        - logits.max(-1, keepdims=True)
    np.testing.assert_array_equal(trace.outputs["next_ids"][:, 0], logits.argmax(-1))
    np.testing.assert_allclose(trace.outputs["next_probs"][:, 0], np.exp(log_softmax.max(-1)), atol=1e-5)
    following = log_softmax[np.arange(t - 1), trace.token_ids[1:]]
    np.testing.assert_allclose(trace.outputs["next_logprob"][:-1], following, atol=1e-5)
    assert np.isnan(trace.outputs["next_logprob"][-1])
    # the candidates' pieces travel in the trace: a saved trace shows them without the tokenizer
    assert trace.vocab_pieces(trace.outputs["next_ids"][0]).tolist() == [
        model.tokenizer.id_to_token(int(i)) for i in trace.outputs["next_ids"][0]]
    assert trace.key_value_heads == 2 and trace.has_lm_head
    assert "logits" not in trace_text(model, str(expected["text"])).outputs  # (T, V) only when asked


def test_a_decoders_batch_cuts_the_lm_outputs_to_each_text():
    from tests.support.families import load_family

    model = load_family("llama")
    texts = ["The cat sat on the mat because it was tired.", "Hi."]
    for alone, batched in zip((trace_text(model, text) for text in texts), trace_batch(model, texts)):
        assert batched.outputs["next_ids"].shape == alone.outputs["next_ids"].shape
        np.testing.assert_array_equal(batched.outputs["next_ids"][:, 0], alone.outputs["next_ids"][:, 0])
        np.testing.assert_allclose(batched.outputs["next_logprob"], alone.outputs["next_logprob"], atol=1e-5)
        assert np.isnan(batched.outputs["next_logprob"][-1])  # the padding after a text is not its next token


def test_an_encoder_trace_has_no_lm_fields(minilm):
    trace = trace_text(minilm, SENTENCE, full_logits=True)
    assert not trace.has_lm_head and trace.vocab_ids is None and trace.generated is None
    assert trace.key_value_heads == 0 and "logits" not in trace.outputs
