"""Positional encodings as NumPy: the sinusoidal closed form and access to a learned table."""

from __future__ import annotations

import numpy as np


def sinusoidal_encoding(length: int, depth: int, base: float = 10000.0) -> np.ndarray:
    """The fixed sinusoidal table of Vaswani et al. (2017), section 3.5.

    ``PE[pos, 2i] = sin(pos / base**(2i / depth))`` and ``PE[pos, 2i + 1] = cos(pos / base**(2i / depth))``:
    even dimensions carry sines, odd dimensions cosines, of geometrically decreasing frequency.

    Args:
        length: int, number of positions (rows).
        depth: int, model width (columns).
        base: float, the wavelength base (10000 in the paper).

    Returns:
        (length, depth) float32 array.

    Example:
        >>> sinusoidal_encoding(4, 6).shape
        (4, 6)
    """
    if length < 1 or depth < 1:
        raise ValueError(f"length and depth must be positive, got length={length}, depth={depth}")
    positions = np.arange(length, dtype=np.float64)[:, None]  # (P, 1)
    pair_index = np.arange(depth) // 2  # i for dimensions 2i and 2i + 1
    inverse_wavelength = base ** (-2.0 * pair_index / depth)  # (D,)
    angles = positions * inverse_wavelength  # (P, D)
    table = np.where(np.arange(depth) % 2 == 0, np.sin(angles), np.cos(angles))
    return table.astype(np.float32)


def position_ids(token_ids: np.ndarray, offset: int, pad_token_id: int) -> np.ndarray:
    """Positional-table rows of ``token_ids`` (..., T) int: ``0..T-1`` without an offset; with one (RoBERTa's
    ``pad_token_id + 1``), non-pad tokens count from ``offset`` and pad tokens get row ``offset - 1``, as
    transformers numbers them. The model does the same in TensorFlow (``TransformerEncoder._positional_rows``)."""
    token_ids = np.asarray(token_ids)
    if not offset:
        return np.broadcast_to(np.arange(token_ids.shape[-1]), token_ids.shape)
    real = (token_ids != pad_token_id).astype(np.int64)
    return np.cumsum(real, axis=-1) * real + (offset - 1)
