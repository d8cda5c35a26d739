"""BERT (and sentence-transformers BERT models such as MiniLM): learned positions, token types, post-layer-norm
layers, exact GELU; ``BertForSequenceClassification`` adds the pooler (dense + tanh on [CLS]) and a classifier."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from encoder.config import EncoderConfig
from encoder.errors import CheckpointError
from encoder.families.common import (
    PORTED,
    Port,
    activation,
    attention_ports,
    build,
    classifier_fields,
    classifier_ports,
    dense_ports,
    field,
    keep,
    norm_ports,
    pad_token,
)

MODEL_TYPES = ("bert",)
PREFIXES = ("bert.",)
ATTENTION_NAMES = {"query": "attention.self.query", "key": "attention.self.key", "value": "attention.self.value",
                   "output": "attention.output.dense"}
# One layer's tensors (after ``encoder.layer.{i}.``) by the part of our EncoderLayer they fill.
LAYER_NAMES = {**ATTENTION_NAMES, "attention_norm": "attention.output.LayerNorm", "intermediate": "intermediate.dense",
               "output_dense": "output.dense", "output_norm": "output.LayerNorm"}


def convert_config(hf: dict[str, Any]) -> EncoderConfig:
    """Map a Hugging Face BERT ``config.json`` to an EncoderConfig (pure function)."""
    check_absolute_positions(hf)
    return build(**bert_like_fields(hf), **classifier_fields(hf, "tanh"))


def check_absolute_positions(hf: dict[str, Any]) -> None:
    """Refuse ``position_embedding_type`` other than "absolute" (BERT, RoBERTa and ELECTRA configs carry it)."""
    position_type = hf.get("position_embedding_type", "absolute")
    if position_type != "absolute":
        raise CheckpointError(
            "config.json's position_embedding_type is not supported; only 'absolute' positions are.")


def bert_like_fields(hf: dict[str, Any]) -> dict[str, Any]:
    """The fields BERT, RoBERTa, ELECTRA and ALBERT configs share (their names in ``config.json``)."""
    vocab_size = int(field(hf, "vocab_size"))
    return dict(
        vocab_size=vocab_size,
        num_layers=int(field(hf, "num_hidden_layers")),
        num_heads=int(field(hf, "num_attention_heads")),
        d_model=int(field(hf, "hidden_size")),
        dff=int(field(hf, "intermediate_size")),
        max_positions=int(field(hf, "max_position_embeddings", default=512)),
        positional="learned",
        activation=activation(hf.get("hidden_act", "gelu")),
        type_vocab_size=int(field(hf, "type_vocab_size", default=2)),
        **PORTED,
        embedding_layer_norm=True,
        layer_norm_epsilon=float(field(hf, "layer_norm_eps", default=1e-12)),
        pad_token_id=pad_token(hf, vocab_size),
    )


def embedding_ports(model, prefix: str = "embeddings.",
                    types: Callable[[np.ndarray], np.ndarray] = keep) -> list[Port]:
    """Word, position and (when the model has them) token-type tables, and the embedding norm; ``types``
    transforms the stored token-type table (RoBERTa keeps only its first row)."""
    ports: list[Port] = [
        (f"{prefix}word_embeddings.weight", model.token_embedding.embeddings, keep),
        (f"{prefix}position_embeddings.weight", model.positions.table.embeddings, keep),
    ]
    if model.segment_embedding is not None:
        ports.append((f"{prefix}token_type_embeddings.weight", model.segment_embedding.embeddings, types))
    return ports + norm_ports(f"{prefix}LayerNorm", model.embedding_norm)


def layer_ports(prefix: str, layer, config: EncoderConfig, names: dict[str, str] = LAYER_NAMES) -> list[Port]:
    """One post-norm layer (BERT's ``encoder.layer.{i}.``): attention, its norm, the feed-forward block and its
    norm, named by ``names`` (``LAYER_NAMES``' keys; DistilBERT has its own)."""
    return [
        *attention_ports(prefix, layer.attention, config, names),
        *norm_ports(f"{prefix}{names['attention_norm']}", layer.attention_norm),
        *dense_ports(f"{prefix}{names['intermediate']}", layer.intermediate),
        *dense_ports(f"{prefix}{names['output_dense']}", layer.output_dense),
        *norm_ports(f"{prefix}{names['output_norm']}", layer.output_norm),
    ]


def encoder_ports(config: EncoderConfig, model, prefix: str = "encoder.layer.",
                  names: dict[str, str] = LAYER_NAMES) -> list[Port]:
    """Every layer, layer i under ``{prefix}{i}.``."""
    return [port for i, layer in enumerate(model.encoder_layers)
            for port in layer_ports(f"{prefix}{i}.", layer, config, names)]


def weight_ports(config: EncoderConfig, model) -> list[Port]:
    """The flat list of (checkpoint name, Keras variable, transform), one row per tensor we load."""
    return embedding_ports(model) + encoder_ports(config, model) + classifier_ports(model, "pooler.dense", "classifier")
