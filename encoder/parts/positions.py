"""Position schemes as parts: each is a Keras layer (``name="positions"``) built from the config's scheme, with one
interface the model and its blocks call, whatever the scheme:

- ``attention_for(config, index)`` (class method): layer ``index``'s attention, with the scheme's logit rule;
- ``add_to(x, token_ids)``: the absolute table's rows added to the embeddings (nothing for "none");
- ``layer_context(length)``: what every layer's attention reads (its ``position_bias``), computed once per call;
- ``position_scheme()`` and ``positional_table()``: what the positional lab and the trace report.

``AbsolutePart`` (the table alone), ``RelativeBucketsPart`` (MPNet's bias; T5's buckets) and ``RotaryPart``
(ModernBERT) are here; DeBERTa's disentangled attention is ``encoder.parts.disentangled``.
"""

from __future__ import annotations

import keras
import numpy as np
from keras import ops

from encoder.config import EncoderConfig, RelativeBuckets, RotaryPositions
from encoder.parts.attention import InstrumentedAttention
from encoder.parts.norms import make_norm
from encoder.positional import relative_position_buckets, rope_frequencies, sinusoidal_encoding


class AbsolutePart(keras.layers.Layer):
    """An absolute table (``AbsolutePositions``): sinusoidal, learned (``position_embedding``) or none; every
    layer's attention is the plain scaled product.

    Args:
        config: EncoderConfig (its ``positions``, widths, ``max_positions``, ``pad_token_id``).
    """

    def __init__(self, config: EncoderConfig, **kwargs):
        super().__init__(**kwargs)
        self.config = config
        rows, width, table = config.table_rows, config.embedding_width, config.positions.table
        self.table = (keras.layers.Embedding(rows, width, name="position_embedding") if table == "learned"
                      else None)
        self._fixed = (sinusoidal_encoding(rows, width) if table == "sinusoidal"  # (P, E); zeros for "none"
                       else np.broadcast_to(np.float32(0.0), (rows, width)))

    @classmethod
    def attention_for(cls, config: EncoderConfig, index: int, name: str = "attention") -> InstrumentedAttention:
        """Layer ``index``'s attention (projections into ``num_heads`` heads of ``head_dim``), named ``name``."""
        qkv_bias, output_bias = config.attention_biases
        norm = (lambda name: make_norm(config.block, name)) if config.attention.qk_norm else None
        return InstrumentedAttention(num_heads=config.num_heads, key_dim=config.head_dim,
                                     key_value_heads=config.attention.key_value_heads or None, scaling=config.scaling,
                                     dropout=config.dropout, use_bias=qkv_bias, output_bias=output_bias,
                                     qk_norm=norm, softcap=config.attention.softcap, name=name,
                                     logits=cls.logit_rule(config, index))

    @classmethod
    def logit_rule(cls, config: EncoderConfig, index: int):
        """Layer ``index``'s logit rule (``encoder.parts.attention``); None is the plain scaled product."""
        return None

    def build(self, input_shape=None):
        if self.table is not None:
            self.table.build((None,))
        self.built = True

    def add_to(self, x, token_ids, start=None):
        """``x`` (B, T, E) plus each token's row of the table; unchanged without one.

        Without an offset, token i gets row i (row ``start + i`` when ``start``, an int32 scalar, says the tokens
        follow that many earlier ones: generation's cached steps); with one and ``skip_pads`` False (BART), row
        ``offset + i``. With one (RoBERTa), positions count only non-pad tokens, starting after the pad id, exactly
        as transformers numbers them (``encoder.positional.position_ids``).
        """
        cfg = self.config
        if cfg.positions.table == "none":
            return x
        table = ops.convert_to_tensor(self._fixed) if self.table is None else self.table.embeddings  # (P, E)
        offset = cfg.positions.offset
        if not (offset and cfg.positions.skip_pads):  # token i: row offset + i (+ start)
            first = offset if start is None else start + offset
            return x + ops.take(table, ops.arange(ops.shape(token_ids)[1]) + first, axis=0)[None]  # (1, T, E)
        if start is not None:
            raise ValueError("a position offset (RoBERTa's) cannot continue after earlier tokens")
        real = ops.cast(ops.not_equal(token_ids, cfg.pad_token_id), "int32")  # (B, T)
        positions = ops.cumsum(real, axis=1) * real + (offset - 1)  # pads get the pad's row
        return x + ops.take(table, positions, axis=0)  # (B, T, E)

    def layer_context(self, length):
        """What every layer's attention reads besides its input (``position_bias``): nothing here."""
        return None

    def row_context(self, length):
        """What every layer's attention reads for a long input run a block of queries at a time
        (``encoder.parts.attention.RowBlocks``): ``layer_context`` unless that holds a (T, T) array."""
        return self.layer_context(length)

    def position_scheme(self) -> dict[str, np.ndarray]:
        """Named arrays describing the scheme for the positional lab; empty for a table (``positional_table``)."""
        return {}

    def positional_table(self) -> np.ndarray:
        """(P, E) float32: the whole table, exactly the values added (offset rows first; zeros for "none")."""
        return self._fixed if self.table is None else keras.ops.convert_to_numpy(self.table.embeddings)


