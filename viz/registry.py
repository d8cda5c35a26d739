"""The registry: every view and every analysis Headlight shows, each named once, and the questions the Analysis tab
groups analyses by.

An entry only names things (``viz.entries``): the builder or the compute, figures and rows functions (in
``analysis/`` and ``viz/``), its options (``viz.options``) and labels. The app's tabs and analysis picker, the CLI's
``--view`` choices and flags, the download file names and the tables of docs/views.md and docs/analyses.md
(``python -m docs.tables``) are all read from ``VIEWS``, ``GROUPS`` and ``ANALYSES``. What each one shows and how to
read it is in those two pages.

An encoder-decoder's trace holds three kinds of attention (``viz.kinds``): every view and analysis is asked for one
here, in one place (``build_view``'s ``attention``, ``view_unavailable``, ``analysis_unavailable``,
``analysis_trace``): a view that cannot show a kind says why instead of failing.

Example:
    >>> fig = build_view(trace, "heatmap", layer=2, head=5)  # doctest: +SKIP
    >>> fig = build_view(trace, "heatmap", attention="cross", layer=1)  # doctest: +SKIP
    >>> result = ANALYSES["rollout"].compute(TraceInputs(trace), {"residual": 0.5})  # doctest: +SKIP
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import plotly.graph_objects as go

from analysis import attribution, faithfulness, flow, gradients, heads, lens, perturb, similarity, tables, value_zeroing
from analysis import positional as lab
from encoder.attention_store import EAGER_MAX_BYTES, EAGER_MAX_TOKENS, LazyAttention
from encoder.errors import ViewError
from encoder.trace import EncoderTrace
from viz import analysis_figures as figures
from viz import attribution as attribution_figures
from viz import faithfulness as faithfulness_figures
from viz import gradients as gradient_figures
from viz import lens as lens_figures
from viz import positional_lab as lab_figures
from viz import similarity as similarity_figures
from viz.attention import build_attention_heatmap, build_head_grid
from viz.distance import build_distance_histogram
from viz.entries import Analysis, Group, View
from viz.head_lines import build_head_lines
from viz.kinds import CROSS, DECODER, ENCODER, KIND_NAMES, check_kind, name_kind, of_kind
from viz.model_view import build_model_view
from viz.next_token import build_next_token_view, next_token_rows, next_token_unavailable
from viz.options import (
    ABLATE,
    CLUSTERS,
    COLORSCALE,
    COLS,
    DIMS,
    MAX_POSITIONS,
    REDUCE,
    RESIDUAL,
    ROWS,
    SAMPLES,
    SHARED_OPTIONS,
    SIGMA,
    SIGNED,
    SINKS,
    STATISTIC,
    STEPS,
    THUMBNAIL,
    UNTIL,
    Option,
    head_lines_settings,
    model_view_settings,
    no_settings,
    query_settings,
    token_view_settings,
)
from viz.positional import build_position_similarity, build_positional_dimensions, build_positional_heatmap
from viz.tokens import build_token_view

# ---------------------------------------------------------------------------------------------------------------
# Views: one trace in, one figure out

SELF_ATTENTION = (ENCODER, DECODER)  # the kinds whose queries and keys are the tokens of one text
WITHIN_ONE_TEXT = "it measures how far a query looks among the tokens of its own text"
ENCODER_POSITIONS = "the trace holds the encoder's positional encodings only"

VIEWS: dict[str, View] = {view.name: view for view in (
    View("heatmap", "Heatmap", build_attention_heatmap,
         "one head (or a mean/max of heads) as a query x key heatmap; over 512 tokens a block image (block max or "
         "mean), --rows/--cols zoom", options=(ROWS, COLS, REDUCE)),
    View("head-grid", "Head grid", build_head_grid, "all heads of one layer as small multiples, one colour scale"),
    View("model", "Model view", build_model_view, "every layer x head as a thumbnail, one light image",
         options=(THUMBNAIL, SINKS), from_settings=model_view_settings),
    View("tokens", "Token view", build_token_view,
         "the sentence, each token shaded by attention from/to a query token", from_settings=token_view_settings),
    View("lines", "Head lines", build_head_lines,
         "BertViz-style lines from query tokens to key tokens, one colour per head", from_settings=head_lines_settings),
    View("distance", "Attention distance", build_distance_histogram,
         "how far each head of a layer looks: attention mass by query-key distance, one row per head",
         options=(SIGNED,), kinds=SELF_ATTENTION, not_for=WITHIN_ONE_TEXT),
    View("positional", "Positional encodings", build_positional_heatmap,
         "the positional-encoding table, this text's rows outlined", options=(MAX_POSITIONS,),
         from_settings=no_settings, kinds=(ENCODER,), not_for=ENCODER_POSITIONS),
    View("position-similarity", "Positional encodings", build_position_similarity,
         "cosine similarity between positions", options=(MAX_POSITIONS,), from_settings=no_settings,
         kinds=(ENCODER,), not_for=ENCODER_POSITIONS),
    View("positional-dimensions", "Positional encodings", build_positional_dimensions,
         "chosen positional dimensions as lines", options=(DIMS, MAX_POSITIONS),
         from_settings=no_settings, kinds=(ENCODER,), not_for=ENCODER_POSITIONS),
    View("next-token", "Next token", build_next_token_view,
         "decoders: each token shaded by its surprisal (nats), the query token's top-10 next-token candidates",
         from_settings=query_settings, rows=next_token_rows, unavailable=next_token_unavailable,
         kinds=SELF_ATTENTION, not_for="it shows the candidates for the token after each one of a single text"),
)}

# ---------------------------------------------------------------------------------------------------------------
# Analyses: computed once (cached in the app), drawn as figures, exported as numbers; grouped by the question

GROUPS: dict[str, Group] = {group.name: group for group in (
    Group("flow", "How does information flow?",
          "how much of each input token ends up in each position, layer after layer"),
    Group("roles", "What do the heads do?",
          "what each head attends to ([CLS], [SEP], the previous token, ...) and which heads attend alike"),
    Group("heads", "Which heads matter?",
          "what the output loses when heads are silenced, and how easily each head's attention moves"),
    Group("positions", "How do positions shape attention?",
          "how much of each head's logits comes from position, and what the relative or rotary scheme does"),
    Group("tokens", "Which tokens drive the output?",
          "each token's effect on the output by gradients, and which explanation agrees with removing tokens"),
    Group("similarity", "Why are two texts similar?",
          "which token pairs make two sentence embeddings close"),
    Group("predictions", "What does the model predict?",
          "what a decoder would write next, and how that prediction forms layer by layer"),
)}

# Why analyses refuse a long trace (``length_limit``), where two or more share the reason.
DECOMPOSES = ("decomposes every layer's attention block by vector norms from its whole attention: T × T vectors of the "
              "model's width per layer")
BACKPROPAGATES = "backpropagates through every layer's whole attention (kept for the backward pass)"


def value_zeroing_tokens(trace: EncoderTrace) -> int:
    """The most tokens value zeroing takes on ``trace``'s model (``value_zeroing.max_tokens``: its work bound)."""
    return value_zeroing.max_tokens(trace.num_layers, trace.hidden.shape[-1])


