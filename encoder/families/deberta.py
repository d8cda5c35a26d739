"""DeBERTa-v2 and -v3: BERT's post-layer-norm layers with disentangled attention (``encoder.parts.disentangled``): every
logit is content->content plus content->position (c2p) and position->content (p2c) terms over a learned table of
relative-distance embeddings (log buckets, ``position_buckets``), divided by ``sqrt(head_dim * (1 + #terms))``.
DeBERTa-v3 adds no absolute positions to the input (``position_biased_input`` false) and has no token types
(``type_vocab_size`` 0, though its tokenizer emits them); its relative embeddings are layer-normalised
(``norm_rel_ebd``) and projected by the content query and key (``share_att_key``). The tokenizer gives
``[CLS] A [SEP] B [SEP]``. ``DebertaV2ForSequenceClassification`` pools [CLS] through ``pooler.dense`` and
``pooler_hidden_act``, then ``classifier``."""

from __future__ import annotations

from typing import Any

from encoder.config import POSITION_TERMS, DisentangledPositions, EncoderConfig
from encoder.errors import CheckpointError
from encoder.families.bert import bert_like_fields, encoder_ports
from encoder.families.common import (
    Port,
    activation,
    build,
    classifier_fields,
    classifier_ports,
    described,
    field,
    head_projection_ports,
    keep,
    norm_ports,
)

MODEL_TYPES = ("deberta-v2",)
PREFIXES = ("deberta.",)
# One layer's tensors (after ``encoder.layer.{i}.``) by the part of our EncoderLayer they fill.
LAYER_NAMES = {"query": "attention.self.query_proj", "key": "attention.self.key_proj",
               "value": "attention.self.value_proj", "output": "attention.output.dense",
               "attention_norm": "attention.output.LayerNorm", "intermediate": "intermediate.dense",
               "output_dense": "output.dense", "output_norm": "output.LayerNorm"}
UNSUPPORTED = {  # config.json options Headlight does not run, with the value that means "off"
    "conv_kernel_size": 0,  # a convolution beside the first layer (deberta-v2-xlarge)
    "talking_head": False,
}


def convert_config(hf: dict[str, Any]) -> EncoderConfig:
    """Map a Hugging Face DeBERTa-v2/v3 ``config.json`` to an EncoderConfig (pure function).

    ``max_relative_positions`` below 1 means ``max_position_embeddings``, as in transformers; ``pos_att_type`` may
    be a list or transformers' older ``"p2c|c2p"`` text.
    """
    check_supported(hf)
    fields = bert_like_fields({**hf, "type_vocab_size": hf.get("type_vocab_size") or 0})
    max_relative = int(hf.get("max_relative_positions") or -1)
    terms = hf.get("pos_att_type") or []
    if isinstance(terms, str):
        terms = terms.split("|")
    terms = tuple(str(term).strip().lower() for term in terms)
    if any(term not in POSITION_TERMS for term in terms):
        raise CheckpointError(f"config.json's pos_att_type may hold only {', '.join(POSITION_TERMS)}.")
    fields.update(classifier_fields(hf, activation(hf.get("pooler_hidden_act", "gelu"), "pooler_hidden_act")))
    buckets = max(int(hf.get("position_buckets") or 0), 0)
    with described():
        positions = DisentangledPositions(
            table="learned" if hf.get("position_biased_input", True) else "none",
            buckets=buckets,
            max_distance=max_relative if max_relative >= 1 else fields["max_positions"],
            terms=tuple(dict.fromkeys(terms)),
            share_key=bool(hf.get("share_att_key", False)),
            normalize="layer_norm" in str(hf.get("norm_rel_ebd") or "none").lower().split("|"),
        )
        return build(**fields, positions=positions)


def check_supported(hf: dict[str, Any]) -> None:
    """Refuse what Headlight does not run: relative attention off, a convolution layer, talking heads, another
    head size, a factorised embedding, a pooler of another width."""
    if hf.get("model_type") == "deberta":
        raise CheckpointError("DeBERTa v1 (model_type 'deberta') is not supported; DeBERTa-v2 and -v3 are.")
    if not hf.get("relative_attention", False):
        raise CheckpointError("config.json's relative_attention is false; Headlight runs DeBERTa with relative "
                              "attention only.")
    for name, off in UNSUPPORTED.items():
        if hf.get(name, off) not in (off, None):
            raise CheckpointError(f"config.json sets {name}, which Headlight does not run for DeBERTa.")
    hidden, heads = field(hf, "hidden_size"), field(hf, "num_attention_heads")
    sizes = {"embedding_size": hidden, "pooler_hidden_size": hidden,
             "attention_head_size": hidden // heads if isinstance(hidden, int) and isinstance(heads, int) and heads
             else None}
    for name, expected in sizes.items():
        if hf.get(name) not in (None, expected):
            raise CheckpointError(f"config.json's {name} is not {expected}; Headlight does not run that DeBERTa.")


def weight_ports(config: EncoderConfig, model) -> list[Port]:
    """The flat list of (checkpoint name, Keras variable, transform): embeddings, layers (with their own position
    projections unless ``share_att_key``), the relative embeddings and their norm, and a classifier's pooler."""
    ports: list[Port] = [("embeddings.word_embeddings.weight", model.token_embedding.embeddings, keep)]
    if model.positions.table is not None:
        ports.append(("embeddings.position_embeddings.weight", model.positions.table.embeddings, keep))
    if model.segment_embedding is not None:
        ports.append(("embeddings.token_type_embeddings.weight", model.segment_embedding.embeddings, keep))
    ports += norm_ports("embeddings.LayerNorm", model.embedding_norm)
    ports += encoder_ports(config, model, names=LAYER_NAMES)
    for i, layer in enumerate(model.encoder_layers):
        attention = layer.attention
        for name, dense in (("pos_key_proj", attention.pos_key_dense), ("pos_query_proj", attention.pos_query_dense)):
            if dense is not None:
                ports += head_projection_ports(f"encoder.layer.{i}.attention.self.{name}", dense, config)
    ports.append(("encoder.rel_embeddings.weight", model.positions.relative_embeddings.embeddings, keep))
    if model.positions.relative_norm is not None:
        ports += norm_ports("encoder.LayerNorm", model.positions.relative_norm)
    return ports + classifier_ports(model, "pooler.dense", "classifier")
