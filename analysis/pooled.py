"""The position a model's output is read from (its pooled token), found from a trace alone, and that token's row
of a token x token analysis: which input tokens the output draws on.

A CLIP text encoder pools at its end-of-text token (``Head.pooling == "eos"``): the trace keeps
``outputs["last_hidden_state"]`` (T, D) and ``outputs["pooled"]`` (D,) (or ``outputs["embedding"]`` without a text
projection), and the pooled token is the position whose last hidden state is the pooled vector. A model with an LM
head (a decoder) reads its next-token prediction at the last token. A mean-pooled encoder has no such row (every
row counts alike), and a [CLS]-pooled one is not told apart from it by a saved trace: both give None, as does the
encoder side of an encoder-decoder (its prediction is read on the decoder's side).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from encoder.trace import EncoderTrace

_SAME = 1e-6  # the pooled vector is a copy of one row: equal to it within this, relative to its largest entry


@dataclass(frozen=True)
class PooledRow:
    """The token a model's output reads.

    Attributes:
        index: its position (0-based).
        token: the token as people read it (``EncoderTrace.readable_tokens``).
        pooling: "eos" (CLIP: the pooled embedding is the end-of-text token's state) or "last" (a decoder: the
            next-token prediction is read at the last token).
        reads: what is read there, for titles ("the pooled embedding").
    """

    index: int
    token: str
    pooling: str
    reads: str

    @property
    def caption(self) -> str:
        """ "row of <|endoftext|> (10): what the pooled embedding reads"."""
        return f"row of {self.token} ({self.index}): what {self.reads} reads"

    def values(self, matrix: np.ndarray) -> dict:
        """This row of a (T, T) token matrix as JSON: index, token, pooling, what it reads and the T values."""
        return {"index": self.index, "token": self.token, "pooling": self.pooling, "reads": self.reads,
                "values": [float(v) for v in np.asarray(matrix)[self.index]]}


def eos_position(trace: EncoderTrace) -> int | None:
    """The position an end-of-text-pooled model (CLIP) read its pooled vector from: the first row of
    ``outputs["last_hidden_state"]`` (T, D) equal to ``outputs["pooled"]`` (D,) (``outputs["embedding"]`` where the
    model has no projection), or None when the trace has no such outputs or no row matches."""
    states = trace.outputs.get("last_hidden_state")
    pooled = trace.outputs.get("pooled", trace.outputs.get("embedding"))
    if states is None or pooled is None:
        return None
    states, pooled = np.asarray(states, np.float64), np.asarray(pooled, np.float64)
    if states.ndim != 2 or pooled.shape != states.shape[1:] or len(states) != trace.num_tokens:
        return None
    gap = np.abs(states - pooled).max(axis=1)  # (T,)
    found = np.flatnonzero(gap <= _SAME * max(1.0, float(np.abs(pooled).max())))
    return int(found[0]) if found.size else None


def output_position(trace: EncoderTrace, pooling: str) -> int | None:
    """The position the output of a model pooling by ``pooling`` (``Head.pooling``) reads in ``trace``: 0 for
    "cls", the end-of-text token for "eos" (``eos_position``), the last token for "last", None for "mean" (every
    position alike)."""
    if pooling == "cls":
        return 0
    if pooling == "last":
        return trace.num_tokens - 1
    return eos_position(trace) if pooling == "eos" else None


def pooled_row(trace: EncoderTrace) -> PooledRow | None:
    """The token the model's output reads (module doc), or None for a mean- or [CLS]-pooled encoder."""
    index = eos_position(trace)
    if index is not None:
        return PooledRow(index, trace.readable_tokens[index], "eos", "the pooled embedding")
    if trace.has_lm_head and not trace.is_encoder_decoder:  # an encoder-decoder's prediction reads its decoder
        last = trace.num_tokens - 1
        return PooledRow(last, trace.readable_tokens[last], "last", "the next-token prediction")
    return None


def pooled_json(trace: EncoderTrace, matrix: np.ndarray) -> dict:
    """``{"pooled_row": PooledRow.values(matrix)}`` for a model with a pooled token, else ``{}`` (extra fields of
    ``analysis.tables.matrix_result``)."""
    row = pooled_row(trace)
    return {} if row is None else {"pooled_row": row.values(matrix)}
