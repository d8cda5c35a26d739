"""Figures of a corpus index (``corpus.index.CorpusIndex``, docs/corpus.md): the layers x heads map of a statistic
over the corpus, a head's examples (its strongest attention edges, a sentence at each decile) and the nearest
contexts of a token, each drawn as the sentences' token strips (``viz.tokens``' layout) with the edge or token
marked, and a head's query-key scatter (WebGL: tens of thousands of points).

Pure builders over plain values (no Streamlit, no file access): the app and tests pass what the reader returns.
Clicks: a strip's tokens and the scatter's points carry ``meta = {"open": OPEN_FIELDS}`` and ``customdata``
[sentence, position], so the app can open the clicked sentence in every view (``open_target``); the map's cells
carry ``viz.clicks``' [layer, head].
"""

from __future__ import annotations

import html
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import plotly.graph_objects as go

from analysis.report import STATISTICS, HeadReport
from encoder.errors import ViewError
from viz.analysis_figures import build_report_heatmap
from viz.layout import DEFAULT_SCALE, HIGHLIGHT, display_token, new_figure
from viz.tokens import CHAR_PIXELS, ROW_PIXELS, STRIP_SIDE, TOKEN_FONT, layout_tokens
from viz.validation import check_choice, check_colorscale, check_int_range

OPEN_FIELDS = ("sentence", "position")  # what a clicked strip token or scatter point carries
COLOR_BY = ("position", "token")
QK_KINDS = {"query": "queries", "key": "keys"}  # kind -> its legend name
QK_SYMBOLS = {"query": "circle", "key": "diamond"}
PROJECTION_NAMES = {"pca": ("PCA", "PC"), "umap": ("UMAP", "UMAP")}  # projection -> its name, its axes' prefix
TOKEN_COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#bcbd22",
                 "#17becf", "#393b79")  # the most frequent tokens of a scatter coloured by token; the rest grey
OTHER_COLOUR = "#c7c7c7"
HEADER_ROWS = 1  # each strip's header line (what the example is) takes one row above its tokens
STRIPS_TOP, STRIPS_BOTTOM = 70, 70
KEY_OUTLINE = "#222222"
SCATTER_SIZE = 620  # pixels, the scatter's plot side


@dataclass(frozen=True)
class Strip:
    """One sentence of a corpus, as a strip of its tokens: ``header`` says what it is (escaped when drawn);
    ``query`` is outlined in ``HIGHLIGHT``, ``key`` filled by ``value`` on the figure's colour scale (an attention
    edge query -> key; a nearest context marks its token as both); None marks nothing."""

    sentence: int
    tokens: tuple[str, ...]
    header: str
    query: int | None = None
    key: int | None = None
    value: float = 0.0

    def __post_init__(self) -> None:
        for name in ("query", "key"):
            index = getattr(self, name)
            if index is not None and not 0 <= index < len(self.tokens):
                raise ViewError(f"{name} token {index} is outside sentence {self.sentence} ({len(self.tokens)} "
                                "tokens)")


# ---------------------------------------------------------------------------------------------------------------
# The layers x heads map


def index_report(maps: dict[str, np.ndarray], sentences: int, tokens: int, first_special: bool = True,
                 key_value_heads: int = 0) -> HeadReport:
    """The corpus' report card from an index: ``maps`` statistic -> (L, H) mean (``CorpusIndex.head_map``), with
    the counts of the manifest; the same object ``analysis.report.corpus_head_report`` makes over a corpus in
    memory, so the map, its reading guide and its table are the report card's."""
    missing = [name for name in STATISTICS if name not in maps]
    if missing:
        raise ViewError(f"the index has no {', '.join(missing)} map")
    return HeadReport({name: np.asarray(maps[name], dtype=np.float64) for name in STATISTICS}, int(sentences),
                      int(tokens), None, bool(first_special), int(key_value_heads))


