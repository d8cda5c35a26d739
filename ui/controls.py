"""Widgets that set what the figures show: the shared view controls (``controls_ui`` -> ``ViewSettings``) and one
widget per registry ``Option`` (``option_ui``), so a new view or analysis setting gets its widget without new code.

Every widget that defines the view is bound to the URL (``bind="query-params"``) and stores readable labels there.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import streamlit as st

from analysis import word_starts
from encoder.errors import HeadlightError
from encoder.trace import EncoderTrace
from ui import clicks
from ui.text import plain
from viz.kinds import ENCODER, CrossTrace, of_kind, query_side
from viz.layout import SEQUENTIAL_SCALES
from viz.long_inputs import FULL_TOKENS, is_long
from viz.options import ATTENTION, MERGE_WORDS, Option, ViewSettings
from viz.selection import AGGREGATES

HEAD_MODES = ("one head", *AGGREGATES)
BLOCKS = {"whole input": None, "A → A": "AA", "A → B": "AB", "B → A": "BA", "B → B": "BB"}
DIRECTIONS = {"what it looks at": "from", "who looks at it": "to"}
SEGMENTED_MAX = 5  # an int option with at most this many choices is a segmented control, else a select slider
RESETS = "reset_to_default"  # session state: widget keys to put back on their (new) default when next drawn


def reset_later(*keys: str) -> None:
    """Put the widgets ``keys`` back on their defaults when they are next drawn (from a callback, before the
    defaults are known: a new continuation's step and query). Setting the value, not forgetting it, is what makes
    the browser show it: a browser keeps a widget's value otherwise."""
    st.session_state.setdefault(RESETS, set()).update(keys)


def reset_now(key: str, default: Any) -> None:
    """Called just before drawing widget ``key``: sets it to ``default`` if ``reset_later`` asked for it."""
    pending = st.session_state.get(RESETS)
    if pending and key in pending:
        pending.discard(key)
        st.session_state[key] = default


def token_labels(trace: EncoderTrace | CrossTrace) -> list[str]:
    """The query-token choices: "index: token", the query tokens as people read them (what clicks set, too): the
    decoder's for cross-attention."""
    return [f"{i}: {t}" for i, t in enumerate(query_side(trace).readable_tokens)]


def attention_ui(trace: EncoderTrace) -> str:
    """Which attention of an encoder-decoder the views show (``viz.kinds``): a radio next to the layer and head, in
    the URL; "encoder" for any other trace (no widget). Changing it never re-runs the model: the trace holds all
    three."""
    if not trace.is_encoder_decoder:
        return ENCODER
    return st.radio(ATTENTION.label, list(trace.attention_kinds), horizontal=True, key=ATTENTION.name,
                    bind="query-params", help="encoder: the text's self-attention · decoder: the target's causal "
                                              "self-attention · cross: each target token (query) attending to the "
                                              "text's tokens (keys)")


def _layer_controls(trace: EncoderTrace | CrossTrace) -> tuple[int, bool]:
    if trace.num_layers == 1:  # a slider needs two ends
        st.caption("Layer 0 (the model's only layer)")
        layer = 0
    else:
        layer = st.slider("Layer", 0, trace.num_layers - 1, 0, key="layer", bind="query-params")
    layer_mean = st.checkbox("Mean over all layers", key="layer_mean", bind="query-params")
    return layer, layer_mean


def _head_controls(trace: EncoderTrace | CrossTrace) -> tuple[str | None, int, tuple[int, ...]]:
    every = tuple(range(trace.num_heads))
    mode = st.segmented_control("Heads", HEAD_MODES, default=HEAD_MODES[0], required=True, key="head_mode",
                                bind="query-params")
    if mode == "one head":
        if trace.num_heads == 1:
            st.caption("Head 0 (one head per layer)")
            return None, 0, every
        head = st.slider("Head", 0, trace.num_heads - 1, 0, key="head", bind="query-params")
        return None, head, every
    heads = st.multiselect("Heads to combine (none = all)", list(every), key="heads", bind="query-params")
    return mode, 0, tuple(heads) or every


def _display_controls(trace: EncoderTrace) -> dict[str, Any]:
    a, b, c = st.columns(3)
    with a:
        hide_special = st.checkbox("Hide special tokens ([CLS], [SEP])", key="hide_special", bind="query-params")
        renormalize = st.checkbox("…and renormalise rows to sum to 1", value=True, key="renormalize",
                                  bind="query-params", disabled=not hide_special)
        merge_words = option_ui(MERGE_WORDS, trace) if not trace.is_encoder_decoder else False  # one text's
    with b:
        colorscale = st.selectbox("Colour scale", SEQUENTIAL_SCALES, key="colorscale", bind="query-params",
                                  help="Viridis and Cividis are colour-blind safe.")
        log_color = st.checkbox("Log colour", key="log_color", bind="query-params")
    with c:
        threshold = st.slider("Head lines: hide weights below", 0.0, 1.0, 0.1, 0.01, key="threshold",
                              bind="query-params")
        block = None
        if trace.is_pair:
            block = BLOCKS[st.selectbox("Sentence-pair block", list(BLOCKS), key="block", bind="query-params")]
    return dict(hide_special=hide_special, renormalize=renormalize and hide_special, colorscale=colorscale,
                log_color=log_color, threshold=threshold, block=block, merge_words=merge_words,
                **(_zoom_controls(trace) if is_long(trace) else {}))


def _zoom_controls(trace: EncoderTrace) -> dict[str, Any]:
    """A long text's heatmap window: query and key range sliders (the whole text: a block image; a window of up to
    ``FULL_TOKENS`` a side: every cell) and what a block image's cell shows."""
    last = trace.num_tokens - 1
    st.caption(f"Long text ({trace.num_tokens:,} tokens): the heatmap is a block image; zoom to a window of at "
               f"most {FULL_TOKENS} tokens a side to see every cell.")
    a, b, c = st.columns(3)
    with a:
        rows = st.slider("Heatmap queries", 0, last, (0, last), key="rows")
    with b:
        cols = st.slider("Heatmap keys", 0, last, (0, last), key="cols")
    with c:
        reduce = st.segmented_control("Each block shows its", ["max", "mean"], default="max", required=True,
                                      key="reduce", bind="query-params")
    return dict(rows=None if rows == (0, last) else (rows[0], rows[1] + 1),
                cols=None if cols == (0, last) else (cols[0], cols[1] + 1), reduce=reduce)


def display_ui(trace: EncoderTrace) -> dict[str, Any]:
    """The display options (an expander), drawn outside the views fragment: they change seldom, so a layer, head or
    view change re-runs the fragment without sending them again (a change of one of them re-runs the page). For a
    long ``trace``, its heatmap's zoom too."""
    with st.expander("Display options"):
        return _display_controls(trace)


def controls_ui(trace: EncoderTrace, words: Callable[[], EncoderTrace], display: dict[str, Any],
                default_query: int | None = None) -> tuple[ViewSettings, EncoderTrace]:
    """The shared controls above the tabs; returns what they and the ``display`` options (``display_ui``'s) say,
    and the trace the views show: ``trace``, or ``words()`` (sub-words merged into words) when the display options
    ask for it, so the query choices are the shown trace's tokens. The query starts on token ``default_query`` of
    ``trace`` (default the first; its word when words are merged). An encoder-decoder's attention kind
    (``attention_ui``) decides the layers, heads and query tokens offered (the views pick the kind from the
    settings)."""
    display = _fit_zoom(dict(display), trace.num_tokens)
    shown = trace
    if display["merge_words"]:
        try:
            shown = words()
        except HeadlightError as error:
            st.warning(plain(error))
            display["merge_words"] = False
    left, middle, right = st.columns([3, 3, 3])
    with left:
        kind = attention_ui(shown)
        picked = of_kind(shown, kind)  # its layers, heads and query tokens
        layer, layer_mean = _layer_controls(picked)
    with middle:
        aggregate, head, heads = _head_controls(picked)
    with right:
        labels = token_labels(picked)
        start = 0
        if default_query is not None:
            start = default_query
            if shown is not trace:  # the word holding that token
                start = int(np.searchsorted(word_starts(trace), default_query, side="right")) - 1
        reset_now("query", labels[start])
        query_label = st.selectbox("Query token (or click a heatmap row)", labels, index=start, key="query",
                                   bind="query-params")
        direction = st.segmented_control("Token view shows", list(DIRECTIONS), default=next(iter(DIRECTIONS)),
                                         required=True, key="direction", bind="query-params")
    query = labels.index(query_label) if query_label in labels else 0
    settings = ViewSettings(layer=layer, layer_mean=layer_mean, aggregate=aggregate, head=head, heads=heads,
                            query=query, direction=DIRECTIONS[direction], selected=clicks.selected_cell(picked, query),
                            attention=kind, **display)
    return settings, shown


def _fit_zoom(display: dict[str, Any], tokens: int) -> dict[str, Any]:
    """``display`` with its zoom windows (made on the whole text) cut to ``tokens``, the trace shown: a continued
    text's step shows fewer tokens than the whole."""
    for side in ("rows", "cols"):
        window = display.get(side)
        if window is not None:
            start, stop = min(window[0], tokens - 1), min(window[1], tokens)
            display[side] = None if (start, stop) == (0, tokens) else (start, stop)
    return display


def head_names(trace: EncoderTrace) -> list[str]:
    return [f"L{layer} H{head}" for layer in range(trace.num_layers) for head in range(trace.num_heads)]


def option_ui(option: Option, trace: EncoderTrace, result: Any = None) -> Any:
    """One widget for ``option`` (its key is the option's name); returns its value, or the default when the option
    has no widget (no label)."""
    if option.label is None:
        return option.default
    bind = {"bind": "query-params"} if option.url else {}
    common = dict(key=option.name, help=option.help.split(": ", 1)[-1], **bind)
    if option.dynamic_choices is not None:
        choices = list(option.dynamic_choices(result))
        return st.select_slider(option.label, choices, value=choices[-1], **common)
    if option.kind == "flag":
        return st.checkbox(option.label, value=bool(option.default), **common)
    if option.kind == "float":
        return st.slider(option.label, float(option.low), float(option.high), float(option.default),
                         float(option.step or 0.01), **common)
    if option.kind == "int" and option.choices:
        if len(option.choices) <= SEGMENTED_MAX:
            return st.segmented_control(option.label, list(option.choices), default=option.default, required=True,
                                        **common)
        return st.select_slider(option.label, list(option.choices), value=option.default, **common)
    if option.kind == "int":
        return int(st.number_input(option.label, min_value=option.low, max_value=option.high, value=option.default,
                                   step=1, **common))
    if option.kind == "choice":
        choices = list(option.choices)
        return st.selectbox(option.label, choices, index=choices.index(option.default), **common)
    if option.kind == "heads":
        names = head_names(trace)
        chosen = st.multiselect(option.label, names, placeholder="Pick heads", **common)
        return tuple(divmod(names.index(name), trace.num_heads) for name in chosen)
    raise TypeError(f"option {option.name!r} of kind {option.kind!r} has no widget")
