"""The Analysis tab: the registry's analyses (``viz.registry.ANALYSES``) grouped by the question they answer, each
drawn the same way: its one-line reading guide and its section of docs/analyses.md, a corpus picker where it can run
over many sentences, one widget per option, the cached result, and its figures with downloads (the first with its
numbers as CSV and JSON).

Both choices live in the URL: ``question`` (left out for the first question) and ``analysis`` (left out for the
question's first analysis), so a copied link reopens the same analysis; a link naming only the analysis opens its
question.
"""

from __future__ import annotations

import streamlit as st

import analysis
from docs.pages import section
from encoder.errors import HeadlightError
from encoder.trace import EncoderTrace
from ui import cache
from ui.charts import chart_ui
from ui.controls import option_ui
from ui.text import plain
from viz.analysis_figures import beside_figure
from viz.options import ViewSettings
from viz.registry import (
    ANALYSES,
    GROUPS,
    Analysis,
    analysis_trace,
    analysis_unavailable,
    compute_options,
    group_analyses,
)

CORPORA = ("this text", "test sentences", "uploaded file")


def _corpus_ui(most: int | None = None) -> cache.Corpus | None:
    """The corpus the user chose: (name, sentences), or None for this text only; at most ``most`` sentences."""
    scope = st.segmented_control("Over", CORPORA, default=CORPORA[0], required=True, key="corpus",
                                 bind="query-params")
    if scope == "this text":
        return None
    if scope == "test sentences":
        sentences = cache.test_sentences()
        top = min(len(sentences), most or len(sentences))
        key = "corpus_size" if most is None else f"corpus_size_{most}"  # other bounds, another widget
        count = st.slider("Sentences", min(50, top), top, min(500, top), min(50, top), key=key,
                          help="The first N held-out test sentences (data/test.tsv)")
        return f"the first {count:,} test sentences", sentences[:count]
    upload = st.file_uploader("A text file, one sentence per line", type=["txt", "tsv", "csv"], key="corpus_file")
    if upload is None:
        st.info("Upload a UTF-8 text file with one sentence per line.")
        return None
    try:
        sentences = analysis.sentences_from_text(upload.getvalue().decode("utf-8"))
    except UnicodeDecodeError:
        st.error("The uploaded file is not UTF-8 text.")
        return None
    except HeadlightError as error:
        st.error(plain(error))
        return None
    if sentences.dropped:
        st.info(f"The file has {len(sentences) + sentences.dropped:,} sentences; the first {len(sentences):,} are "
                "used (the most one upload may hold).")
    if most is not None and len(sentences) > most:
        st.info(f"This analysis scores at most {most:,} sentences at a time here; the first {most:,} of the file "
                f"are used (the command line takes more).")
        sentences = sentences[:most]
    return plain(upload.name), tuple(sentences)  # shown in the progress bar's markdown


def _open_linked_question() -> None:
    """Before the question picker first appears: a URL naming an analysis but no question (the question's value is
    left out when it is the first) opens that analysis' question, so the analysis is among the choices."""
    if "question" in st.session_state or "question" in st.query_params:
        return
    linked = next((entry for entry in ANALYSES.values() if entry.label == st.query_params.get("analysis")), None)
    if linked is not None and linked.group != next(iter(GROUPS)):
        st.session_state["question"] = GROUPS[linked.group].title


def picker_ui() -> Analysis:
    """The question, with what it answers, then the analysis among the question's."""
    grouped = {group.title: (group, entries) for group, entries in group_analyses().items()}
    _open_linked_question()
    title = st.segmented_control("Question", list(grouped), default=next(iter(grouped)), required=True,
                                 key="question", bind="query-params")
    group, entries = grouped[title]
    st.caption(f"Answers: {group.answers}.")
    labels = {entry.label: entry for entry in entries}
    choice = st.segmented_control("Analysis", list(labels), default=entries[0].label, required=True,
                                  key="analysis", bind="query-params")
    return labels[choice]


def analysis_ui(inputs: cache.Inputs, trace: EncoderTrace, settings: ViewSettings, stem: str) -> None:
    """The picked analysis of ``trace`` (an encoder-decoder's: of ``inputs.attention``, the decoder's side for
    "decoder"; none runs on cross-attention, and the message says why)."""
    entry = picker_ui()
    st.caption(entry.reading)
    more = section("analyses.md", entry.name, images=False)
    if more:
        with st.expander(f"More on {entry.label}: what it computes, how to read it, its paper"):
            st.markdown(more)
    refused = analysis_unavailable(entry, trace, inputs.attention)
    if refused:
        st.info(plain(refused))
        return
    trace = analysis_trace(trace, inputs.attention)
    if entry.corpus:
        inputs = cache.Inputs(*inputs.key, corpus=_corpus_ui(entry.corpus_max))
    shared = {"layer": settings.layer} if entry.layer else {}
    chosen = {option.name: option_ui(option, trace) for option in entry.options if option.stage == "compute"}
    missing = [option.label for option in entry.options if option.required and not chosen.get(option.name)]
    if missing:
        st.info(f"Choose {', '.join(missing).lower()} to run it.")
        return
    key = tuple(sorted(compute_options(entry, {**shared, **chosen}).items()))
    result = cache.analysis_result(entry.name, inputs, key)
    options = {**shared, **chosen, **({"query": settings.query} if entry.uses_query else {})}
    options |= {option.name: option_ui(option, trace, result) for option in entry.options if option.stage == "figure"}
    _figures_ui(entry, result, trace, options, stem)


def _figures_ui(entry: Analysis, result, trace: EncoderTrace, options: dict, stem: str) -> None:
    """The analysis' figures, the first with its numbers (and raw attention beside it where the entry asks for
    it); then its table, if it has one."""
    for index, (name, fig) in enumerate(entry.figures(result, trace, options)):
        numbers = None
        if index == 0:
            rows, numbers_result = entry.rows(result, trace, options)
            numbers = {"csv": lambda rows=rows: analysis.rows_to_csv(rows),
                       "json": lambda value=numbers_result: analysis.to_json(value)}
            beside = beside_figure(entry.beside, trace, options)
            if beside is not None:
                method, attention = st.columns(2)
                with method:
                    chart_ui(name, fig, stem, trace.readable_tokens, numbers)
                with attention:
                    chart_ui(*beside, stem, trace.readable_tokens)
                continue
        chart_ui(name, fig, stem, trace.readable_tokens, numbers)
    if entry.table is not None:
        st.dataframe(entry.table(result), hide_index=True, height=320)
