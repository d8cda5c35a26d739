"""Self-attention that hands back its weights: ``InstrumentedAttention`` and the logit rule it runs.

A *logit rule* is what a position scheme does inside attention: a callable
``rule(attention, query (B, T, H, dh), key (B, S, Hkv, dh), position_bias) -> (logits (B, H, T, S), terms)`` (Hkv
key/value heads: ``attention.scaled_product`` pairs each with its query heads), terms a
dict of named (B, H, T, S) tensors that sum to the logits (empty when the logits have one term). A rule may take
``start``: the queries are then the last T of the S keys, positions ``start`` .. ``start + T - 1`` (cached keys
precede them: generation); without it, T = S and query i is key i. ``content_logits``
is the plain scaled product; ``encoder.parts.positions`` has the others.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import keras
import numpy as np
from keras import ops


def content_logits(attention: InstrumentedAttention, query, key, position_bias=None, start=None):
    """``(q.k * scaling, {})``: logits with no positional term (``start`` changes nothing)."""
    return attention.scaled_product(query, key), {}


@keras.saving.register_keras_serializable(package="headlight")
class InstrumentedAttention(keras.layers.MultiHeadAttention):
    """``keras.layers.MultiHeadAttention`` that always returns its attention pattern and can silence heads.

    The projections are MultiHeadAttention's own (``query_dense``, ``key_dense``, ``value_dense``,
    ``output_dense``); the attention is always the explicit softmax (never a fused or flash path that would hide
    the weights), with the logits scaled after the product as transformers computes them. The one addition is an
    optional per-head multiplier on each head's context vectors before the output projection (Michel et al.,
    2019), which is how a head is ablated.

    Args:
        num_heads, key_dim, dropout, use_bias: as MultiHeadAttention (``key_dim`` is the head size dh).
        key_value_heads: int, heads of the key and value projections (grouped-query attention: query head h reads
            key/value head ``h // (num_heads // key_value_heads)``, as transformers' ``repeat_kv``); None means
            ``num_heads``.
        scaling: float, the factor on q.k; None means ``1 / sqrt(key_dim)``.
        logits: the logit rule (see the module docstring); ``content_logits`` when None.
        output_bias: bool, the output projection has a bias; None means ``use_bias`` (which then is the query, key
            and value projections' alone).
        qk_norm: None, or a function of a name giving a norm layer: the queries and keys are normalised per head
            (over dh) before the logit rule (Qwen3, Gemma 3).
        softcap: float, soft-capping of the logits, ``tanh(logits / softcap) * softcap`` before the mask (Gemma
            2); 0 for none.

    Call args:
        query: (B, T, D) tensor.
        value: (B, S, D) tensor (the same tensor for self-attention).
        attention_mask: optional bool tensor broadcastable to (B, T, S); False keys get weight exactly 0.
        head_mask: optional (B, H) float tensor; 0 silences a head, 1 keeps it.
        position_bias: what the model's position scheme gives every layer (``TransformerEncoder.layer_context``),
            read by the logit rule: a (1, H, T, S) bias, DeBERTa's table and index, or None.
        value_mask: optional (B, S) float tensor multiplying each key token's value vectors (0 zeroes token j's
            values in every head: value zeroing, Mohebbi et al., 2023).
        attention_scale: optional (B, H, T, S) float tensor multiplying the weights before they mix the values
            (ones change nothing; its gradient there is attention x gradient). The returned pattern is unscaled.

        cache: optional ``(keys, values)``, each (B, S0, Hkv, dh): the keys (after the key norm, before positions
            act on them) and values of S0 earlier tokens (generation's key/value cache, ``TransformerEncoder.extend``);
            this call's own follow them, so the keys are S = S0 + T tokens.
        start: with a cache, S0 as an int32 scalar: the position of the first query (the logit rule's ``start``).

    Returns:
        ``(output, pattern, terms)``: output (B, T, D), pattern (B, H, T, S), the weights after softmax, and the
        rule's terms; with a ``cache``, a fourth item: the new cache ``(keys, values)``, each (B, S, Hkv, dh).
    """

    def __init__(self, num_heads: int, key_dim: int, key_value_heads: int | None = None,
                 scaling: float | None = None, logits: Callable | None = None, output_bias: bool | None = None,
                 qk_norm: Callable[[str], keras.layers.Layer] | None = None, softcap: float = 0.0, **kwargs):
        super().__init__(num_heads=num_heads, key_dim=key_dim, **kwargs)
        self.key_value_heads = num_heads if key_value_heads is None else key_value_heads
        if self.key_value_heads < 1 or num_heads % self.key_value_heads:
            raise ValueError(f"key_value_heads ({self.key_value_heads}) must divide num_heads ({num_heads})")
        self.scaling = self._inverse_sqrt_key_dim if scaling is None else scaling
        self.logits = content_logits if logits is None else logits
        self.output_bias = self._use_bias if output_bias is None else output_bias
        self.query_norm = qk_norm("query_norm") if qk_norm is not None else None
        self.key_norm = qk_norm("key_norm") if qk_norm is not None else None
        self.softcap = float(softcap)

    def get_config(self):
        return {**super().get_config(), "key_value_heads": self.key_value_heads, "scaling": self.scaling,
                "output_bias": self.output_bias, "softcap": self.softcap}

    def build(self, query_shape, value_shape, key_shape=None):
        """MultiHeadAttention's projections; with grouped-query attention or an output bias unlike the others'
        (Qwen2), the key and value projections have ``key_value_heads`` heads and each projection its own bias
        (same names and equations as MultiHeadAttention's for (B, T, D) inputs: ``query``, ``key``, ``value``,
        ``attention_output``). The query and key norms (``qk_norm``) act on each (B, T, heads, dh) head."""
        for norm in (self.query_norm, self.key_norm):
            if norm is not None:
                norm.build((None, None, None, self._key_dim))
        if self.key_value_heads == self._num_heads and self.output_bias == self._use_bias:
            super().build(query_shape, value_shape, key_shape)
            return
        common = self._get_common_kwargs_for_sublayer()

        def projection(name: str, heads: int, shape) -> keras.layers.EinsumDense:
            dense = keras.layers.EinsumDense("abc,cde->abde", output_shape=(None, heads, self._key_dim),
                                             bias_axes="de" if self._use_bias else None, name=name, **common)
            dense.build(shape)  # (B, T, D) -> (B, T, heads, dh)
            return dense

        self._query_dense = projection("query", self._num_heads, query_shape)
        self._key_dense = projection("key", self.key_value_heads, value_shape if key_shape is None else key_shape)
        self._value_dense = projection("value", self.key_value_heads, value_shape)
        self._build_attention(4)  # the rank of the projected (B, T, H, dh)
        self._output_dense = keras.layers.EinsumDense("abcd,cde->abe", output_shape=(None, query_shape[-1]),
                                                      bias_axes="e" if self.output_bias else None,
                                                      name="attention_output", **common)
        self._output_dense.build((*query_shape[:-1], self._num_heads, self._value_dim))

    def call(self, query, value, attention_mask=None, head_mask=None, position_bias=None, value_mask=None,
             attention_scale=None, training=None, cache=None, start=None):
        q, k = self.projected_queries_keys(query, value)
        v = mask_values(self.value_dense(value), value_mask)  # (B, S, Hkv, dh)
        if cache is not None:  # generation: the earlier tokens' keys and values first
            k, v = ops.concatenate([cache[0], k], axis=1), ops.concatenate([cache[1], v], axis=1)
        where = {} if cache is None else {"start": start}
        logits, terms = self.logits(self, q, k, position_bias, **where)  # (B, H, T, S)
        if self.softcap:
            logits = soft_cap(logits, self.softcap)
        pattern = self._masked_softmax(logits, attention_mask)  # (B, H, T, S)
        output = self.mix_values(pattern, v, head_mask, attention_scale, training)
        return (output, pattern, terms) if cache is None else (output, pattern, terms, (k, v))

    def projected_queries_keys(self, query, value):
        """``(queries (B, T, H, dh), keys (B, S, Hkv, dh))``: ``query`` (B, T, D) and ``value`` (B, S, D) projected,
        then normalised per head when the layer has q/k norms (before positions act on them)."""
        q = self.query_dense(query)  # (B, T, H, dh)
        k = self.key_dense(value)  # (B, S, Hkv, dh)
        if self.query_norm is not None:
            q, k = self.query_norm(q), self.key_norm(k)
        return q, k

    def attended_rows(self, queries, keys, values, rows: RowBlocks, begin: int, end: int, first: int, last: int,
                      position_bias=None, overview=None):
        """(B, R, D): the attention's output at queries ``begin`` .. ``end - 1`` (a block of ``rows``, seeing keys
        ``first`` .. ``last - 1``: ``RowBlocks.blocks``) of a long input at inference, from the block's queries (B,
        R, H, dh) and the input's keys and values (B, Hkv, T, dh) (``EncoderLayer.row_operands``): the block's
        weights (``attention_rows``, then dropped) mixing those keys' values, through the output projection. With
        ``overview``, ``overview(weights (B, H, R, K), begin, end, first, last)`` reads the weights first
        (``encoder.overview.OverviewImages.add``)."""
        bias = rows.bias(self.logits, position_bias, begin, end, first, last)
        weights = attention_rows(heads_first(queries), keys[:, :, first:last], self.scaling, bias,
                                 self.softcap, rows.visible(begin, end, first, last))  # (B, H, R, K)
        if overview is not None:
            overview(weights, begin, end, first, last)
        context = head_contexts(weights, values[:, :, first:last])  # (B, H, R, dh)
        return self.project(ops.transpose(context, (0, 2, 1, 3)), None)

    def _masked_softmax(self, attention_scores, attention_mask=None):
        """Keras' masked softmax, as ``masked_softmax`` computes it."""
        return masked_softmax(attention_scores, attention_mask)

    def mix_values(self, pattern, value, head_mask, attention_scale, training):
        """(B, T, D): the weights (times ``attention_scale`` when given) mixing the values (B, S, Hkv, dh), each
        head's context times its ``head_mask``, through the output projection."""
        weights = pattern if attention_scale is None else pattern * ops.cast(attention_scale, pattern.dtype)
        weights = self._dropout_layer(weights, training=training)
        context = ops.transpose(head_contexts(weights, heads_first(value)), (0, 2, 1, 3))  # (B, T, H, dh)
        return self.project(context, head_mask)

    def project(self, context, head_mask):
        """(B, T, D): the heads' contexts (B, T, H, dh), each times its ``head_mask`` (B, H) when given, through
        the output projection."""
        if head_mask is not None:
            context = context * ops.cast(head_mask, context.dtype)[:, None, :, None]
        return self.output_dense(context)

    def scaled_product(self, query, key):
        """(B, H, T, S): q.k * scaling, scaled after the product as transformers scales it; ``key`` (B, S, Hkv, dh)
        has the key/value heads (grouped-query attention: each serves its group of query heads)."""
        return scaled_product(query, key, self.scaling, self._num_heads, self.key_value_heads)


def scaled_product(query, key, scaling: float, heads: int, key_value_heads: int):
    """(B, H, T, S): q.k * scaling of queries (B, T, H, dh) and keys (B, S, Hkv, dh), scaled after the product as
    transformers scales it (grouped-query attention: query head h reads key/value head ``h // (H / Hkv)``)."""
    query = ops.transpose(query, (0, 2, 1, 3))  # (B, H, T, dh)
    key = ops.transpose(key, (0, 2, 3, 1))  # (B, Hkv, dh, S)
    if key_value_heads == heads:
        logits = ops.matmul(query, key)  # (B, H, T, S)
    else:
        logits = ungrouped(ops.matmul(grouped(query, key_value_heads), key), heads, ops.shape(query)[2])
    return logits * ops.cast(scaling, logits.dtype)


def heads_first(x):
    """(B, T, H, dh) -> (B, H, T, dh)."""
    return ops.transpose(x, (0, 2, 1, 3))


def head_contexts(weights, values):
    """(B, H, R, dh): weights (B, H, R, S) mixing values (B, Hkv, S, dh) (grouped-query attention: query head h
    reads key/value head ``h // (H / Hkv)``). Batched matmuls over explicit (B, H, ...) layouts: oneDNN runs them
    faster than the equivalent einsums."""
    heads, kv_heads = weights.shape[1], values.shape[1]
    if heads == kv_heads:
        return ops.matmul(weights, values)
    return ungrouped(ops.matmul(grouped(weights, kv_heads), values), heads, ops.shape(weights)[2])


def grouped(x, key_value_heads):
    """(B, H, T, n) -> (B, Hkv, G T, n): the query heads of each key/value head side by side (query head h reads
    key/value head ``h // G``, G = H / Hkv), so one batched matmul serves a group without repeating its keys or
    values."""
    shape = ops.shape(x)
    return ops.reshape(x, (shape[0], key_value_heads, -1, shape[3]))


def ungrouped(x, heads, length):
    """(B, Hkv, G T, n) -> (B, H, T, n), undoing ``grouped``."""
    shape = ops.shape(x)
    return ops.reshape(x, (shape[0], heads, length, shape[3]))


def masked_softmax(attention_scores, attention_mask=None):
    """(B, H, T, S) weights: the softmax over keys, masked keys exactly 0 (a row with no visible key all 0), as
    Keras' masked softmax gives them (bit for bit) in three passes over the scores instead of six;
    ``attention_mask`` bool, broadcastable to (B, T, S) (or (B, H, T, S))."""
    if attention_mask is None:
        return ops.softmax(attention_scores, axis=-1)
    mask = attention_mask
    while len(mask.shape) < len(attention_scores.shape):  # (B, T, S) -> (B, 1, T, S): every head
        mask = ops.expand_dims(mask, axis=-3)
    lowest = ops.cast(np.finfo(np.float32).min, attention_scores.dtype)
    weights = ops.softmax(ops.where(mask, attention_scores, lowest), axis=-1)
    return ops.where(mask, weights, 0.0)


def attention_rows(query, key, scaling: float, bias=None, softcap: float = 0.0, visible=None):
    """(B, H, R, K) weights after softmax of R queries (B, H, R, dh) over K keys (B, Hkv, K, dh) (``heads_first``
    of each), both as the logit rule multiplies them (``prepared``), computed as
    ``InstrumentedAttention`` computes them: the scaled product, plus ``bias`` (broadcastable to (B, H, R, K): a
    relative bias's rows) when given, soft-capped by ``softcap`` (0: none), masked by ``visible`` (bool,
    broadcastable to (B, R, K); None: every key), masked keys exactly 0 (every query must see a key). One compiled
    graph (``tf.function``) of unknown sizes serves every block of every layer, in the forward pass
    (``InstrumentedAttention._call_rows``) and in a long trace's store (``LazyAttention.compute``) alike."""
    graph = _rows_graph(bias is not None, bool(softcap), visible is not None)
    extra = [x for x in (bias, visible) if x is not None]
    return graph(query, key, ops.convert_to_tensor(scaling, "float32"), ops.convert_to_tensor(softcap, "float32"),
                 *extra)


@functools.cache
def _rows_graph(bias: bool, capped: bool, masked: bool):
    """``attention_rows``' ``tf.function`` with (or without) a bias, a soft-cap and a mask."""
    import tensorflow as tf

    def rows(query, key, scaling, softcap, *extra):
        extra = list(extra)
        shape = ops.shape(query)  # (B, H, R, dh)
        logits = ops.matmul(grouped(query, ops.shape(key)[1]), ops.swapaxes(key, 2, 3))  # (B, Hkv, G R, K)
        logits = ops.reshape(logits, (shape[0], shape[1], shape[2], -1)) * scaling  # (B, H, R, K)
        if bias:
            logits = logits + extra.pop(0)
        if capped:
            logits = soft_cap(logits, softcap)
        if not masked:
            return ops.softmax(logits, axis=-1)
        lowest = ops.cast(np.finfo(np.float32).min, logits.dtype)  # exp(lowest - max) is exactly 0
        return ops.softmax(ops.where(extra.pop(0)[:, None], logits, lowest), axis=-1)

    four = tf.TensorSpec([None] * 4, tf.float32)
    signature = [four, four, tf.TensorSpec([], tf.float32), tf.TensorSpec([], tf.float32)]
    signature += [four] * bias + [tf.TensorSpec([None] * 3, tf.bool)] * masked
    return tf.function(rows, input_signature=signature)


def prepared(rule, attention, x, position_bias, begin: int = 0):
    """Queries or keys ``x`` (B, n, H, dh) of a long input's positions ``begin`` .. ``begin + n - 1`` as the logit
    ``rule`` multiplies them (rotated by position for rotary positions; as projected for the others):
    ``attention_rows`` of them is the layer's attention. A rule says how with a ``prepare`` method; one without
    (the plain product, a relative bias) multiplies them as they are."""
    prepare = getattr(rule, "prepare", None)
    return x if prepare is None else prepare(attention, x, position_bias, begin)


KEY_GRID = 64  # a block's keys start and end on multiples of this (or at the input's ends): its shapes repeat


class RowBlocks:
    """How a long input's attention runs: ``size`` queries at a time, each block over the keys it can see
    (``visible_keys``) and those masked as the layer masks them (``causal``; ``window`` and ``window_kind``: a
    windowed layer's, ``EncoderLayer._window_mask``); every key of the unpadded input otherwise. A causal block
    computes only the keys before its end, a windowed one only its band: the weights of the keys left out are 0.

    Args:
        size: int, queries per block.
        causal: bool, a causal model (key <= query).
        window_kind: "symmetric" or "causal" (``Attention.window_kind``).
        window: int, the layer's window (0: none; ``for_window`` makes a layer's).
    """

    def __init__(self, size: int, causal: bool, window_kind: str = "symmetric", window: int = 0):
        self.size, self.causal, self.window_kind, self.window = int(size), bool(causal), window_kind, int(window)

    def for_window(self, window: int) -> RowBlocks:
        """These blocks in a layer of ``window`` (0: none)."""
        return RowBlocks(self.size, self.causal, self.window_kind, window)

    def blocks(self, length: int, begin: int = 0, end: int | None = None):
        """``(begin, end, first, last)`` of each block of queries from ``begin`` to ``end`` (None: ``length``) of a
        ``length``-token input: its queries ``begin`` .. ``end - 1`` and the keys ``first`` .. ``last - 1`` they
        can see."""
        end = length if end is None else end
        for start in range(begin, end, self.size):
            stop = min(start + self.size, end)
            yield (start, stop, *visible_keys(start, stop, length, self.causal, self.window, self.window_kind,
                                              KEY_GRID))

    def visible(self, begin: int, end: int, first: int, last: int) -> np.ndarray | None:
        """(1, R, K) bool, True where queries ``begin`` .. ``end - 1`` see keys ``first`` .. ``last - 1``; None when
        they see every one."""
        return visible_rows(begin, end, last, self.causal, self.window, self.window_kind, first)

    @staticmethod
    def bias(rule, position_bias, begin: int, end: int, first: int = 0, last: int | None = None):
        """The bias the logit ``rule`` adds on rows ``begin`` .. ``end - 1`` and keys ``first`` .. ``last - 1``
        ((1, H, R, K)), None without one (``rule.bias_rows``)."""
        rows = getattr(rule, "bias_rows", None)
        return None if rows is None else rows(position_bias, begin, end)[..., first:last]


def visible_keys(begin: int, end: int, length: int, causal: bool, window: int = 0,
                 window_kind: str = "symmetric", grid: int = KEY_GRID) -> tuple[int, int]:
    """``(first, last)``: the keys ``first`` .. ``last - 1`` of a ``length``-token input that queries ``begin`` ..
    ``end - 1`` may see in a layer that is ``causal`` and has ``window`` (as ``visible_rows``), widened to
    multiples of ``grid`` within 0 .. ``length``; every key outside is hidden from every one of the queries."""
    first, last = 0, end if causal or (window and window_kind == "causal") else length
    if window:
        first = begin - (window - 1 if window_kind == "causal" else window // 2)
        last = min(last, end + (0 if window_kind == "causal" else window // 2))
    return max(0, first // grid * grid), min(length, -(-last // grid) * grid)


def visible_rows(begin: int, end: int, length: int, causal: bool, window: int = 0,
                 window_kind: str = "symmetric", first: int = 0) -> np.ndarray | None:
    """(1, R, K) bool: where queries ``begin`` .. ``end - 1`` see keys ``first`` .. ``length - 1`` in a layer that
    is ``causal`` (key <= query) and has ``window`` (``encoder.positional.window_visible``: ``|i - j| <= window //
    2`` for "symmetric", ``0 <= i - j < window`` for "causal"; 0: none); None when every key is visible."""
    if not causal and not window:
        return None
    queries, keys = np.arange(begin, end)[:, None], np.arange(first, length)[None, :]  # (R, 1), (1, K)
    seen = keys <= queries if causal or (window and window_kind == "causal") else np.ones((end - begin, 1), bool)
    if window:
        reach = (window - 1, 0) if window_kind == "causal" else (window // 2, window // 2)  # keys before, after
        seen = seen & (keys >= queries - reach[0]) & (keys <= queries + reach[1])  # (R, K)
    return None if seen.all() else seen[None]


def soft_cap(logits, cap: float):
    """``tanh(logits / cap) * cap`` in transformers' order (Gemma 2's soft-capping), tanh taken in float64 and
    rounded once (TensorFlow's float32 tanh is ten times less exact than PyTorch's)."""
    capped = ops.tanh(ops.cast(logits / ops.cast(cap, logits.dtype), "float64"))
    return ops.cast(capped, logits.dtype) * ops.cast(cap, logits.dtype)


def mask_values(values, value_mask):
    """``values`` (B, S, H, dh) with each key token's vectors times ``value_mask`` (B, S), or unchanged for None."""
    if value_mask is None:
        return values
    return values * ops.cast(value_mask, values.dtype)[:, :, None, None]
