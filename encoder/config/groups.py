"""The groups of an ``EncoderConfig``, one frozen dataclass per part of the model: ``Embeddings``, ``Attention``,
the position schemes (``AbsolutePositions`` and its subclasses, by ``kind`` in ``SCHEMES``), ``Block`` and ``Head``."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

Activation = Literal["relu", "gelu", "gelu_new", "silu", "quick_gelu"]
ACTIVATIONS = ("relu", "gelu", "gelu_new", "silu", "quick_gelu")
CLASSIFIER_ACTIVATIONS = ("tanh", "relu", "gelu")
TABLES = ("sinusoidal", "learned", "none")
NORMS = ("layernorm", "rmsnorm")
WINDOW_KINDS = ("symmetric", "causal")
ROPE_TYPES = ("default", "linear", "llama3")
POOLINGS = ("mean", "cls", "last", "eos")
PLACEMENTS = ("post", "pre")
MLPS = ("dense", "gated")
POSITION_TERMS = ("c2p", "p2c")


def check_count(name: str, value: Any, least: int = 0) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < least:
        kind = "a positive" if least else "a non-negative"
        raise ValueError(f"{name} must be {kind} integer, got {value!r}")


def _check_counts(group: object, *names: str, least: int = 0) -> None:
    for name in names:
        check_count(name, getattr(group, name), least)


def _check_choice(name: str, value: Any, choices: tuple) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(str, choices))}, got {value!r}")


def optional(default: Any) -> Any:
    """A group field written by ``compact`` only when it differs from ``default``: fields added after configs were
    first saved, so those configs' ``to_dict`` stays what it was."""
    return field(default=default, metadata={"optional": True})


def compact(group: Any) -> dict[str, Any]:
    """``dataclasses.asdict(group)`` without the ``optional`` fields that keep their default."""
    values = dataclasses.asdict(group)
    for f in dataclasses.fields(group):
        if f.metadata.get("optional") and values[f.name] == f.default:
            values.pop(f.name)
    return values


@dataclass(frozen=True)
class Embeddings:
    """What the first layer reads: token (+ type) (+ absolute position) embeddings, then a norm and a projection.

    Args:
        vocab_size: int, number of token ids.
        type_vocab_size: int, token-type (segment) embeddings; 0 for none.
        width: int, width of the embeddings when it differs from ``d_model`` (ELECTRA, ALBERT: projected to
            ``d_model`` after the embedding norm); 0 means ``d_model``.
        scale: bool, multiply token embeddings by sqrt(d_model) (classic encoder).
        layer_norm: bool, normalise the summed embeddings (BERT).
        pad_token_id: int, the id used to pad batches.
    """

    vocab_size: int
    type_vocab_size: int = 0
    width: int = 0
    scale: bool = True
    layer_norm: bool = False
    pad_token_id: int = 0

    def __post_init__(self) -> None:
        _check_counts(self, "vocab_size", least=1)
        _check_counts(self, "type_vocab_size", "width")


