"""Tokens as people read them (byte-level BPE, SentencePiece, WordPiece) with the fixtures' real tokenizers, and
sub-words merged into words."""

import numpy as np
import pytest
from tokenizers import Tokenizer

from analysis import attention_rollout, merge_words, word_starts
from encoder.errors import AnalysisError
from encoder.pieces import byte_alphabet, detect_token_style, join_pieces, readable_piece
from encoder.tokenizer import TextTokenizer
from tests.support.families import FAMILIES_DIR
from tests.support.traces import assert_same_trace, synthetic_trace


def tokenized(family: str, text: str, pair: str | None = None):
    """A synthetic trace over the real tokens of ``family``'s tokenizer (random attention)."""
    tokenizer = TextTokenizer(Tokenizer.from_file(str(FAMILIES_DIR / family / "tokenizer.json")), 64)
    encoded = tokenizer.encode(text, pair)
    return synthetic_trace(encoded.tokens, special=encoded.special, words=encoded.words,
                           segment_ids=encoded.segment_ids, token_style=encoded.token_style, text=text)


# --- token styles and readable tokens --------------------------------------------------------------------------


@pytest.mark.parametrize(("family", "style"), [("roberta", "bytelevel"), ("gpt2", "bytelevel"),
                                               ("xlm-roberta", "metaspace"), ("albert", "metaspace"),
                                               ("bert-cls", "wordpiece")])
def test_the_token_style_is_read_from_the_tokenizer(family, style):
    assert tokenized(family, "a test").token_style == style


def test_styles_inside_sequences_and_unknown_tokenizers():
    llama = {"decoder": {"type": "Sequence", "decoders": [
        {"type": "Replace", "pattern": {"String": "▁"}, "content": " "}, {"type": "ByteFallback"}]}}
    assert detect_token_style(llama) == "metaspace"
    assert detect_token_style({"pre_tokenizer": {"type": "Sequence", "pretokenizers": [
        {"type": "Split"}, {"type": "ByteLevel"}]}}) == "bytelevel"
    assert detect_token_style({"model": {"type": "WordPiece", "continuing_subword_prefix": "##"}}) == "wordpiece"
    assert detect_token_style({"model": {"type": "BPE"}}) == ""


def test_the_byte_alphabet_is_gpt2s():
    alphabet = byte_alphabet()
    assert len(alphabet) == 256 and sorted(alphabet.values()) == list(range(256))
    assert (alphabet["Ġ"], alphabet["Ċ"], alphabet["A"], alphabet["é"]) == (0x20, 0x0A, 0x41, 0xE9)


def test_roberta_byte_pieces_read_as_text():
    trace = tokenized("roberta", "Café naïve, 日本 hello world.\nNew line")
    readable = trace.readable_tokens
    assert trace.tokens[0] == "<s>" and readable[0] == "<s>"  # special tokens unchanged
    assert "Ġhe" in trace.tokens and "he" in readable  # the space before a word is dropped
    assert readable[trace.tokens.index("Ċ")] == "⏎"
    assert readable[trace.tokens.index("Ġ")] == "␣"
    assert "<0xC3>" in readable and "Ã" not in readable  # half of "é": its byte, as SentencePiece shows bytes
    assert not any(token.startswith("Ġ") for token in readable)
    assert len(readable) == trace.num_tokens


def test_readable_pieces_by_hand():
    assert readable_piece("Ã©", "bytelevel") == "é"
    assert readable_piece("ĠÃ©t", "bytelevel") == "ét"
    assert readable_piece("ĠĠ", "bytelevel") == "␣␣"
    assert readable_piece("ĊĊ", "bytelevel") == "⏎⏎"
    assert readable_piece("æĹ¥", "bytelevel") == "日"
    assert readable_piece("<|endoftext|>", "bytelevel") == "<|endoftext|>"  # not in the byte alphabet
    assert readable_piece("▁Ca", "metaspace") == "Ca" and readable_piece("▁", "metaspace") == "␣"
    assert readable_piece("##s", "wordpiece") == "##s" and readable_piece("Ġx", "") == "Ġx"


def test_sentencepiece_and_wordpiece_tokens_read_as_expected():
    xlmr = tokenized("xlm-roberta", "Café naïve")
    assert xlmr.readable_tokens[1:4] == ("Ca", "f", "é") and xlmr.tokens[1] == "▁Ca"
    bert = tokenized("bert-cls", "Café naïve")
    assert bert.readable_tokens == bert.tokens  # WordPiece reads as it is: BERT figures stay as they were


