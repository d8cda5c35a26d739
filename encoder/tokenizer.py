"""A thin wrapper over Hugging Face ``tokenizers``: text (+ pair) -> ids, tokens, segments, special mask."""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

from encoder.errors import CheckpointError, InputError
from encoder.pieces import METASPACE, detect_token_style

MAX_TEXT_CHARS = 100_000
SENTENCEPIECE_FILES = ("spiece.model", "tokenizer.model", "sentencepiece.model", "sentencepiece.bpe.model")
ROBERTA_STYLE = ("roberta", "xlm-roberta", "camembert", "mpnet")  # <s> A </s></s> B </s>
NO_SPECIAL_TOKENS = ("gpt2",)  # the text alone
CLIP_MERGES = 49152 - 256 - 2  # the merges CLIP's tokenizer reads from merges.txt (transformers' CLIPTokenizer)
T5 = ("t5", "umt5")  # A </s>, <extra_id_N> after the SentencePiece pieces
FAIRSEQ_SHIFTED = ("xlm-roberta", "camembert")  # ids are the SentencePiece ids shifted (fairseq): tokenizer.json needed
CLIP_TYPES = ("clip_text_model", "clip", "clip_text_model_with_projection")  # CLIP's BPE: lower case, </w> word ends
CLIP_END_OF_WORD = "</w>"
# CLIP's word split (its slow tokenizer's regex, as transformers' CLIPConverter gives it to tokenizers): the common
# English contractions, runs of letters, single digits, runs of anything else that is not a space
CLIP_SPLIT = r"""'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""


@dataclass(frozen=True)
class Encoded:
    """One tokenized input. Arrays are (T,)."""

    tokens: tuple[str, ...]
    token_ids: np.ndarray  # (T,) int32
    segment_ids: np.ndarray  # (T,) int32
    special: np.ndarray  # (T,) bool
    truncated: bool
    untruncated_length: int  # tokens before truncation (== T when not truncated)
    words: np.ndarray | None = None  # (T,) int32: the word of each token (B's words follow A's), -1 for special
    token_style: str = ""  # how the tokens mark words (encoder.pieces.TOKEN_STYLES)


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
        config = json.loads(tokenizer.to_str())
        self.token_style = detect_token_style(config)
        # SentencePiece BPE (Llama 2, Mistral, Gemma, Phi-3) hands the whole text to the model as one "word": its
        # words are then read from the ▁ marks of the tokens
        self._words_from_marks = self.token_style == "metaspace" and not _splits_words(config.get("pre_tokenizer"))
        self._lock = threading.Lock()  # the app shares one tokenizer per model between sessions

    @classmethod
    def from_folder(cls, folder: str | Path, max_length: int, model_type: str | None = None) -> TextTokenizer:
        """Load the folder's tokenizer: ``tokenizer.json`` first; else WordPiece from ``vocab.txt``, byte-level
        BPE from ``vocab.json`` + ``merges.txt`` (CLIP's lower-case ``</w>`` BPE when ``model_type`` is CLIP's or
        the vocabulary has ``</w>`` pieces, as Stable Diffusion's ``tokenizer/`` folders ship it), or a
        SentencePiece Unigram model (``spiece.model``, ...), with the special tokens of ``model_type``'s family
        around the text (``[CLS] A [SEP]``, ``<s> A </s>``, ``<|startoftext|> A <|endoftext|>``, or nothing for
        GPT-2).
        """
        folder = Path(folder)
        if (folder / "tokenizer.json").is_file():
            try:
                return cls(Tokenizer.from_file(str(folder / "tokenizer.json")), max_length)
            except Exception as error:  # tokenizers raises a bare Exception on a malformed file
                raise CheckpointError("tokenizer.json could not be read as a tokenizers file; save the tokenizer "
                                      "again with the model.") from error
        if (folder / "vocab.txt").is_file():
            return cls(_wordpiece_from_vocab(folder), max_length)
        if (folder / "vocab.json").is_file() and (folder / "merges.txt").is_file():
            return cls(_byte_level_bpe(folder, model_type), max_length)  # CLIP's recipe when the vocabulary is CLIP's
        sentencepiece = next((folder / name for name in SENTENCEPIECE_FILES if (folder / name).is_file()), None)
        if sentencepiece is not None:
            return cls(_sentencepiece_unigram(sentencepiece, model_type), max_length)
        raise CheckpointError(
            "No tokenizer in the model folder: expected tokenizer.json, or vocab.txt (WordPiece), or vocab.json + "
            f"merges.txt (byte-level BPE), or a SentencePiece model ({', '.join(SENTENCEPIECE_FILES)}). Save the "
            "tokenizer with the model."
        )

    @property
    def vocab_size(self) -> int:
        return self._tokenizer.get_vocab_size()

    def token_to_id(self, token: str) -> int | None:
        return self._tokenizer.token_to_id(token)

    def id_to_token(self, token_id: int) -> str:
        """The token piece of ``token_id`` as the tokenizer spells it (like ``Encoded.tokens``); ``"<id N>"`` for an
        id the tokenizer does not know (a model's vocabulary may be larger than its tokenizer's)."""
        piece = self._tokenizer.id_to_token(int(token_id))
        return f"<id {int(token_id)}>" if piece is None else piece

    def special_ids(self) -> frozenset[int]:
        """The ids of the tokenizer's special tokens (``<s>``, ``<|endoftext|>``, ...)."""
        return frozenset(i for i, token in self._tokenizer.get_added_tokens_decoder().items() if token.special)

    def decode(self, ids) -> str:
        """The text of token ``ids`` as the tokenizer decodes them (special tokens skipped)."""
        return self._tokenizer.decode([int(i) for i in ids])

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
            words=(_words_from_marks(encoding.tokens, encoding.sequence_ids, encoding.special_tokens_mask)
                   if self._words_from_marks else
                   _word_numbers(encoding.word_ids, encoding.sequence_ids, encoding.special_tokens_mask)),
            token_style=self.token_style,
        )