@dataclass(frozen=True)
class Attention:
    """Self-attention: heads, their size and scaling, and which keys each query sees.

    Args:
        num_heads: int, attention heads per layer (H).
        key_value_heads: int, heads of the key and value projections (grouped-query attention: every
            ``num_heads // key_value_heads`` query heads share one); 0 means ``num_heads``.
        head_dim: int, width of one head (dh); 0 means ``d_model // num_heads``.
        scaling: float, the factor on q.k; 0 means ``1 / sqrt(head_dim)``.
        causal: bool, each token attends only to itself and earlier tokens.
        windows: one int per layer, or () for none; 0 is a global layer. A layer with window w > 0 lets query i
            see key j only when ``|i - j| <= w // 2`` ("symmetric" ``window_kind``: ModernBERT's ``local_attention``
            is the whole window) or when ``0 <= i - j < w`` ("causal": Mistral's, Gemma's ``sliding_window``).
        window_kind: "symmetric" or "causal", how ``windows`` are read.
        query_key_value_bias: bool or None, the query, key and value projections have biases; None means
            ``block.use_bias`` (Qwen2: True while the rest has none).
        output_bias: bool or None, the output projection has a bias; None means ``block.use_bias``.
        qk_norm: bool, queries and keys are normalised per head over ``head_dim`` (a norm of ``block.norm`` kind,
            its own weight) before rotary positions (Qwen3, Gemma 3).
        softcap: float, attention-logit soft-capping ``tanh(logits / softcap) * softcap`` after the scaling and
            before the mask (Gemma 2); 0 for none.
        cross: bool, every layer also attends to an encoder's last hidden states (the decoder of an
            encoder-decoder: T5, BART): a cross-attention sublayer with its own norm after the self-attention, with
            the same heads, scaling and biases and no positional term.
    """

    num_heads: int
    key_value_heads: int = 0
    head_dim: int = 0
    scaling: float = 0.0
    causal: bool = False
    windows: tuple[int, ...] = ()
    window_kind: Literal["symmetric", "causal"] = "symmetric"
    query_key_value_bias: bool | None = None
    output_bias: bool | None = None
    qk_norm: bool = False
    softcap: float = 0.0
    cross: bool = optional(False)

    def __post_init__(self) -> None:
        _check_counts(self, "num_heads", least=1)
        _check_counts(self, "key_value_heads", "head_dim")
        if self.key_value_heads and self.num_heads % self.key_value_heads:
            raise ValueError(f"key_value_heads ({self.key_value_heads}) must divide num_heads ({self.num_heads})")
        object.__setattr__(self, "windows", tuple(self.windows))
        if any(not isinstance(w, int) or w < 0 for w in self.windows):
            raise ValueError(f"windows must be non-negative integers, got {self.windows!r}")
        if not self.scaling >= 0.0:
            raise ValueError(f"scaling must be 0 (1 / sqrt(head_dim)) or positive, got {self.scaling!r}")
        _check_choice("window_kind", self.window_kind, WINDOW_KINDS)
        if not (self.softcap >= 0.0 and math.isfinite(self.softcap)):
            raise ValueError(f"softcap must be 0 (none) or positive, got {self.softcap!r}")

    def window(self, layer: int) -> int:
        """Layer ``layer``'s window (0: global)."""
        return self.windows[layer] if self.windows else 0


@dataclass(frozen=True)
class AbsolutePositions:
    """A position scheme: rows of an absolute table added to the embeddings (the base of every scheme).

    Args:
        table: "sinusoidal" (fixed, the classic encoder), "learned" (BERT) or "none" (nothing added to the input).
        offset: int, the first position row (RoBERTa: ``pad_token_id + 1``; BART: 2); the table has
            ``max_positions + offset`` rows and token i gets row ``offset + i``.
        skip_pads: bool, with an offset, only non-pad tokens are numbered and pad tokens get row ``offset - 1``
            (RoBERTa, as transformers numbers them from the pad id); False: every token is numbered, pads included
            (BART's learned positions).
    """

    kind: ClassVar[str] = "absolute"
    table: Literal["sinusoidal", "learned", "none"] = "sinusoidal"
    offset: int = 0
    skip_pads: bool = optional(True)

    def __post_init__(self) -> None:
        _check_choice("positional table", self.table, TABLES)
        _check_counts(self, "offset")

    def check(self, config: Any) -> None:
        """Refuse a scheme the rest of ``config`` (the whole ``EncoderConfig``) cannot run (head size, layers)."""

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, **compact(self)}


