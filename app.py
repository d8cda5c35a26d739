"""Headlight: look inside Transformer encoders, live in the browser.

Run with ``make run``. This file is ``main()`` and the sidebar (which model, which text); the main area is
``ui.views`` (a fragment over one cached trace), whose tabs, figures and analyses all come from the registry
(``viz.registry``). Every widget that defines the view is bound to the URL (``bind="query-params"``), so a copied
link reopens exactly this view. Changing a layer, head, view or option never re-runs the encoder.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import streamlit as st

from encoder.errors import HeadlightError
from encoder.families import FAMILIES
from encoder.sources import DEFAULT_SOURCE, LoadedModel, builtin_sources
from encoder.trace import EncoderTrace
from ui.cache import get_model, get_trace
from ui.runtime import keep_keras_state_between_reruns
from ui.views import prediction_ui, views_ui

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
                         placeholder="/path/to/model-folder or owner/name",
                         help=f"A Hugging Face model folder ({', '.join(sorted(FAMILIES))}, and their "
                              "sequence classifiers): config.json + model.safetensors + a tokenizer (tokenizer.json, "
                              "vocab.txt, vocab.json + merges.txt, or a SentencePiece model); or a hub id (needs a "
                              "connection unless cached).")
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