def build_corpus_map(report: HeadReport, statistic: str, selected: tuple[int, int] | None = None,
                     colorscale: str = DEFAULT_SCALE) -> go.Figure:
    """The report card's map of ``statistic`` over the corpus (``viz.analysis_figures.build_report_heatmap``),
    titled as the corpus', the ``selected`` (layer, head) outlined; its ``"cells"`` click layer gives [layer, head].
    """
    fig = build_report_heatmap(report, statistic, colorscale)
    fig.update_layout(title_text=f"Corpus: {report.describe(statistic)}, {report.num_texts:,} sentences "
                                 f"({report.num_queries:,} tokens)")
    if selected is not None:
        layer, head = selected
        if not (0 <= layer < report.num_layers and 0 <= head < report.num_heads):
            raise ViewError(f"head L{layer} H{head} is not in this {report.num_layers} x {report.num_heads} map")
        # a rectangle in the axes' units fits the cell whatever its aspect (a marker is square)
        fig.add_shape(type="rect", name="selected", x0=head - 0.5, x1=head + 0.5, y0=layer - 0.5, y1=layer + 0.5,
                      line=dict(color=HIGHLIGHT, width=3), layer="above")
    return fig


# ---------------------------------------------------------------------------------------------------------------
# Sentences as token strips


def edge_strips(edges: Sequence, sentences: dict[int, object], first: int = 1) -> list[Strip]:
    """``edges`` (``corpus.index.Edge``: sentence, query, key, weight) as strips of their sentences (``sentences``:
    id -> ``CorpusSentence``), headed by rank (from ``first``) and the edge."""
    strips = []
    for rank, edge in enumerate(edges, start=first):
        tokens = tuple(sentences[edge.sentence].tokens)
        query, key = int(edge.query), int(edge.key)
        what = (f"“{_token_text(tokens, query)}” ({query}) → “{_token_text(tokens, key)}” ({key})"
                if max(query, key) < len(tokens) else f"{query} → {key}")
        strips.append(Strip(int(edge.sentence), tokens, f"#{rank} · {what} · weight {float(edge.weight):.3f} · "
                                                         f"sentence {edge.sentence}", query, key, float(edge.weight)))
    return strips


def decile_strips(examples: Sequence, sentences: dict[int, object], statistic: str) -> list[Strip]:
    """``examples`` (``corpus.index.DecileExample``: decile, value, sentence) as strips, headed by the decile and
    the sentence's own value of ``statistic``."""
    return [Strip(int(example.sentence), tuple(sentences[example.sentence].tokens),
                  f"decile {int(example.decile)} (q{int(example.decile)}) · {statistic} {float(example.value):.3f} · "
                  f"sentence {example.sentence}")
            for example in examples]


def neighbour_strips(neighbours: Sequence, sentences: dict[int, object]) -> list[Strip]:
    """``neighbours`` (``corpus.index.Neighbour``: score, sentence, position, token) as strips, their token marked
    and coloured by the cosine."""
    strips = []
    for rank, found in enumerate(neighbours, start=1):
        tokens = tuple(sentences[found.sentence].tokens)
        position = int(found.position)
        strips.append(Strip(int(found.sentence), tokens, f"#{rank} · “{found.token}” ({position}) · cosine "
                                                         f"{float(found.score):.3f} · sentence {found.sentence}",
                            position, position, float(found.score)))
    return strips


