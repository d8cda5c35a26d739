"""The registry: every view and every analysis Headlight shows, each named once.

One entry is the only place a view or analysis is declared. The app's tabs and analysis picker, the CLI's
``--view`` choices and flags, the download file names and the README table are all read from ``VIEWS`` and
``ANALYSES``. Adding a view is one ``View`` entry plus its builder; adding an analysis is one ``Analysis`` entry
plus its compute and figure functions.

Example:
    >>> fig = build_view(trace, "heatmap", layer=2, head=5)  # doctest: +SKIP
    >>> result = ANALYSES["rollout"].compute(TraceInputs(trace), {"residual": 0.5})  # doctest: +SKIP
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import plotly.graph_objects as go

import analysis
from analysis import attribution, gradients, perturb, similarity, value_zeroing
from analysis import positional as lab
from analysis.faithfulness import CorpusFaithfulness, corpus_faithfulness, faithfulness
from encoder.errors import AnalysisError, ViewError
from encoder.trace import EncoderTrace
from viz import analysis_figures as figures
from viz.attention import build_attention_heatmap, build_head_grid
from viz.attribution import build_attribution_heatmap
from viz.distance import build_distance_histogram
from viz.faithfulness import build_faithfulness_chart, build_faithfulness_corpus_chart
from viz.gradients import build_attention_gradient_heatmap, build_token_attribution
from viz.head_lines import build_head_lines
from viz.model_view import build_model_view
from viz.options import SHARED_OPTIONS, Option, ViewSettings
from viz.positional import build_position_similarity, build_positional_dimensions, build_positional_heatmap
from viz.positional_lab import build_position_share_map, build_relative_bias, build_rope_view
from viz.similarity import build_similarity_gradients, build_similarity_heatmap
from viz.tokens import build_token_view

if TYPE_CHECKING:
    from encoder.sources import LoadedModel

Figures = list[tuple[str, go.Figure]]  # (file/chart name, figure); the first is the one the CLI writes


# ---------------------------------------------------------------------------------------------------------------
# Views: one trace in, one figure out


@dataclass(frozen=True)
class View:
    """A figure of one trace.

    Attributes:
        name: the CLI's ``--view`` value, the chart key and the download file name ("heatmap").
        label: the app tab that shows it; views with the same label share a tab.
        builder: ``builder(trace, **settings) -> go.Figure``.
        description: one line for ``--help`` and the README.
        options: settings of this view beyond ``SHARED_OPTIONS`` (flags in the CLI; widgets where labelled).
        from_settings: the builder's keyword arguments from the app's shared controls (default: the settings
            named like the builder's parameters).
    """

    name: str
    label: str
    builder: Callable[..., go.Figure]
    description: str
    options: tuple[Option, ...] = ()
    from_settings: Callable[[ViewSettings], dict] | None = None

    @property
    def parameters(self) -> tuple[str, ...]:
        """The settings the builder takes (every parameter after ``trace``)."""
        return tuple(list(inspect.signature(self.builder).parameters)[1:])

    def settings_for(self, settings: ViewSettings) -> dict:
        """The builder's keyword arguments for the app's controls."""
        if self.from_settings is not None:
            return self.from_settings(settings)
        return settings.by_name(self.parameters)


def _display(s: ViewSettings) -> dict:
    return dict(hide_special=s.hide_special, renormalize=s.renormalize)


VIEWS: dict[str, View] = {view.name: view for view in (
    View("heatmap", "Heatmap", build_attention_heatmap,
         "one head (or a mean/max of heads) as a query x key heatmap"),
    View("head-grid", "Head grid", build_head_grid, "all heads of one layer as small multiples, one colour scale"),
    View("model", "Model view", build_model_view, "every layer x head as a thumbnail, one light image",
         options=(Option("thumbnail", "int", "model: cells per thumbnail side (default 64)", low=4, high=512),),
         from_settings=lambda s: dict(**_display(s), selected=None if s.layer_mean or s.aggregate else
                                      (s.layer, s.head))),
    View("tokens", "Token view", build_token_view,
         "the sentence, each token shaded by attention from/to a query token",
         from_settings=lambda s: dict(layer=s.layer, heads=s.shown_heads, query=s.query, direction=s.direction,
                                      aggregate=s.aggregate or "mean", layer_mean=s.layer_mean,
                                      colorscale=s.colorscale, **_display(s))),
    View("lines", "Head lines", build_head_lines,
         "BertViz-style lines from query tokens to key tokens, one colour per head",
         from_settings=lambda s: dict(layer=s.layer, heads=s.shown_heads, threshold=s.threshold, **_display(s))),
    View("distance", "Attention distance", build_distance_histogram,
         "how far each head of a layer looks: attention mass by query-key distance, one row per head",
         options=(Option("signed", "flag", "distance: keep the sign (keys before the query are negative)",
                         label="Signed distance (left: keys before the query)", url=True),)),
    View("positional", "Positional encodings", build_positional_heatmap,
         "the positional-encoding table, this text's rows outlined",
         options=(Option("max_positions", "int", "positional views: show the first N positions only", low=1),),
         from_settings=lambda s: {}),
    View("position-similarity", "Positional encodings", build_position_similarity,
         "cosine similarity between positions", from_settings=lambda s: {}),
    View("positional-dimensions", "Positional encodings", build_positional_dimensions,
         "chosen positional dimensions as lines",
         options=(Option("dims", "ints", "positional-dimensions: dimensions to plot, e.g. 0,1,64"),),
         from_settings=lambda s: {}),
)}


def view_tabs() -> dict[str, list[View]]:
    """App tab label -> the views it shows, in registry order."""
    tabs: dict[str, list[View]] = {}
    for view in VIEWS.values():
        tabs.setdefault(view.label, []).append(view)
    return tabs


def view_options(view: View) -> dict[str, Option]:
    """Every option ``view`` takes: the shared ones its builder has a parameter for, then its own."""
    taken = {option.name: option for option in SHARED_OPTIONS if option.name in view.parameters}
    return {**taken, **{option.name: option for option in view.options}}


def build_view(trace: EncoderTrace, view: str, **settings) -> go.Figure:
    """Build the view named ``view`` with ``settings`` (keyword arguments of its builder).

    Raises:
        ViewError: unknown view, a setting the view does not take, or a bad setting value.
    """
    if view not in VIEWS:
        raise ViewError(f"view {view!r} is not one of {', '.join(VIEWS)}")
    accepted = VIEWS[view].parameters
    unknown = sorted(set(settings) - set(accepted))
    if unknown:
        raise ViewError(f"view {view!r} does not take {', '.join(unknown)}; it takes {', '.join(accepted)}")
    return VIEWS[view].builder(trace, **settings)


# ---------------------------------------------------------------------------------------------------------------
# Analyses: computed once (cached in the app), drawn as figures, exported as numbers


class Inputs(Protocol):
    """What an analysis runs on; the app supplies cached versions, the CLI plain ones (``TraceInputs``)."""

    @property
    def trace(self) -> EncoderTrace | None:
        """The text's trace (None when the analysis runs over a corpus only)."""

    def model(self) -> LoadedModel:
        """The model that made the trace (for analyses that re-run it)."""

    def corpus_report(self, distances: bool) -> analysis.HeadReport | None:
        """The report card over the chosen corpus (with the head distances when ``distances``), or None when no
        corpus was chosen."""

    def progress(self, what: str) -> analysis.Progress | None:
        """A progress callback for long runs ("noisy runs", "heads silenced")."""

    def corpus_sentences(self) -> tuple[str, tuple[str, ...]] | None:
        """The chosen corpus as (name, sentences), or None for this text only."""


@dataclass(frozen=True)
class TraceInputs:
    """``Inputs`` for one trace (and optionally its model): for scripts, tests and the CLI."""

    trace: EncoderTrace | None
    loaded: LoadedModel | None = None
    report: Callable[[bool], analysis.HeadReport] | None = None
    on_progress: Callable[[str], analysis.Progress] | None = None
    sentences: tuple[str, tuple[str, ...]] | None = None  # the corpus: (name, sentences)

    def model(self) -> LoadedModel:
        if self.loaded is None:
            raise ViewError("this analysis re-runs the model, so it needs the model, not only a saved trace")
        return self.loaded

    def corpus_report(self, distances: bool) -> analysis.HeadReport | None:
        return None if self.report is None else self.report(distances)

    def progress(self, what: str) -> analysis.Progress | None:
        return None if self.on_progress is None else self.on_progress(what)

    def corpus_sentences(self) -> tuple[str, tuple[str, ...]] | None:
        return self.sentences


@dataclass(frozen=True)
class Analysis:
    """An analysis of a trace (or of a corpus).

    Attributes:
        name: the CLI's ``--view`` value and the download file name ("rollout").
        label: its name in the app's analysis picker ("Rollout"; kept in the URL).
        description: one line for ``--help`` and the README.
        caption: how to read it, shown above it in the app.
        compute: ``compute(inputs, options) -> result`` (the expensive part; the app caches it by the compute
            options).
        figures: ``figures(result, trace, options) -> [(name, figure), ...]``; the first is what the CLI writes.
        numbers: ``numbers(result, trace, options) -> (rows, json_result)``: CSV rows and the object written as
            JSON.
        options: its settings (see ``Option``; ``stage`` says which ones change the result).
        layer: how it takes the shared layer (the app's Layer slider; ``--layer``): "figure" (only drawn after
            it), "compute" (the result depends on it), or None (not at all).
        uses_query: its figures use the shared query token (app only).
        needs_model: re-runs the model (so a saved trace is not enough).
        corpus: can run over many sentences instead of one text (``--corpus`` in the CLI).
        corpus_max: the most sentences the app lets one run take (each re-runs the model many times), or None.
        limit: ``limit(trace) -> message`` when this input is too large for the analysis, else None.
        table: ``table(result) -> rows`` shown as a sortable table under the figures in the app.
        beside: what the app draws next to the first figure for comparison (``beside_figure``): "attention" (raw
            attention, head mean, at the Layer slider's layer) or "rollout" (attention rollout after it), or None.
        spinner: what the app says while it computes.
    """

    name: str
    label: str
    description: str
    caption: str
    compute: Callable[[Inputs, Mapping[str, Any]], Any]
    figures: Callable[[Any, EncoderTrace | None, Mapping[str, Any]], Figures]
    numbers: Callable[[Any, EncoderTrace | None, Mapping[str, Any]], tuple[list[dict], Any]]
    options: tuple[Option, ...] = ()
    layer: str | None = None
    uses_query: bool = False
    needs_model: bool = False
    corpus: bool = False
    corpus_max: int | None = None
    limit: Callable[[EncoderTrace], str | None] | None = None
    table: Callable[[Any], list[dict]] | None = None
    spinner: str = "Computing…"
    beside: str | None = None

    def option(self, name: str) -> Option | None:
        return next((option for option in self.options if option.name == name), None)


COLORSCALE = next(option for option in SHARED_OPTIONS if option.name == "colorscale")
RESIDUAL = Option("residual", "float", "rollout, flow: weight of the skip connection, A' = (1-R) mean(heads) + R I, "
                  f"0 to 1 (default {analysis.DEFAULT_RESIDUAL:g})", label="Residual weight", metavar="R",
                  default=analysis.DEFAULT_RESIDUAL, low=0.0, high=1.0, step=0.05, stage="compute", url=True)
DEFAULT_STATISTIC = "entropy"
DEFAULT_CLUSTERS = 4  # clusters outlined and numbered
FAITHFULNESS_CORPUS_MAX = 200  # sentences one app run may score (each re-runs the model ~100 times)
FAITHFULNESS_CORPUS_TOKENS = 128  # a corpus sentence is scored on at most this many tokens (bounds one run's work)


def _style(options: Mapping[str, Any]) -> dict:
    return {"colorscale": options["colorscale"]} if options.get("colorscale") else {}


def _last_layer(trace: EncoderTrace, options: Mapping[str, Any]) -> int:
    from viz.validation import check_layer

    layer = options.get("layer")
    return check_layer(trace, trace.num_layers - 1 if layer is None else layer)


def _token_numbers(name: str, matrix, trace: EncoderTrace, options: Mapping[str, Any]) -> tuple[list[dict], dict]:
    """Rollout or flow as long-format rows, and the JSON result naming the input and settings."""
    rows = analysis.matrix_rows(matrix, trace.tokens, name)
    result = {"kind": name, "model": trace.model, "text": trace.text, "pair": trace.pair,
              "layer": _last_layer(trace, options), "residual": options.get("residual", analysis.DEFAULT_RESIDUAL),
              "tokens": trace.tokens, "rows": rows}
    return rows, result


def _rollout_figures(result, trace: EncoderTrace, options: Mapping[str, Any]) -> Figures:
    layer = _last_layer(trace, options)
    residual = options.get("residual", analysis.DEFAULT_RESIDUAL)
    heatmap = figures.build_rollout_heatmap(result, trace.readable_tokens, layer, residual, **_style(options))
    shown = [("rollout", heatmap)]
    if options.get("query") is not None:
        strip = build_token_view(trace, query=options["query"], weights=result[layer],
                                 label=f"Rollout after layer {layer}")
        shown.append(("rollout-tokens", strip))
    return shown


def _flow_limit(trace: EncoderTrace) -> str | None:
    if trace.num_tokens <= analysis.MAX_FLOW_TOKENS:
        return None
    return (f"Attention flow solves one max-flow problem per token pair, so it is limited to "
            f"{analysis.MAX_FLOW_TOKENS} tokens; this input has {trace.num_tokens}. Shorten the text (or set Max "
            f"tokens to {analysis.MAX_FLOW_TOKENS}), or use Rollout.")


def _flow(inputs: Inputs, options: Mapping[str, Any]):
    trace = inputs.trace
    layers = _last_layer(trace, options) + 1
    return analysis.attention_flow(trace.attention, options.get("residual", analysis.DEFAULT_RESIDUAL),
                                   num_layers=layers)  # (T, T)


def _flow_figures(result, trace: EncoderTrace, options: Mapping[str, Any]) -> Figures:
    layers = _last_layer(trace, options) + 1
    residual = options.get("residual", analysis.DEFAULT_RESIDUAL)
    return [("flow", figures.build_flow_heatmap(result, trace.readable_tokens, layers, residual, **_style(options)))]


def _report(inputs: Inputs, options: Mapping[str, Any]) -> analysis.HeadReport:
    report = inputs.corpus_report(distances=False)
    return analysis.head_report(inputs.trace) if report is None else report


def _clusters(inputs: Inputs, options: Mapping[str, Any]) -> analysis.HeadClustering:
    report = inputs.corpus_report(distances=True)
    if report is not None:
        return analysis.cluster_heads(report.distance, report.num_layers, report.num_heads)
    trace = inputs.trace
    return analysis.cluster_heads(analysis.head_distances(trace.attention), trace.num_layers, trace.num_heads)


def _noise(inputs: Inputs, options: Mapping[str, Any]) -> perturb.NoiseStability:
    sigma = options.get("sigma")
    sigmas = perturb.DEFAULT_SIGMAS if sigma is None else tuple(sorted({*perturb.DEFAULT_SIGMAS, sigma}))
    samples = options.get("samples") or perturb.DEFAULT_SAMPLES
    return perturb.noise_stability(inputs.model(), inputs.trace, sigmas, samples,
                                   progress=inputs.progress("noisy runs"))


def _noise_figures(result: perturb.NoiseStability, trace, options: Mapping[str, Any]) -> Figures:
    curve = ("noise-curve", figures.build_noise_curve(result))
    if options.get("sigma") is None:
        return [curve]
    return [("noise", figures.build_noise_heatmap(result, options["sigma"], **_style(options))), curve]


def _rows_and_result(result, trace, options) -> tuple[list[dict], Any]:
    return result.rows(), result


def _missing(check: Callable[[EncoderTrace], Any]) -> Callable[[EncoderTrace], str | None]:
    """A ``limit`` that says why ``check(trace)`` refuses this trace (a positional lab entry for another scheme)."""
    def limit(trace: EncoderTrace) -> str | None:
        try:
            check(trace)
        except AnalysisError as error:
            return str(error)
        return None
    return limit


NO_SECOND_TEXT = ("Type a second sentence to compare (the sidebar's second sentence; --pair on the command line): "
                  "each text is traced alone and the cosine of their embeddings is split into token pairs.")


def _similarity_limit(trace: EncoderTrace) -> str | None:
    return NO_SECOND_TEXT if trace.pair is None else None


def _similarity(inputs: Inputs, options: Mapping[str, Any]) -> similarity.SimilaritySplit:
    trace = inputs.trace
    if trace.pair is None:
        raise AnalysisError(NO_SECOND_TEXT)
    return similarity.explain_similarity(inputs.model(), trace.text, trace.pair)

def _faithfulness(inputs: Inputs, options: Mapping[str, Any]):
    corpus = inputs.corpus_sentences()
    if corpus is None:
        return faithfulness(inputs.model(), inputs.trace)
    name, sentences = corpus
    return corpus_faithfulness(inputs.model(), sentences, inputs.progress("sentences scored"), name,
                               max_tokens=FAITHFULNESS_CORPUS_TOKENS)


def _faithfulness_figures(result, trace, options: Mapping[str, Any]) -> Figures:
    if isinstance(result, CorpusFaithfulness):
        return [("faithfulness-corpus", build_faithfulness_corpus_chart(result))]
    return [("faithfulness", build_faithfulness_chart(result))]


def _attribution(method: str) -> Callable[[Inputs, Mapping[str, Any]], Any]:
    """compute for "norm" (head mean of ||alpha f(x)||), "globenc" and "alti" (rolled out): (L, T, T)."""
    def compute(inputs: Inputs, options: Mapping[str, Any]):
        trace, model = inputs.trace, inputs.model()
        weights = [attribution.layer_weights(model, layer) for layer in range(trace.num_layers)]
        if method == "norm":
            return attribution.norm_based(trace.hidden, trace.attention, weights).mean(axis=1)
        layers = (attribution.globenc_layers if method == "globenc" else attribution.alti_layers)(
            trace.hidden, trace.attention, weights)
        return attribution.rollout(layers)
    return compute


def _attribution_figures(method: str) -> Callable[[Any, EncoderTrace, Mapping[str, Any]], Figures]:
    return lambda result, trace, o: [(method, build_attribution_heatmap(
        result, trace.readable_tokens, method, _last_layer(trace, o), **_style(o)))]


def _attribution_numbers(method: str) -> Callable[[Any, EncoderTrace, Mapping[str, Any]], tuple[list[dict], dict]]:
    def numbers(result, trace: EncoderTrace, options: Mapping[str, Any]) -> tuple[list[dict], dict]:
        layer = _last_layer(trace, options)
        rows = analysis.matrix_rows(result[layer], trace.tokens, method)
        return rows, {"kind": method, "model": trace.model, "text": trace.text, "pair": trace.pair, "layer": layer,
                      "tokens": trace.tokens, "rows": rows}
    return numbers


def _value_zeroing_limit(trace: EncoderTrace) -> str | None:
    return value_zeroing.size_limit(trace.num_layers, trace.hidden.shape[-1], trace.num_tokens)


def _value_zeroing_figures(result: value_zeroing.ValueZeroing, trace: EncoderTrace,
                           options: Mapping[str, Any]) -> Figures:
    layer = _last_layer(trace, options)
    return [(name, build_attribution_heatmap(values, trace.readable_tokens, name, layer, **_style(options)))
            for name, values in (("value-zeroing", result.rollout), ("value-zeroing-layer", result.layers))]


def _value_zeroing_numbers(result: value_zeroing.ValueZeroing, trace: EncoderTrace,
                           options: Mapping[str, Any]) -> tuple[list[dict], dict]:
    """The rollout after the layer ("value-zeroing") and that layer's own matrix ("layer_share"), per cell."""
    layer = _last_layer(trace, options)
    rows = analysis.matrix_rows(result.rollout[layer], trace.tokens, "value-zeroing")
    for row, share in zip(rows, result.layers[layer].ravel()):
        row["layer_share"] = float(share)
    return rows, {"kind": "value-zeroing", "model": trace.model, "text": trace.text, "pair": trace.pair,
                  "layer": layer, "tokens": trace.tokens, "rows": rows}


def _attribution_entry(method: str, label: str, description: str, caption: str) -> Analysis:
    return Analysis(method, label, description, caption, compute=_attribution(method),
                    figures=_attribution_figures(method), numbers=_attribution_numbers(method),
                    options=(COLORSCALE,), layer="figure", needs_model=True,
                    spinner="Decomposing every layer's attention block…",
                    beside="attention" if method == "norm" else "rollout")


def beside_figure(entry: Analysis, trace: EncoderTrace, options: Mapping[str, Any]) -> tuple[str, go.Figure] | None:
    """The raw-attention figure the app shows next to ``entry``'s first figure (``Analysis.beside``), at the same
    layer: the heads' mean attention, or attention rollout after that layer; None when the entry names none."""
    layer = _last_layer(trace, options)
    if entry.beside == "attention":
        return "attention-mean", build_attention_heatmap(trace, layer, aggregate="mean", scrub=False, **_style(options))
    if entry.beside == "rollout":
        rollout = analysis.attention_rollout(trace.attention)
        return "rollout", figures.build_rollout_heatmap(rollout, trace.readable_tokens, layer,
                                                        analysis.DEFAULT_RESIDUAL, **_style(options))
    return None


STEPS = Option("steps", "int", f"integrated-gradients: Gauss-Legendre points on the path from the baseline "
               f"(default {gradients.DEFAULT_STEPS})", label="Points on the path", metavar="N",
               default=gradients.DEFAULT_STEPS, low=1, high=gradients.MAX_STEPS, choices=(16, 32, 50, 100, 200),
               stage="compute")
GRADIENT_F = ("f is the predicted class's probability for a classifier; for a sentence-embedding model the pooled "
              "vector (before normalisation) projected on its own direction, i.e. its length at this text.")


def _attention_gradient_numbers(result: gradients.AttentionGradient, trace: EncoderTrace,
                                options: Mapping[str, Any]) -> tuple[list[dict], dict]:
    layer = _last_layer(trace, options)
    rows = analysis.matrix_rows(result.head_mean(layer), trace.tokens, "attention_gradient")
    return rows, {"kind": "attention-gradient", "model": trace.model, "text": trace.text, "pair": trace.pair,
                  "layer": layer, "objective": result.objective, "value": result.value, "tokens": trace.tokens,
                  "rows": rows}


def _token_attribution_entry(method: str, label: str, description: str, caption: str,
                             compute: Callable[[Inputs, Mapping[str, Any]], Any],
                             options: tuple[Option, ...] = ()) -> Analysis:
    return Analysis(method, label, description, caption, compute=compute,
                    figures=lambda result, trace, o: [(method, build_token_attribution(
                        result, trace.readable_tokens, **_style(o)))],
                    numbers=_rows_and_result, options=(*options, COLORSCALE), needs_model=True,
                    table=lambda result: result.rows(), spinner="Taking gradients through the model…")


ANALYSES: dict[str, Analysis] = {entry.name: entry for entry in (
    Analysis(
        "rollout", "Rollout", "attention rollout after --layer (default the last), token x token",
        "Attention rollout (Abnar & Zuidema, 2020): average the heads, add the identity for the skip connection, "
        "renormalise, multiply through the layers. The Layer slider picks the layer.",
        compute=lambda inputs, o: analysis.attention_rollout(inputs.trace.attention,
                                                             o.get("residual", analysis.DEFAULT_RESIDUAL)),
        figures=_rollout_figures,
        numbers=lambda result, trace, o: _token_numbers("rollout", result[_last_layer(trace, o)], trace, o),
        options=(RESIDUAL, COLORSCALE), layer="figure", uses_query=True),
    Analysis(
        "flow", "Flow", f"attention flow (max flow) through layers 0 to --layer, at most "
                        f"{analysis.MAX_FLOW_TOKENS} tokens",
        "Attention flow: the layer graph with attention weights (plus the residual) as pipe capacities; each cell "
        "is a maximum flow from an input token to a position after the chosen layer (the Layer slider).",
        compute=_flow, figures=_flow_figures,
        numbers=lambda result, trace, o: _token_numbers("flow", result, trace, o),
        options=(RESIDUAL, COLORSCALE), layer="compute", limit=_flow_limit,
        spinner="Solving max-flow for every token pair…"),
    Analysis(
        "report", "Report card", "head report card: one --statistic for every layer x head (text or --corpus)",
        "Head report card (Clark et al., 2019): what each head attends to, averaged over query tokens "
        "(token-weighted over a corpus). Click a head to open it in the Heatmap.",
        compute=_report,
        figures=lambda result, trace, o: [(f"report-{o.get('statistic') or DEFAULT_STATISTIC}",
                                           figures.build_report_heatmap(result, o.get("statistic") or DEFAULT_STATISTIC,
                                                                        **_style(o)))],
        numbers=_rows_and_result,
        options=(Option("statistic", "choice", f"report: the statistic drawn (default {DEFAULT_STATISTIC}): "
                        f"{', '.join(analysis.STATISTICS)}; csv and json hold them all", label="Statistic",
                        metavar="NAME", default=DEFAULT_STATISTIC, choices=tuple(analysis.STATISTICS)), COLORSCALE),
        corpus=True, table=figures.report_table),
    Analysis(
        "clusters", "Head clusters", "heads clustered by Jensen-Shannon distance (text or --corpus)",
        "Heads clustered by the mean Jensen-Shannon divergence between their attention (average linkage).",
        compute=_clusters,
        figures=lambda result, trace, o: [("clusters", figures.build_clustering_heatmap(
            result, clusters=o.get("clusters") or DEFAULT_CLUSTERS, **_style(o)))],
        numbers=lambda result, trace, o: (result.rows(o.get("clusters") or DEFAULT_CLUSTERS), result),
        options=(Option("clusters", "int", f"clusters: how many clusters to outline and number (default "
                        f"{DEFAULT_CLUSTERS})", label="Clusters outlined", metavar="K", default=DEFAULT_CLUSTERS, low=1,
                        choices=tuple(range(1, 13)), url=True), COLORSCALE),
        corpus=True, spinner="Comparing every pair of heads…"),
    Analysis(
        "noise", "Noise stability",
        "attention change under embedding noise: curve over sigma, or map at --sigma",
        "Gaussian noise of scale sigma × the RMS of the input embeddings, several seeded samples; how far each "
        "head's attention moves (mean Jensen-Shannon divergence). Sigma 0 is the clean trace exactly.",
        compute=_noise, figures=_noise_figures, numbers=_rows_and_result,
        options=(Option("samples", "int", f"noise: noisy samples per sigma (default {perturb.DEFAULT_SAMPLES})",
                        label="Samples per sigma", metavar="N", default=perturb.DEFAULT_SAMPLES, low=1,
                        choices=(4, 8, 16), stage="compute"),
                 Option("sigma", "float", "noise: draw the layers x heads map at this sigma (measured besides "
                        f"{', '.join(f'{s:g}' for s in perturb.DEFAULT_SIGMAS)}) instead of the curve over sigma",
                        label="Sigma shown in the map", metavar="S", low=0.0,
                        dynamic_choices=lambda result: [float(s) for s in result.sigmas]),
                 COLORSCALE),
        needs_model=True, spinner="Running the encoder on noisy embeddings…"),
    Analysis(
        "importance", "Head importance", "each head silenced alone: its effect on the output, layers x heads",
        "Head importance (Michel et al., 2019): each head silenced alone (its context vectors × 0 before the "
        "output projection) and the change of the output. Click a head to open it in the Heatmap.",
        compute=lambda inputs, o: perturb.head_importance(inputs.model(), inputs.trace,
                                                          progress=inputs.progress("heads silenced")),
        figures=lambda result, trace, o: [("importance", figures.build_importance_heatmap(result, **_style(o)))],
        numbers=_rows_and_result, options=(COLORSCALE,), needs_model=True,
        spinner="Silencing every head in turn…"),
    Analysis(
        "ablation", "Head ablation", "the output with the --ablate heads silenced together vs the clean output",
        "Head ablation: silence several heads together and compare the output with the clean model (pick the "
        "reddest heads of Head importance).",
        compute=lambda inputs, o: perturb.ablate_heads(inputs.model(), inputs.trace, o["ablate"]),
        figures=lambda result, trace, o: [("ablation", figures.build_ablation_chart(result))],
        numbers=_rows_and_result,
        options=(Option("ablate", "heads", "ablation: heads to silence together, e.g. 0:3,2:5",
                        label="Heads to silence together", metavar="L:H,...", stage="compute", required=True),),
        needs_model=True, spinner="Running the model with the heads silenced…"),
    Analysis(
        "position-share", "Position vs content",
        "positional lab: share of each head's logit variance from position vs content, layers x heads",
        "How much of each head's attention logits comes from position: V(position) / (V(content) + V(position)), "
        "variances over each query's visible keys, averaged over queries (README, Positional lab). Click a head "
        "to open it in the Heatmap.",
        compute=lambda inputs, o: lab.position_share(inputs.trace),
        figures=lambda result, trace, o: [("position-share", build_position_share_map(result, **_style(o)))],
        numbers=_rows_and_result, options=(COLORSCALE,), limit=_missing(lab.check_logit_terms)),
    Analysis(
        "relative-bias", "Relative bias", "positional lab: the relative attention bias by signed distance, per head",
        "The bias each head adds to a logit, by the key's signed distance from the query (MPNet's buckets, grey "
        "lines at their boundaries; dashed red: the farthest this text reaches).",
        compute=lambda inputs, o: lab.relative_bias(inputs.trace),
        figures=lambda result, trace, o: [("relative-bias", build_relative_bias(result, trace.num_tokens))],
        numbers=lambda result, trace, o: (lab.relative_bias_rows(result), result), limit=_missing(lab.relative_bias)),
    Analysis(
        "position-by-distance", "Position by distance",
        "positional lab: each head's positional logit term by signed distance, after --layer (every relative or "
        "rotary scheme)",
        "The positional part of each head's logits (MPNet's bias, DeBERTa's c2p + p2c, the rotary part of q · k) "
        "averaged over this text's cells at each signed distance, for the Layer slider's layer.",
        compute=lambda inputs, o: lab.term_by_distance(inputs.trace, _last_layer(inputs.trace, o)),
        figures=lambda result, trace, o: [("position-by-distance", build_relative_bias(
            result, trace.num_tokens, f"Positional logit term by signed distance, layer {int(result['layer'][0])}",
            "mean positional term (this text)"))],
        numbers=lambda result, trace, o: (lab.relative_bias_rows(result), result), layer="compute",
        limit=_missing(lambda trace: lab.check_logit_terms(trace))),
    Analysis(
        "rope", "Rotary positions", "positional lab: RoPE frequencies and the long-range decay of q . k",
        "Rotary positions: each dimension pair turns by its frequency per token; the expected q · k of a content "
        "pair falls with distance, faster for the local theta (dashed: the local window's reach).",
        compute=lambda inputs, o: lab.rope_scheme(inputs.trace),
        figures=lambda result, trace, o: [("rope", build_rope_view(result))],
        numbers=_rows_and_result, limit=_missing(lab.rope_scheme)),
    Analysis(
        "similarity", "Why similar?",
        "why --text and --pair are similar: the cosine of their mean-pooled embeddings split into token pairs",
        "Why are these two similar? Each text is traced alone; the cosine of their mean-pooled embeddings is split "
        "exactly into token pairs, (h_i · g_j) / (n m ‖a‖ ‖b‖): the cells sum to the model's cosine. Below: "
        "integrated gradients of the cosine over each text's tokens (the other text held fixed, baseline: its "
        "non-special tokens padded). Needs a mean-pooled model (MiniLM; for the tutorial model, the pooled "
        "features its classifier reads).",
        compute=_similarity,
        figures=lambda result, trace, o: [("similarity", build_similarity_heatmap(result, **_style(o))),
                                          ("similarity-gradients", build_similarity_gradients(result, **_style(o)))],
        numbers=_rows_and_result, options=(COLORSCALE,), needs_model=True, limit=_similarity_limit,
        spinner="Tracing each text alone…"),
    _attribution_entry(
        "norm", "Norm-based", "norm-based attention ||alpha f(x)|| in --layer (default the last), head mean",
        "Norm-based attention (Kobayashi et al., 2020): each weight times the norm of the value vector it moves, "
        "alpha_ij ||f(x_j)||, averaged over heads. Tokens that soak up attention with small value vectors (MiniLM's "
        "[CLS]) lose the weight raw attention gives them. The Layer slider picks the layer."),
    _attribution_entry(
        "globenc", "GlobEnc", "GlobEnc: attention + residual + layer norm by norms, rolled out to --layer",
        "GlobEnc (Modarressi et al., 2022): each token's vector after attention, the residual and the layer norm, "
        "its norm as its share, multiplied through the layers like rollout. Rows sum to 1; post-LN BERT models."),
    _attribution_entry(
        "alti", "ALTI", "ALTI: token contributions by Manhattan closeness to each output, rolled out to --layer",
        "ALTI (Ferrando et al., 2022): each token's part of a position's output after attention, residual and "
        "layer norm, scored by how much closer it is to the output than nothing, multiplied through the layers. "
        "Rows sum to 1; post-LN BERT models."),
    Analysis(
        "value-zeroing", "Value zeroing",
        "value zeroing (each token's values zeroed, cosine distance of each layer's output), rolled out to --layer",
        "Value zeroing (Mohebbi et al., 2023): each layer is run again once per token with that token's value "
        "vectors zeroed in every head; how far each position's output moves (cosine distance) is that token's "
        "share of it, rows normalised to 1, multiplied through the layers like rollout. The second chart is the "
        "Layer slider's layer alone. Every model family.",
        compute=lambda inputs, o: value_zeroing.value_zeroing(inputs.model(), inputs.trace,
                                                              progress=inputs.progress("layers")),
        figures=_value_zeroing_figures, numbers=_value_zeroing_numbers, options=(COLORSCALE,), layer="figure",
        needs_model=True, limit=_value_zeroing_limit,
        spinner="Running each layer with every token's values zeroed…", beside="rollout"),
    Analysis(
        "faithfulness", "Faithfulness",
        "faithfulness scoreboard: each method's token importance vs leave-one-out, Spearman rho and AOPC (text or "
        "--corpus)",
        "Which explanation does the model support on this text? Each method's importance of the tokens (the row "
        "the output reads: [CLS] or the mean over rows, last layer) against the output change when each token is "
        "removed alone (leave-one-out): Spearman ρ, and AOPC, the mean change with the method's top 1-10 tokens "
        "removed. Norm-based, GlobEnc and ALTI only for post-LN BERT models. Over a corpus: each method's mean ρ "
        f"over the sentences (each on at most {FAITHFULNESS_CORPUS_TOKENS} tokens), and how often it is the best.",
        compute=_faithfulness, figures=_faithfulness_figures,
        numbers=_rows_and_result, needs_model=True, corpus=True, corpus_max=FAITHFULNESS_CORPUS_MAX,
        table=lambda result: result.rows(),
        spinner="Running the model with each token removed…"),
    Analysis(
        "attention-gradient", "Attention × gradient",
        "attention x gradient, alpha df/dalpha, in --layer (default the last), head mean, token x token",
        "Attention × gradient: each weight times the gradient of f with respect to it (by tf.GradientTape), "
        f"α_ij ∂f/∂α_ij, signed and averaged over heads for the Layer slider's layer. {GRADIENT_F}",
        compute=lambda inputs, o: gradients.attention_gradient(inputs.model(), inputs.trace),
        figures=lambda result, trace, o: [("attention-gradient", build_attention_gradient_heatmap(
            result, trace.readable_tokens, _last_layer(trace, o), **_style(o)))],
        numbers=_attention_gradient_numbers, options=(COLORSCALE,), layer="figure", needs_model=True,
        spinner="Taking gradients through the model…", beside="attention"),
    _token_attribution_entry(
        "input-gradient", "Input × gradient", "input x gradient: sum_d x_d df/dx_d per token (signed)",
        f"Input × gradient: each token's input embedding times the gradient of f, summed over the dimensions. "
        f"{GRADIENT_F}",
        compute=lambda inputs, o: gradients.input_gradient(inputs.model(), inputs.trace)),
    _token_attribution_entry(
        "integrated-gradients", "Integrated gradients",
        "integrated gradients per token from a padded baseline, --steps points, with the completeness error",
        "Integrated gradients (Sundararajan et al., 2017): the gradient of f averaged along the straight path from "
        "a baseline (every non-special token replaced by the pad token) to the input embeddings, times the "
        "difference; the attributions sum to f(input) − f(baseline), and the title gives how closely (the "
        f"completeness error). {GRADIENT_F}",
        compute=lambda inputs, o: gradients.integrated_gradients(
            inputs.model(), inputs.trace, o.get("steps") or gradients.DEFAULT_STEPS,
            progress=inputs.progress("points on the path")),
        options=(STEPS,)),
)}


def analysis_options() -> dict[str, Option]:
    """Every analysis option by name (one declaration per name)."""
    found: dict[str, Option] = {}
    for entry in ANALYSES.values():
        for option in entry.options:
            found.setdefault(option.name, option)
    return found


def compute_options(entry: Analysis, options: Mapping[str, Any]) -> dict[str, Any]:
    """The options that change ``entry``'s result (its cache key), with the shared layer where it takes one."""
    names = {option.name for option in entry.options if option.stage == "compute"}
    if entry.layer == "compute":
        names.add("layer")
    return {name: value for name, value in options.items() if name in names}
