"""The corpus pipeline on Apache Beam: chunks of the input -> batches -> ``RunInference`` (``HeadlightModelHandler``)
-> per-batch parts written as they come, and bounded corpus-wide combiners; ``finish_index`` then puts the parts in
input order into the index folder (format ``corpus.format``) and writes the manifest last.

The graph (``build_pipeline``)::

    Create(chunk descriptors) | Reshuffle | FlatMap(read_chunk) | RunInference(handler)
        -> ParDo(WriteParts)                      sentences, head_stats, contexts: a part file per worker bundle
        -> CombineGlobally(HeadSummaryFn)         token-weighted means, deciles (histograms), decile examples
        -> Top.PerKey(top_k)                      strongest edges per head
        -> Top.Of(sample_per_head)                the tokens of lowest priority: the query/key sample, its
                                                  joint PCA per head (and UMAP with ``--umap``), on one worker

Nothing holds the corpus: each batch's rows go to disk as they come (a row group per batch), the combiners keep
fixed-size state (the histograms: heads x statistics x bins counts), and the top lists and sample are bounded. Every
output is the same on every runner: batches are cut by the input plan, not by the runner; the top lists and the
sample are exact cuts with ties broken by sentence, query, key; the histograms count, and their examples keep the
lowest sentence id per bin; ``finish_index`` orders the parts' row groups (one per batch) by their first sentence.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterable, Iterator
from contextlib import nullcontext
from pathlib import Path

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.ml.inference.base import RunInference

from corpus.format import (
    CONTEXTS_DIR,
    DECILE_EXAMPLES,
    DECILES,
    DEFAULT_SHARD_ROWS,
    HEAD_STATS_DIR,
    HEAD_SUMMARY,
    QK_SAMPLE,
    QK_UMAP,
    SCHEMAS,
    SENTENCES,
    TOP_EDGES,
    UMAP_INSTALL,
    UMAP_PARAMETERS,
    CorpusError,
    context_files,
)
from corpus.handler import (
    STATISTIC_LIST,
    BatchResult,
    CorpusOptions,
    HeadlightModelHandler,
    ModelFacts,
    release_memory,
)
from corpus.sources import read_chunk

PARTS, FINAL, PROGRESS = "parts", "final", "progress"
OUTPUT_ROW_GROUP = 65_536  # rows per row group of the finished files
HEAD_STATS_PART_ROWS = 4_000_000  # rows per head_stats part file
RELEASE_GROUPS = 16  # reading the parts back, Arrow's pool is told to hand back freed pages every this many row groups


# ---------------------------------------------------------------------------------------------------------------
# Per-batch tables


def sentence_table(result: BatchResult) -> pa.Table:
    """``sentences.parquet``'s rows of one batch."""
    return pa.table({
        "sentence": result.sentence,
        "text": result.text,
        "tokens": [list(tokens) for tokens in result.tokens],
        "special": [special.tolist() for special in result.special],
        "n_tokens": result.n_tokens,
    }, schema=SCHEMAS[SENTENCES])


def head_stats_table(result: BatchResult) -> pa.Table:
    """``head_stats``' rows of one batch: sentence x layer x head, each statistic the sentence's own value."""
    values = result.values  # (S, K, L, H)
    sentences, stats, layers, heads = values.shape
    rows = values.transpose(0, 2, 3, 1).reshape(-1, stats)  # (S * L * H, K)
    columns = {
        "sentence": pa.array(np.repeat(result.sentence, layers * heads), pa.int64()),
        "layer": pa.array(np.tile(np.repeat(np.arange(layers), heads), sentences), pa.int16()),
        "head": pa.array(np.tile(np.arange(heads), sentences * layers), pa.int16()),
        "n_queries": pa.array(np.repeat(result.n_tokens, layers * heads), pa.int32()),
    }
    columns.update({name: pa.array(rows[:, k], pa.float64()) for k, name in enumerate(STATISTIC_LIST)})
    return pa.table(columns, schema=SCHEMAS[HEAD_STATS_DIR])


