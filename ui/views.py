"""The main area: shared controls, then one tab per registry view label (``viz.registry.view_tabs``) plus Compare
and Analysis (and Corpus, where the operator allows corpus indexes: ``ui.corpus``), and the trace's downloads.
It is a fragment: changing a control reruns only this part, over the one cached trace, never the encoder. With
"Merge sub-words into words" the view tabs and the downloads show the cached merged trace; Compare and Analysis
keep the tokens (analyses that re-run the model need them). A continued text ("Continue the text") gets a step
control above the others: step k shows the prompt and the first k generated tokens, cut from the cached generation
(``analysis.steps``), with the query on its last token.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import plotly.graph_objects as go
import streamlit as st

from analysis import word_starts
from analysis.steps import generation_steps, prompt_length
from encoder.errors import HeadlightError
from encoder.settings import settings as server_settings
from encoder.trace import EncoderTrace, class_probabilities
from ui.analysis import analysis_ui
from ui.cache import Inputs, get_card, get_figure, get_view_chart, get_word_trace
from ui.charts import chart_ui
from ui.compare import compare_ui
from ui.controls import controls_ui, option_ui, reset_later, reset_now
from ui.corpus import corpus_ui
from ui.downloads import file_stem, trace_downloads_ui
from ui.text import plain
from viz.kinds import kind_suffix, of_kind, query_side
from viz.layout import mark_image_model
from viz.long_inputs import HeadPrecompute, computed_hows, foreground, has_head_blocks
from viz.options import ViewSettings
from viz.registry import View, build_view, view_tabs, view_unavailable
from viz.scrub import step_value

COMPARE, ANALYSIS, CORPUS = "Compare", "Analysis", "Corpus"
AHEAD = "heads_ahead"  # session state: this session's ``HeadPrecompute`` (a long trace's head images computed ahead)


def tab_labels(trace: EncoderTrace | None = None) -> list[str]:
    """Every tab, in order: the registry's view labels (with ``trace``, those available for it: Next token only with
    an LM head), then Compare and Analysis, and Corpus when the operator allows corpus indexes
    (``HEADLIGHT_CORPUS_ROOTS``) (the URL's ``view`` values)."""
    return [*view_tabs(trace), COMPARE, ANALYSIS, *([CORPUS] if server_settings().corpus_roots else [])]


Mark = Callable[[go.Figure, int | None], go.Figure]  # a built figure and its layer -> the figure marked


def view_figures_ui(views: list[View], trace: EncoderTrace, settings: ViewSettings, stem: str,
                    trace_key: tuple, mark: Mark | None = None) -> None:
    """One tab of views: each view's own widgets, then its figure of the chosen attention (built once per
    ``trace_key``, the key of ``trace`` in the cache, and these settings; then ``mark``ed with the layer it shows,
    if one) and downloads; a view that cannot show that attention says why."""
    kind = settings.attention
    tokens = query_side(of_kind(trace, kind)).readable_tokens  # what a clicked query names
    for view in views:
        why = view_unavailable(view, trace, kind)
        if why is not None:
            st.info(plain(why))
            continue
        own = {option.name: option_ui(option, trace) for option in view.options if option.label is not None}
        arguments = {**view.settings_for(settings), **own}
        key = (view.name, trace_key, kind, tuple(sorted(arguments.items())))

        def build(view: View = view, arguments: dict = arguments) -> go.Figure:
            figure = build_view(trace, view.name, attention=kind, **arguments)
            layer = None if arguments.get("layer_mean") else arguments.get("layer")
            return figure if mark is None else mark(figure, layer)

        step = head_step(arguments)
        if step is None or mark is not None or trace.is_encoder_decoder:  # their figures differ beyond the steps
            chart_ui(view.name, get_figure(key, build), stem, tokens)
            continue
        family = (*key[:3], tuple(sorted((name, value) for name, value in arguments.items() if name not in STEPPED)))
        chart = get_view_chart(key, build, family, step)
        chart_ui(view.name, chart.figure, stem, tokens, shown=chart.shown, own=chart.build)


STEPPED = ("layer", "head", "heads")  # a view's arguments its head slider's steps move through


def head_step(arguments: dict) -> str | None:
    """The head slider's step ("layer:head") a view's ``arguments`` show: one head of one layer (``head``, unless
    ``aggregate`` combines ``heads`` instead; or the one head of ``heads``); else None."""
    if "head" in arguments:
        heads = (arguments["head"],) if arguments.get("aggregate") is None else tuple(arguments.get("heads") or ())
    else:
        heads = tuple(arguments.get("heads") or ())
    if arguments.get("layer_mean") or len(heads) != 1 or "layer" not in arguments:
        return None
    return step_value(arguments["layer"], heads[0])


def prediction_ui(trace: EncoderTrace) -> None:
    """A classifier's prediction for this input, next to its attention."""
    probabilities = class_probabilities(trace)
    if not probabilities:
        return
    label, best = probabilities[0]
    others = " · ".join(f"{plain(name)} {p:.1%}" for name, p in probabilities[1:])
    st.markdown(f"**Prediction: {plain(label)}** ({best:.1%})" + (f" · {others}" if others else ""))


def token_settings(trace: EncoderTrace, settings: ViewSettings) -> ViewSettings:
    """``settings`` for the tokens of ``trace`` when they were made for its merged words: the query is the first
    token of its word (no clicked cell)."""
    if not settings.merge_words:
        return settings
    query = int(word_starts(trace)[settings.query])
    return dataclasses.replace(settings, query=query, selected=None, merge_words=False)


def _new_query() -> None:
    """A new step puts the query back on its default: the step's last token (the one that chose the next)."""
    reset_later("query")


def step_ui(whole: EncoderTrace) -> int | None:
    """The generation step to show (None: the whole generation): a slider over the steps of a generated trace,
    and what the shown step generated."""
    steps = generation_steps(whole)
    if steps == 0:
        return None
    reset_now("step", steps)
    step = st.slider("Generation step", 0, steps, steps, key="step", bind="query-params", on_change=_new_query,
                     help="Replays the generation: step k shows the prompt and the first k generated tokens, each "
                          "token's attention as the model computed it then (a causal model's earlier tokens never "
                          "see later ones).")
    if step == 0:
        st.caption("Step 0: the prompt alone.")
    else:
        position = prompt_length(whole) + step - 1
        st.caption(f"Step {step} of {steps}: the model generated token {position}, "
                   f"“{plain(whole.readable_tokens[position])}”.")
    return None if step == steps else step


def image_model_mark(source: str, trace: EncoderTrace) -> Mark | None:
    """For an image model's text encoder (``ModelCard.reads``), what marks its views: the layers the image model
    reads and the token window's cut (``viz.layout.mark_image_model``; the cut counted in ``trace``'s tokens,
    also when the views show merged words); else None."""
    reads = get_card(source).reads
    if reads is None:
        return None
    return lambda figure, layer: mark_image_model(figure, trace, reads, layer)


def compute_ahead(trace: EncoderTrace, settings: ViewSettings) -> None:
    """For a long trace whose heatmap shows a reduction it does not keep as overview images
    (``viz.long_inputs.computed_hows``), its heads' block images computed ahead in the background around the shown
    layer and head (``viz.long_inputs.HeadPrecompute``), so a layer or head change reads its heatmap instead of
    computing it; one job per session: another trace (or a short one, or a kept reduction) cancels the last one's."""
    picked = of_kind(trace, settings.attention)
    job = st.session_state.get(AHEAD)
    wanted = has_head_blocks(picked) and settings.reduce in computed_hows(picked)
    if job is not None and (not wanted or job.store_id != picked.attention.store_id):
        job.cancel()
        del st.session_state[AHEAD]
        job = None
    if wanted:
        if job is None:
            job = st.session_state[AHEAD] = HeadPrecompute(picked)
        job.focus(settings.layer, settings.head)


@st.fragment
def views_ui(inputs: Inputs, display: dict[str, Any]) -> None:
    """The views: the shared controls, the tabs and the trace's downloads, re-run alone at each change of a control
    in it; ``display``: the display options (``ui.controls.display_ui``, drawn outside it, whose change re-runs the
    page and so this with the new options)."""
    with foreground():  # a long trace's heads computed ahead pause meanwhile
        shown, settings = _views_ui(inputs, display)
    compute_ahead(shown, settings)  # after the figure: the shown head is computed first, by its view


def _views_ui(inputs: Inputs, display: dict[str, Any]) -> tuple[EncoderTrace, ViewSettings]:
    whole = inputs.trace  # a cache hit: the fragment never re-runs the encoder
    if inputs.generation is not None:
        inputs = dataclasses.replace(inputs, step=step_ui(whole))
    trace = inputs.trace  # the whole trace, or a slice of it at a generation step
    last = trace.num_tokens - 1 if inputs.generation is not None else None  # the query starts on the newest token
    settings, shown = controls_ui(trace, lambda: get_word_trace(inputs), display, default_query=last)
    stem = file_stem(inputs.source) + kind_suffix(settings.attention)  # downloads name a decoder's or cross kind
    views = view_tabs(trace)
    labels = tab_labels(trace)
    for label, tab in zip(labels, st.tabs(labels, key="view", bind="query-params")):
        if not tab.open:
            continue
        with tab:
            try:
                if label == COMPARE:
                    compare_ui(inputs, trace, settings.layer, settings.head, stem)
                elif label == CORPUS:
                    corpus_ui(inputs.source, trace, settings, stem)
                elif label == ANALYSIS:
                    if settings.merge_words:
                        st.caption("Analyses run on the tokens (sub-words not merged): those that re-run the "
                                   "model need them.")
                    analysis_ui(dataclasses.replace(inputs, attention=settings.attention), trace,
                                token_settings(trace, settings), stem)
                else:
                    view_figures_ui(views[label], shown, settings, stem, (*inputs.key, settings.merge_words),
                                    image_model_mark(inputs.source, trace))
            except HeadlightError as error:
                st.warning(plain(error))
    trace_downloads_ui(shown, f"{stem}-words" if settings.merge_words else stem, settings.layer, settings.shown_heads,
                       settings.attention)
    return shown, settings
