"""MPNet: BERT's post-layer-norm layers with its own tensor names, RoBERTa's positions (numbered from
``pad_token_id + 1``), no token types, and a relative attention bias: one learned (buckets, H) table
(``encoder.relative_attention_bias``) read at T5's bidirectional bucket of each key's distance from the query and
added to every layer's scaled logits. The tokenizer gives ``<s> A </s></s> B </s>``."""

from __future__ import annotations

from typing import Any

from encoder.config import EncoderConfig, RelativeBuckets
from encoder.errors import CheckpointError
from encoder.families.bert import bert_like_fields, embedding_ports, encoder_ports
from encoder.families.common import Port, build, described, field, keep

MODEL_TYPES = ("mpnet",)
PREFIXES = ("mpnet.",)
BUCKETS = 32  # transformers computes the bias with 32 buckets whatever relative_attention_num_buckets says
# One layer's tensors (after ``encoder.layer.{i}.``) by the part of our EncoderLayer they fill.
LAYER_NAMES = {"query": "attention.attn.q", "key": "attention.attn.k", "value": "attention.attn.v",
               "output": "attention.attn.o", "attention_norm": "attention.LayerNorm",
               "intermediate": "intermediate.dense", "output_dense": "output.dense", "output_norm": "output.LayerNorm"}


def convert_config(hf: dict[str, Any]) -> EncoderConfig:
    """Map a Hugging Face MPNet ``config.json`` to an EncoderConfig (pure function).

    Token i gets position ``pad_token_id + 1 + i``, as in RoBERTa, so ``max_position_embeddings`` (514 in
    mpnet-base) holds ``offset`` unused rows plus the usable length.
    """
    buckets = int(field(hf, "relative_attention_num_buckets", default=BUCKETS))
    if buckets != BUCKETS:
        raise CheckpointError(f"config.json's relative_attention_num_buckets is {buckets}; MPNet computes its "
                              f"attention bias with {BUCKETS} buckets, so only {BUCKETS} is supported.")
    fields = bert_like_fields({**hf, "type_vocab_size": 0})
    offset = fields["pad_token_id"] + 1
    rows = int(field(hf, "max_position_embeddings", default=514))
    if rows <= offset:
        raise CheckpointError(
            f"max_position_embeddings ({rows}) leaves no position after the first {offset} (pad_token_id + 1).")
    fields.update(max_positions=rows - offset)
    with described():
        return build(**fields, positions=RelativeBuckets(table="learned", offset=offset, buckets=buckets))


def weight_ports(config: EncoderConfig, model) -> list[Port]:
    """The flat list of (checkpoint name, Keras variable, transform); the pooler, when stored, is not used."""
    return (embedding_ports(model) + encoder_ports(config, model, names=LAYER_NAMES)
            + [("encoder.relative_attention_bias.weight", model.positions.relative_attention_bias.embeddings, keep)])
