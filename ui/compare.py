"""The Compare tab: the same head side by side in two models (initial vs trained), or for two texts of equal
length (a minimal pair), and which heads changed most (Jensen-Shannon divergence per head). For two texts through a
model that reads its output at one token (CLIP's end-of-text token, a decoder's last), first that token's row
layer by layer and the cosine of the two outputs (``analysis.pooled_diff``), for texts of any lengths."""

from __future__ import annotations

import numpy as np
import streamlit as st

import analysis
from analysis.pooled import pooled_row
from encoder.errors import AnalysisError, HeadlightError
from encoder.sources import builtin_sources
from encoder.trace import EncoderTrace
from ui import cache
from ui.cache import Inputs
from ui.charts import chart_ui
from ui.text import plain
from viz import analysis_figures as figures
from viz.attention import build_attention_heatmap
from viz.registry import ANALYSES

MODES = ("another model", "another text")
# The pooled-token comparison's methods: label -> (registry analysis, its result -> the (L, T, T) rolled-out matrix)
POOLED_METHODS = {"attention rollout": ("rollout", None), "ALTI": ("alti", lambda result: result),
                  "value zeroing": ("value-zeroing", lambda result: result.rollout)}
COUNTERPART = {"tutorial": "tutorial-initial", "tutorial-initial": "tutorial"}


def _other_trace(inputs: Inputs, trace: EncoderTrace) -> tuple[EncoderTrace, str, str] | None:
    """The second trace, with labels for both sides, or None (with a message) when there is none yet."""
    default_mode = MODES[0] if inputs.source in COUNTERPART else MODES[1]
    mode = st.segmented_control("Compare with", MODES, default=default_mode, required=True, key="compare",
                                bind="query-params")
    if mode == "another model":
        choices = [name for name in builtin_sources() if name != inputs.source]
        if not choices:
            st.info("No other model to compare with.")
            return None
        default = COUNTERPART.get(inputs.source, choices[0])
        other = st.selectbox("Second model (same tokenizer)", choices,
                             index=choices.index(default) if default in choices else 0, key="other_model",
                             help="tutorial-initial vs tutorial shows what training changed in each head.")
        try:
            other_trace = cache.get_trace(other, inputs.text, inputs.pair, inputs.max_tokens)
        except HeadlightError as error:
            st.error(plain(error))
            return None
        return other_trace, inputs.source, other
    other_text = st.text_area("Second text (same number of tokens: a minimal pair)", key="other_text",
                              placeholder="e.g. the same sentence with one word swapped", height=70)
    if not other_text.strip():
        st.info(f"Type a second text of {trace.num_tokens} tokens, e.g. the same sentence with one word swapped.")
        return None
    try:
        other = cache.get_trace(inputs.source, other_text, inputs.pair, inputs.max_tokens)
    except HeadlightError as error:
        st.warning(plain(error))
        return None
    return other, "first text", "second text"


def _rolled(inputs: Inputs, other: EncoderTrace, method: str) -> tuple[np.ndarray, np.ndarray] | None:
    """Both texts' rolled-out (L, T, T) matrices of ``method`` (a ``POOLED_METHODS`` label) through the registry's
    cached analyses, or None for attention rollout (``pooled_diff``'s own)."""
    name, rolled = POOLED_METHODS[method]
    if name == "rollout":
        return None
    sides = (inputs, cache.Inputs(inputs.source, other.text, inputs.pair, inputs.max_tokens))
    for side in sides:
        too_large = ANALYSES[name].limit(side.trace) if ANALYSES[name].limit else None
        if too_large:
            raise AnalysisError(too_large)
    first, second = (rolled(cache.analysis_result(name, side, ())) for side in sides)
    return first, second


def _pooled_ui(inputs: Inputs, trace: EncoderTrace, other: EncoderTrace, stem: str) -> bool:
    """Two texts through a model with a pooled token: the cosines of the outputs, how that token's row changes
    per layer (by the method picked; with its numbers), and the note on unequal lengths. False (nothing shown) for
    other models."""
    if pooled_row(trace) is None:
        return False
    methods = list(POOLED_METHODS) if inputs.generation is None else list(POOLED_METHODS)[:1]
    method = st.segmented_control("Contributions by", methods, default=methods[0], required=True,
                                  key="pooled_method", bind="query-params",
                                  help="ALTI and value zeroing re-run parts of the model for both texts.")
    try:
        diff = analysis.pooled_diff(trace, other, rolled=_rolled(inputs, other, method), method=method)
    except HeadlightError as error:
        st.warning(plain(error))
        return False
    st.markdown(f"**What {plain(diff.pooled_a.reads)} reads: the row of {plain(diff.pooled_a.token)}**")
    for column, (name, value) in zip(st.columns(len(diff.cosines)) if diff.cosines else (), diff.cosines.items()):
        column.metric(f"cosine of the two {name} vectors", f"{value:.4f}")
    if diff.note:
        st.info(plain(diff.note))
    chart_ui("pooled-diff", figures.build_pooled_diff(diff), stem, numbers={
        "csv": lambda: analysis.rows_to_csv(diff.rows()), "json": lambda: analysis.to_json(diff)})
    return True


def compare_ui(inputs: Inputs, trace: EncoderTrace, layer: int, head: int, stem: str) -> None:
    found = _other_trace(inputs, trace)
    if found is None:
        return
    other, label_a, label_b = found
    if label_a == "tutorial" and label_b == "tutorial-initial":  # before training on the left, after on the right
        trace, other, label_a, label_b = other, trace, label_b, label_a
    pooled = trace.model == other.model and _pooled_ui(inputs, trace, other, stem)
    if pooled and trace.num_tokens != other.num_tokens:
        return  # the note above says why the heads are not compared
    try:
        diff = analysis.diff_traces(trace, other, label_a, label_b)
    except HeadlightError as error:
        st.warning(plain(error))
        return
    left, right = st.columns(2)
    for column, side, label, name in ((left, trace, label_a, "compare-a"), (right, other, label_b, "compare-b")):
        with column:
            st.markdown(f"**{plain(label)}**")
            chart_ui(name, build_attention_heatmap(side, layer, head, scrub=False), stem)
    chart_ui("diff", figures.build_diff_heatmap(diff, layer, head), stem)
    left, right = st.columns(2)
    with left:
        chart_ui("diff-map", figures.build_diff_map(diff), stem, numbers={
            "csv": lambda: analysis.rows_to_csv(diff.rows()), "json": lambda: analysis.to_json(diff)})
    with right:
        chart_ui("diff-ranking", figures.build_diff_ranking(diff), stem)
