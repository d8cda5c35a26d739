"""Positional encodings as NumPy: the sinusoidal closed form, access to a learned table, the relative-position
buckets of a learned attention bias (MPNet) and DeBERTa's log buckets of relative distance."""

from __future__ import annotations

import math

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


def position_ids(token_ids: np.ndarray, offset: int, pad_token_id: int, skip_pads: bool = True) -> np.ndarray:
    """Positional-table rows of ``token_ids`` (..., T) int: ``0..T-1`` without an offset; with one (RoBERTa's
    ``pad_token_id + 1``), non-pad tokens count from ``offset`` and pad tokens get row ``offset - 1``, as
    transformers numbers them; without ``skip_pads`` (BART) token i gets row ``offset + i``. The model does the same
    in TensorFlow (``AbsolutePart.add_to``)."""
    token_ids = np.asarray(token_ids)
    if not offset or not skip_pads:
        return np.broadcast_to(np.arange(token_ids.shape[-1]) + offset, token_ids.shape)
    real = (token_ids != pad_token_id).astype(np.int64)
    return np.cumsum(real, axis=-1) * real + (offset - 1)


def relative_position_buckets(relative: np.ndarray, num_buckets: int = 32, max_distance: int = 128,
                              bidirectional: bool = True) -> np.ndarray:
    """T5's buckets of ``relative`` (key position - query position): bidirectional (T5's encoder, MPNet) or causal
    (T5's decoder).

    Bidirectional: half the buckets are for keys after the query, half for keys before it. Within a half, distances
    below a quarter of ``num_buckets`` get one bucket each; longer ones share buckets whose width grows
    logarithmically up to ``max_distance``, and everything beyond shares the last bucket. Causal: every bucket is
    for keys at or before the query (later keys get bucket 0, as the query itself), distances below half of
    ``num_buckets`` one each. The logarithm is taken in float32, as transformers takes it, so the boundaries fall
    where its buckets do.

    Args:
        relative: int array of any shape, key position minus query position.
        num_buckets: int, buckets in all (an even number, at least 4).
        max_distance: int, the distance from which every key shares one bucket per side.
        bidirectional: bool, False for the causal buckets.

    Returns:
        int32 array of ``relative``'s shape, values in ``[0, num_buckets)``.

    Example:
        >>> relative_position_buckets(np.array([-1, 0, 1, 200])).tolist()
        [1, 0, 17, 31]
    """
    if num_buckets < 4 or num_buckets % 2:
        raise ValueError(f"num_buckets must be an even number of at least 4, got {num_buckets}")
    half = num_buckets // 2 if bidirectional else num_buckets  # the buckets of one side
    exact = half // 2
    distance = -np.asarray(relative, dtype=np.int64)  # query - key: positive for keys before the query
    side = np.where(distance < 0, half, 0) if bidirectional else 0
    distance = np.abs(distance) if bidirectional else np.maximum(distance, 0)
    ratio = np.maximum(distance, 1).astype(np.float32) / np.float32(exact)
    steps = np.log(ratio) / np.float32(math.log(max_distance / exact)) * np.float32(half - exact)  # float32
    large = np.minimum(exact + steps.astype(np.int64), half - 1)
    return (side + np.where(distance < exact, distance, large)).astype(np.int32)


def rotary_frequencies(theta: float, head_dim: int) -> np.ndarray:
    """(head_dim / 2,) float32: the angle per position of each dimension pair of rotary positions (RoPE),
    ``theta ** (-2i / head_dim)``, as transformers computes them: ``1 / theta ** (2i / d)`` with the exponent and
    the power rounded to float32 (the power taken in float64 first: closest to PyTorch's float32 ``pow``).

    Example:
        >>> rotary_frequencies(10000.0, 4).tolist()
        [1.0, 0.009999999776482582]
    """
    exponents = np.arange(0, head_dim, 2, dtype=np.float32) / np.float32(head_dim)
    power = (np.float64(theta) ** exponents.astype(np.float64)).astype(np.float32)
    return np.float32(1.0) / power


