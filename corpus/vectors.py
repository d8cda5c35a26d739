"""Nearest-context search (exBERT's, one FAISS index per layer): build an index of a layer's token vectors a shard at
a time, check a FAISS file before FAISS reads it, and search it.

Cosine similarity is the inner product of L2-normalised float32 vectors. Up to ``exact_max`` rows the index is
exact (``IndexFlatIP``: (N, D) float32, 4 D bytes a row); past it, ``IndexIVFPQ``: ``nlist`` lists (about
sqrt(N), a power of two) by a flat quantizer, each vector coded in ``m`` bytes (``nbits`` = 8, ``m`` = D / 2 when
that divides D: 2 dimensions per sub-quantizer), ``nprobe`` (nlist / 64, at least 8) lists scanned per query. All
four are stored in the FAISS file (``index_info`` reads them back). The IVF-PQ index is trained once and written
as consecutive row ranges of at most ``shard_rows`` (``format.DEFAULT_SHARD_ROWS``) rows, one FAISS file each
(``ShardedIndex`` searches them as one). Building holds one of the caller's shards and one file being built: an
exact index (4 D bytes a row, at most ``exact_max`` rows), or the trained centroids (nlist x D float32) and one
file's codes (m + 8 bytes a row: the code and its id, at most ``shard_rows`` rows): never the corpus's.

Not FAISS's on-disk inverted lists (``OnDiskInvertedLists``, ``faiss.contrib.ondisk.merge_ondisk``): that index
file names the file holding its lists, which FAISS opens as written, so a hostile folder could point it anywhere;
row-range shards keep every file one of the two layouts ``check_context_file`` checks before FAISS reads it.
"""

from __future__ import annotations

import math
import os
import struct
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import BinaryIO

import faiss
import numpy as np

from corpus.format import (
    DEFAULT_EXACT_MAX,
    DEFAULT_SHARD_ROWS,
    MAX_CONTEXT_ROWS,
    MAX_CONTEXT_SHARDS,
    MAX_NLIST,
    MAX_WIDTH,
    CorpusError,
    shard_name,
    shard_rows_of,
)

EXACT, IVFPQ = "exact", "ivfpq"
NBITS = 8
TRAIN_PER_LIST = 64  # training sample: this many vectors per IVF list (FAISS asks for 39 to 256)
PROBE_SHARE, MIN_PROBES = 64, 8  # nprobe = nlist / 64, at least 8 (or every list): recall vs latency, docs/corpus.md
_FLAT_IP, _IVF_PQ, _ARRAY_LISTS, _FULL = b"IxFI", b"IwPQ", b"ilar", b"full"
_METRIC_INNER_PRODUCT = 0


def normalised(vectors: np.ndarray, width: int) -> np.ndarray:
    """(N, width) float32 rows scaled to unit L2 norm (a zero row stays zero); refuses another shape, or a NaN."""
    vectors = np.asarray(vectors)
    if vectors.ndim != 2 or vectors.shape[1] != width:
        raise CorpusError(f"vectors must be (N, {width}), got shape {vectors.shape}")
    out = np.array(vectors, dtype=np.float32, order="C", copy=True)
    if not np.isfinite(out).all():
        raise CorpusError("vectors must be finite (a NaN or an infinity was given)")
    norms = np.linalg.norm(out, axis=1, keepdims=True)
    np.divide(out, norms, out=out, where=norms > 0)
    return out


