"""How the app runs inside Streamlit: the one patch of Streamlit's behaviour Headlight needs, and the operator's
settings read from Streamlit secrets."""

from __future__ import annotations

import os

from streamlit.runtime.scriptrunner import script_runner

PATCHED_HOOK = "_clean_problem_modules"  # private Streamlit: tests/test_app.py fails loudly if it disappears


def keep_keras_state_between_reruns() -> None:
    """Stop Streamlit from calling ``keras.backend.clear_session()`` after every script run.

    Streamlit does that whenever Keras is imported, to free models a script rebuilt. Headlight builds each model
    once per process (``st.cache_resource``), so the clearing only costs: a full ``gc.collect()`` and TensorFlow's
    kernel cache on every widget change (~0.15 s, half the latency budget), and it resets Keras' global state while
    another session may be running a model. Streamlit 1.67 has no setting for this (``runner.postScriptGC`` covers
    only the collector), so the private hook is replaced, behind a guard: if it is gone, only speed suffers, and a
    test says so.
    """
    if callable(getattr(script_runner, PATCHED_HOOK, None)):
        setattr(script_runner, PATCHED_HOOK, lambda: None)


def apply_secrets() -> None:
    """Copy ``HEADLIGHT_*`` settings from Streamlit secrets (``.streamlit/secrets.toml``) into the environment,
    where ``encoder.settings`` reads them; an environment variable that is already set wins. No secrets file is
    the usual case and changes nothing."""
    import streamlit as st

    try:
        secrets = {key: st.secrets[key] for key in st.secrets if key.startswith("HEADLIGHT_")}
    except (FileNotFoundError, KeyError, st.errors.StreamlitSecretNotFoundError):
        return
    for key, value in secrets.items():
        os.environ.setdefault(key, str(value))
