"""ALBERT: BERT's post-norm layers on factorised embeddings (width ``embedding_size``, projected to ``hidden_size``
by ``encoder.embedding_hidden_mapping_in``; ``hidden[0]`` is after it), with weights shared across layers: the
``num_hidden_layers`` layers reuse ``num_hidden_groups`` groups (layer i runs group ``i * groups // layers``), so
the checkpoint stores each group's layer once. ``gelu_new`` (tanh GELU) by default.
``AlbertForSequenceClassification`` adds the pooler (dense + tanh on [CLS]) and a classifier.

Every published ALBERT has one layer per group (``inner_group_num`` 1), the only kind we run.
"""

from __future__ import annotations

from typing import Any

from encoder.config import EncoderConfig
from encoder.errors import CheckpointError
from encoder.families.bert import bert_like_fields, check_absolute_positions, embedding_ports, layer_ports
from encoder.families.common import Port, activation, build, classifier_fields, classifier_ports, dense_ports, field

MODEL_TYPES = ("albert",)
PREFIXES = ("albert.",)
# One shared layer's tensors (after ``encoder.albert_layer_groups.{g}.albert_layers.0.``) by the part they fill.
LAYER_NAMES = {"query": "attention.query", "key": "attention.key", "value": "attention.value",
               "output": "attention.dense", "attention_norm": "attention.LayerNorm", "intermediate": "ffn",
               "output_dense": "ffn_output", "output_norm": "full_layer_layer_norm"}


def convert_config(hf: dict[str, Any]) -> EncoderConfig:
    """Map a Hugging Face ALBERT ``config.json`` to an EncoderConfig (pure function)."""
    check_absolute_positions(hf)
    inner = int(field(hf, "inner_group_num", default=1))
    if inner != 1:
        raise CheckpointError(
            f"inner_group_num {inner} is not supported; Headlight runs ALBERT with one layer per group (1).")
    fields = bert_like_fields(hf)
    layers, groups = fields["num_layers"], int(field(hf, "num_hidden_groups", default=1))
    if not 1 <= groups <= layers:
        raise CheckpointError(f"num_hidden_groups ({groups}) must be between 1 and num_hidden_layers ({layers}).")
    check_group_order(layers, groups)
    width = int(field(hf, "embedding_size", default=128))
    if width == fields["d_model"]:
        raise CheckpointError(
            f"embedding_size equals hidden_size ({width}); Headlight runs ALBERT only with factorised embeddings "
            "(embedding_size != hidden_size), as every published ALBERT has.")
    fields.update(
        activation=activation(hf.get("hidden_act", "gelu_new")),  # ALBERT's default, not BERT's
        embedding_size=width,
        num_layer_groups=groups,
        **classifier_fields(hf, "tanh"),
    )
    return build(**fields)


def check_group_order(layers: int, groups: int) -> None:
    """transformers picks layer i's group as ``int(i / (layers / groups))`` (float division), our model as
    ``i * groups // layers``; they agree except for rare pairs (18 layers in 14 groups: layer 9), refused here."""
    for i in range(layers):
        theirs, ours = int(i / (layers / groups)), i * groups // layers
        if theirs != ours:
            raise CheckpointError(
                f"num_hidden_layers {layers} in num_hidden_groups {groups}: transformers runs group {theirs} at "
                f"layer {i} (float rounding), where Headlight would run group {ours}; not supported.")


def weight_ports(config: EncoderConfig, model) -> list[Port]:
    """The flat list of (checkpoint name, Keras variable, transform): each group's shared layer once."""
    ports = embedding_ports(model) + dense_ports("encoder.embedding_hidden_mapping_in", model.embedding_projection)
    for g, layer in enumerate(model.layer_groups):
        ports += layer_ports(f"encoder.albert_layer_groups.{g}.albert_layers.0.", layer, config, LAYER_NAMES)
    return ports + classifier_ports(model, "pooler", "classifier")
