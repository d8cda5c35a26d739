"""Head report card (Clark et al., 2019, "What does BERT look at?"): what each head attends to, for one trace
or aggregated over a corpus of traces.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from analysis.checks import Progress, check_attention, layer_rows
from analysis.divergence import head_distances, xlogx_sums
from encoder.attention_store import LazyAttention, block_rows
from encoder.errors import AnalysisError
from encoder.trace import EncoderTrace, trace_batch

if TYPE_CHECKING:
    from encoder.sources import LoadedModel


STATISTICS: dict[str, str] = {
    "entropy": "mean attention entropy (nats): low = focused on few tokens, high = spread out",
    "cls": "attention to the first special token ([CLS], or a decoder's begin-of-text)",
    "sep": "attention to [SEP]",
    "punctuation": "attention to punctuation",
    "self": "attention to the token itself",
    "previous": "attention to the previous token",
    "next": "attention to the next token",
    "distance": "mean attention distance (tokens): sum_j a_ij |i - j|",
    "sink": "attention to the first token from queries after the first few (an attention sink scores >= 0.5)",
}
# Without a special first token (GPT-2 has no [CLS]) the "cls" statistic is attention to the first token itself.
FIRST_TOKEN, FIRST_TOKEN_COLUMN = "attention to the first token", "first_token"
_SUBWORD_MARKS = ("##", "▁", "Ġ")
# Attention sinks (Xiao et al., 2023, "Efficient streaming language models with attention sinks"): a head whose
# queries from position SINK_FROM on put at least SINK_THRESHOLD of their attention on the first token, on average.
# The first queries are left out: in a causal model they see few keys, so the first token gets much of their
# attention whatever the head does. A text of at most SINK_FROM tokens counts its last query alone.
SINK_FROM = 4
SINK_THRESHOLD = 0.5


def sink_queries(tokens: int) -> slice:
    """The queries the ``sink`` statistic averages over in a text of ``tokens`` tokens: from ``SINK_FROM`` on, or
    the last one alone in a text of at most ``SINK_FROM`` tokens."""
    return slice(min(SINK_FROM, tokens - 1), tokens)


def sink_shares(attention: np.ndarray) -> np.ndarray:
    """(L, H) float64: each head's attention on the first token, averaged over ``sink_queries`` (the ``sink``
    statistic of one text); ``attention`` (L, H, T, T)."""
    queries = sink_queries(attention.shape[-1])
    return attention[:, :, queries, 0].mean(axis=-1, dtype=np.float64)


def key_value_heads_of(num_heads: int, key_value_heads: int) -> np.ndarray:
    """(H,) int: the key/value head each query head reads (grouped-query attention: ``h // (H // KV)``, as
    transformers' ``repeat_kv``); every head its own when ``key_value_heads`` is 0 or H."""
    if not key_value_heads:
        return np.arange(num_heads)
    if key_value_heads < 0 or num_heads % key_value_heads:
        raise AnalysisError(f"{key_value_heads} key/value heads do not divide {num_heads} heads")
    return np.arange(num_heads) // (num_heads // key_value_heads)


def token_classes(tokens: Sequence[str], special: np.ndarray) -> dict[str, np.ndarray]:
    """Which tokens count as [CLS], [SEP] and punctuation for the report card. Each value is (T,) bool.

    - ``cls``: the first token: [CLS] (or ``<s>``) where the tokenizer puts a special token first; in a model
      without one (GPT-2) the first word, which causal heads often attend to (``HeadReport.first_special``).
    - ``sep``: every other special token ([SEP] after each sentence; [PAD] never occurs in a trace).
    - ``punctuation``: a non-special token whose text, without a subword mark (``##``, ``▁``, ``Ġ``), is
      non-empty and made only of Unicode punctuation (categories P*: ``. , ; ! ? " ' ( ) -`` ...).
    """
    special = np.asarray(special, dtype=bool)
    if special.shape != (len(tokens),):
        raise AnalysisError(f"special has shape {special.shape}, while there are {len(tokens)} tokens")
    cls = np.zeros(len(tokens), dtype=bool)
    cls[:1] = True
    punctuation = np.array([not s and _is_punctuation(t) for t, s in zip(tokens, special)], dtype=bool)
    return {"cls": cls, "sep": special & ~cls, "punctuation": punctuation}


def _is_punctuation(token: str) -> bool:
    for mark in _SUBWORD_MARKS:
        if token.startswith(mark):
            token = token[len(mark):]
            break
    return bool(token) and all(unicodedata.category(ch).startswith("P") for ch in token)


@dataclass(frozen=True, eq=False)
class HeadReport:
    """Report card of every head: each statistic of ``STATISTICS`` as an (L, H) float64 array.

    Each statistic is a mean over query tokens (see ``head_report``); over a corpus every query token of every
    text counts once (token-weighted), so long texts weigh more than short ones.
    ``distance`` (optional) is the (N, N) head distance of ``head_distances``, averaged the same way.
    ``first_special`` says whether the first token was special ([CLS]); if not (GPT-2), "cls" is attention to the
    first token, and ``describe`` and ``rows`` say so.
    ``key_value_heads``: the model's key/value heads (grouped-query attention), 0 when every head has its own;
    then ``rows`` name each head's key/value head.
    """

    statistics: dict[str, np.ndarray]
    num_texts: int
    num_queries: int
    distance: np.ndarray | None = None
    first_special: bool = True
    key_value_heads: int = 0

    @property
    def num_layers(self) -> int:
        return self.statistics["entropy"].shape[0]

    @property
    def num_heads(self) -> int:
        return self.statistics["entropy"].shape[1]

    def __getitem__(self, name: str) -> np.ndarray:
        if name not in self.statistics:
            raise KeyError(f"unknown statistic {name!r}; choose from {', '.join(STATISTICS)}")
        return self.statistics[name]

    def describe(self, statistic: str) -> str:
        """What ``statistic`` measures (``STATISTICS``): "attention to the first token" for "cls" when the first
        token was not special."""
        return FIRST_TOKEN if statistic == "cls" and not self.first_special else STATISTICS[statistic]

    def column(self, statistic: str) -> str:
        """The statistic's column name in ``rows``: "first_token" for "cls" when the first token was not special."""
        return FIRST_TOKEN_COLUMN if statistic == "cls" and not self.first_special else statistic

    @property
    def grouped(self) -> bool:
        """Whether query heads share key/value heads (grouped-query attention)."""
        return self.key_value_heads not in (0, self.num_heads)

    def kv_head(self, head: int) -> int:
        """The key/value head query head ``head`` reads."""
        return int(key_value_heads_of(self.num_heads, self.key_value_heads)[head])

    def sinks(self, threshold: float = SINK_THRESHOLD) -> list[tuple[int, int, float]]:
        """The attention-sink heads, (layer, head, sink share), strongest first: ``sink`` >= ``threshold``."""
        sink = self.statistics["sink"]
        found = [(int(layer), int(head), float(sink[layer, head])) for layer, head in np.argwhere(sink >= threshold)]
        return sorted(found, key=lambda item: (-item[2], item[0], item[1]))

    def rows(self) -> list[dict]:
        """One dict per head (layer, head, its key/value head when heads share them, then every statistic): the
        sortable table, or CSV rows."""
        kv = key_value_heads_of(self.num_heads, self.key_value_heads)
        return [
            {"layer": layer, "head": head, **({"kv_head": int(kv[head])} if self.grouped else {}),
             **{self.column(name): float(self.statistics[name][layer, head]) for name in STATISTICS}}
            for layer in range(self.num_layers)
            for head in range(self.num_heads)
        ]


@dataclass
class _ReportSums:
    """Running sums for a token-weighted report over many traces."""

    distances: bool
    sums: dict[str, np.ndarray] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    distance: np.ndarray | None = None
    texts: int = 0
    queries: int = 0
    shape: tuple[int, int] | None = None
    first_special: bool = True  # every text so far began with a special token
    key_value_heads: int = 0

    def add(self, attention: np.ndarray, tokens: Sequence[str], special: np.ndarray, key_value_heads: int = 0) -> None:
        if not isinstance(attention, LazyAttention):
            attention = check_attention(attention)
        if len(tokens) != attention.shape[-1]:
            raise AnalysisError(f"attention has {attention.shape[-1]} positions, while there are {len(tokens)} tokens")
        if self.shape is None:
            self.shape = attention.shape[:2]
        elif attention.shape[:2] != self.shape:
            raise AnalysisError(
                f"all traces must come from one model: {self.shape[0]}x{self.shape[1]} heads, then "
                f"{attention.shape[0]}x{attention.shape[1]}"
            )
        for name, (total, count) in _statistic_sums(attention, tokens, special).items():
            self.sums[name] = self.sums.get(name, 0.0) + total
            self.counts[name] = self.counts.get(name, 0) + count
        if self.distances:
            weighted = head_distances(attention) * attention.shape[-1]  # token-weighted, like the statistics
            self.distance = weighted if self.distance is None else self.distance + weighted
        self.texts += 1
        self.queries += attention.shape[-1]
        self.first_special = self.first_special and bool(special[0])
        self.key_value_heads = key_value_heads

    def report(self) -> HeadReport:
        if self.texts == 0:
            raise AnalysisError("no traces to report on: the corpus is empty")
        statistics = {name: self.sums[name] / max(self.counts[name], 1) for name in STATISTICS}
        distance = None if self.distance is None else self.distance / self.queries
        return HeadReport(statistics, self.texts, self.queries, distance, self.first_special, self.key_value_heads)


def _statistic_sums(
    attention: np.ndarray, tokens: Sequence[str], special: np.ndarray
) -> dict[str, tuple[np.ndarray, int]]:
    """For each statistic: its (L, H) sum over the queries where it is defined, and how many queries that is. A
    long trace's ``LazyAttention`` is read one layer and one block of query rows at a time (``block_rows``: within
    ``ROW_BLOCK_BYTES``), never the whole (L, H, T, T)."""
    t = attention.shape[-1]
    classes = token_classes(tokens, special)
    if isinstance(attention, LazyAttention):
        layers, heads = attention.shape[:2]
        totals: dict[str, np.ndarray] = {}
        step = block_rows(heads, t)
        for layer in range(layers):
            for begin in range(0, t, step):
                block = layer_rows(attention, layer, begin, min(begin + step, t))  # (H, R, T)
                for name, total in _row_sums(block, begin, classes).items():
                    totals.setdefault(name, np.zeros((layers, heads)))[layer] += total
    else:
        totals = _row_sums(attention, 0, classes)
    sinks = sink_queries(t)
    counts = {"previous": t - 1, "next": t - 1, "sink": sinks.stop - sinks.start}
    return {name: (totals[name], counts.get(name, t)) for name in totals}


def trace_statistic_sums(trace: EncoderTrace) -> dict[str, tuple[np.ndarray, int]]:
    """One trace's report-card sums: for each statistic of ``STATISTICS``, its (L, H) float64 sum over the queries
    where it is defined and how many queries that is. ``head_report(trace)[name]`` is ``sum / max(count, 1)``; a
    corpus's token-weighted mean (``corpus_head_report``) is the sum of the sums over the sum of the counts."""
    return _statistic_sums(trace.attention, trace.tokens, trace.special)


def _row_sums(block: np.ndarray, begin: int, classes: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Each statistic's (...) float64 sum over queries ``begin`` .. ``begin + R - 1``, from their rows ``block``
    (..., R, T) (all of a trace's queries: (L, H, T, T) -> (L, H) sums)."""
    rows, t = block.shape[-2:]
    queries, local = np.arange(begin, begin + rows), np.arange(rows)
    after, before = queries >= 1, queries < t - 1
    sinks = sink_queries(t)
    sink_local = local[(queries >= sinks.start) & (queries < sinks.stop)]
    key_totals = block.sum(axis=-2, dtype=np.float64)  # (..., T): each key's weight summed over these queries
    out = {
        "entropy": -xlogx_sums(block),
        "self": block[..., local, queries].sum(axis=-1, dtype=np.float64),
        "previous": block[..., local[after], queries[after] - 1].sum(axis=-1, dtype=np.float64),
        "next": block[..., local[before], queries[before] + 1].sum(axis=-1, dtype=np.float64),
        "distance": np.einsum("...ij,ij->...", block,
                              np.abs(queries[:, None] - np.arange(t)[None, :]).astype(block.dtype), dtype=np.float64),
        "sink": block[..., sink_local, 0].sum(axis=-1, dtype=np.float64),
    }
    for name in ("cls", "sep", "punctuation"):
        out[name] = key_totals[..., classes[name]].sum(axis=-1)
    return out


def head_report(trace: EncoderTrace, distances: bool = False) -> HeadReport:
    """Report card of every head for one trace.

    For a head with attention ``a`` (T x T), averaged over the query tokens ``i`` (all T, specials included):

    - ``entropy``: ``-sum_j a_ij ln a_ij`` (nats; 0 ln 0 = 0), from 0 (one key) to ln T (uniform).
    - ``cls``, ``sep``, ``punctuation``: ``sum_{j in class} a_ij``, with the classes of ``token_classes`` (``cls``
      is the first token, [CLS] or, without a special first token, the first word).
    - ``self``: ``a_ii``.
    - ``previous``: ``a_{i, i-1}``, averaged over the T - 1 queries that have a previous token.
    - ``next``: ``a_{i, i+1}``, averaged over the T - 1 queries that have a next token.
    - ``distance``: ``sum_j a_ij |i - j|`` in tokens.
    - ``sink``: ``a_i0``, averaged over the queries from ``SINK_FROM`` (4) on (``sink_queries``); a head scoring at
      least ``SINK_THRESHOLD`` (0.5) is an attention sink (``HeadReport.sinks``).

    With ``distances=True`` the report also carries the head distance matrix (for ``cluster_heads``).
    """
    sums = _ReportSums(distances)
    sums.add(trace.attention, trace.tokens, trace.special, trace.key_value_heads)
    return sums.report()


def corpus_head_report(
    traces: Iterable[EncoderTrace],
    total: int | None = None,
    progress: Progress | None = None,
    distances: bool = True,
) -> HeadReport:
    """Report card aggregated over many traces (of one model), token-weighted: every statistic is the mean over
    all query tokens of all texts where it is defined (``head_report`` gives the per-query definitions).

    Args:
        traces: any iterable of traces, e.g. ``iter_traces(model, sentences)`` (consumed once, lazily).
        total: how many traces to expect, passed on to ``progress``.
        progress: called as ``progress(done, total)`` after each trace.
        distances: also average the head distance matrix (costs about as much as the encoder at ~25 tokens).

    Raises:
        AnalysisError: no traces, or traces from models of different shapes.
    """
    sums = _ReportSums(distances)
    for trace in traces:
        sums.add(trace.attention, trace.tokens, trace.special, trace.key_value_heads)
        if progress is not None:
            progress(sums.texts, total)
    return sums.report()


def iter_traces(
    model: LoadedModel, texts: Sequence[str], batch_size: int = 64, max_tokens: int | None = 128
) -> Iterator[EncoderTrace]:
    """Trace ``texts`` lazily in batches (``encoder.trace.trace_batch``), yielding traces in input order.

    ``max_tokens`` truncates long lines (128 by default, so one long line cannot dominate a corpus).
    """
    if batch_size < 1:
        raise AnalysisError(f"batch_size must be at least 1, got {batch_size}")
    for start in range(0, len(texts), batch_size):
        yield from trace_batch(model, texts[start:start + batch_size], max_tokens=max_tokens, batch_size=batch_size)


class Sentences(list):
    """The sentences of a corpus file (a plain list of str), and ``dropped``: how many non-blank lines past the
    limit were left out (0 when none)."""

    dropped: int = 0


def sentences_from_text(text: str, limit: int = 5000) -> Sentences:
    """The non-blank lines of an uploaded text file (one sentence per line), stripped, at most ``limit``; the
    result's ``dropped`` says how many more there were.

    Raises:
        AnalysisError: no non-blank line.
    """
    lines = [line for line in (line.strip() for line in text.splitlines()) if line]
    if not lines:
        raise AnalysisError("The file has no sentences: put one sentence per line.")
    sentences = Sentences(lines[:limit])
    sentences.dropped = max(len(lines) - limit, 0)
    return sentences