def build_strips(strips: Sequence[Strip], title: str, value_name: str = "weight", subtitle: str = "",
                 line_chars: int = 100, colorscale: str = DEFAULT_SCALE) -> go.Figure:
    """Sentences one under another, each a header line then its tokens laid out like a paragraph (``viz.tokens``'
    boxes); the marked key filled by its value (``value_name`` on the colour bar, 0 to the largest), the query
    outlined in ``HIGHLIGHT`` and an arrow from query to key. Every token clicks: ``customdata`` [sentence,
    position] under ``meta={"open": OPEN_FIELDS}`` (one bar trace ``"tokens"``)."""
    check_colorscale(colorscale)
    line_chars = check_int_range(line_chars, "line_chars", 20, 400)
    if not strips:
        raise ViewError("no sentences to draw")
    bars = _StripBars()
    annotations, offset, widest = [], 0, 0.0
    for strip in strips:
        rows, starts, widths = layout_tokens(list(strip.tokens), set(), line_chars)
        annotations.append(dict(x=0, y=offset - 0.1, xref="x", yref="y", text=html.escape(strip.header, quote=False),
                                showarrow=False, xanchor="left", yanchor="middle", font=dict(size=12)))
        rows = rows + offset + HEADER_ROWS
        bars.add(strip, rows, starts, widths)
        if strip.query is not None and strip.key is not None and strip.query != strip.key:
            annotations.append(_edge_arrow(rows, starts, widths, strip.query, strip.key))
        offset = int(rows.max()) + 1 + HEADER_ROWS if len(rows) else offset + HEADER_ROWS + 1
        widest = max(widest, float((starts + widths).max()) if len(starts) else 0.0)
    peak = max((s.value for s in strips if s.key is not None), default=1.0)
    fig = new_figure(title, int(max(widest, 60) * CHAR_PIXELS + 2 * STRIP_SIDE),
                     int(offset * ROW_PIXELS + STRIPS_TOP + STRIPS_BOTTOM))
    fig.update_layout(
        title=dict(subtitle=dict(text=html.escape(subtitle, quote=False))) if subtitle else {},
        margin=dict(l=STRIP_SIDE, r=STRIP_SIDE, t=STRIPS_TOP, b=STRIPS_BOTTOM),
        xaxis=dict(range=[-0.5, max(widest, 60) + 0.5], visible=False, fixedrange=True),
        yaxis=dict(range=[offset - 0.5, -0.5], visible=False, fixedrange=True),
        bargap=0.22, annotations=annotations, uniformtext=dict(minsize=9, mode="show"),
        coloraxis=dict(colorscale=colorscale, cmin=0.0, cmax=peak if peak > 0 else 1.0,
                       colorbar=dict(orientation="h", thickness=10, lenmode="pixels", len=320, x=0, xanchor="left",
                                     yref="container", y=0.0, ypad=14, yanchor="bottom",
                                     title=dict(text=value_name, side="right"))),
    )
    fig.add_trace(bars.trace(value_name))
    return fig


class _StripBars:
    """The bars of every strip, gathered into one trace."""

    def __init__(self) -> None:
        self.y, self.x, self.base, self.text, self.color, self.width, self.line, self.custom, self.hover = (
            [], [], [], [], [], [], [], [], [])

    def add(self, strip: Strip, rows: np.ndarray, starts: np.ndarray, widths: np.ndarray) -> None:
        for position, token in enumerate(strip.tokens):
            marked = position == strip.key
            self.y.append(int(rows[position]))
            self.base.append(float(starts[position]))
            self.x.append(float(widths[position]))
            self.text.append(display_token(token))
            self.color.append(strip.value if marked else 0.0)
            is_query = position == strip.query
            self.width.append(3.0 if is_query else 2.0 if marked else 1.0)
            self.line.append(HIGHLIGHT if is_query else KEY_OUTLINE if marked else "white")
            self.custom.append((strip.sentence, position))
            self.hover.append(f"sentence {strip.sentence} · {display_token(token)} ({position})")

    def trace(self, value_name: str) -> go.Bar:
        return go.Bar(
            y=np.asarray(self.y, dtype=np.int32), x=np.asarray(self.x, dtype=np.float32),
            base=np.asarray(self.base, dtype=np.float32), orientation="h",
            marker=dict(color=np.asarray(self.color, dtype=np.float32), coloraxis="coloraxis",
                        line=dict(width=self.width, color=self.line)),
            text=self.text, textposition="inside", insidetextanchor="middle", textangle=0,
            textfont=dict(size=TOKEN_FONT), customdata=np.asarray(self.custom, dtype=np.int64).reshape(-1, 2),
            meta={"open": list(OPEN_FIELDS)}, hovertext=self.hover,
            hovertemplate=f"%{{hovertext}}<br>{value_name} %{{marker.color:.4f}}<extra></extra>",
            name="tokens", showlegend=False,
        )


