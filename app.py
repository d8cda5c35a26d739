"""Headlight: look inside Transformer encoders, live in the browser.

Run with ``make run``. The page is small ``*_ui()`` functions that draw widgets and return values; the numbers come
from ``encoder/`` (one cached forward pass per model and input) and the figures from ``viz/``. Every widget that
defines the view is bound to the URL (``bind="query-params"``), so a copied link reopens exactly this view.
Changing a layer, head, view or option reruns only the views fragment, never the encoder.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from dataclasses import dataclass

import streamlit as st
from streamlit.runtime.scriptrunner import script_runner

from encoder.errors import HeadlightError
from encoder.sources import DEFAULT_SOURCE, LoadedModel, builtin_sources
from encoder.trace import EncoderTrace, class_probabilities
from ui.analysis import Inputs, analysis_ui
from ui.cache import get_model, get_trace
from ui.compare import compare_ui
from ui.downloads import figure_downloads_ui, file_stem, trace_downloads_ui
from viz import attention as attention_views
from viz import positional, tokens
from viz.common import AGGREGATES, SEQUENTIAL_SCALES

OTHER_MODEL = "folder or hub id…"
EXAMPLES = {
    "The cat sat on the mat because it was tired.": "",
    "The animal didn't cross the street because it was too tired.": "",
    "Where is the station?": "The station is two blocks north of the museum.",
    "A wonderful, moving film with a brilliant cast.": "",
    "The keys to the cabinet are on the table.": "",
    "Attention is all you need — 注意力就是你所需要的一切 🙂!": "",
}
DEFAULT_TEXT = next(iter(EXAMPLES))
VIEWS = ("Heatmap", "Head grid", "Model view", "Token view", "Head lines", "Positional encodings", "Compare",
         "Analysis")
HEAD_MODES = ("one head", *AGGREGATES)
# Bound widgets store their option labels in the URL, so options are the readable labels themselves.
BLOCKS = {"whole input": None, "A → A": "AA", "A → B": "AB", "B → A": "BA", "B → B": "BB"}
DIRECTIONS = {"what it looks at": "from", "who looks at it": "to"}


@dataclass(frozen=True)
class ViewSettings:
    """Everything the figure builders need besides the trace (read from the view controls)."""

    layer: int
    layer_mean: bool
    head_mode: str
    head: int
    heads: tuple[int, ...]
    query: int
    direction: str
    hide_special: bool
    renormalize: bool
    colorscale: str
    log_color: bool
    threshold: float
    block: str | None

    @property
    def aggregate(self) -> str | None:
        return None if self.head_mode == "one head" else self.head_mode

    @property
    def shown_heads(self) -> tuple[int, ...]:
        """The heads on screen: the one head, or the heads being combined."""
        return (self.head,) if self.aggregate is None else self.heads


def keep_keras_state_between_reruns() -> None:
    """Stop Streamlit from calling ``keras.backend.clear_session()`` after every script run.

    Streamlit does that whenever Keras is imported, to free models a script rebuilt. Headlight builds each model
    once per process (``st.cache_resource``), so the clearing only costs: a full ``gc.collect()`` and TensorFlow's
    kernel cache on every widget change (~0.15 s, half the latency budget), and it resets Keras' global state while
    another session may be running a model. The hook is private Streamlit API, hence the guard.
    """
    if callable(getattr(script_runner, "_clean_problem_modules", None)):
        script_runner._clean_problem_modules = lambda: None


# ---------------------------------------------------------------------------------------------------------------
# Sidebar: what to run.


def model_ui() -> str:
    choices = [*builtin_sources(), OTHER_MODEL]
    choice = st.selectbox("Model", choices, key="model", bind="query-params",
                          help="minilm: pretrained all-MiniLM-L6-v2. tutorial: the classic Keras encoder trained "
                               "here for sentiment; tutorial-initial: the same before training.")
    if choice != OTHER_MODEL:
        return choice
    path = st.text_input("Folder or Hugging Face hub id", key="source", bind="query-params",
                         placeholder="/path/to/bert-folder or owner/name",
                         help="A folder with config.json + model.safetensors + tokenizer.json (or vocab.txt), "
                              "or a hub id (needs a connection unless cached).")
    return path.strip()


def _use_example() -> None:
    example = st.session_state.get("example")
    if example in EXAMPLES:
        st.session_state["text"] = example
        st.session_state["pair"] = EXAMPLES[example]


def text_ui(max_positions: int) -> tuple[str, str | None, int]:
    st.selectbox("Examples", list(EXAMPLES), index=None, key="example", placeholder="Pick an example…",
                 on_change=_use_example)
    text = st.text_area("Text", DEFAULT_TEXT, key="text", bind="query-params", height=100)
    pair = st.text_area("Second sentence (optional)", "", key="pair", bind="query-params", height=70,
                        help="A sentence pair is encoded as [CLS] A [SEP] B [SEP]; B's tokens get segment 1.")
    max_tokens = st.number_input("Max tokens", min_value=8, max_value=max_positions, value=max_positions,
                                 step=8, key="max_tokens", bind="query-params",
                                 help="Longer inputs are truncated (and flagged).")
    return text, (pair if pair.strip() else None), int(max_tokens)


def facts_ui(model: LoadedModel, trace: EncoderTrace | None) -> None:
    config = model.config
    st.caption(model.description)
    rows = {
        "layers × heads": f"{config.num_layers} × {config.num_heads}",
        "d_model / head dim": f"{config.d_model} / {config.head_dim}",
        "parameters": f"{model.num_parameters():,}",
        "positions": f"{config.positional}, up to {config.max_positions}",
    }
    if trace is not None:
        rows["tokens"] = f"{trace.num_tokens}" + (f" (of {trace.untruncated_length})" if trace.truncated else "")
    rows["encoder runs"] = str(model.encoder.calls)
    st.markdown("\n".join(f"- **{k}**: {v}" for k, v in rows.items()))


# ---------------------------------------------------------------------------------------------------------------
# Main area: controls and views (a fragment: changing them reruns only this part).


def controls_ui(trace: EncoderTrace) -> ViewSettings:
    token_labels = [f"{i}: {t}" for i, t in enumerate(trace.tokens)]
    st.session_state["_tokens"] = trace.tokens
    left, middle, right = st.columns([3, 3, 3])
    with left:
        layer = st.slider("Layer", 0, trace.num_layers - 1, 0, key="layer", bind="query-params")
        layer_mean = st.checkbox("Mean over all layers", key="layer_mean", bind="query-params")
    with middle:
        head_mode = st.segmented_control("Heads", HEAD_MODES, default=HEAD_MODES[0], required=True,
                                         key="head_mode", bind="query-params")
        if head_mode == "one head":
            head = st.slider("Head", 0, trace.num_heads - 1, 0, key="head", bind="query-params")
            heads = tuple(range(trace.num_heads))
        else:
            head = 0
            heads = tuple(st.multiselect("Heads to combine (none = all)", list(range(trace.num_heads)),
                                         key="heads", bind="query-params")) or tuple(range(trace.num_heads))
    with right:
        query_label = st.selectbox("Query token (or click a heatmap row)", token_labels, key="query",
                                   bind="query-params")
        direction = st.segmented_control("Token view shows", list(DIRECTIONS), default=next(iter(DIRECTIONS)),
                                         required=True, key="direction", bind="query-params")
    with st.expander("Display options"):
        a, b, c = st.columns(3)
        with a:
            hide_special = st.checkbox("Hide special tokens ([CLS], [SEP])", key="hide_special",
                                       bind="query-params")
            renormalize = st.checkbox("…and renormalise rows to sum to 1", value=True, key="renormalize",
                                      bind="query-params", disabled=not hide_special)
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
    query = token_labels.index(query_label) if query_label in token_labels else 0
    return ViewSettings(layer, layer_mean, head_mode, head, heads, query, DIRECTIONS[direction], hide_special,
                        renormalize and hide_special, colorscale, log_color, threshold, block)


def _on_click(chart_key: str) -> None:
    """Chart clicks move the controls: a heatmap cell, token or line picks the query token (the cell's row); a
    model-view thumbnail picks its layer and head and opens the heatmap."""
    event = st.session_state.get(chart_key) or {}
    points = event.get("selection", {}).get("points", [])
    custom = next((point["customdata"] for point in points if point.get("customdata") is not None), None)
    if custom is None:
        return
    if isinstance(custom, dict):  # typed-array customdata comes back as {"0": ..., "1": ...}
        custom = [custom[k] for k in sorted(custom, key=int)]
    if chart_key == "chart-model-view":
        st.session_state.update(layer=int(custom[0]), head=int(custom[1]), head_mode="one head", view="Heatmap",
                                layer_mean=False)
        return
    query = int(custom[0])
    st.session_state["query"] = f"{query}: {st.session_state['_tokens'][query]}"
    if chart_key == "chart-heatmap" and len(custom) > 1:
        st.session_state["_selected_cell"] = (query, int(custom[1]))


def build_figures(view: str, trace: EncoderTrace, s: ViewSettings) -> list[tuple[str, object]]:
    """(name, figure) pairs for one attention or positional view."""
    common = dict(colorscale=s.colorscale, log_color=s.log_color, hide_special=s.hide_special,
                  renormalize=s.renormalize)
    if view == "Heatmap":
        cell = st.session_state.get("_selected_cell")
        selected = cell if cell and max(cell) < trace.num_tokens and cell[0] == s.query else None
        fig = attention_views.build_attention_heatmap(
            trace, s.layer, s.head, aggregate=s.aggregate, heads=s.heads, layer_mean=s.layer_mean,
            block=s.block, selected=selected, **common)
        return [("heatmap", fig)]
    if view == "Head grid":
        return [("head-grid", attention_views.build_head_grid(trace, s.layer, layer_mean=s.layer_mean, **common))]
    if view == "Model view":
        return [("model-view", attention_views.build_model_view(
            trace, hide_special=s.hide_special, renormalize=s.renormalize,
            selected=None if s.layer_mean or s.aggregate else (s.layer, s.head)))]
    if view == "Token view":
        return [("token-view", tokens.build_token_view(
            trace, s.layer, s.shown_heads, s.query, s.direction, aggregate=s.aggregate or "mean",
            layer_mean=s.layer_mean, colorscale=s.colorscale, hide_special=s.hide_special,
            renormalize=s.renormalize))]
    if view == "Head lines":
        return [("head-lines", attention_views.build_head_lines(
            trace, s.layer, s.shown_heads, s.threshold, hide_special=s.hide_special, renormalize=s.renormalize))]
    return [
        ("positional-table", positional.build_positional_heatmap(trace)),
        ("position-similarity", positional.build_position_similarity(trace)),
        ("positional-dimensions", positional.build_positional_dimensions(trace)),
    ]


CLICKABLE = {"heatmap", "model-view", "token-view", "head-lines"}


def figures_ui(view: str, trace: EncoderTrace, settings: ViewSettings, stem: str) -> None:
    try:
        figures = build_figures(view, trace, settings)
    except ValueError as error:
        st.warning(str(error))
        return
    for name, fig in figures:
        key = f"chart-{name}"
        st.plotly_chart(fig, theme=None, key=key, width="content", config={"displaylogo": False},
                        on_select=(lambda key=key: _on_click(key)) if name in CLICKABLE else "ignore",
                        selection_mode="points")
        figure_downloads_ui(name, fig, stem)


def prediction_ui(trace: EncoderTrace) -> None:
    """A classifier's prediction for this input, next to its attention."""
    probabilities = class_probabilities(trace)
    if not probabilities:
        return
    label, best = probabilities[0]
    others = " · ".join(f"{name} {p:.1%}" for name, p in probabilities[1:])
    st.markdown(f"**Prediction: {label}** ({best:.1%})" + (f" · {others}" if others else ""))


@st.fragment
def views_ui(source: str, text: str, pair: str | None, max_tokens: int) -> None:
    trace = get_trace(source, text, pair, max_tokens)  # a cache hit: the fragment never re-runs the encoder
    settings = controls_ui(trace)
    inputs, stem = Inputs(source, text, pair, max_tokens), file_stem(source)
    tabs = st.tabs(list(VIEWS), key="view", bind="query-params")
    for view, tab in zip(VIEWS, tabs):
        if not tab.open:
            continue
        with tab:
            try:
                if view == "Compare":
                    compare_ui(inputs, trace, settings.layer, settings.head, stem)
                elif view == "Analysis":
                    analysis_ui(inputs, trace, settings.layer, settings.query, stem)
                else:
                    figures_ui(view, trace, settings, stem)
            except (HeadlightError, ValueError) as error:
                st.warning(str(error))
    trace_downloads_ui(trace, stem, settings.layer, settings.shown_heads)


# ---------------------------------------------------------------------------------------------------------------


def main() -> None:
    keep_keras_state_between_reruns()
    st.set_page_config(page_title="Headlight", page_icon="🔦", layout="wide")
    with st.sidebar:
        st.title("Headlight")
        source = model_ui() or DEFAULT_SOURCE
        try:
            model = get_model(source)
        except HeadlightError as error:
            st.error(f"Could not load **{source}**: {error}\n\nShowing the default model ({DEFAULT_SOURCE}).")
            source, model = DEFAULT_SOURCE, get_model(DEFAULT_SOURCE)
        text, pair, max_tokens = text_ui(model.config.max_positions)
        facts = st.container()
    trace = None
    try:
        trace = get_trace(source, text, pair, max_tokens)
    except HeadlightError as error:
        st.warning(str(error))
    with facts:
        facts_ui(model, trace)
    if trace is None:
        return
    if trace.truncated:
        st.info(f"The input has {trace.untruncated_length} tokens; the model sees the first {trace.num_tokens}.")
    prediction_ui(trace)
    views_ui(source, text, pair, max_tokens)


if __name__ == "__main__":
    main()
