"""Tokens as people read them (byte-level BPE, SentencePiece, WordPiece) with the fixtures' real tokenizers, and
sub-words merged into words."""

import pytest
from tokenizers import Tokenizer

from encoder.pieces import byte_alphabet, detect_token_style, join_pieces, readable_piece
from encoder.tokenizer import TextTokenizer
from tests.support.families import FAMILIES_DIR
from tests.support.traces import synthetic_trace


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
    assert "Ã" in readable  # half of "é" is no UTF-8 on its own: kept as it is
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
