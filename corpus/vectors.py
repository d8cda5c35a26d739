"""Nearest-context search (exBERT's, one FAISS index per layer): build an index of a layer's token vectors a shard at
a time, check a FAISS file before FAISS reads it, and search it.

Cosine similarity is the inner product of L2-normalised float32 vectors. Up to ``exact_max`` rows the index is
exact (``IndexFlatIP``: (N, D) float32, 4 D bytes a row); past it, ``IndexIVFPQ``: ``nlist`` lists (about
sqrt(N), a power of two) by a flat quantizer, each vector coded in ``m`` bytes (``nbits`` = 8, ``m`` = D / 2 when
that divides D: 2 dimensions per sub-quantizer), ``nprobe`` (nlist / 64, at least 8) lists scanned per query. All
four are stored in the FAISS file (``index_info`` reads them back). Building holds the index being built and one
shard: an exact index (4 D bytes a row, at most ``exact_max`` rows), or an IVF-PQ index's codes (m + 8 bytes a row:
the code and its id) and centroids (nlist x D float32).
"""

from __future__ import annotations

import math
import os
import struct
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import BinaryIO

import faiss
import numpy as np

from corpus.format import DEFAULT_EXACT_MAX, MAX_CONTEXT_ROWS, MAX_NLIST, MAX_WIDTH, CorpusError

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
                        sample: np.ndarray | Callable[[], np.ndarray] | None = None) -> dict:
    """Write the FAISS index of ``shards`` (each (n, width) float, in row order: FAISS id = row number) to
    ``path`` (atomically: a temporary file, then ``os.replace``) and return ``index_info`` of it.

    Up to ``exact_max`` rows in all: ``IndexFlatIP``. Past it: ``IndexIVFPQ`` trained on ``sample`` when given
    ((n, width): vectors from the whole corpus, e.g. an even stride of its rows; a caller that can read its rows
    twice should give one), else on a sample of the first ``exact_max`` rows; at most ``TRAIN_PER_LIST * nlist``
    either way. ``nlist`` from ``rows`` (the total, when the caller knows it) or else from ``exact_max``.

    ``sample`` may be a function returning it: then only its normalised copy is held while the index trains.

    Memory: each shard is added as it comes (one normalised copy of it at a time). Given ``rows`` past
    ``exact_max`` and a ``sample``, the IVF-PQ index is trained first and no row is held but its code (``m`` bytes
    and an 8-byte id a row); otherwise the rows go to an exact index (4 * width bytes a row), which past
    ``exact_max`` rows trains the IVF-PQ index on its own rows and hands them over.
    """
    if not 1 <= width <= MAX_WIDTH:
        raise CorpusError(f"vector width must be 1..{MAX_WIDTH:,}, got {width}")
    if exact_max < 1:
        raise CorpusError(f"exact_max must be at least 1, got {exact_max}")
    approximate = rows is not None and rows > exact_max and sample is not None
    # a function's raw sample is referenced by nothing once normalised: only the normalised copy is held in training
    index = _trained_ivfpq(normalised(_given(sample), width), width, rows, seed) if approximate else \
        faiss.IndexFlatIP(width)
    for shard in shards:
        index.add(normalised(shard, width))
        if not approximate and index.ntotal > exact_max:
            index, approximate = _past_exact(index, width, max(rows or 0, exact_max), seed,
                                             _given(sample)), True
    if index.ntotal > MAX_CONTEXT_ROWS:
        raise CorpusError(f"{index.ntotal:,} vectors: more than a context index holds ({MAX_CONTEXT_ROWS:,})")
    path = Path(path)
    temporary = path.with_name(path.name + ".tmp")
    faiss.write_index(index, str(temporary))
    os.replace(temporary, path)
    return index_info(index)


def _given(sample: np.ndarray | Callable[[], np.ndarray] | None) -> np.ndarray | None:
    """``sample`` itself, or what it returns when it is a function."""
    return sample() if callable(sample) else sample


def _past_exact(flat: faiss.IndexFlatIP, width: int, rows: int, seed: int,
                sample: np.ndarray | None) -> faiss.IndexIVFPQ:
    """The IVF-PQ index of an exact index's rows (N, width), trained on ``sample`` or else on those rows (read in
    place, not copied), for about max(``rows``, N) rows."""
    held = faiss.rev_swig_ptr(flat.get_xb(), flat.ntotal * width).reshape(flat.ntotal, width)  # a view: flat owns it
    index = _trained_ivfpq(held if sample is None else normalised(sample, width), width, max(rows, flat.ntotal), seed)
    index.add(held)
    return index


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


def index_info(index: faiss.Index) -> dict:
    """What kind of index this is and its shape: {"kind": "exact"|"ivfpq", "rows", "width"} and, for IVF-PQ,
    "nlist", "m", "nbits", "nprobe" (the manifest may repeat these; the FAISS file is where they live)."""
    typed = faiss.downcast_index(index)  # a view: ``index`` must stay referenced, it owns the C++ object
    info = {"kind": EXACT, "rows": int(typed.ntotal), "width": int(typed.d)}
    if isinstance(typed, faiss.IndexIVFPQ):
        info.update(kind=IVFPQ, nlist=int(typed.nlist), m=int(typed.pq.M), nbits=int(typed.pq.nbits),
                    nprobe=int(typed.nprobe))
    return info


def search(index: faiss.Index, vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
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
    try:
        return faiss.read_index(str(path))
    except RuntimeError:
        raise CorpusError("a context index file could not be read by FAISS (corrupt?)") from None