class BiasLogits:
    """The logit rule of an added bias: ``q.k * scaling + bias``, terms ``content`` and ``position``.

    Args:
        heads: None (the bias is the layer's), or ``(start, stop)``: the layer's heads among the bias's (umT5's
            per-layer tables, stacked along the heads).
    """

    def __init__(self, heads: tuple[int, int] | None = None):
        self.heads = heads

    def __call__(self, attention: InstrumentedAttention, query, key, position_bias):
        position_bias = self.own_heads(position_bias)
        logits = attention.scaled_product(query, key)  # (B, H, T, S)
        return logits + position_bias, {"content": logits,
                                        "position": ops.broadcast_to(position_bias, ops.shape(logits))}

    def own_heads(self, bias):
        """The layer's heads of a (1, H', T, S) bias."""
        return bias if self.heads is None else bias[:, self.heads[0]:self.heads[1]]

    def bias_rows(self, position_bias: BucketBias, begin: int, end: int):
        """(1, H, R, S): the layer's bias on queries ``begin`` .. ``end - 1`` (a long input's ``position_bias`` is
        the ``BucketBias`` itself, ``RelativeBucketsPart.row_context``)."""
        return self.own_heads(position_bias.rows(begin, end))


class BucketBias:
    """A relative bias read row by row: ``table`` (buckets, H') read at the bucket of each key's distance from the
    query, for a ``length``-token input (its (1, H', T, T) whole is ``rows(0, length)``).

    Args:
        table: (buckets, H') float32, the learned bias (a tensor or NumPy).
        distance_buckets: (2M + 1,) int, the bucket of each distance key - query from -M to M.
        reach: int, M: farther keys share the bucket of +-M.
        length: int, the input's tokens (the keys).
    """

    def __init__(self, table, distance_buckets: np.ndarray, reach: int, length: int):
        self.table, self.distance_buckets, self.reach, self.length = table, distance_buckets, int(reach), length

    def rows(self, begin, end):
        """(1, H', R, S): the bias of queries ``begin`` .. ``end - 1`` over every key [query, key]."""
        relative = ops.arange(self.length)[None, :] - ops.arange(begin, end)[:, None]  # (R, S): key - query
        buckets = ops.take(ops.convert_to_tensor(self.distance_buckets),
                           ops.clip(relative, -self.reach, self.reach) + self.reach)
        bias = ops.take(self.table, buckets, axis=0)  # (R, S, H')
        return ops.transpose(bias, (2, 0, 1))[None]  # (1, H', R, S)


