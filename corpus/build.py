"""Building an index folder: ``build_index(input, out, options, beam_args)`` plans the input, runs the Beam pipeline
(``corpus.pipeline``) on the runner the Beam options name (the DirectRunner by default), puts the parts in order,
and writes ``manifest.json`` last, atomically. Until then the folder holds only ``.partial/``: a build that fails or
is killed leaves no manifest, so nothing that looks like an index.

``python -m cli corpus build`` calls ``main`` here; its progress line (sentences/s) reads the counts the workers
write (``corpus.pipeline.PartsWriter``), so it shows on the DirectRunner, in-memory or multi-process.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path

from corpus.format import FORMAT, MANIFEST, PARTIAL, UMAP_PARAMETERS, VERSION, CorpusError
from corpus.handler import CorpusOptions, ModelFacts, load_corpus_model, model_facts
from corpus.sources import CHUNK_BYTES
from encoder.errors import HeadlightError

STAGED_INPUT = "input.parquet"  # a CSV/TSV/JSONL input's column, staged inside .partial
Progress = Callable[[int, int, float], None]  # (sentences done, lines or rows of the input, seconds)


def build_index(input_path: str | Path, out: str | Path, options: CorpusOptions, column: str | None = None,
                beam_args: Sequence[str] = (), progress: Progress | None = None,
                chunk_bytes: int = CHUNK_BYTES) -> dict:
    """Build the index of ``input_path`` into the folder ``out`` (absent or empty). Returns the manifest.

    Args:
        input_path: a text file (one sentence per line) or a CSV/TSV/JSONL/Parquet file with ``column``.
        out: the index folder to write.
        options: what to compute (``CorpusOptions``).
        beam_args: Beam pipeline options (``--runner``, ``--direct_running_mode``, ``--direct_num_workers``, ...).
        progress: called about once a second while the pipeline runs.
        chunk_bytes: a text input's chunk size (``corpus.sources.plan_input``): the unit a worker reads.

    Raises:
        CorpusError: a bad input, options or output folder; SourceError/CheckpointError: a model that cannot load.
    """
    from apache_beam.options.pipeline_options import PipelineOptions

    from corpus.pipeline import remove_partial, require_umap
    from corpus.sources import plan_input

    if options.umap:
        require_umap()  # before any model loads or any file is written
    folder = _output_folder(Path(out))
    partial = folder / PARTIAL
    remove_partial(partial)  # a killed build's leftovers
    partial.mkdir()
    try:
        plan = plan_input(input_path, column, partial / STAGED_INPUT, chunk_bytes)
        facts = model_facts(load_corpus_model(options.model))
        options.layers_of(facts.layers)
        beam_options = PipelineOptions(list(beam_args))
        _run(plan, options, partial, facts, beam_options, progress)
        manifest = finish_index(folder, partial, facts, options, runner_name(beam_options), Path(input_path).name,
                                column)
    except BaseException:
        remove_partial(partial)
        raise
    return manifest


def runner_name(beam_options) -> str:
    """The manifest's ``runner``: the Beam runner, and the DirectRunner's running mode and workers when set."""
    found = beam_options.get_all_options()
    name = str(found.get("runner") or "DirectRunner")
    mode = found.get("direct_running_mode")
    if name.endswith("DirectRunner") and mode and mode != "in_memory":
        return f"{name} ({mode}, {found.get('direct_num_workers')} workers)"
    return name


def _output_folder(out: Path) -> Path:
    """``out``, created; refused when it holds anything but a killed build's ``.partial``."""
    if out.exists() and not out.is_dir():
        raise CorpusError("The output is a file; give a folder for the index (absent or empty).")
    out.mkdir(parents=True, exist_ok=True)
    if any(entry.name != PARTIAL for entry in out.iterdir()):
        raise CorpusError("The output folder is not empty: give a new or empty folder (a build writes a whole "
                          "index).")
    return out


