"""The Analysis tab: rollout and flow, head report card (text or corpus), head clusters, noise stability, ablation.

Each analysis is one cached call (``ui.cache``) and one figure builder (``viz.analysis``); every figure has the
usual downloads plus its numbers as CSV and JSON.
"""

from __future__ import annotations

from dataclasses import dataclass

import streamlit as st

import analysis
from encoder.trace import EncoderTrace
from ui import cache
from ui.downloads import figure_downloads_ui
from viz import analysis_figures as figures
from viz.tokens import build_token_view

ANALYSES = ("Rollout", "Flow", "Report card", "Head clusters", "Noise stability", "Head ablation")
CORPORA = ("this text", "test sentences", "uploaded file")
NOISE_SAMPLES = (4, 8, 16)


@dataclass(frozen=True)
class Inputs:
    """What was traced: the cache key of every analysis."""

    source: str
    text: str
    pair: str | None
    max_tokens: int

    @property
    def key(self) -> tuple:
        return self.source, self.text, self.pair, self.max_tokens


def _chart(fig, key: str) -> None:
    st.plotly_chart(fig, theme=None, key=key, width="content", config={"displaylogo": False})


def _numbers(rows_or_result, json_result=None) -> dict:
    """CSV and JSON download makers for an analysis result (rows as CSV, the result as JSON)."""
    rows = rows_or_result if isinstance(rows_or_result, list) else rows_or_result.rows()
    numbers = {"csv": lambda: analysis.rows_to_csv(rows)}
    if json_result is not None:
        numbers["json"] = lambda: analysis.to_json(json_result)
    return numbers


def analysis_ui(inputs: Inputs, trace: EncoderTrace, layer: int, query: int, stem: str) -> None:
    choice = st.segmented_control("Analysis", ANALYSES, default=ANALYSES[0], required=True, key="analysis",
                                  bind="query-params")
    if choice == "Rollout":
        rollout_ui(inputs, trace, layer, query, stem)
    elif choice == "Flow":
        flow_ui(inputs, trace, stem)
    elif choice == "Report card":
        report_ui(inputs, trace, stem)
    elif choice == "Head clusters":
        clusters_ui(inputs, trace, stem)
    elif choice == "Noise stability":
        noise_ui(inputs, stem)
    else:
        ablation_ui(inputs, trace, stem)


def rollout_ui(inputs: Inputs, trace: EncoderTrace, layer: int, query: int, stem: str) -> None:
    st.caption("Attention rollout (Abnar & Zuidema, 2020): average the heads, add the identity for the skip "
               "connection, renormalise, multiply through the layers. The Layer slider picks the layer.")
    residual = st.slider("Residual weight", 0.0, 1.0, analysis.DEFAULT_RESIDUAL, 0.05, key="residual",
                         bind="query-params", help="A' = (1 - r) · mean of heads + r · I")
    result = cache.rollout(*inputs.key, residual)
    fig = figures.build_rollout_heatmap(result, trace.tokens, layer, residual)
    _chart(fig, "chart-rollout")
    figure_downloads_ui("rollout", fig, stem,
                        _numbers(analysis.matrix_rows(result[layer], trace.tokens, "rollout")))
    strip = build_token_view(trace.replace(attention=result[:, None]), layer, [0], query,
                             label=f"Rollout after layer {layer}")
    _chart(strip, "chart-rollout-tokens")
    figure_downloads_ui("rollout-tokens", strip, stem)


def flow_ui(inputs: Inputs, trace: EncoderTrace, stem: str) -> None:
    st.caption("Attention flow: the layer graph with attention weights (plus the residual) as pipe capacities; "
               "each cell is a maximum flow from an input token to a position after the last layer.")
    if trace.num_tokens > analysis.MAX_FLOW_TOKENS:
        st.info(f"Attention flow solves one max-flow problem per token pair, so it is limited to "
                f"{analysis.MAX_FLOW_TOKENS} tokens; this input has {trace.num_tokens}. Shorten the text (or set "
                f"Max tokens to {analysis.MAX_FLOW_TOKENS}), or use Rollout.")
        return
    result = cache.flow(*inputs.key, analysis.DEFAULT_RESIDUAL)
    fig = figures.build_flow_heatmap(result, trace.tokens, trace.num_layers)
    _chart(fig, "chart-flow")
    figure_downloads_ui("flow", fig, stem, _numbers(analysis.matrix_rows(result, trace.tokens, "flow")))


