"""Input checks shared by the attention analyses."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

from encoder.errors import AnalysisError

if TYPE_CHECKING:
    pass


Progress = Callable[[int, int | None], None]  # progress(done, total or None)

def check_attention(attention: np.ndarray, what: str = "attention") -> np.ndarray:
    """``attention`` as an array of shape (L, H, T, T), else ValueError naming the shape."""
    attention = np.asarray(attention)
    if attention.ndim != 4 or attention.shape[2] != attention.shape[3]:
        raise AnalysisError(f"{what} must have shape (layers, heads, T, T), got {attention.shape}")
    if attention.shape[2] == 0:
        raise AnalysisError(f"{what} has no tokens")
    return attention


def layer_rows(attention, layer: int, begin: int, end: int) -> np.ndarray:
    """(H, R, T) float32: every head's rows ``begin`` .. ``end - 1`` of ``layer`` of an (L, H, T, T) array or a long
    trace's ``LazyAttention`` (computed, not kept in its LRU: one-off blocks of a pass over every row)."""
    from encoder.attention_store import LazyAttention

    if isinstance(attention, LazyAttention):
        return attention.compute(layer, np.arange(attention.shape[1]), begin, end)
    return np.asarray(attention[layer, :, begin:end])


def check_residual(residual: float) -> float:
    residual = float(residual)
    if not 0.0 <= residual <= 1.0:
        raise AnalysisError(f"residual must be between 0 and 1 (the weight of the identity), got {residual}")
    return residual
