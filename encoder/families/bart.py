"""BART (``BartModel``, ``BartForConditionalGeneration``): an encoder-decoder of post-norm layers.

Each stack: the token embedding (``shared.weight``; times sqrt(d_model) when ``scale_embedding``) plus learned
positions whose first two rows are never used (token i reads row ``i + 2``, pad tokens included:
``AbsolutePositions(offset=2, skip_pads=False)``), ``layernorm_embedding``, then layers of ``self_attn`` +
``self_attn_layer_norm`` and ``fc1``/``fc2`` (``activation_function``, GELU) + ``final_layer_norm``, each
``norm(x + f(x))``, biases everywhere, attention scaled by ``1 / sqrt(head_dim)``, layer norms of epsilon 1e-5. No
norm after the last layer. The decoder (``decoder_layers``, ``decoder_attention_heads``, ``decoder_ffn_dim``) is
causal and has ``encoder_attn`` + ``encoder_attn_layer_norm`` between the two. ``BartForConditionalGeneration``
(tensors under ``model.``) adds the LM head (``lm_head.weight``, or the shared embedding when the checkpoint has
none) and ``final_logits_bias``.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from encoder.config import AbsolutePositions, Attention, Block, Embeddings, EncoderConfig, Head
from encoder.errors import CheckpointError
from encoder.families.bert import encoder_ports
from encoder.families.common import (
    Port,
    activation,
    attention_ports,
    build,
    field,
    generates,
    is_encoder_decoder,
    keep,
    linear,
    norm_ports,
    pad_token,
)

MODEL_TYPES = ("bart",)
PREFIXES = ("model.encoder.", "encoder.", "model.")  # BartForConditionalGeneration keeps the model under "model."
ALIASES = {"shared.weight": "embed_tokens.weight", "lm_head.weight": "shared.weight"}
DECODER_START = 2  # transformers' default decoder_start_token_id: </s>
OFFSET = 2  # BartLearnedPositionalEmbedding's unused first rows
ATTENTION_NAMES = {"query": "q_proj", "key": "k_proj", "value": "v_proj", "output": "out_proj"}
LAYER_NAMES = {**{part: f"self_attn.{name}" for part, name in ATTENTION_NAMES.items()},
               "attention_norm": "self_attn_layer_norm", "intermediate": "fc1", "output_dense": "fc2",
               "output_norm": "final_layer_norm"}


def convert_config(hf: dict[str, Any]) -> EncoderConfig:
    """Map a Hugging Face BART ``config.json`` to the EncoderConfig of its encoder (pure function)."""
    if not is_encoder_decoder(hf):
        raise CheckpointError("config.json describes a BART model that is not an encoder-decoder; Headlight opens "
                              "BartModel and BartForConditionalGeneration.")
    vocab_size, d_model = int(field(hf, "vocab_size", default=50265)), int(field(hf, "d_model", default=1024))
    return build(
        num_layers=int(field(hf, "encoder_layers", default=12)),
        d_model=d_model,
        max_positions=int(field(hf, "max_position_embeddings", default=1024)),
        dropout=0.0,
        embeddings=Embeddings(vocab_size, scale=bool(hf.get("scale_embedding", False)), layer_norm=True,
                              pad_token_id=pad_token(hf, vocab_size)),
        attention=Attention(int(field(hf, "encoder_attention_heads", default=16))),
        positions=AbsolutePositions(table="learned", offset=OFFSET, skip_pads=False),
        block=Block(int(field(hf, "encoder_ffn_dim", default=4096)),
                    activation=activation(hf.get("activation_function", "gelu"), "activation_function"),
                    norm_epsilon=1e-5),
    )


def decoder_config(hf: dict[str, Any], config: EncoderConfig) -> EncoderConfig:
    """The decoder's EncoderConfig (``config``: the encoder's)."""
    return build(
        num_layers=int(field(hf, "decoder_layers", default=12)), d_model=config.d_model,
        max_positions=config.max_positions, dropout=0.0, embeddings=config.embeddings,
        attention=Attention(int(field(hf, "decoder_attention_heads", default=16)), causal=True, cross=True),
        positions=config.positions,
        block=dataclasses.replace(config.block, dff=int(field(hf, "decoder_ffn_dim", default=4096))),
        head=Head(lm_head=True, logit_bias=True) if generates(hf) else Head(),
    )


def weight_ports(config: EncoderConfig, model) -> list[Port]:
    """The encoder's flat list of (checkpoint name, Keras variable, transform), ``model.encoder.`` stripped."""
    return stack_ports(config, model, "")


def decoder_weight_ports(config: EncoderConfig, model) -> list[Port]:
    """The decoder's ports (``decoder.``), each layer's ``encoder_attn`` included, and the LM head with
    ``final_logits_bias`` (1, V) of ``BartForConditionalGeneration``."""
    ports = stack_ports(config, model, "decoder.")
    for i, layer in enumerate(model.encoder_layers):
        prefix = f"decoder.layers.{i}."
        ports += [*attention_ports(f"{prefix}encoder_attn.", layer.cross_attention, config, ATTENTION_NAMES),
                  *norm_ports(f"{prefix}encoder_attn_layer_norm", layer.cross_attention_norm)]
    if model.lm_head is not None:
        ports += [("lm_head.weight", model.lm_head.kernel, linear),
                  ("final_logits_bias", model.logit_bias, lambda bias: bias.reshape(-1))]
    return ports


def stack_ports(config: EncoderConfig, model, stack: str) -> list[Port]:
    """One stack's embeddings and layers (``stack``: "" for the encoder, "decoder." for the decoder)."""
    return [("shared.weight", model.token_embedding.embeddings, keep),
            (f"{stack}embed_positions.weight", model.positions.table.embeddings, keep),
            *norm_ports(f"{stack}layernorm_embedding", model.embedding_norm),
            *encoder_ports(config, model, f"{stack}layers.", LAYER_NAMES)]
