"""Keras 3 layers of the instrumented encoder: attention that hands back its weights, and one encoder layer."""

from __future__ import annotations

import math

import keras
from keras import ops

from encoder.config import EncoderConfig
from encoder.positional import rotary_frequencies


class ConfigArgument:
    """``get_config``/``from_config`` for Keras layers and models whose one argument is an ``EncoderConfig``."""

    def get_config(self):
        return {**super().get_config(), "config": self.config.to_dict()}

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        return cls(EncoderConfig.from_dict(config.pop("config")), **config)


@keras.saving.register_keras_serializable(package="headlight")
class InstrumentedAttention(keras.layers.MultiHeadAttention):
    """``keras.layers.MultiHeadAttention`` that always returns its attention pattern and can silence heads.

    The projections are MultiHeadAttention's own (``query_dense``, ``key_dense``, ``value_dense``,
    ``output_dense``); the attention is always the explicit softmax (never a fused or flash path that would hide
    the weights), with the logits scaled after the product as transformers computes them. The one addition is an
    optional per-head multiplier on each head's context vectors before the output projection (Michel et al.,
    2019), which is how a head is ablated.

    Call args:
        query: (B, T, D) tensor.
        value: (B, S, D) tensor (the same tensor for self-attention).
        attention_mask: optional bool tensor broadcastable to (B, T, S); False keys get weight exactly 0.
        head_mask: optional (B, H) float tensor; 0 silences a head, 1 keeps it.
        position_bias: optional float tensor broadcastable to (B, H, T, S), added to the scaled logits before the
            mask and softmax (MPNet's relative attention bias).
        value_mask: optional (B, S) float tensor multiplying each key token's value vectors (0 zeroes token j's
            values in every head: value zeroing, Mohebbi et al., 2023).
        attention_scale: optional (B, H, T, S) float tensor multiplying the weights before they mix the values
            (ones change nothing; its gradient there is attention x gradient). The returned pattern is unscaled.
        rotary: optional ``(cos, sin)``, each broadcastable to (B, T, H, dh): queries and keys are rotated by
            position before their product (RoPE, ``rotate``); terms then are ``content`` (the scaled product
            without rotation) and ``position`` (the rotated one minus it).

    Returns:
        ``(output, pattern, terms)``: output (B, T, D), pattern (B, H, T, S), the weights after softmax, and terms,
        a dict of named (B, H, T, S) tensors that sum to the logits the softmax used (before the mask): empty
        without a positional term in the logits; with a ``position_bias``, ``content`` (the scaled q.k) and
        ``position`` (the bias, broadcast).
    """

    def call(self, query, value, attention_mask=None, head_mask=None, position_bias=None, rotary=None,
             value_mask=None, attention_scale=None, training=None):
        q = self.query_dense(query)  # (B, T, H, dh)
        k = self.key_dense(value)  # (B, S, H, dh)
        v = mask_values(self.value_dense(value), value_mask)  # (B, S, H, dh)
        context, pattern, terms = self._compute_attention(q, k, v, attention_mask, training, position_bias, rotary,
                                                          attention_scale)
        if head_mask is not None:
            context = context * ops.cast(head_mask, context.dtype)[:, None, :, None]
        return self.output_dense(context), pattern, terms

    def _compute_attention(self, query, key, value, attention_mask=None, training=None, position_bias=None,
                           rotary=None, attention_scale=None):
        """``(context (B, T, H, dh), pattern (B, H, T, S), terms)``. Keras scales the query before the product;
        scaling the logits after it is the same math, rounded as transformers rounds it (float32 ports stay exact).
        A ``position_bias`` is added after the scaling, as MPNet adds it; terms then names both parts."""
        logits = self._scaled_product(query, key)  # (B, H, T, S)
        terms = {}
        if rotary is not None:  # RoPE: the logits are the rotated product; content is the product without rotation
            rotated = self._scaled_product(rotate(query, *rotary), rotate(key, *rotary))
            terms = {"content": logits, "position": rotated - logits}
            logits = rotated
        if position_bias is not None:
            terms = {"content": logits, "position": ops.broadcast_to(position_bias, ops.shape(logits))}
            logits = logits + position_bias
        pattern = self._masked_softmax(logits, attention_mask)  # (B, H, T, S)
        return self._mix(pattern, value, attention_scale, training), pattern, terms

    def _mix(self, pattern, value, attention_scale, training):
        """The context vectors (B, T, H, dh): the weights (times ``attention_scale`` when given) mixing the values."""
        weights = pattern if attention_scale is None else pattern * ops.cast(attention_scale, pattern.dtype)
        return ops.einsum(self._combine_equation, self._dropout_layer(weights, training=training), value)

    def _scaled_product(self, query, key):
        """(B, H, T, S): q.k / sqrt(dh), scaled after the product as transformers scales it."""
        logits = ops.einsum(self._dot_product_equation, key, query)
        return logits * ops.cast(self._inverse_sqrt_key_dim, logits.dtype)


