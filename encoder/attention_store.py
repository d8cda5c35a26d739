"""The attention of a long trace, kept as what recomputes it exactly: ``LazyAttention`` (and ``LazyVisible``, its
mask).

A trace of T tokens holds L x H x T x T attention weights: 79 MB for MiniLM at 512 tokens, 19 GB for 12 layers of
12 heads at 8,192. Above ``EAGER_MAX_BYTES`` and ``EAGER_MAX_TOKENS`` a trace (``encoder.trace.trace_text``) keeps
instead what gives each layer's queries and keys as its logit rule multiplied them (after q/k norms and rotary
positions, L x T x (H + Hkv) x dh floats): the model and the trace's own hidden states, from which
``RecomputedQueriesKeys`` computes a layer's again when it is read (``EncoderLayer.queries_keys``: the layer's own
operations, equal to the forward pass's bit for bit), the last few layers' kept in the LRU below; a trace read from
a file, or pickled, holds them as arrays (``StoredQueriesKeys``; an NPZ file has each layer's, written a layer at a
time). With them, the little its logits add (``AttentionRecipe``: the scale, a relative bias's table, the
soft-cap, the causal mask and windows). ``LazyAttention`` indexes like the (L, H, T, T) array:
``attention[layer]`` (H, T, T), ``attention[layer, head]`` (T, T), ``attention[layer, head, rows]`` and any
int/slice/array index, each piece computed on demand by ``encoder.parts.attention.attention_rows``, the function
the forward pass itself ran (``TransformerEncoder.call_rows``), so the weights are the ones that mixed the values.
Pieces (and recomputed queries and keys) are kept in one process-wide LRU of ``HEADLIGHT_CACHE_MB`` / 2 bytes
(``PIECES``); one piece, or ``np.asarray`` of the whole, over that limit raises ``LongTraceError`` instead of
allocating.
"""

from __future__ import annotations

import itertools
import threading
from collections import OrderedDict
from collections.abc import Hashable
from dataclasses import dataclass, field

import numpy as np

from encoder.errors import LongTraceError
from encoder.overview import overview_edges
from encoder.settings import settings

EAGER_MAX_BYTES = 256 * 2**20  # a trace whose (L, H, T, T) float32 attention is larger keeps it lazily ...
EAGER_MAX_TOKENS = 512  # ... when it has more tokens than this (every trace up to 512 tokens keeps the array)
ROW_BLOCK_BYTES = 16 * 2**20  # the (H, R, T) float32 weights one block of queries computes at once


def piece_limit() -> int:
    """The most bytes one materialised piece (or all the pieces kept) may hold: ``HEADLIGHT_CACHE_MB`` / 2."""
    return settings().cache_bytes // 2