def _edge_arrow(rows: np.ndarray, starts: np.ndarray, widths: np.ndarray, query: int, key: int) -> dict:
    """An arrow from the query's box to the key's, above their rows (in the gap between lines)."""
    centre = starts + widths / 2
    return dict(x=float(centre[key]), y=float(rows[key]) - 0.45, ax=float(centre[query]), ay=float(rows[query]) - 0.45,
                xref="x", yref="y", axref="x", ayref="y", text="", showarrow=True, arrowhead=2, arrowsize=1,
                arrowwidth=1.5, arrowcolor=HIGHLIGHT, name="edge")


def _token_text(tokens: Sequence[str], index: int) -> str:
    return tokens[index] if 0 <= index < len(tokens) else "?"


# ---------------------------------------------------------------------------------------------------------------
# The query-key scatter


def build_qk_scatter(points, layer: int, head: int, color_by: str = "position", colorscale: str = "Viridis"
                     ) -> go.Figure:
    """A head's sampled queries (circles) and keys (diamonds) at their joint 2-D projection (``points``:
    ``corpus.index.QKPoints``, kind, x, y, sentence, position, token, each (N,), and its ``projection``, "pca" or
    "umap", which the title and axes name), WebGL (``go.Scattergl``): one
    trace per kind coloured by the token's position (a shared colour bar), or, ``color_by="token"``, one trace per
    kind and frequent token (the ``len(TOKEN_COLOURS)`` most frequent, the rest grey). Clicking a point gives
    [sentence, position] (``OPEN_FIELDS``)."""
    check_choice(color_by, COLOR_BY, "color_by")
    check_colorscale(colorscale)
    kind = np.asarray(points.kind).astype(str)
    x, y = np.asarray(points.x, dtype=np.float32), np.asarray(points.y, dtype=np.float32)
    sentence, position = np.asarray(points.sentence, dtype=np.int64), np.asarray(points.position, dtype=np.int64)
    token = np.asarray(points.token).astype(str)
    if not (len(kind) == len(x) == len(y) == len(sentence) == len(position) == len(token)):
        raise ViewError("the query-key sample's columns differ in length")
    projection = getattr(points, "projection", "pca")
    check_choice(projection, tuple(PROJECTION_NAMES), "projection")
    name, axis = PROJECTION_NAMES[projection]
    queries, keys = int((kind == "query").sum()), int((kind == "key").sum())
    fig = new_figure(f"Layer {layer}, head {head}: {queries:,} queries and {keys:,} keys (joint {name})",
                     SCATTER_SIZE + 260, SCATTER_SIZE + 120)
    fig.update_layout(
        title=dict(subtitle=dict(text=f"● queries · ◆ keys, projected together ({name} of the head's sampled "
                                      "vectors) · click a point to open its sentence")),
        margin=dict(l=60, r=200 if color_by == "token" else 110, t=90 if color_by == "token" else 110, b=60),
        xaxis=dict(title=dict(text=f"{axis} 1"), zeroline=projection == "pca", zerolinecolor="#bbb", showgrid=False),
        yaxis=dict(title=dict(text=f"{axis} 2"), zeroline=projection == "pca", zerolinecolor="#bbb", showgrid=False,
                   scaleanchor="x"),
        legend=dict(title=dict(text="token")) if color_by == "token" else
        dict(orientation="h", x=0, xanchor="left", y=1.0, yanchor="bottom"),  # queries and keys, above the plot
        coloraxis=dict(colorscale=colorscale, cmin=0, cmax=int(position.max()) if position.size else 1,
                       colorbar=dict(thickness=14, title=dict(text="position"))),
    )
    columns = (x, y, sentence, position, token)
    if color_by == "position":
        for name in QK_KINDS:
            chosen = kind == name
            fig.add_trace(_qk_trace(name, *(c[chosen] for c in columns), color=position[chosen],
                                    label=QK_KINDS[name], coloraxis="coloraxis"))
        return fig
    frequent = [t for t, _ in Counter(token.tolist()).most_common(len(TOKEN_COLOURS))]
    groups = [(t, token == t, colour) for t, colour in zip(frequent, TOKEN_COLOURS)]
    groups.append(("other tokens", ~np.isin(token, frequent), OTHER_COLOUR))
    for label, members, colour in groups:
        for name in QK_KINDS:
            chosen = members & (kind == name)
            if chosen.any():
                fig.add_trace(_qk_trace(name, *(c[chosen] for c in columns), color=colour,
                                        label=display_token(label) if label != "other tokens" else label,
                                        group=label, legend=name == "query" or not (members & (kind == "query")).any()))
    fig.update_layout(coloraxis_showscale=False)
    return fig


