"""The Next-token view of a model with an LM head (a decoder): the text with each token shaded by how surprised the
model was to see it, and the query token's top-10 candidates for the token after it.

Surprisal is in nats: the surprisal of token j is ``-next_logprob[j - 1]`` = ``-ln p(token j | tokens before it)``
(``EncoderTrace.outputs``); the first token has none (nothing before it was predicted from). Hover gives the
probability, nats and bits (1 nat = 1 / ln 2 = 1.443 bits). Generated tokens (``trace.generated``) are in italics.

Clicks (``viz.clicks``): a token of the strip is ("query",): clicking it makes it the query.
"""

from __future__ import annotations

import html
import math

import numpy as np
import plotly.graph_objects as go

from encoder.errors import ViewError
from encoder.trace import EncoderTrace
from viz.clicks import click_meta
from viz.layout import (
    GENERATED_NOTE,
    HIGHLIGHT,
    MASKED_COLOR,
    byte_characters,
    display_token,
    label_margin,
    new_figure,
    percent,
    set_notes,
)
from viz.tokens import CHAR_PIXELS, MIN_WIDTH_CHARS, ROW_PIXELS, TOKEN_FONT, layout_tokens
from viz.validation import check_colorscale, check_int_range, check_token

NEXT_TOKEN_SCALE = "YlOrRd"  # surprisal: pale = expected, red = surprising
NO_LM_HEAD = ("The Next-token view needs a model that predicts the next token (a decoder with an LM head, such as "
              "Llama or Qwen); this trace's model has none.")
BITS_PER_NAT = 1 / math.log(2)
BAR_PIXELS = 26  # one candidate's bar
SIDE, TOP, GAP, BOTTOM = 30, 90, 56, 50  # margins and the gap between the strip and the candidates, in pixels
RIGHT = 110  # the right margin: room for the colour bar and its title
QUERY_OUTLINE = "#111111"  # the query token's outline: black, as red is the colour scale's own
COLORBAR_MIN = 150  # the surprisal colour bar is at least this long (pixels), however short the strip


def surprisal(trace: EncoderTrace) -> np.ndarray:
    """(T,) float64: ``-ln p(token j | tokens before it)`` in nats, NaN for the first token (ViewError without an LM
    head)."""
    if not trace.has_lm_head or "next_logprob" not in trace.outputs:
        raise ViewError(NO_LM_HEAD)
    logprob = np.asarray(trace.outputs["next_logprob"], dtype=np.float64)  # (T,), at t: ln p(token t + 1)
    return np.concatenate([[np.nan], -logprob[:-1]])


def generated_mask(trace: EncoderTrace) -> np.ndarray:
    """(T,) bool: True for the tokens the model generated (all False for a plain trace)."""
    return np.zeros(trace.num_tokens, bool) if trace.generated is None else np.asarray(trace.generated, bool)


def candidates(trace: EncoderTrace, position: int) -> list[tuple[str, int, float]]:
    """The top-K candidates for the token after ``position``: (text as people read it, id, probability), most
    probable first."""
    ids = np.asarray(trace.outputs["next_ids"][position])
    probs = np.asarray(trace.outputs["next_probs"][position], dtype=np.float64)
    return [(str(text), int(i), float(p)) for text, i, p in zip(trace.vocab_text(ids), ids, probs)]


