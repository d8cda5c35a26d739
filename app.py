"""Headlight: look inside Transformer encoders, live in the browser.

Run with ``make run``. This file is ``main()`` and the sidebar (which model, which text, and for a decoder whether
to continue it: ``ui.generation``); the main area is ``ui.views`` (a fragment over one cached trace), whose tabs,
figures and analyses all come from the registry (``viz.registry``). Every widget that defines the view is bound to
the URL (``bind="query-params"``), so a copied link reopens exactly this view. Changing a
layer, head, view or option never re-runs the encoder.

The page draws before the model is ready: nothing imported here imports TensorFlow (the model code is imported by
the model load, in ``ui.serving.warmup``'s background thread); the default model's card and its traces of the
built-in examples come from disk meanwhile (``ui.cache.examples``), and for anything else the sidebar's text widgets
come before the wait for the model, which shows "Loading the model…" in the main area while the browser fetches the
chart's code (``ui.serving.prefetch``).
"""

from __future__ import annotations

import logging
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import streamlit as st

from analysis.steps import generation_steps
from encoder.diffusers import source_name, split_source
from encoder.errors import HeadlightError
from encoder.families import FAMILIES
from encoder.settings import settings
from encoder.sources import DEFAULT_SOURCE, MAX_NAME_CHARS, ModelCard, builtin_sources, text_encoder_choices
from encoder.trace import EncoderTrace
from ui.cache import Inputs, get_card, is_encoder_decoder, is_traced, model_pending, session_traces, start_warm_up
from ui.controls import display_ui
from ui.generation import continue_ui, has_lm_head
from ui.inputs import DEFAULT_PROMPT, DEFAULT_TARGET, DEFAULT_TEXT, EXAMPLES, token_limit
from ui.serving.nodelay import set_nodelay_once
from ui.serving.prefetch import prefetch_ui
from ui.serving.runtime import apply_secrets, keep_keras_state_between_reruns
from ui.text import plain
from ui.views import prediction_ui, views_ui

OTHER_MODEL = "folder or hub id…"
LOADING = "Loading the model…"
TEXT_BOX = '[data-testid="stSidebar"] [data-testid="stTextArea"] textarea'  # the page's first control
NEXT_TEXT = "next_text"  # session state: the text the text box gets before it is drawn (a decoder's prompt)
PROMPTED = "prompted"  # session state: the models whose prompt replaced the default text once
log = logging.getLogger("headlight.app")


# ---------------------------------------------------------------------------------------------------------------
# Sidebar: what to run.


def model_ui() -> str:
    """The model's name: a built-in one, or (when the operator allows any) a folder or hub id the visitor typed.
    A link naming something else falls back to the default (Streamlit ignores a bound value it does not offer)."""
    allowed = settings()
    choices = [*builtin_sources(), *([OTHER_MODEL] if allowed.custom_models else [])]
    choice = st.selectbox("Model", choices, key="model", bind="query-params",
                          help="minilm: pretrained all-MiniLM-L6-v2. tutorial: the classic Keras encoder trained "
                               "here for sentiment; tutorial-initial: the same before training.")
    if choice != OTHER_MODEL:
        return choice
    hub = "any hub id" if allowed.hub_any else (
        f"the hub ids {plain(', '.join(sorted(allowed.hub_ids)))}" if allowed.hub_ids else "no hub id")
    path = st.text_input("Folder or Hugging Face hub id", key="source", bind="query-params",
                         placeholder="model-folder or owner/name", max_chars=MAX_NAME_CHARS,
                         help=f"A Hugging Face model folder ({', '.join(sorted(FAMILIES))}, and their "
                              "sequence classifiers): config.json + model.safetensors + a tokenizer (tokenizer.json, "
                              "vocab.txt, vocab.json + merges.txt, or a SentencePiece model); an image generator's "
                              "folder (diffusers: model_index.json, text_encoder/, tokenizer/, ...); or a hub id "
                              "(needs a connection unless cached). This server opens folders under the allowed "
                              f"roots, and {hub}.")
    return text_encoder_ui(path.strip())


