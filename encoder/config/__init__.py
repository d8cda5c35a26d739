"""EncoderConfig: a Transformer's hyperparameters, grouped by the part of the model they shape.

One frozen dataclass per concern: ``Embeddings`` (token, type and projection), ``Attention`` (heads, key/value
heads, head size, scaling, causal mask, a sliding window per layer), one position *scheme* (``AbsolutePositions``
and its subclasses: ``RelativeBuckets``, ``RotaryPositions``, ``DisentangledPositions``; each carries its own
options),
``Block`` (norm kind and placement, MLP kind and activation, biases) and ``Head`` (pooling, classifier). The model
(``encoder.model``) builds one part per group; a family (``encoder.families``) maps a Hugging Face ``config.json``
onto the groups.

The flat form (``EncoderConfig(vocab_size=..., num_layers=..., positional=...)``, the names in ``FLAT_DEFAULTS``;
the tutorial model's ``config.json`` holds it) is accepted too and read back as attributes (``config.pooling``,
``config.norm_first``): it builds the same grouped config, and ``from_dict`` reads both forms.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from typing import Any

from encoder.config.flat import FLAT_DEFAULTS, FLAT_REQUIRED, FLAT_VIEW, grouped
from encoder.config.groups import (
    ACTIVATIONS,
    CLASSIFIER_ACTIVATIONS,
    GROUPS,
    POSITION_TERMS,
    SCHEMES,
    AbsolutePositions,
    Attention,
    Block,
    DisentangledPositions,
    Embeddings,
    Head,
    RelativeBuckets,
    RotaryPositions,
    check_count,
    compact,
)

__all__ = ["ACTIVATIONS", "CLASSIFIER_ACTIVATIONS", "FIELDS", "FLAT_DEFAULTS", "FLAT_REQUIRED", "GROUPS",
           "POSITION_TERMS", "SCHEMES", "AbsolutePositions", "Attention", "Block", "DisentangledPositions",
           "Embeddings", "EncoderConfig", "Head", "RelativeBuckets", "RotaryPositions"]
FIELDS = ("num_layers", "d_model", "max_positions", "embeddings", "attention", "positions", "block", "head",
          "num_layer_groups", "dropout")


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
        **flat: the flat names (``FLAT_DEFAULTS``, ``FLAT_REQUIRED``) instead of the groups, or as changes to all
            of them (``dataclasses.replace(config, pooling="cls")``).

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
        if flat:  # flat names, alone or as changes to every group (``dataclasses.replace(config, pooling="cls")``)
            given = [name for name in (*GROUPS, "positions") if name in values]
            if 0 < len(given) < len(GROUPS) + 1:
                raise TypeError(f"EncoderConfig takes flat names alone or with every group, not with only "
                                f"{', '.join(given)}; replace groups with dataclasses.replace")
            if given:  # changes to a whole config: only the fields the flat names change, the others kept
                original = EncoderConfig(**values)
                plain = {name: value for name, value in values.items() if name not in given}
                values = _changed(original, grouped(original.flat()), grouped({**original.flat(), **plain, **flat}))
            else:
                values = grouped({**values, **flat})
        values = {"max_positions": 512, "positions": AbsolutePositions(), "head": Head(), "num_layer_groups": 0,
                  "dropout": 0.1, **values}
        missing = [name for name in FIELDS if name not in values]
        if missing:
            raise TypeError(f"EncoderConfig needs {', '.join(missing)}")
        for name, value in values.items():
            object.__setattr__(self, name, value)
        self._check()

    def _check(self) -> None:
        for name in ("num_layers", "d_model", "max_positions"):
            check_count(name, getattr(self, name), least=1)
        check_count("num_layer_groups", self.num_layer_groups)
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
        if self.head.lm_head and self.head.tie_embeddings and self.embedding_width != self.d_model:
            raise ValueError("an LM head tied to the token embedding needs embeddings as wide as d_model")

    def __getattr__(self, name: str) -> Any:
        """The flat names (``FLAT_VIEW``), read from the groups: ``config.pooling`` is ``config.head.pooling``."""
        if name in FLAT_VIEW:
            return FLAT_VIEW[name](self)
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    @property
    def head_dim(self) -> int:
        return self.attention.head_dim or self.d_model // self.attention.num_heads

    @property
    def attention_biases(self) -> tuple[bool, bool]:
        """``(query/key/value, output)``: whether the attention's projections have biases (``Attention``'s own
        flags, else ``block.use_bias``)."""
        attention, default = self.attention, self.block.use_bias
        return (default if attention.query_key_value_bias is None else attention.query_key_value_bias,
                default if attention.output_bias is None else attention.output_bias)

    @property
    def key_value_heads(self) -> int:
        """Heads of the key and value projections (``num_heads`` without grouped-query attention)."""
        return self.attention.key_value_heads or self.attention.num_heads

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
                **{name: compact(getattr(self, name)) for name in GROUPS},
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


def _changed(original: EncoderConfig, before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """``original``'s fields and groups with the changes between two grouped forms of its flat names (``before``:
    unchanged, ``after``: with the changes), so group fields that the flat names do not cover are kept."""
    values: dict[str, Any] = {name: after[name] for name in FIELDS if name not in GROUPS and name != "positions"}
    for name in (*GROUPS, "positions"):
        old, new, group = before[name], after[name], getattr(original, name)
        if type(old) is not type(new):  # another position scheme: the flat names say all of it
            values[name] = new
            continue
        changes = {f.name: getattr(new, f.name) for f in dataclasses.fields(new)
                   if getattr(new, f.name) != getattr(old, f.name)}
        values[name] = dataclasses.replace(group, **changes) if changes else group
    return values
