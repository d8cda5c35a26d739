"""The corpus pipeline (issue 23): the Beam DirectRunner in memory against a plain in-process loop doing the same
work, over the shipped sentences of ``data/`` (train + validation + test, ~19,350 lines), through MiniLM.

The plain loop (``build_plain``) reads the same chunks and batches, runs the same per-batch work
(``corpus.handler.analyse_batch``), writes the same parts (``PartsWriter``), folds the same combiners by hand
(``HeadSummaryFn``, the top edges and the sample with ``heapq``) and finishes the folder the same way
(``corpus.build.finish_index``): the two indexes must be the same, and are compared. Each build runs alone in a
fresh process (``--run``), beam then plain for each size (``ROUNDS`` times); the table gives each run's wall time, its
sentences/s and its peak resident memory (``ru_maxrss``), and the same for 1,000 sentences to show memory flat
as the corpus grows.

``python -m bench corpus``; other sizes or model: ``python -m bench.corpus 1000,19348 tutorial``, and a cut other than
the default 128 tokens: ``python -m bench.corpus 1000,19348 tutorial 64``; one build alone:
``python -m bench.corpus --run beam|plain INPUT OUT [MODEL [MAX_TOKENS]]``.

Peak memory is bounded by the options, not by the corpus: each batch is traced in forward passes of a few fixed
(rows, width) shapes within ``batch_size`` x 64^2 padded attention cells (``corpus.handler.pass_shape``), every
shape run once before the first batch, and the finish holds one shard's IVF-PQ codes (m + 8 bytes a context, at most
``shard_rows`` contexts) and a training sample of at most 64 x nlist rows (docs/corpus.md, "Speed and memory").
"""

from __future__ import annotations

import heapq
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

ROOT = Path(__file__).resolve().parent.parent
DATA = [ROOT / "data" / name for name in ("train.tsv", "validation.tsv", "test.tsv")]
SIZES = (1000, None)  # sentences: 1,000 and every sentence of data/
ROUNDS = 1  # alternations per corpus size: a 19k build takes minutes


def corpus_text(path: Path, limit: int | None = None) -> Path:
    """The sentences of ``data/*.tsv`` (their text column), one per line, into ``path``."""
    lines = []
    for tsv in DATA:
        lines += [line.split("\t")[2] for line in tsv.read_text(encoding="utf-8").splitlines()[1:]]
    path.write_text("\n".join(lines[:limit]) + "\n", encoding="utf-8")
    return path


def build_plain(input_path: Path, out: Path, options) -> dict:
    """The same index as ``corpus.build.build_index``, by a plain loop in this process (no Beam)."""
    from corpus.build import STAGED_INPUT, _output_folder, finish_index
    from corpus.format import PARTIAL
    from corpus.handler import Floors, analyse_batch, load_corpus_model, model_facts
    from corpus.pipeline import (
        FINAL,
        HeadSummaryFn,
        PartsWriter,
        edge_elements,
        edge_rank,
        qk_elements,
        sample_rank,
        summary_input,
        write_sample,
        write_summary,
        write_top_edges,
    )
    from corpus.sources import plan_input, read_chunk

    folder = _output_folder(out)
    partial = folder / PARTIAL
    partial.mkdir()
    plan = plan_input(input_path, None, partial / STAGED_INPUT)
    model = load_corpus_model(options.model)
    facts = model_facts(model)
    floors, writer = Floors(options.top_k, options.sample_per_head), PartsWriter(partial)
    summary = HeadSummaryFn(options)
    accumulator, edges, sample = summary.create_accumulator(), {}, []
    for chunk in plan.chunks:
        for batch in read_chunk(chunk, options.batch_size):
            result = analyse_batch(model, batch, options, floors)
            writer.write(result)
            accumulator = summary.add_input(accumulator, summary_input(result))
            for head, edge in edge_elements(result):
                edges.setdefault(head, []).append(edge)
            edges = {head: heapq.nlargest(options.top_k, found, key=edge_rank) for head, found in edges.items()}
            sample = heapq.nlargest(max(options.sample_per_head, 1), sample + list(qk_elements(result)),
                                    key=sample_rank)
    writer.close()
    write_summary(summary.extract_output(accumulator), partial / FINAL, options)
    write_top_edges(list(edges.items()), partial / FINAL, facts.heads)
    write_sample(sample, partial / FINAL, facts, options.sample_per_head)
    return finish_index(folder, partial, facts, options, "plain loop", input_path.name, None)