def context_table(result: BatchResult, layer: int) -> pa.Table:
    """One batch's contexts after ``layer``: sentence, position, token and the vector (fixed-size list)."""
    vectors = np.ascontiguousarray(result.contexts[layer], dtype=np.float32)  # (N, D)
    flat = pa.array(vectors.reshape(-1), pa.float32())
    return pa.table({
        "sentence": pa.array(result.token_sentence, pa.int64()),
        "position": pa.array(result.positions, pa.int32()),
        "token": pa.array([token for tokens in result.tokens for token in tokens], pa.string()),
        "vector": pa.FixedSizeListArray.from_arrays(flat, vectors.shape[1]),
    })


def batch_tables(result: BatchResult) -> dict[str, pa.Table]:
    """Every part table of one batch, by part name ("sentences", "head_stats", "layer-<l>")."""
    tables = {"sentences": sentence_table(result), "head_stats": head_stats_table(result)}
    tables.update({f"layer-{layer}": context_table(result, layer) for layer in sorted(result.contexts)})
    return tables


class PartsWriter:
    """Appends each batch's tables to this writer's own part files (``<partial>/parts/<name>/<id>.parquet``, a
    row group per batch), and counts the sentences written in ``<partial>/progress/<id>`` for the progress line."""

    def __init__(self, partial: Path) -> None:
        self.partial = Path(partial)
        self.id = uuid.uuid4().hex
        self.writers: dict[str, pq.ParquetWriter] = {}
        self.sentences = 0

    def write(self, result: BatchResult) -> None:
        for name, table in batch_tables(result).items():
            if name not in self.writers:
                folder = self.partial / PARTS / name
                folder.mkdir(parents=True, exist_ok=True)
                self.writers[name] = pq.ParquetWriter(folder / f"{self.id}.parquet", table.schema)
            self.writers[name].write_table(table, row_group_size=max(len(table), 1))
        self.sentences += len(result.sentence)
        progress = self.partial / PROGRESS
        progress.mkdir(exist_ok=True)
        (progress / self.id).write_text(str(self.sentences))

    def close(self) -> None:
        for writer in self.writers.values():
            writer.close()
        self.writers = {}


# ---------------------------------------------------------------------------------------------------------------
# The head summary: means, deciles and decile examples in fixed-size state


def statistic_ranges(max_tokens: int) -> np.ndarray:
    """(K, 2) the range of each statistic: shares [0, 1], entropy [0, ln T], distance [0, T - 1]."""
    ranges = np.tile([0.0, 1.0], (len(STATISTIC_LIST), 1))
    ranges[STATISTIC_LIST.index("entropy"), 1] = np.log(max_tokens)
    ranges[STATISTIC_LIST.index("distance"), 1] = max_tokens - 1
    return ranges