def block_rows(heads: int, length: int) -> int:
    """Queries per block of a ``length``-token input with ``heads`` heads: (heads, R, length) float32 weights within
    ``ROW_BLOCK_BYTES`` (at least 1, at most ``length``)."""
    return max(1, min(length, ROW_BLOCK_BYTES // (4 * heads * length)))


class PieceCache:
    """A thread-safe LRU of NumPy arrays bounded by their bytes (``piece_limit()``, read at each insertion)."""

    def __init__(self) -> None:
        self._entries: OrderedDict[Hashable, np.ndarray] = OrderedDict()  # least recently used first
        self._lock = threading.Lock()
        self.bytes = 0

    def get(self, key: Hashable) -> np.ndarray | None:
        with self._lock:
            value = self._entries.get(key)
            if value is not None:
                self._entries.move_to_end(key)
            return value

    def put(self, key: Hashable, value: np.ndarray) -> None:
        """Keep ``value``, dropping the least recently used pieces until all fit (one larger than the whole limit
        is not kept)."""
        limit = piece_limit()
        with self._lock:
            if key in self._entries or value.nbytes > limit:
                return
            self._entries[key] = value
            self.bytes += value.nbytes
            while self.bytes > limit:
                _, dropped = self._entries.popitem(last=False)
                self.bytes -= dropped.nbytes

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self.bytes = 0


PIECES = PieceCache()
_STORE_IDS = itertools.count()


@dataclass(frozen=True, eq=False)
class AttentionRecipe:
    """What a layer's logits add to the scaled product of its queries and keys, for every layer.

    Fields: ``scaling`` (the factor on q.k), ``softcap`` (0: none), ``causal``, ``windows`` (L,) int32 (each
    layer's window, 0: none) and ``window_kind`` ("symmetric" or "causal"); a relative bias (T5, MPNet) has
    ``bias_table`` (buckets, H') float32, ``distance_buckets`` (2M + 1,) int32 (the bucket of each key - query
    distance from -M to M; ``reach`` is M) and ``per_layer_bias`` (umT5: layer i reads columns iH .. (i + 1)H).
    """

    scaling: float
    softcap: float
    causal: bool
    windows: np.ndarray  # (L,) int32
    window_kind: str
    bias_table: np.ndarray | None = None  # (buckets, H') float32
    distance_buckets: np.ndarray | None = None  # (2M + 1,) int32
    reach: int = 0
    per_layer_bias: bool = False

    @classmethod
    def of(cls, model) -> AttentionRecipe:
        """The recipe of a ``TransformerEncoder`` (``rows_supported``)."""
        import keras

        config = model.config
        attention = config.attention
        first = model.encoder_layers[0].attention
        bias = {}
        if config.positions.kind == "relative_buckets":
            part = model.positions
            bias = {"bias_table": keras.ops.convert_to_numpy(part.relative_attention_bias.embeddings),
                    "distance_buckets": np.asarray(part._distance_buckets, np.int32), "reach": part.max_distance,
                    "per_layer_bias": bool(config.positions.per_layer)}
        return cls(scaling=float(first.scaling), softcap=float(first.softcap), causal=bool(attention.causal),
                   windows=np.array([attention.window(i) for i in range(config.num_layers)], np.int32),
                   window_kind=attention.window_kind, **bias)

    def arrays(self) -> dict[str, np.ndarray]:
        """The recipe as named arrays (for an NPZ file); ``from_arrays`` reads them back."""
        arrays = {"scaling": np.array(self.scaling, np.float64), "softcap": np.array(self.softcap, np.float64),
                  "causal": np.array(self.causal), "windows": self.windows, "window_kind": np.array(self.window_kind),
                  "reach": np.array(self.reach), "per_layer_bias": np.array(self.per_layer_bias)}
        if self.bias_table is not None:
            arrays.update(bias_table=self.bias_table, distance_buckets=self.distance_buckets)
        return arrays

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> AttentionRecipe:
        """The recipe of ``arrays`` (KeyError: one is missing)."""
        return cls(scaling=float(arrays["scaling"]), softcap=float(arrays["softcap"]), causal=bool(arrays["causal"]),
                   windows=np.asarray(arrays["windows"], np.int32), window_kind=str(arrays["window_kind"]),
                   bias_table=arrays.get("bias_table"), distance_buckets=arrays.get("distance_buckets"),
                   reach=int(arrays["reach"]), per_layer_bias=bool(arrays["per_layer_bias"]))

    def visible(self, layer: int, begin: int, end: int, length: int) -> np.ndarray | None:
        """(1, R, T) bool: which keys queries ``begin`` .. ``end - 1`` of ``layer`` see; None: all of them."""
        from encoder.parts.attention import visible_rows

        return visible_rows(begin, end, length, self.causal, int(self.windows[layer]), self.window_kind)

    def bias(self, layer: int, heads: np.ndarray, begin: int, end: int, length: int):
        """(1, h, R, T): the relative bias of ``heads`` of ``layer`` on queries ``begin`` .. ``end - 1``; None
        without one."""
        if self.bias_table is None:
            return None
        from encoder.parts.positions import BucketBias

        columns = heads + (layer * self.bias_table.shape[1] // len(self.windows) if self.per_layer_bias else 0)
        table = np.ascontiguousarray(self.bias_table[:, columns])  # (buckets, h)
        return BucketBias(table, self.distance_buckets, self.reach, length).rows(begin, end)


def _indices(key, count: int) -> tuple[np.ndarray, bool]:
    """``(indices (n,), scalar)``: the positions of ``range(count)`` that ``key`` (int, slice, int or bool array)
    picks, and whether it was a single int (its axis goes)."""
    picked = np.arange(count)[key]
    return np.atleast_1d(picked), np.ndim(picked) == 0


class QueriesKeys:
    """Each layer's queries (T, H, dh) and keys (T, Hkv, dh) float32 as its logit rule multiplied them, a layer at a
    time (``layer``): ``StoredQueriesKeys`` holds them, ``RecomputedQueriesKeys`` computes them again from the
    trace's hidden states. ``shape`` is (L, T, H, Hkv, dh)."""

    shape: tuple[int, int, int, int, int]

    def layer(self, layer: int) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError

    def arrays(self) -> dict[str, np.ndarray]:
        """Each layer's ``queries/<l>`` and ``keys/<l>`` (for an NPZ file: computed one at a time as the file is
        written, see ``LayerArray``)."""
        return {f"{name}/{layer}": LayerArray(self, layer, part) for layer in range(self.shape[0])
                for part, name in enumerate(("queries", "keys"))}

    def stored(self) -> StoredQueriesKeys:
        """These queries and keys as arrays (every layer's computed)."""
        layers = [self.layer(layer) for layer in range(self.shape[0])]
        return StoredQueriesKeys(tuple(q for q, _ in layers), tuple(k for _, k in layers))


@dataclass(frozen=True, eq=False)
class LayerArray:
    """One layer's queries (``part`` 0) or keys (1) of ``source``, computed when NumPy asks for the array
    (``np.asarray``): ``np.savez`` writes an NPZ entry at a time, so a file of every layer's holds one layer's."""

    source: QueriesKeys
    layer: int
    part: int

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        array = self.source.layer(self.layer)[self.part]
        return array if dtype is None else array.astype(dtype)


@dataclass(frozen=True, eq=False)
class StoredQueriesKeys(QueriesKeys):
    """Queries and keys kept as arrays, one per layer: ``queries`` L of (T, H, dh), ``keys`` L of (T, Hkv, dh)
    float32 (a trace read from a file, or any given arrays)."""

    queries: tuple[np.ndarray, ...]
    keys: tuple[np.ndarray, ...]

    def __post_init__(self) -> None:
        first = (self.queries[0], self.keys[0]) if self.queries and self.keys else None
        if (first is None or len(self.queries) != len(self.keys) or first[0].ndim != 3 or first[1].ndim != 3
                or first[0].shape[0] != first[1].shape[0] or first[0].shape[2] != first[1].shape[2]
                or first[0].shape[1] % first[1].shape[1]
                or any(q.shape != first[0].shape for q in self.queries)
                or any(k.shape != first[1].shape for k in self.keys)):
            raise ValueError("every layer's queries (T, H, dh) and keys (T, Hkv, dh) must agree (Hkv dividing H), "
                             f"got {[q.shape for q in self.queries[:2]]} and {[k.shape for k in self.keys[:2]]}")

    @property
    def shape(self) -> tuple[int, int, int, int, int]:
        (length, heads, head_dim), kv_heads = self.queries[0].shape, self.keys[0].shape[1]
        return len(self.queries), length, heads, kv_heads, head_dim

    def layer(self, layer: int) -> tuple[np.ndarray, np.ndarray]:
        return self.queries[layer], self.keys[layer]

    def stored(self) -> StoredQueriesKeys:
        return self


@dataclass(frozen=True, eq=False)
class RecomputedQueriesKeys(QueriesKeys):
    """Queries and keys computed again, a layer at a time, from the hidden state each layer read
    (``EncoderLayer.queries_keys``: the layer's own operations, as the pass by rows ran them on all T positions);
    the last few layers' kept in the ``PIECES`` LRU. Holds the model (a ``TransformerEncoder``, which the app's
    model cache holds anyway) and the trace's own ``hidden`` (L + 1, T, D) array: no bytes of its own. Pickled
    (``__reduce__``), it is a ``StoredQueriesKeys`` of every layer's arrays, which need no model.

    Args:
        model: ``TransformerEncoder`` (``rows_supported``).
        hidden: (L + 1, T, D) float32, the trace's hidden states (layer l reads ``hidden[l]``).
    """

    model: object
    hidden: np.ndarray
    store_id: int = field(default_factory=lambda: next(_STORE_IDS))

    @property
    def shape(self) -> tuple[int, int, int, int, int]:
        config = self.model.config
        heads = config.num_heads
        return (config.num_layers, self.hidden.shape[1], heads, config.attention.key_value_heads or heads,
                config.head_dim)

    def layer(self, layer: int) -> tuple[np.ndarray, np.ndarray]:
        """(queries (T, H, dh), keys (T, Hkv, dh)), read-only: from the LRU, or computed (and kept there)."""
        keys = [(self.store_id, layer, part) for part in ("queries", "keys")]
        kept = [PIECES.get(key) for key in keys]
        if kept[0] is not None and kept[1] is not None:
            return kept[0], kept[1]
        from keras import ops

        state = ops.convert_to_tensor(self.hidden[layer][None])  # (1, T, D)
        position_bias = self.model.positions.row_context(self.hidden.shape[1])
        arrays = [ops.convert_to_numpy(part)[0] for part in
                  self.model.encoder_layers[layer].queries_keys(state, position_bias)]
        for key, array in zip(keys, arrays):
            array.flags.writeable = False
            PIECES.put(key, array)
        return arrays[0], arrays[1]

    def __reduce__(self):
        stored = self.stored()
        return StoredQueriesKeys, (stored.queries, stored.keys)


@dataclass(frozen=True, eq=False)
class LayerParts:
    """A store's ``queries`` (``part`` 0) or ``keys`` (1) by layer: ``queries[layer]`` is that layer's (T, H, dh)
    queries, ``keys[layer]`` its (T, Hkv, dh) keys (``QueriesKeys.layer``: read or computed when indexed)."""

    source: QueriesKeys
    part: int

    def __getitem__(self, layer: int) -> np.ndarray:
        return self.source.layer(int(layer))[self.part]

    def __len__(self) -> int:
        return self.source.shape[0]


@dataclass(frozen=True, eq=False)
class LazyAttention:
    """A long trace's (L, H, T, T) attention, computed a piece at a time from each layer's queries and keys (see
    the module docstring).

    Args:
        queries_keys: ``QueriesKeys``: each layer's queries (T, H, dh) and keys (T, Hkv, dh) float32 as its logit
            rule multiplied them (Hkv key/value heads: query head h reads ``h // (H / Hkv)``), kept
            (``StoredQueriesKeys``) or computed again from the trace's hidden states (``RecomputedQueriesKeys``).
        recipe: ``AttentionRecipe``.
        overview: (L, H, S, S) float32 or None: each layer's and head's whole-text block max image
            (``encoder.overview``: S = ``min(OVERVIEW_CELLS, T)``), made by the forward pass above
            ``OVERVIEW_MIN_TOKENS`` tokens; counted in ``kept_bytes`` and saved with the store.

    Example:
        >>> trace = trace_text(model, long_text)  # doctest: +SKIP
        >>> trace.attention[3, 5].shape, trace.attention[3, 5, 100:110].shape  # doctest: +SKIP
        ((8192, 8192), (10, 8192))
    """

    queries_keys: QueriesKeys
    recipe: AttentionRecipe
    overview: np.ndarray | None = None  # (L, H, S, S) float32
    store_id: int = field(default_factory=lambda: next(_STORE_IDS))

    def __post_init__(self) -> None:
        layers, length, heads, _, _ = self.queries_keys.shape
        if len(self.recipe.windows) != layers:
            raise ValueError("the recipe must have every layer's window")
        side = overview_edges(length).size - 1
        if self.overview is not None and (self.overview.shape != (layers, heads, side, side)
                                          or self.overview.dtype != np.float32):
            raise ValueError(f"the overview images must be ({layers}, {heads}, {side}, {side}) float32, got "
                             f"{self.overview.shape} {self.overview.dtype}")

    @classmethod
    def of_arrays(cls, queries: np.ndarray, keys: np.ndarray, recipe: AttentionRecipe) -> LazyAttention:
        """The store of queries (L, T, H, dh) and keys (L, T, Hkv, dh) float32 arrays."""
        return cls(StoredQueriesKeys(tuple(queries), tuple(keys)), recipe)

    def __reduce__(self):
        """Pickled as its queries and keys (a ``RecomputedQueriesKeys`` as arrays) and recipe; unpickled with a new
        ``store_id``, so its pieces never meet another store's in the LRU of the process that reads it."""
        return LazyAttention, (self.queries_keys, self.recipe, self.overview)

    @property
    def queries(self) -> LayerParts:
        """Each layer's queries (T, H, dh) by layer: ``queries[layer]``."""
        return LayerParts(self.queries_keys, 0)

    @property
    def keys(self) -> LayerParts:
        """Each layer's keys (T, Hkv, dh) by layer: ``keys[layer]``."""
        return LayerParts(self.queries_keys, 1)

    @property
    def kept_bytes(self) -> int:
        """The bytes this store holds of its own: its overview images, and its queries and keys when stored (none
        when computed again from the trace's hidden states, whose bytes are the trace's)."""
        source = self.queries_keys
        images = 0 if self.overview is None else self.overview.nbytes
        if isinstance(source, StoredQueriesKeys):
            return images + sum(array.nbytes for array in source.queries + source.keys)
        return images

    @property
    def shape(self) -> tuple[int, int, int, int]:
        layers, length, heads, _, _ = self.queries_keys.shape
        return layers, heads, length, length

    ndim = 4
    dtype = np.dtype(np.float32)

    @property
    def size(self) -> int:
        return int(np.prod(self.shape))

    @property
    def nbytes(self) -> int:
        """The bytes the whole array would take (not what the store holds)."""
        return 4 * self.size

    def __len__(self) -> int:
        return self.shape[0]

    def __iter__(self):
        return (self[layer] for layer in range(len(self)))

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        """The whole (L, H, T, T) array, when it fits the piece limit; else ``LongTraceError``."""
        whole = self[:]
        return whole if dtype is None else whole.astype(dtype)

    def __getitem__(self, key) -> np.ndarray:
        """NumPy's basic indexing (ints, slices, int or bool arrays per axis; no Ellipsis or new axes), computed;
        one layer's head (or rows of it) is the read-only piece the LRU keeps, more a new array.

        Raises:
            LongTraceError: the piece would be over ``piece_limit()`` bytes.
            IndexError: an index out of range.
        """
        key = key if isinstance(key, tuple) else (key,)
        if len(key) > 4 or any(k is Ellipsis or k is None for k in key):
            raise IndexError("a long trace's attention takes up to 4 indices (layer, head, query, key), no ... or None")
        layer_key, head_key, row_key, column_key = key + (slice(None),) * (4 - len(key))
        layers, one_layer = _indices(layer_key, self.shape[0])
        heads, one_head = _indices(head_key, self.shape[1])
        rows, one_row = _indices(row_key, self.shape[2])
        begin, end = (int(rows.min()), int(rows.max()) + 1) if len(rows) else (0, 0)
        self._check_bytes(len(layers) * len(heads) * (end - begin) * self.shape[3] * 4)
        if len(layers) == 1 and len(heads) == 1:  # one layer's head: the kept (read-only) piece itself, no copy
            pieces = self._rows(int(layers[0]), heads, begin, end)[0][None, None]
        else:
            pieces = np.empty((len(layers), len(heads), end - begin, self.shape[3]), np.float32)
            for place, layer in enumerate(layers):
                pieces[place] = self._rows(int(layer), heads, begin, end)
        if not np.array_equal(rows, np.arange(begin, end)):
            pieces = pieces[:, :, rows - begin]
        return _squeeze(pieces[..., column_key], one_layer, one_head, one_row)

    def astype(self, dtype) -> np.ndarray:
        """The whole array as ``dtype`` (``np.asarray``: within the piece limit)."""
        return np.asarray(self, dtype=dtype)

    def mean(self, axis: int | None = None, dtype=None) -> np.ndarray:
        """The mean over layers (``axis`` 0: (H, T, T)) or heads (1: (L, T, T)), a layer at a time (only the result
        is held: within the piece limit); other axes through ``np.asarray``."""
        if axis not in (0, 1):
            return np.asarray(self).mean(axis=axis, dtype=dtype)
        layers, heads, length, _ = self.shape
        self._check_bytes((heads if axis == 0 else layers) * length * length * np.dtype(dtype or np.float32).itemsize)
        if axis == 1:
            return np.stack([self[layer].mean(axis=0, dtype=dtype) for layer in range(layers)])
        total = np.zeros((heads, length, length), dtype or np.float32)
        for layer in range(layers):
            total += self[layer]
        return (total / layers).astype(dtype or np.float32, copy=False)

    def _check_bytes(self, nbytes: int) -> None:
        limit = piece_limit()
        if nbytes > limit:
            raise LongTraceError(
                f"This trace is long ({self.shape[2]:,} tokens): that part of its attention would take "
                f"{nbytes / 2**20:,.0f} MB, over the {limit / 2**20:,.0f} MB one piece may hold. Read it a layer "
                "and head at a time (attention[layer, head]) or a few query rows (attention[layer, head, rows]).")

    def _rows(self, layer: int, heads: np.ndarray, begin: int, end: int) -> list[np.ndarray]:
        """h read-only (R, T) float32 arrays: rows ``begin`` .. ``end - 1`` of ``heads`` of ``layer``, from the LRU
        or computed (the missing heads together)."""
        found = [self._kept(layer, int(head), begin, end) for head in heads]
        missing = np.array([head for head, piece in zip(heads, found) if piece is None], np.int64)
        if len(missing):
            computed = self.compute(layer, missing, begin, end)
            computed.flags.writeable = False  # kept in the LRU and handed out as it is
            for head, piece in zip(missing, computed):
                PIECES.put((self.store_id, layer, int(head), begin, end), piece)
            fresh = dict(zip(missing.tolist(), computed))
            found = [fresh[int(head)] if piece is None else piece for head, piece in zip(heads, found)]
        return found

    def _kept(self, layer: int, head: int, begin: int, end: int) -> np.ndarray | None:
        """Rows ``begin`` .. ``end - 1`` of a head from the LRU: kept as such, or a view of the whole head."""
        piece = PIECES.get((self.store_id, layer, head, begin, end))
        if piece is None and (begin, end) != (0, self.shape[2]):
            whole = PIECES.get((self.store_id, layer, head, 0, self.shape[2]))
            piece = None if whole is None else whole[begin:end]
        return piece

    def compute(self, layer: int, heads: np.ndarray, begin: int, end: int) -> np.ndarray:
        """(h, R, T) float32: the weights of ``heads`` of ``layer`` on queries ``begin`` .. ``end - 1``, by
        ``attention_rows`` (as the forward pass computed them), ``block_rows`` queries at a time, each block over
        the keys it can see (``RowBlocks``: the others exactly 0)."""
        from keras import ops

        from encoder.parts.attention import RowBlocks, attention_rows

        queries, keys = self.queries_keys.layer(layer)  # (T, H, dh), (T, Hkv, dh)
        recipe, length, group = self.recipe, self.shape[2], queries.shape[1] // keys.shape[1]
        query = ops.convert_to_tensor(np.transpose(queries[begin:end, heads], (1, 0, 2))[None])  # (1, h, R, dh)
        key = ops.convert_to_tensor(np.transpose(keys[:, heads // group], (1, 0, 2))[None])  # (1, h, T, dh)
        out = np.zeros((len(heads), end - begin, length), np.float32)  # (h, R, T)
        blocks = RowBlocks(block_rows(len(heads), length), recipe.causal, recipe.window_kind,
                           int(recipe.windows[layer]))
        for first, last, keys_from, keys_to in blocks.blocks(length, begin, end):
            bias = recipe.bias(layer, heads, first, last, length)
            weights = attention_rows(query[:, :, first - begin:last - begin], key[:, :, keys_from:keys_to],
                                     recipe.scaling, None if bias is None else bias[..., keys_from:keys_to],
                                     recipe.softcap, blocks.visible(first, last, keys_from, keys_to))  # (1, h, r, K)
            out[:, first - begin:last - begin, keys_from:keys_to] = np.asarray(weights)[0]  # no copy: a view
        return out

    def arrays(self) -> dict[str, np.ndarray]:
        """What rebuilds the store (for an NPZ file): each layer's ``queries/<l>`` and ``keys/<l>`` (computed a
        layer at a time as the file is written), the recipe's arrays and the ``overview`` images when kept."""
        images = {} if self.overview is None else {"overview": self.overview}
        return {**self.queries_keys.arrays(), **self.recipe.arrays(), **images}

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> LazyAttention:
        """The store of ``arrays()`` read back (its queries and keys stored; KeyError: one is missing; ValueError:
        arrays of the wrong shapes)."""
        layers = len(arrays["windows"])
        overview = arrays.get("overview")
        return cls(StoredQueriesKeys(*(tuple(np.asarray(arrays[f"{name}/{layer}"], np.float32)
                                            for layer in range(layers)) for name in ("queries", "keys"))),
                   AttentionRecipe.from_arrays(arrays), None if overview is None else np.asarray(overview))

    def visible(self) -> LazyVisible | None:
        """The mask of this attention (``LazyVisible``), or None when every query sees every key."""
        recipe = self.recipe
        if not recipe.causal and not recipe.windows.any():
            return None
        return LazyVisible(recipe.causal, recipe.windows, recipe.window_kind, self.shape[2])


def _squeeze(pieces: np.ndarray, *scalar: bool) -> np.ndarray:
    """``pieces`` (l, h, r, c) without the axes whose index was a single int (NumPy's basic indexing)."""
    axes = tuple(axis for axis, single in enumerate(scalar) if single)
    return pieces.squeeze(axis=axes) if axes else pieces


@dataclass(frozen=True, eq=False)
class LazyVisible:
    """A long trace's (L, T, T) bool mask (``EncoderTrace.visible``), computed a piece at a time: True where a
    query of the layer sees the key (``causal``: key <= query; each layer's ``windows`` entry of ``window_kind``,
    0 for none). Indexes like the array (ints, slices, arrays per axis); ``np.asarray`` of the whole within
    ``piece_limit()`` bytes, else ``LongTraceError``."""

    causal: bool
    windows: np.ndarray  # (L,) int32
    window_kind: str
    length: int

    ndim = 3
    dtype = np.dtype(bool)

    @property
    def shape(self) -> tuple[int, int, int]:
        return len(self.windows), self.length, self.length

    def __len__(self) -> int:
        return len(self.windows)

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        whole = self[:]
        return whole if dtype is None else whole.astype(dtype)

    def __getitem__(self, key) -> np.ndarray:
        from encoder.parts.attention import visible_rows

        key = key if isinstance(key, tuple) else (key,)
        if len(key) > 3 or any(k is Ellipsis or k is None for k in key):
            raise IndexError("a long trace's mask takes up to 3 indices (layer, query, key), no ... or None")
        layer_key, row_key, column_key = key + (slice(None),) * (3 - len(key))
        layers, one_layer = _indices(layer_key, len(self.windows))
        rows, one_row = _indices(row_key, self.length)
        begin, end = (int(rows.min()), int(rows.max()) + 1) if len(rows) else (0, 0)
        nbytes, limit = len(layers) * (end - begin) * self.length, piece_limit()
        if nbytes > limit:
            raise LongTraceError(f"This trace is long ({self.length:,} tokens): that part of its mask would take "
                                 f"{nbytes / 2**20:,.0f} MB, over the {limit / 2**20:,.0f} MB one piece may hold. "
                                 "Read it a layer at a time (visible[layer]).")
        def seen(layer: int) -> np.ndarray:  # (R, T)
            mask = visible_rows(begin, end, self.length, self.causal, int(self.windows[layer]), self.window_kind)
            return np.ones((end - begin, self.length), bool) if mask is None else mask[0]

        pieces = np.stack([seen(int(layer)) for layer in layers])  # (l, R, T)
        pieces = pieces[:, rows - begin][..., column_key]
        axes = tuple(axis for axis, single in enumerate((one_layer, one_row)) if single)
        return pieces.squeeze(axis=axes) if axes else pieces

    def arrays(self) -> dict[str, np.ndarray]:
        """What rebuilds the mask (for an NPZ file); ``from_arrays`` reads it back."""
        return {"causal": np.array(self.causal), "windows": self.windows, "window_kind": np.array(self.window_kind),
                "length": np.array(self.length)}

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> LazyVisible:
        return cls(bool(arrays["causal"]), np.asarray(arrays["windows"], np.int32), str(arrays["window_kind"]),
                   int(arrays["length"]))
