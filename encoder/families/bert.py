"""BERT (and sentence-transformers BERT models such as MiniLM): learned positions, token types, post-layer-norm
layers, exact GELU; ``BertForSequenceClassification`` adds the pooler (dense + tanh on [CLS]) and a classifier."""

from __future__ import annotations

from typing import Any

from encoder.config import EncoderConfig
from encoder.errors import CheckpointError
from encoder.families.common import (
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
)

MODEL_TYPES = ("bert",)
PREFIXES = ("bert.",)
ATTENTION_NAMES = {"query": "attention.self.query", "key": "attention.self.key", "value": "attention.self.value",
                   "output": "attention.output.dense"}


def convert_config(hf: dict[str, Any]) -> EncoderConfig:
    """Map a Hugging Face BERT ``config.json`` to an EncoderConfig (pure function)."""
    position_type = hf.get("position_embedding_type", "absolute")
    if position_type != "absolute":
        raise CheckpointError(
            f"position_embedding_type {position_type!r} is not supported; only 'absolute' positions are.")
    return build(**bert_like_fields(hf), **classifier_fields(hf, "tanh"))


def bert_like_fields(hf: dict[str, Any]) -> dict[str, Any]:
    """The fields BERT, RoBERTa, ELECTRA and ALBERT configs share (their names in ``config.json``)."""
    return dict(
        vocab_size=int(field(hf, "vocab_size")),
        num_layers=int(field(hf, "num_hidden_layers")),
        num_heads=int(field(hf, "num_attention_heads")),
        d_model=int(field(hf, "hidden_size")),
        dff=int(field(hf, "intermediate_size")),
        max_positions=int(field(hf, "max_position_embeddings", default=512)),
        positional="learned",
        activation=activation(hf.get("hidden_act", "gelu")),
        type_vocab_size=int(field(hf, "type_vocab_size", default=2)),
        scale_embeddings=False,
        embedding_layer_norm=True,
        layer_norm_epsilon=float(field(hf, "layer_norm_eps", default=1e-12)),
        dropout=0.0,
        pad_token_id=int(hf.get("pad_token_id") or 0),
    )


def embedding_ports(model, prefix: str = "embeddings.") -> list[Port]:
    """Word, position and (when the model has them) token-type tables, and the embedding norm."""
    ports: list[Port] = [
        (f"{prefix}word_embeddings.weight", model.token_embedding.embeddings, keep),
        (f"{prefix}position_embeddings.weight", model.position_embedding.embeddings, keep),
    ]
    if model.segment_embedding is not None:
        ports.append((f"{prefix}token_type_embeddings.weight", model.segment_embedding.embeddings, keep))
    return ports + norm_ports(f"{prefix}LayerNorm", model.embedding_norm)


def layer_ports(prefix: str, layer, config: EncoderConfig) -> list[Port]:
    """One BERT layer (``encoder.layer.{i}.``): attention, its norm, the feed-forward block and its norm."""
    return [
        *attention_ports(prefix, layer.attention, config, ATTENTION_NAMES),
        *norm_ports(f"{prefix}attention.output.LayerNorm", layer.attention_norm),
        *dense_ports(f"{prefix}intermediate.dense", layer.intermediate),
        *dense_ports(f"{prefix}output.dense", layer.output_dense),
        *norm_ports(f"{prefix}output.LayerNorm", layer.output_norm),
    ]


def weight_ports(config: EncoderConfig, model) -> list[Port]:
    """The flat list of (checkpoint name, Keras variable, transform), one row per tensor we load."""
    ports = embedding_ports(model)
    for i, layer in enumerate(model.encoder_layers):
        ports += layer_ports(f"encoder.layer.{i}.", layer, config)
    return ports + classifier_ports(model, "pooler.dense", "classifier")
