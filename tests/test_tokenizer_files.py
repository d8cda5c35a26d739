"""Folders without tokenizer.json: byte-level BPE from vocab.json + merges.txt, and a SentencePiece Unigram model,
each tokenizing exactly as the reference tokenizer does; and a clear error when no tokenizer file is there."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tokenizers import Tokenizer

from encoder.errors import CheckpointError
from encoder.tokenizer import TextTokenizer
from tests.support.families import FAMILIES_DIR, reference

ROOT = Path(__file__).resolve().parent.parent
SENTENCES = ["The cat sat on the mat because it was tired.", "Where is the station?",
             "Café naïve résumé — 東京の寿司 🍣 was great 🙂!", "  spaces   and\nnew lines\t"]


def _bpe_folder(family: str, folder: Path) -> Path:
    """The fixture's byte-level BPE written the way GPT-2/RoBERTa's slow tokenizers store it."""
    model = json.loads((FAMILIES_DIR / family / "tokenizer.json").read_text(encoding="utf-8"))["model"]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(model["vocab"], ensure_ascii=False), encoding="utf-8")
    merges = [" ".join(pair) if isinstance(pair, list) else pair for pair in model["merges"]]
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    return folder


@pytest.mark.parametrize("family", ["roberta", "gpt2"])
def test_vocab_json_and_merges_tokenize_like_the_fixture(family, tmp_path):
    ours = TextTokenizer.from_folder(_bpe_folder(family, tmp_path), 64, family)
    theirs = Tokenizer.from_file(str(FAMILIES_DIR / family / "tokenizer.json"))
    for case in reference(family).values():
        pair = str(case["pair"]) or None
        encoded = ours.encode(str(case["text"]), pair)
        assert encoded.tokens == tuple(str(t) for t in case["tokens"])
        assert encoded.token_ids.tolist() == case["input_ids"].tolist()
    for text in SENTENCES:
        assert list(ours.encode(text).tokens) == theirs.encode(text).tokens


def test_sentencepiece_unigram_tokenizes_like_sentencepiece(tmp_path):
    import sentencepiece as spm

    lines = (ROOT / "data" / "train.tsv").read_text(encoding="utf-8").splitlines()[1:3001]
    (tmp_path / "corpus.txt").write_text("\n".join(line.split("\t")[-1] for line in lines), encoding="utf-8")
    spm.SentencePieceTrainer.train(
        input=str(tmp_path / "corpus.txt"), model_prefix=str(tmp_path / "spiece"), vocab_size=400,
        model_type="unigram", pad_id=0, unk_id=1, bos_id=-1, eos_id=-1, user_defined_symbols=["[CLS]", "[SEP]"],
        num_threads=1, minloglevel=2)
    processor = spm.SentencePieceProcessor(model_file=str(tmp_path / "spiece.model"))
    ours = TextTokenizer.from_folder(tmp_path, 128, "albert")
    for text in SENTENCES:
        encoded = ours.encode(text)
        assert encoded.tokens[0] == "[CLS]" and encoded.tokens[-1] == "[SEP]"
        assert list(encoded.tokens[1:-1]) == processor.encode(text, out_type=str), text
        assert encoded.token_ids[1:-1].tolist() == processor.encode(text), text
    pair = ours.encode("A cat.", "A dog.")
    assert pair.segment_ids.tolist()[-3:] == [1, 1, 1] and pair.tokens.count("[SEP]") == 2


def test_folders_without_a_usable_tokenizer_say_which_files_are_needed(tmp_path):
    with pytest.raises(CheckpointError, match=r"vocab.json \+ merges.txt .* SentencePiece model"):
        TextTokenizer.from_folder(tmp_path, 64, "roberta")
    (tmp_path / "sentencepiece.bpe.model").write_bytes(b"not a model")
    with pytest.raises(CheckpointError, match=r"needs its tokenizer\.json"):
        TextTokenizer.from_folder(tmp_path, 64, "xlm-roberta")
    with pytest.raises(CheckpointError, match="not a readable SentencePiece model"):
        TextTokenizer.from_folder(tmp_path, 64, "albert")


DECODERS = {  # family -> the special token its tokenizer puts before the text, or None
    "llama": "<|begin_of_text|>", "mistral": "<s>", "qwen2": None, "gemma2": "<bos>", "phi3": None}
UNICODE_WORDS = ["Café", "naïve", "résumé", "—", "東京の寿司", "🍣", "was", "great", "🙂!"]


@pytest.mark.parametrize("family", DECODERS)
def test_decoder_tokenizers_tokenize_like_transformers(family):
    """Llama 3 (byte-level BPE, ``<|begin_of_text|>`` added by its post-processor), SentencePiece BPE with byte
    fallback (Mistral ``<s>``, Gemma ``<bos>`` without a leading ``▁``, Phi-3 nothing added) and Qwen (byte-level,
    nothing added): tokens and ids as the reference, the start token special and the only special one."""
    tokenizer = TextTokenizer.from_folder(FAMILIES_DIR / family, 64)
    assert tokenizer.token_style == ("bytelevel" if family in ("llama", "qwen2") else "metaspace")
    for name, case in reference(family).items():
        if name == "gen":  # the generation case: its prompt, then the generated tokens
            encoded = tokenizer.encode(str(case["prompt"]))
            assert encoded.token_ids.tolist() == case["prompt_ids"].tolist()
            assert encoded.tokens == tuple(str(t) for t in case["tokens"][:len(encoded.tokens)])
        else:
            encoded = tokenizer.encode(str(case["text"]))
            assert encoded.tokens == tuple(str(t) for t in case["tokens"])
            assert encoded.token_ids.tolist() == case["input_ids"].tolist()
        start = DECODERS[family]
        assert encoded.special.tolist() == [start is not None] + [False] * (len(encoded.tokens) - 1)
        assert (encoded.tokens[0] == start) if start else not encoded.special.any()


@pytest.mark.parametrize("family", DECODERS)
def test_decoder_tokens_read_as_words(family):
    """The unicode case read back word by word (``join_pieces`` over ``Encoded.words``): byte-fallback pieces
    (``<0xE2><0x80><0x94>``) and byte-level ones decode to the characters they spell, ``▁`` is the space between
    words (Gemma's first word has none), a newline piece ends a word."""
    from encoder.pieces import join_pieces, readable_piece

    tokenizer = TextTokenizer.from_folder(FAMILIES_DIR / family, 64)
    text = str(reference(family)["unicode"]["text"])
    encoded = tokenizer.encode(text + "\nNew line")
    words = [[token for token, word in zip(encoded.tokens, encoded.words) if word == number]
             for number in range(encoded.words.max() + 1)]
    assert [join_pieces(pieces, tokenizer.token_style) for pieces in words] == [*UNICODE_WORDS[:-1], "🙂!\n", "New",
                                                                              "line"]
    assert (encoded.words[encoded.special] == -1).all() and (encoded.words[~encoded.special] >= 0).all()
    readable = [readable_piece(token, tokenizer.token_style) for token in encoded.tokens]
    assert "⏎" in readable and "was" in readable and "great" in readable
    assert not any("▁" in piece or "Ġ" in piece for piece in readable)


def test_byte_fallback_pieces_decode_by_hand():
    from encoder.pieces import join_pieces, readable_piece

    assert readable_piece("<0x0A>", "metaspace") == "⏎" and readable_piece("▁<0x0A>", "metaspace") == "␣⏎"
    assert readable_piece("<0xE2>", "metaspace") == "<0xE2>"  # a third of "—": shown as its byte
    assert join_pieces(["▁", "<0xE2>", "<0x80>", "<0x94>"], "metaspace") == "—"
    assert join_pieces(["▁caf", "<0xC3>", "<0xA9>", "<0xE2>"], "metaspace") == "café<0xE2>"
    assert readable_piece("<0x0a>", "metaspace") == "<0x0a>"  # SentencePiece writes its bytes in upper case
