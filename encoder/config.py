"""EncoderConfig: a Transformer's hyperparameters, grouped by the part of the model they shape.

One frozen dataclass per concern: ``Embeddings`` (token, type and projection), ``Attention`` (heads, head size,
scaling, causal mask, a sliding window per layer), one position *scheme* (``AbsolutePositions`` and its
subclasses: ``RelativeBuckets``, ``RotaryPositions``, ``DisentangledPositions``; each carries its own options),
``Block`` (norm kind and placement, MLP kind and activation, biases) and ``Head`` (pooling, classifier). The model
(``encoder.model``) builds one part per group; a family (``encoder.families``) maps a Hugging Face ``config.json``
onto the groups.

The flat keyword form of the first saved models (``EncoderConfig(vocab_size=..., num_layers=..., positional=...)``,
the names in ``FLAT_DEFAULTS``) is accepted too and read back as attributes (``config.pooling``,
``config.norm_first``): it builds the same grouped config, and ``from_dict`` reads both forms.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

Activation = Literal["relu", "gelu", "gelu_new"]
ACTIVATIONS = ("relu", "gelu", "gelu_new")
CLASSIFIER_ACTIVATIONS = ("tanh", "relu", "gelu")
TABLES = ("sinusoidal", "learned", "none")
NORMS = ("layernorm",)
PLACEMENTS = ("post", "pre")
MLPS = ("dense", "gated")
POSITION_TERMS = ("c2p", "p2c")


def _check_count(name: str, value: Any, least: int = 0) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < least:
        kind = "a positive" if least else "a non-negative"
        raise ValueError(f"{name} must be {kind} integer, got {value!r}")


def _check_counts(group: object, *names: str, least: int = 0) -> None:
    for name in names:
        _check_count(name, getattr(group, name), least)


def _check_choice(name: str, value: Any, choices: tuple) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(str, choices))}, got {value!r}")


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
        head_dim: int, width of one head (dh); 0 means ``d_model // num_heads``.
        scaling: float, the factor on q.k; 0 means ``1 / sqrt(head_dim)``.
        causal: bool, each token attends only to itself and earlier tokens.
        windows: one int per layer, or () for none: a layer with window w > 0 lets query i see key j only when
            ``|i - j| <= w // 2`` (ModernBERT's ``local_attention`` is the whole window); 0 is a global layer.
    """

    num_heads: int
    head_dim: int = 0
    scaling: float = 0.0
    causal: bool = False
    windows: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        _check_counts(self, "num_heads", least=1)
        _check_counts(self, "head_dim")
        object.__setattr__(self, "windows", tuple(self.windows))
        if any(not isinstance(w, int) or w < 0 for w in self.windows):
            raise ValueError(f"windows must be non-negative integers, got {self.windows!r}")
        if not self.scaling >= 0.0:
            raise ValueError(f"scaling must be 0 (1 / sqrt(head_dim)) or positive, got {self.scaling!r}")

    def window(self, layer: int) -> int:
        """Layer ``layer``'s window (0: global)."""
        return self.windows[layer] if self.windows else 0


@dataclass(frozen=True)
class AbsolutePositions:
    """A position scheme: rows of an absolute table added to the embeddings (the base of every scheme).

    Args:
        table: "sinusoidal" (fixed, the classic encoder), "learned" (BERT) or "none" (nothing added to the input).
        offset: int, the first position row (RoBERTa: ``pad_token_id + 1``); the table has
            ``max_positions + offset`` rows and token i gets row ``offset + i``.
    """

    kind: ClassVar[str] = "absolute"
    table: Literal["sinusoidal", "learned", "none"] = "sinusoidal"
    offset: int = 0

    def __post_init__(self) -> None:
        _check_choice("positional table", self.table, TABLES)
        _check_counts(self, "offset")

    def check(self, config: EncoderConfig) -> None:
        """Refuse a scheme the rest of ``config`` cannot run (head size, layers)."""

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, **dataclasses.asdict(self)}


@dataclass(frozen=True)
class RelativeBuckets(AbsolutePositions):
    """A learned (buckets, H) bias added to every layer's scaled logits at T5's bidirectional bucket of the key's
    distance from the query (``encoder.positional.relative_position_buckets``), besides the absolute table (MPNet).

    Args:
        buckets: int, buckets in all (an even number, at least 4).
        max_distance: int, the distance from which keys share one bucket per side.
    """

    kind: ClassVar[str] = "relative_buckets"
    buckets: int = 32
    max_distance: int = 128

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_counts(self, "max_distance", least=1)
        if not isinstance(self.buckets, int) or self.buckets < 4 or self.buckets % 2:
            raise ValueError(f"relative bias buckets (relative_attention_buckets) must be an even number of at "
                             f"least 4, got {self.buckets!r}")


