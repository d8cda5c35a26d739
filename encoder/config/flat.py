"""The flat names of the first saved models (``EncoderConfig(vocab_size=..., positional=..., norm_first=...)``):
their defaults, how each is read from the groups (``FLAT_VIEW``), and the groups a whole set of them makes
(``grouped``). ``EncoderConfig`` accepts them as keywords and reads them back as attributes."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from encoder.config.groups import (
    GROUPS,
    AbsolutePositions,
    Attention,
    Block,
    DisentangledPositions,
    Embeddings,
    Head,
    RelativeBuckets,
    RotaryPositions,
    check_count,
)

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


def _scheme_field(scheme_type: type, name: str, default: Any) -> Callable[[Any], Any]:
    return lambda c: getattr(c.positions, name) if isinstance(c.positions, scheme_type) else default


def _global_every(config: Any) -> int:
    """The flat ``global_attention_every``: the first global layer after layer 0 (0 without windows)."""
    windows = config.attention.windows
    if not any(windows):
        return 0
    return next((i for i in range(1, config.num_layers) if not windows[i]), config.num_layers)


# Each flat name read from the grouped config.
FLAT_VIEW: dict[str, Callable[[Any], Any]] = {
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


def grouped(flat: dict[str, Any]) -> dict[str, Any]:
    """The grouped fields of a complete flat dict."""
    flat = {name: value for name, value in flat.items() if name not in GROUPS and name != "positions"}
    missing = [name for name in FLAT_REQUIRED if name not in flat]
    unknown = sorted(set(flat) - set(FLAT_DEFAULTS) - set(FLAT_REQUIRED))
    if missing or unknown:
        raise ValueError(f"unknown EncoderConfig fields: {', '.join(unknown)}" if unknown
                         else f"EncoderConfig needs {', '.join(missing)}")
    f = {**FLAT_DEFAULTS, **flat}
    for name in ("local_attention", "global_attention_every"):
        check_count(name, f[name])
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

