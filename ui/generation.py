"""The sidebar's "Continue the text", for a model with a language-model head: how many tokens to generate (at most
``HEADLIGHT_MAX_NEW_TOKENS``, checked by ``ui.cache.get_generated`` before anything runs), greedy by default, with
temperature, top-k, top-p and a seed in an expander. Every widget is bound to the URL, so a link reopens the same
continuation (a sampled one too: the seed is part of it)."""

from __future__ import annotations

import streamlit as st

from encoder.config import EncoderConfig
from encoder.settings import settings
from ui.cache import Continuation
from ui.controls import reset_later

DEFAULT_NEW_TOKENS = 8
MAX_SEED = 2**31 - 1


def _new_generation() -> None:
    """Another continuation: the step control and the query start again on their defaults (the last step, its last
    token)."""
    reset_later("step", "query")


BOUND = {"bind": "query-params", "on_change": _new_generation}  # every generation widget: in the URL, resets


def has_lm_head(config: EncoderConfig) -> bool:
    """Whether the model predicts next tokens (a decoder with its LM head), so it can continue a text."""
    return bool(getattr(config.head, "lm_head", False))


def continue_ui(config: EncoderConfig) -> Continuation | None:
    """The "Continue the text" controls of a model with an LM head; returns what they ask for, or None (no LM head,
    or the toggle off)."""
    if not has_lm_head(config):
        return None
    limit = settings().max_new_tokens
    on = st.toggle("Continue the text", key="continue", **BOUND,
                   help="The model writes on after your text, one token at a time; every view then shows the text "
                        "and its continuation, the generated tokens marked.")
    count = st.number_input("New tokens", min_value=1, value=min(DEFAULT_NEW_TOKENS, limit), step=1,
                            key="new_tokens", **BOUND, disabled=not on,
                            help=f"At most {limit} on this server (HEADLIGHT_MAX_NEW_TOKENS).")
    with st.expander("Sampling (default: greedy)"):
        temperature = st.slider("Temperature (0: greedy)", 0.0, 2.0, 0.0, 0.05, key="temperature", **BOUND,
                                disabled=not on,
                                help="0 always takes the most probable token; above 0 samples, more freely the "
                                     "higher it is.")
        sampled = on and temperature > 0
        top_k = st.number_input("Top-k (0: every token)", min_value=0, max_value=config.embeddings.vocab_size,
                                value=0, step=1, key="top_k", **BOUND, disabled=not sampled,
                                help="Sample only among the k most probable tokens.")
        top_p = st.slider("Top-p", 0.05, 1.0, 1.0, 0.05, key="top_p", **BOUND, disabled=not sampled,
                          help="Sample only among the most probable tokens whose probabilities sum to p.")
        seed = st.number_input("Seed", min_value=0, max_value=MAX_SEED, value=0, step=1, key="seed", **BOUND,
                               disabled=not sampled,
                               help="The same seed gives the same continuation.")
    if not on:
        return None
    if not sampled:
        return Continuation(int(count))
    return Continuation(int(count), float(temperature), int(top_k), float(top_p), int(seed))
