"""Keras 3 layers of the instrumented encoder: attention that hands back its weights, and one encoder layer."""

from __future__ import annotations

import math

import keras
from keras import ops

from encoder.config import EncoderConfig


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

    Returns:
        ``(output, pattern, terms)``: output (B, T, D), pattern (B, H, T, S), the weights after softmax, and terms,
        a dict of named (B, H, T, S) tensors that sum to the logits the softmax used (before the mask): empty
        without a positional term in the logits; with a ``position_bias``, ``content`` (the scaled q.k) and
        ``position`` (the bias, broadcast).
    """

    def call(self, query, value, attention_mask=None, head_mask=None, position_bias=None, training=None):
        q = self.query_dense(query)  # (B, T, H, dh)
        k = self.key_dense(value)  # (B, S, H, dh)
        v = self.value_dense(value)  # (B, S, H, dh)
        context, pattern, terms = self._compute_attention(q, k, v, attention_mask, training, position_bias)
        if head_mask is not None:
            context = context * ops.cast(head_mask, context.dtype)[:, None, :, None]
        return self.output_dense(context), pattern, terms

    def _compute_attention(self, query, key, value, attention_mask=None, training=None, position_bias=None):
        """``(context (B, T, H, dh), pattern (B, H, T, S), terms)``. Keras scales the query before the product;
        scaling the logits after it is the same math, rounded as transformers rounds it (float32 ports stay exact).
        A ``position_bias`` is added after the scaling, as MPNet adds it; terms then names both parts."""
        logits = ops.einsum(self._dot_product_equation, key, query)  # (B, H, T, S)
        logits = logits * ops.cast(self._inverse_sqrt_key_dim, logits.dtype)
        terms = {}
        if position_bias is not None:
            terms = {"content": logits, "position": ops.broadcast_to(position_bias, ops.shape(logits))}
            logits = logits + position_bias
        pattern = self._masked_softmax(logits, attention_mask)  # (B, H, T, S)
        context = ops.einsum(self._combine_equation, self._dropout_layer(pattern, training=training), value)
        return context, pattern, terms


@keras.saving.register_keras_serializable(package="headlight")
class EncoderLayer(ConfigArgument, keras.layers.Layer):
    """One Transformer layer: self-attention block, then feed-forward block, each a residual around it.

    Post-layer-norm (BERT, the classic encoder): ``x = norm(x + f(x))``. Pre-layer-norm (``config.norm_first``,
    GPT-2): ``x = x + f(norm(x))``; then ``attention_norm`` is GPT-2's ``ln_1`` and ``output_norm`` its ``ln_2``.

    Args:
        config: EncoderConfig (width, heads, feed-forward size, activation, norm placement, dropout, epsilon).

    Example:
        >>> layer = EncoderLayer(EncoderConfig(vocab_size=10, num_layers=1, num_heads=2, d_model=8, dff=16))
        >>> y, pattern, terms = layer(keras.ops.ones((1, 3, 8)))
        >>> tuple(pattern.shape)
        (1, 2, 3, 3)
    """

    def __init__(self, config: EncoderConfig, **kwargs):
        super().__init__(**kwargs)
        self.config = config
        if config.relative_attention:  # DeBERTa; encoder.attention builds on this module, so it is imported here
            from encoder.attention import DisentangledAttention

            self.attention = DisentangledAttention(config, name="attention")
        else:
            self.attention = InstrumentedAttention(
                num_heads=config.num_heads,
                key_dim=config.head_dim,
                dropout=config.dropout,
                name="attention",
            )
        self.attention_dropout = keras.layers.Dropout(config.dropout)
        self.attention_norm = keras.layers.LayerNormalization(
            epsilon=config.layer_norm_epsilon, name="attention_norm"
        )
        self.intermediate = keras.layers.Dense(config.dff, name="intermediate")
        self.output_dense = keras.layers.Dense(config.d_model, name="output")
        self.output_dropout = keras.layers.Dropout(config.dropout)
        self.output_norm = keras.layers.LayerNormalization(
            epsilon=config.layer_norm_epsilon, name="output_norm"
        )

    def build(self, input_shape):
        self.attention.build(input_shape, input_shape)
        self.attention_norm.build(input_shape)
        self.intermediate.build(input_shape)
        self.output_dense.build((*input_shape[:-1], self.config.dff))
        self.output_norm.build(input_shape)

    def call(self, x, attention_mask=None, head_mask=None, position_bias=None, training=None):
        if self.config.norm_first:
            # Self-attention block (pre-norm).
            attended, pattern, terms = self._attend(self.attention_norm(x), attention_mask, head_mask,
                                                    position_bias, training)
            x = x + attended
            # Feedforward block (pre-norm).
            return x + self._feed_forward(self.output_norm(x), training), pattern, terms
        # Self-attention block.
        attended, pattern, terms = self._attend(x, attention_mask, head_mask, position_bias, training)
        x = self.attention_norm(x + attended)
        # Feedforward block.
        return self.output_norm(x + self._feed_forward(x, training)), pattern, terms

    def _attend(self, x, attention_mask, head_mask, position_bias, training):
        attended, pattern, terms = self.attention(
            x, x, attention_mask=attention_mask, head_mask=head_mask, position_bias=position_bias, training=training
        )
        return self.attention_dropout(attended, training=training), pattern, terms

    def _feed_forward(self, x, training):
        inner = activate(self.intermediate(x), self.config.activation)  # (B, T, dff)
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
