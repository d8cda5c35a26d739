"""CLIP's tokenizer as image-model repositories ship it: Stable Diffusion's ``tokenizer/`` folder has vocab.json +
merges.txt and no tokenizer.json. Built from those two files it tokenizes exactly as the fixture's tokenizer.json
(made by transformers from the same vocabulary): tokens, ids, special mask, words, and the readable pieces."""

from __future__ import annotations

import json

import pytest

from encoder.errors import CheckpointError, InputError
from encoder.pieces import join_pieces, readable_piece
from encoder.tokenizer import TextTokenizer
from tests.support.diffusers import sd_clip_tokenizer as _sd_tokenizer_folder  # Stable Diffusion's tokenizer/
from tests.support.families import FAMILIES_DIR, reference

CLIP = FAMILIES_DIR / "clip-text"
ODD_TEXTS = [
    "A PHOTO OF AN ASTRONAUT Riding A Horse",
    "a   photo\t\tof  a\n\ncat,   highly detailed",
    "  leading and trailing spaces  ",
    "an emoji 🍣🙂 and a flag 🇫🇷 in the prompt",
    "Café crème brûlée, naïve Ångström, ÉCOLE",
    "e\u0301cole (decomposed accent) vs \u00e9cole",
    "it's what you'll see, they're here, I'd've 1234 x 56.7",
    "masterpiece!!! (best quality:1.2), [worst] {odd} <tags> #hash @at",
]


@pytest.fixture(scope="module")
def both(tmp_path_factory) -> tuple[TextTokenizer, TextTokenizer]:
    folder = _sd_tokenizer_folder(tmp_path_factory.mktemp("sd") / "tokenizer")
    assert not (folder / "tokenizer.json").exists()
    return (TextTokenizer.from_folder(folder, 64, "clip_text_model"), TextTokenizer.from_folder(CLIP, 64))


def _same(ours, theirs) -> None:
    assert ours.tokens == theirs.tokens
    assert ours.token_ids.tolist() == theirs.token_ids.tolist()
    assert ours.special.tolist() == theirs.special.tolist()
    assert ours.words.tolist() == theirs.words.tolist()
    assert ours.segment_ids.tolist() == theirs.segment_ids.tolist()
    assert ours.token_style == theirs.token_style == "clip"


@pytest.mark.parametrize("case", ["simple", "joined", "unicode"])
def test_the_fixture_cases_tokenize_as_the_reference(both, case):
    ref = reference("clip-text")[case]
    ours, theirs = (tok.encode(str(ref["text"])) for tok in both)
    assert ours.tokens == tuple(str(t) for t in ref["tokens"])
    assert ours.token_ids.tolist() == ref["input_ids"].tolist()
    assert (ours.tokens[0], ours.tokens[-1]) == ("<|startoftext|>", "<|endoftext|>")
    assert ours.special.tolist() == [True] + [False] * (len(ours.tokens) - 2) + [True]
    _same(ours, theirs)


@pytest.mark.parametrize("text", ODD_TEXTS)
def test_odd_text_tokenizes_as_tokenizer_json(both, text):
    ours, theirs = (tok.encode(text) for tok in both)
    _same(ours, theirs)
    words = {}  # the words as people read them: lower case, no whitespace left
    for piece, word in zip(ours.tokens[1:-1], ours.words[1:-1].tolist()):
        words.setdefault(word, []).append(piece)
    readable = [join_pieces(pieces, "clip") for pieces in words.values()]
    assert all(word == word.lower() and word.strip() == word and "</w>" not in word for word in readable)


def test_case_and_whitespace_do_not_change_the_tokens(both):
    ours, _ = both
    plain = ours.encode("a photo of a cat")
    assert ours.encode("A  PHOTO\tof\n\na Cat ").tokens == plain.tokens
    assert ours.encode("e\u0301cole").tokens == ours.encode("\u00e9cole").tokens  # NFC first


def test_a_pair_tokenizes_as_tokenizer_json(both):
    ours, theirs = (tok.encode("a photo of a cat", "a painting of a dog") for tok in both)
    _same(ours, theirs)


@pytest.mark.parametrize("text", ["", "   ", "\t\n  \n", "\u3000\u00a0 \u2028", "\r\n\x0b\x0c"])
def test_text_that_is_only_whitespace_is_refused_by_both(both, text):
    for tok in both:  # CLIP's normaliser would leave nothing of it; refused before tokenizing, as for every family
        with pytest.raises(InputError, match="empty"):
            tok.encode(text)


def test_invisible_characters_are_bytes_to_both(both):
    ours, theirs = (tok.encode("\u200b\u200d") for tok in both)  # zero-width: not whitespace, so not cut
    _same(ours, theirs)
    assert not ours.special[1:-1].any()


@pytest.mark.parametrize("max_tokens", [3, 5, 8])
def test_truncation_keeps_end_of_text_last(both, max_tokens):
    text = "a photograph of an astronaut riding a horse on the moon, highly detailed, trending"
    ours, theirs = (tok.encode(text, max_tokens=max_tokens) for tok in both)
    _same(ours, theirs)
    assert len(ours.tokens) == max_tokens and ours.truncated
    assert (ours.tokens[0], ours.tokens[-1]) == ("<|startoftext|>", "<|endoftext|>")
    assert ours.tokens[1:-1] == both[0].encode(text).tokens[1:max_tokens - 1]


def test_readable_pieces_drop_the_end_of_word_mark(both):
    encoded = both[0].encode("Café photos")
    pieces = encoded.tokens[1:-1]
    assert "".join(readable_piece(t, "clip") for t in pieces if t.endswith("</w>")) != ""
    words = {}
    for piece, word in zip(pieces, encoded.words[1:-1].tolist()):
        words.setdefault(word, []).append(piece)
    assert [join_pieces(p, "clip") for p in words.values()] == ["café", "photos"]


def test_clip_recipe_is_picked_from_the_vocabulary_without_a_model_type(tmp_path):
    folder = _sd_tokenizer_folder(tmp_path / "tokenizer")
    tok = TextTokenizer.from_folder(folder, 64)
    assert tok.token_style == "clip"
    ref = reference("clip-text")["simple"]
    assert tok.encode(str(ref["text"])).token_ids.tolist() == ref["input_ids"].tolist()


def test_a_clip_vocabulary_without_its_special_tokens_is_refused(tmp_path):
    folder = _sd_tokenizer_folder(tmp_path / "tokenizer")
    vocab = json.loads((folder / "vocab.json").read_text(encoding="utf-8"))
    del vocab["<|startoftext|>"]
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    with pytest.raises(CheckpointError, match="startoftext") as refused:
        TextTokenizer.from_folder(folder, 64, "clip_text_model")
    assert str(tmp_path) not in str(refused.value)  # no server paths in messages