@dataclass(frozen=True)
class RotaryPositions(AbsolutePositions):
    """Rotary positions (RoPE, ModernBERT): no table; queries and keys are rotated by position, dimension pair i of
    position p by ``p * theta ** (-2i / head_dim)``, ``theta`` in global layers and ``local_theta`` in windowed ones.
    """

    kind: ClassVar[str] = "rotary"
    table: Literal["sinusoidal", "learned", "none"] = "none"
    theta: float = 10_000.0
    local_theta: float = 10_000.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.table != "none" or self.offset:
            raise ValueError("rotary positions add no table to the embeddings (table 'none', offset 0)")
        if not (self.theta > 1.0 and self.local_theta > 1.0):
            raise ValueError("rotary positions need rope_theta and rope_local_theta above 1")

    def check(self, config: EncoderConfig) -> None:
        if config.head_dim % 2:
            raise ValueError("rotary positions need an even head size")


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
        activation: "relu" (classic), "gelu" (exact erf form, BERT) or "gelu_new" (tanh form: ALBERT, GPT-2).
        norm: "layernorm".
        placement: "post" (BERT, the classic encoder: ``norm(x + f(x))``) or "pre" (GPT-2: ``x + f(norm(x))``).
        mlp: "dense" (``activation(x W1) W2``) or "gated" (GeGLU, ModernBERT: the inner layer is ``2 * dff`` wide,
            its activated first half times its second half).
        use_bias: bool, dense layers and norms have biases (False: ModernBERT).
        norm_epsilon: float, epsilon of every norm of the model.
        first_attention_norm: bool, a pre-norm first block normalises its input (False: ModernBERT, whose
            embeddings are normalised already).
        final_norm: bool, a norm on the last hidden state (GPT-2's ``ln_f``).
    """

    dff: int
    activation: Activation = "relu"
    norm: Literal["layernorm"] = "layernorm"
    placement: Literal["post", "pre"] = "post"
    mlp: Literal["dense", "gated"] = "dense"
    use_bias: bool = True
    norm_epsilon: float = 1e-6
    first_attention_norm: bool = True
    final_norm: bool = False

    def __post_init__(self) -> None:
        _check_counts(self, "dff", least=1)
        _check_choice("activation", self.activation, ACTIVATIONS)
        _check_choice("norm", self.norm, NORMS)
        _check_choice("placement", self.placement, PLACEMENTS)
        _check_choice("mlp", self.mlp, MLPS)


@dataclass(frozen=True)
class Head:
    """What sits on the last hidden state.

    Args:
        pooling: "mean" or "cls", how the classifier / sentence embedding pools tokens.
        num_classes: int, size of a classifier on the pooled state (0 for none).
        classifier_activation: None (the classifier reads the pooled state), or "tanh"/"relu"/"gelu": a dense layer
            of width ``d_model`` and that activation first (BERT's pooler, RoBERTa's head, DistilBERT's
            pre-classifier).
        normalize_embedding: bool, L2-normalise the pooled sentence embedding (sentence-transformers models).
    """

    pooling: Literal["mean", "cls"] = "mean"
    num_classes: int = 0
    classifier_activation: str | None = None
    normalize_embedding: bool = False

    def __post_init__(self) -> None:
        _check_choice("pooling", self.pooling, ("mean", "cls"))
        _check_counts(self, "num_classes")
        _check_choice("classifier_activation", self.classifier_activation, (None, *CLASSIFIER_ACTIVATIONS))


GROUPS: dict[str, type] = {"embeddings": Embeddings, "attention": Attention, "block": Block, "head": Head}
# The flat names of the first saved models, with their defaults (``vocab_size``, ``num_layers``, ``num_heads``,
# ``d_model`` and ``dff`` have none).
FLAT_DEFAULTS: dict[str, Any] = {
    "max_positions": 512, "positional": "sinusoidal", "activation": "relu", "type_vocab_size": 0,
    "scale_embeddings": True, "embedding_layer_norm": False, "layer_norm_epsilon": 1e-6, "dropout": 0.1,
    "pad_token_id": 0, "num_classes": 0, "pooling": "mean", "normalize_embedding": False, "position_offset": 0,
    "embedding_size": 0, "num_layer_groups": 0, "norm_first": False, "final_norm": False, "causal": False,
    "classifier_activation": None, "relative_attention_buckets": 0, "rope_theta": 0.0, "rope_local_theta": 0.0,
    "local_attention": 0, "global_attention_every": 0, "gated_feed_forward": False, "use_bias": True,
    "first_attention_norm": True, "relative_attention": "", "position_buckets": 0, "max_relative_positions": 0,
    "pos_att_type": (), "share_att_key": False, "norm_rel_ebd": False,
}
FLAT_REQUIRED = ("vocab_size", "num_layers", "num_heads", "d_model", "dff")
FIELDS = ("num_layers", "d_model", "max_positions", "embeddings", "attention", "positions", "block", "head",
          "num_layer_groups", "dropout")


def _scheme_field(scheme_type: type, name: str, default: Any) -> Callable[[EncoderConfig], Any]:
    return lambda c: getattr(c.positions, name) if isinstance(c.positions, scheme_type) else default


def _global_every(config: EncoderConfig) -> int:
    """The flat ``global_attention_every``: the first global layer after layer 0 (0 without windows)."""
    windows = config.attention.windows
    if not any(windows):
        return 0
    return next((i for i in range(1, config.num_layers) if not windows[i]), config.num_layers)


# Each flat name read from the grouped config.
FLAT_VIEW: dict[str, Callable[[EncoderConfig], Any]] = {
    "vocab_size": lambda c: c.embeddings.vocab_size,
    "num_heads": lambda c: c.attention.num_heads,
    "dff": lambda c: c.block.dff,
    "positional": lambda c: "rotary" if isinstance(c.positions, RotaryPositions) else c.positions.table,
    "activation": lambda c: c.block.activation,
    "type_vocab_size": lambda c: c.embeddings.type_vocab_size,
    "scale_embeddings": lambda c: c.embeddings.scale,
    "embedding_layer_norm": lambda c: c.embeddings.layer_norm,
    "layer_norm_epsilon": lambda c: c.block.norm_epsilon,
    "pad_token_id": lambda c: c.embeddings.pad_token_id,
    "num_classes": lambda c: c.head.num_classes,
    "pooling": lambda c: c.head.pooling,
    "normalize_embedding": lambda c: c.head.normalize_embedding,
    "position_offset": lambda c: c.positions.offset,
    "embedding_size": lambda c: c.embeddings.width,
    "norm_first": lambda c: c.block.placement == "pre",
    "final_norm": lambda c: c.block.final_norm,
    "causal": lambda c: c.attention.causal,
    "classifier_activation": lambda c: c.head.classifier_activation,
    "relative_attention_buckets": _scheme_field(RelativeBuckets, "buckets", 0),
    "rope_theta": _scheme_field(RotaryPositions, "theta", 0.0),
    "rope_local_theta": _scheme_field(RotaryPositions, "local_theta", 0.0),
    "local_attention": lambda c: max(c.attention.windows, default=0),
    "global_attention_every": _global_every,
    "gated_feed_forward": lambda c: c.block.mlp == "gated",
    "use_bias": lambda c: c.block.use_bias,
    "first_attention_norm": lambda c: c.block.first_attention_norm,
    "relative_attention": lambda c: "disentangled" if isinstance(c.positions, DisentangledPositions) else "",
    "position_buckets": _scheme_field(DisentangledPositions, "buckets", 0),
    "max_relative_positions": _scheme_field(DisentangledPositions, "max_distance", 0),
    "pos_att_type": _scheme_field(DisentangledPositions, "terms", ()),
    "share_att_key": _scheme_field(DisentangledPositions, "share_key", False),
    "norm_rel_ebd": _scheme_field(DisentangledPositions, "normalize", False),
}


def _flat_positions(f: dict[str, Any]) -> AbsolutePositions:
    """The position scheme of the flat names ``f`` (every name present)."""
    table, offset = f["positional"], f["position_offset"]
    if f["relative_attention"] not in ("", "disentangled"):
        raise ValueError(f"relative_attention must be '' or 'disentangled', got {f['relative_attention']!r}")
    if f["relative_attention"] and f["relative_attention_buckets"]:
        raise ValueError("a model has one relative position scheme: relative_attention_buckets or disentangled")
    if f["relative_attention"]:
        return DisentangledPositions(table=table, offset=offset, buckets=f["position_buckets"],
                                     max_distance=f["max_relative_positions"], terms=tuple(f["pos_att_type"]),
                                     share_key=f["share_att_key"], normalize=f["norm_rel_ebd"])
    if table == "rotary":
        return RotaryPositions(offset=offset, theta=f["rope_theta"], local_theta=f["rope_local_theta"])
    if f["relative_attention_buckets"]:
        return RelativeBuckets(table=table, offset=offset, buckets=f["relative_attention_buckets"])
    return AbsolutePositions(table=table, offset=offset)


def _flat_windows(f: dict[str, Any]) -> tuple[int, ...]:
    """One window per layer from ModernBERT's flat ``local_attention`` and ``global_attention_every``: layer i is
    global when ``i % global_attention_every == 0`` and local otherwise; () when no layer is local."""
    local, every = f["local_attention"], f["global_attention_every"]
    windows = tuple(local if i % (every or 1) else 0 for i in range(f["num_layers"]))
    return windows if local and any(windows) else ()


def _grouped(flat: dict[str, Any]) -> dict[str, Any]:
    """The grouped fields of a complete flat dict."""
    flat = {name: value for name, value in flat.items() if name not in GROUPS and name != "positions"}
    missing = [name for name in FLAT_REQUIRED if name not in flat]
    unknown = sorted(set(flat) - set(FLAT_DEFAULTS) - set(FLAT_REQUIRED))
    if missing or unknown:
        raise ValueError(f"unknown EncoderConfig fields: {', '.join(unknown)}" if unknown
                         else f"EncoderConfig needs {', '.join(missing)}")
    f = {**FLAT_DEFAULTS, **flat}
    for name in ("local_attention", "global_attention_every"):
        _check_count(name, f[name])
    return dict(
        num_layers=f["num_layers"], d_model=f["d_model"], max_positions=f["max_positions"],
        num_layer_groups=f["num_layer_groups"], dropout=f["dropout"],
        embeddings=Embeddings(vocab_size=f["vocab_size"], type_vocab_size=f["type_vocab_size"],
                              width=f["embedding_size"], scale=f["scale_embeddings"],
                              layer_norm=f["embedding_layer_norm"], pad_token_id=f["pad_token_id"]),
        attention=Attention(num_heads=f["num_heads"], causal=f["causal"], windows=_flat_windows(f)),
        positions=_flat_positions(f),
        block=Block(dff=f["dff"], activation=f["activation"], placement="pre" if f["norm_first"] else "post",
                    mlp="gated" if f["gated_feed_forward"] else "dense", use_bias=f["use_bias"],
                    norm_epsilon=f["layer_norm_epsilon"], first_attention_norm=f["first_attention_norm"],
                    final_norm=f["final_norm"]),
        head=Head(pooling=f["pooling"], num_classes=f["num_classes"],
                  classifier_activation=f["classifier_activation"], normalize_embedding=f["normalize_embedding"]),
    )


@dataclass(frozen=True, init=False)
class EncoderConfig:
    """Hyperparameters of a Transformer, grouped by part.

    Args:
        num_layers: int, stacked layers (L).
        d_model: int, hidden width (D).
        max_positions: int, longest input the model accepts (P).
        embeddings, attention, positions, block, head: the groups (``Embeddings``, ``Attention``, a position
            scheme, ``Block``, ``Head``).
        num_layer_groups: int, ALBERT's shared layers: the L layers use G weight groups, layer i group
            ``i * G // L``; 0 means every layer has its own weights.
        dropout: float, dropout rate everywhere (only active in training).
        **flat: the flat names (``FLAT_DEFAULTS``, ``FLAT_REQUIRED``) instead of, or applied on top of, the groups.

    Example:
        >>> EncoderConfig(vocab_size=100, num_layers=2, num_heads=4, d_model=32, dff=64).head_dim
        8
        >>> EncoderConfig(num_layers=2, d_model=32, embeddings=Embeddings(100), attention=Attention(4),
        ...               block=Block(64)).positions
        AbsolutePositions(table='sinusoidal', offset=0)
    """

    num_layers: int
    d_model: int
    max_positions: int
    embeddings: Embeddings
    attention: Attention
    positions: AbsolutePositions
    block: Block
    head: Head
    num_layer_groups: int
    dropout: float

    def __init__(self, **values: Any):
        flat = {name: values.pop(name) for name in list(values) if name not in FIELDS}
        if flat:  # flat names, alone or over the groups (``dataclasses.replace(config, pooling="cls")``)
            base = EncoderConfig(**values).flat() if "embeddings" in values else {}
            values = _grouped({**base, **values, **flat})
        values = {"max_positions": 512, "positions": AbsolutePositions(), "head": Head(), "num_layer_groups": 0,
                  "dropout": 0.1, **values}
        missing = [name for name in FIELDS if name not in values]
        if missing:
            raise TypeError(f"EncoderConfig needs {', '.join(missing)}")
        for name, value in values.items():
            object.__setattr__(self, name, value)
        self._check()

    def _check(self) -> None:
        _check_counts(self, "num_layers", "d_model", "max_positions", least=1)
        _check_counts(self, "num_layer_groups")
        for name, group in (*GROUPS.items(), ("positions", AbsolutePositions)):
            if not isinstance(getattr(self, name), group):
                raise ValueError(f"{name} must be a {group.__name__}, got {getattr(self, name)!r}")
        if not self.attention.head_dim and self.d_model % self.attention.num_heads:
            raise ValueError(
                f"d_model ({self.d_model}) must be divisible by num_heads ({self.attention.num_heads})")
        if self.attention.windows and len(self.attention.windows) != self.num_layers:
            raise ValueError(f"windows needs one entry per layer ({self.num_layers}), "
                             f"got {len(self.attention.windows)}")
        if self.num_layer_groups > self.num_layers:
            raise ValueError(f"num_layer_groups ({self.num_layer_groups}) exceeds num_layers ({self.num_layers})")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout!r}")
        self.positions.check(self)

    def __getattr__(self, name: str) -> Any:
        """The flat names (``FLAT_VIEW``), read from the groups: ``config.pooling`` is ``config.head.pooling``."""
        if name in FLAT_VIEW:
            return FLAT_VIEW[name](self)
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    @property
    def head_dim(self) -> int:
        return self.attention.head_dim or self.d_model // self.attention.num_heads

    @property
    def scaling(self) -> float:
        """The factor on q.k: ``attention.scaling``, or ``1 / sqrt(head_dim)``."""
        return self.attention.scaling or 1.0 / math.sqrt(float(self.head_dim))

    def is_local(self, layer: int) -> bool:
        """Whether layer ``layer`` attends only within a sliding window."""
        return bool(self.attention.window(layer))

    @property
    def embedding_width(self) -> int:
        """Width of the embeddings before any projection (``embeddings.width`` or ``d_model``)."""
        return self.embeddings.width or self.d_model

    @property
    def relative_span(self) -> int:
        """Disentangled attention's relative embeddings per side (``DisentangledPositions.span``), else 0."""
        return self.positions.span if isinstance(self.positions, DisentangledPositions) else 0

    @property
    def table_rows(self) -> int:
        """Rows of the positional table: the usable positions plus the offset rows before them."""
        return self.max_positions + self.positions.offset

    def flat(self) -> dict[str, Any]:
        """The flat names and their values (every config of the flat form reads back the same)."""
        return {"num_layers": self.num_layers, "d_model": self.d_model, "max_positions": self.max_positions,
                "num_layer_groups": self.num_layer_groups, "dropout": self.dropout,
                **{name: view(self) for name, view in FLAT_VIEW.items()}}

    def to_dict(self) -> dict[str, Any]:
        """The grouped form (JSON-ready); ``positions`` names its scheme under ``kind``."""
        return {"num_layers": self.num_layers, "d_model": self.d_model, "max_positions": self.max_positions,
                "num_layer_groups": self.num_layer_groups, "dropout": self.dropout,
                **{name: dataclasses.asdict(getattr(self, name)) for name in GROUPS},
                "positions": self.positions.to_dict()}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EncoderConfig:
        """A config from ``to_dict``'s grouped form or the flat form of the first saved models."""
        if not any(name in data for name in (*GROUPS, "positions")):
            return cls(**data)
        values = dict(data)
        for name, group in GROUPS.items():
            values[name] = group(**values.get(name, {}))
        positions = dict(values.get("positions", {}))
        kind = positions.pop("kind", "absolute")
        if kind not in SCHEMES:
            raise ValueError(f"unknown position scheme {kind!r}; known: {', '.join(SCHEMES)}")
        values["positions"] = SCHEMES[kind](**positions)
        return cls(**values)
