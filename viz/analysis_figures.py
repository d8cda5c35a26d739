"""Figure builders for the analyses of ``analysis`` and ``analysis.perturb``: pure functions returning
``go.Figure`` (no Streamlit, no TensorFlow). Titles say what is shown; subtitles say how to read it.

The registry's analyses name their figures here and in the per-topic modules (``viz.gradients``,
``viz.attribution``, ...): ``*_figures(result, trace, options) -> [(name, figure), ...]``, the first the one the
CLI writes; ``style(options)`` passes the chosen colour scale on.

Per-head maps (report card, divergences, noise, importance) are layers x heads heatmaps with layer 0 at the top.
Clicks: as in ``viz.attention``, a clickable trace names its ``customdata`` with ``meta=viz.clicks.click_meta(...)``
(read back with ``click_spec``). Each per-head map has an invisible scatter trace ``"cells"`` over the cell centres,
``click_meta("layer", "head", invisible=True)``, so a click selects that head in the app; image exports drop it.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import plotly.graph_objects as go

from analysis import (
    DEFAULT_RESIDUAL,
    STATISTICS,
    AttentionDiff,
    HeadClustering,
    HeadReport,
    PooledDiff,
    attention_rollout,
)
from analysis.flow import RolloutRows, long_rollout_tokens
from analysis.heads import DEFAULT_CLUSTERS, DEFAULT_STATISTIC
from analysis.inputs import chosen_layer
from analysis.pooled import pooled_row
from analysis.report import SINK_FROM, SINK_THRESHOLD
from encoder.errors import ViewError
from viz.attention import build_attention_heatmap
from viz.clicks import click_meta, layer_head_points
from viz.layout import (
    COLORBAR_ROOM,
    DEFAULT_DIVERGING,
    DEFAULT_SCALE,
    display_token,
    heatmap_cell,
    label_margin,
    new_figure,
    token_heatmap_axes,
)
from viz.selection import describe_heads
from viz.tokens import build_token_view
from viz.validation import check_colorscale, check_index

if TYPE_CHECKING:
    from analysis.perturb import AblationEffect, HeadImportance, NoiseStability
    from encoder.trace import EncoderTrace

Figures = list[tuple[str, go.Figure]]  # (file/chart name, figure); the first is the one the CLI writes
Options = Mapping[str, Any]

MIN_WIDTH = 560  # pixels, of a token heatmap or a layers x heads map
TOKEN_HEATMAP_TOP = 100  # a token heatmap's height beyond the plot and its bottom margin
HEAD_CELL = 44  # pixels per cell of a layers x heads map of up to HEAD_MAP_WIDE heads
HEAD_MAP_WIDE = 12
HEAD_MAP_WIDTH, MIN_HEAD_CELL = 540, 14  # wider maps share this width, each cell at least MIN_HEAD_CELL
HEAD_MAP_SIDES, HEAD_MAP_TOP_BOTTOM = 190, 170  # a layers x heads map's size beyond its cells
MIN_POOLED_HEIGHT = 420  # pixels, of the pooled-token minimal-pair map (few layers)
MAX_WRITTEN_CELLS = 200  # layers x heads maps with more cells do not write the values in them
_LINE_COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
                 "#bcbd22", "#17becf", "#393b79", "#637939")


def _reading_guide(fig: go.Figure, text: str) -> None:
    """Set the subtitle (how to read the figure), wrapped to the figure's width, and make room for it on top."""
    limit = max(40, int(((fig.layout.width or 700) - 30) / 6.6))  # ~6.6 px per character of the 12 px font
    lines, line = [], ""
    for word in text.split():
        if line and len(line) + 1 + len(word) > limit:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}" if line else word
    lines.append(line)
    fig.update_layout(title=dict(subtitle=dict(text="<br>".join(lines))), margin=dict(t=72 + 16 * len(lines)))
    if fig.layout.height:
        fig.update_layout(height=fig.layout.height + 16 * (len(lines) - 1))


# ---------------------------------------------------------------------------------------------------------------
# Token x token heatmaps: rollout, flow, diff