def run_one(kind: str, input_path: Path, out: Path, model: str = "minilm", max_tokens: int | None = None) -> dict:
    """One build in this process: wall seconds, sentences, CPU seconds (this process and its children), peak
    resident MB. On a shared machine the CPU seconds compare two builds better than their wall times."""
    from corpus.build import build_index
    from corpus.handler import CorpusOptions

    options = CorpusOptions(model) if max_tokens is None else CorpusOptions(model, max_tokens=max_tokens)
    start = time.perf_counter()
    manifest = build_plain(input_path, out, options) if kind == "plain" else build_index(input_path, out, options)
    seconds = time.perf_counter() - start
    usage = [resource.getrusage(who) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
    return {"kind": kind, "seconds": seconds, "sentences": manifest["counts"]["sentences"],
            "max_tokens": options.max_tokens,
            "cpu_s": sum(u.ru_utime + u.ru_stime for u in usage), "peak_mb": usage[0].ru_maxrss / 1024}


def same_index(first: Path, second: Path) -> bool:
    """Whether two index folders hold the same tables (means to 1e-12: summed in another order) and vectors."""
    import faiss
    import numpy as np
    import pyarrow.parquet as pq

    names = sorted(p.relative_to(first).as_posix() for p in first.rglob("*.parquet"))
    if names != sorted(p.relative_to(second).as_posix() for p in second.rglob("*.parquet")):
        return False
    for name in names:
        a, b = pq.read_table(first / name), pq.read_table(second / name)
        if name == "head_summary.parquet":
            if not np.allclose(a["mean"].to_numpy(), b["mean"].to_numpy(), rtol=1e-12, atol=0):
                return False
            a, b = a.drop(["mean"]), b.drop(["mean"])
        if not a.equals(b):
            return False
    for path in first.rglob("*.faiss"):
        x, y = faiss.read_index(str(path)), faiss.read_index(str(second / path.relative_to(first)))
        if x.ntotal != y.ntotal or faiss.serialize_index(x).tobytes() != faiss.serialize_index(y).tobytes():
            return False
    return True


def _spawn(kind: str, input_path: Path, out: Path, model: str, max_tokens: int | None) -> dict:
    cut = [] if max_tokens is None else [str(max_tokens)]
    done = subprocess.run([sys.executable, "-m", "bench.corpus", "--run", kind, str(input_path), str(out), model, *cut],
                          cwd=ROOT, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(sizes: tuple[int | None, ...] = SIZES, model: str = "minilm", max_tokens: int | None = None) -> list[dict]:
    """Beam then plain at each corpus size (None: every sentence of ``data/``), ``ROUNDS`` times; ``max_tokens``:
    the sentences' cut (None: ``CorpusOptions``' default)."""
    rows = []
    with tempfile.TemporaryDirectory() as temporary:
        folder = Path(temporary)
        inputs = {size: corpus_text(folder / f"{size or 'all'}.txt", size) for size in sizes}
        for size in sizes:
            for round_ in range(ROUNDS):
                for kind in ("beam", "plain"):
                    found = _spawn(kind, inputs[size], folder / f"{kind}-{size}-{round_}", model, max_tokens)
                    rows.append({"model": model, "corpus": f"{found['sentences']:,} sentences", "build": _label(kind),
                                 "max tokens": found.get("max_tokens"),
                                 "round": round_ + 1, "wall s": round(found["seconds"], 1),
                                 "sentences/s": round(found["sentences"] / found["seconds"], 1),
                                 "CPU s": round(found["cpu_s"], 1),
                                 "peak MB": round(found["peak_mb"]),
                                 "same index": same_index(folder / f"beam-{size}-{round_}",
                                                          folder / f"plain-{size}-{round_}")
                                 if kind == "plain" else ""})
                    print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    return rows


def _label(kind: str) -> str:
    return "Beam DirectRunner, in memory" if kind == "beam" else "plain loop"


if __name__ == "__main__":
    if sys.argv[1:2] == ["--run"]:
        cut = [int(sys.argv[6])] if sys.argv[6:7] else []
        print(json.dumps(run_one(sys.argv[2], Path(sys.argv[3]), Path(sys.argv[4]), *sys.argv[5:6], *cut)))
    else:
        from bench.common import print_table

        given = tuple(int(size) for size in sys.argv[1].split(",")) if sys.argv[1:] else SIZES
        cut = (int(sys.argv[3]),) if sys.argv[3:4] else ()
        print_table("Corpus pipeline, data/ sentences", main(given, *sys.argv[2:3], *cut))
