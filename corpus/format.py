"""The index folder's format: its file names, the columns of each file, and the limits a reader enforces before it
allocates anything. Both the pipeline that writes an index and the reader that opens one import these names."""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa

from analysis.report import STATISTICS
from encoder.errors import HeadlightError

if TYPE_CHECKING:
    from encoder.sources import LoadedModel

FORMAT, VERSION = "headlight-corpus", 1
MANIFEST = "manifest.json"  # written last, atomically: a folder without it is not an index
PARTIAL = ".partial"  # what a build writes before the index is complete (removed before the manifest is written)
SENTENCES = "sentences.parquet"
HEAD_STATS_DIR = "head_stats"  # part-*.parquet: one row per sentence x layer x head
HEAD_SUMMARY = "head_summary.parquet"
TOP_EDGES = "top_edges.parquet"
DECILE_EXAMPLES = "decile_examples.parquet"
QK_SAMPLE = "qk_sample.parquet"
QK_UMAP = "qk_umap.parquet"  # optional (``--umap``): row i is the UMAP of qk_sample's row i
CONTEXTS_DIR = "contexts"  # layer-<l>.parquet + layer-<l>.faiss (exact) or layer-<l>.shard-<sssss>.faiss (IVF-PQ)


def context_files(layer: int) -> tuple[str, str]:
    """The FAISS index (an exact one: a layer of at most ``options.exact_max`` contexts) and the row table of the
    contexts after ``layer`` (0: the embeddings)."""
    return f"{CONTEXTS_DIR}/layer-{layer}.faiss", f"{CONTEXTS_DIR}/layer-{layer}.parquet"


def shard_name(name: str, shard: int) -> str:
    """The name of shard ``shard`` (0-based) of the sharded index named like ``name`` (``layer-3.faiss`` ->
    ``layer-3.shard-00002.faiss``)."""
    stem, dot, suffix = name.rpartition(".")
    return f"{stem}.shard-{shard:05d}{dot}{suffix}"


def shard_rows_of(rows: int, shard_rows: int) -> list[int]:
    """The rows of each shard of a sharded index of ``rows`` contexts: ``shard_rows`` each, the last the rest."""
    return [min(shard_rows, rows - start) for start in range(0, rows, shard_rows)]


def context_index_files(layer: int, rows: int, exact_max: int, shard_rows: int | None) -> list[tuple[str, int]]:
    """Each FAISS file of the contexts after ``layer`` and the rows it holds: ``layer-<l>.faiss`` (exact) up to
    ``exact_max`` rows, else a shard of at most ``shard_rows`` rows each (IVF-PQ), in row order. ``shard_rows``
    None (an index built before shards, its manifest without ``options.shard_rows``): ``layer-<l>.faiss`` always,
    exact or IVF-PQ."""
    name = context_files(layer)[0]
    if rows <= exact_max or shard_rows is None:
        return [(name, rows)]
    return [(shard_name(name, shard), count) for shard, count in enumerate(shard_rows_of(rows, shard_rows))]


# Every report-card statistic, in the order of analysis.report.STATISTICS (the sink share included).
STATISTIC_NAMES: tuple[str, ...] = tuple(STATISTICS)
DECILES = 11  # q0 (minimum) .. q10 (maximum)

# The nearest-context index of a layer: exact (IndexFlatIP, cosine on L2-normalised float32) up to this many rows,
# else IndexIVFPQ (``corpus.vectors``: its nlist, m, nbits and nprobe are stored in the FAISS file).
DEFAULT_EXACT_MAX = 100_000
# Past ``exact_max``, a layer's IVF-PQ index is written as consecutive row ranges of at most this many contexts, one
# FAISS file each (the same trained quantizer and codebook in each): a build holds one shard's codes, not the layer's.
DEFAULT_SHARD_ROWS = 1 << 20
MAX_CONTEXT_SHARDS = 10_000  # FAISS files of one layer (shard numbers have five digits)

