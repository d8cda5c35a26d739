"""How tokenizers mark words inside their tokens, and tokens as people read them.

A token style names the convention (``TOKEN_STYLES``):

- ``"wordpiece"`` (BERT): a piece that continues a word starts with ``##``.
- ``"bytelevel"`` (GPT-2, RoBERTa): byte-level BPE. Every byte of the UTF-8 text is one printable character of
  GPT-2's byte-to-unicode alphabet (``byte_alphabet``): ``Ġ`` is a space (before a word), ``Ċ`` a newline, and a
  character such as "é" becomes two pieces' worth of characters (``Ã©``).
- ``"clip"`` (CLIP's text encoder, Stable Diffusion's prompts): byte-level BPE like GPT-2's but lower-cased, with
  no space marks: a piece that ends a word ends in ``</w>`` (``"cat</w>"``, ``"ph"`` + ``"oto</w>"``).
- ``"metaspace"`` (SentencePiece: ALBERT, XLM-R, DeBERTa-v3; the SentencePiece BPE of Llama 2, Mistral, Gemma and
  Phi-3): ``▁`` is a space before a word; with byte fallback a character missing from the vocabulary is one piece
  per UTF-8 byte, written ``<0xE2>`` (a newline is ``<0x0A>``).
- ``""``: unknown or other; tokens are shown as they are.

Pure Python: no NumPy, no ``tokenizers``.
"""

from __future__ import annotations

import functools
import re

TOKEN_STYLES = ("", "wordpiece", "bytelevel", "metaspace", "clip")
WORDPIECE_PREFIX = "##"
METASPACE = "▁"
END_OF_WORD = "</w>"  # CLIP's BPE: the suffix of a word's last piece
SPACE_MARK, NEWLINE_MARK = "␣", "⏎"  # how a piece that is only whitespace is shown
BYTE_PIECES = re.compile(r"(?:<0x[0-9A-F]{2}>)+")  # SentencePiece's byte fallback: one piece per byte


@functools.cache
def byte_alphabet() -> dict[str, int]:
    """GPT-2's byte-to-unicode table, reversed: character -> byte (256 entries).

    Printable Latin-1 bytes stand for themselves; the other 68 (control characters, space, 0x7F-0xA0, 0xAD) are
    mapped in order to U+0100 onwards, so the space 0x20 is ``Ġ`` (U+0120) and the newline 0x0A is ``Ċ``.
    """
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars = {byte: chr(byte) for byte in printable}
    extra = 0
    for byte in range(256):
        if byte not in chars:
            chars[byte] = chr(256 + extra)
            extra += 1
    return {char: byte for byte, char in chars.items()}


def detect_token_style(config: dict) -> str:
    """The token style of a tokenizer from its JSON (``json.loads(tokenizer.to_str())``), or "" when unknown.

    A BPE model whose word-final pieces end in ``</w>`` is CLIP's; otherwise the decoder says it most directly;
    then the pre-tokenizer; then the model (WordPiece with a ``##`` prefix). Sequences of decoders or
    pre-tokenizers are searched in order.
    """
    model = config.get("model") or {}
    if model.get("type") == "BPE" and model.get("end_of_word_suffix") == END_OF_WORD:
        return "clip"
    for part in (config.get("decoder"), config.get("pre_tokenizer")):
        style = _component_style(part)
        if style:
            return style
    if model.get("type") == "WordPiece" and model.get("continuing_subword_prefix", WORDPIECE_PREFIX) == "##":
        return "wordpiece"
    return ""


def _component_style(component) -> str:
    """The style a decoder or pre-tokenizer (a JSON dict, maybe a Sequence) implies, or ""."""
    if not isinstance(component, dict):
        return ""
    kind = component.get("type")
    if kind == "Sequence":
        parts = component.get("decoders") or component.get("pretokenizers") or []
        return next((style for style in map(_component_style, parts) if style), "")
    if kind == "ByteLevel":
        return "bytelevel"
    if kind == "Metaspace":
        return "metaspace"
    if kind == "Replace" and (component.get("pattern") or {}).get("String") == METASPACE:
        return "metaspace"  # Llama-like SentencePiece decoders: Replace("▁", " ") then byte fallback
    if kind == "WordPiece" and component.get("prefix", WORDPIECE_PREFIX) == WORDPIECE_PREFIX:
        return "wordpiece"
    return ""