def text_encoder_ui(name: str) -> str:
    """``name``, or for an image generator's folder the source of the text encoder picked here (``name#component``,
    ``encoder.diffusers.source_name``; the URL keeps it as ``component=``): the picker lists the folder's text
    encoders (model_index.json), the first by default."""
    base, typed = split_source(name)
    encoders = text_encoder_choices(base)
    if not encoders:
        return name
    component = st.selectbox("Text encoder", encoders, index=encoders.index(typed) if typed in encoders else 0,
                             key="component", bind="query-params",
                             help="An image generator has one or more text encoders (CLIP, T5), each read by the "
                                  "image model in its own way; the views mark the layer it reads and where its "
                                  "token window cuts the prompt.")
    return source_name(base, component)


def _use_example() -> None:
    example = st.session_state.get("example")
    if example in EXAMPLES:
        st.session_state["text"] = example
        st.session_state["pair"] = EXAMPLES[example]


def text_ui() -> tuple[str, str | None]:
    if NEXT_TEXT in st.session_state:
        st.session_state["text"] = st.session_state.pop(NEXT_TEXT)
    st.selectbox("Examples", list(EXAMPLES), index=None, key="example", placeholder="Pick an example…",
                 on_change=_use_example)
    text = st.text_area("Text", DEFAULT_TEXT, key="text", bind="query-params", height=100)
    pair = st.text_area("Second sentence (optional)", "", key="pair", bind="query-params", height=70,
                        help="A sentence pair is encoded as [CLS] A [SEP] B [SEP]; B's tokens get segment 1.")
    return text, (pair if pair.strip() else None)


def target_ui(source: str) -> str | None:
    """An encoder-decoder's target text (its decoder runs teacher-forced on it), or None: the model is not one, or
    the box is empty (then the encoder alone is traced)."""
    if not is_encoder_decoder(source):
        return None
    target = st.text_area("Target (the decoder's text)", DEFAULT_TARGET, key="target", bind="query-params", height=70,
                          help="An encoder-decoder (T5, BART) reads the text with its encoder and this target with "
                               "its decoder, token by token (teacher-forced): the views then show the encoder's, the "
                               "decoder's or the cross-attention (Attention, above the tabs). Empty: the encoder "
                               "alone.")
    return target if target.strip() else None


def max_tokens_ui(max_positions: int, config) -> int:
    """The Max tokens control (drawn once the model is known: its positions, and the size of its traces in the
    cache, bound it)."""
    limit = token_limit(max_positions, config)  # the model's positions, the server's cap, the cache's bytes
    max_tokens = st.number_input("Max tokens", min_value=min(8, limit), max_value=limit, value=limit, step=8,
                                 key="max_tokens", bind="query-params",
                                 help=f"Longer inputs are truncated (and flagged). At most {limit}: the model's "
                                      "positions, the server's limit (HEADLIGHT_MAX_TOKENS), or the most tokens "
                                      "whose trace the server's cache holds (HEADLIGHT_CACHE_MB), whichever is "
                                      "lowest.")
    return min(int(max_tokens), limit)


def prompt_for_decoder(source: str, model: ModelCard) -> None:
    """A decoder's default text is a prompt: when a model with an LM head opens with the default text still in the
    box, the box gets ``DEFAULT_PROMPT`` and the page runs again (once per model and session, so a visitor may
    still type the default text back)."""
    prompted = st.session_state.setdefault(PROMPTED, set())
    if not has_lm_head(model.config) or st.session_state.get("text") != DEFAULT_TEXT or source in prompted:
        return
    if is_encoder_decoder(source):  # its text is a source to translate or summarise, not a prompt
        return
    prompted.add(source)
    st.session_state[NEXT_TEXT] = DEFAULT_PROMPT
    st.rerun()