# What a reader accepts before it reads further (a hostile folder may claim anything).
MANIFEST_MAX_BYTES = 1 << 20
MANIFEST_MAX_DEPTH = 8
MAX_SENTENCES = 100_000_000
MAX_HEAD_STATS_ROWS = 10**10  # read lazily, a row group at a time; counted, never loaded whole
MAX_LAYERS, MAX_HEADS, MAX_WIDTH = 512, 512, 65_536
MAX_CONTEXT_ROWS = 2_000_000_000  # per layer: FAISS ids are int64, the row table's ``row`` too
MAX_TOP_K, MAX_SAMPLE_PER_HEAD = 10_000, 100_000
MAX_FILES = 100_000  # entries of the manifest's "files"
MAX_PARQUET_FOOTER_BYTES = 64 << 20  # a Parquet file's metadata, read before anything else of it
MAX_ROW_GROUP_BYTES = 512 << 20  # the most a reader loads at once (one row group, uncompressed)
MAX_NLIST = 1 << 20  # IVF lists of a context index

# Each file's columns (Arrow types; a reader compares them with the file's own schema before reading a row).
_LAYER_HEAD = [("layer", pa.int16()), ("head", pa.int16())]
SCHEMAS: dict[str, pa.Schema] = {
    SENTENCES: pa.schema([("sentence", pa.int64()), ("text", pa.string()), ("tokens", pa.list_(pa.string())),
                          ("special", pa.list_(pa.bool_())), ("n_tokens", pa.int32())]),
    HEAD_STATS_DIR: pa.schema([("sentence", pa.int64()), *_LAYER_HEAD, ("n_queries", pa.int32()),
                               *((name, pa.float64()) for name in STATISTIC_NAMES)]),
    HEAD_SUMMARY: pa.schema([*_LAYER_HEAD, ("statistic", pa.string()), ("mean", pa.float64()),
                             *((f"q{i}", pa.float64()) for i in range(DECILES)), ("n_sentences", pa.int64())]),
    TOP_EDGES: pa.schema([*_LAYER_HEAD, ("rank", pa.int16()), ("weight", pa.float32()), ("sentence", pa.int64()),
                          ("query", pa.int32()), ("key", pa.int32())]),
    DECILE_EXAMPLES: pa.schema([*_LAYER_HEAD, ("statistic", pa.string()), ("decile", pa.int8()),
                                ("value", pa.float64()), ("sentence", pa.int64())]),
    QK_SAMPLE: pa.schema([*_LAYER_HEAD, ("kind", pa.string()), ("sentence", pa.int64()), ("position", pa.int32()),
                          ("token", pa.string()), ("x", pa.float32()), ("y", pa.float32()),
                          ("vector", pa.list_(pa.float32()))]),
    QK_UMAP: pa.schema([*_LAYER_HEAD, ("x", pa.float32()), ("y", pa.float32())]),
    CONTEXTS_DIR: pa.schema([("row", pa.int64()), ("sentence", pa.int64()), ("position", pa.int32()),
                             ("token", pa.string())]),
}
QK_KINDS = ("query", "key")

# The query-key sample's 2-D projections: PCA always (qk_sample's x, y); UMAP when built with ``--umap`` (qk_umap's
# x, y), with these parameters (the manifest's ``options.umap``; random_state fixed: two builds draw the same picture,
# and UMAP runs single-threaded).
PROJECTIONS = ("pca", "umap")
UMAP_PARAMETERS = {"n_neighbors": 15, "min_dist": 0.1, "metric": "euclidean", "random_state": 0}
UMAP_INSTALL = "UMAP is not installed here: pip install -r requirements-umap.txt (docs/corpus.md#umap)"


def model_checksum(model: LoadedModel) -> str:
    """The hex sha256 of the model's weights (each weight's path, dtype, shape, then its bytes, in the model's
    order): the manifest's ``model.checksum``, which ``corpus query near`` compares with the model it is given
    before tracing. Reads the weights once (~0.3 s for MiniLM's 23M parameters)."""
    digest = hashlib.sha256()
    for weight in model.model.weights:
        array = np.ascontiguousarray(np.asarray(weight))
        digest.update(f"{weight.path}:{array.dtype}:{array.shape};".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


class CorpusError(HeadlightError, ValueError):
    """A corpus index cannot be built or opened: a bad input file or column, a folder that is not a complete
    index, a file that does not match its manifest (the message never names a server path)."""