def build_next_token_view(
    trace: EncoderTrace,
    query: int | None = None,
    *,
    colorscale: str = NEXT_TOKEN_SCALE,
    line_chars: int = 72,
) -> go.Figure:
    """The text shaded by surprisal, and the ``query`` token's top-K next-token candidates.

    Args:
        trace: a trace of a model with an LM head (``trace.has_lm_head``); ViewError otherwise, saying why.
        query: the position whose candidates are shown (default: the last token, what the model would write next).
        colorscale: the surprisal's colour scale (default ``NEXT_TOKEN_SCALE``).
        line_chars: the strip's line length in character cells.

    Returns:
        A figure with: bar trace ``"tokens"`` (the strip: one bar per token with a surprisal, ``marker.color`` the
        surprisal in nats, ``customdata`` [token index, probability, surprisal in bits]); ``"first"`` (the tokens
        without a surprisal, grey); bar trace ``"candidates"`` on the second axes (``x`` the probabilities, most
        probable on top, ``customdata`` [token id], the token that actually follows in ``HIGHLIGHT``).
    """
    check_colorscale(colorscale)
    line_chars = check_int_range(line_chars, "line_chars", 20, 400)
    nats = surprisal(trace)
    query = trace.num_tokens - 1 if query is None else check_token(trace, query, "query")
    generated = generated_mask(trace)
    tokens = list(trace.readable_tokens)
    rows, starts, widths = layout_tokens([html.unescape(display_token(t)) for t in tokens], set(), line_chars)
    lines = int(rows.max()) + 1
    found = candidates(trace, query)

    strip_h, bars_h = lines * ROW_PIXELS, len(found) * BAR_PIXELS
    content = max(float((starts + widths).max()), MIN_WIDTH_CHARS)
    width = int(content * CHAR_PIXELS + SIDE + RIGHT)
    height = strip_h + GAP + bars_h + TOP + BOTTOM
    q_text = display_token(tokens[query])
    fig = new_figure(f"Next token: surprisal of each token, and the candidates after “{q_text}” ({query})",
                     width, height)
    plot_h = strip_h + GAP + bars_h
    ticks = candidate_labels(found)
    bars_left = min(0.4, label_margin(ticks, 12) / (content * CHAR_PIXELS))  # the candidates' labels, left of the bars
    notes = ["colour: surprisal of each token, −ln p(token | the tokens before it), in nats",
             "grey: the first token (nothing before it to predict it from)",
             "black outline: the query token"]
    if generated.any():
        notes.append(GENERATED_NOTE)
    top = set_notes(fig, notes, TOP)
    top_p = _probability_top(found)
    fig.update_layout(
        margin=dict(l=SIDE, r=RIGHT, t=top, b=BOTTOM),
        barmode="overlay",  # the strip's two bar traces share each row instead of splitting it
        xaxis=dict(range=[-0.5, content + 0.5], visible=False, fixedrange=True),
        yaxis=dict(range=[lines - 0.5, -0.5], visible=False, fixedrange=True,
                   domain=[1 - strip_h / plot_h, 1.0]),
        xaxis2=dict(anchor="y2", domain=[bars_left, 0.88], range=[0, top_p], fixedrange=True,
                    tickformat=f".{max(0, math.ceil(-math.log10(top_p)) - 1)}%",
                    title=dict(text="probability of being the next token")),
        yaxis2=dict(anchor="x2", domain=[0.0, bars_h / plot_h], autorange="reversed", fixedrange=True,
                    tickmode="array", tickvals=list(range(len(found))), ticktext=ticks, ticklabelstandoff=4),
        bargap=0.22,
        coloraxis=dict(colorscale=colorscale, cmin=0.0, cmax=_peak(nats),
                       colorbar=dict(thickness=12, lenmode="pixels", len=max(strip_h, COLORBAR_MIN), y=1.0,
                                     yanchor="top", title=dict(text="surprisal<br>(nats)"))),
        uniformtext=dict(minsize=9, mode="show"),
        showlegend=False,
    )
    labels = [f"<i>{display_token(t)}</i>" if g else display_token(t) for t, g in zip(tokens, generated)]
    probability = np.exp(-nats)
    for name, keep in (("tokens", np.isfinite(nats)), ("first", ~np.isfinite(nats))):
        index = np.flatnonzero(keep)
        if index.size:
            fig.add_trace(_strip_bars(name, index, (rows, starts, widths), labels, nats, probability, generated,
                                      query, byte_characters(tokens)))
    fig.add_trace(_candidate_bars(trace, found, query))
    fig.add_annotation(text=_candidates_title(trace, found, query), xref="paper", yref="paper", x=0,
                       y=bars_h / plot_h, yshift=8, xanchor="left", yanchor="bottom", showarrow=False,
                       font=dict(size=12))
    return fig


def candidate_labels(found: list[tuple[str, int, float]]) -> list[str]:
    """The candidates' axis labels: their text, with the id where two candidates read the same (" the" and "the"
    both read "the")."""
    texts = [text for text, _, _ in found]
    return [display_token(text) + (f" (id {i})" if texts.count(text) > 1 else "") for text, i, _ in found]


def _probability_top(found: list[tuple[str, int, float]]) -> float:
    """The end of the probability axis: 100 % when a candidate is likely, else a round share above the largest
    (so that a flat distribution's bars are still seen; the bars' labels give the values)."""
    peak = max((p for _, _, p in found), default=0.0)
    for top in (1e-5, 2e-5, 5e-5, 1e-4, 2e-4, 5e-4, 1e-3, 2e-3, 5e-3, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5):
        if peak * 1.15 <= top:
            return top
    return 1.0


def _peak(nats: np.ndarray) -> float:
    """The top of the colour scale: the largest surprisal, at least 1 nat."""
    finite = nats[np.isfinite(nats)]
    return max(1.0, float(finite.max())) if finite.size else 1.0