def _word_numbers(word_ids: list[int | None], sequence_ids: list[int | None], special: list[int]) -> np.ndarray:
    """(T,) int32 word numbers across a pair: sentence B's words numbered on after A's; -1 for special tokens."""
    words = np.array([-1 if w is None or s else w for w, s in zip(word_ids, special)], dtype=np.int32)
    in_b = np.array([s == 1 for s in sequence_ids], dtype=bool) & (words >= 0)
    in_a = ~in_b & (words >= 0)
    words[in_b] += int(words[in_a].max()) + 1 if in_a.any() else 0
    return words


def _words_from_marks(tokens: list[str], sequence_ids: list[int | None], special: list[int]) -> np.ndarray:
    """(T,) int32 word numbers of SentencePiece pieces, counted on across a pair: a word starts at a piece that
    begins with ``▁``, at the first piece of a sentence and after a special token or a newline (``<0x0A>``); -1 for
    special tokens."""
    words = np.full(len(tokens), -1, dtype=np.int32)
    word, previous = -1, None
    for index, (token, sequence, is_special) in enumerate(zip(tokens, sequence_ids, special)):
        if is_special:
            previous = None
            continue
        if previous is None or token.startswith(METASPACE) or sequence != previous[1] or \
                previous[0].endswith("<0x0A>"):
            word += 1
        words[index], previous = word, (token, sequence)
    return words


def _splits_words(pre_tokenizer: dict | None) -> bool:
    """Whether a tokenizer's pre-tokenizer (JSON) cuts the text into words: anything but nothing or a Metaspace
    that does not split (``split: false``, SentencePiece BPE's), alone or in a Sequence."""
    if not isinstance(pre_tokenizer, dict):
        return False
    if pre_tokenizer.get("type") == "Sequence":
        return any(_splits_words(part) for part in pre_tokenizer.get("pretokenizers") or [])
    return not (pre_tokenizer.get("type") == "Metaspace" and pre_tokenizer.get("split") is False)


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
            raise CheckpointError("tokenizer_config.json is not valid JSON (in UTF-8).") from error
    tokenizer = Tokenizer(models.WordPiece.from_file(str(folder / "vocab.txt"), unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=lowercase)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    cls_id, sep_id = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
    if cls_id is None or sep_id is None:
        raise CheckpointError("vocab.txt has no [CLS] or [SEP] token; it is not a BERT vocabulary.")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)],
    )
    tokenizer.decoder = decoders.WordPiece()
    return tokenizer


def _template(tokenizer: Tokenizer, model_type: str | None, cls: str, sep: str) -> None:
    """Put the family's special tokens around the text: RoBERTa-style ``<s> A </s></s> B </s>``, BERT-style
    ``[CLS] A [SEP] B [SEP]`` (B's tokens of type 1), or nothing (GPT-2)."""
    if model_type in NO_SPECIAL_TOKENS:
        return
    cls_id, sep_id = tokenizer.token_to_id(cls), tokenizer.token_to_id(sep)
    if cls_id is None or sep_id is None:
        raise CheckpointError(f"the tokenizer's vocabulary has no {cls} or {sep} token for {model_type or 'this'} "
                              "model; save tokenizer.json with the model.")
    if model_type in ROBERTA_STYLE:
        single, pair = f"{cls} $A {sep}", f"{cls} $A {sep} {sep} $B {sep}"
    else:
        single, pair = f"{cls} $A {sep}", f"{cls} $A {sep} $B:1 {sep}:1"
    tokenizer.post_processor = processors.TemplateProcessing(
        single=single, pair=pair, special_tokens=[(cls, cls_id), (sep, sep_id)])


