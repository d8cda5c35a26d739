"""TransformerEncoder: embeddings, a stack of blocks and a head, assembled from the config's parts, returning every
layer's hidden state and attention.

``TransformerEncoder`` is the Keras model (trainable, saveable); ``encoder.compiled.CompiledEncoder`` wraps it in
``tf.function``s for inference. Which parts it holds follows the config alone: the position scheme's part
(``encoder.parts.schemes``) supplies the table, what every layer's attention reads and each layer's attention.
"""

from __future__ import annotations

import functools
import math

import keras
import numpy as np
from keras import ops

from encoder.block import PROJECTION_ROWS, ConfigArgument, EncoderLayer, by_positions
from encoder.config import EncoderConfig
from encoder.heap import release_freed_heap
from encoder.parts.attention import RowBlocks, soft_cap
from encoder.parts.mlp import activate
from encoder.parts.norms import make_norm
from encoder.parts.schemes import position_part
from encoder.positional import window_visible

POSITIONS = "positions"  # the name of the position scheme's part (its variables are under ``positions/``)
LM_ROW_BYTES = 16 * 2**20  # a long input's LM head: the (rows, V) float32 logits of one block of positions
VOCAB_ROW_BYTES = 8 * 2**20  # ... and of a tied head, the token embedding's rows one product reads (and copies)
TOP_K = 10  # candidates per position in ``next_ids`` / ``next_probs`` (and ``CompiledEncoder.lens_top_k``)


class LayerStates:
    """A long pass's residual stream as NumPy as it goes: ``array`` (B, N, T, D), each state written into
    ``next()`` by its layer (the embeddings by ``_embed``) or set (``states[-1] = x``), so the N states are held once
    (never a list of tensors and their stack together: 0.55 GB each for 30 layers of width 576 at 8,192 tokens).

    Args:
        shape: (B, T, D), a state's.
        count: int, N, the states to come.
        dtype: theirs (float32).
    """

    def __init__(self, shape: tuple[int, ...], count: int, dtype: str = "float32"):
        self.array = np.empty((shape[0], count, *shape[1:]), dtype)
        self.size = 0

    def next(self) -> np.ndarray:
        """(B, T, D): the next state's place in ``array``, for its layer to write (it counts as appended)."""
        self.size += 1
        return self.array[:, self.size - 1]

    def __setitem__(self, index: int, state) -> None:
        self.array[:, index] = np.asarray(state)