@dataclass(frozen=True)
class RelativeBuckets(AbsolutePositions):
    """A learned (buckets, H) bias added to every layer's scaled logits at T5's bidirectional bucket of the key's
    distance from the query (``encoder.positional.relative_position_buckets``), besides the absolute table (MPNet).

    Args:
        buckets: int, buckets in all (an even number, at least 4).
        max_distance: int, the distance from which keys share one bucket per side.
        per_layer: bool, every layer has its own (buckets, H) table (umT5) instead of one shared by all (T5, MPNet).
        bidirectional: bool, keys after the query have buckets of their own (an encoder's); False: T5's causal
            buckets (a decoder's: every bucket for keys before the query, ``encoder.positional``).
    """

    kind: ClassVar[str] = "relative_buckets"
    buckets: int = 32
    max_distance: int = 128
    per_layer: bool = optional(False)
    bidirectional: bool = optional(True)

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_counts(self, "max_distance", least=1)
        if not isinstance(self.buckets, int) or self.buckets < 4 or self.buckets % 2:
            raise ValueError(f"relative bias buckets (relative_attention_buckets) must be an even number of at "
                             f"least 4, got {self.buckets!r}")


@dataclass(frozen=True)
class RotaryPositions(AbsolutePositions):
    """Rotary positions (RoPE): no table; queries and keys are rotated by position, dimension pair i of position p
    by ``p * theta ** (-2i / d)`` (d: the rotated dimensions), ``theta`` in global layers and ``local_theta`` in
    windowed ones; the frequencies are rescaled by ``rope_type`` (``encoder.positional.rope_frequencies``).

    Args:
        theta, local_theta: float, the bases of global and windowed layers.
        rope_type: "default", "linear" (frequencies / ``factor``) or "llama3" (Llama 3.1's frequency-dependent
            rescaling by ``factor``, ``low_freq_factor``, ``high_freq_factor`` and ``original_max_positions``), in
            global layers; ``local_rope_type`` and ``local_factor`` in windowed ones (Gemma 3 scales only its
            global layers; Mistral's windowed layers are scaled as any other).
        fraction: float in (0, 1], the rotated share of each head's dimensions (``partial_rotary_factor``: the
            first ``int(head_dim * fraction)`` are rotated, the rest pass unchanged).
        logit_terms: bool, record each logit's ``content`` (unrotated) and ``position`` terms; computing them costs
            a second product per layer, so decoders leave them out.
    """

    kind: ClassVar[str] = "rotary"
    table: Literal["sinusoidal", "learned", "none"] = "none"
    theta: float = 10_000.0
    local_theta: float = 10_000.0
    rope_type: str = "default"
    factor: float = 1.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_positions: int = 8192
    local_rope_type: str = "default"
    local_factor: float = 1.0
    fraction: float = 1.0
    logit_terms: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.table != "none" or self.offset:
            raise ValueError("rotary positions add no table to the embeddings (table 'none', offset 0)")
        if not (self.theta > 1.0 and self.local_theta > 1.0):
            raise ValueError("rotary positions need rope_theta and rope_local_theta above 1")
        _check_choice("rope_type", self.rope_type, ROPE_TYPES)
        _check_choice("local rope_type", self.local_rope_type, ROPE_TYPES)
        if not all(math.isfinite(v) and v >= 1.0 for v in (self.factor, self.local_factor)):
            raise ValueError(f"rope factor must be at least 1, got {self.factor!r} / {self.local_factor!r}")
        if not (0.0 < self.low_freq_factor < self.high_freq_factor and math.isfinite(self.high_freq_factor)):
            raise ValueError("rope low_freq_factor must be positive and below high_freq_factor")
        _check_counts(self, "original_max_positions", least=1)
        if not 0.0 < self.fraction <= 1.0:
            raise ValueError(f"partial_rotary_factor must be in (0, 1], got {self.fraction!r}")

    def check(self, config: Any) -> None:
        if self.rotary_dim(config.head_dim) % 2 or not self.rotary_dim(config.head_dim):
            raise ValueError("rotary positions need an even, non-zero number of rotated dimensions per head")

    def rotary_dim(self, head_dim: int) -> int:
        """The rotated dimensions of each head: ``int(head_dim * fraction)``, as transformers rounds it."""
        return int(head_dim * self.fraction)


