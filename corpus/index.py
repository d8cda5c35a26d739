"""Open a corpus index folder (``corpus/format.py``), validated before anything is used, and answer questions from it:
the layers x heads map of a statistic, a head's summary, top and decile examples, its query-key sample, a sentence,
and the nearest contexts of a vector. The Corpus tab and ``python -m cli corpus query`` read indexes through here.

``CorpusIndex.open`` checks, before reading any row: the folder lies under an allowed root; the manifest (at most
1 MB, JSON, nested at most 8 deep, the right format and version, every key of the right type and range); every file
it names (relative, inside the folder, no ``..``, no symlink, a name the format has, the size it claims); each
Parquet file's footer (size, schema, row count, row-group sizes) against the manifest's counts; a layer's FAISS files
the ones ``format.context_index_files`` names (one exact file, or shards of ``options.shard_rows`` rows), each one's
header and sizes (``corpus.vectors.check_context_file``) against the model's width and its rows; a sharded layer's
shards compared once FAISS has read them (``corpus.vectors.ShardedIndex``: trained together); the optional UMAP of
the query/key sample (``qk_umap.parquet``, with ``options.umap``) row for row against ``qk_sample``. Small tables are
read whole when first asked for; ``sentences`` and the contexts' row tables a row group at a time; ``head_stats``
never whole (``head_stats_batches``). Every refusal is a ``CorpusError`` whose message names no server path.
"""

from __future__ import annotations

import json
import math
import re
import stat
import threading
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path, PurePosixPath

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from corpus import format as fmt
from corpus.format import CorpusError
from corpus.vectors import check_context_file, read_context_index, read_context_shards, search
from encoder.errors import ViewError, index_in_range

_HEAD_STATS_PART = re.compile(r"head_stats/part-[A-Za-z0-9_.-]{1,64}\.parquet")
_CONTEXT_FILE = re.compile(r"contexts/layer-(0|[1-9][0-9]{0,3})(\.parquet|\.faiss|\.shard-[0-9]{5}\.faiss)")
_SMALL = (fmt.SENTENCES, fmt.HEAD_SUMMARY, fmt.TOP_EDGES, fmt.DECILE_EXAMPLES, fmt.QK_SAMPLE)
_MODEL_KEYS = {"name": str, "checksum": str, "layers": int, "heads": int, "width": int, "key_value_heads": int,
               "first_special": bool}
_OPTION_KEYS = {"max_tokens": int, "batch_size": int, "top_k": int, "decile_statistic": str, "sample_per_head": int,
                "context_layers": list, "exact_max": int, "runner": str, "input": str,
                "column": (str, type(None))}
_COUNT_KEYS = {"sentences": int, "tokens": int, "head_stats_rows": int, "contexts": dict}
MAX_TOKENS_PER_SENTENCE = 1 << 20
GROUP_CACHE_BYTES = 128 << 20


@dataclass(frozen=True)
class Edge:
    """One of a head's strongest attention edges over the corpus: ``query`` attends to ``key`` in ``sentence``."""

    rank: int
    weight: float
    sentence: int
    query: int
    key: int


@dataclass(frozen=True)
class DecileExample:
    """The sentence whose value of the decile statistic is nearest decile ``decile`` (0: minimum, 10: maximum)."""

    decile: int
    value: float
    sentence: int


@dataclass(frozen=True, eq=False)
class CorpusSentence:
    """A sentence of the corpus as traced: ``tokens`` (T,), ``special`` (T,) bool."""

    sentence: int
    text: str
    tokens: tuple[str, ...]
    special: np.ndarray


@dataclass(frozen=True, eq=False)
class QKPoints:
    """A head's sampled queries and keys in their joint 2-D projection: every array (N,)."""

    kind: np.ndarray  # "query" | "key"
    x: np.ndarray  # float32
    y: np.ndarray  # float32
    sentence: np.ndarray  # int64
    position: np.ndarray  # int32
    token: np.ndarray  # str (object)
    projection: str = "pca"  # "pca" | "umap" (corpus.format.PROJECTIONS)


@dataclass(frozen=True)
class Neighbour:
    """A context near the one asked about: cosine ``score`` (approximate under IVF-PQ), where it is, its token."""

    score: float
    sentence: int
    position: int
    token: str


# ---------------------------------------------------------------------------------------------------------------
# The folder and its manifest


