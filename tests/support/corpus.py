"""A small corpus index written in the documented format (corpus/format.py) from real traces, without the Beam
pipeline: what the reader's tests open, and break on purpose. Every number is the analysis module's own
(``head_report`` per sentence, ``corpus_head_report`` for the means), so the reader's answers can be compared with
them."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from analysis.report import corpus_head_report, head_report, iter_traces
from corpus import format as fmt
from corpus.format import model_checksum
from corpus.vectors import build_context_index
from encoder.attention_store import RecomputedQueriesKeys

OPTIONS = {"max_tokens": 128, "batch_size": 8, "top_k": 5, "decile_statistic": "previous", "sample_per_head": 40,
           "context_layers": [0, 6], "exact_max": 100_000, "runner": "test-writer", "input": "sentences.txt",
           "column": None}


def write_test_index(model, sentences: list[str], folder: Path, **options) -> dict:
    """Write the index of ``sentences`` traced by ``model`` into ``folder``; return its manifest. ``options``
    override ``OPTIONS`` (e.g. ``context_layers``, ``exact_max``)."""
    options = {**OPTIONS, **options}
    traces = list(iter_traces(model, sentences, batch_size=options["batch_size"], max_tokens=options["max_tokens"]))
    reports = [head_report(trace) for trace in traces]
    layers, heads = reports[0].num_layers, reports[0].num_heads
    folder.mkdir(parents=True, exist_ok=True)
    tables = {
        fmt.SENTENCES: _sentences(traces),
        f"{fmt.HEAD_STATS_DIR}/part-00000.parquet": _head_stats(traces, reports),
        fmt.HEAD_SUMMARY: _head_summary(traces, reports),
        fmt.TOP_EDGES: _top_edges(traces, options["top_k"]),
        fmt.DECILE_EXAMPLES: _decile_examples(reports, options["decile_statistic"]),
        fmt.QK_SAMPLE: _qk_sample(model, traces, options["sample_per_head"]),
    }
    counts = {"sentences": len(traces), "tokens": sum(len(t.tokens) for t in traces),
              "head_stats_rows": len(traces) * layers * heads, "contexts": {}}
    for layer in options["context_layers"]:
        index_file, rows_file = fmt.context_files(layer)
        (folder / fmt.CONTEXTS_DIR).mkdir(exist_ok=True)
        build_context_index((t.hidden[layer] for t in traces), traces[0].hidden.shape[-1], folder / index_file,
                            exact_max=options["exact_max"])
        tables[rows_file] = _context_rows(traces)
        counts["contexts"][str(layer)] = counts["tokens"]
    files = {}
    for name, table in tables.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(table, folder / name, row_group_size=64)
        files[name] = {"bytes": (folder / name).stat().st_size, "rows": table.num_rows}
    for layer in options["context_layers"]:
        name = fmt.context_files(layer)[0]
        files[name] = {"bytes": (folder / name).stat().st_size, "rows": None}
    manifest = {"format": fmt.FORMAT, "version": fmt.VERSION,
                "model": {"name": model.name, "checksum": model_checksum(model), "layers": layers, "heads": heads,
                          "width": int(traces[0].hidden.shape[-1]), "key_value_heads": traces[0].key_value_heads,
                          "first_special": bool(traces[0].special[0])},
                "options": options, "counts": counts, "files": files}
    write_manifest(folder, manifest)
    return manifest


def write_manifest(folder: Path, manifest: dict) -> None:
    """The manifest, last and atomically (a temporary file, fsync, ``os.replace``)."""
    temporary = folder / (fmt.MANIFEST + ".tmp")
    with temporary.open("w", encoding="utf-8") as handle:
        json.dump(manifest, handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, folder / fmt.MANIFEST)


def _table(name: str, columns: dict) -> pa.Table:
    schema = fmt.SCHEMAS[name]
    return pa.table({field.name: pa.array(columns[field.name], field.type) for field in schema}, schema=schema)


def _sentences(traces) -> pa.Table:
    return _table(fmt.SENTENCES, {"sentence": range(len(traces)), "text": [t.text for t in traces],
                                  "tokens": [list(t.tokens) for t in traces],
                                  "special": [t.special.tolist() for t in traces],
                                  "n_tokens": [len(t.tokens) for t in traces]})


def _head_stats(traces, reports) -> pa.Table:
    layers, heads = reports[0].num_layers, reports[0].num_heads
    grid = np.indices((len(traces), layers, heads)).reshape(3, -1)
    columns = {"sentence": grid[0], "layer": grid[1], "head": grid[2],
               "n_queries": np.repeat([len(t.tokens) for t in traces], layers * heads)}
    for name in fmt.STATISTIC_NAMES:
        columns[name] = np.stack([r[name] for r in reports]).reshape(-1)
    return _table(fmt.HEAD_STATS_DIR, columns)


def _head_summary(traces, reports) -> pa.Table:
    corpus = corpus_head_report(traces, distances=False)
    rows = []
    for name in fmt.STATISTIC_NAMES:
        values = np.stack([r[name] for r in reports])  # (N, L, H)
        deciles = np.quantile(values, np.linspace(0, 1, fmt.DECILES), axis=0)  # (11, L, H)
        for layer, head in np.ndindex(values.shape[1:]):
            rows.append({"layer": layer, "head": head, "statistic": name, "mean": corpus[name][layer, head],
                         **{f"q{i}": deciles[i, layer, head] for i in range(fmt.DECILES)},
                         "n_sentences": len(reports)})
    return _table(fmt.HEAD_SUMMARY, {key: [row[key] for row in rows] for key in rows[0]})


def _top_edges(traces, top_k: int) -> pa.Table:
    layers, heads = traces[0].attention.shape[:2]
    rows = []
    for layer, head in np.ndindex(layers, heads):
        edges = [(float(w), s, q, k) for s, t in enumerate(traces)
                 for (q, k), w in np.ndenumerate(np.asarray(t.attention[layer, head]))]
        for rank, (weight, sentence, query, key) in enumerate(sorted(edges, key=lambda e: -e[0])[:top_k]):
            rows.append((layer, head, rank, weight, sentence, query, key))
    names = ("layer", "head", "rank", "weight", "sentence", "query", "key")
    return _table(fmt.TOP_EDGES, dict(zip(names, zip(*rows))))


def _decile_examples(reports, statistic: str) -> pa.Table:
    values = np.stack([r[statistic] for r in reports])  # (N, L, H)
    deciles = np.quantile(values, np.linspace(0, 1, fmt.DECILES), axis=0)
    rows = []
    for layer, head in np.ndindex(values.shape[1:]):
        for decile in range(fmt.DECILES):
            sentence = int(np.argmin(np.abs(values[:, layer, head] - deciles[decile, layer, head])))
            rows.append((layer, head, statistic, decile, values[sentence, layer, head], sentence))
    names = ("layer", "head", "statistic", "decile", "value", "sentence")
    return _table(fmt.DECILE_EXAMPLES, dict(zip(names, zip(*rows))))


def _qk_sample(model, traces, per_head: int) -> pa.Table:
    stores = [RecomputedQueriesKeys(model.model, t.hidden) for t in traces]
    layers, heads = traces[0].attention.shape[:2]
    rows = []
    for layer, head in np.ndindex(layers, heads):
        points = []
        for sentence, (trace, store) in enumerate(zip(traces, stores)):
            queries, keys = store.layer(layer)
            for kind, vectors in (("query", queries[:, head]), ("key", keys[:, head])):
                points += [(kind, sentence, p, trace.tokens[p], vectors[p]) for p in range(len(trace.tokens))]
        points = [p for kind in fmt.QK_KINDS for p in [q for q in points if q[0] == kind][:per_head]]
        stacked = np.stack([p[4] for p in points]).astype(np.float64)
        centred = stacked - stacked.mean(axis=0)
        _, _, basis = np.linalg.svd(centred, full_matrices=False)
        xy = centred @ basis[:2].T
        rows += [(layer, head, *p[:4], x, y, p[4].tolist()) for p, (x, y) in zip(points, xy)]
    names = ("layer", "head", "kind", "sentence", "position", "token", "x", "y", "vector")
    return _table(fmt.QK_SAMPLE, dict(zip(names, zip(*rows))))


def _context_rows(traces) -> pa.Table:
    pairs = [(s, p, token) for s, t in enumerate(traces) for p, token in enumerate(t.tokens)]
    sentences, positions, tokens = zip(*pairs)
    return _table(fmt.CONTEXTS_DIR, {"row": range(len(pairs)), "sentence": sentences, "position": positions,
                                     "token": tokens})