class RelativeBucketsPart(AbsolutePart):
    """A learned (buckets, H) bias (``relative_attention_bias``) read at T5's bidirectional bucket of each key's
    distance from the query (a T5 decoder's: its causal bucket) and added to every layer's scaled logits (MPNet,
    T5), besides the absolute table; with
    ``per_layer`` (umT5) one table per layer, stored side by side as one (buckets, L H) table (layer i's heads are
    columns ``i H`` to ``(i + 1) H``)."""

    def __init__(self, config: EncoderConfig, **kwargs):
        super().__init__(config, **kwargs)
        scheme: RelativeBuckets = config.positions
        width = config.num_heads * (config.num_layers if scheme.per_layer else 1)
        self.relative_attention_bias = keras.layers.Embedding(scheme.buckets, width, name="relative_attention_bias")
        self.max_distance = scheme.max_distance
        distances = np.arange(-scheme.max_distance, scheme.max_distance + 1)  # key - query, from -M to M
        self._distance_buckets = relative_position_buckets(distances, scheme.buckets, scheme.max_distance,
                                                           scheme.bidirectional)

    @classmethod
    def logit_rule(cls, config: EncoderConfig, index: int):
        h = config.num_heads
        return BiasLogits((index * h, (index + 1) * h) if config.positions.per_layer else None)

    def build(self, input_shape=None):
        super().build(input_shape)
        self.relative_attention_bias.build((None, None))

    def layer_context(self, length):
        """(1, H, T, T) float: the bias added to every layer's logits of a T-token input [query, key] ((1, L H, T,
        T), every layer's, with ``per_layer``). Every
        distance beyond ``max_distance`` has the bucket of that distance, so clipping the distances first changes
        nothing."""
        return self.row_context(length).rows(0, length)

    def row_context(self, length) -> BucketBias:
        """What a long input's layers read: the bias as a ``BucketBias``, read a block of queries at a time."""
        return BucketBias(self.relative_attention_bias.embeddings, self._distance_buckets, self.max_distance, length)

    def position_scheme(self) -> dict[str, np.ndarray]:
        """Over the signed distances key - query from -M to M (M = ``max_distance``; farther keys share the bucket
        of +-M):

        - ``distances``: (2M + 1,) int32, -M .. M.
        - ``buckets``: (2M + 1,) int32, the bucket of each distance.
        - ``bias_by_distance``: (H, 2M + 1) float32, the bias each head adds to the logit at that distance (the
          first layer's, when each layer has its own: umT5).
        - ``bucket_edges``: (E,) float32, the half-integer distances where the bucket changes (for drawing).
        """
        buckets = self._distance_buckets
        distances = np.arange(-self.max_distance, self.max_distance + 1, dtype=np.int32)
        table = keras.ops.convert_to_numpy(self.relative_attention_bias.embeddings)[:, :self.config.num_heads]
        edges = distances[1:][buckets[1:] != buckets[:-1]] - np.float32(0.5)
        return {"distances": distances, "buckets": buckets.astype(np.int32),
                "bias_by_distance": np.ascontiguousarray(table[buckets].T, dtype=np.float32),
                "bucket_edges": edges.astype(np.float32)}


class RotaryLogits:
    """The logit rule of rotary positions: queries and keys rotated by position before their product; with
    ``terms``, also the terms ``content`` (the product without rotation) and ``position`` (the rotated one minus
    it), at the cost of a second product.

    Args:
        frequencies: (d / 2,) float32, the angle per position of each rotated dimension pair
            (``encoder.positional.rope_frequencies``).
        key: which of the part's angle tables the layer reads in ``position_bias`` ("global" or "local").
        terms: bool, record the ``content`` and ``position`` terms.
    """

    def __init__(self, frequencies: np.ndarray, key: str = "global", terms: bool = True):
        self.frequencies = frequencies
        self.key = key
        self.terms = terms

    def __call__(self, attention: InstrumentedAttention, query, key, position_bias=None, start=None):
        cos, sin = self._angles(key, position_bias)  # (1, S, 1, d): the keys' positions 0 .. S - 1
        # the queries: the same positions, or with cached keys before them (``start``) the last T
        query_cos, query_sin = (cos, sin) if start is None else (cos[:, start:], sin[:, start:])
        rotated = attention.scaled_product(rotate(query, query_cos, query_sin), rotate(key, cos, sin))  # (B, H, T, S)
        if not self.terms:
            return rotated, {}
        logits = attention.scaled_product(query, key)
        return rotated, {"content": logits, "position": rotated - logits}

    def _angles(self, key, position_bias):
        """``(cos, sin)``, each (1, S, 1, d), of the S keys' positions: the layer's table in ``position_bias``, or
        computed."""
        return position_bias[self.key] if position_bias is not None else rotary_angles(self.frequencies,
                                                                                        ops.shape(key)[1])

    def prepare(self, attention: InstrumentedAttention, x, position_bias, begin: int = 0):
        """Queries or keys ``x`` (B, n, H, dh) of positions ``begin`` .. ``begin + n - 1`` rotated by position, as
        ``__call__`` multiplies them (T = S, no cache): ``position_bias`` is a long input's (``row_context``), so a
        piece of its positions turns alone (each position's numbers are its own: bit for bit those of all T at
        once)."""
        cos, sin = position_bias[self.key]  # (1, T, 1, d)
        end = begin + x.shape[1]
        return rotate(x, cos[:, begin:end], sin[:, begin:end])

    def angles(self, length):
        """``(cos, sin)`` of every position's angles, each (1, T, 1, d) (``rotary_angles``)."""
        return rotary_angles(self.frequencies, length)