def _allowed_folder(folder: str | Path, roots: Sequence[Path] | None) -> Path:
    """``folder`` resolved (symlinks included), when it is a folder under one of ``roots`` (any, when None)."""
    try:
        resolved = Path(folder).expanduser().resolve()
    except (OSError, RuntimeError, ValueError):
        raise CorpusError("the index folder's name cannot be resolved") from None
    if roots is not None and not any(resolved.is_relative_to(Path(root).expanduser().resolve()) for root in roots):
        raise CorpusError("this index folder is outside the folders the operator allows (the corpus roots)")
    if not resolved.is_dir():
        raise CorpusError("there is no index folder of that name")
    return resolved


def _read_manifest(folder: Path) -> dict:
    path = folder / fmt.MANIFEST
    try:
        info = path.lstat()
    except FileNotFoundError:
        if any((folder / name).exists() for name in (*_SMALL, fmt.HEAD_STATS_DIR, fmt.CONTEXTS_DIR, fmt.PARTIAL)):
            raise CorpusError("this index's build did not finish: it has data files but no manifest.json (the "
                              "manifest is written last); build it again") from None
        raise CorpusError("this folder is not a corpus index: it has no manifest.json") from None
    if not stat.S_ISREG(info.st_mode):
        raise CorpusError("the index's manifest.json is not a regular file (a symlink or a folder)")
    if info.st_size > fmt.MANIFEST_MAX_BYTES:
        raise CorpusError(f"the index's manifest.json is {info.st_size:,} bytes (at most "
                          f"{fmt.MANIFEST_MAX_BYTES:,})")
    try:
        manifest = json.loads(path.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise CorpusError("the index's manifest.json is not valid UTF-8 JSON") from None
    if _depth(manifest) > fmt.MANIFEST_MAX_DEPTH:
        raise CorpusError(f"the index's manifest.json is nested more than {fmt.MANIFEST_MAX_DEPTH} deep")
    return manifest


def _depth(value, level: int = 1) -> int:
    """How deep ``value`` nests (a scalar: 1); stops counting past the limit."""
    if level > fmt.MANIFEST_MAX_DEPTH or not isinstance(value, (dict, list)):
        return level
    children = value.values() if isinstance(value, dict) else value
    return max((_depth(child, level + 1) for child in children), default=level)


def _section(manifest: dict, key: str, keys: dict) -> dict:
    """``manifest[key]``: a dict holding each of ``keys`` with a value of its type (an int is never a bool)."""
    section = manifest.get(key)
    if not isinstance(section, dict):
        raise CorpusError(f"the manifest has no {key!r} object")
    for name, kind in keys.items():
        value = section.get(name, ...)
        if value is ... or not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise CorpusError(f"the manifest's {key}.{name} is missing or of the wrong type")
    return section


def _in_range(value: int, low: int, high: int, what: str) -> int:
    if not low <= value <= high:
        raise CorpusError(f"the manifest's {what} is {value:,}, outside {low:,}..{high:,}")
    return value


def validate_manifest(manifest) -> dict:
    """``manifest`` (parsed JSON) checked as a whole: format, version, and each section's keys, types and ranges,
    the counts consistent with each other. Returns it; raises ``CorpusError``."""
    if not isinstance(manifest, dict) or manifest.get("format") != fmt.FORMAT:
        raise CorpusError(f"this folder is not a corpus index: its manifest's format is not {fmt.FORMAT!r}")
    if manifest.get("version") != fmt.VERSION:
        raise CorpusError(f"this index is of a format version this Headlight does not read (it reads version "
                          f"{fmt.VERSION}); build it again")
    model = _section(manifest, "model", _MODEL_KEYS)
    layers = _in_range(model["layers"], 1, fmt.MAX_LAYERS, "model.layers")
    heads = _in_range(model["heads"], 1, fmt.MAX_HEADS, "model.heads")
    _in_range(model["width"], 1, fmt.MAX_WIDTH, "model.width")
    _in_range(model["key_value_heads"], 0, heads, "model.key_value_heads")
    options = _section(manifest, "options", _OPTION_KEYS)
    _in_range(options["top_k"], 1, fmt.MAX_TOP_K, "options.top_k")
    _in_range(options["sample_per_head"], 0, fmt.MAX_SAMPLE_PER_HEAD, "options.sample_per_head")
    _in_range(options["exact_max"], 1, fmt.MAX_CONTEXT_ROWS, "options.exact_max")
    shard_rows = options.get("shard_rows")  # absent: an index built before shards (each layer one FAISS file)
    if shard_rows is not None and (not isinstance(shard_rows, int) or isinstance(shard_rows, bool)):
        raise CorpusError("the manifest's options.shard_rows is of the wrong type")
    if shard_rows is not None:
        _in_range(shard_rows, 1, fmt.MAX_CONTEXT_ROWS, "options.shard_rows")
    if options["decile_statistic"] not in fmt.STATISTIC_NAMES:
        raise CorpusError("the manifest's options.decile_statistic is not a report-card statistic")
    context_layers = options["context_layers"]
    if len(context_layers) > layers + 1 or len(set(map(repr, context_layers))) != len(context_layers) or not all(
            isinstance(layer, int) and not isinstance(layer, bool) and 0 <= layer <= layers
            for layer in context_layers):
        raise CorpusError(f"the manifest's options.context_layers must be distinct layers 0..{layers}")
    counts = _section(manifest, "counts", _COUNT_KEYS)
    sentences = _in_range(counts["sentences"], 1, fmt.MAX_SENTENCES, "counts.sentences")
    tokens = _in_range(counts["tokens"], sentences, sentences * MAX_TOKENS_PER_SENTENCE, "counts.tokens")
    rows = _in_range(counts["head_stats_rows"], 0, fmt.MAX_HEAD_STATS_ROWS, "counts.head_stats_rows")
    if rows != sentences * layers * heads:
        raise CorpusError(f"the manifest claims {rows:,} head_stats rows, while {sentences:,} sentences x {layers} "
                          f"layers x {heads} heads make {sentences * layers * heads:,}")
    _umap_options(options)
    if sorted(counts["contexts"]) != sorted(str(layer) for layer in context_layers) or any(
            counts["contexts"][str(layer)] != tokens for layer in context_layers):
        raise CorpusError("the manifest's counts.contexts must give every context layer one row per token")
    if context_layers and tokens > options["exact_max"] and shard_rows is not None and \
            math.ceil(tokens / shard_rows) > fmt.MAX_CONTEXT_SHARDS:
        raise CorpusError(f"the manifest's {tokens:,} contexts a layer in shards of {shard_rows:,} rows "
                          f"make more than {fmt.MAX_CONTEXT_SHARDS:,} files")
    files = manifest.get("files")
    if not isinstance(files, dict) or not 0 < len(files) <= fmt.MAX_FILES or not all(
            isinstance(entry, dict) and isinstance(entry.get("bytes"), int) and entry["bytes"] >= 0
            and (entry.get("rows") is None or isinstance(entry.get("rows"), int)) for entry in files.values()):
        raise CorpusError("the manifest's files must map each file to its bytes and rows")
    return manifest


def _umap_options(options: dict) -> dict | None:
    """``options.umap``: absent or null (no UMAP: an index built without ``--umap``, or before it existed), or the
    UMAP parameters, each of the type ``fmt.UMAP_PARAMETERS`` gives and in range."""
    umap = options.get("umap")
    if umap is None:
        return None
    if not isinstance(umap, dict) or sorted(umap) != sorted(fmt.UMAP_PARAMETERS) or not all(
            isinstance(umap[key], (int, float) if isinstance(value, float) else type(value))
            and not isinstance(umap[key], bool) for key, value in fmt.UMAP_PARAMETERS.items()):
        raise CorpusError("the manifest's options.umap must be null or UMAP's parameters "
                          f"({', '.join(fmt.UMAP_PARAMETERS)})")
    if not 1 <= umap["n_neighbors"] <= fmt.MAX_SAMPLE_PER_HEAD or not 0.0 <= umap["min_dist"] <= 100.0 or \
            not math.isfinite(umap["min_dist"]) or len(umap["metric"]) > 64:
        raise CorpusError("the manifest's options.umap has a parameter out of range")
    return umap


def _checked_name(name: str) -> str:
    """A file name of the manifest, when it is relative, inside the folder, and one the format has."""
    path = PurePosixPath(name)
    if not name or "\\" in name or "\0" in name or path.is_absolute() or ":" in path.parts[0] or any(
            part in ("", ".", "..") for part in name.split("/")):
        raise CorpusError("the manifest names a file outside the index folder (an absolute path or '..')")
    if name not in (*_SMALL, fmt.QK_UMAP) and not _HEAD_STATS_PART.fullmatch(name) and \
            not _CONTEXT_FILE.fullmatch(name):
        raise CorpusError("the manifest names a file the index format does not have")
    return name


def _regular_file(folder: Path, name: str) -> Path:
    """``folder / name`` when no part of it is a symlink and it is a regular file."""
    path = folder
    for part in PurePosixPath(name).parts:
        path = path / part
        try:
            mode = path.lstat().st_mode
        except FileNotFoundError:
            raise CorpusError(f"the index is missing {name}, which its manifest lists (incomplete copy?)") from None
        if stat.S_ISLNK(mode):
            raise CorpusError("the index folder holds a symlink where its manifest names a file: refused")
    if not stat.S_ISREG(mode):
        raise CorpusError(f"the index's {name} is not a regular file")
    return path


# ---------------------------------------------------------------------------------------------------------------
# Parquet files, checked from their footer


def _check_parquet(path: Path, name: str, schema: pa.Schema, rows: int | None) -> int:
    """Check the Parquet file's footer: its size, its schema (``schema``), its rows (``rows`` as claimed), each
    row group at most ``MAX_ROW_GROUP_BYTES``. Returns its row count."""
    size = path.stat().st_size
    with path.open("rb") as handle:
        start = handle.read(4)
        handle.seek(max(size - 8, 0))
        tail = handle.read(8)
    if size < 12 or start != b"PAR1" or tail[4:] != b"PAR1":
        raise CorpusError(f"the index's {name} is not a Parquet file (truncated?)")
    footer = int.from_bytes(tail[:4], "little")
    if footer > min(size - 12, fmt.MAX_PARQUET_FOOTER_BYTES):
        raise CorpusError(f"the index's {name} has a malformed or oversized Parquet footer")
    try:
        metadata = pq.ParquetFile(path).metadata
        found = metadata.schema.to_arrow_schema()
    except (pa.ArrowException, OSError):
        raise CorpusError(f"the index's {name} is not a readable Parquet file (truncated or corrupt?)") from None
    if not _same_schema(found, schema):
        raise CorpusError(f"the index's {name} has columns {', '.join(found.names)}; expected "
                          f"{', '.join(f'{f.name} ({f.type})' for f in schema)}")
    if rows is not None and metadata.num_rows != rows:
        raise CorpusError(f"the index's {name} holds {metadata.num_rows:,} rows, while the manifest says {rows:,}")
    for group in range(metadata.num_row_groups):
        if metadata.row_group(group).total_byte_size > fmt.MAX_ROW_GROUP_BYTES:
            raise CorpusError(f"the index's {name} has a row group over {fmt.MAX_ROW_GROUP_BYTES >> 20} MB")
    return metadata.num_rows


def _same_schema(found: pa.Schema, expected: pa.Schema) -> bool:
    return found.names == expected.names and all(_same_type(f.type, e.type) for f, e in zip(found, expected))


def _same_type(found: pa.DataType, expected: pa.DataType) -> bool:
    """Equal types; lists compared by their value type (Parquet names a list's item "element", Arrow "item")."""
    if pa.types.is_list(expected):
        return pa.types.is_list(found) and _same_type(found.value_type, expected.value_type)
    return found.equals(expected)


def _read(path: Path, name: str, columns: list[str] | None = None, row_group: int | None = None) -> pa.Table:
    """A whole (small) file or one row group of it, its read errors as ``CorpusError``."""
    try:
        parquet = pq.ParquetFile(path)
        return parquet.read(columns) if row_group is None else parquet.read_row_group(row_group, columns)
    except (pa.ArrowException, OSError):
        raise CorpusError(f"the index's {name} could not be read (corrupt?)") from None


# ---------------------------------------------------------------------------------------------------------------
# The index


class CorpusIndex:
    """A validated corpus index folder; open one with ``CorpusIndex.open``. Thread-safe for reading."""

    def __init__(self, folder: Path, manifest: dict, files: dict[str, Path]):
        self._folder, self.manifest, self._files = folder, manifest, files
        self._lock = threading.Lock()
        self._context_indexes: dict[int, object] = {}
        self._row_group_ranges: dict[tuple[str, str], list[tuple[int, int | None, int | None]]] = {}
        self._groups: OrderedDict[tuple[str, int], pa.Table] = OrderedDict()  # recently read row groups

    def _row_group(self, name: str, group: int) -> pa.Table:
        """Row group ``group`` of ``name`` (every column), from the last few read (at most ``GROUP_CACHE_BYTES``
        together: a head's examples often share sentences' row groups)."""
        key = (name, group)
        with self._lock:
            if key in self._groups:
                self._groups.move_to_end(key)
                return self._groups[key]
        table = _read(self._files[name], name, row_group=group)
        with self._lock:
            self._groups[key] = table
            while sum(kept.nbytes for kept in self._groups.values()) > GROUP_CACHE_BYTES and len(self._groups) > 1:
                self._groups.popitem(last=False)
        return table

    @classmethod
    def open(cls, folder: str | Path, roots: Sequence[Path] | None = None) -> CorpusIndex:
        """Open and validate the index in ``folder`` (under one of ``roots``, the operator's allowed folders; any
        folder when None: the command line is the operator's). Raises ``CorpusError``."""
        folder = _allowed_folder(folder, roots)
        manifest = validate_manifest(_read_manifest(folder))
        files = {_checked_name(name): _regular_file(folder, name) for name in manifest["files"]}
        index = cls(folder, manifest, files)
        index._check_files()
        return index

    # -- validation of the files against the manifest

    def _check_files(self) -> None:
        listed, counts, model = self.manifest["files"], self.manifest["counts"], self.manifest["model"]
        for name, path in self._files.items():
            if path.stat().st_size != listed[name]["bytes"]:
                raise CorpusError(f"the index's {name} is {path.stat().st_size:,} bytes, while the manifest says "
                                  f"{listed[name]['bytes']:,} (changed or truncated?)")
        layers, heads, statistics = self.num_layers, self.num_heads, len(fmt.STATISTIC_NAMES)
        options = self.manifest["options"]
        expected = {fmt.SENTENCES: (counts["sentences"], counts["sentences"]),
                    fmt.HEAD_SUMMARY: (layers * heads * statistics, layers * heads * statistics),
                    fmt.TOP_EDGES: (0, layers * heads * options["top_k"]),
                    fmt.DECILE_EXAMPLES: (0, layers * heads * fmt.DECILES),
                    fmt.QK_SAMPLE: (0, layers * heads * len(fmt.QK_KINDS) * options["sample_per_head"])}
        for name, (low, high) in expected.items():
            if name not in self._files:
                raise CorpusError(f"the index's manifest does not list {name}")
            rows = self._parquet(name, fmt.SCHEMAS[name])
            if not low <= rows <= high:
                raise CorpusError(f"the index's {name} holds {rows:,} rows; an index of this model and these "
                                  f"options holds {low:,}..{high:,}")
        self._check_umap_file()
        parts = sorted(name for name in self._files if _HEAD_STATS_PART.fullmatch(name))
        if sum(self._parquet(name, fmt.SCHEMAS[fmt.HEAD_STATS_DIR]) for name in parts) != counts["head_stats_rows"]:
            raise CorpusError(f"the index's head_stats files do not hold the {counts['head_stats_rows']:,} rows its "
                              "manifest claims")
        contexts = {name for name in self._files if _CONTEXT_FILE.fullmatch(name)}
        wanted = {name for layer in self.context_layers
                  for name in (fmt.context_files(layer)[1], *(name for name, _ in self._index_files(layer)))}
        if contexts != wanted:
            raise CorpusError("the index's context files do not match its options.context_layers, exact_max and "
                              "shard_rows (a FAISS shard missing or extra?)")
        for layer in self.context_layers:
            rows_file, rows = fmt.context_files(layer)[1], counts["contexts"][str(layer)]
            if self._parquet(rows_file, fmt.SCHEMAS[fmt.CONTEXTS_DIR]) != rows:
                raise CorpusError(f"the index's {rows_file} does not hold {rows:,} rows as its manifest claims")
            for index_file, shard_rows in self._index_files(layer):
                if self.manifest["files"][index_file].get("rows") not in (None, shard_rows):
                    raise CorpusError(f"the manifest's files entry of {index_file} does not give {shard_rows:,} rows")
                check_context_file(self._files[index_file], model["width"], shard_rows)

    def _index_files(self, layer: int) -> list[tuple[str, int]]:
        """The FAISS files of ``layer``'s contexts and the rows each holds (``format.context_index_files``)."""
        options = self.manifest["options"]
        return fmt.context_index_files(layer, self.manifest["counts"]["contexts"][str(layer)], options["exact_max"],
                                       options.get("shard_rows"))

    def _check_umap_file(self) -> None:
        """``qk_umap.parquet`` listed exactly when ``options.umap`` is set, with qk_sample's row count (row i is
        qk_sample's row i; its layer and head columns are compared when first read: ``_qk_umap``)."""
        wanted = _umap_options(self.manifest["options"]) is not None
        if wanted != (fmt.QK_UMAP in self._files):
            raise CorpusError(f"the index's options.umap and its file list disagree on {fmt.QK_UMAP}")
        if wanted and self._parquet(fmt.QK_UMAP, fmt.SCHEMAS[fmt.QK_UMAP]) != \
                self._parquet(fmt.QK_SAMPLE, fmt.SCHEMAS[fmt.QK_SAMPLE]):
            raise CorpusError(f"the index's {fmt.QK_UMAP} does not hold one row per row of {fmt.QK_SAMPLE}")

    def _parquet(self, name: str, schema: pa.Schema) -> int:
        return _check_parquet(self._files[name], name, schema, self.manifest["files"][name].get("rows"))

    # -- what the index is

    @property
    def num_layers(self) -> int:
        return self.manifest["model"]["layers"]

    @property
    def num_heads(self) -> int:
        return self.manifest["model"]["heads"]

    @property
    def statistics(self) -> tuple[str, ...]:
        return fmt.STATISTIC_NAMES

    @property
    def model_checksum(self) -> str:
        return self.manifest["model"]["checksum"]

    @property
    def model_name(self) -> str:
        return self.manifest["model"]["name"]

    @property
    def num_sentences(self) -> int:
        return self.manifest["counts"]["sentences"]

    @property
    def projections(self) -> tuple[str, ...]:
        """The query-key sample's 2-D projections this index holds: ("pca",) or ("pca", "umap")."""
        return fmt.PROJECTIONS if fmt.QK_UMAP in self._files else fmt.PROJECTIONS[:1]

    @property
    def umap_parameters(self) -> dict | None:
        """The UMAP's parameters (``fmt.UMAP_PARAMETERS`` as built), or None without UMAP."""
        return _umap_options(self.manifest["options"])

    @property
    def context_layers(self) -> tuple[int, ...]:
        return tuple(self.manifest["options"]["context_layers"])

    def _layer_head(self, layer: int, head: int) -> tuple[int, int]:
        return (index_in_range(layer, self.num_layers, "layer", "index's model"),
                index_in_range(head, self.num_heads, "head", "index's model"))

    def _statistic(self, statistic: str) -> int:
        if statistic not in fmt.STATISTIC_NAMES:
            raise ViewError(f"unknown statistic {statistic!r}; choose from {', '.join(fmt.STATISTIC_NAMES)}")
        return fmt.STATISTIC_NAMES.index(statistic)

    # -- head summary

    @cached_property
    def _summary(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(means (S, L, H), deciles (S, L, H, 11), sentences (S, L, H)), every (statistic, layer, head) once."""
        table = _read(self._files[fmt.HEAD_SUMMARY], fmt.HEAD_SUMMARY)
        shape = (len(fmt.STATISTIC_NAMES), self.num_layers, self.num_heads)
        where = self._grid_cells(table, shape)
        means, deciles, counts = np.full(shape, np.nan), np.full((*shape, fmt.DECILES), np.nan), np.zeros(shape, int)
        means[where] = table.column("mean").to_numpy(zero_copy_only=False)
        for decile in range(fmt.DECILES):
            deciles[(*where, decile)] = table.column(f"q{decile}").to_numpy(zero_copy_only=False)
        counts[where] = table.column("n_sentences").to_numpy(zero_copy_only=False)
        return means, deciles, counts

    def _grid_cells(self, table: pa.Table, shape: tuple[int, int, int]) -> tuple[np.ndarray, ...]:
        names = {name: number for number, name in enumerate(fmt.STATISTIC_NAMES)}
        try:
            statistic = np.array([names[name] for name in table.column("statistic").to_pylist()], dtype=int)
        except KeyError:
            raise CorpusError("the index's head_summary.parquet names a statistic we do not know") from None
        layer, head = (table.column(c).to_numpy(zero_copy_only=False).astype(int) for c in ("layer", "head"))
        if ((layer < 0) | (layer >= shape[1]) | (head < 0) | (head >= shape[2])).any():
            raise CorpusError("the index's head_summary.parquet has a layer or head outside the model")
        if len(np.unique(np.ravel_multi_index((statistic, layer, head), shape))) != math.prod(shape):
            raise CorpusError("the index's head_summary.parquet does not hold each statistic of each head once")
        return statistic, layer, head

    def head_map(self, statistic: str) -> np.ndarray:
        """(L, H) float64: each head's corpus mean of ``statistic`` (token-weighted, as ``corpus_head_report``)."""
        return self._summary[0][self._statistic(statistic)].copy()

    def summary(self, layer: int, head: int) -> dict[str, dict]:
        """Per statistic: {"mean": float, "deciles": [q0..q10] (11 floats), "n_sentences": int}."""
        layer, head = self._layer_head(layer, head)
        means, deciles, counts = self._summary
        return {name: {"mean": float(means[s, layer, head]), "deciles": deciles[s, layer, head].tolist(),
                       "n_sentences": int(counts[s, layer, head])} for s, name in enumerate(fmt.STATISTIC_NAMES)}

    # -- examples

    @cached_property
    def _top_edges(self) -> pa.Table:
        return _read(self._files[fmt.TOP_EDGES], fmt.TOP_EDGES)

    @cached_property
    def _decile_table(self) -> pa.Table:
        return _read(self._files[fmt.DECILE_EXAMPLES], fmt.DECILE_EXAMPLES)

    @staticmethod
    def _rows_of(table: pa.Table, layer: int, head: int) -> dict[str, np.ndarray]:
        mask = (table.column("layer").to_numpy(zero_copy_only=False) == layer) & \
            (table.column("head").to_numpy(zero_copy_only=False) == head)
        return {name: table.column(name).to_numpy(zero_copy_only=False)[mask] for name in table.column_names}

    def top_examples(self, layer: int, head: int, k: int = 20) -> list[Edge]:
        """The head's ``k`` strongest edges over the corpus (at most ``options.top_k``), strongest first."""
        layer, head = self._layer_head(layer, head)
        rows = self._rows_of(self._top_edges, layer, head)
        order = np.argsort(rows["rank"], kind="stable")[:max(int(k), 0)]
        return [Edge(int(rows["rank"][i]), float(rows["weight"][i]), int(rows["sentence"][i]), int(rows["query"][i]),
                     int(rows["key"][i])) for i in order]

    def decile_examples(self, layer: int, head: int) -> list[DecileExample]:
        """Per decile 0..10 of ``options.decile_statistic``: the sentence nearest it, its value."""
        layer, head = self._layer_head(layer, head)
        rows = self._rows_of(self._decile_table, layer, head)
        order = np.argsort(rows["decile"], kind="stable")
        return [DecileExample(int(rows["decile"][i]), float(rows["value"][i]), int(rows["sentence"][i]))
                for i in order]

    @property
    def decile_statistic(self) -> str:
        return self.manifest["options"]["decile_statistic"]

    # -- query-key sample

    @cached_property
    def _qk_table(self) -> pa.Table:
        columns = [name for name in fmt.SCHEMAS[fmt.QK_SAMPLE].names if name != "vector"]
        return _read(self._files[fmt.QK_SAMPLE], fmt.QK_SAMPLE, columns)

    @cached_property
    def _qk_umap(self) -> pa.Table:
        """qk_umap (layer, head, x, y), after its layer and head columns were found equal to qk_sample's."""
        table = _read(self._files[fmt.QK_UMAP], fmt.QK_UMAP)
        for column in ("layer", "head"):
            if not table.column(column).equals(self._qk_table.column(column)):
                raise CorpusError(f"the index's {fmt.QK_UMAP} does not follow {fmt.QK_SAMPLE} row for row")
        return table

    def qk_points(self, layer: int, head: int, projection: str = "pca") -> QKPoints:
        """The head's sampled queries and keys at their joint 2-D ``projection`` (one of ``projections``: "pca",
        or "umap" when the index was built with it); the raw vectors stay on disk."""
        layer, head = self._layer_head(layer, head)
        if projection not in self.projections:
            raise ViewError(f"this index has no {projection!r} projection; it has {', '.join(self.projections)}")
        rows = self._rows_of(self._qk_table, layer, head)
        if projection == "umap":  # the same rows of qk_umap (checked to follow qk_sample row for row)
            rows.update(self._rows_of(self._qk_umap, layer, head))
        x, y = rows["x"].astype(np.float32), rows["y"].astype(np.float32)
        if not (np.isfinite(x).all() and np.isfinite(y).all()):
            raise CorpusError(f"the index's {projection.upper()} coordinates of layer {layer}, head {head} are not "
                              "all finite (corrupt?)")
        return QKPoints(rows["kind"].astype(object), x, y, rows["sentence"].astype(np.int64),
                        rows["position"].astype(np.int32), rows["token"].astype(object), projection)

    # -- sentences and row tables, a row group at a time

    def _ranges(self, name: str, column: str) -> list[tuple[int, int | None, int | None]]:
        """Each row group of ``name``: (number, min, max) of ``column`` (None when the file keeps no statistics)."""
        key = (name, column)
        if key not in self._row_group_ranges:
            metadata = pq.ParquetFile(self._files[name]).metadata
            position = metadata.schema.to_arrow_schema().get_field_index(column)
            found = []
            for group in range(metadata.num_row_groups):
                stats = metadata.row_group(group).column(position).statistics
                known = stats is not None and stats.has_min_max
                found.append((group, stats.min if known else None, stats.max if known else None))
            self._row_group_ranges[key] = found
        return self._row_group_ranges[key]

    def _find(self, name: str, column: str, value: int) -> dict | None:
        """The first row of ``name`` whose ``column`` equals ``value``, as a dict, or None; reads only the row
        groups whose statistics may hold it."""
        for group, low, high in self._ranges(name, column):
            if low is not None and not low <= value <= high:
                continue
            table = self._row_group(name, group)
            hits = np.flatnonzero(table.column(column).to_numpy(zero_copy_only=False) == value)
            if len(hits):
                return {key: values[0] for key, values in table.slice(int(hits[0]), 1).to_pydict().items()}
        return None

    def sentence(self, sentence_id: int) -> CorpusSentence:
        """The sentence ``sentence_id`` (its 0-based line in the input) as traced."""
        row = self._find(fmt.SENTENCES, "sentence", int(sentence_id))
        if row is None:
            raise ViewError(f"the index has no sentence {sentence_id}")
        tokens, special = row["tokens"] or [], row["special"] or []
        if not len(tokens) == len(special) == row["n_tokens"]:
            raise CorpusError(f"the index's sentence {sentence_id} has tokens and special flags of different lengths")
        return CorpusSentence(int(row["sentence"]), row["text"] or "", tuple(tokens), np.array(special, dtype=bool))

    def head_stats_batches(self, columns: list[str] | None = None,
                           batch_rows: int = 65_536) -> Iterator[pa.RecordBatch]:
        """Every head_stats row (sentence x layer x head), ``batch_rows`` at a time, part by part: never whole."""
        for name in sorted(name for name in self._files if _HEAD_STATS_PART.fullmatch(name)):
            try:
                yield from pq.ParquetFile(self._files[name]).iter_batches(batch_size=batch_rows, columns=columns)
            except (pa.ArrowException, OSError):
                raise CorpusError(f"the index's {name} could not be read (corrupt?)") from None

    # -- nearest contexts

    def _context_index(self, layer: int):
        with self._lock:
            if layer not in self._context_indexes:
                width, files = self.manifest["model"]["width"], self._index_files(layer)
                one_file = files == [(fmt.context_files(layer)[0], self.manifest["counts"]["contexts"][str(layer)])]
                self._context_indexes[layer] = read_context_index(self._files[files[0][0]], width, files[0][1]) \
                    if one_file else read_context_shards([(self._files[name], rows) for name, rows in files], width)
            return self._context_indexes[layer]

    def context_index_info(self, layer: int) -> dict:
        """What kind of FAISS index the layer has (``corpus.vectors.index_info``)."""
        from corpus.vectors import index_info

        return index_info(self._context_index(self._context_layer(layer)))

    def _context_layer(self, layer: int) -> int:
        if layer not in self.context_layers:
            raise ViewError(f"the index has no contexts of layer {layer}; it has layers "
                            f"{', '.join(map(str, self.context_layers)) or 'none'}")
        return layer

    def nearest(self, layer: int, vector: np.ndarray, k: int = 10) -> list[Neighbour]:
        """The ``k`` contexts at ``layer`` (0: the embeddings) most like ``vector`` (D,) by cosine, best first."""
        layer = self._context_layer(layer)
        scores, ids = search(self._context_index(layer), np.asarray(vector, dtype=np.float32).reshape(1, -1), k)
        kept = ids[0] >= 0
        rows = self._context_rows(fmt.context_files(layer)[1], ids[0][kept])
        return [Neighbour(float(score), *row) for score, row in zip(scores[0][kept], rows)]

    def _context_rows(self, name: str, ids: np.ndarray) -> list[tuple[int, int, str]]:
        """(sentence, position, token) of each FAISS id in ``ids``: row ``id`` of the row table ``name``, each row
        group it falls in read once."""
        parquet = pq.ParquetFile(self._files[name])
        ends = np.cumsum([parquet.metadata.row_group(g).num_rows for g in range(parquet.metadata.num_row_groups)])
        groups = np.searchsorted(ends, ids, side="right")
        found: dict[int, tuple[int, int, str]] = {}
        for group in np.unique(groups):
            table = self._row_group(name, int(group))
            start = int(ends[group]) - table.num_rows
            for row in ids[groups == group]:
                hit = table.slice(int(row) - start, 1).to_pydict()
                if hit["row"][0] != row:
                    raise CorpusError(f"the index's {name} does not match its FAISS file (row {int(row)})")
                found[int(row)] = (int(hit["sentence"][0]), int(hit["position"][0]), hit["token"][0] or "")
        return [found[int(row)] for row in ids]

    def __repr__(self) -> str:
        return (f"CorpusIndex({self.model_name}: {self.num_sentences:,} sentences, {self.num_layers}x{self.num_heads} "
                f"heads, contexts at layers {list(self.context_layers)})")