def test_joined_pieces_read_as_the_word():
    assert join_pieces(["C", "a", "f", "Ã", "©"], "bytelevel") == "Café"
    assert join_pieces(["Ġ", "æĹ", "¥"], "bytelevel") == "日"
    assert join_pieces(["▁na", "ï", "ve"], "metaspace") == "naïve"
    assert join_pieces(["hel", "##l", "##o"], "wordpiece") == "hello"
    assert join_pieces(["Ċ"], "bytelevel") == "⏎"


# --- merging sub-words into words ------------------------------------------------------------------------------

PIECES = ["[CLS]", "the", "play", "##ful", "##ly", "cat", "[SEP]", "pur", "##rs", "[SEP]"]
WORDS = [-1, 0, 1, 1, 1, 2, -1, 3, 3, -1]


def test_attention_to_a_word_is_summed_and_from_a_word_averaged_so_rows_sum_to_one():
    trace = synthetic_trace(PIECES, words=WORDS, segment_ids=[0] * 7 + [1] * 3, token_style="wordpiece")
    merged = merge_words(trace)
    assert merged.tokens == ("[CLS]", "the", "playfully", "cat", "[SEP]", "purrs", "[SEP]")
    assert word_starts(trace).tolist() == [0, 1, 2, 5, 6, 7, 9]
    a = trace.attention.astype(np.float64)
    expected = a[:, :, 2:5, :][..., 7:9].sum(-1).mean(-1)  # from "playfully" to "purrs"
    np.testing.assert_allclose(merged.attention[:, :, 2, 5], expected, rtol=1e-6)
    np.testing.assert_allclose(merged.attention.sum(-1), 1.0, atol=1e-6)
    np.testing.assert_allclose(merged.hidden[:, 2], trace.hidden[:, 2:5].mean(axis=1), rtol=1e-6)
    np.testing.assert_allclose(merged.positional[5], trace.positional[7:9].mean(axis=0), rtol=1e-6)
    assert merged.words.tolist() == [-1, 0, 1, 2, -1, 3, -1] and merged.words.dtype == np.int32
    assert merged.special.tolist() == [True, False, False, False, True, False, True]
    assert merged.segment_ids.tolist() == [0, 0, 0, 0, 0, 1, 1] and merged.is_pair
    assert merged.token_style == "" and merged.readable_tokens == merged.tokens
    assert merged.attention.dtype == merged.hidden.dtype == np.float32


def test_merging_a_trace_of_one_token_words_is_the_identity():
    tokens = ["[CLS]", "the", "cat", "sat", "[SEP]"]
    trace = synthetic_trace(tokens, words=[-1, 0, 1, 2, -1], visible="causal")
    assert_same_trace(merge_words(trace), trace)


def test_merging_keeps_a_causal_mask_consistent_and_rollout_row_stochastic():
    trace = synthetic_trace(["the", "play", "##ful", "cat", "pur", "##rs"], words=[0, 1, 1, 2, 3, 3],
                            visible="causal", layers=3, token_style="wordpiece")
    merged = merge_words(trace)
    causal = np.tri(4, dtype=bool)
    np.testing.assert_array_equal(merged.visible, np.broadcast_to(causal, (3, 4, 4)))
    assert (merged.attention[:, :, ~causal] == 0.0).all()
    np.testing.assert_allclose(merged.attention.sum(-1), 1.0, atol=1e-6)
    for attention in (trace.attention, merged.attention):
        rollout = attention_rollout(attention)
        np.testing.assert_allclose(rollout.sum(-1), 1.0, atol=1e-5)
        assert np.abs(rollout[:, ~np.tri(attention.shape[-1], dtype=bool)]).max() == 0.0  # still causal


def test_real_byte_level_and_sentencepiece_words_read_as_text():
    roberta = merge_words(tokenized("roberta", "Café naïve, 日本\nend", "Second one."))
    assert roberta.tokens == ("<s>", "Café", "naïve", ",", "日本", "⏎", "end", "</s>", "</s>", "Second", "one", ".",
                              "</s>")
    xlmr = merge_words(tokenized("xlm-roberta", "Café naïve"))
    assert xlmr.tokens == ("<s>", "Café", "naïve", "</s>")
    gpt2 = merge_words(tokenized("gpt2", "Café naïve"))
    assert gpt2.tokens == ("Café", "naïve")


def test_a_trace_without_words_cannot_be_merged():
    with pytest.raises(AnalysisError, match="does not say which word each token belongs to"):
        merge_words(synthetic_trace(["[CLS]", "a", "[SEP]"]))
