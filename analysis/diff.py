"""The difference between the attention of two traces of the same shape (two models, or a minimal pair)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from analysis.divergence import head_divergence
from encoder.errors import AnalysisError
from encoder.trace import EncoderTrace

if TYPE_CHECKING:
    pass


@dataclass(frozen=True, eq=False)
class AttentionDiff:
    """Two traces of the same length compared head by head.

    ``difference`` (L, H, T, T) float32 is ``b - a``; ``divergence`` (L, H) float64 the mean over queries of
    JS(a row, b row) in nats. ``tokens_a`` / ``tokens_b`` label the axes: the tokens as people read them
    (``EncoderTrace.readable_tokens``; equal when one text went through two models).
    """

    label_a: str
    label_b: str
    tokens_a: tuple[str, ...]
    tokens_b: tuple[str, ...]
    difference: np.ndarray
    divergence: np.ndarray

    def ranking(self) -> np.ndarray:
        """(N, 2) int64 ``(layer, head)`` pairs, the most changed head first (ties: lower layer, then head)."""
        flat = self.divergence.ravel()
        order = np.lexsort((np.arange(flat.size), -flat))
        return np.stack(np.divmod(order, self.divergence.shape[1]), axis=1).astype(np.int64)

    def rows(self) -> list[dict]:
        """One dict per head, ranked: rank, layer, head, JS divergence, max |difference|."""
        peak = np.abs(self.difference).max(axis=(2, 3))
        return [
            {"rank": rank + 1, "layer": int(layer), "head": int(head),
             "js_divergence": float(self.divergence[layer, head]), "max_abs_difference": float(peak[layer, head])}
            for rank, (layer, head) in enumerate(self.ranking())
        ]


def diff_traces(
    a: EncoderTrace, b: EncoderTrace, label_a: str | None = None, label_b: str | None = None
) -> AttentionDiff:
    """Compare two traces: the same text through two models that share a tokenizer, or a minimal pair (two texts
    with the same number of tokens) through one model.

    Raises:
        AnalysisError: different token counts (both named), different tokens for the same text (the models do not
            share a tokenizer), or models of different shapes.
    """
    same_input = a.text == b.text and a.pair == b.pair
    if a.num_tokens != b.num_tokens:
        what = "the two models tokenize the text differently" if same_input else "a minimal pair needs equal lengths"
        raise AnalysisError(
            f"Cannot compare: the first input has {a.num_tokens} tokens, the second {b.num_tokens} ({what})."
        )
    if same_input and a.tokens != b.tokens:
        raise AnalysisError(
            f"Cannot compare: the same text gives different tokens ({a.num_tokens} and {b.num_tokens}); the two "
            "models must share a tokenizer."
        )
    if a.attention.shape[:2] != b.attention.shape[:2]:
        raise AnalysisError(
            f"Cannot compare models of different shapes: {a.num_layers}x{a.num_heads} and "
            f"{b.num_layers}x{b.num_heads} (layers x heads)."
        )
    difference = b.attention.astype(np.float32) - a.attention.astype(np.float32)
    divergence = head_divergence(a.attention, b.attention)
    return AttentionDiff(label_a or a.model, label_b or b.model, a.readable_tokens, b.readable_tokens, difference,
                         divergence)
