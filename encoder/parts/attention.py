"""Self-attention that hands back its weights: ``InstrumentedAttention`` and the logit rule it runs.

A *logit rule* is what a position scheme does inside attention: a callable
``rule(attention, query (B, T, H, dh), key (B, S, H, dh), position_bias, start=0) -> (logits (B, H, T, S), terms)``,
terms a dict of named (B, H, T, S) tensors that sum to the logits (empty when the logits have one term). Query row i
is position ``start + i`` and key j position j (``start`` > 0 when cached keys precede the queries: generation).
``content_logits`` is the plain scaled product; ``encoder.parts.positions`` has the others.
"""

from __future__ import annotations

from collections.abc import Callable

import keras
from keras import ops


def content_logits(attention: InstrumentedAttention, query, key, position_bias=None, start=0):
    """``(q.k * scaling, {})``: logits with no positional term."""
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
        cache: optional ``(keys, values)``, each (B, S0, Hkv, dh): the keys and values of S0 earlier tokens as
            ``project_keys_values`` gives them (generation's key/value cache); this call's keys and values follow
            them, so the keys are S = S0 + T tokens.
        start: the position of the first query (an int32 scalar tensor or int; with a cache, S0): the logit
            rule's ``start``.

    Returns:
        ``(output, pattern, terms)``: output (B, T, D), pattern (B, H, T, S), the weights after softmax, and the
        rule's terms; with a ``cache``, a fourth item: the new cache ``(keys, values)``, each (B, S, Hkv, dh).
    """

    def __init__(self, num_heads: int, key_dim: int, key_value_heads: int | None = None,
                 scaling: float | None = None, logits: Callable | None = None, **kwargs):
        super().__init__(num_heads=num_heads, key_dim=key_dim, **kwargs)
        self.key_value_heads = num_heads if key_value_heads is None else key_value_heads
        if self.key_value_heads < 1 or num_heads % self.key_value_heads:
            raise ValueError(f"key_value_heads ({self.key_value_heads}) must divide num_heads ({num_heads})")
        self.scaling = self._inverse_sqrt_key_dim if scaling is None else scaling
        self.logits = content_logits if logits is None else logits

    def get_config(self):
        return {**super().get_config(), "key_value_heads": self.key_value_heads, "scaling": self.scaling}

    def build(self, query_shape, value_shape, key_shape=None):
        """MultiHeadAttention's projections; with grouped-query attention, the key and value projections have
        ``key_value_heads`` heads (same names and equations as MultiHeadAttention's for (B, T, D) inputs: ``query``,
        ``key``, ``value``, ``attention_output``)."""
        if self.key_value_heads == self._num_heads:
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
        self._output_dense = self._make_output_dense(query_shape, common, "attention_output")
        self._output_dense.build((*query_shape[:-1], self._num_heads, self._value_dim))

    def call(self, query, value, attention_mask=None, head_mask=None, position_bias=None, value_mask=None,
             attention_scale=None, training=None, cache=None, start=None):
        q = self.query_dense(query)  # (B, T, H, dh)
        k, v = self.project_keys_values(value)  # (B, S, Hkv, dh) each
        v = mask_values(v, value_mask)
        if cache is not None:  # generation: the earlier tokens' keys and values first
            k = ops.concatenate([cache[0], k], axis=1)
            v = ops.concatenate([cache[1], v], axis=1)
        where = {} if start is None else {"start": start}
        logits, terms = self.logits(self, q, self.shared_heads(k), position_bias, **where)  # (B, H, T, S)
        pattern = self._masked_softmax(logits, attention_mask)  # (B, H, T, S)
        output = self.mix_values(pattern, self.shared_heads(v), head_mask, attention_scale, training)
        return (output, pattern, terms) if cache is None else (output, pattern, terms, (k, v))

    def project_keys_values(self, value):
        """``(keys, values)``, each (B, S, Hkv, dh): what a key/value cache keeps of S tokens (before positions
        act on the keys and before ``shared_heads``)."""
        return self.key_dense(value), self.value_dense(value)

    def shared_heads(self, x):
        """Key or value heads (B, S, Hkv, dh) repeated to every query head (B, S, H, dh); unchanged without
        grouped-query attention."""
        if self.key_value_heads == self._num_heads:
            return x
        return ops.repeat(x, self._num_heads // self.key_value_heads, axis=2)

    def mix_values(self, pattern, value, head_mask, attention_scale, training):
        """(B, T, D): the weights (times ``attention_scale`` when given) mixing the values (B, S, H, dh), each head's
        context times its ``head_mask``, through the output projection."""
        weights = pattern if attention_scale is None else pattern * ops.cast(attention_scale, pattern.dtype)
        weights = self._dropout_layer(weights, training=training)
        # Batched matmuls over explicit (B, H, ...) layouts: oneDNN runs them faster than the equivalent einsums.
        context = ops.transpose(ops.matmul(weights, ops.transpose(value, (0, 2, 1, 3))), (0, 2, 1, 3))  # (B, T, H, dh)
        if head_mask is not None:
            context = context * ops.cast(head_mask, context.dtype)[:, None, :, None]
        return self.output_dense(context)

    def scaled_product(self, query, key):
        """(B, H, T, S): q.k * scaling, scaled after the product as transformers scales it."""
        logits = ops.matmul(ops.transpose(query, (0, 2, 1, 3)), ops.transpose(key, (0, 2, 3, 1)))  # (B, H, T, S)
        return logits * ops.cast(self.scaling, logits.dtype)


def mask_values(values, value_mask):
    """``values`` (B, S, H, dh) with each key token's vectors times ``value_mask`` (B, S), or unchanged for None."""
    if value_mask is None:
        return values
    return values * ops.cast(value_mask, values.dtype)[:, :, None, None]
