"""The one factory for synthetic traces (no model needed): random or given attention, valid shapes everywhere."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from encoder.positional import sinusoidal_encoding
from encoder.trace import EncoderTrace, causal_visible

SPECIAL_TOKENS = frozenset({"[CLS]", "[SEP]", "[PAD]", "[UNK]", "[MASK]", "<s>", "</s>"})


def random_attention(rng: np.random.Generator, layers: int, heads: int, tokens: int,
                     sharpness: float = 3.0) -> np.ndarray:
    """(layers, heads, tokens, tokens) float32 rows that are softmaxes of normal logits of scale ``sharpness``."""
    logits = rng.normal(0.0, sharpness, (layers, heads, tokens, tokens))
    weights = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return (weights / weights.sum(axis=-1, keepdims=True)).astype(np.float32)


def synthetic_trace(
    tokens: Sequence[str],
    *,
    attention: np.ndarray | None = None,
    layers: int = 2,
    heads: int = 3,
    segment_ids=None,
    special=None,
    table: np.ndarray | None = None,
    seed: int = 0,
    text: str | None = None,
    model: str = "synthetic",
    words=None,
    visible: np.ndarray | str | None = None,
    token_style: str = "",
) -> EncoderTrace:
    """An EncoderTrace over ``tokens``: ``attention`` as given, else random row-stochastic (``layers`` x ``heads``).

    Special tokens default to the bracketed BERT/RoBERTa ones ([CLS], [SEP], <s>, ...); the positional table to the
    sinusoidal one (at least 16 rows, width 8); hidden states are random of the table's width. ``visible="causal"``
    makes a causal trace: each row's random attention spread over the key itself and the keys before it only.
    """
    rng = np.random.default_rng(seed)
    count = len(tokens)
    if attention is None:
        attention = random_attention(rng, layers, heads, count, sharpness=2.0)
    attention = np.asarray(attention, dtype=np.float32)
    if isinstance(visible, str) and visible == "causal":
        visible = causal_visible(attention.shape[0], count)
        attention = np.where(visible[:, None], attention, 0.0).astype(np.float32)
        attention /= attention.sum(axis=-1, keepdims=True)
    table = sinusoidal_encoding(max(count, 16), 8) if table is None else table
    if special is None:
        special = [token in SPECIAL_TOKENS for token in tokens]
    return EncoderTrace(
        model=model,
        tokens=tuple(tokens),
        token_ids=np.arange(count, dtype=np.int32),
        segment_ids=np.zeros(count, np.int32) if segment_ids is None else np.asarray(segment_ids, np.int32),
        special=np.asarray(special, dtype=bool),
        attention=attention,
        positional=table[:count],
        positional_table=table,
        hidden=rng.normal(size=(attention.shape[0] + 1, count, table.shape[1])).astype(np.float32),
        text=" ".join(tokens) if text is None else text,
        words=None if words is None else np.asarray(words, np.int32),
        visible=None if visible is None else np.asarray(visible, dtype=bool),
        token_style=token_style,
    )


def assert_same_trace(back: EncoderTrace, trace: EncoderTrace) -> None:
    """Every field equal, arrays bit for bit and of the same dtype."""
    for field in dataclasses.fields(EncoderTrace):
        value, expected = getattr(back, field.name), getattr(trace, field.name)
        if isinstance(expected, dict):
            assert value.keys() == expected.keys(), field.name
            pairs = [(value[k], expected[k], f"{field.name}/{k}") for k in expected]
        elif isinstance(expected, np.ndarray):
            pairs = [(value, expected, field.name)]
        else:
            assert value == expected and type(value) is type(expected), field.name
            continue
        for got, want, name in pairs:
            np.testing.assert_array_equal(got, want, err_msg=name)
            assert got.dtype == want.dtype, name
