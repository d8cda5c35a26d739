"""Everything the app computes, cached per process: the model once, one trace per input, each analysis once.

``st.cache_resource`` (not ``cache_data``) because results are immutable NumPy (traces hold read-only arrays): one
shared copy serves every session without pickling 75 MB of attention on each rerun. Sizes are bounded.
"""

from __future__ import annotations

import numpy as np
import streamlit as st

import analysis
from analysis import perturb
from encoder.sources import LoadedModel, load_source
from encoder.trace import EncoderTrace, trace_text
from tutorial.dataset import load_splits

MAX_TRACES = 64
MAX_ANALYSES = 32


@st.cache_resource(show_spinner="Loading the model…", max_entries=4)
def get_model(source: str) -> LoadedModel:
    return load_source(source)


@st.cache_resource(show_spinner="Running the encoder…", max_entries=MAX_TRACES)
def get_trace(source: str, text: str, pair: str | None, max_tokens: int) -> EncoderTrace:
    return trace_text(get_model(source), text, pair, max_tokens)


@st.cache_resource(show_spinner=False, max_entries=MAX_ANALYSES)
def rollout(source: str, text: str, pair: str | None, max_tokens: int, residual: float) -> np.ndarray:
    return analysis.attention_rollout(get_trace(source, text, pair, max_tokens).attention, residual)


@st.cache_resource(show_spinner="Solving max-flow for every token pair…", max_entries=MAX_ANALYSES)
def flow(source: str, text: str, pair: str | None, max_tokens: int, residual: float) -> np.ndarray:
    return analysis.attention_flow(get_trace(source, text, pair, max_tokens).attention, residual)


@st.cache_resource(show_spinner=False, max_entries=MAX_ANALYSES)
def text_report(source: str, text: str, pair: str | None, max_tokens: int) -> analysis.HeadReport:
    return analysis.head_report(get_trace(source, text, pair, max_tokens))


@st.cache_resource(show_spinner=False, max_entries=8)
def corpus_report(source: str, corpus_name: str, sentences: tuple[str, ...]) -> analysis.HeadReport:
    """Report card over many sentences, with a progress bar while it runs (cached afterwards)."""
    bar = st.progress(0.0, text=f"Tracing {len(sentences):,} sentences of {corpus_name}…")

    def progress(done: int, total: int | None) -> None:
        if done % 25 == 0 or done == total:
            bar.progress(done / max(total or 1, 1), text=f"{done:,} / {total:,} sentences of {corpus_name}")

    report = analysis.corpus_head_report(analysis.iter_traces(get_model(source), list(sentences)),
                                         total=len(sentences), progress=progress)
    bar.empty()
    return report


@st.cache_resource(show_spinner="Comparing every pair of heads…", max_entries=MAX_ANALYSES)
def text_clustering(source: str, text: str, pair: str | None, max_tokens: int) -> analysis.HeadClustering:
    trace = get_trace(source, text, pair, max_tokens)
    return analysis.cluster_heads(analysis.head_distances(trace.attention), trace.num_layers, trace.num_heads)


@st.cache_resource(show_spinner="Running the encoder on noisy embeddings…", max_entries=MAX_ANALYSES)
def noise(source: str, text: str, pair: str | None, max_tokens: int, samples: int) -> perturb.NoiseStability:
    return perturb.noise_stability(get_model(source), get_trace(source, text, pair, max_tokens), samples=samples)


@st.cache_resource(show_spinner="Silencing every head in turn…", max_entries=MAX_ANALYSES)
def importance(source: str, text: str, pair: str | None, max_tokens: int) -> perturb.HeadImportance:
    return perturb.head_importance(get_model(source), get_trace(source, text, pair, max_tokens))


@st.cache_resource(show_spinner=False, max_entries=MAX_ANALYSES)
def ablation(source: str, text: str, pair: str | None, max_tokens: int,
             heads: tuple[tuple[int, int], ...]) -> perturb.AblationEffect:
    return perturb.ablate_heads(get_model(source), get_trace(source, text, pair, max_tokens), heads)


@st.cache_resource(show_spinner=False)
def test_sentences() -> tuple[str, ...]:
    """The held-out test sentences shipped in data/test.tsv (the tutorial model never trained on them)."""
    return tuple(example.text for example in load_splits()["test"])
