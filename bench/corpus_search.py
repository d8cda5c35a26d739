"""Nearest-context search on a synthetic corpus: ``python -m bench.corpus_search [--rows N] [--shard-rows S]
[--threads T]``; the memory of building alone: ``python -m bench.corpus_search --build-memory 1000000,4000000
[--shard-rows S]``.

A Gaussian mixture of ``--rows`` vectors of width 384 (MiniLM's), 1,000 clusters, so IVF lists mean something,
spread mostly along a shared 32-dimensional subspace (hidden states have a low intrinsic dimension; isotropic noise
in 384 dimensions makes every neighbour within a cluster nearly tied, which no compressed index can rank);
made a shard at a time from seeded generators (the same shards again for exact search, never the whole set at once).
The index is built by ``corpus.vectors.build_context_index`` (IVF-PQ past ``DEFAULT_EXACT_MAX`` rows, trained on
64 x nlist fresh mixture samples as the pipeline's stride of the corpus, in files of ``--shard-rows`` rows), read
back through ``read_context_index`` / ``read_context_shards`` (every file checked first), then queried with 200 fresh
mixture samples, one at a time: latency median and p95, and recall@10 against exact (brute-force cosine) search, at
the built nprobe and a few others. Prints two markdown tables.

``--build-memory``: each size built alone in a fresh process (nothing searched), its peak resident memory
(``ru_maxrss``) against ``--shard-rows`` and against one file of every row (``shard_rows`` = rows: the layer's codes
held whole, as an unsharded build).
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import faiss
import numpy as np

from bench.common import print_table
from corpus.format import DEFAULT_EXACT_MAX, DEFAULT_SHARD_ROWS, context_index_files
from corpus.vectors import (
    TRAIN_PER_LIST,
    build_context_index,
    index_info,
    ivf_parameters,
    normalised,
    read_context_index,
    read_context_shards,
    search,
)

ROOT = Path(__file__).resolve().parent.parent
WIDTH, CLUSTERS, SHARD, QUERIES, K = 384, 1000, 50_000, 200, 10
SUBSPACE, SPREAD, NOISE = 32, 0.1, 0.05


def _centres(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(CLUSTERS, WIDTH) centres and the (SUBSPACE, WIDTH) basis of the spread, float32."""
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(CLUSTERS, WIDTH)).astype(np.float32),
            rng.normal(0.0, SPREAD, (SUBSPACE, WIDTH)).astype(np.float32))


def _samples(centres: tuple[np.ndarray, np.ndarray], count: int, seed: int) -> np.ndarray:
    """(count, WIDTH) float32: each row a random centre, plus a N(0, 1) mix of the basis, plus N(0, NOISE^2)."""
    rng = np.random.default_rng(seed)
    middle, basis = centres
    spread = rng.standard_normal((count, SUBSPACE), dtype=np.float32) @ basis
    noise = rng.standard_normal((count, WIDTH), dtype=np.float32) * NOISE
    return middle[rng.integers(0, CLUSTERS, count)] + spread + noise


def _shards(centres: tuple[np.ndarray, np.ndarray], rows: int):
    for number, begin in enumerate(range(0, rows, SHARD)):
        yield _samples(centres, min(SHARD, rows - begin), seed=1000 + number)


def _exact(centres: tuple[np.ndarray, np.ndarray], rows: int, queries: np.ndarray) -> np.ndarray:
    """(Q, K) int64: the true top-K rows by cosine, merged shard by shard."""
    best_scores = np.full((len(queries), K), -np.inf, np.float32)
    best_ids = np.zeros((len(queries), K), np.int64)
    begin = 0
    for shard in _shards(centres, rows):
        flat = faiss.IndexFlatIP(WIDTH)
        flat.add(normalised(shard, WIDTH))
        scores, ids = search(flat, queries, K)
        scores = np.concatenate([best_scores, scores], axis=1)
        ids = np.concatenate([best_ids, ids + begin], axis=1)
        order = np.argsort(-scores, axis=1, kind="stable")[:, :K]
        best_scores, best_ids = np.take_along_axis(scores, order, 1), np.take_along_axis(ids, order, 1)
        begin += len(shard)
    return best_ids


def _build(folder: Path, rows: int, exact_max: int, shard_rows: int) -> dict:
    """The layer-0 index of ``rows`` mixture vectors in ``folder``, trained on fresh samples (64 x nlist)."""
    centres = _centres()
    nlist = ivf_parameters(rows, WIDTH)["nlist"]
    return build_context_index(_shards(centres, rows), WIDTH, folder / "contexts/layer-0.faiss", exact_max=exact_max,
                               rows=rows, shard_rows=shard_rows,
                               sample=lambda: _samples(centres, TRAIN_PER_LIST * nlist, seed=99))


def _read(folder: Path, rows: int, exact_max: int, shard_rows: int):
    """The index ``_build`` wrote, every file checked before FAISS reads it."""
    files = [(folder / name, count) for name, count in context_index_files(0, rows, exact_max, shard_rows)]
    return read_context_index(*files[0], WIDTH) if rows <= exact_max else read_context_shards(files, WIDTH)