def mask_values(values, value_mask):
    """``values`` (B, S, H, dh) with each key token's vectors times ``value_mask`` (B, S), or unchanged for None."""
    if value_mask is None:
        return values
    return values * ops.cast(value_mask, values.dtype)[:, :, None, None]


def rotate(x, cos, sin):
    """Rotary positions (RoPE) on ``x`` (B, T, H, dh): dimension pair (i, i + dh/2) turned by each position's angle,
    ``x * cos + rotate_half(x) * sin`` with ``rotate_half(x) = [-x2, x1]``, as transformers' ``apply_rotary_pos_emb``
    (halves, not interleaved pairs)."""
    first, second = ops.split(x, 2, axis=-1)
    return x * cos + ops.concatenate([-second, first], axis=-1) * sin


@keras.saving.register_keras_serializable(package="headlight")
class EncoderLayer(ConfigArgument, keras.layers.Layer):
    """One Transformer layer: self-attention block, then feed-forward block, each a residual around it.

    Post-layer-norm (BERT, the classic encoder): ``x = norm(x + f(x))``. Pre-layer-norm (``config.norm_first``,
    GPT-2): ``x = x + f(norm(x))``; then ``attention_norm`` is GPT-2's ``ln_1`` and ``output_norm`` its ``ln_2``.
    ModernBERT's switches (``config``): rotary positions with the global or local theta, a local layer's sliding
    window joined to the attention mask, a GeGLU feed-forward block, no biases, and no attention norm in layer 0
    (an identity, as transformers has it).

    Args:
        config: EncoderConfig (width, heads, feed-forward size, activation, norm placement, dropout, epsilon).
        index: int, the layer's place in the stack (which layers are local, the first layer's norm).

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
        self.local = config.is_local(index)
        bias = config.use_bias
        if config.relative_attention:  # DeBERTa; encoder.attention builds on this module, so it is imported here
            from encoder.attention import DisentangledAttention

            self.attention = DisentangledAttention(config, name="attention")
        else:
            self.attention = InstrumentedAttention(
                num_heads=config.num_heads,
                key_dim=config.head_dim,
                dropout=config.dropout,
                use_bias=bias,
                name="attention",
            )
        self.attention_dropout = keras.layers.Dropout(config.dropout)
        self.attention_norm = (
            keras.layers.LayerNormalization(epsilon=config.layer_norm_epsilon, center=bias, name="attention_norm")
            if config.first_attention_norm or index
            else keras.layers.Identity(name="attention_norm")
        )
        inner = 2 * config.dff if config.gated_feed_forward else config.dff
        self.intermediate = keras.layers.Dense(inner, use_bias=bias, name="intermediate")
        self.output_dense = keras.layers.Dense(config.d_model, use_bias=bias, name="output")
        self.output_dropout = keras.layers.Dropout(config.dropout)
        self.output_norm = keras.layers.LayerNormalization(
            epsilon=config.layer_norm_epsilon, center=bias, name="output_norm"
        )
        theta = config.rope_local_theta if self.local else config.rope_theta
        self.rotary_frequencies = (rotary_frequencies(theta, config.head_dim) if config.positional == "rotary"
                                   else None)  # (dh / 2,) float32

    def get_config(self):
        return {**super().get_config(), "index": self.index}

    def build(self, input_shape):
        self.attention.build(input_shape, input_shape)
        self.attention_norm.build(input_shape)
        self.intermediate.build(input_shape)
        self.output_dense.build((*input_shape[:-1], self.config.dff))
        self.output_norm.build(input_shape)

    def call(self, x, attention_mask=None, head_mask=None, position_bias=None, value_mask=None,
             attention_scale=None, training=None):
        probes = dict(value_mask=value_mask, attention_scale=attention_scale)  # InstrumentedAttention's call args
        if self.config.norm_first:
            # Self-attention block (pre-norm).
            attended, pattern, terms = self._attend(self.attention_norm(x), attention_mask, head_mask,
                                                    position_bias, training, **probes)
            x = x + attended
            # Feedforward block (pre-norm).
            return x + self._feed_forward(self.output_norm(x), training), pattern, terms
        # Self-attention block.
        attended, pattern, terms = self._attend(x, attention_mask, head_mask, position_bias, training, **probes)
        x = self.attention_norm(x + attended)
        # Feedforward block.
        return self.output_norm(x + self._feed_forward(x, training)), pattern, terms

    def _attend(self, x, attention_mask, head_mask, position_bias, training, value_mask=None, attention_scale=None):
        length = ops.shape(x)[1]
        if self.local:
            attention_mask = self._window_mask(attention_mask, length)
        attended, pattern, terms = self.attention(
            x, x, attention_mask=attention_mask, head_mask=head_mask, position_bias=position_bias,
            rotary=self._rotary(length), value_mask=value_mask, attention_scale=attention_scale, training=training
        )
        return self.attention_dropout(attended, training=training), pattern, terms

    def _window_mask(self, attention_mask, length):
        """A local layer's mask, broadcastable to (B, T, T): keys within ``local_attention // 2`` of the query, and
        not padded."""
        positions = ops.arange(length)
        distance = ops.abs(positions[:, None] - positions[None, :])  # (T, T)
        window = (distance <= self.config.local_attention // 2)[None]  # (1, T, T)
        return window if attention_mask is None else ops.logical_and(window, attention_mask)

    def _rotary(self, length):
        """``(cos, sin)`` of every position's angles, each (1, T, 1, dh), or None without rotary positions. Angles
        are ``position * frequency`` in float32 (transformers' rounding), their cosine and sine taken in float64 and
        rounded once (TensorFlow's float32 cos/sin are less exact than PyTorch's)."""
        if self.rotary_frequencies is None:
            return None
        positions = ops.cast(ops.arange(length), "float32")
        angles = positions[:, None] * ops.convert_to_tensor(self.rotary_frequencies)[None]  # (T, dh / 2)
        angles = ops.cast(ops.concatenate([angles, angles], axis=-1), "float64")[None, :, None]  # (1, T, 1, dh)
        return ops.cast(ops.cos(angles), "float32"), ops.cast(ops.sin(angles), "float32")

    def _feed_forward(self, x, training):
        inner = self.intermediate(x)  # (B, T, dff), or (B, T, 2 dff) gated
        if self.config.gated_feed_forward:  # GeGLU: the activated first half times the second half
            inner, gate = ops.split(inner, 2, axis=-1)
            inner = activate(inner, self.config.activation) * gate
        else:
            inner = activate(inner, self.config.activation)
        return self.output_dropout(self.output_dense(inner), training=training)


def activate(x, name: str):
    """The activation ``name``: "gelu" is GELU's exact erf form (BERT), "gelu_new" its tanh approximation
    (ALBERT, GPT-2), also "relu" and "tanh"."""
    if name == "gelu":
        return ops.gelu(x, approximate=False)
    if name == "gelu_new":
        return gelu_tanh(x)
    if name == "tanh":
        return ops.tanh(x)
    return ops.relu(x)


def gelu_tanh(x):
    """GELU's tanh form, ``0.5 x (1 + tanh(sqrt(2 / pi) (x + 0.044715 x^3)))``, in transformers' order of operations.

    TensorFlow's float32 tanh is a fast approximation (errors up to 3e-7, ten times PyTorch's), which made
    ``ops.gelu(approximate=True)`` drift from transformers by up to 1e-6 per activation; tanh is taken in float64
    here, so the result matches PyTorch's to the bit on all but a few inputs in a thousand.
    """
    inner = math.sqrt(2.0 / math.pi) * (x + 0.044715 * (x * x * x))
    return 0.5 * x * (1.0 + ops.cast(ops.tanh(ops.cast(inner, "float64")), x.dtype))
