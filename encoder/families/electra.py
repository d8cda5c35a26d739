"""ELECTRA (the discriminator): BERT's layers on factorised embeddings (width ``embedding_size``, projected to
``hidden_size`` by ``embeddings_project`` after the embedding norm). ``ElectraForSequenceClassification`` puts its
head on [CLS]: ``classifier.dense`` + GELU (exact erf form, where BERT has tanh), then ``classifier.out_proj``."""

from __future__ import annotations

from typing import Any

from encoder.config import EncoderConfig
from encoder.families.bert import bert_like_fields, check_absolute_positions, embedding_ports, encoder_ports
from encoder.families.common import Port, build, classifier_fields, classifier_ports, dense_ports, field

MODEL_TYPES = ("electra",)
PREFIXES = ("electra.",)


def convert_config(hf: dict[str, Any]) -> EncoderConfig:
    """Map a Hugging Face ELECTRA ``config.json`` to an EncoderConfig (pure function)."""
    check_absolute_positions(hf)
    fields = bert_like_fields(hf)
    width = int(field(hf, "embedding_size", default=fields["d_model"]))
    fields.update(embedding_size=0 if width == fields["d_model"] else width, **classifier_fields(hf, "gelu"))
    return build(**fields)


def weight_ports(config: EncoderConfig, model) -> list[Port]:
    """The flat list of (checkpoint name, Keras variable, transform), one row per tensor we load."""
    ports = embedding_ports(model)
    if model.embedding_projection is not None:
        ports += dense_ports("embeddings_project", model.embedding_projection)
    return ports + encoder_ports(config, model) + classifier_ports(model, "classifier.dense", "classifier.out_proj")
