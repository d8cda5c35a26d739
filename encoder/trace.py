"""EncoderTrace and the functions that make one: the single place where tensors become NumPy."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from encoder.attention_store import (
    EAGER_MAX_BYTES,
    EAGER_MAX_TOKENS,
    AttentionRecipe,
    LazyAttention,
    LazyVisible,
    RecomputedQueriesKeys,
    block_rows,
)
from encoder.errors import InputError
from encoder.heap import release_freed_heap
from encoder.overview import OVERVIEW_MIN_TOKENS, OverviewImages
from encoder.pieces import check_token_style, readable_piece
from encoder.positional import position_ids
from encoder.trace_fields import read_npz, write_npz

if TYPE_CHECKING:
    from encoder.sources import LoadedModel


@dataclass(frozen=True, eq=False)
class EncoderTrace:
    """Everything one forward pass of one input shows: plain NumPy, validated on construction.

    Shapes: T tokens, L layers, H heads, D model width, P positional-table rows.
    ``attention[layer, head, query, key]`` are weights after softmax (each row sums to 1). A long trace (its
    attention over ``encoder.attention_store.EAGER_MAX_BYTES``, over 512 tokens) holds it as a ``LazyAttention``
    and ``visible`` as a ``LazyVisible``: indexed like the arrays, each piece computed on demand
    (``attention[layer]``, ``attention[layer, head]``, ``attention[layer, head, rows]``); its ``logit_terms`` are
    empty.
    ``visible[layer, query, key]`` is False where the model could not attend (a causal model's later keys); those
    weights are exactly 0, and views show them as masked. ``words`` and ``visible`` are None when unknown (traces
    saved before them) or, for ``visible``, when every key was visible.
    ``logit_terms`` splits each attention logit (scaled, before the mask and softmax) into named terms, for models
    whose positions act on the logits: they sum to the logits the softmax used (DeBERTa: ``c2c``, ``c2p``, ``p2c``;
    a relative bias or rotary positions: ``content`` and ``position``); empty for absolute positions.
    ``position_scheme`` holds what the scheme itself is (e.g. a relative bias per head by signed distance, rotary
    frequencies per layer type), named by the model (``TransformerEncoder.position_scheme``); empty for tables.
    A model with an LM head (a decoder) adds to ``outputs`` (K = ``encoder.model.TOP_K``, 10): ``next_ids`` (T, K)
    int32 and ``next_probs`` (T, K) float32, the top-K next-token candidates at each position, most probable first;
    ``next_logprob`` (T,) float32, the log-probability the model gave the token that follows (the surprisal of
    token t + 1 is ``-next_logprob[t]``; NaN at the last position); with ``full_logits`` (``trace_text``), ``logits``
    (T, V) float32. ``vocab_ids`` (sorted, distinct) and ``vocab_tokens`` are the token pieces of every id those
    candidates name (``vocab_text`` reads them), so a saved trace shows candidates as text without the tokenizer.
    A generated trace (``encoder.generate.generate_text``) marks the tokens the model wrote in ``generated`` (T,)
    and adds ``step_ids`` / ``step_probs`` (N, K) to ``outputs``: step k's top-K candidates, from the distribution
    it sampled from (after the temperature), for the N generated tokens.
    ``key_value_heads`` is the number of key/value heads when query heads share them (grouped-query attention:
    query head h reads key/value head ``h // (num_heads // key_value_heads)``), 0 when each head has its own.
    An encoder-decoder (T5, BART) keeps its encoder's side in the fields above (``tokens`` the source) and adds the
    decoder's, run teacher-forced on ``target`` (or on the text it generated): ``decoder_tokens`` /
    ``decoder_token_ids`` / ``decoder_special`` (Td,), ``decoder_attention`` (Ld, H, Td, Td) causal self-attention,
    ``cross_attention`` (Ld, H, Td, T) from every decoder token to every encoder token, and ``decoder_hidden``
    (Ld + 1, Td, D).
    ``attention_of(kind)`` picks one kind ("encoder", "decoder", "cross"); ``decoder_trace()`` is the decoder's side
    as a trace of its own.
    The field names are the keys of saved NPZ and JSON files (``encoder.trace_io``): renaming one breaks them.
    An array field's ``metadata["dtype"]`` is the dtype a JSON file reads it back as.
    """

    model: str
    tokens: tuple[str, ...]
    token_ids: np.ndarray = field(metadata={"dtype": "int32"})  # (T,)
    segment_ids: np.ndarray = field(metadata={"dtype": "int32"})  # (T,), 0 for sentence A, 1 for B
    special: np.ndarray = field(metadata={"dtype": "bool"})  # (T,): [CLS], [SEP], ...
    attention: np.ndarray | LazyAttention = field(metadata={"dtype": "float32"})  # (L, H, T, T), see below
    positional: np.ndarray = field(metadata={"dtype": "float32"})  # (T, D) positional rows added to these tokens
    positional_table: np.ndarray = field(metadata={"dtype": "float32"})  # (P, D) the whole table
    hidden: np.ndarray = field(metadata={"dtype": "float32"})  # (L + 1, T, D), embeddings first
    outputs: dict[str, np.ndarray] = field(default_factory=dict)
    text: str = ""
    pair: str | None = None
    truncated: bool = False
    untruncated_length: int = 0  # tokens the input had before truncation
    labels: tuple[str, ...] = ()  # class names when outputs has "probabilities"
    words: np.ndarray | None = field(default=None, metadata={"dtype": "int32"})  # (T,) word of each token, -1: special
    visible: np.ndarray | LazyVisible | None = field(default=None, metadata={"dtype": "bool"})  # (L, T, T)
    token_style: str = ""  # how the tokens mark words: one of encoder.pieces.TOKEN_STYLES
    logit_terms: dict[str, np.ndarray] = field(default_factory=dict)  # name -> (L, H, T, T) float32, see below
    position_scheme: dict[str, np.ndarray] = field(default_factory=dict)  # the model's positional scheme, see below
    generated: np.ndarray | None = field(default=None, metadata={"dtype": "bool"})  # (T,) True: the model wrote it
    vocab_ids: np.ndarray | None = field(default=None, metadata={"dtype": "int32"})  # (N,) sorted candidate ids
    vocab_tokens: tuple[str, ...] = ()  # (N,) the token piece of each of vocab_ids, as the tokenizer spells it
    key_value_heads: int = 0  # key/value heads shared by the query heads; 0: each head has its own
    # An encoder-decoder (T5, BART): the decoder's side, all set or all unset (see ``is_encoder_decoder``).
    target: str | None = None  # the decoder's text: the teacher-forced target, or what the model generated
    decoder_tokens: tuple[str, ...] = ()  # (Td,) the decoder's input tokens, its start token first
    decoder_token_ids: np.ndarray | None = field(default=None, metadata={"dtype": "int32"})  # (Td,)
    decoder_special: np.ndarray | None = field(default=None, metadata={"dtype": "bool"})  # (Td,)
    decoder_attention: np.ndarray | None = field(default=None, metadata={"dtype": "float32"})  # (Ld, H, Td, Td)
    cross_attention: np.ndarray | None = field(default=None, metadata={"dtype": "float32"})  # (Ld, H, Td, T)
    decoder_hidden: np.ndarray | None = field(default=None, metadata={"dtype": "float32"})  # (Ld + 1, Td, D)

    def __post_init__(self) -> None:
        t = len(self.tokens)
        _expect(self.token_ids, "token_ids", (t,), t)
        _expect(self.segment_ids, "segment_ids", (t,), t)
        _expect(self.special, "special", (t,), t)
        if self.attention.ndim != 4:
            raise ValueError(f"attention must be (layers, heads, T, T), got shape {self.attention.shape}")
        layers, heads = self.attention.shape[:2]
        _expect(self.attention, "attention", (layers, heads, t, t), t)
        if self.positional_table.ndim != 2:
            raise ValueError(f"positional_table must be (P, D), got shape {self.positional_table.shape}")
        depth = self.positional_table.shape[1]
        _expect(self.positional, "positional", (t, depth), t)
        if self.hidden.ndim != 3:  # its width may differ from the table's (factorised embeddings: ALBERT, ELECTRA)
            raise ValueError(f"hidden must be (layers + 1, T, D), got shape {self.hidden.shape}")
        _expect(self.hidden, "hidden", (layers + 1, t, self.hidden.shape[-1]), t)
        probabilities = self.outputs.get("probabilities")
        if self.labels and probabilities is not None and len(self.labels) != probabilities.shape[-1]:
            raise ValueError(f"{len(self.labels)} labels for {probabilities.shape[-1]} class probabilities")
        if self.words is not None:
            _expect(self.words, "words", (t,), t)
            if self.words.dtype.kind not in "iu":
                raise ValueError(f"words must be integers, got dtype {self.words.dtype}")
        for name, term in self.logit_terms.items():
            _expect(term, f"logit term {name}", (layers, heads, t, t), t)
        if self.visible is not None:
            _expect(self.visible, "visible", (layers, t, t), t)
            if self.visible.dtype != bool:
                raise ValueError(f"visible must be bool, got dtype {self.visible.dtype}")
        check_token_style(self.token_style)
        self._check_language_model(t)
        self._check_decoder(t, heads)

    def _check_decoder(self, t: int, heads: int) -> None:
        """An encoder-decoder's fields: all or none, their shapes agreeing with the decoder tokens and the encoder's."""
        arrays = {name: getattr(self, name) for name in DECODER_ARRAYS}
        given = [name for name, value in arrays.items() if value is not None]
        if not given and not self.decoder_tokens:
            return
        if len(given) != len(arrays) or not self.decoder_tokens:
            missing = [name for name, value in arrays.items() if value is None]
            raise ValueError(f"an encoder-decoder trace needs decoder_tokens and {', '.join(DECODER_ARRAYS)}; "
                             f"missing: {', '.join(missing) or 'decoder_tokens'}")
        n = len(self.decoder_tokens)
        _expect(self.decoder_token_ids, "decoder_token_ids", (n,), n)
        _expect(self.decoder_special, "decoder_special", (n,), n)
        if self.decoder_attention.ndim != 4 or self.decoder_attention.shape[1] != heads:
            raise ValueError(f"decoder_attention must be (decoder layers, {heads} heads, Td, Td), got shape "
                             f"{self.decoder_attention.shape}")
        layers = self.decoder_attention.shape[0]
        _expect(self.decoder_attention, "decoder_attention", (layers, heads, n, n), n)
        _expect(self.cross_attention, "cross_attention", (layers, heads, n, t), n)
        if self.decoder_hidden.ndim != 3:
            raise ValueError(f"decoder_hidden must be (decoder layers + 1, Td, D), got {self.decoder_hidden.shape}")
        _expect(self.decoder_hidden, "decoder_hidden", (layers + 1, n, self.decoder_hidden.shape[-1]), n)

    def _check_language_model(self, t: int) -> None:
        """The LM head's outputs, the generated mask, the candidates' vocabulary and the key/value heads agree."""
        outputs = self.outputs
        width = outputs["next_ids"].shape[-1] if "next_ids" in outputs else None
        for name, shape in (("next_ids", (t, width)), ("next_probs", (t, width)), ("next_logprob", (t,))):
            if name in outputs:
                _expect(outputs[name], f"outputs {name}", shape, t)
        if "logits" in outputs and "next_ids" in outputs:
            _expect(outputs["logits"], "outputs logits", (t, outputs["logits"].shape[-1]), t)
        if self.generated is not None:
            _expect(self.generated, "generated", (t,), t)
            if self.generated.dtype != bool:
                raise ValueError(f"generated must be bool, got dtype {self.generated.dtype}")
        if "step_ids" in outputs or "step_probs" in outputs:
            steps = 0 if self.generated is None else int(self.generated.sum())
            for name in ("step_ids", "step_probs"):
                if name not in outputs or outputs[name].ndim != 2 or outputs[name].shape[0] != steps:
                    raise ValueError(f"outputs step_ids and step_probs must be (N, K) for the N = {steps} generated "
                                     f"tokens, got {name} {outputs[name].shape if name in outputs else 'missing'}")
        if self.vocab_ids is not None:
            if self.vocab_ids.ndim != 1 or self.vocab_ids.dtype.kind not in "iu":
                raise ValueError(f"vocab_ids must be (N,) integers, got {self.vocab_ids.dtype} {self.vocab_ids.shape}")
            if len(self.vocab_tokens) != len(self.vocab_ids):
                raise ValueError(f"{len(self.vocab_tokens)} vocab_tokens for {len(self.vocab_ids)} vocab_ids")
            if np.any(np.diff(self.vocab_ids) <= 0):
                raise ValueError("vocab_ids must be sorted and distinct")
            named = [outputs[k] for k in ("next_ids", "step_ids") if k in outputs]
            if named and not np.all(np.isin(np.concatenate([a.reshape(-1) for a in named]), self.vocab_ids)):
                raise ValueError("vocab_ids must hold every id of next_ids and step_ids")
        elif self.vocab_tokens:
            raise ValueError("vocab_tokens without vocab_ids")
        if self.key_value_heads and (self.key_value_heads < 0 or self.num_heads % self.key_value_heads):
            raise ValueError(f"key_value_heads ({self.key_value_heads}) must divide the {self.num_heads} heads")

    @property
    def is_encoder_decoder(self) -> bool:
        """Whether the trace holds a decoder's side too (T5, BART): ``decoder_*`` and ``cross_attention``."""
        return bool(self.decoder_tokens)

    @property
    def attention_kinds(self) -> tuple[str, ...]:
        """The attention this trace holds: ("encoder",), or ("encoder", "decoder", "cross") for an
        encoder-decoder."""
        return ATTENTION_KINDS if self.is_encoder_decoder else ATTENTION_KINDS[:1]

    def attention_of(self, kind: str) -> np.ndarray:
        """The attention of one kind: "encoder" (``attention``, (L, H, T, T)), "decoder" (``decoder_attention``,
        (Ld, H, Td, Td), causal) or "cross" (``cross_attention``, (Ld, H, Td, T): decoder queries down, encoder
        keys across).

        Raises:
            InputError: a kind this trace does not hold.
        """
        if kind not in self.attention_kinds:
            raise InputError(f"this trace has no {kind!r} attention; it has: {', '.join(self.attention_kinds)}")
        return {"encoder": self.attention, "decoder": self.decoder_attention, "cross": self.cross_attention}[kind]

    def decoder_trace(self) -> EncoderTrace:
        """The decoder's side as a trace of its own: its tokens, causal self-attention (``decoder_attention``) and
        hidden states, so every view of a single stack shows it (``visible`` causal; no positional rows: zeros).

        Raises:
            InputError: the trace has no decoder.
        """
        if not self.is_encoder_decoder:
            raise InputError("this trace has no decoder (not an encoder-decoder)")
        n, layers = len(self.decoder_tokens), self.decoder_attention.shape[0]
        depth = self.positional_table.shape[1]
        return EncoderTrace(
            model=self.model, tokens=self.decoder_tokens, token_ids=self.decoder_token_ids,
            segment_ids=np.zeros(n, np.int32), special=self.decoder_special, attention=self.decoder_attention,
            positional=np.zeros((n, depth), np.float32), positional_table=np.zeros((0, depth), np.float32),
            hidden=self.decoder_hidden, text=self.target or "", token_style=self.token_style,
            visible=causal_visible(layers, n),
        )

    @property
    def num_layers(self) -> int:
        return self.attention.shape[0]

    @property
    def num_heads(self) -> int:
        return self.attention.shape[1]

    @property
    def num_tokens(self) -> int:
        return len(self.tokens)

    @property
    def is_pair(self) -> bool:
        return bool(np.any(self.segment_ids == 1))

    @cached_property
    def readable_tokens(self) -> tuple[str, ...]:
        """The tokens as people read them (``encoder.pieces.readable_piece``): byte-level pieces decoded to text,
        the leading space or ``▁`` dropped, whitespace as ``␣``/``⏎``; special and WordPiece tokens unchanged.
        ``tokens`` stays the tokenizer's own output."""
        return tuple(token if special else readable_piece(token, self.token_style)
                     for token, special in zip(self.tokens, self.special.tolist()))

    @property
    def has_lm_head(self) -> bool:
        """Whether the trace holds next-token candidates (a model with an LM head)."""
        return "next_ids" in self.outputs

    def vocab_pieces(self, ids) -> np.ndarray:
        """The token pieces (as the tokenizer spells them, like ``tokens``) of candidate ``ids`` (any shape) as a
        str array of that shape.

        Raises:
            KeyError: an id the trace does not name (not in ``vocab_ids``).
        """
        ids = np.asarray(ids)
        if self.vocab_ids is None:
            raise KeyError("this trace names no candidate tokens (no LM head)")
        where = np.searchsorted(self.vocab_ids, ids.reshape(-1))
        where = np.minimum(where, len(self.vocab_ids) - 1)
        if len(self.vocab_ids) == 0 or np.any(self.vocab_ids[where] != ids.reshape(-1)):
            raise KeyError("a candidate id is not in the trace's vocab_ids")
        return np.asarray(self.vocab_tokens, dtype=object)[where].reshape(ids.shape)

    def vocab_text(self, ids) -> np.ndarray:
        """Candidate ``ids`` (any shape, e.g. ``outputs["next_ids"][t]``) as people read them
        (``encoder.pieces.readable_piece`` of ``vocab_pieces``), a str array of that shape.

        Example:
            >>> trace.vocab_text(trace.outputs["next_ids"][-1])[:3]  # doctest: +SKIP
            array(['mat', 'floor', 'cat'], dtype=object)
        """
        pieces = self.vocab_pieces(ids)
        return np.vectorize(lambda piece: readable_piece(piece, self.token_style), otypes=[object])(pieces)

    def replace(self, **changes) -> EncoderTrace:
        return dataclasses.replace(self, **changes)

    def save(self, path: str | Path) -> Path:
        """Write the trace as a compressed NPZ to ``path`` (exactly this name: no ".npz" is added; read it back with
        ``EncoderTrace.load``); returns the path."""
        path = Path(path)
        with path.open("wb") as handle:
            write_npz(self, handle)
        return path

    @classmethod
    def load(cls, path: str | Path) -> EncoderTrace:
        """Read an NPZ written by ``save``.

        Raises:
            ExportError: the file is not an NPZ archive or not a saved trace.
            OSError: the file cannot be opened.
        """
        return read_npz(cls, Path(path), str(path))


ATTENTION_KINDS = ("encoder", "decoder", "cross")  # what ``EncoderTrace.attention_of`` returns, in menu order
DECODER_ARRAYS = ("decoder_token_ids", "decoder_special", "decoder_attention", "cross_attention", "decoder_hidden")


def class_probabilities(trace: EncoderTrace) -> list[tuple[str, float]]:
    """The trace's prediction as (label, probability) pairs, most probable first (ties keep label order).

    Returns [] when the model has no classification head (no "probabilities" output). Labels the model did not
    name are called "class 0", "class 1", ...

    Example:
        >>> class_probabilities(trace_text(load_source("tutorial"), "a wonderful, moving film"))  # doctest: +SKIP
        [('positive', 0.97...), ('negative', 0.02...)]
    """
    probabilities = trace.outputs.get("probabilities")
    if probabilities is None:
        return []
    probabilities = np.asarray(probabilities, dtype=np.float64).reshape(-1)  # (C,)
    labels = trace.labels or tuple(f"class {i}" for i in range(len(probabilities)))
    order = np.argsort(-probabilities, kind="stable")
    return [(labels[i], float(probabilities[i])) for i in order]


def _expect(array: np.ndarray, name: str, shape: tuple[int, ...], tokens: int) -> None:
    if tuple(array.shape) != tuple(shape):
        raise ValueError(f"{name} has shape {tuple(array.shape)}, while {tokens} tokens need {shape}")


def trace_text(
    model: LoadedModel, text: str, pair: str | None = None, max_tokens: int | None = None,
    full_logits: bool = False, target: str | None = None, lazy: bool | None = None,
) -> EncoderTrace:
    """Tokenize ``text`` (+ ``pair``), run the encoder once, and return every layer's attention.

    Args:
        model: a LoadedModel from ``encoder.sources.load_source``.
        text: the sentence (sentence A); an encoder-decoder's source.
        pair: optional second sentence (B); tokens of B get segment id 1.
        max_tokens: keep at most this many tokens (default and cap: the model's maximum positions).
        full_logits: a model with an LM head also keeps ``outputs["logits"]``, (T, V) float32: the LM head at
            every position (4 bytes x T x V: 25 MB at 128 tokens of a 49,152-token vocabulary). Without an LM
            head it changes nothing.
        target: an encoder-decoder's (T5, BART) target text: the decoder runs teacher-forced on it, its input the
            model's own shift (``decoder_start`` followed by the target's tokens without the last: T5 starts with
            ``<pad>``, BART with ``</s>``), and the trace gains the decoder's fields (``decoder_tokens``,
            ``decoder_attention``, ``cross_attention``, ``decoder_hidden``). None traces the encoder alone.
        lazy: keep the attention as a ``LazyAttention`` (True), as one array (False), or (None) lazily when the
            array would be over ``EAGER_MAX_BYTES`` and the input over ``EAGER_MAX_TOKENS`` (``traced_lazily``).
            The lazy forward pass never holds a layer's whole (H, T, T) weights: it computes them a block of
            queries at a time.

    Raises:
        InputError: empty text, text over the character limit, max_tokens too small, a ``target`` for a model
            that is not an encoder-decoder or an empty one.

    Example:
        >>> trace = trace_text(load_source("minilm"), "The cat sat.")  # doctest: +SKIP
        >>> trace.attention.shape  # doctest: +SKIP
        (6, 12, 6, 6)
        >>> t5 = trace_text(load_source("t5-small"), "translate English to German: The cat sat.",
        ...                 target="Die Katze saß.")  # doctest: +SKIP
        >>> t5.attention_of("cross").shape  # doctest: +SKIP
        (6, 8, 7, 12)
    """
    check_targets(model, [target])
    encoded = model.tokenizer.encode(text, pair, max_tokens)
    outputs = forward_outputs(model, encoded.token_ids[None], encoded.segment_ids[None], full_logits, lazy)
    return _make_trace(model, encoded, outputs, text, pair, decoder=teacher_forced(model, outputs, target))


def forward_outputs(model: LoadedModel, ids: np.ndarray, segments: np.ndarray, full_logits: bool = False,
                    lazy: bool | None = None) -> dict:
    """The outputs of one unpadded input, ids and segments (1, T), as NumPy without the batch axis: the compiled
    pass (with the LM head's ``logits`` when ``full_logits`` and the model has one), or, when ``traced_lazily``,
    the pass by row blocks with ``attention`` a ``LazyAttention``."""
    full_logits = full_logits and has_lm_head(model)
    if traced_lazily(model, ids.shape[1], lazy):
        return _traced_by_rows(model, ids, segments, full_logits)
    raw = model.encoder.forward_logits(ids, segments) if full_logits else model.encoder.forward(ids, segments)
    return {name: to_numpy(value)[0] for name, value in raw.items()}


def _traced_by_rows(model: LoadedModel, ids: np.ndarray, segments: np.ndarray, full_logits: bool) -> dict:
    """The outputs of one long input (1, T) by ``CompiledEncoder.forward_rows``, its ``attention`` a
    ``LazyAttention`` whose queries and keys are computed again from the outputs' own hidden states, a layer at a
    time (``RecomputedQueriesKeys``): the trace keeps no copy of them. Over ``OVERVIEW_MIN_TOKENS`` tokens the
    pass also reduces every head's weights into its overview image as it computes them (``OverviewImages``). The
    C heap's freed pages go back to the system first (``release_freed_heap``): the pass's peak is the process's."""
    release_freed_heap()
    recipe, heads, length = AttentionRecipe.of(model.model), model.config.num_heads, ids.shape[1]
    images = OverviewImages(recipe, heads, length) if length > OVERVIEW_MIN_TOKENS else None
    raw = model.encoder.forward_rows(ids, segments, block_rows(heads, length), full_logits,
                                     overview=None if images is None else images.add)
    outputs = {name: _numpy(value)[0] for name, value in raw.items()}
    store = LazyAttention(RecomputedQueriesKeys(model.model, outputs["hidden"]), recipe,
                          None if images is None else images.images())
    return {**outputs, "attention": store}


def traced_lazily(model: LoadedModel, tokens: int, lazy: bool | None = None) -> bool:
    """Whether ``trace_text`` keeps the attention of ``tokens`` tokens lazily (``LazyAttention``): when ``lazy``
    says so, or (None) when the whole (L, H, T, T) float32 array would be over ``EAGER_MAX_BYTES``, the input is
    over ``EAGER_MAX_TOKENS`` and the model's attention runs in row blocks (``TransformerEncoder.rows_supported``;
    else it is traced whole, as always).

    Raises:
        InputError: ``lazy`` True for a model whose attention cannot run in row blocks (DeBERTa).
    """
    supported = model.model.rows_supported
    if lazy is None:
        cfg = model.config
        whole = 4 * cfg.num_layers * cfg.num_heads * tokens * tokens
        return supported and tokens > EAGER_MAX_TOKENS and whole > EAGER_MAX_BYTES
    if lazy and not supported:
        raise InputError("This model's attention (DeBERTa's disentangled positions) is traced whole only; a long "
                         "trace needs absolute, rotary or relative-bias positions.")
    return bool(lazy)


def check_targets(model: LoadedModel, targets: Sequence[str | None]) -> None:
    """Refuse a target (not None) for a model that is not an encoder-decoder (InputError)."""
    if model.decoder is None and any(target is not None for target in targets):
        raise InputError("This model is not an encoder-decoder: a target needs a model with a decoder (T5, BART); "
                         "trace the text alone.")


def teacher_forced(model: LoadedModel, outputs: dict[str, np.ndarray], target: str | None) -> dict | None:
    """The decoder's trace fields for ``target`` tokenized alone (``decoder_fields``) over the encoder's
    ``outputs`` of one unpadded input; None without a target."""
    if target is None:
        return None
    decoded = model.tokenizer.encode(target, None, model.decoder.model.config.max_positions)
    return decoder_fields(model, outputs, target, decoded.token_ids, decoded.tokens, decoded.special)


def decoder_fields(model: LoadedModel, outputs: dict[str, np.ndarray], target: str, target_ids: np.ndarray,
                   target_tokens: Sequence[str], target_special: np.ndarray) -> dict:
    """The decoder's trace fields of an encoder-decoder, teacher-forced: its input is ``model.decoder_start``
    followed by the N target tokens (``target_ids`` (N,), their pieces and special flags) without the last, run
    over the encoder's last hidden states (of the encoder's ``outputs``, one input's)."""
    states = outputs.get("last_hidden_state", outputs["hidden"][-1])  # (S, D): what the decoder attends to
    ids = np.concatenate([[model.decoder_start], np.asarray(target_ids)[:-1]]).astype(np.int32)  # (Td,)
    raw = model.decoder.forward_decoder(ids[None], states[None])
    decoded = {name: to_numpy(raw[name])[0] for name in ("attention", "cross_attention", "hidden")}
    special = model.decoder_start in model.tokenizer.special_ids()
    return {"target": target,
            "decoder_tokens": (model.tokenizer.id_to_token(model.decoder_start), *target_tokens[:-1]),
            "decoder_token_ids": ids,
            "decoder_special": np.concatenate([[special], np.asarray(target_special, bool)[:-1]]),
            "decoder_attention": decoded["attention"], "cross_attention": decoded["cross_attention"],
            "decoder_hidden": decoded["hidden"]}


def has_lm_head(model: LoadedModel) -> bool:
    """Whether ``model`` predicts the next token (its config's head has an LM head: decoders)."""
    return bool(getattr(model.config.head, "lm_head", False))


def trace_batch(
    model: LoadedModel,
    texts: Sequence[str],
    pairs: Sequence[str | None] | None = None,
    max_tokens: int | None = None,
    batch_size: int = 32,
    targets: Sequence[str | None] | None = None,
    width: int | None = None,
    rows: int | None = None,
) -> list[EncoderTrace]:
    """Trace many texts, batching inputs of similar length (padded keys are masked to weight 0).

    Each trace equals ``trace_text`` of the same input (to float32 rounding). Order is preserved. An
    encoder-decoder's ``targets`` (one per text, None for the encoder alone) are run one at a time over their text's
    encoder states. ``width`` / ``rows``: pad each forward pass to at least this many tokens / rows (extra rows
    repeat the pass's first input and are dropped), so a caller can keep the set of shapes it runs small (the
    oneDNN kernels TensorFlow builds are kept per shape).
    """
    for name, given in (("pairs", pairs), ("targets", targets)):
        if given is not None and len(given) != len(texts):
            raise InputError(f"{len(texts)} texts but {len(given)} {name}")
    pairs = list(pairs) if pairs is not None else [None] * len(texts)
    targets = list(targets) if targets is not None else [None] * len(texts)
    check_targets(model, targets)
    encoded = [model.tokenizer.encode(t, p, max_tokens) for t, p in zip(texts, pairs)]
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i].tokens))
    traces: list[EncoderTrace | None] = [None] * len(encoded)
    for start in range(0, len(order), batch_size):
        chunk = order[start:start + batch_size]
        filled = chunk + chunk[:1] * max((rows or 0) - len(chunk), 0)
        ids, segments, mask = pad_batch([encoded[i].token_ids for i in filled], model.config.pad_token_id,
                                        [encoded[i].segment_ids for i in filled],
                                        max(width or 0, *(len(encoded[i].tokens) for i in chunk)))
        raw = {name: to_numpy(value) for name, value in model.encoder.forward_padded(ids, segments, mask).items()}
        for row, i in enumerate(chunk):
            outputs = _unpad({k: v[row] for k, v in raw.items()}, len(encoded[i].tokens))
            traces[i] = _make_trace(model, encoded[i], outputs, texts[i], pairs[i],
                                    decoder=teacher_forced(model, outputs, targets[i]))
    return traces  # type: ignore[return-value]