def ivf_parameters(rows: int, width: int) -> dict[str, int]:
    """The IVF-PQ shape for ``rows`` vectors of ``width``: nlist (a power of two near sqrt(rows), 16..65,536),
    m (width / 2 when it divides, else the largest divisor of width at most width / 2), nbits, nprobe.

    Two dimensions per sub-quantizer: on the bench's clustered vectors (docs/corpus.md) recall@10 is 0.90 against
    0.71 with four, for twice the bytes (192 a vector of width 384, an eighth of the float32 vector)."""
    nlist = int(min(max(2 ** round(math.log2(math.sqrt(max(rows, 1)))), 16), 65_536))
    m = max(divisor for divisor in range(1, max(width // 2, 1) + 1) if width % divisor == 0)
    return {"nlist": nlist, "m": m, "nbits": NBITS, "nprobe": max(nlist // PROBE_SHARE, min(MIN_PROBES, nlist))}


def build_context_index(shards: Iterable[np.ndarray], width: int, path: str | Path,
                        exact_max: int = DEFAULT_EXACT_MAX, rows: int | None = None, seed: int = 0,
                        sample: np.ndarray | Callable[[], np.ndarray] | None = None,
                        shard_rows: int = DEFAULT_SHARD_ROWS) -> dict:
    """Write the FAISS index of ``shards`` (each (n, width) float, in row order) and return its ``index_info``
    (with "shards": how many files). Every file is written atomically (a temporary file, then ``os.replace``).

    Up to ``exact_max`` rows in all: one ``IndexFlatIP`` at ``path`` (FAISS id = row number). Past it: one
    ``IndexIVFPQ`` trained once, on ``sample`` when given ((n, width): vectors from the whole corpus, e.g. an even
    stride of its rows; a caller that can read its rows twice should give one), else on a sample of the first
    ``exact_max`` + 1 rows; at most ``TRAIN_PER_LIST * nlist`` either way; ``nlist`` from ``rows`` (the total, when
    the caller knows it) or else from ``exact_max``. Its rows are written as consecutive row ranges of at most
    ``shard_rows`` (``format.shard_name(path, s)``, s = 0, 1, ...), each a copy of the trained empty index with its
    rows added (FAISS id = row number - the shard's first row). ``rows``, when given, must be the total.

    ``sample`` may be a function returning it: then only its normalised copy is held while the index trains.

    Memory: one normalised copy of a shard of ``shards`` at a time, and the file being built: an exact index (4 *
    width bytes a row, at most ``exact_max`` rows), or the trained quantizer and codebook (nlist x width and
    256 x width float32) and one file's codes (``m`` bytes and an 8-byte id a row, at most ``shard_rows`` rows).
    Without ``rows`` past ``exact_max`` and a ``sample``, the first ``exact_max`` + 1 rows are held as an exact index
    first and train the IVF-PQ index.
    """
    if not 1 <= width <= MAX_WIDTH:
        raise CorpusError(f"vector width must be 1..{MAX_WIDTH:,}, got {width}")
    if exact_max < 1 or shard_rows < 1:
        raise CorpusError(f"exact_max and shard_rows must be at least 1, got {exact_max} and {shard_rows}")
    path, chunks = Path(path), (normalised(shard, width) for shard in shards)
    if rows is not None and rows > exact_max and sample is not None:
        # a function's raw sample is referenced by nothing once normalised: only its normalised copy is held
        trained = _trained_ivfpq(normalised(_given(sample), width), width, rows, seed)
        return _write_shards(chunks, trained, path, shard_rows, rows)
    flat = faiss.IndexFlatIP(width)
    for chunk in chunks:
        flat.add(chunk)
        del chunk  # not held while the next one is normalised
        if flat.ntotal > exact_max:
            return _write_shards(_past_exact(flat, chunks), _trained_ivfpq(
                _flat_rows(flat) if sample is None else normalised(_given(sample), width), width,
                max(rows or 0, exact_max), seed), path, shard_rows, rows)
    _expected(flat.ntotal, rows)
    _write(flat, path)
    return index_info(flat)


def _given(sample: np.ndarray | Callable[[], np.ndarray] | None) -> np.ndarray | None:
    """``sample`` itself, or what it returns when it is a function."""
    return sample() if callable(sample) else sample


def _flat_rows(flat: faiss.IndexFlatIP) -> np.ndarray:
    """(N, D) float32: an exact index's rows, a view (``flat`` owns them and must outlive it)."""
    return faiss.rev_swig_ptr(flat.get_xb(), flat.ntotal * flat.d).reshape(flat.ntotal, flat.d)


def _past_exact(flat: faiss.IndexFlatIP, chunks: Iterator[np.ndarray]) -> Iterator[np.ndarray]:
    """The exact index's rows (read in place, not copied: ``flat`` stays referenced here), then the rest of
    ``chunks``."""
    yield _flat_rows(flat)
    yield from chunks


def _expected(total: int, rows: int | None) -> None:
    if rows is not None and total != rows:
        raise CorpusError(f"{total:,} vectors were given for a context index of {rows:,}")


def _write(index: faiss.Index, path: Path) -> None:
    """``index`` to ``path``, atomically (a temporary file, then ``os.replace``)."""
    temporary = path.with_name(path.name + ".tmp")
    faiss.write_index(index, str(temporary))
    os.replace(temporary, path)


def _write_shards(chunks: Iterable[np.ndarray], trained: faiss.IndexIVFPQ, path: Path, shard_rows: int,
                  rows: int | None) -> dict:
    """Add ``chunks`` ((n, D) float32, normalised) to copies of the empty ``trained`` index, ``shard_rows`` rows
    each, every full one written to its shard file (``format.shard_name``) and freed. Returns ``index_info``."""
    if rows is not None and len(shard_rows_of(rows, shard_rows)) > MAX_CONTEXT_SHARDS:
        raise CorpusError(f"{rows:,} vectors in shards of {shard_rows:,} make more than {MAX_CONTEXT_SHARDS:,} files")
    written = total = 0
    shard = faiss.clone_index(trained)
    for chunk in chunks:
        if total + len(chunk) > MAX_CONTEXT_ROWS:
            raise CorpusError(f"more vectors than a context index holds ({MAX_CONTEXT_ROWS:,})")
        begin, total = 0, total + len(chunk)
        while begin < len(chunk):
            taken = min(shard_rows - shard.ntotal, len(chunk) - begin)
            shard.add(chunk[begin:begin + taken])
            begin += taken
            if shard.ntotal == shard_rows:
                written = _next_shard(shard, path, written)
                shard = faiss.clone_index(trained)
        del chunk  # not held while the next one is normalised
    if shard.ntotal or not written:
        written = _next_shard(shard, path, written)
    _expected(total, rows)
    return {**index_info(trained), "rows": total, "shards": written}


def _next_shard(shard: faiss.Index, path: Path, written: int) -> int:
    """Write shard number ``written``; returns how many are written."""
    if written >= MAX_CONTEXT_SHARDS:
        raise CorpusError(f"more than {MAX_CONTEXT_SHARDS:,} files for one context index")
    _write(shard, path.with_name(shard_name(path.name, written)))
    return written + 1


def _trained_ivfpq(sample_from: np.ndarray, width: int, rows: int, seed: int) -> faiss.IndexIVFPQ:
    """An untrained-then-trained ``IndexIVFPQ`` (inner product) for about ``rows`` vectors, its nprobe set."""
    shape = ivf_parameters(rows, width)
    rng = np.random.default_rng(seed)
    size = min(len(sample_from), TRAIN_PER_LIST * shape["nlist"])
    chosen = np.sort(rng.choice(len(sample_from), size, replace=False))
    sample = sample_from if size == len(sample_from) else sample_from[chosen]  # all of it: every row, in order
    quantizer = faiss.IndexFlatIP(width)
    index = faiss.IndexIVFPQ(quantizer, width, shape["nlist"], shape["m"], shape["nbits"],
                             faiss.METRIC_INNER_PRODUCT)
    index.cp.seed = index.pq.cp.seed = seed
    index.train(sample)
    index.nprobe = shape["nprobe"]
    return index


def index_info(index: faiss.Index | ShardedIndex) -> dict:
    """What kind of index this is and its shape: {"kind": "exact"|"ivfpq", "rows", "width", "shards"} and, for
    IVF-PQ, "nlist", "m", "nbits", "nprobe" (the manifest may repeat these; the FAISS files are where they live)."""
    if isinstance(index, ShardedIndex):
        return {**index_info(index.shards[0]), "rows": index.ntotal, "shards": len(index.shards)}
    typed = faiss.downcast_index(index)  # a view: ``index`` must stay referenced, it owns the C++ object
    info = {"kind": EXACT, "rows": int(typed.ntotal), "width": int(typed.d), "shards": 1}
    if isinstance(typed, faiss.IndexIVFPQ):
        info.update(kind=IVFPQ, nlist=int(typed.nlist), m=int(typed.pq.M), nbits=int(typed.pq.nbits),
                    nprobe=int(typed.nprobe))
    return info


class ShardedIndex:
    """The shards of one layer's IVF-PQ index (each an ``IndexIVFPQ`` of the same trained quantizer and codebook,
    holding consecutive rows) searched as one index over every row: as FAISS's ``Index`` for ``search``: ``d``,
    ``ntotal``, ``search(x (Q, d) float32, k) -> (scores (Q, k), ids (Q, k))`` with ids the global rows."""

    def __init__(self, shards: Sequence[faiss.Index]):
        self.shards = [faiss.downcast_index(shard) for shard in shards]  # views: ``shards`` owns the C++ objects
        self._owners = list(shards)
        if not self.shards or any(not isinstance(shard, faiss.IndexIVFPQ) for shard in self.shards):
            raise CorpusError("a sharded context index must be IVF-PQ files only")
        first = self.shards[0]
        shape = _trained_shape(first)
        centroids, codebook = _trained_parts(first)
        for shard in self.shards[1:]:
            parts = _trained_parts(shard)
            if _trained_shape(shard) != shape or \
                    shard.by_residual != first.by_residual or not np.array_equal(parts[0], centroids) or \
                    not np.array_equal(parts[1], codebook):
                raise CorpusError("the shards of a context index were not trained together (their IVF-PQ shapes, "
                                  "coarse centroids or codebooks differ)")
        self.starts = np.cumsum([0] + [shard.ntotal for shard in self.shards])[:-1]
        self.d, self.ntotal = int(first.d), int(sum(shard.ntotal for shard in self.shards))

    @property
    def nprobe(self) -> int:
        return int(self.shards[0].nprobe)

    @nprobe.setter
    def nprobe(self, value: int) -> None:
        for shard in self.shards:
            shard.nprobe = value

    def search(self, vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Each shard's top ``k`` of ``vectors`` (Q, d) float32, merged: (scores (Q, k) float32, global rows (Q, k)
        int64), best first, ties by the lower row, -1 where fewer than k rows were found (as FAISS). Merged a shard
        at a time: at most (Q, 2k) held, however many shards."""
        scores, ids = np.empty((len(vectors), 0), np.float32), np.empty((len(vectors), 0), np.int64)
        for shard, start in zip(self.shards, self.starts):
            found, rows = shard.search(vectors, k)
            scores, ids = _best(np.concatenate([scores, found], axis=1),
                                np.concatenate([ids, np.where(rows >= 0, rows + start, -1)], axis=1), k)
        return scores, ids


def _best(scores: np.ndarray, ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` best of (Q, n) scores and ids per row: highest score first, ties by the lower id, -1 ids last."""
    missing = ids < 0
    order = np.lexsort((np.where(missing, np.iinfo(np.int64).max, ids), -scores, missing), axis=1)[:, :k]
    return np.take_along_axis(scores, order, 1), np.take_along_axis(ids, order, 1)


def _trained_shape(index: faiss.IndexIVFPQ) -> dict:
    """``index_info`` of an IVF-PQ index but its rows: what its shards share."""
    return {key: value for key, value in index_info(index).items() if key != "rows"}


def _trained_parts(index: faiss.IndexIVFPQ) -> tuple[np.ndarray, np.ndarray]:
    """An IVF-PQ index's coarse centroids (nlist, d) and PQ codebook (flat float32)."""
    return index.quantizer.reconstruct_n(0, index.nlist), faiss.vector_to_array(index.pq.centroids)


def search(index: faiss.Index | ShardedIndex, vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Cosine similarity of ``vectors`` (Q, D) (normalised here) with the indexed rows: (scores (Q, k) float32,
    ids (Q, k) int64), best first; an IVF-PQ index gives approximate scores and -1 ids where it found fewer than
    k rows. A vector of the wrong width is refused."""
    vectors = np.asarray(vectors)
    if vectors.ndim == 1:
        vectors = vectors[None]
    if not 1 <= k <= 10_000:
        raise CorpusError(f"k must be 1..10,000, got {k}")
    return index.search(normalised(vectors, index.d), k)


# ---------------------------------------------------------------------------------------------------------------
# Checking a FAISS file before FAISS reads it: FAISS allocates every array a file claims before reading it, so a
# hostile file claiming 10^11 floats would exhaust memory. We read the two layouts we write (IndexFlatIP; IndexIVFPQ
# with a flat inner-product quantizer and array inverted lists) far enough to check every size against the file's.


class _Reader:
    """Little-endian reads from a file of known size; any read past its end is a CorpusError."""

    def __init__(self, handle: BinaryIO, size: int):
        self.handle, self.size = handle, size

    @property
    def left(self) -> int:
        return self.size - self.handle.tell()

    def read(self, count: int) -> bytes:
        if count > self.left:
            raise CorpusError("a context index file is truncated or not a FAISS index of ours")
        return self.handle.read(count)

    def unpack(self, fmt: str):
        values = struct.unpack("<" + fmt, self.read(struct.calcsize("<" + fmt)))
        return values[0] if len(values) == 1 else values

    def skip(self, count: int) -> None:
        if count > self.left:
            raise CorpusError("a context index file is truncated or not a FAISS index of ours")
        self.handle.seek(count, os.SEEK_CUR)


def _header(reader: _Reader, fourcc: bytes) -> tuple[int, int]:
    """An index header of kind ``fourcc`` (inner product, trained): its (d, ntotal)."""
    if reader.read(4) != fourcc:
        raise CorpusError("a context index file is not a FAISS index of ours (flat or IVF-PQ, inner product)")
    d, ntotal, _, _, trained, metric = reader.unpack("iqqq?i")
    if metric != _METRIC_INNER_PRODUCT or not trained or d < 1 or ntotal < 0:
        raise CorpusError("a context index file is not a trained inner-product FAISS index")
    return d, ntotal


def _check_flat(reader: _Reader) -> tuple[int, int]:
    d, ntotal = _header(reader, _FLAT_IP)
    floats = reader.unpack("Q")
    if floats != d * ntotal or reader.left < 4 * floats:
        raise CorpusError("a context index file's vectors do not match its header (truncated?)")
    reader.skip(4 * floats)
    return d, ntotal


def _check_ivfpq(reader: _Reader) -> tuple[int, int]:
    d, ntotal = _header(reader, _IVF_PQ)
    nlist, nprobe = reader.unpack("QQ")
    if not 1 <= nlist <= MAX_NLIST or not 1 <= nprobe <= nlist:
        raise CorpusError(f"a context index claims {nlist:,} IVF lists, {nprobe:,} probed (at most "
                          f"{MAX_NLIST:,}, and at most all of them)")
    quantizer_d, centroids = _check_flat(reader)
    direct_map, mapped = reader.unpack("bQ")
    _by_residual, code_size, pq_d, m, nbits = reader.unpack("?QQQQ")
    if (quantizer_d, centroids, direct_map, mapped, pq_d) != (d, nlist, 0, 0, d) or not 1 <= nbits <= 16 \
            or not 1 <= m <= d or d % m or code_size != (m * nbits + 7) // 8:
        raise CorpusError("a context index file's IVF-PQ parts do not agree with each other")
    if reader.unpack("Q") != d << nbits:
        raise CorpusError("a context index file's product quantizer is malformed")
    reader.skip(4 * (d << nbits))
    if reader.read(4) != _ARRAY_LISTS or reader.unpack("QQ") != (nlist, code_size) or reader.read(4) != _FULL \
            or reader.unpack("Q") != nlist:
        raise CorpusError("a context index file's inverted lists are not in the layout we write")
    sizes = np.frombuffer(reader.read(8 * nlist), dtype="<u8")
    if int(sizes.sum(dtype=np.uint64)) != ntotal or reader.left < ntotal * (code_size + 8):
        raise CorpusError("a context index file's inverted lists do not match its header (truncated?)")
    reader.skip(ntotal * (code_size + 8))
    return d, ntotal


def check_context_file(path: str | Path, width: int, rows: int) -> None:
    """Check the FAISS file at ``path`` is an index of ours (flat or IVF-PQ, inner product) of ``rows`` vectors
    of ``width``, every size it claims within the file, nothing after its end; else ``CorpusError`` (no path)."""
    path = Path(path)
    size = path.stat().st_size
    with path.open("rb") as handle:
        reader = _Reader(handle, size)
        kind = reader.read(4)
        handle.seek(0)
        d, ntotal = _check_ivfpq(reader) if kind == _IVF_PQ else _check_flat(reader)
        if reader.left:
            raise CorpusError("a context index file has bytes after its end")
    if d != width:
        raise CorpusError(f"a context index holds vectors of width {d}, while the model's width is {width}")
    if ntotal != rows:
        raise CorpusError(f"a context index holds {ntotal:,} vectors, while the manifest says {rows:,}")


def read_context_index(path: str | Path, width: int, rows: int) -> faiss.Index:
    """The FAISS index at ``path``, after ``check_context_file``; FAISS's own errors become ``CorpusError``."""
    check_context_file(path, width, rows)
    return _faiss_read(path)


def _faiss_read(path: str | Path) -> faiss.Index:
    """FAISS's read of a checked file, its errors as ``CorpusError``."""
    try:
        return faiss.read_index(str(path))
    except RuntimeError:
        raise CorpusError("a context index file could not be read by FAISS (corrupt?)") from None


def read_context_shards(files: Sequence[tuple[str | Path, int]], width: int) -> ShardedIndex:
    """The sharded index of ``files`` ((path, rows) each, in row order): every file checked before any is read
    (``check_context_file``), then read, then their training compared (``ShardedIndex``)."""
    if not 1 <= len(files) <= MAX_CONTEXT_SHARDS:
        raise CorpusError(f"a sharded context index has 1..{MAX_CONTEXT_SHARDS:,} files, got {len(files):,}")
    for path, rows in files:
        check_context_file(path, width, rows)
    return ShardedIndex([_faiss_read(path) for path, _ in files])