def _read_json(path: Path) -> dict:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise CheckpointError(f"{path.name} is not valid JSON (in UTF-8).") from error
    return data if isinstance(data, dict) else {}


def _byte_level_bpe(folder: Path, model_type: str | None) -> Tokenizer:
    """GPT-2/RoBERTa byte-level BPE from ``vocab.json`` + ``merges.txt`` (as their slow tokenizers read them), or
    CLIP's (``_clip_bpe``) when ``model_type`` is CLIP's or the vocabulary ends words with ``</w>``."""
    try:
        vocab, merges = models.BPE.read_file(str(folder / "vocab.json"), str(folder / "merges.txt"))
    except Exception as error:  # tokenizers raises a bare Exception on malformed files
        raise CheckpointError("vocab.json/merges.txt could not be read as byte-level BPE; save tokenizer.json with "
                              "the model.") from error
    config = _read_json(folder / "tokenizer_config.json")
    if model_type in CLIP_TYPES or any(piece.endswith(CLIP_END_OF_WORD) for piece in vocab):
        return _clip_bpe(vocab, merges[:CLIP_MERGES], config, _read_json(folder / "special_tokens_map.json"))
    try:
        tokenizer = Tokenizer(models.BPE(vocab, merges))
    except Exception as error:
        raise CheckpointError("vocab.json/merges.txt could not be read as byte-level BPE; save tokenizer.json with "
                              "the model.") from error
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=bool(config.get("add_prefix_space", False)))
    tokenizer.decoder = decoders.ByteLevel()
    specials = ["<s>", "</s>", "<pad>", "<unk>", "<mask>", "<|endoftext|>"]
    tokenizer.add_special_tokens([token for token in specials if tokenizer.token_to_id(token) is not None])
    _template(tokenizer, model_type, "<s>", "</s>")
    return tokenizer


def _sentencepiece_unigram(path: Path, model_type: str | None) -> Tokenizer:
    """A SentencePiece Unigram model as a ``tokenizers`` Unigram with the model's own normalizer (its precompiled
    character map) and ``▁`` word boundaries; ids are the SentencePiece ids (ALBERT, DeBERTa-v3, T5 use them as
    they are)."""
    if model_type in FAIRSEQ_SHIFTED:
        raise CheckpointError(
            f"{model_type} numbers its tokens differently from its SentencePiece file ({path.name}), so Headlight "
            "needs its tokenizer.json: save it once with transformers (AutoTokenizer.from_pretrained(folder)"
            ".save_pretrained(folder)).")
    from sentencepiece import sentencepiece_model_pb2

    proto = sentencepiece_model_pb2.ModelProto()
    try:
        proto.ParseFromString(path.read_bytes())
    except Exception as error:  # protobuf raises DecodeError (and others) on a damaged file
        raise CheckpointError(f"{path.name} is not a readable SentencePiece model.") from error
    if proto.trainer_spec.model_type != 1:
        raise CheckpointError(f"{path.name} is a SentencePiece BPE model; Headlight reads SentencePiece Unigram "
                              "models only: save tokenizer.json with the model.")
    vocab = [(piece.piece, piece.score) for piece in proto.pieces]
    tokenizer = Tokenizer(models.Unigram(vocab, proto.trainer_spec.unk_id, proto.trainer_spec.byte_fallback))
    tokenizer.normalizer = _sentencepiece_normalizer(path.parent, proto)
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tokenizer.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    control = [piece.piece for piece in proto.pieces if piece.type in (2, 3, 4)]  # control, user-defined, unknown
    tokenizer.add_special_tokens(control)
    if model_type in T5:
        _t5_specials(tokenizer, path.parent, len(proto.pieces))
        return tokenizer
    _template(tokenizer, model_type, "[CLS]", "[SEP]")
    return tokenizer


