"""RoBERTa, XLM-RoBERTa and CamemBERT: BERT's layers; positions numbered from ``pad_token_id + 1`` (the first
rows of the table are never used), one token type. ``*ForSequenceClassification`` puts its head on ``<s>``:
``classifier.dense`` + tanh, then ``classifier.out_proj`` (no pooler)."""

from __future__ import annotations

from typing import Any

import numpy as np

from encoder.config import EncoderConfig
from encoder.errors import CheckpointError
from encoder.families.bert import bert_like_fields, check_absolute_positions, embedding_ports, encoder_ports
from encoder.families.common import Port, build, classifier_fields, classifier_ports, field

MODEL_TYPES = ("roberta", "xlm-roberta", "camembert")
PREFIXES = ("roberta.",)


def convert_config(hf: dict[str, Any]) -> EncoderConfig:
    """Map a Hugging Face RoBERTa-family ``config.json`` to an EncoderConfig (pure function).

    Token i gets position ``pad_token_id + 1 + i`` (transformers' numbering when no ``position_ids`` are given),
    so ``max_position_embeddings`` (514 in roberta-base) holds ``offset`` unused rows plus the usable length.
    The tokenizer feeds no token types: every token is type 0.
    """
    check_absolute_positions(hf)
    fields = bert_like_fields(hf)
    offset = fields["pad_token_id"] + 1
    rows = int(field(hf, "max_position_embeddings", default=514))
    if rows <= offset:
        raise CheckpointError(
            f"max_position_embeddings ({rows}) leaves no position after the first {offset} (pad_token_id + 1).")
    fields.update(max_positions=rows - offset, position_offset=offset, type_vocab_size=1,
                  **classifier_fields(hf, "tanh"))
    return build(**fields)


def first_type(table: np.ndarray) -> np.ndarray:
    """Row 0 of the token-type table: the only one RoBERTa uses."""
    return table[:1]


def weight_ports(config: EncoderConfig, model) -> list[Port]:
    """The flat list of (checkpoint name, Keras variable, transform); the pooler, when stored, is not used."""
    return (embedding_ports(model, types=first_type) + encoder_ports(config, model)
            + classifier_ports(model, "classifier.dense", "classifier.out_proj"))