ANALYSES: dict[str, Analysis] = {entry.name: entry for entry in (
    Analysis(
        "rollout", "Rollout", "flow", "attention rollout after --layer (default the last), token x token",
        "Row i: the share of each input token (column) in position i after the Layer slider's layer; rows sum to 1.",
        compute=flow.compute_rollout, figures=figures.rollout_figures, rows=flow.rollout_rows,
        options=(RESIDUAL, COLORSCALE), layer="figure", uses_query=True, any_length=True),
    Analysis(
        "flow", "Flow", "flow",
        f"attention flow (max flow) through layers 0 to --layer, at most {flow.MAX_FLOW_TOKENS} tokens",
        "Cell (i, j): the most input token j can pass to position i through the layers (a max flow); one strong "
        "path is enough.",
        compute=flow.compute_flow, figures=figures.flow_figures, rows=flow.flow_rows,
        options=(RESIDUAL, COLORSCALE), layer="compute", limit=flow.flow_limit,
        length_reason="solves a max-flow problem for every token pair (T × T of them) on a graph of L × T nodes whose "
                      "edges are every layer's whole attention", max_tokens=lambda trace: flow.MAX_FLOW_TOKENS,
        spinner="Solving max-flow for every token pair…"),
    Analysis(
        "norm", "Norm-based", "flow", "norm-based attention ||alpha f(x)|| in --layer (default the last), head mean",
        "Attention weighted by the size of the value vector it moves, in the Layer slider's layer; raw attention "
        "beside it.",
        compute=attribution.compute_norm, figures=attribution_figures.norm_figures, rows=attribution.norm_rows,
        options=(COLORSCALE,), layer="figure", needs_model=True,
        length_reason="weighs every layer's whole attention by the value vector each weight moves: H × T × T "
                      "vectors of the model's width per layer",
        spinner="Decomposing every layer's attention block…", beside="attention"),
    Analysis(
        "globenc", "GlobEnc", "flow", "GlobEnc: attention + residual + layer norm by norms, rolled out to --layer",
        "Rollout with the residual and the layer norm counted by vector norms; rows sum to 1. Post-LN BERT, pre-LN "
        "CLIP and GPT-2.",
        compute=attribution.compute_globenc, figures=attribution_figures.globenc_figures,
        rows=attribution.globenc_rows, options=(COLORSCALE,), layer="figure", needs_model=True,
        length_reason=DECOMPOSES, spinner="Decomposing every layer's attention block…", beside="rollout"),
    Analysis(
        "alti", "ALTI", "flow",
        "ALTI: token contributions by Manhattan closeness to each output, rolled out to --layer",
        "Rollout with each token's part scored by how close it comes to the layer's output; rows sum to 1. Post-LN "
        "BERT, pre-LN CLIP and GPT-2.",
        compute=attribution.compute_alti, figures=attribution_figures.alti_figures, rows=attribution.alti_rows,
        options=(COLORSCALE,), layer="figure", needs_model=True, length_reason=DECOMPOSES,
        spinner="Decomposing every layer's attention block…", beside="rollout"),
    Analysis(
        "value-zeroing", "Value zeroing", "flow",
        "value zeroing (each token's values zeroed, cosine distance of each layer's output), rolled out to --layer",
        "Row i: how far position i's output moves when token j's values are zeroed, rolled out; below, the Layer "
        "slider's layer alone.",
        compute=value_zeroing.compute_value_zeroing, figures=attribution_figures.value_zeroing_figures,
        rows=value_zeroing.value_zeroing_rows, options=(COLORSCALE,), layer="figure", needs_model=True,
        limit=value_zeroing.value_zeroing_limit, max_tokens=value_zeroing_tokens,
        length_reason="re-runs every layer once per token (that token's values zeroed), each run computing the "
                      "layer's whole attention, and makes a token × token result per layer",
        spinner="Running each layer with every token's values zeroed…",
        beside="rollout"),
    Analysis(
        "report", "Report card", "roles", "head report card: one --statistic for every layer x head (text or --corpus)",
        "One statistic per head, layer 0 on top; click a head to open it in the Heatmap.",
        compute=heads.compute_report, figures=figures.report_figures, rows=tables.result_rows,
        options=(STATISTIC, COLORSCALE), corpus=True, table=figures.report_table, any_length=True),
    Analysis(
        "clusters", "Head clusters", "roles", "heads clustered by Jensen-Shannon distance (text or --corpus)",
        "Dark squares on the diagonal are heads that attend alike; outlines mark the clusters.",
        compute=heads.compute_clusters, figures=figures.clusters_figures, rows=heads.clusters_rows,
        options=(CLUSTERS, COLORSCALE), corpus=True,
        length_reason="compares the whole T × T attention of every pair of heads (Jensen-Shannon), all L × H heads' "
                      "weights held at once", spinner="Comparing every pair of heads…"),
    Analysis(
        "importance", "Head importance", "heads", "each head silenced alone: its effect on the output, layers x heads",
        "Each head silenced alone: red heads support the output; click a head to open it in the Heatmap.",
        compute=perturb.compute_importance, figures=figures.importance_figures, rows=tables.result_rows,
        options=(COLORSCALE,), needs_model=True,
        length_reason="re-runs the model once per head (L × H runs, batched), each run computing every layer's "
                      "whole attention", spinner="Silencing every head in turn…"),
    Analysis(
        "ablation", "Head ablation", "heads",
        "the output with the --ablate heads silenced together vs the clean output",
        "Pick heads (the reddest of Head importance) and compare the output with them silenced together.",
        compute=perturb.compute_ablation, figures=figures.ablation_figures, rows=tables.result_rows,
        options=(ABLATE,), needs_model=True,
        length_reason="re-runs the model with the heads silenced, computing every layer's whole attention",
        spinner="Running the model with the heads silenced…"),
    Analysis(
        "noise", "Noise stability", "heads",
        "attention change under embedding noise: curve over sigma, or map at --sigma",
        "How far each head's attention moves as noise is added to the input embeddings; low is stable.",
        compute=perturb.compute_noise, figures=figures.noise_figures, rows=tables.result_rows,
        options=(SAMPLES, SIGMA, COLORSCALE), needs_model=True,
        length_reason="re-runs the model on batches of noisy copies of the input and compares every head's whole "
                      "attention in each with the clean trace's", spinner="Running the encoder on noisy embeddings…"),
    Analysis(
        "position-share", "Position vs content", "positions",
        "positional lab: share of each head's logit variance from position vs content, layers x heads",
        "1: only position moves a head's logits, 0: only content; click a head to open it in the Heatmap.",
        compute=lab.compute_position_share, figures=lab_figures.position_share_figures, rows=tables.result_rows,
        options=(COLORSCALE,), limit=lab.logit_terms_limit, any_length=True,
        spinner="Splitting every layer's logits into content and position…"),
    Analysis(
        "relative-bias", "Relative bias", "positions",
        "positional lab: the relative attention bias by signed distance, per head",
        "The bias each head adds to a logit, by the key's signed distance from the query (grey: bucket edges).",
        compute=lab.compute_relative_bias, figures=lab_figures.relative_bias_figures, rows=lab.bias_rows,
        limit=lab.relative_bias_limit, any_length=True),
    Analysis(
        "position-by-distance", "Position by distance", "positions",
        "positional lab: each head's positional logit term by signed distance, after --layer (every relative or "
        "rotary scheme)",
        "The positional part of each head's logits by signed distance, in the Layer slider's layer.",
        compute=lab.compute_term_by_distance, figures=lab_figures.term_by_distance_figures, rows=lab.bias_rows,
        layer="compute", limit=lab.logit_terms_limit, any_length=True),
    Analysis(
        "rope", "Rotary positions", "positions", "positional lab: RoPE frequencies and the long-range decay of q . k",
        "Left: how fast each dimension pair turns per token; right: how the expected q · k falls with distance.",
        compute=lab.compute_rope, figures=lab_figures.rope_figures, rows=tables.result_rows, limit=lab.rope_limit,
        any_length=True),
    Analysis(
        "faithfulness", "Faithfulness", "tokens",
        "faithfulness scoreboard: each method's token importance vs leave-one-out, Spearman rho and AOPC (text or "
        "--corpus)",
        "Which explanation agrees with removing each token: Spearman ρ and AOPC per method, higher is more faithful.",
        compute=faithfulness.compute_faithfulness, figures=faithfulness_figures.faithfulness_figures,
        rows=tables.result_rows, needs_model=True, corpus=True, corpus_max=faithfulness.CORPUS_MAX,
        table=tables.result_table,
        length_reason="scores explanations made from every layer's whole attention (rollout, attribution, "
                      "attention × gradient) against the model re-run once per token removed",
        spinner="Running the model with each token removed…"),
    Analysis(
        "input-gradient", "Input × gradient", "tokens", "input x gradient: sum_d x_d df/dx_d per token (signed)",
        "One bar per token: red raises the output f, blue lowers it.",
        compute=gradients.compute_input_gradient, figures=gradient_figures.token_attribution_figures,
        rows=tables.result_rows, options=(COLORSCALE,), needs_model=True, table=tables.result_table,
        length_reason=BACKPROPAGATES, spinner="Taking gradients through the model…"),
    Analysis(
        "integrated-gradients", "Integrated gradients", "tokens",
        "integrated gradients per token from a padded baseline, --steps points, with the completeness error",
        "One bar per token, summing to f(input) − f(baseline) up to the completeness error in the title.",
        compute=gradients.compute_integrated_gradients, figures=gradient_figures.token_attribution_figures,
        rows=tables.result_rows, options=(STEPS, COLORSCALE), needs_model=True, table=tables.result_table,
        length_reason=BACKPROPAGATES + " once per point on the path", spinner="Taking gradients through the model…"),
    Analysis(
        "attention-gradient", "Attention × gradient", "tokens",
        "attention x gradient, alpha df/dalpha, in --layer (default the last), head mean, token x token",
        "Cell (i, j): the weight times its gradient, in the Layer slider's layer; red raises the output f.",
        compute=gradients.compute_attention_gradient, figures=gradient_figures.attention_gradient_figures,
        rows=gradients.attention_gradient_rows, options=(COLORSCALE,), layer="figure", needs_model=True,
        length_reason="backpropagates to every layer's whole attention: its gradient is L × H × T × T numbers",
        spinner="Taking gradients through the model…", beside="attention"),
    Analysis(
        "similarity", "Why similar?", "similarity",
        "why --text and --pair are similar: the cosine of their mean-pooled embeddings split into token pairs",
        "Red token pairs pull the two texts together, blue ones push them apart; the cells sum to the model's cosine.",
        compute=similarity.compute_similarity, figures=similarity_figures.similarity_figures,
        rows=tables.result_rows, options=(COLORSCALE,), needs_model=True, limit=similarity.similarity_limit,
        length_reason="traces each text alone and backpropagates through every layer's whole attention of each "
                      "(integrated gradients of the cosine)",
        spinner="Tracing each text alone…"),
    Analysis(
        "lens", "Logit lens", "predictions",
        f"logit lens: the LM head on every layer's residual stream, top token per layer x position (at most "
        f"{lens.LENS_WINDOW} positions, ending at --until)",
        "Each cell: the token the model would predict after that position if it stopped after that layer; colour: "
        "its probability; bold: the token that follows.",
        compute=lens.compute_lens, figures=lens_figures.lens_figures, rows=lens.lens_rows,
        options=(UNTIL, COLORSCALE), needs_model=True, limit=lens.lens_limit, any_length=True,
        spinner="Applying the LM head to every layer…"),
)}