def _strip_bars(name: str, index: np.ndarray, boxes: tuple[np.ndarray, ...], labels: list[str], nats: np.ndarray,
                probability: np.ndarray, generated: np.ndarray, query: int, spelled: list[str | None]) -> go.Bar:
    """The strip's bars of the tokens at ``index``: coloured by surprisal ("tokens") or grey ("first")."""
    rows, starts, widths = (values[index] for values in boxes)
    hover = []
    for i in index.tolist():
        made = " · generated" if generated[i] else ""
        if spelled[i] is not None:
            made += f" · a byte of “{display_token(spelled[i])}”"
        if np.isfinite(nats[i]):
            hover.append(f"{labels[i]} ({i}){made}<br>p = {percent(probability[i])} · surprisal {nats[i]:.3f} nats "
                         f"({nats[i] * BITS_PER_NAT:.3f} bits)")
        else:
            hover.append(f"{labels[i]} ({i}){made}<br>the first token: no surprisal")
    fill = dict(color=nats[index], coloraxis="coloraxis") if name == "tokens" else dict(color=MASKED_COLOR)
    outline = dict(width=np.where(index == query, 3.0, 1.0),
                   color=[QUERY_OUTLINE if i == query else "white" for i in index.tolist()])
    return go.Bar(
        y=rows.astype(np.int32), x=widths, base=starts, orientation="h", marker=dict(**fill, line=outline),
        text=[labels[i] for i in index.tolist()], textposition="inside", insidetextanchor="middle", textangle=0,
        textfont=dict(size=TOKEN_FONT),
        customdata=np.stack([index, probability[index], nats[index] * BITS_PER_NAT], axis=1),
        meta=click_meta("query"), hovertext=hover, hovertemplate="%{hovertext}<extra></extra>", name=name,
    )


def _candidate_bars(trace: EncoderTrace, found: list[tuple[str, int, float]], query: int) -> go.Bar:
    """One bar per candidate, most probable on top; the token that actually follows in ``HIGHLIGHT``."""
    actual = int(trace.token_ids[query + 1]) if query + 1 < trace.num_tokens else None
    probs = np.array([p for _, _, p in found], dtype=np.float32)
    return go.Bar(
        x=probs, y=np.arange(len(found), dtype=np.int32), orientation="h", xaxis="x2", yaxis="y2",
        marker=dict(color=[HIGHLIGHT if i == actual else "#4c78a8" for _, i, _ in found]),
        text=[percent(p) for p in probs], textposition="outside", cliponaxis=False,
        customdata=np.array([[i] for _, i, _ in found], dtype=np.int32),
        hovertext=[f"{display_token(text)} (id {i}, piece “{display_token(str(piece))}”): p = {percent(p)}"
                   for (text, i, p), piece in zip(found, trace.vocab_pieces(np.array([i for _, i, _ in found])))],
        hovertemplate="%{hovertext}<extra></extra>", name="candidates",
    )


def _candidates_title(trace: EncoderTrace, found: list[tuple[str, int, float]], query: int) -> str:
    """What the candidate bars are, and how the token that actually follows fared."""
    head = f"Top {len(found)} candidates for the token after “{display_token(trace.readable_tokens[query])}” ({query})"
    if query + 1 >= trace.num_tokens:
        return head + ": the text ends here"
    follows = display_token(trace.readable_tokens[query + 1])
    p = math.exp(float(trace.outputs["next_logprob"][query]))
    ranks = [rank for rank, (_, i, _) in enumerate(found, 1) if i == int(trace.token_ids[query + 1])]
    where = f"rank {ranks[0]}, red" if ranks else f"not in the top {len(found)}"
    return f"{head}: “{follows}” follows, p = {percent(p)} ({where})"


def next_token_rows(trace: EncoderTrace, settings: dict | None = None) -> tuple[list[dict], dict]:
    """The view's numbers: one CSV row per token (position, token, generated, probability and surprisal in nats
    and bits of this token given the ones before, then the top-K candidates for the next token and their
    probabilities: ``candidate_1``, ``p_1``, ...), and the same as a JSON document (``kind`` "NextToken")."""
    nats = surprisal(trace)
    generated = generated_mask(trace)
    rows, positions = [], []
    for t, token in enumerate(trace.readable_tokens):
        known = bool(np.isfinite(nats[t]))
        found = candidates(trace, t)
        row = {"position": t, "token": token, "generated": bool(generated[t]),
               "probability": math.exp(-nats[t]) if known else None,
               "surprisal_nats": float(nats[t]) if known else None,
               "surprisal_bits": float(nats[t] * BITS_PER_NAT) if known else None}
        for rank, (text, _, p) in enumerate(found, 1):
            row[f"candidate_{rank}"] = text
            row[f"p_{rank}"] = p
        rows.append(row)
        positions.append({**{k: row[k] for k in ("position", "token", "generated", "probability", "surprisal_nats")},
                          "candidates": [{"token": text, "id": i, "probability": p} for text, i, p in found]})
    document = {"kind": "NextToken", "model": trace.model, "text": trace.text, "units": "nats",
                "positions": positions}
    return rows, document


def next_token_unavailable(trace: EncoderTrace) -> str | None:
    """Why the Next-token view cannot show ``trace`` (its model has no LM head), or None."""
    return None if trace.has_lm_head else NO_LM_HEAD