@dataclass(frozen=True)
class DisentangledPositions(AbsolutePositions):
    """DeBERTa-v2/v3's disentangled attention (``encoder.parts.disentangled``): each logit is content->content plus
    ``terms`` between content and a learned table of relative-position embeddings, all divided by
    ``sqrt(head_dim * (1 + len(terms)))``. Hugging Face's names are in brackets.

    Args:
        buckets: int, log buckets of relative distance per side (``position_buckets``,
            ``encoder.positional.log_bucket_position``); 0 for none (distances clipped at ``max_distance``).
        max_distance: int, the longest relative distance (``max_relative_positions``).
        terms: tuple of "c2p" (content->position) and "p2c" (position->content) (``pos_att_type``).
        share_key: bool, the position terms project the table with the content query and key projections
            (``share_att_key``, DeBERTa-v3) instead of their own ``pos_query``/``pos_key``.
        normalize: bool, a layer norm on the table (``norm_rel_ebd: layer_norm``).
    """

    kind: ClassVar[str] = "disentangled"
    table: Literal["sinusoidal", "learned", "none"] = "none"
    buckets: int = 0
    max_distance: int = 1
    terms: tuple[str, ...] = ()
    share_key: bool = False
    normalize: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(self, "terms", tuple(self.terms))
        if any(term not in POSITION_TERMS for term in self.terms) or len(set(self.terms)) != len(self.terms):
            raise ValueError(f"pos_att_type must hold distinct terms of {', '.join(POSITION_TERMS)}, "
                             f"got {self.terms!r}")
        _check_counts(self, "max_distance", least=1)
        _check_counts(self, "buckets")
        if self.buckets % 2 or (self.buckets and self.max_distance - 1 <= self.buckets // 2):
            raise ValueError(f"position_buckets must be 0 or an even number below 2 * (max_relative_positions - 1), "
                             f"got {self.buckets!r} (max_relative_positions {self.max_distance!r})")

    def check(self, config: Any) -> None:
        if config.attention.key_value_heads not in (0, config.attention.num_heads):
            raise ValueError("disentangled attention has as many key/value heads as query heads")

    @property
    def span(self) -> int:
        """Relative embeddings per side (S): ``buckets`` when bucketed, else ``max_distance``; the table has 2S rows,
        row ``S + bucket`` for a (query - key) bucket."""
        return self.buckets or self.max_distance


SCHEMES: dict[str, type[AbsolutePositions]] = {
    scheme.kind: scheme for scheme in (AbsolutePositions, RelativeBuckets, RotaryPositions, DisentangledPositions)}


@dataclass(frozen=True)
class Block:
    """One residual block: attention, then the MLP, each with a norm.

    Args:
        dff: int, width of the MLP's inner layer.
        activation: "relu" (classic), "gelu" (exact erf form, BERT), "gelu_new" (tanh form: ALBERT, GPT-2, Gemma)
            "silu" (Llama's SwiGLU) or "quick_gelu" (CLIP: ``x * sigmoid(1.702 x)``).
        norm: "layernorm" or "rmsnorm" (``x / sqrt(mean(x^2) + eps) * w``: no mean, no bias; Llama, Gemma).
        placement: "post" (BERT, the classic encoder: ``norm(x + f(x))``) or "pre" (GPT-2: ``x + f(norm(x))``).
        mlp: "dense" (``activation(x W1) W2``) or "gated" (GeGLU, ModernBERT: the inner layer is ``2 * dff`` wide,
            its activated first half times its second half).
        use_bias: bool, dense layers and norms have biases (False: ModernBERT).
        norm_epsilon: float, epsilon of every norm of the model.
        first_attention_norm: bool, a pre-norm first block normalises its input (False: ModernBERT, whose
            embeddings are normalised already).
        final_norm: bool, a norm on the last hidden state (GPT-2's ``ln_f``).
        final_norm_in_hidden: bool, ``hidden[-1]`` reports the last hidden state after the final norm (GPT-2, T5,
            the decoders: transformers' ``hidden_states[-1]``); False (CLIP, whose ``hidden_states[-1]`` is the last
            layer's output before ``final_layer_norm``): ``hidden[-1]`` is before it and the model's output
            ``last_hidden_state`` (T, D) is after it (what the pooling and an image model read).
        sandwich_norms: bool, pre-norm blocks also normalise the attention's and the MLP's outputs before adding
            them to the residual stream (Gemma 2/3: ``x + norm(f(norm(x)))``).
    """

    dff: int
    activation: Activation = "relu"
    norm: Literal["layernorm", "rmsnorm"] = "layernorm"
    placement: Literal["post", "pre"] = "post"
    mlp: Literal["dense", "gated"] = "dense"
    use_bias: bool = True
    norm_epsilon: float = 1e-6
    first_attention_norm: bool = True
    final_norm: bool = False
    sandwich_norms: bool = False
    final_norm_in_hidden: bool = True

    def __post_init__(self) -> None:
        _check_counts(self, "dff", least=1)
        _check_choice("activation", self.activation, ACTIVATIONS)
        _check_choice("norm", self.norm, NORMS)
        _check_choice("placement", self.placement, PLACEMENTS)
        _check_choice("mlp", self.mlp, MLPS)
        if self.sandwich_norms and self.placement != "pre":
            raise ValueError("sandwich norms belong to pre-norm blocks")


@dataclass(frozen=True)
class Head:
    """What sits on the last hidden state.

    Args:
        pooling: "mean", "cls", "last" (the last real token: a decoder's) or "eos" (CLIP: the first token whose id
            is ``eos_token_id``, the first token when none is; the highest id when ``eos_token_id`` is -1: old CLIP
            configs), how the classifier / sentence embedding pools tokens.
        eos_token_id: int, the token "eos" pooling reads (-1: the position of the highest token id).
        projection: int, width of a bias-free projection of the pooled state (CLIP's ``text_projection``): the
            model's ``embedding`` is then the projected state and ``pooled`` the state itself; 0 for none.
        num_classes: int, size of a classifier on the pooled state (0 for none).
        classifier_activation: None (the classifier reads the pooled state), or "tanh"/"relu"/"gelu": a dense layer
            of width ``d_model`` and that activation first (BERT's pooler, RoBERTa's head, DistilBERT's
            pre-classifier).
        normalize_embedding: bool, L2-normalise the pooled sentence embedding (sentence-transformers models).
        lm_head: bool, a language-model head on every position's last hidden state: logits over the vocabulary
            (decoders).
        tie_embeddings: bool, the LM head is the token embedding (transposed) rather than its own ``lm_head``.
        logit_softcap: float, final-logit soft-capping ``tanh(logits / cap) * cap`` (Gemma 2); 0 for none.
        output_scale: float, the last hidden state times this before the LM head (T5 with tied embeddings:
            ``d_model ** -0.5``); 1 for none.
        logit_bias: bool, a learned (V,) bias added to the LM head's logits (BART's ``final_logits_bias``).
    """

    pooling: Literal["mean", "cls", "last"] = "mean"
    num_classes: int = 0
    classifier_activation: str | None = None
    normalize_embedding: bool = False
    lm_head: bool = False
    tie_embeddings: bool = False
    logit_softcap: float = 0.0
    eos_token_id: int = -1
    projection: int = 0
    output_scale: float = optional(1.0)
    logit_bias: bool = optional(False)

    def __post_init__(self) -> None:
        _check_choice("pooling", self.pooling, POOLINGS)
        if not (self.output_scale > 0.0 and math.isfinite(self.output_scale)):
            raise ValueError(f"output_scale must be positive, got {self.output_scale!r}")
        if self.logit_bias and not self.lm_head:
            raise ValueError("a logit bias belongs to an LM head")
        _check_counts(self, "projection")
        check_count("eos_token_id", self.eos_token_id + 1)
        if not (self.logit_softcap >= 0.0 and math.isfinite(self.logit_softcap)):
            raise ValueError(f"final_logit_softcapping must be 0 (none) or positive, got {self.logit_softcap!r}")
        _check_counts(self, "num_classes")
        _check_choice("classifier_activation", self.classifier_activation, (None, *CLASSIFIER_ACTIVATIONS))


GROUPS: dict[str, type] = {"embeddings": Embeddings, "attention": Attention, "block": Block, "head": Head}
