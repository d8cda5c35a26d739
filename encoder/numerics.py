"""NumPy in, NumPy out, through TensorFlow: the few tensor operations ``analysis/`` needs on a long trace's
queries and keys (``analysis.positional``), so that analyses never import TensorFlow or Keras themselves."""

from __future__ import annotations

import numpy as np


def stacked_product(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """``x @ y`` of stacks of matrices (..., n, m) and (..., m, p) as NumPy, by TensorFlow's matmul (dtype kept):
    its thread pool is the one every layer already runs on, where NumPy's BLAS threads, spinning beside it, run many
    small products several times slower on a loaded machine (``analysis.positional``'s long terms)."""
    from keras import ops

    return ops.convert_to_numpy(ops.matmul(x, y))


def unrotated(queries: np.ndarray, keys: np.ndarray, frequencies: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(queries, keys)``, each (heads, T, dh) float64, turned back by the rotary positions of ``frequencies``
    (d / 2,): ``encoder.parts.positions.rotate`` by the same angles (``rotary_angles``) with the sine negated, the
    inverse rotation."""
    from keras import ops

    from encoder.parts.positions import rotary_angles, rotate

    cos, sin = (ops.convert_to_numpy(part).astype(np.float64)[0].transpose(1, 0, 2)  # (1, T, d)
                for part in rotary_angles(frequencies, queries.shape[1]))
    return tuple(ops.convert_to_numpy(rotate(x[None], cos, -sin))[0] for x in (queries, keys))