# ---------------------------------------------------------------------------------------------------------------
# Looking entries up


def view_tabs(trace: EncoderTrace | None = None) -> dict[str, list[View]]:
    """App tab label -> the views it shows, in registry order; with ``trace``, only the views available for it
    (``View.unavailable``: no Next-token tab without an LM head)."""
    tabs: dict[str, list[View]] = {}
    for view in VIEWS.values():
        if trace is None or view.available(trace):
            tabs.setdefault(view.label, []).append(view)
    return tabs


def view_options(view: View) -> dict[str, Option]:
    """Every option ``view`` takes: the shared ones its builder has a parameter for, then its own."""
    taken = {option.name: option for option in SHARED_OPTIONS if option.name in view.parameters}
    return {**taken, **{option.name: option for option in view.options}}


def build_view(trace: EncoderTrace, view: str, attention: str = ENCODER, **settings) -> go.Figure:
    """Build the view named ``view`` of ``trace``'s ``attention`` ("encoder", "decoder" or "cross": an
    encoder-decoder's, ``viz.kinds``) with ``settings`` (keyword arguments of its builder); an encoder-decoder's
    figure names the kind in its title.

    Raises:
        ViewError: unknown view, a setting the view does not take, a bad setting value, or a kind of attention the
            view cannot show or the trace does not hold (``view_unavailable``'s message).
    """
    if view not in VIEWS:
        raise ViewError(f"view {view!r} is not one of {', '.join(VIEWS)}")
    accepted = VIEWS[view].parameters
    unknown = sorted(set(settings) - set(accepted))
    if unknown:
        raise ViewError(f"view {view!r} does not take {', '.join(unknown)}; it takes {', '.join(accepted)}")
    why = view_unavailable(VIEWS[view], trace, attention)
    if why is not None:
        raise ViewError(why)
    return name_kind(VIEWS[view].builder(of_kind(trace, attention), **settings), trace, attention)


