"""A thin wrapper over Hugging Face ``tokenizers``: text (+ pair) -> ids, tokens, segments, special mask."""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

from encoder.errors import CheckpointError, InputError

MAX_TEXT_CHARS = 100_000


@dataclass(frozen=True)
class Encoded:
    """One tokenized input. Arrays are (T,)."""

    tokens: tuple[str, ...]
    token_ids: np.ndarray  # (T,) int32
    segment_ids: np.ndarray  # (T,) int32
    special: np.ndarray  # (T,) bool
    truncated: bool
    untruncated_length: int  # tokens before truncation (== T when not truncated)


class TextTokenizer:
    """Wraps a ``tokenizers.Tokenizer`` with padding off and truncation at the model's maximum length.

    Example:
        >>> tok = TextTokenizer.from_folder(folder)  # doctest: +SKIP
        >>> tok.encode("Hello world").tokens  # doctest: +SKIP
        ('[CLS]', 'hello', 'world', '[SEP]')
    """

    def __init__(self, tokenizer: Tokenizer, max_length: int):
        self._tokenizer = tokenizer
        self._tokenizer.no_padding()
        self._tokenizer.no_truncation()
        self.max_length = max_length
        self._lock = threading.Lock()  # the app shares one tokenizer per model between sessions

    @classmethod
    def from_folder(cls, folder: str | Path, max_length: int) -> TextTokenizer:
        """Load ``tokenizer.json``, or build BERT WordPiece from ``vocab.txt`` (+ ``tokenizer_config.json``)."""
        folder = Path(folder)
        if (folder / "tokenizer.json").is_file():
            try:
                return cls(Tokenizer.from_file(str(folder / "tokenizer.json")), max_length)
            except Exception as error:  # tokenizers raises a bare Exception on a malformed file
                raise CheckpointError(f"{folder / 'tokenizer.json'} could not be read: {error}") from error
        if (folder / "vocab.txt").is_file():
            return cls(_wordpiece_from_vocab(folder), max_length)
        raise CheckpointError(
            f"No tokenizer in {folder}: expected tokenizer.json or vocab.txt (save the tokenizer with the model)."
        )

    @property
    def vocab_size(self) -> int:
        return self._tokenizer.get_vocab_size()

    def token_to_id(self, token: str) -> int | None:
        return self._tokenizer.token_to_id(token)

    def to_str(self) -> str:
        return self._tokenizer.to_str()

    def encode(self, text: str, pair: str | None = None, max_tokens: int | None = None) -> Encoded:
        """Tokenize ``text`` (and ``pair``), keeping at most ``max_tokens`` (default: the model's maximum).

        Raises:
            InputError: empty or whitespace-only text, or text over ``MAX_TEXT_CHARS`` characters.
        """
        limit = self.max_length if max_tokens is None else min(int(max_tokens), self.max_length)
        _check_text(text, "Text")
        if pair is not None and pair.strip() == "":
            pair = None
        if pair is not None:
            _check_text(pair, "Second sentence")
        minimum = 3 if pair is None else 5
        if limit < minimum:
            raise InputError(f"max tokens must be at least {minimum} here, got {limit}")

        with self._lock:  # truncation is tokenizer state; encode in full first, re-encode only when too long
            encoding = self._tokenizer.encode(text, pair)
            untruncated = len(encoding.ids)
            truncated = untruncated > limit
            if truncated:
                self._tokenizer.enable_truncation(limit, strategy="longest_first")
                try:
                    encoding = self._tokenizer.encode(text, pair)
                finally:
                    self._tokenizer.no_truncation()
        if not any(m == 0 for m in encoding.special_tokens_mask):
            raise InputError("The text produced no tokens besides the special ones; type some words.")
        return Encoded(
            tokens=tuple(encoding.tokens),
            token_ids=np.asarray(encoding.ids, dtype=np.int32),
            segment_ids=np.asarray(encoding.type_ids, dtype=np.int32),
            special=np.asarray(encoding.special_tokens_mask, dtype=bool),
            truncated=truncated,
            untruncated_length=untruncated,
        )


def _check_text(text: str, what: str) -> None:
    if not isinstance(text, str):
        raise InputError(f"{what} must be a string, got {type(text).__name__}")
    if text.strip() == "":
        raise InputError(f"{what} is empty: type a sentence.")
    if len(text) > MAX_TEXT_CHARS:
        raise InputError(
            f"{what} is {len(text):,} characters long; the limit is {MAX_TEXT_CHARS:,} "
            "(the model reads at most a few hundred tokens anyway). Paste a shorter passage."
        )


def _wordpiece_from_vocab(folder: Path) -> Tokenizer:
    """A BERT WordPiece tokenizer from ``vocab.txt``, honouring ``do_lower_case`` from tokenizer_config.json."""
    lowercase = True
    config_path = folder / "tokenizer_config.json"
    if config_path.is_file():
        try:
            lowercase = bool(json.loads(config_path.read_text(encoding="utf-8")).get("do_lower_case", True))
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise CheckpointError(f"{config_path} is not valid JSON: {error}") from error
    tokenizer = Tokenizer(models.WordPiece.from_file(str(folder / "vocab.txt"), unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=lowercase)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    cls_id, sep_id = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
    if cls_id is None or sep_id is None:
        raise CheckpointError(f"{folder / 'vocab.txt'} has no [CLS] or [SEP] token; it is not a BERT vocabulary.")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)],
    )
    tokenizer.decoder = decoders.WordPiece()
    return tokenizer