def _t5_specials(tokenizer: Tokenizer, folder: Path, pieces: int) -> None:
    """T5's tokens after the SentencePiece pieces, as ``T5Tokenizer`` adds them: ``<extra_id_{n-1}>`` ...
    ``<extra_id_0>`` (n: ``extra_ids`` of tokenizer_config.json, else the ``<extra_id_N>`` it names, else 100),
    and ``A </s>`` (pair: ``A </s> B </s>``, all of type 0)."""
    config = _read_json(folder / "tokenizer_config.json")
    named = [t for key in ("extra_special_tokens", "additional_special_tokens") for t in config.get(key) or []
             if isinstance(t, str) and t.startswith("<extra_id_")]
    count = config.get("extra_ids")
    count = count if isinstance(count, int) and not isinstance(count, bool) and 0 <= count <= 1000 else (
        len(named) if named else 100)
    tokenizer.add_special_tokens([f"<extra_id_{count - 1 - i}>" for i in range(count)])
    if tokenizer.token_to_id("<extra_id_0>") not in (None, pieces + count - 1) and count:
        raise CheckpointError("the SentencePiece model already holds T5's <extra_id_N> tokens in another order; save "
                              "tokenizer.json with the model.")
    eos = tokenizer.token_to_id("</s>")
    if eos is None:
        raise CheckpointError("the tokenizer's vocabulary has no </s> token for a T5 model; save tokenizer.json "
                              "with the model.")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", eos)])


def _sentencepiece_normalizer(folder: Path, proto) -> normalizers.Normalizer:
    """The model's precompiled normalisation (NFKC and friends), collapsing repeated spaces and, as SentencePiece
    does by default, stripping them at both ends; ALBERT's tokenizer
    options (``do_lower_case``, ``keep_accents``) from tokenizer_config.json come first, as its tokenizer applies
    them."""
    config = _read_json(folder / "tokenizer_config.json")
    steps: list[normalizers.Normalizer] = []
    if config.get("keep_accents") is False:
        steps += [normalizers.NFKD(), normalizers.StripAccents()]
    if config.get("do_lower_case"):
        steps.append(normalizers.Lowercase())
    if proto.normalizer_spec.precompiled_charsmap:
        steps.append(normalizers.Precompiled(proto.normalizer_spec.precompiled_charsmap))
    steps.append(normalizers.Replace(Regex(" {2,}"), " "))
    if proto.normalizer_spec.remove_extra_whitespaces:  # SentencePiece's default: no space at either end
        steps.append(normalizers.Strip())
    return normalizers.Sequence(steps)


def _special_token(configs: tuple[dict, ...], name: str, default: str) -> str:
    """The ``name`` special token (``bos_token``, ...) of tokenizer_config.json / special_tokens_map.json: a string
    or an added-token dict with its ``content``; ``default`` when neither says."""
    for config in configs:
        value = config.get(name)
        if isinstance(value, dict):
            value = value.get("content")
        if isinstance(value, str) and value:
            return value
    return default


def _clip_bpe(vocab: dict, merges: list, config: dict, special_map: dict) -> Tokenizer:
    """CLIP's tokenizer from its ``vocab.json`` + ``merges.txt`` (what transformers' CLIPConverter builds from the
    slow tokenizer): NFC, runs of whitespace made one space, lower case; CLIP's word split then byte-level
    characters; BPE whose word-final pieces end in ``</w>``; ``<|startoftext|> A <|endoftext|>`` around the text.
    Truncation (``TextTokenizer.encode``) keeps the two special tokens, so ``<|endoftext|>`` stays last."""
    configs = (config, special_map)
    bos = _special_token(configs, "bos_token", "<|startoftext|>")
    eos = _special_token(configs, "eos_token", "<|endoftext|>")
    unk = _special_token(configs, "unk_token", eos)
    missing = [token for token in dict.fromkeys((bos, eos, unk)) if token not in vocab]
    if missing:
        raise CheckpointError(f"vocab.json has no {' or '.join(missing)} token for a CLIP tokenizer; save "
                              "tokenizer.json with the model.")
    try:
        model = models.BPE(vocab, merges, unk_token=unk, continuing_subword_prefix="",
                           end_of_word_suffix=CLIP_END_OF_WORD, fuse_unk=False)
    except Exception as error:  # tokenizers raises a bare Exception on merges it cannot build
        raise CheckpointError("vocab.json/merges.txt could not be read as CLIP's BPE; save tokenizer.json with the "
                              "model.") from error
    tokenizer = Tokenizer(model)
    tokenizer.normalizer = normalizers.Sequence(
        [normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Lowercase()])
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(CLIP_SPLIT), behavior="removed", invert=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False),
    ])
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.add_special_tokens(list(dict.fromkeys((bos, eos))))
    # RobertaProcessing rather than a template: it keeps the byte-level offsets right (as CLIPConverter does); a
    # pair is <|startoftext|> A <|endoftext|><|endoftext|> B <|endoftext|>, as CLIP's slow tokenizer writes it
    tokenizer.post_processor = processors.RobertaProcessing(
        (eos, vocab[eos]), (bos, vocab[bos]), trim_offsets=False, add_prefix_space=False)
    return tokenizer