def pad_batch(
    sequences: Sequence[np.ndarray],
    pad_id: int,
    segments: Sequence[np.ndarray] | None = None,
    width: int | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Right-pad B token-id sequences (each (T_i,)) into one batch for ``forward_padded``.

    Args:
        sequences: B token-id arrays.
        pad_id: int, the id written past each sequence's end.
        segments: optional B segment-id arrays, one per sequence and of its length (default all 0).
        width: int, the batch width W (default the longest sequence; never shorter than it).

    Returns:
        ids (B, W) int32, segment ids (B, W) int32 (0 in the padding), mask (B, W) bool (True on real tokens).

    Example:
        >>> ids, segments, mask = pad_batch([np.array([2, 7, 3]), np.array([2, 3])], pad_id=0)
        >>> ids.tolist(), mask.sum(axis=1).tolist()
        ([[2, 7, 3], [2, 3, 0]], [3, 2])
    """
    lengths = [len(s) for s in sequences]
    longest = max(lengths, default=0)
    width = longest if width is None else width
    if width < longest:
        raise ValueError(f"width {width} is shorter than the longest sequence ({longest} tokens)")
    if segments is not None and len(segments) != len(sequences):
        raise ValueError(f"{len(sequences)} sequences but {len(segments)} segment arrays")
    ids = np.full((len(sequences), width), pad_id, dtype=np.int32)  # (B, W)
    segment_ids = np.zeros((len(sequences), width), dtype=np.int32)  # (B, W)
    mask = np.zeros((len(sequences), width), dtype=bool)  # (B, W)
    for row, (sequence, n) in enumerate(zip(sequences, lengths)):
        ids[row, :n] = sequence
        mask[row, :n] = True
        if segments is not None:
            segment_ids[row, :n] = segments[row]
    return ids, segment_ids, mask


class _DLPackTensor:
    """Adapter so ``np.from_dlpack`` accepts a TensorFlow tensor (TF hands out a bare capsule)."""

    def __init__(self, tensor):
        self.tensor = tensor

    def __dlpack__(self, stream=None, **kwargs):
        import tensorflow as tf

        return tf.experimental.dlpack.to_dlpack(self.tensor)

    def __dlpack_device__(self):
        return (1, 0)  # kDLCPU, device 0


def _numpy(value) -> np.ndarray:
    """``value`` as NumPy: an array as it is (a long input's hidden states, which ``TransformerEncoder.call_rows``
    copies out a layer at a time), a tensor by ``to_numpy``."""
    return value if isinstance(value, np.ndarray) else to_numpy(value)


def to_numpy(tensor) -> np.ndarray:
    """A read-only NumPy view of a CPU tensor without copying (75 MB of attention at 512 tokens), else a copy."""
    try:
        return np.from_dlpack(_DLPackTensor(tensor))
    except (RuntimeError, TypeError, ValueError, BufferError):
        return tensor.numpy()


TERMS = "terms/"  # model outputs named "terms/<name>" are logit terms (B, L, H, T, T)


LM_OUTPUTS = ("next_ids", "next_probs", "next_logprob", "logits")  # per position (T, ...) when next_ids is there


def _unpad(outputs: dict[str, np.ndarray], n: int) -> dict[str, np.ndarray]:
    square = {k: np.ascontiguousarray(v[:, :, :n, :n]) for k, v in outputs.items()
              if k == "attention" or k.startswith(TERMS)}
    per_position = {}
    if "next_ids" in outputs:  # an LM head: cut each position's outputs; the last real token has no next token
        per_position = {k: np.array(outputs[k][:n]) for k in LM_OUTPUTS if k in outputs}
        if "next_logprob" in per_position:
            per_position["next_logprob"][n - 1] = np.nan
    if "last_hidden_state" in outputs:  # CLIP's, after the final norm that hidden[-1] is before (T, D)
        per_position["last_hidden_state"] = np.ascontiguousarray(outputs["last_hidden_state"][:n])
    return {**outputs, **square, **per_position, "hidden": np.ascontiguousarray(outputs["hidden"][:, :n])}


def candidate_vocabulary(model: LoadedModel, outputs: dict[str, np.ndarray]) -> tuple[np.ndarray | None,
                                                                                        tuple[str, ...]]:
    """``(vocab_ids, vocab_tokens)`` of an ``EncoderTrace``: the sorted distinct ids of ``next_ids`` and
    ``step_ids`` and their token pieces (``TextTokenizer.id_to_token``); ``(None, ())`` without them."""
    named = [np.asarray(outputs[k]).reshape(-1) for k in ("next_ids", "step_ids") if k in outputs]
    if not named:
        return None, ()
    ids = np.unique(np.concatenate(named)).astype(np.int32)
    return ids, tuple(model.tokenizer.id_to_token(int(i)) for i in ids)


def shared_key_value_heads(model: LoadedModel) -> int:
    """``EncoderTrace.key_value_heads`` of ``model``: its key/value heads when fewer than its heads, else 0."""
    shared = model.config.attention.key_value_heads
    return shared if 0 < shared < model.config.num_heads else 0


def _make_trace(model: LoadedModel, encoded, outputs: dict[str, np.ndarray], text: str, pair: str | None,
                generated: np.ndarray | None = None, decoder: dict | None = None):
    table = model.positional_table
    extra = {k: v for k, v in outputs.items() if k not in ("hidden", "attention") and not k.startswith(TERMS)}
    terms = {k[len(TERMS):]: v for k, v in outputs.items() if k.startswith(TERMS)}
    return EncoderTrace(
        model=model.name,
        tokens=encoded.tokens,
        token_ids=encoded.token_ids,
        segment_ids=encoded.segment_ids,
        special=encoded.special,
        attention=outputs["attention"],
        positional=table_rows(table, position_ids(encoded.token_ids, model.config.position_offset,
                                                  model.config.pad_token_id, model.config.positions.skip_pads)),
        positional_table=table,
        hidden=outputs["hidden"],
        outputs=extra,
        text=text,
        pair=pair,
        truncated=encoded.truncated,
        untruncated_length=encoded.untruncated_length,
        labels=model.labels,
        words=encoded.words,
        visible=(outputs["attention"].visible() if isinstance(outputs["attention"], LazyAttention)
                 else model.model.visible_mask(len(encoded.tokens))),
        token_style=encoded.token_style,
        logit_terms=terms,
        position_scheme=model.position_scheme,
        generated=generated,
        **language_model_fields(model, extra),
        **(decoder or {}),
    )


def table_rows(table: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """(T, E): the rows ``ids`` (T,) of a positional ``table`` (P, E); a table of one row repeated (zeros: no
    position added, a read-only broadcast) gives that row broadcast again, not a (T, E) copy of it (19-25 MB at
    8,192 tokens)."""
    if table.strides[0] == 0:
        return np.broadcast_to(table[0], (len(ids), table.shape[1]))
    return table[ids]


def language_model_fields(model: LoadedModel, outputs: dict[str, np.ndarray]) -> dict:
    """The trace fields that name candidates and shared heads: ``vocab_ids``, ``vocab_tokens``,
    ``key_value_heads``."""
    vocab_ids, vocab_tokens = candidate_vocabulary(model, outputs)
    return {"vocab_ids": vocab_ids, "vocab_tokens": vocab_tokens, "key_value_heads": shared_key_value_heads(model)}


def causal_visible(layers: int, tokens: int) -> np.ndarray:
    """(layers, tokens, tokens) bool, True where key <= query: what a causal model sees (a read-only view)."""
    return np.broadcast_to(np.tri(tokens, dtype=bool), (layers, tokens, tokens))
