"""The kinds of registry entry (``viz.registry``): a ``View`` of one trace, an ``Analysis`` computed from its
inputs, and the ``Group`` (the question) an analysis answers. Entries only name things: functions, options, labels.
What each view and analysis shows, and how to read it, is in docs/views.md and docs/analyses.md.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import plotly.graph_objects as go

from viz.kinds import ATTENTION_KINDS
from viz.options import Option, ViewSettings

if TYPE_CHECKING:
    from analysis.inputs import Inputs
    from encoder.trace import EncoderTrace

Figures = list[tuple[str, go.Figure]]  # (file/chart name, figure); the first is the one the CLI writes


@dataclass(frozen=True)
class View:
    """A figure of one trace.

    Attributes:
        name: the CLI's ``--view`` value, the chart key and the download file name ("heatmap").
        label: the app tab that shows it; views with the same label share a tab.
        builder: ``builder(trace, **settings) -> go.Figure``.
        description: one line for ``--help`` and the docs table.
        options: settings of this view beyond ``SHARED_OPTIONS`` (flags in the CLI; widgets where labelled).
        from_settings: the builder's keyword arguments from the app's shared controls (default: the settings
            named like the builder's parameters).
        rows: ``rows(trace, settings) -> (csv rows, json document)``: the view's own numbers (CSV and JSON
            downloads, the CLI's csv and json output), or None: the trace itself is its data.
        unavailable: ``unavailable(trace) -> message`` when the view cannot show this trace (e.g. the Next-token
            view of a model without an LM head; the app leaves its tab out), else None.
        kinds: the attention of an encoder-decoder it shows (``viz.kinds``): "encoder", "decoder" (the trace's
            ``decoder_trace()``), "cross" (a ``viz.kinds.CrossTrace``: decoder queries, encoder keys).
        not_for: why it shows no other kind (the end of the message ``viz.registry.view_unavailable`` gives).
    """

    name: str
    label: str
    builder: Callable[..., go.Figure]
    description: str
    options: tuple[Option, ...] = ()
    from_settings: Callable[[ViewSettings], dict] | None = None
    rows: Callable[[EncoderTrace, Mapping[str, Any]], tuple[list[dict], Any]] | None = None
    unavailable: Callable[[EncoderTrace], str | None] | None = None
    kinds: tuple[str, ...] = ATTENTION_KINDS
    not_for: str = ""

    def available(self, trace: EncoderTrace) -> bool:
        """Whether this view can show ``trace``."""
        return self.unavailable is None or self.unavailable(trace) is None

    @property
    def parameters(self) -> tuple[str, ...]:
        """The settings the builder takes (every parameter after ``trace``)."""
        return tuple(list(inspect.signature(self.builder).parameters)[1:])

    def settings_for(self, settings: ViewSettings) -> dict:
        """The builder's keyword arguments for the app's controls."""
        if self.from_settings is not None:
            return self.from_settings(settings)
        return settings.by_name(self.parameters)


@dataclass(frozen=True)
class Group:
    """A question the Analysis tab groups its analyses by.

    Attributes:
        name: the key analyses name it by ("flow").
        title: the question, as the app's picker shows it ("How does information flow?").
        answers: one line under it: what its analyses answer.
    """

    name: str
    title: str
    answers: str


@dataclass(frozen=True)
class Analysis:
    """An analysis of a trace (or of a corpus).

    Attributes:
        name: the CLI's ``--view`` value and the download file name ("rollout").
        label: its name in the app's analysis picker ("Rollout"; kept in the URL).
        group: the ``Group.name`` of the question it answers.
        description: one line for ``--help`` and the docs table.
        reading: how to read it, one line shown above it in the app (docs/analyses.md says more).
        compute: ``compute(inputs, options) -> result`` (the expensive part; the app caches it by the compute
            options).
        figures: ``figures(result, trace, options) -> [(name, figure), ...]``; the first is what the CLI writes.
        rows: ``rows(result, trace, options) -> (csv rows, json result)``.
        options: its settings (see ``Option``; ``stage`` says which ones change the result).
        layer: how it takes the shared layer (the app's Layer slider; ``--layer``): "figure" (only drawn after
            it), "compute" (the result depends on it), or None (not at all).
        uses_query: its figures use the shared query token (app only).
        needs_model: re-runs the model (so a saved trace is not enough).
        corpus: can run over many sentences instead of one text (``--corpus`` in the CLI).
        corpus_max: the most sentences the app lets one run take (each re-runs the model many times), or None.
        limit: ``limit(trace) -> message`` when this input is too large for the analysis, else None.
        any_length: runs on a long trace (its attention kept lazily, ``encoder.attention_store``): it reads no
            whole (L, H, T, T) attention and makes no (T, T) result per layer. False: ``viz.registry.length_limit``
            refuses long traces with the length this model allows.
        length_reason: why it does not run on a long trace (not ``any_length``): what it computes or holds at once
            that grows with every layer's whole attention, as a clause after its label ("re-runs the model once per
            head, ..."); ``length_limit`` says it with the length. Empty: a generic reason.
        max_tokens: ``max_tokens(trace) -> int``, the most tokens its own ``limit`` lets it take on this trace's
            model whatever the attention (flow's 32, value zeroing's work bound), or None; ``length_limit`` says the
            smaller of this and the longest trace whose whole attention is kept.
        table: ``table(result) -> rows`` shown as a sortable table under the figures in the app.
        beside: what the app draws next to the first figure for comparison (``viz.analysis_figures.beside_figure``):
            "attention" (raw attention, head mean, at the Layer slider's layer) or "rollout" (attention rollout
            after it), or None.
        spinner: what the app says while it computes.
    """

    name: str
    label: str
    group: str
    description: str
    reading: str
    compute: Callable[[Inputs, Mapping[str, Any]], Any]
    figures: Callable[[Any, EncoderTrace | None, Mapping[str, Any]], Figures]
    rows: Callable[[Any, EncoderTrace | None, Mapping[str, Any]], tuple[list[dict], Any]]
    options: tuple[Option, ...] = ()
    layer: str | None = None
    uses_query: bool = False
    needs_model: bool = False
    corpus: bool = False
    corpus_max: int | None = None
    limit: Callable[[EncoderTrace], str | None] | None = None
    any_length: bool = False
    length_reason: str = ""
    max_tokens: Callable[[EncoderTrace], int] | None = None
    table: Callable[[Any], list[dict]] | None = None
    spinner: str = "Computing…"
    beside: str | None = None

    def option(self, name: str) -> Option | None:
        return next((option for option in self.options if option.name == name), None)