def _corpus(inputs: Inputs) -> tuple[str, tuple[str, ...]] | None:
    """The corpus the user chose: (name, sentences), or None for this text only."""
    scope = st.segmented_control("Over", CORPORA, default=CORPORA[0], required=True, key="corpus",
                                 bind="query-params")
    if scope == "this text":
        return None
    if scope == "test sentences":
        sentences = cache.test_sentences()
        count = st.slider("Sentences", 50, len(sentences), min(500, len(sentences)), 50, key="corpus_size",
                          help="The first N held-out test sentences (data/test.tsv)")
        return f"the first {count:,} test sentences", sentences[:count]
    upload = st.file_uploader("A text file, one sentence per line", type=["txt", "tsv", "csv"], key="corpus_file")
    if upload is None:
        st.info("Upload a UTF-8 text file with one sentence per line.")
        return None
    try:
        sentences = analysis.sentences_from_text(upload.getvalue().decode("utf-8"))
    except UnicodeDecodeError:
        st.error(f"{upload.name} is not UTF-8 text.")
        return None
    except ValueError as error:
        st.error(str(error))
        return None
    return upload.name, tuple(sentences)


def report_ui(inputs: Inputs, trace: EncoderTrace, stem: str) -> None:
    st.caption("Head report card (Clark et al., 2019): what each head attends to, averaged over query tokens "
               "(token-weighted over a corpus).")
    corpus = _corpus(inputs)
    report = cache.text_report(*inputs.key) if corpus is None else cache.corpus_report(inputs.source, *corpus)
    statistic = st.selectbox("Statistic", list(analysis.STATISTICS), format_func=analysis.STATISTICS.get,
                             key="statistic")
    fig = figures.build_report_heatmap(report, statistic)
    _chart(fig, "chart-report")
    figure_downloads_ui(f"report-{statistic}", fig, stem, _numbers(report.rows(), report))
    st.dataframe(figures.report_table(report), hide_index=True, height=320)


def clusters_ui(inputs: Inputs, trace: EncoderTrace, stem: str) -> None:
    st.caption("Heads clustered by the mean Jensen-Shannon divergence between their attention (average linkage).")
    corpus = _corpus(inputs)
    if corpus is None:
        result = cache.text_clustering(*inputs.key)
    else:
        report = cache.corpus_report(inputs.source, *corpus)
        result = analysis.cluster_heads(report.distance, report.num_layers, report.num_heads)
    count = st.slider("Clusters outlined", 1, 12, 4, key="clusters", bind="query-params")
    fig = figures.build_clustering_heatmap(result, clusters=count)
    _chart(fig, "chart-clusters")
    figure_downloads_ui("clusters", fig, stem, _numbers(result.rows(count), result))


def noise_ui(inputs: Inputs, stem: str) -> None:
    st.caption("Gaussian noise of scale sigma × the RMS of the input embeddings, several seeded samples; how far "
               "each head's attention moves (mean Jensen-Shannon divergence). Sigma 0 is the clean trace exactly.")
    samples = st.segmented_control("Samples per sigma", NOISE_SAMPLES, default=8, required=True,
                                   key="noise_samples")
    result = cache.noise(*inputs.key, int(samples))
    sigma = st.select_slider("Sigma shown in the map", [float(s) for s in result.sigmas],
                             value=float(result.sigmas[-1]), key="sigma")
    curve = figures.build_noise_curve(result)
    _chart(curve, "chart-noise-curve")
    figure_downloads_ui("noise-curve", curve, stem, _numbers(result, result))
    fig = figures.build_noise_heatmap(result, sigma)
    _chart(fig, "chart-noise")
    figure_downloads_ui("noise", fig, stem)


def ablation_ui(inputs: Inputs, trace: EncoderTrace, stem: str) -> None:
    st.caption("Head ablation (Michel et al., 2019): silence heads (their context vectors × 0 before the output "
               "projection) and compare the output with the clean model.")
    importance = cache.importance(*inputs.key)
    fig = figures.build_importance_heatmap(importance)
    _chart(fig, "chart-importance")
    figure_downloads_ui("importance", fig, stem, _numbers(importance, importance))
    names = [f"L{layer} H{head}" for layer in range(trace.num_layers) for head in range(trace.num_heads)]
    chosen = st.multiselect("Heads to silence together", names, key="ablate",
                            placeholder="Pick heads, e.g. the reddest in the map")
    if not chosen:
        return
    heads = tuple(divmod(names.index(name), trace.num_heads) for name in chosen)
    effect = cache.ablation(*inputs.key, heads)
    chart = figures.build_ablation_chart(effect)
    _chart(chart, "chart-ablation")
    figure_downloads_ui("ablation", chart, stem, _numbers(effect, effect))
