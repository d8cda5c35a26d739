"""Exceptions of ours: each message says what went wrong and what to do about it; and the one check of a whole
number and an index that ``viz``, ``analysis`` and trace files share, raising whichever of ours the caller names."""

from __future__ import annotations

import operator


class HeadlightError(Exception):
    """Base class: anything the app can show the user as a plain message."""


class InputError(HeadlightError, ValueError):
    """The text (or pair) cannot be traced as given: empty, too long, ..."""


class CheckpointError(HeadlightError):
    """A model folder or hub id cannot be loaded: missing files, unsupported format or architecture, bad shapes."""


class SourceError(HeadlightError):
    """A model source name is unknown or its package is not installed."""


class ExportError(HeadlightError):
    """A figure or trace cannot be written or read back: no browser for images, a format we do not write, a file
    that is not a saved trace, ..."""


class ViewError(HeadlightError, ValueError):
    """A view or analysis cannot be drawn with these settings: a layer, head or token out of range, an unknown
    colour scale or view name, ... (the message names the bad value and what is allowed)."""


class AnalysisError(HeadlightError, ValueError):
    """An analysis cannot run on this input or with these settings: too many tokens for max-flow, traces of
    different models, a residual weight outside [0, 1], ..."""


def whole_number(value, what: str, kind: str = "an integer", error: type[HeadlightError] = ViewError) -> int:
    """``value`` as a Python int (NumPy integers too, never a bool), else ``error`` "{what} must be {kind}"."""
    if isinstance(value, bool):
        raise error(f"{what} must be {kind}, got {value!r}")
    try:
        return operator.index(value)
    except TypeError:
        raise error(f"{what} must be {kind}, got {value!r}") from None


def index_in_range(value, count: int, what: str, owner: str = "model",
                   error: type[HeadlightError] = ViewError) -> int:
    """``value`` as an int in ``range(count)``, else ``error`` ("layer 7 is out of range: the model has 6 layers
    (0-5)")."""
    index = whole_number(value, what, error=error)
    if not 0 <= index < count:
        raise error(f"{what} {index} is out of range: the {owner} has {count} {what}s (0-{count - 1})")
    return index


class LongTraceError(HeadlightError, ValueError):
    """Something would copy too much of a long trace's attention at once (its whole (L, H, T, T), or a piece over
    the byte limit): the message says how much and how to read it a piece at a time."""
