"""The faithfulness scoreboard (``analysis.faithfulness``): Spearman rho and AOPC per method as bars, for one text
or (mean rho with its 95% interval, and how often each method is best) over a corpus."""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from analysis.faithfulness import CorpusFaithfulness, Faithfulness
from viz.analysis_figures import Figures, Options, _reading_guide
from viz.layout import base_layout

TITLE = "Faithfulness on this text: each method vs leave-one-out"
COLORS = ("#1f77b4", "#d62728")  # Spearman, AOPC
SUBPLOT_TITLE = 24  # pixels above the panels for their titles, below the reading guide


def build_faithfulness_chart(result: Faithfulness) -> go.Figure:
    """Two bar panels, one bar per method: Spearman rho against the leave-one-out effects, and AOPC."""
    methods = list(result.methods)
    if np.shape(result.spearman) != (len(methods),) or np.shape(result.aopc) != (len(methods),):
        raise ValueError(f"{len(methods)} methods need {len(methods)} Spearman and AOPC values, got shapes "
                         f"{np.shape(result.spearman)} and {np.shape(result.aopc)}")
    fig = make_subplots(rows=1, cols=2, subplot_titles=("Spearman ρ vs leave-one-out",
                                                        f"AOPC (top 1..{result.deletions} removed)"))
    fig.update_layout(base_layout(TITLE, 900, 480), showlegend=False, margin=dict(l=60, r=110, b=130))  # room for
    # the method names, drawn slanted under the bars
    _reading_guide(fig, f"Output change: {result.output}. ρ = 1: the method ranks the tokens exactly as removing "
                        f"each one alone changes the output; AOPC: mean change with the method's top tokens removed "
                        f"(higher is more faithful).")
    fig.update_layout(margin=dict(t=fig.layout.margin.t + SUBPLOT_TITLE))
    for col, (name, values) in enumerate((("Spearman ρ", result.spearman), ("AOPC", result.aopc)), start=1):
        fig.add_trace(go.Bar(x=methods, y=values, name=name, marker=dict(color=COLORS[col - 1]),
                             text=[f"{v:.3f}" for v in values], textposition="auto",
                             hovertemplate=f"%{{x}}: {name} %{{y:.4f}}<extra></extra>"), row=1, col=col)
    fig.update_yaxes(range=[-1, 1], title_text="Spearman ρ", row=1, col=1)
    fig.update_yaxes(title_text=result.output, row=1, col=2)
    return fig


def build_faithfulness_corpus_chart(result: CorpusFaithfulness) -> go.Figure:
    """Two horizontal bar panels over a corpus, the best mean rho on top: mean Spearman rho (95% interval, 1.96
    standard errors) and the share of sentences on which each method has the best rho."""
    rows = result.rows()[::-1]  # best mean rho first; Plotly draws the first category at the bottom
    if not rows:
        raise ValueError("a corpus scoreboard needs at least one method")
    methods = [row["method"] for row in rows]
    means = np.array([row["mean_spearman"] for row in rows])
    half = 1.96 * np.nan_to_num(np.array([row["sem"] for row in rows]))
    best = np.array([row["best_share"] for row in rows])
    fig = make_subplots(rows=1, cols=2, shared_yaxes=True, horizontal_spacing=0.06,
                        subplot_titles=("Mean Spearman ρ vs leave-one-out (95% interval)",
                                        "Share of sentences where it is best"))
    name = result.corpus or "the corpus"
    fig.update_layout(base_layout(f"Faithfulness over {len(result.texts):,} sentences: which explanation the "
                                  "model supports", 900, 150 + 34 * len(methods)), showlegend=False,
                      margin=dict(l=150, r=40, b=50))
    notes = [f"{result.skipped:,} too short to rank were skipped" if result.skipped else "",
             f"{result.truncated:,} scored on their first tokens only" if result.truncated else ""]
    skipped = f" ({'; '.join(note for note in notes if note)})" if any(notes) else ""
    _reading_guide(fig, f"{name.capitalize()}{skipped}. Output change: {result.output}. Each sentence: ρ between "
                        "the method's token importance and the change when each token is removed alone; bars: the "
                        "mean over sentences, best on top.")
    fig.update_layout(margin=dict(t=fig.layout.margin.t + SUBPLOT_TITLE))
    fig.add_trace(go.Bar(y=methods, x=means, orientation="h", marker=dict(color=COLORS[0]), name="mean ρ",
                         error_x=dict(type="data", array=half, visible=True, color="#444"),
                         text=[f"{v:.2f}" for v in means], textposition="outside", cliponaxis=False,
                         hovertemplate="%{y}: mean ρ %{x:.4f} ± %{error_x.array:.4f}<extra></extra>"), row=1, col=1)
    fig.add_trace(go.Bar(y=methods, x=best, orientation="h", marker=dict(color=COLORS[1]), name="best share",
                         text=[f"{v:.0%}" for v in best], textposition="outside", cliponaxis=False,
                         hovertemplate="%{y}: best on %{x:.1%} of sentences<extra></extra>"), row=1, col=2)
    fig.update_xaxes(range=[-1, 1.15], title_text="mean Spearman ρ", row=1, col=1)
    fig.update_xaxes(range=[0, 1.15], tickformat=".0%", title_text="sentences", row=1, col=2)
    return fig


def faithfulness_figures(result: Faithfulness | CorpusFaithfulness, trace, options: Options) -> Figures:
    """The scoreboard of one text, or over a corpus."""
    if isinstance(result, CorpusFaithfulness):
        return [("faithfulness-corpus", build_faithfulness_corpus_chart(result))]
    return [("faithfulness", build_faithfulness_chart(result))]
