"""What an analysis runs on (``Inputs``), and the layer it is asked about.

Every registry analysis is ``compute(inputs, options) -> result``: ``inputs`` gives the trace, the model (for the
analyses that re-run it), the corpus and a progress callback; the app supplies cached versions (``ui.cache.Inputs``),
scripts, tests and the CLI a plain ``TraceInputs``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from encoder.errors import AnalysisError, ViewError, index_in_range

if TYPE_CHECKING:
    from analysis.checks import Progress
    from analysis.report import HeadReport
    from encoder.sources import LoadedModel
    from encoder.trace import EncoderTrace

Options = Mapping[str, Any]  # an analysis' settings by name (``viz.options.Option.name``)
Corpus = tuple[str, tuple[str, ...]]  # (name shown in messages, sentences)


class Inputs(Protocol):
    """What an analysis runs on; the app supplies cached versions, the CLI plain ones (``TraceInputs``)."""

    @property
    def trace(self) -> EncoderTrace | None:
        """The text's trace (None when the analysis runs over a corpus only)."""

    def model(self) -> LoadedModel:
        """The model that made the trace (for analyses that re-run it)."""

    def corpus_report(self, distances: bool) -> HeadReport | None:
        """The report card over the chosen corpus (with the head distances when ``distances``), or None when no
        corpus was chosen."""

    def progress(self, what: str) -> Progress | None:
        """A progress callback for long runs ("noisy runs", "heads silenced")."""

    def corpus_sentences(self) -> Corpus | None:
        """The chosen corpus as (name, sentences), or None for this text only."""


@dataclass(frozen=True)
class TraceInputs:
    """``Inputs`` for one trace (and optionally its model): for scripts, tests and the CLI.

    Example:
        >>> result = compute_rollout(TraceInputs(trace), {"residual": 0.5})  # doctest: +SKIP
    """

    trace: EncoderTrace | None
    loaded: LoadedModel | None = None
    report: Callable[[bool], HeadReport] | None = None
    on_progress: Callable[[str], Progress] | None = None
    sentences: Corpus | None = None

    def model(self) -> LoadedModel:
        if self.loaded is None:
            raise ViewError("this analysis re-runs the model, so it needs the model, not only a saved trace")
        return self.loaded

    def corpus_report(self, distances: bool) -> HeadReport | None:
        return None if self.report is None else self.report(distances)

    def progress(self, what: str) -> Progress | None:
        return None if self.on_progress is None else self.on_progress(what)

    def corpus_sentences(self) -> Corpus | None:
        return self.sentences


def chosen_layer(trace: EncoderTrace, options: Options) -> int:
    """The layer ``options["layer"]`` asks about (default the last), checked against the model: ViewError "layer 7
    is out of range: the model has 6 layers (0-5)"."""
    layer = options.get("layer")
    return trace.num_layers - 1 if layer is None else index_in_range(layer, trace.num_layers, "layer")


def refusal(check: Callable[[EncoderTrace], Any], trace: EncoderTrace) -> str | None:
    """Why ``check(trace)`` refuses this trace (its AnalysisError's message), or None when it accepts it."""
    try:
        check(trace)
    except AnalysisError as error:
        return str(error)
    return None
