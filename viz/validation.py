"""Validators of figure settings: each returns the checked value or raises ``ViewError`` (a ``ValueError``) naming
the bad value and the allowed range ("layer 7 is out of range: the model has 6 layers (0-5)").
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import plotly.colors

from encoder.errors import ViewError, index_in_range, whole_number
from encoder.trace import EncoderTrace
from viz.layout import SEQUENTIAL_SCALES

_NAMED_SCALES = frozenset(plotly.colors.named_colorscales())


def _integer(value, what: str, kind: str) -> int:
    """``value`` as a Python int (NumPy integers too, never a bool), else ViewError "{what} must be {kind}"."""
    return whole_number(value, what, kind)


def check_index(value, count: int, what: str, owner: str) -> int:
    """``value`` as an int in ``range(count)``, else ViewError ("layer 7 is out of range: the model has 6 layers
    (0-5)")."""
    return index_in_range(value, count, what, owner)


def check_int_range(value, what: str, low: int, high: int) -> int:
    """``value`` as an int in [low, high], else ViewError naming it ("thumbnail 2 must be an integer from 4 to
    512")."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not low <= value <= high:
        raise ViewError(f"{what} {value!r} must be an integer from {low} to {high}")
    return int(value)


def check_layer(trace: EncoderTrace, layer) -> int:
    """``layer`` as an int in ``range(trace.num_layers)``."""
    return check_index(layer, trace.num_layers, "layer", "model")


def check_head(trace: EncoderTrace, head) -> int:
    """``head`` as an int in ``range(trace.num_heads)``."""
    return check_index(head, trace.num_heads, "head", "model")


def check_token(trace: EncoderTrace, index, what: str = "token") -> int:
    """``index`` as a token position in ``range(trace.num_tokens)``; ``what`` names it in the message."""
    position = _integer(index, what, "a token index")
    count = trace.num_tokens
    if not 0 <= position < count:
        raise ViewError(f"{what} {position} is out of range: the text has {count} tokens (0-{count - 1})")
    return position


def check_heads(trace: EncoderTrace, heads: Iterable[int] | None) -> list[int]:
    """A sorted list of distinct heads; ``None`` means all heads."""
    if heads is None:
        return list(range(trace.num_heads))
    if isinstance(heads, (int, np.integer)) and not isinstance(heads, bool):
        heads = [heads]
    chosen = [check_head(trace, h) for h in heads]
    if not chosen:
        raise ViewError("heads is empty: choose at least one head")
    if len(set(chosen)) != len(chosen):
        raise ViewError(f"heads {chosen} lists a head twice")
    return sorted(chosen)


def check_choice(value, choices: Sequence, what: str):
    """``value`` if it is one of ``choices``, else ViewError listing them."""
    if value not in choices:
        allowed = ", ".join(repr(c) for c in choices)
        raise ViewError(f"{what} {value!r} is not one of {allowed}")
    return value


def check_colorscale(name: str) -> str:
    """A Plotly named colour scale, optionally reversed with the suffix ``_r`` (case-insensitive)."""
    if not isinstance(name, str) or name.lower().removesuffix("_r") not in _NAMED_SCALES:
        raise ViewError(
            f"colour scale {name!r} is not a Plotly named colour scale; try one of {', '.join(SEQUENTIAL_SCALES)}"
        )
    return name


def check_fraction(value, what: str) -> float:
    """``value`` as a float in [0, 1]."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ViewError(f"{what} must be a number between 0 and 1, got {value!r}") from None
    if not 0.0 <= number <= 1.0:
        raise ViewError(f"{what} {number} is out of range: it must lie between 0 and 1")
    return number


def check_token_matrix(trace: EncoderTrace, weights) -> np.ndarray:
    """``weights`` as a (T, T) float32 matrix over this trace's tokens (ViewError naming both shapes otherwise)."""
    matrix = np.asarray(weights, dtype=np.float32)
    count = trace.num_tokens
    if matrix.shape != (count, count):
        raise ViewError(f"weights have shape {matrix.shape}, while the text's {count} tokens need ({count}, {count})")
    return matrix


def check_shown_token(trace: EncoderTrace, index, shown: np.ndarray, what: str = "query") -> int:
    """``check_token``, and the token must be among ``shown`` (not a hidden special token)."""
    position = check_token(trace, index, what)
    if position not in shown:
        raise ViewError(f"{what} {position} ({trace.readable_tokens[position]}) is a special token, which is hidden")
    return position