def rope_frequencies(theta: float, dim: int, rope_type: str = "default", factor: float = 1.0,
                     low_freq_factor: float = 1.0, high_freq_factor: float = 4.0,
                     original_max_positions: int = 8192) -> np.ndarray:
    """(dim / 2,) float32: ``rotary_frequencies(theta, dim)`` rescaled by ``rope_type``, each step in float32 as
    transformers' ``modeling_rope_utils`` computes it: "default" unchanged, "linear" divided by ``factor``,
    "llama3" (``_compute_llama3_parameters``) divided by ``factor`` where the wavelength ``2 pi / f`` exceeds
    ``original_max_positions / low_freq_factor``, unchanged below ``original_max_positions / high_freq_factor``
    and interpolated smoothly between.

    Example:
        >>> rope_frequencies(10000.0, 4, "linear", factor=2.0).tolist()
        [0.5, 0.004999999888241291]
    """
    f32 = np.float32
    inv_freq = rotary_frequencies(theta, dim)
    if rope_type == "default":
        return inv_freq
    if rope_type == "linear":
        return inv_freq / f32(factor)
    if rope_type != "llama3":
        raise ValueError(f"unknown rope_type {rope_type!r}")
    old = f32(original_max_positions)
    low_wavelength, high_wavelength = old / f32(low_freq_factor), old / f32(high_freq_factor)
    wavelength = f32(2 * math.pi) / inv_freq
    scaled = np.where(wavelength > low_wavelength, inv_freq / f32(factor), inv_freq)
    smooth = (old / wavelength - f32(low_freq_factor)) / f32(high_freq_factor - low_freq_factor)
    smoothed = (f32(1) - smooth) * scaled / f32(factor) + smooth * scaled
    medium = ~(wavelength < high_wavelength) & ~(wavelength > low_wavelength)
    return np.where(medium, smoothed, scaled).astype(np.float32)


def window_visible(length: int, window: int, kind: str = "symmetric") -> np.ndarray:
    """(length, length) bool, True where query i may see key j in a sliding-window layer: ``|i - j| <= window // 2``
    ("symmetric": ModernBERT's ``local_attention`` is the whole window, both sides) or ``0 <= i - j < window``
    ("causal": Mistral's and Gemma's ``sliding_window``, the query and the ``window - 1`` keys before it)."""
    positions = np.arange(length)
    distance = positions[:, None] - positions[None, :]  # query - key
    if kind == "causal":
        return (distance >= 0) & (distance < window)
    return np.abs(distance) <= window // 2


def log_bucket_position(relative: np.ndarray, buckets: int, max_position: int) -> np.ndarray:
    """DeBERTa's log buckets of ``relative`` (query position - key position), as transformers computes them.

    Distances up to ``buckets // 2`` (mid) keep their own bucket; longer ones share buckets whose width grows
    logarithmically, ``sign * (mid + ceil(log(|r| / mid) / log((max_position - 1) / mid) * (mid - 1)))``, which
    reaches ``buckets - 1`` at ``max_position - 1`` and keeps growing beyond (the attention clips it). The
    logarithms are taken in float32, as transformers takes them, so the boundaries fall where its buckets do.

    Args:
        relative: int array of any shape, query position minus key position.
        buckets: int, DeBERTa's ``position_buckets`` (an even number, at least 2).
        max_position: int, DeBERTa's ``max_relative_positions`` (``max_position - 1`` above ``buckets // 2``).

    Returns:
        int32 array of ``relative``'s shape, odd in ``relative`` (``bucket(-r) == -bucket(r)``).

    Example:
        >>> log_bucket_position(np.array([-3, 0, 8, 9, 63, 200]), 16, 64).tolist()
        [-3, 0, 8, 9, 15, 19]
    """
    if buckets < 2 or buckets % 2 or max_position - 1 <= buckets // 2:
        raise ValueError(f"buckets must be an even number of at least 2 and max_position - 1 above buckets // 2, got "
                         f"buckets={buckets}, max_position={max_position}")
    relative = np.asarray(relative, dtype=np.int64)
    mid = buckets // 2
    distance = np.maximum(np.abs(relative), mid).astype(np.float32)  # no log(0): short distances are not used
    steps = np.log(distance / np.float32(mid)) / np.log(np.float32((max_position - 1) / mid)) * np.float32(mid - 1)
    logarithmic = np.sign(relative) * (np.ceil(steps).astype(np.int64) + mid)
    return np.where(np.abs(relative) <= mid, relative, logarithmic).astype(np.int32)


def disentangled_index(relative: np.ndarray, span: int, buckets: int, max_position: int) -> np.ndarray:
    """Row of DeBERTa's relative-embedding table (2 * ``span`` rows) for each ``relative`` (query - key):
    ``clip(bucket + span, 0, 2 * span - 1)``, the bucket being ``log_bucket_position`` when ``buckets`` is set and
    the distance itself otherwise. int32, ``relative``'s shape."""
    bucket = log_bucket_position(relative, buckets, max_position) if buckets else np.asarray(relative, np.int64)
    return np.clip(bucket + span, 0, 2 * span - 1).astype(np.int32)
