"""The index folder's format: its file names, the columns of each file, and the limits a reader enforces before it
allocates anything. Both the pipeline that writes an index and the reader that opens one import these names."""

from __future__ import annotations

from analysis.report import STATISTICS
from encoder.errors import HeadlightError

FORMAT, VERSION = "headlight-corpus", 1
MANIFEST = "manifest.json"  # written last, atomically: a folder without it is not an index
SENTENCES = "sentences.parquet"
HEAD_STATS_DIR = "head_stats"  # part-*.parquet: one row per sentence x layer x head
HEAD_SUMMARY = "head_summary.parquet"
TOP_EDGES = "top_edges.parquet"
DECILE_EXAMPLES = "decile_examples.parquet"
QK_SAMPLE = "qk_sample.parquet"
CONTEXTS_DIR = "contexts"  # layer-<l>.faiss + layer-<l>.parquet


def context_files(layer: int) -> tuple[str, str]:
    """The FAISS index and the row table of the contexts after ``layer`` (0: the embeddings)."""
    return f"{CONTEXTS_DIR}/layer-{layer}.faiss", f"{CONTEXTS_DIR}/layer-{layer}.parquet"


# Every report-card statistic, in the order of analysis.report.STATISTICS (the sink share included).
STATISTIC_NAMES: tuple[str, ...] = tuple(STATISTICS)
DECILES = 11  # q0 (minimum) .. q10 (maximum)

# What a reader accepts before it reads further (a hostile folder may claim anything).
MANIFEST_MAX_BYTES = 1 << 20
MANIFEST_MAX_DEPTH = 8
MAX_SENTENCES = 100_000_000
MAX_HEAD_STATS_ROWS = 10**10  # read lazily, a row group at a time; counted, never loaded whole
MAX_LAYERS, MAX_HEADS, MAX_WIDTH = 512, 512, 65_536


class CorpusError(HeadlightError, ValueError):
    """A corpus index cannot be built or opened: a bad input file or column, a folder that is not a complete
    index, a file that does not match its manifest (the message never names a server path)."""
