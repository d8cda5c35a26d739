"""Exceptions of ours: each message says what went wrong and what to do about it."""


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