def token_heatmap(
    values: np.ndarray,
    row_tokens: Sequence[str],
    col_tokens: Sequence[str],
    title: str,
    subtitle: str,
    colorscale: str,
    zmin: float,
    zmax: float,
    value_name: str,
    x_title: str = "input token (key side)",
    y_title: str = "position (query side)",
) -> go.Figure:
    t_rows, t_cols = values.shape
    cell = heatmap_cell(t_rows, t_cols)
    x_axis, y_axis, left, bottom = token_heatmap_axes(row_tokens, range(t_rows), col_tokens, range(t_cols), cell)
    fig = new_figure(title, int(max(cell * t_cols + left + COLORBAR_ROOM, MIN_WIDTH)),
                     int(cell * t_rows + bottom + TOKEN_HEATMAP_TOP))
    fig.update_layout(
        margin=dict(l=left, r=COLORBAR_ROOM, b=bottom),
        xaxis=dict(type="category", title=dict(text=x_title), tickangle=-90, **x_axis, showgrid=False),
        yaxis=dict(type="category", title=dict(text=y_title), autorange="reversed", **y_axis, showgrid=False),
    )
    _reading_guide(fig, subtitle)
    fig.add_trace(go.Heatmap(
        z=values.astype(np.float32),
        x=np.arange(t_cols, dtype=np.int32),
        y=np.arange(t_rows, dtype=np.int32),
        colorscale=colorscale,
        zmin=zmin,
        zmax=zmax,
        colorbar=dict(thickness=14, title=dict(text=value_name)),
        name=value_name,
        hovertemplate="position %{y} ← token %{x}: %{z:.4f}<extra></extra>",
    ))
    return fig


def build_rollout_heatmap(
    rollout: np.ndarray,
    tokens: Sequence[str],
    layer: int = -1,
    residual: float = 0.5,
    colorscale: str = DEFAULT_SCALE,
) -> go.Figure:
    """Attention rollout (``analysis.attention_rollout``, (L, T, T)) after one layer, tokens on both axes.

    Row ``i`` shows how much of each input token (columns) has been mixed into position ``i`` after ``layer``
    (default the last); each row sums to 1.
    """
    check_colorscale(colorscale)
    rollout = np.asarray(rollout)
    if rollout.ndim != 3 or rollout.shape[1:] != (len(tokens), len(tokens)):
        raise ValueError(f"rollout must be (layers, T, T) for {len(tokens)} tokens, got shape {rollout.shape}")
    layer = check_index(layer % rollout.shape[0] if layer < 0 else layer, rollout.shape[0], "layer", "rollout")
    return token_heatmap(
        rollout[layer], tokens, tokens,
        f"Attention rollout after layer {layer} (residual weight {residual:g})",
        "Row i: the share of each input token (column) in position i, attention multiplied through layers "
        f"0-{layer} with the skip connection; rows sum to 1.",
        colorscale, 0.0, float(rollout[layer].max()), "share",
    )


def build_rollout_rows(values: np.ndarray, trace: EncoderTrace, rows: Sequence[int], layer: int,
                       residual: float = 0.5, colorscale: str = DEFAULT_SCALE) -> go.Figure:
    """The rollout rows of a long trace (``analysis.flow.RolloutRows``): one strip per row of ``rows`` (n,), its
    (n, T) ``values`` shaded over the T input tokens (x: token index, hover: the token), said to be rows of the
    T x T rollout."""
    check_colorscale(colorscale)
    tokens = trace.readable_tokens
    labels = [f"{display_token(tokens[row])} ({row})" for row in rows]
    hover = np.array([[display_token(token) for token in tokens]] * len(rows), dtype=object)
    fig = go.Figure(go.Heatmap(z=np.asarray(values, np.float32), x=np.arange(len(tokens)), y=labels, text=hover,
                               colorscale=colorscale, zmin=0.0, colorbar=dict(title="share"),
                               hovertemplate="%{y} ← %{text} (%{x}): %{z:.5f}<extra></extra>"))
    fig.update_layout(
        title=dict(text=f"Attention rollout after layer {layer} (residual weight {residual:g}): rows of "
                        f"{', '.join(labels)}",
                   subtitle=dict(text=f"a long text ({len(tokens):,} tokens): the rollout rows of the query and pooled "
                                      "tokens, not the token × token matrix; each row sums to 1")),
        xaxis_title="input token", height=200 + 40 * len(rows), margin=dict(t=90))
    return fig