def view_unavailable(view: View, trace: EncoderTrace, kind: str = ENCODER) -> str | None:
    """Why ``view`` cannot show ``kind`` attention of ``trace`` (a kind the trace does not hold, one the view does
    not show, or the view's own ``unavailable``), or None when it can."""
    try:
        check_kind(trace, kind)
    except ViewError as error:
        return str(error)
    if kind not in view.kinds:
        return (f"The {view.name} view shows {_kinds_text(view.kinds)} only, not {KIND_NAMES[kind]}: "
                f"{view.not_for}. Pick {_kinds_text(view.kinds)} (Attention; --attention).")
    return None if view.unavailable is None else view.unavailable(of_kind(trace, kind))


def _kinds_text(kinds: tuple[str, ...]) -> str:
    """("encoder", "decoder") -> "encoder or decoder attention"."""
    return " or ".join(kinds) + " attention"


def analysis_unavailable(entry: Analysis, trace: EncoderTrace | None, kind: str = ENCODER) -> str | None:
    """Why ``entry`` cannot run on ``kind`` attention of ``trace`` (``kind_unavailable``), or the entry's own
    ``limit`` of that attention's trace; None when it can (then on ``analysis_trace``)."""
    why = kind_unavailable(entry, trace, kind) or length_limit(entry, analysis_trace(trace, kind))
    if why is not None or trace is None or entry.limit is None:
        return why
    return entry.limit(analysis_trace(trace, kind))


