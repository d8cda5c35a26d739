"""Float comparisons in float32 rounding units: what a computed value can promise on every x86-64 CPU.

The same float32 computation can round differently on another CPU (AVX-512 or AVX2 kernels, fused multiply-adds,
another blocking of a sum) or through another path (batched, compiled, layer by layer), so a computed float is
compared within a few rounding units, never with ``==``. One unit is ``F32_EPS`` (2**-23, the spacing of float32
numbers in [1, 2)). Values exact by construction (a masked weight, a copied array, an integer count, x * 0) are
still compared exactly.
"""

from __future__ import annotations

import numpy as np
import pytest

F32_EPS = float(np.finfo(np.float32).eps)


def _tolerance(expected, ulps: float, scale: float | None) -> tuple[float, float]:
    """(rtol, atol): ``ulps`` units relative to ``|expected|``, plus ``ulps`` units of ``scale`` (default: the
    largest ``|expected|``, at least 1: rounding grows with the size of the numbers a result was computed from)."""
    if scale is None:
        values = np.abs(np.asarray(list(expected.values()) if isinstance(expected, dict) else expected, np.float64))
        scale = max(1.0, float(values.max(initial=0.0)))
    return ulps * F32_EPS, ulps * F32_EPS * scale


def assert_close_f32(actual, expected, ulps: float = 4, *, scale: float | None = None, err_msg: str = "") -> None:
    """Assert ``actual`` equals ``expected`` (arrays broadcast) within ``ulps`` float32 rounding units (see
    ``_tolerance``)."""
    rtol, atol = _tolerance(expected, ulps, scale)
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=atol, err_msg=err_msg)


def approx_f32(expected, ulps: float = 4, *, scale: float | None = None):
    """``pytest.approx(expected)`` within ``ulps`` float32 rounding units (as ``assert_close_f32``): for scalars,
    sequences and dicts."""
    rtol, atol = _tolerance(expected, ulps, scale)
    return pytest.approx(expected, rel=rtol, abs=atol)