@keras.saving.register_keras_serializable(package="headlight")
class TransformerEncoder(ConfigArgument, keras.Model):
    """The instrumented encoder.

    Classic (Keras tutorial) mode: ``token_embedding * sqrt(d_model) + sinusoidal table``, dropout, layers.
    BERT mode: ``token + learned position + token type``, layer norm, dropout, layers. The config's groups add
    an offset table (RoBERTa), factorised embeddings projected to ``d_model`` (ELECTRA/ALBERT), shared layers
    (ALBERT), pre-norm blocks, a causal mask and a final norm (GPT-2), another position scheme (``positions``:
    MPNet's relative bias, rotary positions, DeBERTa's disentangled attention) and a classifier head.

    Call args:
        token_ids: (B, T) int32.
        segment_ids: optional (B, T) int32 token types (zeros when omitted).
        padding_mask: optional (B, T) bool, True for real tokens; padded keys then get attention exactly 0.
        head_mask: optional (B, L, H) float; 0 silences a head's output (ablation).
        embedding_noise: optional (B, T, D) float added to the first layer's input.
        attention_scale: optional (B, L, H, T, T) float multiplying each layer's weights before they mix the values
            (ones change nothing; the gradient there is attention x gradient). Reported attention is unscaled.
        full_logits: bool, also return the LM head's (B, T, V) logits (a model with an LM head).
        encoder_hidden: (B, S, D) float, an encoder's last hidden states: the decoder of an encoder-decoder
            (``attention.cross``) needs them, every other model refuses them.
        encoder_mask: optional (B, S) bool, True for the encoder's real tokens (padded ones get cross-attention 0).

    Returns:
        dict with ``hidden`` (B, L + 1, T, D), ``attention`` (B, L, H, T, T) after softmax, ``embedding``
        (B, D) pooled sentence embedding, ``logits``/``probabilities`` (B, C) when the model has a classifier, and
        ``terms/<name>`` (B, L, H, T, T) when the logits have named terms (the layers' ``terms``, stacked); with an
        LM head (``config.head.lm_head``: decoders), ``next_ids`` (B, T, K) int32 and ``next_probs`` (B, T, K), the
        top ``TOP_K`` next tokens of every position and their probabilities, ``next_logprob`` (B, T), each
        following token's log-probability (NaN at the last position), and ``logits`` (B, T, V) only when
        ``full_logits`` is True; a decoder of an encoder-decoder adds ``cross_attention`` (B, L, H, T, S).

    Example:
        >>> cfg = EncoderConfig(vocab_size=50, num_layers=2, num_heads=2, d_model=8, dff=16)
        >>> out = TransformerEncoder(cfg)(np.array([[1, 2, 3]], "int32"))
        >>> tuple(out["attention"].shape)
        (1, 2, 2, 3, 3)
    """

    def __init__(self, config: EncoderConfig, **kwargs):
        super().__init__(**kwargs)
        self.config = config
        embeddings, block, head, width = config.embeddings, config.block, config.head, config.embedding_width
        self.token_embedding = keras.layers.Embedding(embeddings.vocab_size, width, name="token_embedding")
        self.positions = position_part(config)(config, name=POSITIONS)
        self.segment_embedding = (keras.layers.Embedding(embeddings.type_vocab_size, width, name="segment_embedding")
                                  if embeddings.type_vocab_size else None)
        self.embedding_norm = make_norm(block, "embedding_norm") if embeddings.layer_norm else None
        self.embedding_dropout = keras.layers.Dropout(config.dropout)
        self.embedding_projection = (keras.layers.Dense(config.d_model, name="embedding_projection")
                                     if width != config.d_model else None)
        groups = config.num_layer_groups or config.num_layers
        self.layer_groups = [EncoderLayer(config, index=i, name=f"layer_{i}") for i in range(groups)]
        self.final_norm = make_norm(block, "final_norm") if block.final_norm else None
        self.pre_classifier = (keras.layers.Dense(config.d_model, name="pre_classifier")
                               if head.num_classes and head.classifier_activation else None)
        self.classifier = keras.layers.Dense(head.num_classes, name="classifier") if head.num_classes else None
        self.lm_head = (keras.layers.Dense(embeddings.vocab_size, use_bias=False, name="lm_head")
                        if head.lm_head and not head.tie_embeddings else None)
        self.projection = (keras.layers.Dense(head.projection, use_bias=False, name="projection")
                           if head.projection else None)
        self.logit_bias = None  # BART's final_logits_bias (V,), made by ``build_all``
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
        before_layers = ((self.token_embedding, (None, None)), (self.positions, None),
                         (self.segment_embedding, (None, None)), (self.embedding_norm, (None, None, width)),
                         (self.embedding_projection, (None, None, width)))
        after_layers = ((self.final_norm, (None, None, d)), (self.pre_classifier, (None, d)),
                        (self.classifier, (None, d)), (self.lm_head, (None, None, d)), (self.projection, (None, d)))
        for sublayer, shape in before_layers:
            if sublayer is not None:
                sublayer.build(shape)
        for layer in self.layer_groups:
            layer.build((None, None, d))
        for sublayer, shape in after_layers:
            if sublayer is not None:
                sublayer.build(shape)
        if self.config.head.logit_bias:
            self.logit_bias = self.add_weight(name="logit_bias", shape=(self.config.vocab_size,), initializer="zeros")
        self.built = True

    def visible_mask(self, length: int) -> np.ndarray | None:
        """(L, T, T) bool, True where a query may attend to a key (NumPy, for the trace and the views), or None when
        every key is visible. A causal model sees only itself and earlier tokens; a windowed layer only keys within
        half its window of the query."""
        attention = self.config.attention
        windows = [attention.window(i) for i in range(self.config.num_layers)]
        if not attention.causal and not any(windows):
            return None
        seen = np.tri(length, dtype=bool) if attention.causal else np.ones((length, length), bool)
        return np.stack([seen & window_visible(length, w, attention.window_kind) if w else seen
                         for w in windows])  # (L, T, T)

    def position_scheme(self) -> dict[str, np.ndarray]:
        """What the positional scheme is, as named arrays for the positional lab (``EncoderTrace.position_scheme``);
        empty for an absolute table (``positional_table`` shows it). Each scheme's part documents its arrays
        (``encoder.parts.positions``, ``encoder.parts.disentangled``)."""
        return self.positions.position_scheme()

    def positional_table(self) -> np.ndarray:
        """(P, E) float32: the whole positional table, exactly the values the model adds (offset rows first)."""
        return self.positions.positional_table()

    def call(
        self,
        token_ids,
        segment_ids=None,
        padding_mask=None,
        head_mask=None,
        embedding_noise=None,
        attention_scale=None,
        training=None,
        full_logits=False,
        encoder_hidden=None,
        encoder_mask=None,
    ):
        x = self._embed(token_ids, segment_ids, training)  # (B, T, D)
        if embedding_noise is not None:
            x = x + embedding_noise
        attention_mask = self._attention_mask(token_ids, padding_mask)
        position_bias = self.positions.layer_context(ops.shape(token_ids)[1])  # what every layer's attention reads
        crossing = {} if encoder_hidden is None else {
            "encoder_hidden": encoder_hidden, "encoder_mask": None if encoder_mask is None else encoder_mask[:, None]}
        hidden, patterns, terms, crossed = [x], [], {}, []
        for index, layer in enumerate(self.encoder_layers):
            layer_head_mask = None if head_mask is None else head_mask[:, index]  # (B, H)
            layer_scale = None if attention_scale is None else attention_scale[:, index]  # (B, H, T, T)
            x, pattern, layer_terms, *cross = layer(x, attention_mask=attention_mask, head_mask=layer_head_mask,
                                                    position_bias=position_bias, attention_scale=layer_scale,
                                                    training=training, **crossing)
            hidden.append(x)
            patterns.append(pattern)
            crossed += cross
            for name, term in layer_terms.items():
                terms.setdefault(name, []).append(term)
        return self._finish(x, hidden, token_ids, padding_mask, full_logits, {
            "attention": ops.stack(patterns, axis=1),  # (B, L, H, T, T)
            **{f"terms/{name}": ops.stack(parts, axis=1) for name, parts in terms.items()},  # (B, L, H, T, T)
            **({"cross_attention": ops.stack(crossed, axis=1)} if crossed else {}),  # (B, L, H, T, S)
        })

    def _finish(self, x, hidden: list, token_ids, padding_mask, full_logits: bool, outputs: dict,
                rows: int | None = None) -> dict:
        """The outputs of a pass whose last layer gave ``x`` (B, T, D) and whose residual stream was ``hidden``
        (L + 1 of (B, T, D), or a long pass's ``LayerStates``, then ``hidden`` is its NumPy array): ``outputs`` plus
        ``hidden`` (B, L + 1, T, D), the final norm's state, the LM head's (``rows`` positions at a time when given:
        ``_next_tokens``) and the heads'."""
        if self.final_norm is not None:  # GPT-2's ln_f: the last hidden state is reported after it
            x = self.final_norm(x)
            if self.config.block.final_norm_in_hidden:
                hidden[-1] = x
            else:  # CLIP: hidden[-1] before the final norm, as transformers' hidden_states[-1]
                outputs = {"last_hidden_state": x, **outputs}
        states = hidden.array if isinstance(hidden, LayerStates) else ops.stack(hidden, axis=1)
        outputs = {**outputs, "hidden": states}  # (B, L + 1, T, D)
        if self.config.head.lm_head:
            outputs.update(self._next_tokens(x, token_ids, full_logits, rows))
        return {**outputs, **self._heads(x, padding_mask, token_ids)}

    def call_rows(self, token_ids, segment_ids=None, rows: int = 512, full_logits: bool = False, keep=None,
                  overview=None) -> dict:
        """A long unpadded input at inference, its attention never held whole: each layer's weights are computed
        ``rows`` queries at a time, mix the values and are dropped, and the rest of the layer runs a chunk of
        positions at a time, written into the NumPy ``hidden`` (``EncoderLayer.call_rows``).

        Args:
            token_ids, segment_ids, full_logits: as ``call``.
            rows: int, queries per block.
            keep: ``keep(layer, queries (B, T, H, dh), keys (B, T, Hkv, dh))``, called with each layer's queries and
                keys as its logit rule multiplies them (rotated by position for rotary positions), from which
                ``encoder.parts.attention.attention_rows`` gives any rows of its attention again
                (``encoder.attention_store.LazyAttention``); they are dropped after the call, so the caller keeps
                one copy.
            overview: ``overview(layer, weights (B, H, R, K), begin, end, first, last)``, called with each block's
                weights as they are computed (``encoder.overview.OverviewImages.add``), or None.

        Returns:
            ``call``'s dict without ``attention`` and ``terms/*``; its ``hidden`` (B, L + 1, T, D) is NumPy, copied
            out a layer at a time (``LayerStates``).

        Raises:
            ValueError: a model whose attention cannot run in row blocks (DeBERTa's disentangled positions, the
                decoder of an encoder-decoder: ``rows_supported``).
        """
        if not self.rows_supported:
            raise ValueError("this model's attention cannot run a block of queries at a time")
        hidden = LayerStates((*token_ids.shape, self.config.d_model), len(self.encoder_layers) + 1,
                             keras.backend.standardize_dtype(self.compute_dtype))
        x = self._embed(token_ids, segment_ids, False, out=hidden.next())  # (B, T, D) NumPy, the first state
        position_bias = self.positions.row_context(ops.shape(token_ids)[1])
        blocks = RowBlocks(rows, self.config.attention.causal, self.config.attention.window_kind)
        for index, layer in enumerate(self.encoder_layers):
            state = hidden.next()  # (B, T, D) NumPy, which the layer fills
            reads = None if overview is None else functools.partial(overview, index)
            kept = layer.call_rows(x, position_bias, blocks, state, reads)
            x = state
            if keep is not None:
                keep(index, kept[0].whole(), ops.transpose(kept[1], (0, 2, 1, 3)))  # (B, T, heads, dh) each
            del kept  # this layer's queries and keys: not held while the next layer runs
            release_freed_heap()  # the C heap's pages the layer's blocks freed (their masks, small tensors)
        positions = max(1, LM_ROW_BYTES // (4 * self.config.vocab_size))  # the LM head's (rows, V) logits at once
        return self._finish(ops.convert_to_tensor(x), hidden, token_ids, None, full_logits, {}, positions)

    @property
    def rows_supported(self) -> bool:
        """Whether ``call_rows`` runs this model: positions that act through the queries and keys or a bias read by
        rows (absolute, rotary, relative buckets), and no cross-attention."""
        kind = self.config.positions.kind
        return kind in ("absolute", "rotary", "relative_buckets") and not self.config.attention.cross

    def lm_logits(self, x, by_vocab: bool = False):
        """(B, T, D) last hidden states (after the final norm, as ``hidden[-1]``) -> (B, T, V) float32 logits of
        the LM head (the token embedding when tied: ``tied_logits``, ``by_vocab`` as there), soft-capped when the
        config says so (Gemma 2); ``x`` scaled first by ``head.output_scale`` (T5) and the logits shifted by
        ``logit_bias`` (BART) when the head has them."""
        head = self.config.head
        if head.output_scale != 1.0:
            x = x * ops.cast(head.output_scale, x.dtype)
        logits = self.lm_head(x) if self.lm_head is not None else self.tied_logits(x, by_vocab)
        if self.logit_bias is not None:
            logits = logits + self.logit_bias
        return soft_cap(logits, head.logit_softcap) if head.logit_softcap else logits

    def tied_logits(self, x, by_vocab: bool = False):
        """(B, T, V): ``x`` (B, T, E) times the token embedding (V, E), transposed. The product copies the
        embedding it reads transposed (113 MB for SmolLM2's); ``by_vocab`` (a long input's blocks of positions, run
        eagerly) reads ``VOCAB_ROW_BYTES`` of its rows at a time instead: the same logits, bit for bit (measured
        with oneDNN: each logit is the same product over E)."""
        table = self.token_embedding.embeddings  # (V, E)
        if not by_vocab:
            return ops.einsum("btd,vd->btv", x, table)
        vocab, width = table.shape
        step = max(1, VOCAB_ROW_BYTES // (4 * width))
        return ops.concatenate([ops.einsum("btd,vd->btv", x, table[begin:begin + step])
                                for begin in range(0, vocab, step)], axis=-1)

    def lens_logits(self, x):
        """(B, T, D) residual stream of any layer (before the final norm) -> (B, T, V): the final norm, then
        ``lm_logits`` (the logit lens)."""
        return self.lm_logits(self.final_norm(x) if self.final_norm is not None else x)

    def _next_tokens(self, x, token_ids, full_logits: bool, rows: int | None = None) -> dict:
        """What the LM head says at every position of the last hidden state ``x`` (B, T, D): ``next_ids`` (B, T,
        K) int32 and ``next_probs`` (B, T, K) float32, the K = ``TOP_K`` most probable next tokens and their
        softmax probabilities; ``next_logprob`` (B, T), the log-probability of the token that follows (NaN at the
        last position); and, with ``full_logits``, ``logits`` (B, T, V). With ``rows`` (an int: a long input, run
        eagerly) the positions go ``rows`` at a time, so their (B, T, V) logits are never held at once (unless
        ``full_logits`` asks for them)."""
        if rows is None:
            return self._next_token_rows(x, token_ids[:, 1:], full_logits)
        length = ops.shape(x)[1]
        blocks = [self._next_token_rows(x[:, begin:begin + rows], token_ids[:, begin + 1:begin + rows + 1],
                                        full_logits, by_vocab=True) for begin in range(0, length, rows)]
        return {name: ops.concatenate([block[name] for block in blocks], axis=1) for name in blocks[0]}

    def _next_token_rows(self, x, following_ids, full_logits: bool, by_vocab: bool = False) -> dict:
        """``_next_tokens`` of n positions ``x`` (B, n, D) whose following tokens are ``following_ids`` (B, m), m = n,
        or n - 1 when the last position has none (its ``next_logprob`` is NaN); ``by_vocab`` as ``tied_logits``."""
        logits = self.lm_logits(x, by_vocab)  # (B, n, V)
        normaliser = ops.logsumexp(logits, axis=-1)  # (B, n)
        top, ids = ops.top_k(logits, k=min(TOP_K, self.config.vocab_size))
        known = ops.shape(following_ids)[1]
        following = ops.take_along_axis(logits[:, :known], ops.cast(following_ids[:, :, None], "int32"),
                                        axis=-1)[..., 0]
        unknown = ops.full_like(normaliser[:, known:], float("nan"))
        outputs = {"next_ids": ops.cast(ids, "int32"), "next_probs": ops.exp(top - normaliser[..., None]),
                   "next_logprob": ops.concatenate([following - normaliser[:, :known], unknown], axis=1)}
        if full_logits:
            outputs["logits"] = logits
        return outputs

    def extend(self, token_ids, start, keys, values):
        """Run ``n`` new tokens after ``start`` earlier ones whose keys and values are cached, at inference: a causal
        model's generation (a prefill with an empty cache, then one token per step; ``CompiledEncoder.extend``).

        Every layer runs as in ``call``, with the same sublayers and rules (norms, rotary positions, q/k norms,
        soft-caps, windows, grouped-query attention), its attention reading the cached keys and values followed
        by the new tokens' own; the queries are positions ``start`` .. ``start + n - 1``.

        Args:
            token_ids: (B, n) int32, the new tokens.
            start: int32 scalar, the number of cached tokens (the position of the first new token).
            keys, values: (L, B, start, Hkv, dh) float32, each layer's cache as its attention keeps it
                (``InstrumentedAttention``'s ``cache``); (L, B, 0, Hkv, dh) for a prefill.

        Returns:
            dict: ``last`` (B, D) the last new token's final hidden state (after the final norm), ``attention``
            (B, L, H, S) its attention over all S = start + n tokens, ``keys`` and ``values`` (L, B, S, Hkv, dh) the
            new cache; with an LM head, ``logits`` (B, V) float32 (``lm_logits`` of ``last``).
        """
        if not self.config.attention.causal:
            raise ValueError("only a causal model continues a text with a key/value cache")
        x = self._embed(token_ids, None, False, start=start)  # (B, n, D)
        n = ops.shape(token_ids)[1]
        queries, keys_at = ops.arange(n) + start, ops.arange(start + n)
        attention_mask = (keys_at[None, :] <= queries[:, None])[None]  # (1, n, S): key <= query
        position_bias = self.positions.layer_context(start + n)  # for the S keys; a layer's queries are the last n
        patterns, new_keys, new_values = [], [], []
        for index, layer in enumerate(self.encoder_layers):
            x, pattern, _, (k, v) = layer(x, attention_mask=attention_mask, position_bias=position_bias,
                                          cache=(keys[index], values[index]), start=start, training=False)
            patterns.append(pattern[:, :, -1])  # (B, H, S): the last new token's row
            new_keys.append(k)
            new_values.append(v)
        last = x[:, -1:]  # (B, 1, D)
        if self.final_norm is not None:
            last = self.final_norm(last)
        outputs = {"last": last[:, 0], "attention": ops.stack(patterns, axis=1),
                   "keys": ops.stack(new_keys), "values": ops.stack(new_values)}
        if self.config.head.lm_head:
            outputs["logits"] = self.lm_logits(last)[:, 0]  # (B, V)
        return outputs

    def embed(self, token_ids, segment_ids=None):
        """(B, T, D): the input embeddings the first layer reads (``trace.hidden[0]``), at inference (no dropout).
        ``embedding_noise`` in ``call`` is added to exactly this tensor."""
        return self._embed(token_ids, segment_ids, False)

    def _embed(self, token_ids, segment_ids, training, start=None, out: np.ndarray | None = None):
        """Token (+ type) + position embeddings, normalised, projected to ``d_model`` when factorised; ``start``:
        the tokens follow that many earlier ones (``extend``); ``out`` (B, T, D) NumPy (a long input, at
        inference): the norm and the projection ``PROJECTION_ROWS`` positions at a time
        (``encoder.block.by_positions``), written there, and ``out`` returned."""
        cfg = self.config
        x = self.token_embedding(token_ids)  # (B, T, E)
        if cfg.embeddings.scale:
            x = x * math.sqrt(cfg.d_model)
        if self.segment_embedding is not None:  # types before positions: transformers' order, so its rounding
            if segment_ids is None or cfg.embeddings.type_vocab_size == 1:  # one type (RoBERTa): every token is type 0
                segment_ids = ops.zeros_like(token_ids)
            x = x + self.segment_embedding(segment_ids)
        x = self.positions.add_to(x, token_ids, start)  # the absolute table's rows, when the scheme has a table
        rows = PROJECTION_ROWS if out is not None else None
        projected = self.embedding_projection is not None
        if self.embedding_norm is not None:
            x = by_positions(self.embedding_norm, x, rows, out=None if projected else out)
        x = self.embedding_dropout(x, training=training)
        if projected:
            x = by_positions(self.embedding_projection, x, rows, out=out)  # (B, T, D)
        if out is not None and x is not out:  # neither norm nor projection: the sum itself
            out[...] = np.asarray(x)
        return x if out is None else out

    def _attention_mask(self, token_ids, padding_mask):
        """Bool, broadcastable to (B, T, T) [query, key]: padded keys hidden, and later keys when causal."""
        mask = None if padding_mask is None else padding_mask[:, None, :]  # (B, 1, T) keys
        if self.config.attention.causal:
            causal = self._causal_mask(ops.shape(token_ids)[1])
            mask = causal if mask is None else ops.logical_and(causal, mask)
        return mask

    def _causal_mask(self, length):
        positions = ops.arange(length)
        return (positions[None, :] <= positions[:, None])[None]  # (1, T, T): key <= query

    def layer_context(self, length):
        """What every layer gets besides its input when the model runs an unpadded ``length``-token input:
        ``(attention_mask, position_bias)``, the causal mask (1, T, T) bool or None and the position scheme's
        ``layer_context`` (MPNet's bias, DeBERTa's table and index, or None; windows and rotary positions each
        layer makes itself). For running one layer alone (probes)."""
        return ((self._causal_mask(length) if self.config.attention.causal else None),
                self.positions.layer_context(length))

    def _heads(self, x, padding_mask, token_ids=None) -> dict:
        """The pooled sentence embedding and, with a classifier, logits and probabilities; with a projection
        (CLIP's ``text_projection``), ``embedding`` is the projected state and ``pooled`` the state before it."""
        cfg = self.config
        pooled = self.pool(x, padding_mask, token_ids)  # (B, D)
        extra = {}
        if self.projection is not None:
            extra, pooled = {"pooled": pooled}, self.projection(pooled)
        outputs = {
            **extra,
            "embedding": pooled / ops.maximum(ops.norm(pooled, axis=-1, keepdims=True), 1e-12)
            if cfg.head.normalize_embedding
            else pooled
        }
        if self.classifier is not None:
            features = pooled
            if self.pre_classifier is not None:
                features = activate(self.pre_classifier(pooled), cfg.head.classifier_activation)
            logits = self.classifier(features)
            outputs["logits"] = logits
            outputs["probabilities"] = ops.softmax(logits, axis=-1)
        return outputs

    def pool(self, x, padding_mask, token_ids=None):
        """(B, D): the pooled sentence vector of the last hidden state ``x`` (B, T, D), before any normalisation:
        the first token ("cls"), the last real token ("last": a decoder's, the one that has read every other), the
        first end-of-text token of ``token_ids`` ("eos": CLIP's, as transformers' ``CLIPTextTransformer`` picks
        it) or the mean over real tokens ("mean")."""
        head = self.config.head
        if head.pooling == "cls":
            return x[:, 0]
        if head.pooling == "eos":
            ids = ops.cast(token_ids, "int32")
            if head.eos_token_id < 0:  # old CLIP configs (eos_token_id 2): the highest id is <|endoftext|>
                index = ops.argmax(ids, axis=1)
            else:  # the first eos token (argmax of a bool row is its first True; 0 when there is none)
                index = ops.argmax(ops.cast(ops.equal(ids, head.eos_token_id), "int32"), axis=1)
            index = ops.broadcast_to(ops.cast(index, "int32")[:, None, None], (ops.shape(x)[0], 1, ops.shape(x)[2]))
            return ops.take_along_axis(x, index, axis=1)[:, 0]
        if self.config.head.pooling == "last":
            if padding_mask is None:
                return x[:, -1]
            last = ops.sum(ops.cast(padding_mask, "int32"), axis=1) - 1  # (B,)
            index = ops.broadcast_to(ops.maximum(last, 0)[:, None, None], (ops.shape(x)[0], 1, ops.shape(x)[2]))
            return ops.take_along_axis(x, index, axis=1)[:, 0]
        if padding_mask is None:
            return ops.mean(x, axis=1)
        weights = ops.cast(padding_mask, x.dtype)[..., None]  # (B, T, 1)
        return ops.sum(x * weights, axis=1) / ops.maximum(ops.sum(weights, axis=1), 1.0)


def unfilled_model(config: EncoderConfig, name: str) -> TransformerEncoder:
    """``TransformerEncoder(config)`` whose variables have no value yet (made in Keras' ``StatelessScope``, which
    defers each one's initialiser): ``fill`` gives each its checkpoint value, then ``filled`` initialises those no
    port reached. No random numbers are drawn for weights the checkpoint overwrites and no weight's memory is
    written twice (loading the SmolLM2-shaped bench model: 0.2 GB less resident)."""
    with keras.StatelessScope(initialize_variables=False):
        return TransformerEncoder(config, name=name)


def fill(variable, value: np.ndarray) -> None:
    """Set ``variable`` to ``value`` (float32, of its shape): its first value when ``unfilled_model`` left it
    without one (Keras' deferred variable: its ``_value`` is None; made from ``value`` directly), else assigned."""
    if getattr(variable, "_value", False) is None:
        variable._initialize(value)
    else:
        variable.assign(value)


def filled(model: TransformerEncoder) -> TransformerEncoder:
    """``model`` (from ``unfilled_model``, its checkpoint ported) with every variable no port filled initialised by
    its own initialiser (Keras' list of deferred variables then empty)."""
    from keras.src.backend.common import global_state
    from keras.src.backend.common.variables import initialize_all_variables

    pending = global_state.get_global_attribute("uninitialized_variables") or []
    global_state.set_global_attribute("uninitialized_variables", [v for v in pending if v._value is None])
    initialize_all_variables()
    return model


def drop_unfilled() -> None:
    """Forget the deferred variables of a model whose port failed (it is dropped: none is ever initialised)."""
    from keras.src.backend.common import global_state

    global_state.set_global_attribute("uninitialized_variables", [])