def _query_row(index, queries: np.ndarray, truth: np.ndarray, nprobe: int | None) -> dict:
    if nprobe is not None:
        index.nprobe = nprobe
    search(index, queries[:5], K)  # warm
    times, cpu, found = [], [], []
    for query in queries:
        start, started = time.perf_counter(), time.process_time()
        _, ids = search(index, query, K)
        times.append(1000 * (time.perf_counter() - start))
        cpu.append(1000 * (time.process_time() - started))
        found.append(ids[0])
    recall = np.mean([len(set(f) & set(t)) / K for f, t in zip(found, truth)])
    return {"nprobe": nprobe if nprobe is not None else "exact",
            "median ms": f"{statistics.median(times):.2f}",
            "p95 ms": f"{np.percentile(times, 95):.2f}", "CPU ms median": f"{statistics.median(cpu):.2f}",
            "recall@10": f"{recall:.3f}"}


def main(rows: int = 1_000_000, exact_max: int = DEFAULT_EXACT_MAX, shard_rows: int = DEFAULT_SHARD_ROWS) -> list[dict]:
    centres = _centres()
    queries = _samples(centres, QUERIES, seed=7)
    with tempfile.TemporaryDirectory() as temporary:
        folder = Path(temporary)
        (folder / "contexts").mkdir()
        start, cpu = time.perf_counter(), time.process_time()
        info = _build(folder, rows, exact_max, shard_rows)
        build_s, build_cpu = time.perf_counter() - start, time.process_time() - cpu
        build_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        size_mb = sum(path.stat().st_size for path in (folder / "contexts").iterdir()) / 2**20
        start = time.perf_counter()
        index = _read(folder, rows, exact_max, shard_rows)
        open_s = time.perf_counter() - start
    start = time.perf_counter()
    truth = _exact(centres, rows, queries)
    exact_s = time.perf_counter() - start
    shape = ", ".join(f"{key} {value}" for key, value in index_info(index).items() if key not in ("rows", "width"))
    print_table(f"Nearest contexts: {rows:,} vectors of width {WIDTH} ({CLUSTERS:,}-cluster Gaussian mixture), "
                f"{faiss.omp_get_max_threads()} FAISS thread(s)", [{
                    "index": shape, "build s (CPU s)": f"{build_s:.1f} ({build_cpu:.1f})",
                    "peak RSS while building MB": f"{build_peak:.0f}", "files MB": f"{size_mb:.1f}",
                    "open (checked, read) s": f"{open_s:.2f}",
                    "exact search, 200 queries, s": f"{exact_s:.1f}"}])
    probes = [None] if info["kind"] == "exact" else sorted({info["nprobe"] // 4, info["nprobe"] // 2, info["nprobe"],
                                                             info["nprobe"] * 2, info["nprobe"] * 4} - {0})
    return [_query_row(index, queries, truth, nprobe) for nprobe in probes]


def build_only(rows: int, exact_max: int, shard_rows: int) -> dict:
    """One build in this process, nothing searched: peak resident MB (``ru_maxrss``), seconds, files."""
    with tempfile.TemporaryDirectory() as temporary:
        folder = Path(temporary)
        (folder / "contexts").mkdir()
        start, cpu = time.perf_counter(), time.process_time()
        info = _build(folder, rows, exact_max, shard_rows)
        size_mb = sum(path.stat().st_size for path in (folder / "contexts").iterdir()) / 2**20
    return {"rows": rows, "shard_rows": shard_rows, "shards": info["shards"], "nlist": info["nlist"],
            "wall s": round(time.perf_counter() - start), "CPU s": round(time.process_time() - cpu),
            "files MB": round(size_mb), "peak MB": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}


def build_memory(sizes: list[int], exact_max: int, shard_rows: int) -> list[dict]:
    """Each size built in a fresh process with ``shard_rows``, then with one file of every row."""
    found = []
    for rows in sizes:
        for shards in (shard_rows, rows):
            done = subprocess.run([sys.executable, "-m", "bench.corpus_search", "--build-only", str(rows),
                                   "--exact-max", str(exact_max), "--shard-rows", str(shards)],
                                  capture_output=True, text=True, check=True, cwd=ROOT)
            found.append(json.loads(done.stdout.strip().splitlines()[-1]))
            print(json.dumps(found[-1]), file=sys.stderr, flush=True)
    return found


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m bench.corpus_search", description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--exact-max", type=int, default=DEFAULT_EXACT_MAX)
    parser.add_argument("--shard-rows", type=int, default=DEFAULT_SHARD_ROWS)
    parser.add_argument("--threads", type=int, help="FAISS (OpenMP) threads (default: every core)")
    parser.add_argument("--build-memory", help="sizes, e.g. 1000000,4000000: peak memory of building each alone")
    parser.add_argument("--build-only", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads:
        faiss.omp_set_num_threads(args.threads)
    if args.build_only:
        print(json.dumps(build_only(args.build_only, args.exact_max, args.shard_rows)))
    elif args.build_memory:
        print_table("Building one layer's IVF-PQ index: peak memory", build_memory(
            [int(size) for size in args.build_memory.split(",")], args.exact_max, args.shard_rows))
    else:
        print_table(f"Nearest-context queries, one at a time ({QUERIES} queries, top {K}), "
                    f"{faiss.omp_get_max_threads()} FAISS thread(s)", main(args.rows, args.exact_max, args.shard_rows))
    sys.exit(0)
