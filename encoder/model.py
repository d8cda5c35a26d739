"""TransformerEncoder: embeddings + a stack of EncoderLayers, returning every layer's hidden state and attention.

``TransformerEncoder`` is the Keras model (trainable, saveable); ``encoder.compiled.CompiledEncoder`` wraps it in
``tf.function``s for inference.
"""

from __future__ import annotations

import math

import keras
import numpy as np
from keras import ops

from encoder.config import EncoderConfig
from encoder.layers import ConfigArgument, EncoderLayer, activate
from encoder.positional import (
    disentangled_index,
    relative_position_buckets,
    rotary_frequencies,
    sinusoidal_encoding,
    window_visible,
)

RELATIVE_MAX_DISTANCE = 128  # MPNet's (and T5's): keys this far from the query or farther share one bucket per side


@keras.saving.register_keras_serializable(package="headlight")
class TransformerEncoder(ConfigArgument, keras.Model):
    """The instrumented encoder.

    Classic (Keras tutorial) mode: ``token_embedding * sqrt(d_model) + sinusoidal table``, dropout, layers.
    BERT mode: ``token + learned position + token type``, layer norm, dropout, layers. The config's switches add
    RoBERTa's position offset, ELECTRA/ALBERT's factorised embeddings (projected to ``d_model``), ALBERT's shared
    layers, GPT-2's pre-norm blocks, causal mask and final norm, MPNet's relative attention bias (computed once per
    call, added to every layer's logits), and each family's classifier head.

    Call args:
        token_ids: (B, T) int32.
        segment_ids: optional (B, T) int32 token types (zeros when omitted).
        padding_mask: optional (B, T) bool, True for real tokens; padded keys then get attention exactly 0.
        head_mask: optional (B, L, H) float; 0 silences a head's output (ablation).
        embedding_noise: optional (B, T, D) float added to the first layer's input.
        attention_scale: optional (B, L, H, T, T) float multiplying each layer's weights before they mix the values
            (ones change nothing; the gradient there is attention x gradient). Reported attention is unscaled.

    Returns:
        dict with ``hidden`` (B, L + 1, T, D), ``attention`` (B, L, H, T, T) after softmax, ``embedding``
        (B, D) pooled sentence embedding, ``logits``/``probabilities`` (B, C) when the model has a classifier, and
        ``terms/<name>`` (B, L, H, T, T) when the logits have named terms (the layers' ``terms``, stacked).

    Example:
        >>> cfg = EncoderConfig(vocab_size=50, num_layers=2, num_heads=2, d_model=8, dff=16)
        >>> out = TransformerEncoder(cfg)(np.array([[1, 2, 3]], "int32"))
        >>> tuple(out["attention"].shape)
        (1, 2, 2, 3, 3)
    """

    def __init__(self, config: EncoderConfig, **kwargs):
        super().__init__(**kwargs)
        self.config = config
        width = config.embedding_width
        # Layers are created in the order of the first saved models (token, position, type, norm, layers,
        # classifier): a seeded initialisation draws its random numbers in this order. Later options slot in only
        # when a config asks for them.
        self.token_embedding = keras.layers.Embedding(config.vocab_size, width, name="token_embedding")
        if config.positional == "learned":
            self.position_embedding = keras.layers.Embedding(config.table_rows, width, name="position_embedding")
        else:  # rotary positions add nothing: a table of zeros (a read-only view of one number)
            self.position_embedding = None
            self._sinusoidal_table = (sinusoidal_encoding(config.table_rows, width) if config.positional == "sinusoidal"
                                      else np.broadcast_to(np.float32(0.0), (config.table_rows, width)))
        self.segment_embedding = (
            keras.layers.Embedding(config.type_vocab_size, width, name="segment_embedding")
            if config.type_vocab_size
            else None
        )
        self.embedding_norm = (
            keras.layers.LayerNormalization(epsilon=config.layer_norm_epsilon, center=config.use_bias,
                                            name="embedding_norm")
            if config.embedding_layer_norm
            else None
        )
        self.embedding_dropout = keras.layers.Dropout(config.dropout)
        self.embedding_projection = (
            keras.layers.Dense(config.d_model, name="embedding_projection") if width != config.d_model else None
        )
        groups = config.num_layer_groups or config.num_layers
        self.layer_groups = [EncoderLayer(config, index=i, name=f"layer_{i}") for i in range(groups)]
        if config.relative_attention_buckets:
            self.relative_attention_bias = keras.layers.Embedding(
                config.relative_attention_buckets, config.num_heads, name="relative_attention_bias")
            distances = np.arange(-RELATIVE_MAX_DISTANCE, RELATIVE_MAX_DISTANCE + 1)
            self._distance_buckets = relative_position_buckets(  # bucket of key - query, from -M to M
                distances, config.relative_attention_buckets, RELATIVE_MAX_DISTANCE)
        else:
            self.relative_attention_bias = None
        self.relative_embeddings = self.relative_norm = None
        if config.relative_attention:  # DeBERTa: 2S relative embeddings, one row per bucket of query - key
            self.relative_embeddings = keras.layers.Embedding(2 * config.relative_span, config.d_model,
                                                              name="relative_embeddings")
            if config.norm_rel_ebd:
                self.relative_norm = keras.layers.LayerNormalization(epsilon=config.layer_norm_epsilon,
                                                                     name="relative_norm")
            # Distances beyond this reach (and beyond the longest input) all read the first or last row.
            self._relative_reach = max(config.max_positions, config.max_relative_positions)
            self._relative_rows = disentangled_index(  # row of query - key, from -reach to reach
                np.arange(-self._relative_reach, self._relative_reach + 1), config.relative_span,
                config.position_buckets, config.max_relative_positions)
        self.final_norm = (
            keras.layers.LayerNormalization(epsilon=config.layer_norm_epsilon, center=config.use_bias,
                                            name="final_norm")
            if config.final_norm
            else None
        )
        self.pre_classifier = (
            keras.layers.Dense(config.d_model, name="pre_classifier")
            if config.num_classes and config.classifier_activation
            else None
        )
        self.classifier = (
            keras.layers.Dense(config.num_classes, name="classifier") if config.num_classes else None
        )
        self.build_all()

    @property
    def encoder_layers(self) -> list[EncoderLayer]:
        """The L layers in order; with shared weights (ALBERT) several entries are the same layer."""
        groups, layers = len(self.layer_groups), self.config.num_layers
        return [self.layer_groups[i * groups // layers] for i in range(layers)]

    def build_all(self) -> None:
        """Create every weight now, so checkpoints can be ported before the first call. The order is the order a
        seeded initialisation draws its random numbers in (``encoder.saving.initial_model``): keep it."""
        d, width = self.config.d_model, self.config.embedding_width
        before_layers = ((self.token_embedding, (None, None)), (self.position_embedding, (None,)),
                         (self.segment_embedding, (None, None)), (self.embedding_norm, (None, None, width)),
                         (self.embedding_projection, (None, None, width)))
        after_layers = ((self.relative_attention_bias, (None, None)), (self.relative_embeddings, (None,)),
                        (self.relative_norm, (None, d)), (self.final_norm, (None, None, d)),
                        (self.pre_classifier, (None, d)), (self.classifier, (None, d)))
        for sublayer, shape in before_layers:
            if sublayer is not None:
                sublayer.build(shape)
        for layer in self.layer_groups:
            layer.build((None, None, d))
        for sublayer, shape in after_layers:
            if sublayer is not None:
                sublayer.build(shape)
        self.built = True

    def visible_mask(self, length: int) -> np.ndarray | None:
        """(L, T, T) bool, True where a query may attend to a key (NumPy, for the trace and the views), or None when
        every key is visible. A causal model sees only itself and earlier tokens; a local (sliding-window) layer
        only keys within ``local_attention // 2`` of the query."""
        from encoder.trace import causal_visible

        cfg = self.config
        if cfg.causal:
            return causal_visible(cfg.num_layers, length)
        local = [cfg.is_local(i) for i in range(cfg.num_layers)]
        if not any(local):
            return None
        window, everything = window_visible(length, cfg.local_attention), np.ones((length, length), bool)
        return np.stack([window if is_local else everything for is_local in local])  # (L, T, T)

    def position_scheme(self) -> dict[str, np.ndarray]:
        """What the positional scheme is, as named arrays for the positional lab (``EncoderTrace.position_scheme``);
        empty for an absolute table (``positional_table`` shows it).

        With a relative attention bias (MPNet), over the signed distances key - query from -M to M
        (M = ``RELATIVE_MAX_DISTANCE``; farther keys share the bucket of +-M):

        - ``distances``: (2M + 1,) int32, -M .. M.
        - ``buckets``: (2M + 1,) int32, the bucket of each distance.
        - ``bias_by_distance``: (H, 2M + 1) float32, the bias each head adds to the logit at that distance.
        - ``bucket_edges``: (E,) float32, the half-integer distances where the bucket changes (for drawing).

        With rotary positions (ModernBERT): ``rope_inv_freq_global`` and ``rope_inv_freq_local``, (dh / 2,) float32,
        the angle per position of each dimension pair in global and local layers, and ``local_window``, (1,) int32,
        the local layers' whole window ``local_attention`` (query i sees key j when ``|i - j| <= window // 2``).

        With disentangled attention (DeBERTa), over the signed distances key - query from -R to R (R the larger of
        ``max_positions`` and ``max_relative_positions``; farther keys read the end rows):

        - ``distances``: (2R + 1,) int32, -R .. R.
        - ``buckets``: (2R + 1,) int32, the row of ``relative_embeddings`` each distance reads (c2p and p2c alike).
        - ``bucket_edges``: (E,) float32, the half-integer distances where the row changes (for drawing).
        - ``relative_embeddings``: (2S, D) float32, the table every layer projects (after its layer norm).
        """
        cfg = self.config
        if cfg.positional == "rotary":
            return {"rope_inv_freq_global": rotary_frequencies(cfg.rope_theta, cfg.head_dim),
                    "rope_inv_freq_local": rotary_frequencies(cfg.rope_local_theta, cfg.head_dim),
                    "local_window": np.array([cfg.local_attention], np.int32)}
        if self.relative_embeddings is not None:
            return self._disentangled_scheme()
        if self.relative_attention_bias is None:
            return {}
        buckets = self._distance_buckets
        distances = np.arange(-RELATIVE_MAX_DISTANCE, RELATIVE_MAX_DISTANCE + 1, dtype=np.int32)
        table = keras.ops.convert_to_numpy(self.relative_attention_bias.embeddings)  # (buckets, H)
        edges = distances[1:][buckets[1:] != buckets[:-1]] - np.float32(0.5)
        return {"distances": distances, "buckets": buckets.astype(np.int32),
                "bias_by_distance": np.ascontiguousarray(table[buckets].T, dtype=np.float32),
                "bucket_edges": edges.astype(np.float32)}

    def _disentangled_scheme(self) -> dict[str, np.ndarray]:
        reach = self._relative_reach
        distances = np.arange(-reach, reach + 1, dtype=np.int32)  # key - query
        rows = self._relative_rows[::-1]  # the rows are indexed by query - key
        table, _ = self.disentangled_positions(1)
        return {"distances": distances, "buckets": np.ascontiguousarray(rows, dtype=np.int32),
                "bucket_edges": (distances[1:][rows[1:] != rows[:-1]] - np.float32(0.5)).astype(np.float32),
                "relative_embeddings": keras.ops.convert_to_numpy(table).astype(np.float32)}

    def positional_table(self) -> np.ndarray:
        """(P, E) float32: the whole positional table, exactly the values the model adds (offset rows first)."""
        if self.position_embedding is None:
            return self._sinusoidal_table
        return keras.ops.convert_to_numpy(self.position_embedding.embeddings)

    def _positional_rows(self, token_ids):
        """The positional rows added to each token, broadcastable to (B, T, E).

        Without an offset, token i gets row i. With one (RoBERTa), positions count only non-pad tokens, starting
        after the pad id, exactly as transformers numbers them (``encoder.positional.position_ids``).
        """
        cfg = self.config
        table = (ops.convert_to_tensor(self._sinusoidal_table) if self.position_embedding is None
                 else self.position_embedding.embeddings)  # (P, E)
        if not cfg.position_offset:
            return table[: ops.shape(token_ids)[1]][None]  # (1, T, E)
        real = ops.cast(ops.not_equal(token_ids, cfg.pad_token_id), "int32")  # (B, T)
        positions = ops.cumsum(real, axis=1) * real + (cfg.position_offset - 1)  # pads get the pad's row
        return ops.take(table, positions, axis=0)  # (B, T, E)

    def relative_position_bias(self, length):
        """(1, H, T, T) float: the bias added to every layer's attention logits of a T-token input [query, key],
        or None without a relative attention bias. Every distance beyond ``RELATIVE_MAX_DISTANCE`` has the bucket
        of that distance, so clipping the distances first changes nothing. With disentangled attention (DeBERTa),
        what every layer's attention reads instead: ``disentangled_positions``."""
        if self.relative_embeddings is not None:
            return self.disentangled_positions(length)
        if self.relative_attention_bias is None:
            return None
        positions = ops.arange(length)
        relative = positions[None, :] - positions[:, None]  # (T, T): key - query
        index = ops.clip(relative, -RELATIVE_MAX_DISTANCE, RELATIVE_MAX_DISTANCE) + RELATIVE_MAX_DISTANCE
        buckets = ops.take(ops.convert_to_tensor(self._distance_buckets), index)  # (T, T)
        bias = ops.take(self.relative_attention_bias.embeddings, buckets, axis=0)  # (T, T, H)
        return ops.transpose(bias, (2, 0, 1))[None]  # (1, H, T, T)

    def disentangled_positions(self, length):
        """DeBERTa's ``(relative embeddings (2S, D), index (T, T) int32)``: the relative-embedding table (layer-
        normalised when ``norm_rel_ebd``), computed once per call for every layer, and the row of each [query, key]
        pair (``encoder.positional.disentangled_index`` of query - key; rows beyond the reach are the end rows)."""
        table = self.relative_embeddings.embeddings  # (2S, D)
        if self.relative_norm is not None:
            table = self.relative_norm(table)
        positions = ops.arange(length)
        relative = positions[:, None] - positions[None, :]  # (T, T): query - key
        reach = self._relative_reach
        return table, ops.take(ops.convert_to_tensor(self._relative_rows), ops.clip(relative, -reach, reach) + reach)

    def call(
        self,
        token_ids,
        segment_ids=None,
        padding_mask=None,
        head_mask=None,
        embedding_noise=None,
        attention_scale=None,
        training=None,
    ):
        x = self._embed(token_ids, segment_ids, training)  # (B, T, D)
        if embedding_noise is not None:
            x = x + embedding_noise
        attention_mask = self._attention_mask(token_ids, padding_mask)
        position_bias = self.relative_position_bias(ops.shape(token_ids)[1])  # (1, H, T, T) or None
        hidden, patterns, terms = [x], [], {}
        for index, layer in enumerate(self.encoder_layers):
            layer_head_mask = None if head_mask is None else head_mask[:, index]  # (B, H)
            layer_scale = None if attention_scale is None else attention_scale[:, index]  # (B, H, T, T)
            x, pattern, layer_terms = layer(x, attention_mask=attention_mask, head_mask=layer_head_mask,
                                            position_bias=position_bias, attention_scale=layer_scale,
                                            training=training)
            hidden.append(x)
            patterns.append(pattern)
            for name, term in layer_terms.items():
                terms.setdefault(name, []).append(term)
        if self.final_norm is not None:  # GPT-2's ln_f: the last hidden state is reported after it
            x = self.final_norm(x)
            hidden[-1] = x
        outputs = {
            "hidden": ops.stack(hidden, axis=1),  # (B, L + 1, T, D)
            "attention": ops.stack(patterns, axis=1),  # (B, L, H, T, T)
            **{f"terms/{name}": ops.stack(parts, axis=1) for name, parts in terms.items()},  # (B, L, H, T, T)
        }
        return {**outputs, **self._heads(x, padding_mask)}

    def embed(self, token_ids, segment_ids=None):
        """(B, T, D): the input embeddings the first layer reads (``trace.hidden[0]``), at inference (no dropout).
        ``embedding_noise`` in ``call`` is added to exactly this tensor."""
        return self._embed(token_ids, segment_ids, False)

    def _embed(self, token_ids, segment_ids, training):
        """Token (+ type) + position embeddings, normalised, projected to ``d_model`` when factorised."""
        cfg = self.config
        x = self.token_embedding(token_ids)  # (B, T, E)
        if cfg.scale_embeddings:
            x = x * math.sqrt(cfg.d_model)
        if self.segment_embedding is not None:  # types before positions: transformers' order, so its rounding
            if segment_ids is None or cfg.type_vocab_size == 1:  # one type (RoBERTa): every token is type 0
                segment_ids = ops.zeros_like(token_ids)
            x = x + self.segment_embedding(segment_ids)
        if cfg.positional in ("sinusoidal", "learned"):  # rotary and relative (DeBERTa) positions add nothing
            x = x + self._positional_rows(token_ids)
        if self.embedding_norm is not None:
            x = self.embedding_norm(x)
        x = self.embedding_dropout(x, training=training)
        if self.embedding_projection is not None:
            x = self.embedding_projection(x)  # (B, T, D)
        return x

    def _attention_mask(self, token_ids, padding_mask):
        """Bool, broadcastable to (B, T, T) [query, key]: padded keys hidden, and later keys when causal."""
        mask = None if padding_mask is None else padding_mask[:, None, :]  # (B, 1, T) keys
        if self.config.causal:
            causal = self._causal_mask(ops.shape(token_ids)[1])
            mask = causal if mask is None else ops.logical_and(causal, mask)
        return mask

    def _causal_mask(self, length):
        positions = ops.arange(length)
        return (positions[None, :] <= positions[:, None])[None]  # (1, T, T): key <= query

    def layer_context(self, length):
        """What every layer gets besides its input when the model runs an unpadded ``length``-token input:
        ``(attention_mask, position_bias)``, the causal mask (1, T, T) bool or None and ``relative_position_bias``
        (local windows and rotary positions each layer makes itself). For running one layer alone (probes)."""
        return (self._causal_mask(length) if self.config.causal else None), self.relative_position_bias(length)

    def _heads(self, x, padding_mask) -> dict:
        """The pooled sentence embedding and, with a classifier, logits and probabilities."""
        cfg = self.config
        pooled = self.pool(x, padding_mask)  # (B, D)
        outputs = {
            "embedding": pooled / ops.maximum(ops.norm(pooled, axis=-1, keepdims=True), 1e-12)
            if cfg.normalize_embedding
            else pooled
        }
        if self.classifier is not None:
            features = pooled
            if self.pre_classifier is not None:
                features = activate(self.pre_classifier(pooled), cfg.classifier_activation)
            logits = self.classifier(features)
            outputs["logits"] = logits
            outputs["probabilities"] = ops.softmax(logits, axis=-1)
        return outputs

    def pool(self, x, padding_mask):
        """(B, D): the pooled sentence vector of the last hidden state ``x`` (B, T, D), before any normalisation:
        the first token ("cls") or the mean over real tokens ("mean")."""
        if self.config.pooling == "cls":
            return x[:, 0]
        if padding_mask is None:
            return ops.mean(x, axis=1)
        weights = ops.cast(padding_mask, x.dtype)[..., None]  # (B, T, 1)
        return ops.sum(x * weights, axis=1) / ops.maximum(ops.sum(weights, axis=1), 1.0)
