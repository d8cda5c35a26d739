"""DistilBERT: BERT's layers and embeddings without token types, under its own names (``dim``, ``n_layers``,
``q_lin``, ``sa_layer_norm``, ...); every layer norm has epsilon 1e-12. ``DistilBertForSequenceClassification``
puts its head on [CLS]: ``pre_classifier`` + ReLU, then ``classifier``.

With ``sinusoidal_pos_embds`` the position table is a fixed sinusoid, but the checkpoint stores it as
``position_embeddings.weight`` all the same, so it is loaded like a learned table.
"""

from __future__ import annotations

from typing import Any

from encoder.config import EncoderConfig
from encoder.families.bert import bert_like_fields, embedding_ports, encoder_ports
from encoder.families.common import Port, activation, build, classifier_fields, classifier_ports

MODEL_TYPES = ("distilbert",)
PREFIXES = ("distilbert.",)
# DistilBERT's config.json names -> BERT's.
CONFIG_NAMES = {"dim": "hidden_size", "n_layers": "num_hidden_layers", "n_heads": "num_attention_heads",
                "hidden_dim": "intermediate_size", "activation": "hidden_act"}
# One layer's tensors (after ``transformer.layer.{i}.``), keyed as ``bert.LAYER_NAMES``.
LAYER_NAMES = {"query": "attention.q_lin", "key": "attention.k_lin", "value": "attention.v_lin",
               "output": "attention.out_lin", "attention_norm": "sa_layer_norm", "intermediate": "ffn.lin1",
               "output_dense": "ffn.lin2", "output_norm": "output_layer_norm"}


def convert_config(hf: dict[str, Any]) -> EncoderConfig:
    """Map a Hugging Face DistilBERT ``config.json`` to an EncoderConfig (pure function)."""
    activation(hf.get("activation", "gelu"), key="activation")
    renamed = {**hf, **{bert: hf[own] for own, bert in CONFIG_NAMES.items() if own in hf}}
    fields = bert_like_fields({**renamed, "type_vocab_size": 0, "layer_norm_eps": 1e-12})
    return build(**fields, **classifier_fields(hf, "relu"))


def weight_ports(config: EncoderConfig, model) -> list[Port]:
    """The flat list of (checkpoint name, Keras variable, transform), one row per tensor we load."""
    return (embedding_ports(model) + encoder_ports(config, model, "transformer.layer.", LAYER_NAMES)
            + classifier_ports(model, "pre_classifier", "classifier"))
