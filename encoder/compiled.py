"""CompiledEncoder: the inference entry points of a ``TransformerEncoder``, each a ``tf.function`` with an input
signature of unknown batch and length, so one compiled graph serves every sentence length (no retracing when the
length changes)."""

from __future__ import annotations

from collections.abc import Callable

import tensorflow as tf
from keras import ops

from encoder.model import TOP_K, TransformerEncoder

# An objective: (ops, model, outputs dict, target (B,) int32, direction (B, D) float32) -> f (B,) (``input_gradients``);
# ``ops`` is ``keras.ops``, handed over so objectives written outside the core import no tensor library.
Objective = Callable[[object, TransformerEncoder, dict, tf.Tensor, tf.Tensor], tf.Tensor]

_IDS = tf.TensorSpec([None, None], tf.int32)
_MASK = tf.TensorSpec([None, None], tf.bool)


class CompiledEncoder:
    """Inference entry points of a TransformerEncoder, each a ``tf.function`` traced once for every shape.

    - ``forward(ids, segments)``: one unpadded sequence (or a batch of equal length): no mask at all.
    - ``forward_padded(ids, segments, mask)``: a padded batch; padded keys get weight exactly 0.
    - ``forward_perturbed(ids, segments, mask, head_mask, noise)``: the same with a head mask (B, L, H) and
      embedding noise (B, T, D), for ablation and stability analysis; a separate graph, so the plain paths pay
      nothing for it.
    - ``embed(ids, segments)``: the input embeddings (B, T, D) the first layer reads.
    - ``forward_rows(ids, segments, rows)``: a long input, its attention a block of queries at a time over the keys
      the block can see, never whole (layer by layer in Python; each block's weights one compiled graph,
      ``encoder.parts.attention.attention_rows``).
    - ``forward_logits(ids, segments)`` (decoders): ``forward`` plus the LM head's logits (B, T, V);
      ``lens_top_k(hidden, normed)``: the LM head's top ``TOP_K`` tokens of any residual vectors (the logit lens).
    - ``extend(ids, start, keys, values)`` (causal models): new tokens after cached ones (``TransformerEncoder.extend``:
      generation's prefill and each step, all through one graph); ``empty_cache()`` the cache before a prefill.
    - ``forward_decoder(ids, encoder_hidden, logits)`` (the decoder of an encoder-decoder): decoder input ids over
      an encoder's last hidden states.
    - ``input_gradients`` / ``attention_gradients``: a scalar of the output (an objective function, e.g.
      ``analysis.objectives``) and its gradient with respect to the embedding noise (and the attention scale), by
      ``tf.GradientTape``; one graph per objective function, traced on first use.
    """

    def __init__(self, model: TransformerEncoder):
        self.model = model
        self.calls = 0  # forward passes run so far (the app shows it; tests use it to prove caching)
        cfg = model.config
        self._plain = tf.function(self._forward, input_signature=[_IDS, _IDS])
        self._padded = tf.function(self._forward_padded, input_signature=[_IDS, _IDS, _MASK])
        self._perturbed = tf.function(
            self._forward_perturbed,
            input_signature=[
                _IDS,
                _IDS,
                _MASK,
                tf.TensorSpec([None, cfg.num_layers, cfg.num_heads], tf.float32),
                tf.TensorSpec([None, None, cfg.d_model], tf.float32),
            ],
        )

        self._embedding = tf.function(self._embed_ids, input_signature=[_IDS, _IDS])
        self._with_logits = tf.function(self._forward_logits, input_signature=[_IDS, _IDS])
        self._lens = tf.function(self._lens_top_k, input_signature=[tf.TensorSpec([None, cfg.d_model], tf.float32),
                                                                     tf.TensorSpec([], tf.bool)])
        self._gradients: dict[tuple[Objective, bool], tf.types.experimental.GenericFunction] = {}
        self._extending = None  # traced on first use: only causal models generate
        self._decoding: dict[bool, tf.types.experimental.GenericFunction] = {}  # a decoder's, on first use

    def forward(self, ids, segments) -> dict:
        """Unpadded (B, T) ids and segments -> the model's output dict of tensors."""
        self.calls += 1
        return self._plain(ids, segments)

    def forward_padded(self, ids, segments, mask) -> dict:
        """A padded batch; ``mask`` (B, T) is True for real tokens."""
        self.calls += 1
        return self._padded(ids, segments, mask)

    def forward_perturbed(self, ids, segments, mask, head_mask, noise) -> dict:
        """A padded batch with a head mask (B, L, H) and embedding noise (B, T, D)."""
        self.calls += 1
        return self._perturbed(ids, segments, mask, head_mask, noise)

    def forward_logits(self, ids, segments) -> dict:
        """As ``forward``, plus ``logits`` (B, T, V) float32: the LM head at every position (a model with one)."""
        self._check_lm_head()
        self.calls += 1
        return self._with_logits(ids, segments)

    def forward_rows(self, ids, segments, rows: int, full_logits: bool = False, keep=None, overview=None) -> dict:
        """A long unpadded input (B, T), its attention run ``rows`` queries at a time and never held whole
        (``TransformerEncoder.call_rows``: no ``attention``; ``keep`` gets each layer's queries and keys,
        ``overview`` each block's weights). Run
        layer by layer and block by block from Python (the blocks' count follows the length), each block's
        weights by one ``tf.function`` of unknown sizes (``attention_rows``: no retracing per length)."""
        self.calls += 1
        return self.model.call_rows(tf.convert_to_tensor(ids, tf.int32), tf.convert_to_tensor(segments, tf.int32),
                                    rows=rows, full_logits=full_logits, keep=keep, overview=overview)

    def lens_top_k(self, hidden, normed: bool):
        """``(ids (N, K) int32, probs (N, K) float32)``: the ``TOP_K`` most probable tokens of the LM head applied
        to N residual vectors ``hidden`` (N, D) float32, after the final norm unless ``normed`` (the logit lens;
        ``normed`` for the last hidden state, which is after it already)."""
        self._check_lm_head()
        return self._lens(tf.convert_to_tensor(hidden, tf.float32), tf.constant(bool(normed)))

    def _check_lm_head(self) -> None:
        if not self.model.config.head.lm_head:
            raise ValueError("this model has no LM head (next-token logits belong to decoders)")

    def forward_decoder(self, ids, encoder_hidden, logits: bool = False) -> dict:
        """(B, Td) decoder input ids and an encoder's last hidden states (B, S, D) float32 -> the decoder's output
        dict (its ``cross_attention`` (B, L, H, Td, S) included; with ``logits``, the LM head's (B, Td, V)). A
        decoder of an encoder-decoder only (``attention.cross``)."""
        if not self.model.config.attention.cross:
            raise ValueError("this model is not the decoder of an encoder-decoder")
        if bool(logits) not in self._decoding:
            hidden = tf.TensorSpec([None, None, self.model.config.d_model], tf.float32)
            self._decoding[bool(logits)] = tf.function(
                lambda ids, states: self.model(ids, training=False, full_logits=bool(logits), encoder_hidden=states),
                input_signature=[_IDS, hidden])
        self.calls += 1
        return self._decoding[bool(logits)](ids, tf.convert_to_tensor(encoder_hidden, tf.float32))

    def embed(self, ids, segments):
        """(B, T) ids and segments -> (B, T, D) input embeddings (``TransformerEncoder.embed``)."""
        return self._embedding(ids, segments)

    def input_gradients(self, objective, ids, segments, noise, target, direction):
        """``(f (B,), df/dnoise (B, T, D))`` for unpadded (B, T) inputs with ``noise`` (B, T, D) added to the input
        embeddings. ``objective(ops, model, outputs, target, direction)`` maps the model's output dict, ``target`` (B,)
        int32 and ``direction`` (B, D) float32 to f (B,), with ops that TensorFlow can differentiate (``keras.ops``;
        ``analysis.objectives``); each reads the argument it needs. Each row's gradient is its own f's (rows do not
        interact)."""
        self.calls += 1
        return self._gradient_function(objective, False)(ids, segments, noise, target, direction)

    def attention_gradients(self, objective, ids, segments, noise, scale, target, direction):
        """``(f (B,), df/dnoise (B, T, D), df/dscale (B, L, H, T, T))`` with ``scale`` multiplying every layer's
        attention weights before they mix the values (``attention_scale``); at ``scale`` = 1 the last is attention
        times gradient, alpha * df/dalpha. Arguments as ``input_gradients``."""
        self.calls += 1
        return self._gradient_function(objective, True)(ids, segments, noise, scale, target, direction)

    def _gradient_function(self, objective: Objective, attention: bool):
        if not callable(objective):
            raise TypeError(f"objective must be a function of the model's outputs, got {objective!r}")
        key = (objective, attention)
        if key not in self._gradients:
            cfg = self.model.config
            noise = tf.TensorSpec([None, None, cfg.d_model], tf.float32)
            scale = [tf.TensorSpec([None, cfg.num_layers, cfg.num_heads, None, None], tf.float32)] if attention else []
            signature = [_IDS, _IDS, noise, *scale, tf.TensorSpec([None], tf.int32),
                         tf.TensorSpec([None, cfg.d_model], tf.float32)]

            def gradients(ids, segments, noise, *rest):
                *scale, target, direction = rest
                watched = [noise, *scale]
                with tf.GradientTape() as tape:
                    tape.watch(watched)
                    outputs = self.model(ids, segments, embedding_noise=noise,
                                         attention_scale=scale[0] if scale else None, training=False)
                    f = objective(ops, self.model, outputs, target, direction)
                return (f, *tape.gradient(f, watched))

            self._gradients[key] = tf.function(gradients, input_signature=signature)
        return self._gradients[key]

    def _forward(self, ids, segments):
        return self.model(ids, segments, training=False)

    def _forward_logits(self, ids, segments):
        return self.model(ids, segments, training=False, full_logits=True)

    def _lens_top_k(self, hidden, normed):
        x = hidden[None]  # (1, N, D)
        logits = tf.cond(normed, lambda: self.model.lm_logits(x), lambda: self.model.lens_logits(x))[0]  # (N, V)
        top, ids = tf.math.top_k(logits, k=min(TOP_K, self.model.config.vocab_size))
        return ids, tf.exp(top - tf.reduce_logsumexp(logits, axis=-1, keepdims=True))

    def _embed_ids(self, ids, segments):
        return self.model.embed(ids, segments)

    def _forward_padded(self, ids, segments, mask):
        return self.model(ids, segments, padding_mask=mask, training=False)

    def _forward_perturbed(self, ids, segments, mask, head_mask, noise):
        return self.model(
            ids, segments, padding_mask=mask, head_mask=head_mask, embedding_noise=noise, training=False
        )

    def extend(self, ids, start, keys, values) -> dict:
        """(B, n) new token ids after ``start`` cached tokens, the cache ``keys`` and ``values`` (L, B, start, Hkv,
        dh) float32 -> ``TransformerEncoder.extend``'s dict (the last token's logits and attention row, the new
        cache). One graph serves the prefill and every step: batch, ``n`` and ``start`` are unknown in its
        signature, so no step retraces."""
        if self._extending is None:
            cache = tf.TensorSpec([self.model.config.num_layers, None, None, *self._cache_heads()], tf.float32)
            self._extending = tf.function(self.model.extend,
                                          input_signature=[_IDS, tf.TensorSpec([], tf.int32), cache, cache])
        return self._extending(ids, start, keys, values)

    def empty_cache(self, batch: int = 1):
        """``(keys, values)``, each (L, batch, 0, Hkv, dh) float32: the cache before a prefill (``extend``)."""
        shape = (self.model.config.num_layers, batch, 0, *self._cache_heads())
        return tf.zeros(shape, tf.float32), tf.zeros(shape, tf.float32)

    def _cache_heads(self) -> tuple[int, int]:
        cfg = self.model.config
        return cfg.attention.key_value_heads or cfg.num_heads, cfg.head_dim

    def tracing_count(self) -> int:
        """How many graphs were traced in all (a new sentence length must not add one)."""
        functions = (self._plain, self._padded, self._perturbed, self._embedding, self._with_logits, self._lens,
                     *self._gradients.values(), *([self._extending] if self._extending is not None else []),
                     *self._decoding.values())
        return sum(f.experimental_get_tracing_count() for f in functions)
