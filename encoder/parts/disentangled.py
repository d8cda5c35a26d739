"""DeBERTa's disentangled attention (the one family that uses it): each logit is a content term plus terms between
content and relative positions, all divided by one scale.

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

from encoder.config import DisentangledPositions, EncoderConfig
from encoder.parts.attention import InstrumentedAttention, mask_values
from encoder.parts.norms import make_norm
from encoder.parts.positions import AbsolutePart
from encoder.positional import disentangled_index


@keras.saving.register_keras_serializable(package="headlight")
class DisentangledAttention(InstrumentedAttention):
    """``InstrumentedAttention`` with DeBERTa's content->position (``c2p``) and position->content (``p2c``) terms.

    The content projections are ``query_dense``/``key_dense``/``value_dense``/``output_dense`` as in BERT. Without
    ``share_key`` the position terms project the relative embeddings with their own ``pos_key_dense`` (c2p) and
    ``pos_query_dense`` (p2c); with it (DeBERTa-v3), with ``key_dense`` and ``query_dense``.

    Args:
        config: EncoderConfig whose ``positions`` is a ``DisentangledPositions``.

    Call args:
        query, value, attention_mask, head_mask, value_mask, attention_scale: as ``InstrumentedAttention``.
        position_bias: the pair ``(relative_embeddings (2S, D), relative_index (T, S_keys) int)``: the
            relative-embedding table (normalised when the model says so) and the table row of each (query, key).

    Returns:
        ``(output, pattern, terms)``: output (B, T, D), pattern (B, H, T, S) after softmax, and terms ``c2c`` and
        each position term as (B, H, T, S), already divided by the scale: they sum to the logits the softmax used.

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
        scheme: DisentangledPositions = config.positions
        self.position_terms = tuple(term for term in ("c2p", "p2c") if term in scheme.terms)
        self.scale = np.sqrt(np.float32(config.head_dim * (1 + len(self.position_terms))))  # float32, as torch
        self.pos_key_dense = self.pos_query_dense = None

    def build(self, query_shape, value_shape):
        super().build(query_shape, value_shape)
        if self.config.positions.share_key:
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

    def call(self, query, value, attention_mask=None, head_mask=None, position_bias=None, value_mask=None,
             attention_scale=None, training=None):
        relative_embeddings, index = position_bias
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
        return self.mix_values(pattern, v, head_mask, attention_scale, training), pattern, terms


class DisentangledPart(AbsolutePart):
    """DeBERTa's positions (``DisentangledPositions``): the absolute table when it has one (``position_biased_input``),
    2S learned relative embeddings (``relative_embeddings``, one row per bucket of query - key; layer-normalised by
    ``relative_norm`` when ``normalize``), and ``DisentangledAttention`` in every layer."""

    def __init__(self, config: EncoderConfig, **kwargs):
        super().__init__(config, **kwargs)
        scheme: DisentangledPositions = config.positions
        self.relative_embeddings = keras.layers.Embedding(2 * scheme.span, config.d_model, name="relative_embeddings")
        self.relative_norm = make_norm(config.block, "relative_norm", center=True) if scheme.normalize else None
        # Distances beyond this reach (and beyond the longest input) all read the first or last row.
        self._reach = max(config.max_positions, scheme.max_distance)
        self._rows = disentangled_index(  # row of query - key, from -reach to reach
            np.arange(-self._reach, self._reach + 1), scheme.span, scheme.buckets, scheme.max_distance)

    @classmethod
    def attention_for(cls, config: EncoderConfig, index: int) -> InstrumentedAttention:
        return DisentangledAttention(config, name="attention")

    def build(self, input_shape=None):
        super().build(input_shape)
        self.relative_embeddings.build((None,))
        if self.relative_norm is not None:
            self.relative_norm.build((None, self.config.d_model))

    def layer_context(self, length):
        """``(relative embeddings (2S, D), index (T, T) int32)``: the table (layer-normalised when ``normalize``),
        computed once per call for every layer, and the row of each [query, key] pair (``disentangled_index`` of
        query - key; rows beyond the reach are the end rows)."""
        table = self.relative_embeddings.embeddings  # (2S, D)
        if self.relative_norm is not None:
            table = self.relative_norm(table)
        positions = ops.arange(length)
        relative = positions[:, None] - positions[None, :]  # (T, T): query - key
        reach = self._reach
        return table, ops.take(ops.convert_to_tensor(self._rows), ops.clip(relative, -reach, reach) + reach)

    def position_scheme(self) -> dict[str, np.ndarray]:
        """Over the signed distances key - query from -R to R (R the larger of ``max_positions`` and
        ``max_distance``; farther keys read the end rows):

        - ``distances``: (2R + 1,) int32, -R .. R.
        - ``buckets``: (2R + 1,) int32, the row of ``relative_embeddings`` each distance reads (c2p and p2c alike).
        - ``bucket_edges``: (E,) float32, the half-integer distances where the row changes (for drawing).
        - ``relative_embeddings``: (2S, D) float32, the table every layer projects (after its layer norm).
        """
        distances = np.arange(-self._reach, self._reach + 1, dtype=np.int32)  # key - query
        rows = self._rows[::-1]  # the rows are indexed by query - key
        table, _ = self.layer_context(1)
        return {"distances": distances, "buckets": np.ascontiguousarray(rows, dtype=np.int32),
                "bucket_edges": (distances[1:][rows[1:] != rows[:-1]] - np.float32(0.5)).astype(np.float32),
                "relative_embeddings": keras.ops.convert_to_numpy(table).astype(np.float32)}
