"""EncoderConfig: every hyperparameter of an encoder, for both families we run.

The classic encoder of the Keras/TensorFlow tutorial and BERT-family checkpoints differ in a handful of switches
(where positions come from, the activation, token types, an embedding layer norm); one frozen dataclass covers
both so every layer takes ``config`` rather than a dozen keyword arguments.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any, Literal

Positional = Literal["sinusoidal", "learned"]
Activation = Literal["relu", "gelu"]


@dataclass(frozen=True)
class EncoderConfig:
    """Hyperparameters of a Transformer encoder.

    Args:
        vocab_size: int, number of token ids.
        num_layers: int, stacked encoder layers (L).
        num_heads: int, attention heads per layer (H).
        d_model: int, hidden width (D); must be divisible by ``num_heads``.
        dff: int, width of the feed-forward inner layer.
        max_positions: int, longest input the model accepts (P, the positional table's rows).
        positional: "sinusoidal" (fixed table, the classic encoder) or "learned" (BERT).
        activation: "relu" (classic) or "gelu" (BERT, exact erf form).
        type_vocab_size: int, token-type (segment) embeddings; 0 for none.
        scale_embeddings: bool, multiply token embeddings by sqrt(d_model) (classic encoder).
        embedding_layer_norm: bool, layer-normalise the summed embeddings (BERT).
        layer_norm_epsilon: float, epsilon of every layer norm.
        dropout: float, dropout rate (only active in training).
        pad_token_id: int, the id used to pad batches.
        num_classes: int, size of a classification head on top (0 for none).
        pooling: "mean" or "cls", how the classification head / sentence embedding pools tokens.
        normalize_embedding: bool, L2-normalise the pooled sentence embedding (sentence-transformers models).

    Example:
        >>> EncoderConfig(vocab_size=100, num_layers=2, num_heads=4, d_model=32, dff=64).head_dim
        8
    """

    vocab_size: int
    num_layers: int
    num_heads: int
    d_model: int
    dff: int
    max_positions: int = 512
    positional: Positional = "sinusoidal"
    activation: Activation = "relu"
    type_vocab_size: int = 0
    scale_embeddings: bool = True
    embedding_layer_norm: bool = False
    layer_norm_epsilon: float = 1e-6
    dropout: float = 0.1
    pad_token_id: int = 0
    num_classes: int = 0
    pooling: Literal["mean", "cls"] = "mean"
    normalize_embedding: bool = False

    def __post_init__(self) -> None:
        for name in ("vocab_size", "num_layers", "num_heads", "d_model", "dff", "max_positions"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.d_model % self.num_heads:
            raise ValueError(
                f"d_model ({self.d_model}) must be divisible by num_heads ({self.num_heads})"
            )
        if self.positional not in ("sinusoidal", "learned"):
            raise ValueError(f"positional must be 'sinusoidal' or 'learned', got {self.positional!r}")
        if self.activation not in ("relu", "gelu"):
            raise ValueError(f"activation must be 'relu' or 'gelu', got {self.activation!r}")
        if self.pooling not in ("mean", "cls"):
            raise ValueError(f"pooling must be 'mean' or 'cls', got {self.pooling!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout!r}")
        if self.type_vocab_size < 0 or self.num_classes < 0:
            raise ValueError("type_vocab_size and num_classes must be >= 0")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.num_heads

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EncoderConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown EncoderConfig fields: {', '.join(unknown)}")
        return cls(**data)