def longest_whole(layers: int, heads: int) -> int:
    """The most tokens whose (L, H, T, T) float32 attention a trace keeps whole (within ``EAGER_MAX_BYTES``, or up
    to ``EAGER_MAX_TOKENS`` whatever it takes): longer traces keep it lazily."""
    return max(EAGER_MAX_TOKENS, math.isqrt(EAGER_MAX_BYTES // (4 * layers * heads)))


def length_limit(entry: Analysis, trace: EncoderTrace | None) -> str | None:
    """Why ``entry`` (not ``any_length``) refuses a long ``trace`` (its attention kept lazily), or None when it can
    run: its own reason (``Analysis.length_reason``), the length it is limited to on this model (the smaller of its
    own ``max_tokens`` and ``longest_whole``), the input's length, and what runs at any length."""
    if trace is None or entry.any_length or not isinstance(trace.attention, LazyAttention):
        return None
    layers, heads, tokens = trace.num_layers, trace.num_heads, trace.num_tokens
    most = longest_whole(layers, heads)
    own = None if entry.max_tokens is None else entry.max_tokens(trace)
    reason = entry.length_reason or "reads every layer's whole attention, or makes a token × token result per layer"
    if tokens <= min(most, own or most):  # a short trace made lazy on purpose (``trace_text(..., lazy=True)``)
        return (f"{entry.label} {reason}, so it runs on traces that keep their whole attention; this one "
                f"({tokens:,} tokens) keeps it lazily: trace the text again with lazy=False.")
    if own is not None and own < most:
        most, limited = own, f"; this input has {tokens:,} tokens"
    else:
        whole = 4 * layers * heads * tokens**2
        limited = (f", the longest input whose whole attention a trace keeps ({layers} layers × {heads} heads: "
                   f"{EAGER_MAX_BYTES // 2**20} MB); this input has {tokens:,} tokens ({whole / 2**30:,.1f} GB of "
                   "attention)")
    anywhere = ", ".join(other.label for other in ANALYSES.values() if other.any_length)
    return (f"{entry.label} {reason}, so it is limited to {most:,} tokens on this model{limited}. Set Max tokens "
            f"(--max-tokens) to {most:,} or fewer; {anywhere} and the views run at any length.")


def kind_unavailable(entry: Analysis, trace: EncoderTrace | None, kind: str = ENCODER) -> str | None:
    """Why ``entry`` cannot run on ``kind`` attention of ``trace``, or None: cross-attention is never square
    (analyses follow a token through the layers of one text), and an analysis that re-runs the model re-runs it on
    the encoder's input."""
    if trace is None:
        return None
    try:
        check_kind(trace, kind)
    except ViewError as error:
        return str(error)
    if kind == CROSS:
        return (f"{entry.label} needs square attention: each token attending to the tokens of its own text. "
                "Cross-attention goes from decoder tokens to encoder tokens; pick encoder or decoder attention.")
    if kind == DECODER and entry.needs_model:
        return f"{entry.label} re-runs the model on the encoder's input: pick encoder attention."
    return None


def analysis_trace(trace: EncoderTrace | None, kind: str = ENCODER) -> EncoderTrace | None:
    """The trace an analysis of ``kind`` attention runs on: ``trace``, or its ``decoder_trace()`` (decoder; no
    analysis runs on cross-attention: ``analysis_unavailable``)."""
    return trace.decoder_trace() if trace is not None and kind == DECODER else trace


def group_analyses() -> dict[Group, list[Analysis]]:
    """Each question -> its analyses, in registry order (the Analysis tab's picker)."""
    grouped: dict[Group, list[Analysis]] = {group: [] for group in GROUPS.values()}
    for entry in ANALYSES.values():
        grouped[GROUPS[entry.group]].append(entry)
    return grouped


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