class HeadSummaryFn(beam.CombineFn):
    """A Beam ``CombineFn`` over batches' ``(sentence, sums, counts, n_tokens)``:

    - means: sum of sums / sum of counts, float64 (token-weighted, as ``corpus_head_report``);
    - deciles: each head and statistic's ``bins``-bin histogram over the statistic's range (``statistic_ranges``)
      and its exact minimum and maximum; a decile is read off the cumulative counts, linear within its bin (so
      within one bin width of the exact decile), q0 and q10 exact. Counts merge in any order: the same on every
      runner, unlike a merge-order dependent sketch;
    - decile examples: for ``decile_statistic``, the lowest sentence id of each bin and its value; a decile's
      example is the bins' example nearest to it (within one bin width of it).
    """

    def __init__(self, options: CorpusOptions) -> None:
        super().__init__()
        self.bins = options.bins
        self.ranges = statistic_ranges(options.max_tokens)
        self.example = STATISTIC_LIST.index(options.decile_statistic)

    def create_accumulator(self) -> dict | None:
        return None

    def _empty(self, k: int, layers: int, heads: int) -> dict:
        return {"sums": np.zeros((k, layers, heads)), "counts": np.zeros(k, dtype=np.int64),
                "hist": np.zeros((k, layers, heads, self.bins), dtype=np.int64),
                "low": np.full((k, layers, heads), np.inf), "high": np.full((k, layers, heads), -np.inf),
                "example": np.full((layers, heads, self.bins), -1, dtype=np.int64),
                "example_value": np.zeros((layers, heads, self.bins)), "sentences": 0, "tokens": 0}

    def _bins(self, values: np.ndarray) -> np.ndarray:
        """(..., K, L, H) values -> their bin per statistic (int)."""
        low, high = self.ranges[:, 0, None, None], self.ranges[:, 1, None, None]
        scaled = (values - low) / (high - low) * self.bins
        return np.clip(np.floor(scaled), 0, self.bins - 1).astype(np.int64)

    def add_input(self, acc: dict | None, element: tuple) -> dict:
        sentence, sums, counts, n_tokens = element
        s, k, layers, heads = sums.shape
        acc = self._empty(k, layers, heads) if acc is None else acc
        values = sums / np.maximum(counts, 1)[:, :, None, None]  # (S, K, L, H)
        acc["sums"] += sums.sum(axis=0)
        acc["counts"] += counts.sum(axis=0)
        acc["low"] = np.minimum(acc["low"], values.min(axis=0))
        acc["high"] = np.maximum(acc["high"], values.max(axis=0))
        bins = self._bins(values)  # (S, K, L, H)
        cells = np.arange(k * layers * heads).reshape(k, layers, heads) * self.bins
        acc["hist"] += np.bincount((cells + bins).ravel(), minlength=acc["hist"].size).reshape(acc["hist"].shape)
        self._add_examples(acc, sentence, values[:, self.example], bins[:, self.example])
        acc["sentences"] += s
        acc["tokens"] += int(n_tokens.sum())
        return acc

    def _add_examples(self, acc: dict, sentence: np.ndarray, values: np.ndarray, bins: np.ndarray) -> None:
        """Keep, per head and bin, the lowest sentence id seen and its value; ``values``/``bins`` (S, L, H)."""
        layers, heads = values.shape[1:]
        order = np.argsort(sentence, kind="stable")
        cells = (np.arange(layers * heads).reshape(layers, heads) * self.bins + bins)[order].ravel()  # (S*L*H,)
        ids = np.repeat(sentence[order], layers * heads)
        found = values[order].ravel()
        cells, first = np.unique(cells, return_index=True)  # the first of each cell: its lowest sentence id
        self._merge_examples(acc, cells, ids[first], found[first])

    @staticmethod
    def _merge_examples(acc: dict, cells: np.ndarray, ids: np.ndarray, values: np.ndarray) -> None:
        example, example_value = acc["example"].reshape(-1), acc["example_value"].reshape(-1)
        better = (example[cells] < 0) | (ids < example[cells])
        example[cells[better]] = ids[better]
        example_value[cells[better]] = values[better]

    def merge_accumulators(self, accumulators: Iterable[dict | None]) -> dict | None:
        merged = None
        for acc in accumulators:
            if acc is None:
                continue
            if merged is None:
                merged = {name: np.array(value, copy=True) if isinstance(value, np.ndarray) else value
                          for name, value in acc.items()}
                continue
            for name in ("sums", "counts", "hist", "sentences", "tokens"):
                merged[name] = merged[name] + acc[name]
            merged["low"] = np.minimum(merged["low"], acc["low"])
            merged["high"] = np.maximum(merged["high"], acc["high"])
            cells = np.flatnonzero(acc["example"].reshape(-1) >= 0)
            self._merge_examples(merged, cells, acc["example"].reshape(-1)[cells],
                                 acc["example_value"].reshape(-1)[cells])
        return merged

    def extract_output(self, acc: dict | None) -> dict | None:
        """``means`` (K, L, H), ``deciles`` (K, L, H, 11), ``examples`` / ``example_values`` (L, H, 11), and the
        counts; None for an empty corpus."""
        if acc is None:
            return None
        means = acc["sums"] / np.maximum(acc["counts"], 1)[:, None, None]
        deciles = self._deciles(acc)
        examples, example_values = self._decile_examples(acc, deciles[self.example])
        return {"means": means, "deciles": deciles, "examples": examples, "example_values": example_values,
                "sentences": acc["sentences"], "tokens": acc["tokens"]}

    def _deciles(self, acc: dict) -> np.ndarray:
        hist = acc["hist"]  # (K, L, H, B)
        total = hist.sum(axis=-1)  # (K, L, H)
        cumulative = np.cumsum(hist, axis=-1)
        low, high = self.ranges[:, 0, None, None], self.ranges[:, 1, None, None]
        width = (high - low) / self.bins
        out = np.empty((*hist.shape[:3], DECILES))
        out[..., 0], out[..., -1] = acc["low"], acc["high"]
        for decile in range(1, DECILES - 1):
            target = total * decile / (DECILES - 1)  # (K, L, H)
            b = np.minimum((cumulative < target[..., None]).sum(axis=-1), self.bins - 1)
            before = np.take_along_axis(cumulative, b[..., None], -1)[..., 0] - \
                np.take_along_axis(hist, b[..., None], -1)[..., 0]
            inside = np.take_along_axis(hist, b[..., None], -1)[..., 0]
            fraction = np.clip((target - before) / np.maximum(inside, 1), 0.0, 1.0)
            out[..., decile] = np.clip(low + (b + fraction) * width, acc["low"], acc["high"])
        return out

    @staticmethod
    def _decile_examples(acc: dict, deciles: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(L, H, 11) sentence and value: of the bins' examples, the one nearest each decile (``deciles`` (L, H,
        11))."""
        have = acc["example"] >= 0  # (L, H, B)
        distance = np.abs(acc["example_value"][:, :, None, :] - deciles[..., None])  # (L, H, 11, B)
        distance = np.where(have[:, :, None, :], distance, np.inf)
        nearest = distance.argmin(axis=-1)  # (L, H, 11)
        examples = np.take_along_axis(acc["example"], nearest, axis=-1)
        values = np.take_along_axis(acc["example_value"], nearest, axis=-1)
        return examples, values


def summary_input(result: BatchResult) -> tuple:
    """What ``HeadSummaryFn`` reads of a batch (nothing per token)."""
    return result.sentence, result.sums, result.counts, result.n_tokens


def write_summary(summary: dict | None, folder: Path, options: CorpusOptions) -> None:
    """``head_summary.parquet`` and ``decile_examples.parquet`` from ``HeadSummaryFn``'s output."""
    if summary is None:
        return
    means, deciles = summary["means"], summary["deciles"]  # (K, L, H), (K, L, H, 11)
    k, layers, heads = means.shape
    layer, head = np.meshgrid(np.arange(layers), np.arange(heads), indexing="ij")
    columns = {
        "layer": pa.array(np.tile(layer.ravel(), k), pa.int16()),
        "head": pa.array(np.tile(head.ravel(), k), pa.int16()),
        "statistic": pa.array(np.repeat(STATISTIC_LIST, layers * heads), pa.string()),
        "mean": pa.array(means.ravel(), pa.float64()),
    }
    columns.update({f"q{d}": pa.array(deciles[..., d].ravel(), pa.float64()) for d in range(DECILES)})
    columns["n_sentences"] = pa.array(np.full(k * layers * heads, summary["sentences"]), pa.int64())
    _write_table(pa.table(columns, schema=SCHEMAS[HEAD_SUMMARY]), folder / HEAD_SUMMARY)
    examples, values = summary["examples"], summary["example_values"]  # (L, H, 11)
    cells = layers * heads * DECILES
    _write_table(pa.table({
        "layer": pa.array(np.repeat(np.arange(layers), heads * DECILES), pa.int16()),
        "head": pa.array(np.tile(np.repeat(np.arange(heads), DECILES), layers), pa.int16()),
        "statistic": pa.array([options.decile_statistic] * cells, pa.string()),
        "decile": pa.array(np.tile(np.arange(DECILES), layers * heads), pa.int8()),
        "value": pa.array(values.ravel(), pa.float64()),
        "sentence": pa.array(examples.ravel(), pa.int64()),
    }, schema=SCHEMAS[DECILE_EXAMPLES]), folder / DECILE_EXAMPLES)


