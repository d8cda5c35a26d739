"""DeBERTa's disentangled attention: each logit is a content term plus terms between content and relative
positions, all divided by one scale.

For query i and key j, with ``r = index[i, j]`` the row of the relative-embedding table for their distance
(``encoder.positional.disentangled_index``) and ``Pq``/``Pk`` that table projected by the (shared or own) query
and key projections::

    c2c[i, j] = q_i . k_j / s        c2p[i, j] = q_i . Pk_r / s        p2c[i, j] = k_j . Pq_r / s
    logits = c2c + (c2p + p2c),      s = sqrt(head_dim * (1 + number of position terms))

(DeBERTa's p2c reads row ``-bucket(j - i)``, the same row: the buckets are odd in the distance.)
"""

from __future__ import annotations

import keras
import numpy as np
from keras import ops

from encoder.config import EncoderConfig
from encoder.layers import InstrumentedAttention, mask_values


@keras.saving.register_keras_serializable(package="headlight")
class DisentangledAttention(InstrumentedAttention):
    """``InstrumentedAttention`` with DeBERTa's content->position (``c2p``) and position->content (``p2c``) terms.

    The content projections are ``query_dense``/``key_dense``/``value_dense``/``output_dense`` as in BERT. Without
    ``config.share_att_key`` the position terms project the relative embeddings with their own ``pos_key_dense``
    (c2p) and ``pos_query_dense`` (p2c); with it (DeBERTa-v3), with ``key_dense`` and ``query_dense``.

    Args:
        config: EncoderConfig with ``relative_attention="disentangled"`` (heads, width, ``pos_att_type``,
            ``share_att_key``).

    Call args:
        query, value, attention_mask, head_mask, value_mask, attention_scale: as ``InstrumentedAttention``.
        position_bias: the pair ``(relative_embeddings (2S, D), relative_index (T, S_keys) int)``: the
            relative-embedding table (normalised when the model says so) and the table row of each (query, key).

    Returns:
        ``(output, pattern, terms)``: output (B, T, D), pattern (B, H, T, S) after softmax, and terms ``c2c`` and
        each of ``pos_att_type`` as (B, H, T, S), already divided by the scale: they sum to the logits the
        softmax used.

    Example:
        >>> cfg = EncoderConfig(vocab_size=9, num_layers=1, num_heads=2, d_model=8, dff=16, positional="none",
        ...                     relative_attention="disentangled", position_buckets=4, max_relative_positions=8,
        ...                     pos_att_type=("p2c", "c2p"), share_att_key=True)
        >>> layer = DisentangledAttention(cfg)
        >>> index = keras.ops.convert_to_tensor(np.clip(np.arange(3)[:, None] - np.arange(3) + 4, 0, 7))
        >>> out, pattern, terms = layer(keras.ops.ones((1, 3, 8)), keras.ops.ones((1, 3, 8)),
        ...                             position_bias=(keras.ops.ones((8, 8)), index))
        >>> sorted(terms), tuple(pattern.shape)
        (['c2c', 'c2p', 'p2c'], (1, 2, 3, 3))
    """

    def __init__(self, config: EncoderConfig, **kwargs):
        super().__init__(num_heads=config.num_heads, key_dim=config.head_dim, dropout=config.dropout, **kwargs)
        self.config = config
        self.position_terms = tuple(term for term in ("c2p", "p2c") if term in config.pos_att_type)
        self.scale = np.sqrt(np.float32(config.head_dim * (1 + len(self.position_terms))))  # float32, as torch
        self.pos_key_dense = self.pos_query_dense = None

    def build(self, query_shape, value_shape):
        super().build(query_shape, value_shape)
        if self.config.share_att_key:
            return
        relative_shape = (1, None, self.config.d_model)  # (1, 2S, D)
        if "c2p" in self.position_terms:
            self.pos_key_dense = keras.layers.EinsumDense.from_config({**self.key_dense.get_config(),
                                                                       "name": "pos_key"})
            self.pos_key_dense.build(relative_shape)
        if "p2c" in self.position_terms:
            self.pos_query_dense = keras.layers.EinsumDense.from_config({**self.query_dense.get_config(),
                                                                         "name": "pos_query"})
            self.pos_query_dense.build(relative_shape)

    def get_config(self):
        return {**keras.layers.Layer.get_config(self), "config": self.config.to_dict()}

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        return cls(EncoderConfig.from_dict(config.pop("config")), **config)

    def call(self, query, value, attention_mask=None, head_mask=None, position_bias=None, rotary=None,
             value_mask=None, attention_scale=None, training=None):
        relative_embeddings, index = position_bias  # no rotary positions: the config has relative ones
        q = self.query_dense(query)  # (B, T, H, dh)
        k = self.key_dense(value)  # (B, S, H, dh)
        v = mask_values(self.value_dense(value), value_mask)  # (B, S, H, dh)
        scale = ops.cast(self.scale, q.dtype)
        # Content: the key divided by the scale before the product, as transformers rounds it.
        terms = {"c2c": ops.einsum(self._dot_product_equation, k / scale, q)}  # (B, H, T, S)
        relative = relative_embeddings[None]  # (1, 2S, D)
        shape = ops.shape(terms["c2c"])
        if "c2p" in self.position_terms:
            pos_key = (self.key_dense if self.pos_key_dense is None else self.pos_key_dense)(relative)[0]  # (2S, H, dh)
            by_row = ops.einsum("bthd,rhd->bhtr", q, pos_key)  # (B, H, T, 2S): query i . every row
            terms["c2p"] = ops.take_along_axis(by_row, ops.broadcast_to(index, shape), axis=-1) / scale
        if "p2c" in self.position_terms:
            pos_query = (self.query_dense if self.pos_query_dense is None else self.pos_query_dense)(relative)[0]
            by_row = ops.einsum("bshd,rhd->bhsr", k, pos_query)  # (B, H, S, 2S): key j . every row
            transposed = ops.broadcast_to(ops.transpose(index), (*shape[:2], shape[3], shape[2]))  # (B, H, S, T)
            terms["p2c"] = ops.swapaxes(ops.take_along_axis(by_row, transposed, axis=-1), -1, -2) / scale
        logits = terms["c2c"]
        if self.position_terms:
            position = terms[self.position_terms[0]]
            for name in self.position_terms[1:]:
                position = position + terms[name]
            logits = logits + position  # transformers' order: c2c + (c2p + p2c)
        pattern = self._masked_softmax(logits, attention_mask)  # (B, H, T, S)
        context = self._mix(pattern, v, attention_scale, training)
        if head_mask is not None:
            context = context * ops.cast(head_mask, context.dtype)[:, None, :, None]
        return self.output_dense(context), pattern, terms