def _run(plan, options: CorpusOptions, partial: Path, facts: ModelFacts, beam_options, progress) -> None:
    import apache_beam as beam

    from corpus.pipeline import build_pipeline

    stop = threading.Event()
    watcher = threading.Thread(target=_watch, args=(partial, plan.rows, progress, stop), daemon=True)
    if progress is not None:
        watcher.start()
    try:
        with beam.Pipeline(options=beam_options) as pipeline:
            build_pipeline(pipeline, plan.chunks, options, partial, facts)
    finally:
        stop.set()
        if progress is not None:
            watcher.join()


def sentences_done(partial: Path) -> int:
    """Sentences the workers have written so far (their progress files)."""
    from corpus.pipeline import PROGRESS

    total = 0
    for path in (partial / PROGRESS).glob("*") if (partial / PROGRESS).is_dir() else ():
        try:
            total += int(path.read_text() or 0)
        except (OSError, ValueError):  # being rewritten
            continue
    return total


def _watch(partial: Path, rows: int, progress: Progress, stop: threading.Event) -> None:
    start = time.perf_counter()
    while not stop.wait(1.0):
        progress(sentences_done(partial), rows, time.perf_counter() - start)
    progress(sentences_done(partial), rows, time.perf_counter() - start)


def finish_index(folder: Path, partial: Path, facts: ModelFacts, options: CorpusOptions, runner: str,
                 input_name: str, column: str | None) -> dict:
    """Parts into place (``corpus.pipeline.finish_parts``), ``.partial`` removed, then the manifest (last,
    atomically). Returns the manifest."""
    from corpus.pipeline import finish_parts, remove_partial

    counts = finish_parts(partial, folder, facts, options)
    if counts["sentences"] == 0:
        raise CorpusError("The input has no sentences.")
    manifest = {
        "format": FORMAT, "version": VERSION,
        "model": {key: value for key, value in asdict(facts).items() if key != "head_dim"},
        "options": {"max_tokens": options.max_tokens, "batch_size": options.batch_size, "top_k": options.top_k,
                    "decile_statistic": options.decile_statistic, "sample_per_head": options.sample_per_head,
                    "context_layers": list(options.layers_of(facts.layers)), "exact_max": options.exact_max,
                    "shard_rows": options.shard_rows,
                    "runner": runner, "input": input_name, "column": column,
                    "umap": dict(UMAP_PARAMETERS) if options.umap else None},
        "counts": counts,
        "files": file_entries(folder),
    }
    remove_partial(partial)
    write_manifest(folder, manifest)
    return manifest


def file_entries(folder: Path) -> dict[str, dict]:
    """Every data file of the index (relative path -> bytes, and rows for Parquet and FAISS files)."""
    import faiss
    import pyarrow.parquet as pq

    entries = {}
    for path in sorted(folder.rglob("*")):
        relative = path.relative_to(folder)
        if not path.is_file() or relative.parts[0] == PARTIAL or relative.name == MANIFEST:
            continue
        rows = None
        if path.suffix == ".parquet":
            rows = pq.ParquetFile(path).metadata.num_rows
        elif path.suffix == ".faiss":
            rows = int(faiss.read_index(str(path), faiss.IO_FLAG_MMAP).ntotal)
        entries[relative.as_posix()] = {"bytes": path.stat().st_size, "rows": rows}
    return entries


def write_manifest(folder: Path, manifest: dict) -> None:
    """``manifest.json``: written to a temporary file, flushed to disk, then renamed over (atomic)."""
    temporary = folder / f".{MANIFEST}.tmp"
    with temporary.open("w", encoding="utf-8") as handle:
        json.dump(manifest, handle, indent=1, sort_keys=True)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, folder / MANIFEST)
    directory = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


# ---------------------------------------------------------------------------------------------------------------
# The command line: python -m cli corpus build