def check_token_style(style: str) -> str:
    if style not in TOKEN_STYLES:
        raise ValueError(f"token_style {style!r} is not one of {', '.join(map(repr, TOKEN_STYLES))}")
    return style


def readable_piece(token: str, style: str) -> str:
    """``token`` as people read it.

    Byte-level pieces are decoded from the byte alphabet to UTF-8 (half a character, as ``Ã`` alone of "é", is
    shown as its byte, ``<0xC3>``); ``▁`` of SentencePiece is a space, and its byte-fallback pieces (``<0x0A>``)
    are decoded the same way (so a run of them that makes a character reads as that character). Then one leading
    space (the word boundary) is dropped, and a piece that is only whitespace shows each space as ``␣`` and each
    newline as ``⏎``. CLIP's pieces are byte-level pieces whose ``</w>`` (the end of a word) is dropped.
    WordPiece and unknown styles come back unchanged.

    Example:
        >>> readable_piece("Ġcaf", "bytelevel"), readable_piece("Ã©", "bytelevel"), readable_piece("Ã", "bytelevel")
        ('caf', 'é', '<0xC3>')
        >>> readable_piece("▁New", "metaspace"), readable_piece("▁", "metaspace"), readable_piece("##s", "wordpiece")
        ('New', '␣', '##s')
        >>> readable_piece("<0x0A>", "metaspace"), readable_piece("<0xC3><0xA9>", "metaspace")
        ('⏎', 'é')
        >>> readable_piece("cat</w>", "clip"), readable_piece("ph", "clip"), readable_piece("cafÃ©</w>", "clip")
        ('cat', 'ph', 'café')
    """
    if style == "clip":
        return _from_bytes(token.removesuffix(END_OF_WORD))
    if style == "bytelevel":
        text = _from_bytes(token)
    elif style == "metaspace":
        text = BYTE_PIECES.sub(_byte_run, token.replace(METASPACE, " "))
    else:
        return token
    if text and not text.strip():
        return "".join(NEWLINE_MARK if char == "\n" else SPACE_MARK for char in text)
    return text[1:] if text.startswith(" ") else text


def _from_bytes(token: str) -> str:
    """A byte-level piece as UTF-8 text; a byte that is only part of a character (the piece holds half of "é")
    is shown as ``<0xC3>``, as SentencePiece's byte fallback writes bytes."""
    alphabet = byte_alphabet()
    if not all(char in alphabet for char in token):
        return token  # an added token written as plain text
    return _decode(bytes(alphabet[char] for char in token))


def _byte_run(match: re.Match) -> str:
    """A run of byte-fallback pieces (``<0xC3><0xA9>``) as UTF-8 text."""
    return _decode(bytes(int(match[0][i + 3:i + 5], 16) for i in range(0, len(match[0]), 6)))


def _decode(data: bytes) -> str:
    """``data`` as UTF-8 text, each byte that is not part of a whole character shown as ``<0xC3>``."""
    text, start = [], 0
    while start < len(data):
        for size in range(1, 5):  # the shortest valid UTF-8 sequence here, if any
            try:
                text.append(data[start:start + size].decode("utf-8"))
                start += size
                break
            except UnicodeDecodeError:
                continue
        else:
            text.append(f"<0x{data[start]:02X}>")
            start += 1
    return "".join(text)


def join_pieces(pieces: list[str] | tuple[str, ...], style: str) -> str:
    """The readable text of one word made of ``pieces`` (raw tokens), joined as the tokenizer's decoder would:
    continuation ``##`` dropped, byte-level bytes decoded together (so "Ã" + "©" reads "é", and byte-fallback
    "<0xC3>" + "<0xA9>" too), the leading space or ``▁`` dropped, CLIP's ``</w>`` dropped.

    Example:
        >>> join_pieces(["hel", "##l", "##o"], "wordpiece"), join_pieces(["ĠCaf", "Ã", "©"], "bytelevel")
        ('hello', 'Café')
    """
    if style == "wordpiece":
        return pieces[0] + "".join(p.removeprefix(WORDPIECE_PREFIX) for p in pieces[1:])
    return readable_piece("".join(pieces), style)