def facts_ui(model: ModelCard, trace: EncoderTrace | None) -> None:
    config = model.config
    st.caption(plain(model.description))
    rows = {
        "layers × heads": f"{config.num_layers} × {config.num_heads}",
        "d_model / head dim": f"{config.d_model} / {config.head_dim}",
        "parameters": f"{model.parameters:,}",
        "positions": f"{config.positional}, up to {config.max_positions}",
    }
    if model.reads is not None:
        rows["image model"] = plain(model.reads.describe(config.num_layers))
    if trace is not None:
        rows["tokens"] = f"{trace.num_tokens}" + (f" (of {trace.untruncated_length})" if trace.truncated else "")
        if (generated := generation_steps(trace)) > 0:
            rows["tokens"] += f" ({generated} generated)"
        if trace.is_encoder_decoder:
            rows["decoder tokens"] = f"{len(trace.decoder_tokens)}"
    rows["encoder runs"] = f"{session_traces()} (this session)"  # never the shared model's count: it is private
    st.markdown("\n".join(f"- **{k}**: {v}" for k, v in rows.items()))


def open_model(source: str) -> tuple[str, ModelCard]:
    """``source`` and its model's card, or the default ones and a message saying why not. Never a crash: a folder may
    raise anything while it is opened; the page gets a plain sentence (naming neither the source nor a path), the
    server's log the traceback."""
    try:
        return source, get_card(source)
    except HeadlightError as error:
        reason = str(error)
    except Exception:  # a hostile or damaged folder can break any library on the way: never the page
        if source == DEFAULT_SOURCE:
            raise
        log.exception("opening a model failed")
        reason = "It could not be opened (the server's log says why)."
    st.error(f"{plain('Could not load that model. ' + reason)}\n\nShowing the default model ({DEFAULT_SOURCE}).")
    return DEFAULT_SOURCE, get_card(DEFAULT_SOURCE)


# ---------------------------------------------------------------------------------------------------------------


def main() -> None:
    keep_keras_state_between_reruns()
    apply_secrets()
    start_warm_up()  # once per process: a no-op when ``python -m ui.serving`` started it, and on every later run
    set_nodelay_once()  # once per process: each change's messages sent as written (ui.serving.nodelay)
    st.set_page_config(page_title="Headlight", page_icon="🔦", layout="wide")
    with st.sidebar:
        st.title("Headlight")
        asked = model_ui() or DEFAULT_SOURCE
        text, pair = text_ui()
    prefetching = model_pending(asked)
    if prefetching:
        with st.sidebar:
            prefetch_ui(TEXT_BOX)  # the chart's code loads in the browser while the model loads
    with st.spinner(LOADING, show_time=True), st.sidebar:  # the spinner shows after 0.5 s: never once warm
        source, model = open_model(asked)
    prompt_for_decoder(source, model)
    with st.sidebar:
        max_tokens = max_tokens_ui(model.reads.window if model.reads is not None else model.config.max_positions,
                                   model.config)
        target = target_ui(source)
        generation = continue_ui(model.config)
        facts = st.container()
    if generation is not None and pair is not None:
        st.info("The text is continued alone: the second sentence is left out.")
        pair = None
    inputs = Inputs(source, text, pair, max_tokens, generation, target=target)
    if not prefetching and not is_traced(inputs):
        with st.sidebar:
            prefetch_ui(TEXT_BOX)  # ... or while the encoder runs (a long text: tens of seconds)
    trace = None
    try:
        trace = inputs.trace
    except HeadlightError as error:
        st.warning(plain(error))
    with facts:
        facts_ui(model, trace)
    if trace is None:
        return
    if trace.truncated:
        cut = model.reads.cut_note(trace.num_tokens, trace.untruncated_length) if model.reads is not None else ""
        st.info(f"The input has {trace.untruncated_length} tokens; the model sees the first {trace.num_tokens}."
                + (f" {plain(cut[0].upper() + cut[1:])}." if cut else ""))
    prediction_ui(trace)
    views_ui(inputs, display_ui(trace))


if __name__ == "__main__":
    main()
