"""Exceptions of ours: each message says what went wrong and what to do about it."""


class HeadlightError(Exception):
    """Base class: anything the app can show the user as a plain message."""


class InputError(HeadlightError, ValueError):
    """The text (or pair) cannot be traced as given: empty, too long, ..."""


class CheckpointError(HeadlightError):
    """A model folder or hub id cannot be loaded: missing files, unsupported format or architecture, bad shapes."""


class SourceError(HeadlightError):
    """A model source name is unknown or its package is not installed."""
