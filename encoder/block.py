"""The residual block (``EncoderLayer``) and ``ConfigArgument``, the Keras (de)serialisation of layers built from
an ``EncoderConfig``."""

from __future__ import annotations

import keras
import numpy as np
from keras import ops

from encoder.config import EncoderConfig
from encoder.parts.attention import RowBlocks, heads_first, prepared
from encoder.parts.mlp import feed_forward, mlp_layers
from encoder.parts.norms import make_norm
from encoder.parts.positions import AbsolutePart
from encoder.parts.schemes import position_part

PROJECTION_ROWS = 1024  # a long input's norms and projections before its attention: positions at a time
MLP_ROW_BYTES = 8 * 2**20  # a long input's MLP: the (rows, 2 dff) float32 intermediates of one chunk of positions


class ConfigArgument:
    """``get_config``/``from_config`` for Keras layers and models whose one argument is an ``EncoderConfig``."""

    def get_config(self):
        return {**super().get_config(), "config": self.config.to_dict()}

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        return cls(EncoderConfig.from_dict(config.pop("config")), **config)


def by_positions(function, x, rows: int | None, axis: int = 1, out: np.ndarray | None = None):
    """``function`` of ``x`` (B, T, ...) (a tensor or NumPy), a function of each position's own row, ``rows``
    positions at a time (a known T and ``rows``; else all at once), its outputs joined along ``axis`` (where their
    positions are): the same numbers, with temporaries of ``rows`` positions instead of T. With ``out`` (NumPy,
    positions on axis 1, ``rows`` given) each piece is written there as it is made, and ``out`` returned: no
    full-length tensor of the outputs, nor their pieces and their join together."""
    length = x.shape[1]
    if out is not None:
        for begin in range(0, length, rows):
            out[:, begin:begin + rows] = np.asarray(function(ops.convert_to_tensor(x[:, begin:begin + rows])))
        return out
    if rows is None or length is None or length <= rows:
        return function(ops.convert_to_tensor(x))
    return ops.concatenate([function(ops.convert_to_tensor(x[:, begin:begin + rows]))
                            for begin in range(0, length, rows)], axis=axis)