def rotary_angles(frequencies: np.ndarray, length):
    """``(cos, sin)`` of the angles of positions 0 .. length - 1, each (1, T, 1, d) for ``frequencies`` (d / 2,).
    Angles are ``position * frequency`` in float32 (transformers' rounding), their cosine and sine taken in float64
    and rounded once (TensorFlow's float32 cos/sin are less exact than PyTorch's)."""
    positions = ops.cast(ops.arange(length), "float32")
    angles = positions[:, None] * ops.convert_to_tensor(frequencies)[None]  # (T, d / 2)
    angles = ops.cast(ops.concatenate([angles, angles], axis=-1), "float64")[None, :, None]  # (1, T, 1, d)
    return ops.cast(ops.cos(angles), "float32"), ops.cast(ops.sin(angles), "float32")


def rotate(x, cos, sin):
    """Rotary positions (RoPE) on ``x`` (B, T, H, dh): dimension pair (i, i + d/2) turned by each position's angle,
    ``x * cos + rotate_half(x) * sin`` with ``rotate_half(x) = [-x2, x1]``, as transformers' ``apply_rotary_pos_emb``
    (halves, not interleaved pairs). With d < dh (``cos`` and ``sin`` (1, T, 1, d): Phi-3's
    ``partial_rotary_factor``), only the first d dimensions turn; the others pass unchanged."""
    rotated_dims, head_dim = cos.shape[-1], x.shape[-1]
    if rotated_dims is not None and head_dim is not None and rotated_dims < head_dim:
        turned = rotate(x[..., :rotated_dims], cos, sin)
        return ops.concatenate([turned, x[..., rotated_dims:]], axis=-1)
    first, second = ops.split(x, 2, axis=-1)
    return x * cos + ops.concatenate([-second, first], axis=-1) * sin


class RotaryPart(AbsolutePart):
    """Rotary positions (``RotaryPositions``): no table; each layer rotates its queries and keys with ``theta``, or
    ``local_theta`` in a windowed layer, the frequencies rescaled by the scheme's ``rope_type``. The angles' cosines
    and sines are computed once per call (``layer_context``) and read by every layer."""

    @classmethod
    def frequencies(cls, config: EncoderConfig, local: bool) -> np.ndarray:
        """(d / 2,) float32: the frequencies of global or windowed layers (``rope_frequencies``)."""
        scheme: RotaryPositions = config.positions
        dim = scheme.rotary_dim(config.head_dim)
        theta, rope_type, factor = ((scheme.local_theta, scheme.local_rope_type, scheme.local_factor) if local
                                    else (scheme.theta, scheme.rope_type, scheme.factor))
        return rope_frequencies(theta, dim, rope_type, factor, scheme.low_freq_factor, scheme.high_freq_factor,
                                scheme.original_max_positions)

    @classmethod
    def logit_rule(cls, config: EncoderConfig, index: int):
        local = config.is_local(index)
        return RotaryLogits(cls.frequencies(config, local), "local" if local else "global",
                            terms=config.positions.logit_terms)

    def layer_context(self, length):
        """``{"global": (cos, sin), "local": (cos, sin)}``, each (1, T, 1, d): the angles every layer of that kind
        reads ("local" only when the model has windowed layers)."""
        kinds = {self.config.is_local(i) for i in range(self.config.num_layers)}
        return {("local" if local else "global"): rotary_angles(self.frequencies(self.config, local), length)
                for local in kinds}

    def position_scheme(self) -> dict[str, np.ndarray]:
        """``rope_inv_freq_global`` and, when some layers are windowed, ``rope_inv_freq_local``, (d / 2,) float32,
        the angle per position of each rotated dimension pair in global and local layers; ``local_window``, (1,)
        int32, the local layers' whole window (0 without one), and ``local_reach``, (1,) int32, the farthest key a
        local layer's query sees (``Attention.window_kind``: ``window // 2`` on each side when query i sees key j
        for ``|i - j| <= window // 2``; ``window - 1`` back for causal windows, ``0 <= i - j < window``)."""
        cfg = self.config
        window = max(cfg.attention.windows, default=0)
        reach = (window - 1 if cfg.attention.window_kind == "causal" else window // 2) if window else 0
        scheme = {"rope_inv_freq_global": self.frequencies(cfg, False)}
        if window:
            scheme["rope_inv_freq_local"] = self.frequencies(cfg, True)
        return {**scheme, "local_window": np.array([window], np.int32), "local_reach": np.array([reach], np.int32)}