def build_flow_heatmap(
    flow: np.ndarray, tokens: Sequence[str], num_layers: int, residual: float = 0.5, colorscale: str = DEFAULT_SCALE
) -> go.Figure:
    """Attention flow (``analysis.attention_flow``, (T, T)) with tokens on both axes.

    Cell ``(i, j)``: the maximum flow from input token ``j`` to position ``i`` after ``num_layers`` layers, with
    attention weights (plus the residual) as capacities; at most 1.
    """
    check_colorscale(colorscale)
    flow = np.asarray(flow)
    if flow.shape != (len(tokens), len(tokens)):
        raise ValueError(f"flow must be (T, T) for {len(tokens)} tokens, got shape {flow.shape}")
    return token_heatmap(
        flow, tokens, tokens,
        f"Attention flow through {num_layers} layers (residual weight {residual:g})",
        "Cell (i, j): the most that input token j can pass to position i when every attention weight is a pipe "
        "of that capacity (max flow); unlike rollout, one strong path is enough.",
        colorscale, 0.0, max(float(flow.max()), 1e-12), "max flow",
    )


def build_diff_heatmap(diff: AttentionDiff, layer: int, head: int, colorscale: str = DEFAULT_DIVERGING) -> go.Figure:
    """One head's attention difference (second minus first) as a heatmap centred on 0.

    Red: the second input/model attends more; blue: less. Axis labels show both tokens where they differ
    ("cat/dog").
    """
    check_colorscale(colorscale)
    layers, heads = diff.divergence.shape
    layer = check_index(layer, layers, "layer", "model")
    head = check_index(head, heads, "head", "model")
    labels = [a if a == b else f"{a}/{b}" for a, b in zip(diff.tokens_a, diff.tokens_b)]
    values = diff.difference[layer, head]
    bound = max(float(np.abs(values).max()), 1e-6)
    return token_heatmap(
        values, labels, labels,
        f"Layer {layer} head {head}: {diff.label_b} minus {diff.label_a}",
        f"Red: {display_token(diff.label_b)} attends more, blue: less. Mean JS divergence of this head "
        f"{diff.divergence[layer, head]:.4f} nats.",
        colorscale, -bound, bound, "difference", "key", "query",
    )


def build_pooled_diff(diff: PooledDiff, colorscale: str = DEFAULT_DIVERGING) -> go.Figure:
    """A minimal pair from the pooled token (``analysis.PooledDiff``): layers down, the aligned tokens across, each
    cell the second text's rollout share minus the first's; the title gives the cosines of the two outputs, each
    layer's label its total change."""
    check_colorscale(colorscale)
    change = diff.change
    token = diff.pooled_a.token
    cosines = " · ".join(f"cos({name}) {value:.4f}" for name, value in diff.cosines.items())
    layers = [f"L{layer} Δ {total:.3f}" for layer, total in enumerate(diff.layer_change)]
    bound = max(float(np.abs(change).max()), 1e-6)
    fig = token_heatmap(
        change, layers, diff.columns,
        f"Row of {display_token(token)}, {display_token(diff.label_b)} minus {display_token(diff.label_a)}"
        + (f": {cosines}" if cosines else ""),
        f"Row of {display_token(token)}: what {diff.pooled_a.reads} reads, by {diff.method} after each layer. "
        f"Red: the second text's {display_token(token)} draws more on this token, blue: less; a changed stretch "
        "(first → second) is one column. Δ: the row's total change (half the L1 distance of the two rows).",
        colorscale, -bound, bound, "change", "token (changed stretches: first → second)", "layer",
    )
    fig.update_layout(height=max(fig.layout.height, MIN_POOLED_HEIGHT))  # a 2-layer map keeps a readable colour bar
    return fig


# ---------------------------------------------------------------------------------------------------------------
# Layers x heads maps