def add_build_arguments(parser: argparse.ArgumentParser) -> None:
    """``corpus build``'s flags; any flag it does not know is passed to Beam as a pipeline option."""
    defaults = CorpusOptions()
    parser.add_argument("--model", default=defaults.model, help="model: minilm (default), tutorial, a folder or a "
                        "hub id, as python -m cli --model")
    parser.add_argument("--input", required=True, type=Path,
                        help="a text file (one sentence per line) or a .csv/.tsv/.jsonl/.parquet file with --column")
    parser.add_argument("--column", help="the column of sentences (CSV, TSV, JSONL, Parquet)")
    parser.add_argument("--out", required=True, type=Path, help="the index folder to write (absent or empty)")
    parser.add_argument("--max-tokens", type=int, default=defaults.max_tokens,
                        help="cut each sentence to this many tokens (default %(default)s)")
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size,
                        help="sentences traced together (default %(default)s)")
    parser.add_argument("--top-k", type=int, default=defaults.top_k,
                        help="strongest edges kept per head (default %(default)s)")
    parser.add_argument("--decile-statistic", default=defaults.decile_statistic,
                        help="the statistic whose deciles get example sentences (default %(default)s)")
    parser.add_argument("--sample-per-head", type=int, default=defaults.sample_per_head,
                        help="tokens whose queries and keys are sampled, per head (default %(default)s)")
    parser.add_argument("--context-layers", help="hidden states to index for nearest contexts, e.g. 0,3,6 "
                        "(0: embeddings; default the last layer's)")
    parser.add_argument("--exact-max", type=int, default=defaults.exact_max,
                        help="up to this many contexts a layer's FAISS index is exact, past it IVF-PQ "
                             "(default %(default)s)")
    parser.add_argument("--umap", action="store_true",
                        help="also project each head's query/key sample with UMAP (seeded; slow: seconds per head; "
                             "needs pip install -r requirements-umap.txt)")
    parser.add_argument("--shard-rows", type=int, default=defaults.shard_rows,
                        help="past --exact-max, a layer's IVF-PQ index is written in files of at most this many "
                             "contexts, so a build holds one file's codes (default %(default)s)")


def options_from(args: argparse.Namespace) -> CorpusOptions:
    layers = None
    if args.context_layers:
        try:
            layers = tuple(int(part) for part in args.context_layers.split(",") if part.strip())
        except ValueError:
            raise CorpusError("--context-layers takes whole numbers separated by commas, e.g. 0,3,6.") from None
    return CorpusOptions(args.model, args.max_tokens, args.batch_size, args.top_k, args.decile_statistic,
                         args.sample_per_head, layers, args.exact_max, umap=args.umap, shard_rows=args.shard_rows)


def _progress_line(done: int, rows: int, seconds: float) -> None:
    rate = done / seconds if seconds > 0 else 0.0
    sys.stderr.write(f"\r{done:,} sentences ({rows:,} lines or rows in the input), {rate:,.1f} sentences/s ")
    sys.stderr.flush()


def main(argv: Sequence[str]) -> int:
    """``python -m cli corpus build ...``: 0 when the index is written, 2 (and the message) when it is not."""
    parser = argparse.ArgumentParser(
        prog="python -m cli corpus build",
        description="Build a corpus index (head statistics, top examples, query/key samples, nearest contexts) "
                    "with an Apache Beam pipeline. Flags it does not know are Beam pipeline options, e.g. "
                    "--direct_running_mode=multi_processing --direct_num_workers=2, or --runner=FlinkRunner "
                    "(docs/corpus.md).")
    add_build_arguments(parser)
    args, beam_args = parser.parse_known_args(list(argv))
    try:
        manifest = build_index(args.input, args.out, options_from(args), args.column, beam_args, _progress_line)
    except HeadlightError as error:
        sys.stderr.write(f"\nerror: {error}\n")
        return 2
    counts = manifest["counts"]
    sys.stderr.write(f"\nwrote an index of {counts['sentences']:,} sentences ({counts['tokens']:,} tokens)\n")
    return 0