def _write_table(table: pa.Table, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path, row_group_size=OUTPUT_ROW_GROUP)


# ---------------------------------------------------------------------------------------------------------------
# Top edges and the query/key sample


def edge_elements(result: BatchResult) -> Iterator[tuple[int, tuple]]:
    """``(flat head, (weight, sentence, query, key))`` of each candidate edge of a batch."""
    edges = result.edges
    for head, weight, sentence, query, key in zip(edges["head"].tolist(), edges["weight"].tolist(),
                                                 edges["sentence"].tolist(), edges["query"].tolist(),
                                                 edges["key"].tolist()):
        yield head, (weight, sentence, query, key)


def edge_rank(edge: tuple) -> tuple:
    """Top's order of edges: strongest first, then lowest sentence, query, key."""
    weight, sentence, query, key = edge
    return weight, -sentence, -query, -key


def write_top_edges(per_head: list[tuple[int, list[tuple]]], folder: Path, heads: int) -> None:
    """``top_edges.parquet`` from ``Top.PerKey``'s lists (any order of heads)."""
    rows = [(head // heads, head % heads, rank, *edge)
            for head, edges in sorted(per_head) for rank, edge in enumerate(sorted(edges, key=edge_rank,
                                                                                     reverse=True))]
    layer, head, rank, weight, sentence, query, key = (list(column) for column in zip(*rows)) if rows else \
        ([],) * 7
    _write_table(pa.table({
        "layer": pa.array(layer, pa.int16()), "head": pa.array(head, pa.int16()), "rank": pa.array(rank, pa.int16()),
        "weight": pa.array(weight, pa.float32()), "sentence": pa.array(sentence, pa.int64()),
        "query": pa.array(query, pa.int32()), "key": pa.array(key, pa.int32()),
    }, schema=SCHEMAS[TOP_EDGES]), folder / TOP_EDGES)


def qk_elements(result: BatchResult) -> Iterator[tuple]:
    """``(priority, sentence, position, token, queries (L, H, dh), keys (L, Hkv, dh))`` of each sampled token. The
    vectors are copies, not views: a view would keep its whole batch's (M, L, H, dh) arrays alive for as long as
    the sample holds that one token, so the memory held would grow with the batches the sample came from."""
    qk = result.qk
    for row, priority in enumerate(qk["priority"].tolist()):
        yield (priority, int(qk["sentence"][row]), int(qk["position"][row]), str(qk["token"][row]),
               qk["queries"][row].copy(), qk["keys"][row].copy())


def sample_rank(element: tuple) -> int:
    """Top's order of sampled tokens: the lowest priority is kept first."""
    return -element[0]


def joint_pca(rows: np.ndarray) -> np.ndarray:
    """(G, M, 2): the 2-D PCA of each of G groups of M rows (G, M, dh), e.g. one head's queries and keys together:
    the centred rows on the two leading eigenvectors of their covariance (one stacked ``eigh`` for every group: a
    loop of small SVDs is slow where BLAS threads wait on busy cores). Each axis's sign is fixed (its largest
    loading positive), so the picture is reproducible."""
    centred = rows.astype(np.float64) - rows.mean(axis=1, keepdims=True)
    covariance = np.einsum("gmd,gme->gde", centred, centred)  # (G, dh, dh)
    _, vectors = np.linalg.eigh(covariance)  # ascending eigenvalues: the last two columns lead
    axes = vectors[:, :, ::-1][:, :, :2]  # (G, dh, 2)
    largest = np.take_along_axis(axes, np.abs(axes).argmax(axis=1)[:, None, :], axis=1)  # (G, 1, 2)
    axes = axes * np.where(largest < 0, -1.0, 1.0)
    return np.einsum("gmd,gdk->gmk", centred, axes)


def require_umap():
    """The ``umap`` module; ``CorpusError`` with the install hint when it cannot be imported (``--umap`` on a
    machine without requirements-umap.txt)."""
    try:
        import umap
    except ImportError:
        raise CorpusError(UMAP_INSTALL) from None
    return umap


def head_umap(rows: np.ndarray) -> np.ndarray:
    """(M, 2) float32: the UMAP (``UMAP_PARAMETERS``, seeded) of one head's M rows (M, dh), its queries and keys
    together. Fewer than 16 rows: random initialisation (UMAP's spectral one needs more) and at most M - 1
    neighbours; fewer than 3 rows have no UMAP: their PCA (``joint_pca``) is written instead."""
    if len(rows) < 3:
        return joint_pca(rows[None])[0].astype(np.float32)
    import warnings

    umap = require_umap()
    parameters = {**UMAP_PARAMETERS, "n_neighbors": min(UMAP_PARAMETERS["n_neighbors"], len(rows) - 1)}
    with warnings.catch_warnings():  # "n_jobs overridden to 1 by setting random_state": single-threaded, as meant
        warnings.simplefilter("ignore", UserWarning)
        reducer = umap.UMAP(n_components=2, init="spectral" if len(rows) >= 16 else "random", **parameters)
        return np.asarray(reducer.fit_transform(rows.astype(np.float32)), dtype=np.float32)


def write_qk_sample(sample: list[tuple], folder: Path, facts: ModelFacts, umap: bool = False) -> None:
    """``qk_sample.parquet``: per head, the sampled tokens' queries and keys (the key/value head it reads) and
    their joint 2-D PCA; with ``umap``, ``qk_umap.parquet``: their joint UMAP, row for row."""
    sample = sorted(sample, key=lambda element: element[0])
    kv_of = np.arange(facts.heads) // (facts.heads // facts.key_value_heads)
    sentence = np.array([e[1] for e in sample], dtype=np.int64)
    position = np.array([e[2] for e in sample], dtype=np.int32)
    token = [e[3] for e in sample]
    n = len(sample)
    queries = np.stack([e[4] for e in sample]) if n else np.zeros((0, facts.layers, facts.heads, facts.head_dim))
    keys = np.stack([e[5] for e in sample]) if n else np.zeros((0, facts.layers, facts.key_value_heads,
                                                              facts.head_dim))
    folder.mkdir(parents=True, exist_ok=True)
    schema, umap_schema = SCHEMAS[QK_SAMPLE], SCHEMAS[QK_UMAP]
    with pq.ParquetWriter(folder / QK_SAMPLE, schema) as writer, \
            (pq.ParquetWriter(folder / QK_UMAP, umap_schema) if umap else nullcontext()) as umap_writer:
        for layer in range(facts.layers):
            both = np.concatenate([queries[:, layer], keys[:, layer][:, kv_of]]).transpose(1, 0, 2)  # (H, 2N, dh)
            projected = joint_pca(both) if n else np.zeros((facts.heads, 0, 2))
            for head in range(facts.heads):
                x, y = projected[head, :, 0], projected[head, :, 1]
                vectors = both[head].astype(np.float32)
                layer_head = {"layer": pa.array(np.full(2 * n, layer), pa.int16()),
                              "head": pa.array(np.full(2 * n, head), pa.int16())}
                writer.write_table(pa.table({
                    **layer_head,
                    "kind": pa.array(["query"] * n + ["key"] * n, pa.string()),
                    "sentence": pa.array(np.tile(sentence, 2), pa.int64()),
                    "position": pa.array(np.tile(position, 2), pa.int32()),
                    "token": pa.array(token * 2, pa.string()),
                    "x": pa.array(x, pa.float32()), "y": pa.array(y, pa.float32()),
                    "vector": pa.ListArray.from_arrays(
                        pa.array(np.arange(0, vectors.size + 1, vectors.shape[1], dtype=np.int32)),
                        pa.array(vectors.reshape(-1), pa.float32())),
                }, schema=schema))
                if umap:
                    mapped = head_umap(vectors) if n else np.zeros((0, 2), np.float32)
                    umap_writer.write_table(pa.table({**layer_head, "x": pa.array(mapped[:, 0], pa.float32()),
                                                      "y": pa.array(mapped[:, 1], pa.float32())},
                                                     schema=umap_schema))


# ---------------------------------------------------------------------------------------------------------------
# The Beam pipeline


def build_pipeline(pipeline, chunks, options: CorpusOptions, partial: Path, facts: ModelFacts) -> None:
    """Add the corpus graph (module docstring) to ``pipeline``, reading ``chunks`` (``corpus.sources.Chunk``) and
    writing into ``partial``."""
    final = partial / FINAL
    results = (pipeline
               | "Chunks" >> beam.Create(list(chunks))
               | "Spread" >> beam.Reshuffle()
               | "Read" >> beam.FlatMap(read_chunk, options.batch_size)
               | "Trace" >> RunInference(HeadlightModelHandler(options)))
    _ = results | "WriteParts" >> beam.ParDo(WriteParts(str(partial)))
    _ = (results
         | "SummaryInput" >> beam.Map(summary_input)
         | "Summary" >> beam.CombineGlobally(HeadSummaryFn(options))
         | "WriteSummary" >> beam.Map(write_summary, final, options))
    _ = (results
         | "Edges" >> beam.FlatMap(edge_elements)
         | "TopEdges" >> beam.combiners.Top.PerKey(options.top_k, key=edge_rank)
         | "AllHeads" >> beam.combiners.ToList()
         | "WriteTopEdges" >> beam.Map(write_top_edges, final, facts.heads))
    _ = (results
         | "QueriesKeys" >> beam.FlatMap(qk_elements)
         | "Sample" >> beam.combiners.Top.Of(max(options.sample_per_head, 1), key=sample_rank)
         | "WriteSample" >> beam.Map(write_sample, final, facts, options.sample_per_head, options.umap))


def write_sample(sample: list[tuple], folder: Path, facts: ModelFacts, size: int, umap: bool = False) -> None:
    """``write_qk_sample`` of the ``size`` first (0: an empty sample file), with its UMAP when ``umap``."""
    write_qk_sample(sample[:size], folder, facts, umap)


class WriteParts(beam.DoFn):
    """A ``PartsWriter`` per bundle."""

    def __init__(self, partial: str) -> None:
        super().__init__()
        self.partial = partial

    def start_bundle(self) -> None:
        self.writer = PartsWriter(Path(self.partial))

    def process(self, result: BatchResult):
        self.writer.write(result)
        return []

    def finish_bundle(self) -> None:
        self.writer.close()


# ---------------------------------------------------------------------------------------------------------------
# Finishing the index: parts in input order, FAISS, the small files moved in


def sorted_groups(folder: Path) -> list[tuple[int, Path, int, int]]:
    """``(first sentence, file, row group, rows)`` of every row group (a batch) of the part files in ``folder``,
    in input order (batches never overlap)."""
    groups = []
    for path in sorted(folder.glob("*.parquet")):
        metadata = pq.ParquetFile(path).metadata
        column = metadata.schema.to_arrow_schema().get_field_index("sentence")
        for group in range(metadata.num_row_groups):
            row_group = metadata.row_group(group)
            if row_group.num_rows:
                groups.append((int(row_group.column(column).statistics.min), path, group, row_group.num_rows))
    return sorted(groups, key=lambda item: item[0])


def read_groups(groups: list[tuple[int, Path, int, int]], columns: list[str] | None = None,
                use_threads: bool = True) -> Iterator[pa.Table]:
    """The row groups' tables in the given order, one at a time (``use_threads``: decode columns in parallel)."""
    files: dict[Path, pq.ParquetFile] = {}
    for _, path, group, _ in groups:
        if path not in files:
            files[path] = pq.ParquetFile(path)
        yield files[path].read_row_group(group, columns=columns, use_threads=use_threads)


def copy_in_order(groups, target: Path, max_rows: int | None = None) -> list[Path]:
    """Write the row groups in order into ``target`` (rows buffered to ``OUTPUT_ROW_GROUP`` per row group); with
    ``max_rows``, into numbered files ``target``-00000.parquet ... of at most about that many rows. Returns the
    files written."""
    written: list[Path] = []
    writer, rows_in_file, buffer = None, 0, []

    def flush() -> None:
        if buffer:
            writer.write_table(pa.concat_tables(buffer), row_group_size=OUTPUT_ROW_GROUP)
            buffer.clear()

    for table in read_groups(groups):
        if writer is None or (max_rows is not None and rows_in_file >= max_rows):
            flush()
            if writer is not None:
                writer.close()
            path = target if max_rows is None else target.parent / f"{target.name}-{len(written):05d}.parquet"
            path.parent.mkdir(parents=True, exist_ok=True)
            writer, rows_in_file = pq.ParquetWriter(path, table.schema), 0
            written.append(path)
        buffer.append(table)
        rows_in_file += len(table)
        if sum(len(t) for t in buffer) >= OUTPUT_ROW_GROUP:
            flush()
    flush()
    if writer is not None:
        writer.close()
    return written


def build_contexts(groups, folder: Path, layer: int, width: int, exact_max: int,
                   shard_rows: int = DEFAULT_SHARD_ROWS) -> int:
    """``contexts/layer-<l>.parquet`` and the layer's FAISS files from the parts' row groups, in input order, a row
    group at a time: row r of the table is FAISS id r of ``layer-<l>.faiss`` (exact, up to ``exact_max`` rows), else
    id r - s * ``shard_rows`` of shard s (IVF-PQ trained once on ``training_sample``; ``layer-<l>.shard-<s>.faiss``,
    ``corpus.vectors.build_context_index``). Returns the rows."""
    from corpus.vectors import build_context_index

    index_path, rows_path = (folder / name for name in context_files(layer))
    rows_path.parent.mkdir(parents=True, exist_ok=True)
    total = sum(group[3] for group in groups)
    with pq.ParquetWriter(rows_path, SCHEMAS[CONTEXTS_DIR]) as writer:

        def shards() -> Iterator[np.ndarray]:
            release_memory()  # asked for after an IVF-PQ index is trained: what training freed goes back first
            done = 0
            for table in read_groups(groups):
                writer.write_table(pa.table({
                    "row": pa.array(np.arange(done, done + len(table)), pa.int64()),
                    "sentence": table["sentence"], "position": table["position"], "token": table["token"],
                }, schema=SCHEMAS[CONTEXTS_DIR]))
                done += len(table)
                yield vectors_of(table, width)

        build_context_index(shards(), width, index_path, exact_max, rows=total, shard_rows=shard_rows,
                            sample=(lambda: training_sample(groups, width, total)) if total > exact_max else None)
    return total


def vectors_of(table: pa.Table, width: int) -> np.ndarray:
    """(N, width) float32: a contexts part's ``vector`` column."""
    column = table["vector"].combine_chunks()
    return column.flatten().to_numpy(zero_copy_only=False).reshape(len(table), width)


def training_sample(groups, width: int, total: int) -> np.ndarray:
    """An IVF-PQ training sample from the whole corpus: every ``stride``-th row (rows 0, stride, 2 stride, ...),
    about ``corpus.vectors.TRAIN_PER_LIST`` per list of the index ``total`` rows get (the parts read once more, a
    row group at a time, into one array allocated up front: no list of pieces and concatenated copy beside it; one
    column, decoded on this thread: threaded reads left ~15 MB more behind)."""
    from corpus.vectors import TRAIN_PER_LIST, ivf_parameters

    stride = max(total // (TRAIN_PER_LIST * ivf_parameters(total, width)["nlist"]), 1)
    sample = np.empty((len(range(0, total, stride)), width), dtype=np.float32)
    start = filled = 0
    for number, table in enumerate(read_groups(groups, columns=["vector"], use_threads=False)):
        chosen = np.arange(-start % stride, len(table), stride)
        sample[filled:filled + len(chosen)] = vectors_of(table, width)[chosen]
        filled, start = filled + len(chosen), start + len(table)
        if number % RELEASE_GROUPS == RELEASE_GROUPS - 1:
            pa.default_memory_pool().release_unused()  # Arrow's pool keeps the pages of freed reads otherwise
    return sample


def finish_parts(partial: Path, folder: Path, facts: ModelFacts, options: CorpusOptions) -> dict:
    """Put the parts into ``folder`` in input order (sentences, head_stats, contexts + FAISS) and move the
    combiners' files in (memory released before each step: ``release_memory``). Returns the counts for the
    manifest."""
    release_memory()
    parts = partial / PARTS
    sentence_groups = sorted_groups(parts / "sentences")
    copy_in_order(sentence_groups, folder / SENTENCES)
    head_groups = sorted_groups(parts / "head_stats")
    copy_in_order(head_groups, folder / HEAD_STATS_DIR / "part", HEAD_STATS_PART_ROWS)
    contexts = {}
    for layer in options.layers_of(facts.layers):
        release_memory()
        groups = sorted_groups(parts / f"layer-{layer}")
        contexts[str(layer)] = build_contexts(groups, folder, layer, facts.width, options.exact_max,
                                              options.shard_rows)
    for path in sorted((partial / FINAL).iterdir()):
        os.replace(path, folder / path.name)
    tokens = sum(int(table["n_tokens"].to_numpy().sum()) for table in read_groups(sentence_groups, ["n_tokens"]))
    return {"sentences": sum(g[3] for g in sentence_groups), "tokens": tokens,
            "head_stats_rows": sum(g[3] for g in head_groups), "contexts": contexts}


def remove_partial(partial: Path) -> None:
    shutil.rmtree(partial, ignore_errors=True)