def build_head_map(
    values: np.ndarray,
    title: str,
    subtitle: str,
    value_name: str,
    colorscale: str = DEFAULT_SCALE,
    zmin: float | None = None,
    zmax: float | None = None,
    decimals: int = 3,
) -> go.Figure:
    """Any (L, H) per-head number as a layers x heads heatmap (layer 0 on top), values written in the cells, and
    the click layer ``"cells"`` with ``customdata`` [layer, head]."""
    check_colorscale(colorscale)
    values = np.asarray(values, dtype=np.float64)
    if values.ndim != 2:
        raise ValueError(f"values must be (layers, heads), got shape {values.shape}")
    layers, heads = values.shape
    cell = HEAD_CELL if heads <= HEAD_MAP_WIDE else max(MIN_HEAD_CELL, HEAD_MAP_WIDTH // heads)
    fig = _head_map_figure(title, layers, heads, cell)
    _reading_guide(fig, subtitle)
    fig.add_trace(_head_values(values, value_name, colorscale, zmin, zmax, decimals))
    fig.add_trace(_head_cells(values, value_name, decimals, cell))
    return fig


def _head_map_figure(title: str, layers: int, heads: int, cell: int) -> go.Figure:
    """A layers x heads map's figure without traces: ``cell`` pixels a cell, every layer and head numbered."""
    fig = new_figure(title, max(cell * heads + HEAD_MAP_SIDES, MIN_WIDTH), cell * layers + HEAD_MAP_TOP_BOTTOM)
    fig.update_layout(
        margin=dict(l=70, r=COLORBAR_ROOM, b=60),
        xaxis=dict(title=dict(text="head"), tickmode="array", tickvals=list(range(heads)), side="bottom",
                   showgrid=False, zeroline=False),
        yaxis=dict(title=dict(text="layer"), tickmode="array", tickvals=list(range(layers)), autorange="reversed",
                   showgrid=False, zeroline=False),
    )
    return fig


def _head_values(values: np.ndarray, value_name: str, colorscale: str, zmin: float | None, zmax: float | None,
                 decimals: int) -> go.Heatmap:
    """The (L, H) ``values`` as a heatmap, written into the cells when they are few; the colours span the finite
    values unless ``zmin`` / ``zmax`` are given."""
    layers, heads = values.shape
    finite = values[np.isfinite(values)]
    return go.Heatmap(
        z=values.astype(np.float32),
        x=np.arange(heads, dtype=np.int32),
        y=np.arange(layers, dtype=np.int32),
        colorscale=colorscale,
        zmin=zmin if zmin is not None else float(finite.min()) if finite.size else 0.0,
        zmax=zmax if zmax is not None else float(finite.max()) if finite.size else 1.0,
        colorbar=dict(thickness=14, title=dict(text=value_name)),
        texttemplate=f"%{{z:.{min(decimals, 2)}f}}" if values.size <= MAX_WRITTEN_CELLS else None,
        textfont=dict(size=9),
        name=value_name,
        hoverinfo="skip",
    )


def _head_cells(values: np.ndarray, value_name: str, decimals: int, cell: int) -> go.Scatter:
    """Invisible markers over the cells of a layers x heads map, ``customdata`` [layer, head]; they carry the
    hover (the value to ``decimals`` places)."""
    layer, head, customdata = layer_head_points(*values.shape)
    return go.Scatter(
        x=head.astype(np.int32),
        y=layer.astype(np.int32),
        customdata=customdata,
        text=[f"{v:.{decimals}f}" for v in values.ravel()],
        mode="markers",
        marker=dict(symbol="square", size=cell - 2, opacity=0),
        hovertemplate=f"layer %{{y}}, head %{{x}}: {value_name} %{{text}}<extra></extra>",
        name="cells",
        meta=click_meta("layer", "head", invisible=True),
        showlegend=False,
    )


_READING = {
    "entropy": "Low: the head looks at a few tokens; high: it spreads its attention (at most ln T).",
    "cls": "Share of attention on the first special token ([CLS], or a decoder's begin-of-text), averaged over "
           "query tokens.",
    "first_token": "Share of attention on the first token (this model has no [CLS]), averaged over query tokens; "
                   "causal models often park attention there.",
    "sep": "Share of attention on [SEP]; heads often park attention there when they have nothing to do.",
    "punctuation": "Share of attention on punctuation tokens.",
    "self": "Share of attention a token gives itself.",
    "previous": "Share of attention on the token just before (a positional head scores near 1).",
    "next": "Share of attention on the token just after (a positional head scores near 1).",
    "distance": "Mean |i - j| weighted by attention, in tokens: small for local heads, large for broad ones.",
    "sink": f"Share of attention on the first token from queries {SINK_FROM} onwards; at least {SINK_THRESHOLD:g} "
            "marks an attention sink, a head that parks its attention there.",
}
MAX_SINKS_NAMED = 12  # the report card's subtitle names at most this many attention-sink heads


def build_report_heatmap(report: HeadReport, statistic: str, colorscale: str = DEFAULT_SCALE) -> go.Figure:
    """One report-card statistic (``analysis.STATISTICS``) for every layer x head."""
    if statistic not in STATISTICS:
        raise ViewError(f"unknown statistic {statistic!r}; choose from {', '.join(STATISTICS)}")
    scope = "this text" if report.num_texts == 1 else f"{report.num_texts:,} texts ({report.num_queries:,} tokens)"
    shares = statistic not in ("entropy", "distance")
    fig = build_head_map(
        report[statistic],
        f"Head report card: {report.describe(statistic)}, {scope}",
        " ".join([_READING[report.column(statistic)], sinks_sentence(report), kv_sentence(report)]).strip(),
        report.column(statistic),
        colorscale,
        zmin=0.0,
        zmax=1.0 if shares else None,
    )
    if report.grouped:  # lines between the groups of query heads that share a key/value head
        size = report.num_heads // report.key_value_heads
        for group in range(1, report.key_value_heads):
            fig.add_shape(type="line", x0=group * size - 0.5, x1=group * size - 0.5, y0=-0.5,
                          y1=report.num_layers - 0.5, line=dict(color="#555555", width=2))
        fig.update_xaxes(title=dict(text="head (lines: key/value head groups)"))
    return fig


def sinks_sentence(report: HeadReport) -> str:
    """The attention-sink heads named (at most ``MAX_SINKS_NAMED``, strongest first), or that there are none."""
    sinks = report.sinks()
    rule = f"(≥ {SINK_THRESHOLD:g} of attention from queries {SINK_FROM}+ on the first token)"
    if not sinks:
        return f"Attention sinks {rule}: none."
    named = ", ".join(f"L{layer} H{head} ({share:.2f})" for layer, head, share in sinks[:MAX_SINKS_NAMED])
    more = f" and {len(sinks) - MAX_SINKS_NAMED} more" if len(sinks) > MAX_SINKS_NAMED else ""
    return f"Attention sinks {rule}: {named}{more}."


def kv_sentence(report: HeadReport) -> str:
    """Which key/value head each query head shares (grouped-query attention), or "" when every head has its own."""
    if not report.grouped:
        return ""
    size = report.num_heads // report.key_value_heads
    groups = [f"{describe_heads(list(range(kv * size, (kv + 1) * size)))} share kv head {kv}"
              for kv in range(report.key_value_heads)]
    return f"Grouped-query attention: query {'; '.join(groups)}."


def report_table(report: HeadReport, decimals: int = 4) -> list[dict]:
    """The report card as rows for a sortable table (``st.dataframe``): layer, head, every statistic rounded."""
    return [{k: round(v, decimals) if isinstance(v, float) else v for k, v in row.items()} for row in report.rows()]


def build_clustering_heatmap(clustering: HeadClustering, colorscale: str = "Viridis_r", clusters: int = 4) -> go.Figure:
    """The head distance matrix with heads in dendrogram order; outlines mark ``clusters`` groups.

    Dark squares on the diagonal are groups of heads that attend alike (low Jensen-Shannon distance).
    """
    check_colorscale(colorscale)
    order = clustering.order
    labels = clustering.labels()
    names = [labels[n] for n in order]
    matrix = clustering.distance[np.ix_(order, order)]
    count = len(order)
    cell = max(4.0, min(14.0, 720.0 / count))
    size = cell * count
    left = label_margin(names, 9) + 50
    fig = new_figure("Heads clustered by how alike they attend", int(size + left + 120), int(size + left + 80))
    font = dict(size=8 if count > 40 else 10)
    ticks = dict(tickmode="array", tickvals=list(range(count)), ticktext=names, tickfont=font)
    fig.update_layout(
        margin=dict(l=left, r=COLORBAR_ROOM, b=left),
        xaxis=dict(**ticks, tickangle=-90, showgrid=False, zeroline=False, constrain="domain"),
        yaxis=dict(**ticks, autorange="reversed", showgrid=False, zeroline=False, scaleanchor="x"),
    )
    _reading_guide(fig, "Mean Jensen-Shannon divergence between two heads' attention rows (nats, 0 = same "
                        "pattern); heads ordered by average-linkage clustering, outlines mark clusters.")
    fig.add_trace(go.Heatmap(
        z=matrix.astype(np.float32),
        x=np.arange(count, dtype=np.int32),
        y=np.arange(count, dtype=np.int32),
        customdata=np.array([[f"{a} ~ {b}" for b in names] for a in names]),
        colorscale=colorscale,
        zmin=0.0,
        colorbar=dict(thickness=14, title=dict(text="JS (nats)")),
        hovertemplate="%{customdata}: %{z:.4f}<extra></extra>",
        name="distance",
    ))
    label = clustering.clusters(min(max(clusters, 1), count))[order]
    starts = [0, *[i for i in range(1, count) if label[i] != label[i - 1]], count]
    for a, b in itertools.pairwise(starts):  # clusters are contiguous in leaf order
        fig.add_shape(type="rect", x0=a - 0.5, x1=b - 0.5, y0=a - 0.5, y1=b - 0.5,
                      line=dict(color="#d62728", width=1.5), fillcolor="rgba(0,0,0,0)")
    return fig


def build_diff_map(diff: AttentionDiff, colorscale: str = "Reds") -> go.Figure:
    """Mean Jensen-Shannon divergence between the two traces for every layer x head."""
    return build_head_map(
        diff.divergence,
        f"How much each head changed: {diff.label_a} vs {diff.label_b}",
        "Mean Jensen-Shannon divergence between the two attention rows of a head, over query tokens (nats; "
        "0 = identical, ln 2 = 0.69 = disjoint).",
        "JS (nats)", colorscale, zmin=0.0, decimals=4,
    )


def build_diff_ranking(diff: AttentionDiff, top: int = 15) -> go.Figure:
    """The ``top`` most changed heads as horizontal bars, the most changed on top."""
    if top < 1:
        raise ViewError(f"top must be at least 1, got {top}")
    ranking = diff.ranking()[:top]
    names = [f"L{layer} H{head}" for layer, head in ranking]
    values = [float(diff.divergence[layer, head]) for layer, head in ranking]
    fig = new_figure(f"Most changed heads: {diff.label_a} vs {diff.label_b}", 620, 120 + 24 * len(names))
    fig.update_layout(
        margin=dict(l=80, r=40, b=50),
        xaxis=dict(title=dict(text="JS divergence (nats)"), rangemode="tozero"),
        yaxis=dict(autorange="reversed"),
    )
    _reading_guide(fig, "Mean Jensen-Shannon divergence per head (nats); longer bar = attention moved more.")
    fig.add_trace(go.Bar(x=values, y=names, orientation="h", marker=dict(color="#d62728"), name="JS divergence",
                         hovertemplate="%{y}: %{x:.4f}<extra></extra>"))
    return fig


# ---------------------------------------------------------------------------------------------------------------
# Noise stability and ablation


def build_noise_heatmap(stability: NoiseStability, sigma: float | None = None, colorscale: str = "Reds") -> go.Figure:
    """Each head's mean Jensen-Shannon divergence from the clean attention at one noise level (default the
    largest sigma)."""
    sigmas = list(stability.sigmas)
    index = len(sigmas) - 1 if sigma is None else _sigma_index(sigmas, sigma)
    return build_head_map(
        stability.divergence[index],
        f"Noise stability at sigma {sigmas[index]:g} ({stability.samples} samples)",
        "Mean Jensen-Shannon divergence (nats) between clean and noisy attention when Gaussian noise of "
        f"sigma x RMS ({stability.rms:.3g}) is added to the input embeddings; low = stable head.",
        "JS (nats)", colorscale, zmin=0.0, decimals=4,
    )


def _sigma_index(sigmas: list[float], sigma: float) -> int:
    for index, value in enumerate(sigmas):
        if abs(value - sigma) <= 1e-12 * max(1.0, abs(sigma)):
            return index
    raise ViewError(f"sigma {sigma:g} was not measured; measured: {', '.join(f'{s:g}' for s in sigmas)}")


def build_noise_curve(stability: NoiseStability) -> go.Figure:
    """Mean divergence over sigma: one line per layer (mean of its heads) and the all-heads mean in black."""
    sigmas = np.asarray(stability.sigmas, dtype=np.float64)
    fig = new_figure("How attention moves as input noise grows", 720, 440)
    fig.update_layout(
        margin=dict(l=70, r=30, b=60),
        xaxis=dict(title=dict(text="sigma (relative to the embedding RMS)"), showgrid=True, gridcolor="#eee"),
        yaxis=dict(title=dict(text="mean JS divergence (nats)"), rangemode="tozero", showgrid=True, gridcolor="#eee"),
        legend=dict(title=dict(text="layer")),
    )
    _reading_guide(fig, "Mean Jensen-Shannon divergence from the clean attention (nats) against the noise scale "
                        "sigma (x embedding RMS), one line per layer; sigma 0 is exactly 0.")
    per_layer = stability.divergence.mean(axis=2)  # (S, L)
    for layer in range(per_layer.shape[1]):
        fig.add_trace(go.Scatter(
            x=sigmas, y=per_layer[:, layer], mode="lines+markers", name=f"layer {layer}",
            line=dict(color=_LINE_COLOURS[layer % len(_LINE_COLOURS)], width=1.5),
            hovertemplate=f"layer {layer}, sigma %{{x:g}}: %{{y:.4f}}<extra></extra>",
        ))
    fig.add_trace(go.Scatter(
        x=sigmas, y=stability.curve(), mode="lines+markers", name="all heads",
        line=dict(color="black", width=3), hovertemplate="all heads, sigma %{x:g}: %{y:.4f}<extra></extra>",
    ))
    return fig


def build_importance_heatmap(importance: HeadImportance, colorscale: str | None = None) -> go.Figure:
    """Every head silenced alone: the effect on the output, layers x heads (``analysis.perturb.head_importance``).

    For a classifier the colour is the drop in the predicted class's probability (diverging: blue cells are
    heads whose removal helps the prediction); otherwise 1 - cosine of the sentence embedding.
    """
    values = importance.importance
    if importance.probabilities is not None:
        bound = max(float(np.abs(values).max()), 1e-6)
        return build_head_map(
            values, "Head importance: each head silenced alone",
            f"Colour: {importance.metric}. Red heads support the prediction; blue heads work against it.",
            "drop", colorscale or DEFAULT_DIVERGING, zmin=-bound, zmax=bound, decimals=4,
        )
    return build_head_map(
        values, "Head importance: each head silenced alone",
        f"Colour: {importance.metric} (0 = no effect on the sentence embedding).",
        "1 - cos", colorscale or "Reds", zmin=0.0, decimals=4,
    )


def build_ablation_chart(effect: AblationEffect) -> go.Figure:
    """The output with the chosen heads silenced next to the clean output: class probabilities as grouped bars
    for a classifier, else the embedding cosine as one bar (1 = unchanged)."""
    heads = ", ".join(f"L{layer} H{head}" for layer, head in effect.heads) or "no head"
    if effect.probabilities is None or effect.clean_probabilities is None:
        fig = new_figure(f"Silencing {heads}: sentence embedding", 560, 260)
        fig.update_layout(
            margin=dict(l=110, r=40, b=50),
            xaxis=dict(title=dict(text="cosine"), range=[min(0.0, effect.cosine), 1.0]),
        )
        _reading_guide(fig, "Cosine between the sentence embedding with and without the heads (1 = unchanged).")
        fig.add_trace(go.Bar(x=[effect.cosine], y=["cosine"], orientation="h", marker=dict(color="#1f77b4"),
                             text=[f"{effect.cosine:.6f}"], textposition="auto", name="cosine",
                             hovertemplate="cosine %{x:.6f}<extra></extra>"))
        return fig
    labels = list(effect.labels) or [str(i) for i in range(len(effect.probabilities))]
    fig = new_figure(f"Silencing {heads}: class probabilities", 620, 400)
    fig.update_layout(
        margin=dict(l=70, r=30, b=60),
        barmode="group",
        yaxis=dict(title=dict(text="probability"), range=[0, 1]),
    )
    _reading_guide(fig, f"Grey: clean model; red: with the heads silenced. Embedding cosine {effect.cosine:.4f}.")
    fig.add_trace(go.Bar(x=labels, y=effect.clean_probabilities, name="clean", marker=dict(color="#bbbbbb"),
                         hovertemplate="%{x}: %{y:.4f} clean<extra></extra>"))
    change = effect.probability_change
    fig.add_trace(go.Bar(x=labels, y=effect.probabilities, name="heads silenced", marker=dict(color="#d62728"),
                         customdata=change, hovertemplate="%{x}: %{y:.4f} (%{customdata:+.4f})<extra></extra>"))
    return fig


# ---------------------------------------------------------------------------------------------------------------
# The registry's figures: figures(result, trace, options) -> [(name, figure), ...]


def style(options: Options) -> dict:
    """The builder keywords of the chosen colour scale (none: each builder's own default)."""
    return {"colorscale": options["colorscale"]} if options.get("colorscale") else {}


def pooled_figures(name: str, matrix: np.ndarray, trace: EncoderTrace, what: str) -> Figures:
    """For a model that reads its output at one token (``analysis.pooled``: CLIP's end-of-text token, a decoder's
    last token), that token's row of the (T, T) ``matrix`` as a token strip titled "<what>: row of <|endoftext|>
    (10): what the pooled embedding reads", named ``<name>-pooled``; else no figure."""
    row = pooled_row(trace)
    if row is None:
        return []
    fig = build_token_view(trace, query=row.index, weights=matrix, label=what, scrub=False)
    fig.update_layout(title=dict(text=f"{what}: {display_token(row.caption)}"))
    return [(f"{name}-pooled", fig)]


def rollout_figures(result: np.ndarray, trace: EncoderTrace, options: Options) -> Figures:
    """The rollout after the chosen layer; for a model with a pooled token, that token's row as a token strip;
    with a query token, also that token's row."""
    layer = chosen_layer(trace, options)
    residual = options.get("residual", DEFAULT_RESIDUAL)
    if isinstance(result, RolloutRows):
        rows = long_rollout_tokens(trace, options)
        return [("rollout", build_rollout_rows(result.after(layer, rows), trace, rows, layer, result.residual,
                                               **style(options)))]
    what = f"Rollout after layer {layer}"
    shown = [("rollout", build_rollout_heatmap(result, trace.readable_tokens, layer, residual, **style(options))),
             *pooled_figures("rollout", result[layer], trace, what)]
    if options.get("query") is not None:
        shown.append(("rollout-tokens", build_token_view(trace, query=options["query"], weights=result[layer],
                                                         label=what)))
    return shown


def flow_figures(result: np.ndarray, trace: EncoderTrace, options: Options) -> Figures:
    layers = chosen_layer(trace, options) + 1
    residual = options.get("residual", DEFAULT_RESIDUAL)
    return [("flow", build_flow_heatmap(result, trace.readable_tokens, layers, residual, **style(options))),
            *pooled_figures("flow", result, trace, f"Flow through layers 0-{layers - 1}")]


def report_figures(result: HeadReport, trace: EncoderTrace | None, options: Options) -> Figures:
    statistic = options.get("statistic") or DEFAULT_STATISTIC
    return [(f"report-{statistic}", build_report_heatmap(result, statistic, **style(options)))]


def clusters_figures(result: HeadClustering, trace: EncoderTrace | None, options: Options) -> Figures:
    clusters = options.get("clusters") or DEFAULT_CLUSTERS
    return [("clusters", build_clustering_heatmap(result, clusters=clusters, **style(options)))]


def noise_figures(result: NoiseStability, trace: EncoderTrace, options: Options) -> Figures:
    """The curve over sigma; with a sigma chosen, the layers x heads map at it first."""
    curve = ("noise-curve", build_noise_curve(result))
    if options.get("sigma") is None:
        return [curve]
    return [("noise", build_noise_heatmap(result, options["sigma"], **style(options))), curve]


def importance_figures(result: HeadImportance, trace: EncoderTrace, options: Options) -> Figures:
    return [("importance", build_importance_heatmap(result, **style(options)))]


def ablation_figures(result: AblationEffect, trace: EncoderTrace, options: Options) -> Figures:
    return [("ablation", build_ablation_chart(result))]


def beside_figure(beside: str | None, trace: EncoderTrace, options: Options) -> tuple[str, go.Figure] | None:
    """The raw-attention figure the app shows next to an analysis' first figure, at the chosen layer: "attention"
    (the heads' mean attention) or "rollout" (attention rollout after that layer); None for None."""
    layer = chosen_layer(trace, options)
    if beside == "attention":
        return "attention-mean", build_attention_heatmap(trace, layer, aggregate="mean", scrub=False, **style(options))
    if beside == "rollout":
        rollout = attention_rollout(trace.attention)
        return "rollout", build_rollout_heatmap(rollout, trace.readable_tokens, layer, DEFAULT_RESIDUAL,
                                                **style(options))
    return None
