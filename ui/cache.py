"""Everything the app computes, cached per process: the model once, one trace per input (and its words, merged),
each analysis result once per input and compute settings (one generic cache for every registry analysis).

``st.cache_resource`` (not ``cache_data``) because results are immutable NumPy (traces hold read-only arrays): one
shared copy serves every session without pickling 75 MB of attention on each rerun. Sizes are bounded.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import streamlit as st

import analysis
from encoder.sources import LoadedModel, load_source
from encoder.trace import EncoderTrace, trace_text
from tutorial.dataset import load_splits
from viz.registry import ANALYSES

MAX_TRACES = 64
MAX_ANALYSES = 32
Corpus = tuple[str, tuple[str, ...]]  # (name shown in the progress bar, sentences)


@st.cache_resource(show_spinner="Loading the model…", max_entries=4)
def get_model(source: str) -> LoadedModel:
    return load_source(source)


@st.cache_resource(show_spinner="Running the encoder…", max_entries=MAX_TRACES)
def get_trace(source: str, text: str, pair: str | None, max_tokens: int) -> EncoderTrace:
    return trace_text(get_model(source), text, pair, max_tokens)


@st.cache_resource(show_spinner=False, max_entries=MAX_TRACES)
def get_word_trace(source: str, text: str, pair: str | None, max_tokens: int) -> EncoderTrace:
    """``get_trace`` with sub-words merged into words (``analysis.merge_words``): NumPy on the cached trace, never
    the encoder again.

    Raises:
        AnalysisError: the trace does not say which word each token belongs to.
    """
    return analysis.merge_words(get_trace(source, text, pair, max_tokens))


@dataclass(frozen=True)
class Inputs:
    """What was traced (the cache key of every analysis), and the corpus chosen for corpus analyses; implements
    ``viz.registry.Inputs`` with the caches here."""

    source: str
    text: str
    pair: str | None
    max_tokens: int
    corpus: Corpus | None = None

    @property
    def key(self) -> tuple:
        return self.source, self.text, self.pair, self.max_tokens

    @property
    def trace(self) -> EncoderTrace:
        return get_trace(*self.key)

    def model(self) -> LoadedModel:
        return get_model(self.source)

    def corpus_report(self, distances: bool) -> analysis.HeadReport | None:
        """The corpus report, always with head distances: one cached run serves the report card and clusters."""
        return None if self.corpus is None else corpus_report(self.source, *self.corpus)

    def progress(self, what: str) -> analysis.Progress | None:
        return None


@st.cache_resource(show_spinner=False, max_entries=MAX_ANALYSES)
def analysis_result(name: str, inputs: Inputs, options: tuple[tuple[str, Any], ...]) -> Any:
    """The registry analysis ``name`` on ``inputs`` with its compute ``options`` (sorted (name, value) pairs)."""
    with st.spinner(ANALYSES[name].spinner):
        return ANALYSES[name].compute(inputs, dict(options))


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


@st.cache_resource(show_spinner=False)
def test_sentences() -> tuple[str, ...]:
    """The held-out test sentences shipped in data/test.tsv (the tutorial model never trained on them)."""
    return tuple(example.text for example in load_splits()["test"])