@keras.saving.register_keras_serializable(package="headlight")
class EncoderLayer(ConfigArgument, keras.layers.Layer):
    """One Transformer layer: self-attention, then the MLP, each a residual around it.

    Post-norm (``block.placement`` "post": BERT, the classic encoder): ``x = norm(x + f(x))``. Pre-norm ("pre",
    GPT-2, ModernBERT, Llama): ``x = x + f(norm(x))``; then ``attention_norm`` is GPT-2's ``ln_1`` and
    ``output_norm`` its ``ln_2``; with ``block.sandwich_norms`` (Gemma) ``x = x + norm(f(norm(x)))``, the outer
    norms ``attended_norm`` and ``mlp_output_norm``. The attention comes from the position scheme's part
    (``encoder.parts.schemes``: its logit rule, or its own attention); a windowed layer (``attention.windows``)
    joins its window to the attention mask. A decoder layer of an encoder-decoder (``attention.cross``: T5, BART)
    has a third sublayer between the two: ``cross_attention`` over the encoder's last hidden states (no positional
    term), normalised by ``cross_attention_norm`` in the same placement (T5's ``layer.1``, BART's ``encoder_attn``).

    Args:
        config: EncoderConfig.
        index: int, the layer's place in the stack (its window, its rotary base, the first layer's norm).

    Example:
        >>> layer = EncoderLayer(EncoderConfig(vocab_size=10, num_layers=1, num_heads=2, d_model=8, dff=16))
        >>> y, pattern, terms = layer(keras.ops.ones((1, 3, 8)))
        >>> tuple(pattern.shape)
        (1, 2, 3, 3)
    """

    def __init__(self, config: EncoderConfig, index: int = 0, **kwargs):
        super().__init__(**kwargs)
        self.config = config
        self.index = index
        self.window = config.attention.window(index)
        block = config.block
        self.attention = position_part(config).attention_for(config, index)
        self.attention_dropout = keras.layers.Dropout(config.dropout)
        self.attention_norm = (make_norm(block, "attention_norm") if block.first_attention_norm or index
                               else keras.layers.Identity(name="attention_norm"))
        self.intermediate, self.output_dense = mlp_layers(block, config.d_model)
        self.output_dropout = keras.layers.Dropout(config.dropout)
        self.output_norm = make_norm(block, "output_norm")
        # Sandwich norms (Gemma): the attention's and the MLP's outputs normalised before the residual sum.
        self.attended_norm = make_norm(block, "attended_norm") if block.sandwich_norms else None
        self.mlp_output_norm = make_norm(block, "mlp_output_norm") if block.sandwich_norms else None
        cross = config.attention.cross  # a decoder's attention over the encoder: the plain scaled product
        self.cross_attention = AbsolutePart.attention_for(config, index, "cross_attention") if cross else None
        self.cross_attention_norm = make_norm(block, "cross_attention_norm") if cross else None

    def get_config(self):
        return {**super().get_config(), "index": self.index}

    def build(self, input_shape):
        self.attention.build(input_shape, input_shape)
        self.attention_norm.build(input_shape)
        self.intermediate.build(input_shape)
        self.output_dense.build((*input_shape[:-1], self.config.block.dff))
        self.output_norm.build(input_shape)
        for norm in (self.attended_norm, self.mlp_output_norm):
            if norm is not None:
                norm.build(input_shape)
        if self.cross_attention is not None:  # built last: the encoders' draws stay where they were
            self.cross_attention.build(input_shape, input_shape)
            self.cross_attention_norm.build(input_shape)

    def call(self, x, attention_mask=None, head_mask=None, position_bias=None, value_mask=None,
             attention_scale=None, training=None, cache=None, start=None, encoder_hidden=None, encoder_mask=None):
        """``(x, pattern, terms)``; with a key/value ``cache`` (generation: ``InstrumentedAttention``'s ``cache``
        and ``start``, ``x`` the new tokens only), a fourth item, the layer's new cache; with ``encoder_hidden``
        (B, S, D) (a decoder layer, ``attention.cross``), a fourth item, the cross-attention pattern (B, H, T, S),
        keys hidden where ``encoder_mask`` (broadcastable to (B, T, S) bool) is False. A long input runs by
        ``call_rows`` instead."""
        probes = dict(value_mask=value_mask, attention_scale=attention_scale)  # InstrumentedAttention's call args
        probes.update({} if cache is None else {"cache": cache, "start": start})
        decoder = self.cross_attention is not None
        if (encoder_hidden is not None) != decoder or (decoder and cache is not None):
            raise ValueError("a decoder layer (attention.cross) runs on encoder_hidden, without a cache; no other "
                             "layer takes encoder_hidden")
        crossed = []
        attended, pattern, terms, *kept = self._attend(self.attention_input(x), attention_mask, head_mask,
                                                       position_bias, training, **probes)
        x = self._add_attended(x, attended)
        if encoder_hidden is not None:
            x, cross_pattern = self._cross_attend(x, encoder_hidden, encoder_mask,
                                                  self.config.block.placement == "pre", training)
            crossed = [cross_pattern]
        return (self._add_fed(x, training), pattern, terms, *kept, *crossed)

    def call_rows(self, x, position_bias, rows: RowBlocks, out: np.ndarray, overview=None):
        """This layer on a long unpadded input ``x`` (B, T, D) at inference (NumPy: the pass's states, read a chunk
        at a time, so that no full-length copy of it is made), its output written into ``out`` (B, T,
        D) NumPy a chunk of positions at a time (``chunk_rows``), so that no full-length tensor but the
        attention's keys and values is made: each block of ``rows.size`` queries (``RowQueries``: computed a
        piece of positions at a time as the blocks reach them) and its weights over the keys it can see
        (``RowBlocks.blocks``, ``attention_rows``) mix those keys' values, then the chunk's residual sums, norms and
        MLP run on its rows alone (each position's output is its own row's), as ``call`` runs them.
        ``overview``: None, or what reads each block's weights (``InstrumentedAttention.attended_rows``).

        Returns:
            ``(queries, keys (B, Hkv, T, dh))``: the ``RowQueries`` (``whole()`` gives all (B, T, H, dh)) and the
            keys heads first, as the logit rule multiplies them (``encoder.parts.attention.prepared``): with them,
            ``attention_rows`` gives any rows' weights again, exactly.
        """
        queries, keys, values = self.row_operands(x, position_bias)
        blocks = rows.for_window(self.window)
        length = int(x.shape[1])
        chunk = self.chunk_rows(blocks.size)
        for begin in range(0, length, chunk):
            end = min(begin + chunk, length)
            attended = ops.concatenate([self.attention.attended_rows(queries.rows(*block[:2]), keys, values, blocks,
                                                                     *block, position_bias, overview)
                                        for block in blocks.blocks(length, begin, end)], axis=1)  # (B, R, D)
            stream = self._add_attended(ops.convert_to_tensor(x[:, begin:end]), attended)  # (B, R, D)
            out[:, begin:end] = np.asarray(self._add_fed(stream, False))
        return queries, keys

    def row_operands(self, x, position_bias):
        """``(queries, keys (B, Hkv, T, dh), values (B, Hkv, T, dh))`` of this layer's self-attention on a long
        input ``x`` (B, T, D), the keys as the logit rule multiplies them (``prepared_rows``), the keys and values
        heads first, for ``InstrumentedAttention.attended_rows`` (which puts each block's queries heads first);
        ``queries`` a ``RowQueries``, never whole. Each full-length temporary is dropped as soon as it is dead
        (TensorFlow's CPU allocator keeps its peak rather than give memory back)."""
        keys = self.prepared_by_rows(x, "keys", position_bias, heads=True)
        return RowQueries(self, x, position_bias), keys, self.prepared_by_rows(x, "values", heads=True)

    def chunk_rows(self, block: int) -> int:
        """Positions per chunk of ``call_rows``: whole blocks of ``block`` queries, as many as keep the chunk's
        (rows, 2 dff) float32 MLP intermediates within ``MLP_ROW_BYTES`` (at least one block)."""
        return max(1, MLP_ROW_BYTES // (4 * 2 * self.config.block.dff * block)) * block

    def _add_attended(self, x, attended):
        """(B, T, D): the residual stream ``x`` after the attention sublayer gave ``attended`` (B, T, D)."""
        if self.config.block.placement == "pre":
            if self.attended_norm is not None:
                attended = self.attended_norm(attended)
            return x + attended
        return self.attention_norm(x + attended)

    def _add_fed(self, x, training):
        """(B, T, D): the residual stream ``x`` after the MLP sublayer (its norms as the placement says)."""
        if self.config.block.placement == "pre":
            fed = self._feed_forward(self.output_norm(x), training)
            if self.mlp_output_norm is not None:
                fed = self.mlp_output_norm(fed)
            return x + fed
        return self.output_norm(x + self._feed_forward(x, training))

    def attention_input(self, x):
        """(B, T, D): what the self-attention reads of the layer's input ``x`` (B, T, D): ``attention_norm(x)``
        before a pre-norm block's attention, ``x`` itself in a post-norm block."""
        return self.attention_norm(x) if self.config.block.placement == "pre" else x

    def queries_keys(self, x, position_bias=None):
        """``(queries (B, T, H, dh), keys (B, T, Hkv, dh))`` of this layer's self-attention on its input ``x``
        (B, T, D), as its logit rule multiplies them (``prepared_rows``): the ones the pass by rows
        (``call_rows``) multiplies, by the same operations on the same pieces of positions; ``position_bias`` as
        that pass's (``positions.row_context``)."""
        return tuple(self.prepared_by_rows(x, part, position_bias) for part in ("queries", "keys"))

    def prepared_by_rows(self, x, part: str, position_bias=None, heads: bool = False):
        """``prepared_rows`` of every position of ``x`` (B, T, D), ``PROJECTION_ROWS`` at a time (each position's
        are its own row's), so the norm's, the projections' and the rotation's temporaries are never full-length:
        (B, T, heads, dh), or (B, heads, T, dh) with ``heads`` (each piece turned before they are joined)."""
        length = int(x.shape[1])
        pieces = [self.prepared_rows(x, begin, min(begin + PROJECTION_ROWS, length), part, position_bias)
                  for begin in range(0, length, PROJECTION_ROWS)]
        pieces = [heads_first(piece) for piece in pieces] if heads else pieces
        return pieces[0] if len(pieces) == 1 else ops.concatenate(pieces, axis=2 if heads else 1)

    def prepared_rows(self, x, begin: int, end: int, part: str, position_bias=None):
        """``part`` ("queries" (B, n, H, dh), "keys" or "values" (B, n, Hkv, dh)) of this layer's self-attention at
        positions ``begin`` .. ``end - 1`` of its input ``x`` (B, T, D): their ``attention_input`` projected (q/k
        norms included), queries and keys then as the logit rule multiplies them (``prepared``: rotated by
        position for rotary positions; ``position_bias`` the pass's)."""
        attended = self.attention_input(ops.convert_to_tensor(x[:, begin:end]))
        if part == "values":
            return self.attention.value_dense(attended)
        projected = self.attention.projected_queries_keys(attended, attended)[part == "keys"]
        return prepared(self.attention.logits, self.attention, projected, position_bias, begin)

    def _cross_attend(self, x, encoder_hidden, encoder_mask, pre: bool, training):
        """``(x, pattern)``: the residual stream after the cross-attention sublayer, and its (B, H, T, S) weights."""
        queries = self.cross_attention_norm(x) if pre else x
        attended, pattern, _ = self.cross_attention(queries, encoder_hidden, attention_mask=encoder_mask,
                                                    training=training)
        x = x + self.attention_dropout(attended, training=training)
        return (x if pre else self.cross_attention_norm(x)), pattern

    def _attend(self, x, attention_mask, head_mask, position_bias, training, value_mask=None, attention_scale=None,
                cache=None, start=None):
        cached = {} if cache is None else {"cache": cache, "start": start}
        if self.window:
            attention_mask = self._window_mask(attention_mask, ops.shape(x)[1], **cached)
        attended, pattern, terms, *kept = self.attention(
            x, x, attention_mask=attention_mask, head_mask=head_mask, position_bias=position_bias,
            value_mask=value_mask, attention_scale=attention_scale, training=training, **cached
        )
        return self.attention_dropout(attended, training=training), pattern, terms, *kept

    def _window_mask(self, attention_mask, length, cache=None, start=None):
        """A windowed layer's mask, broadcastable to (B, T, S): keys within ``window // 2`` of the query (a
        symmetric window) or the query and the ``window - 1`` keys before it (a causal one), and not padded. With a
        ``cache`` of ``start`` earlier tokens (generation), query i is position ``start + i`` and the S = start + T
        keys are positions 0 .. S - 1."""
        queries = ops.arange(length)
        keys = queries
        if cache is not None:
            queries, keys = queries + start, ops.arange(start + length)
        distance = queries[:, None] - keys[None, :]  # (T, S): query - key
        if self.config.attention.window_kind == "causal":
            window = ops.logical_and(distance >= 0, distance < self.window)[None]  # (1, T, S)
        else:
            window = (ops.abs(distance) <= self.window // 2)[None]  # (1, T, S)
        return window if attention_mask is None else ops.logical_and(window, attention_mask)

    def _feed_forward(self, x, training):
        """(B, T, D): the MLP on ``x`` (B, T, D)."""
        return self.output_dropout(feed_forward(self.config.block, self.intermediate, self.output_dense, x),
                                   training=training)


class RowQueries:
    """A long input's queries of one layer (B, T, H, dh) as its logit rule multiplies them
    (``EncoderLayer.prepared_rows``), computed ``PROJECTION_ROWS`` positions at a time as its blocks of queries ask
    for them (in order: one piece held at a time), never whole: the pass's peak holds the layer's keys and values
    and no full-length queries (25 MB less at 8,192 tokens of width 768, and their copies while they were joined
    and turned). The same operations on the same pieces as ``EncoderLayer.queries_keys``: the same numbers.

    Args:
        layer: the ``EncoderLayer``.
        x: (B, T, D) its input (the pass's NumPy state).
        position_bias: the pass's (``positions.row_context``).
    """

    def __init__(self, layer: EncoderLayer, x, position_bias):
        self.layer, self.x, self.position_bias = layer, x, position_bias
        self.length = int(x.shape[1])
        self._piece: tuple[int, object] = (-1, None)  # (its first position, its queries (B, n, H, dh))

    def rows(self, begin: int, end: int):
        """(B, R, H, dh): the queries of positions ``begin`` .. ``end - 1``."""
        parts = []
        while begin < end:
            start = begin // PROJECTION_ROWS * PROJECTION_ROWS
            if self._piece[0] != start:
                self._piece = (-1, None)  # the last piece is dropped before the next is made
                stop = min(start + PROJECTION_ROWS, self.length)
                self._piece = (start, self.layer.prepared_rows(self.x, start, stop, "queries", self.position_bias))
            stop = min(end, start + PROJECTION_ROWS)
            parts.append(self._piece[1][:, begin - start:stop - start])
            begin = stop
        return parts[0] if len(parts) == 1 else ops.concatenate(parts, axis=1)

    def whole(self):
        """(B, T, H, dh): every position's queries at once (``EncoderLayer.prepared_by_rows``)."""
        return self.layer.prepared_by_rows(self.x, "queries", self.position_bias)