def _qk_trace(kind: str, x: np.ndarray, y: np.ndarray, sentence: np.ndarray, position: np.ndarray,
              token: np.ndarray, color, label: str, coloraxis: str | None = None, group: str | None = None,
              legend: bool = True) -> go.Scattergl:
    """One kind's points (one token group's, with ``group``): markers by kind, hover the token, its position
    and sentence."""
    marker = dict(symbol=QK_SYMBOLS[kind], size=6, opacity=0.75, color=color, line=dict(width=0))
    if coloraxis is not None:
        marker["coloraxis"] = coloraxis
    return go.Scattergl(
        x=x, y=y, mode="markers", marker=marker, name=label, legendgroup=group or kind, showlegend=legend,
        customdata=np.stack([sentence, position], axis=1).astype(np.int64),
        text=[display_token(t) for t in token.tolist()],
        hovertemplate=f"{kind} “%{{text}}” (%{{customdata[1]}}) · sentence %{{customdata[0]}}<extra></extra>",
        meta={"open": list(OPEN_FIELDS)},
    )


# ---------------------------------------------------------------------------------------------------------------
# Clicks and numbers


def open_target(fig: go.Figure, event: dict) -> tuple[int, int] | None:
    """The (sentence, position) of the first clicked point of ``fig``'s traces that open a sentence
    (``meta={"open": OPEN_FIELDS}``), from a Streamlit selection ``event``; None when none was clicked."""
    for point in event.get("selection", {}).get("points", []):
        curve = point.get("curve_number")
        if curve is None or not 0 <= curve < len(fig.data):
            continue
        meta = fig.data[curve].meta
        custom = point.get("customdata")
        if isinstance(meta, dict) and meta.get("open") and custom is not None:
            if isinstance(custom, dict):  # typed-array customdata comes back as {"0": ..., "1": ...}
                custom = [custom[k] for k in sorted(custom, key=int)]
            return int(custom[0]), int(custom[1])
    return None


def strip_rows(strips: Sequence[Strip], texts: dict[int, str], value_name: str = "weight") -> list[dict]:
    """The numbers of a strips figure, one row per strip: sentence, the marked query and key (index and token),
    the value, the header and the sentence's text (CSV/JSON downloads)."""
    return [{"sentence": s.sentence, "query": s.query, "query_token": None if s.query is None else s.tokens[s.query],
             "key": s.key, "key_token": None if s.key is None else s.tokens[s.key],
             value_name: s.value if s.key is not None else None, "what": s.header, "text": texts.get(s.sentence, "")}
            for s in strips]


def qk_rows(points) -> list[dict]:
    """The query-key scatter's numbers, one row per point: kind, sentence, position, token, the projection ("pca"
    or "umap"), x, y."""
    projection = getattr(points, "projection", "pca")
    return [{"kind": str(k), "sentence": int(s), "position": int(p), "token": str(t), "projection": projection,
             "x": float(a), "y": float(b)}
            for k, s, p, t, a, b in zip(points.kind, points.sentence, points.position, points.token, points.x,
                                        points.y)]
