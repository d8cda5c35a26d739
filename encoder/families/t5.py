"""T5 (``model_type`` "t5", "umt5"): its encoder alone (``T5EncoderModel``: the text encoder of SD3 and Flux) or the
whole encoder-decoder (``T5Model``, ``T5ForConditionalGeneration``, FLAN-T5: ``is_encoder_decoder`` and an
architecture that is not an ``*EncoderModel``).

No absolute positions and no embedding norm: the token embedding (``shared.weight``, or
``encoder.embed_tokens.weight``) is the first layer's input, unscaled. Pre-norm blocks with RMSNorm (no mean, no
bias: ``layer.0.layer_norm`` before attention, ``layer.1.layer_norm`` before the MLP), attention logits ``q.k`` with
no 1/sqrt(d) scaling plus a learned (buckets, H) bias at T5's bidirectional bucket of each key's distance from the
query (``relative_attention_num_buckets``, ``relative_attention_max_distance``): the first layer's
``relative_attention_bias``, computed once and shared by every layer (``RelativeBuckets`` with no table). The MLP is
``feed_forward_proj``: "relu" (v1.0: ``wo(relu(wi(x)))``) or "gated-gelu" (v1.1, FLAN-T5: ``wo(gelu_new(wi_0(x))
* wi_1(x))``; "gated-<act>" likewise), no biases anywhere. ``encoder.final_layer_norm`` is on the last hidden
state, which ``hidden[-1]`` reports as transformers' ``hidden_states[-1]`` does. ``head_dim`` is ``d_kv`` (which
need not be ``d_model / num_heads``).

The decoder (``decoder_config``, ``decoder_weight_ports``) is the same stack with ``num_decoder_layers`` layers,
causal self-attention whose bias table (``decoder.block.0``'s) is read at T5's causal buckets, and
``layer.1.EncDecAttention`` (no position bias, no scaling) between self-attention and ``layer.2``'s MLP;
``decoder.final_layer_norm`` last. ``T5ForConditionalGeneration`` adds the LM head (``lm_head.weight``, or the shared
embedding when the checkpoint has none), the decoder's output scaled by ``d_model ** -0.5`` first when
``scale_decoder_outputs`` says so (configs without it: when ``tie_word_embeddings``, transformers' rule).

umT5 (``model_type`` "umt5") is the same model with a bias table in every layer
(``block.{i}.layer.0.SelfAttention.relative_attention_bias``), each layer reading its own.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from encoder.config import Attention, Block, Embeddings, EncoderConfig, Head, RelativeBuckets
from encoder.errors import CheckpointError
from encoder.families.common import (
    Port,
    activation,
    build,
    described,
    field,
    generates,
    is_encoder_decoder,
    keep,
    linear,
    reshaped,
)
from encoder.families.decoder import gated_mlp_ports

MODEL_TYPES = ("t5", "umt5")
PREFIXES = ("encoder.",)
# A checkpoint may store the token embedding as ``encoder.embed_tokens.weight`` (prefix stripped) alone, and a tied
# LM head not at all.
ALIASES = {"shared.weight": "embed_tokens.weight", "lm_head.weight": "shared.weight"}
DECODER_START = 0  # transformers' default decoder_start_token_id: the pad id
MAX_POSITIONS = 512  # T5 has no position table; the longest input Headlight runs through it (n_positions)
FEED_FORWARDS = {"gated-gelu": "gelu_new"}  # transformers' special case: "gated-gelu" runs gelu_new


def feed_forward(hf: dict[str, Any]) -> tuple[str, str]:
    """``(mlp, activation)`` from ``feed_forward_proj``: "relu", "gelu", "gated-gelu", "gated-silu", ..."""
    proj = str(hf.get("feed_forward_proj", "relu"))
    gated = proj.startswith("gated-")
    name = FEED_FORWARDS.get(proj, proj.removeprefix("gated-"))
    if proj.count("-") > 1 or (proj.count("-") == 1 and not gated):
        raise CheckpointError("config.json's feed_forward_proj is not of the form '<activation>' or "
                              "'gated-<activation>'.")
    return ("gated" if gated else "dense"), activation(name, "feed_forward_proj")


def convert_config(hf: dict[str, Any]) -> EncoderConfig:
    """Map a Hugging Face T5 ``config.json`` to the EncoderConfig of its encoder (pure function)."""
    mlp, act = feed_forward(hf)
    d_model, vocab_size = int(field(hf, "d_model", default=512)), int(field(hf, "vocab_size", default=32128))
    heads = int(field(hf, "num_heads", default=8))
    pad = int(hf.get("pad_token_id") or 0)
    if not 0 <= pad < vocab_size:
        raise CheckpointError(f"pad_token_id is not a token id: the vocabulary has {vocab_size} tokens.")
    with described():
        return build(
            num_layers=int(field(hf, "num_layers", default=6)),
            d_model=d_model,
            max_positions=int(field(hf, "n_positions", default=MAX_POSITIONS)),
            dropout=0.0,
            embeddings=Embeddings(vocab_size, scale=False, pad_token_id=pad),
            attention=Attention(heads, head_dim=int(field(hf, "d_kv", default=64)), scaling=1.0),
            positions=RelativeBuckets(table="none", buckets=int(field(hf, "relative_attention_num_buckets",
                                                                      default=32)),
                                      max_distance=int(field(hf, "relative_attention_max_distance", default=128)),
                                      per_layer=hf.get("model_type") == "umt5"),
            block=Block(int(field(hf, "d_ff", default=2048)), activation=act, norm="rmsnorm", placement="pre",
                        mlp=mlp, use_bias=False, norm_epsilon=float(field(hf, "layer_norm_epsilon", default=1e-6)),
                        final_norm=True),
        )


def decoder_config(hf: dict[str, Any], config: EncoderConfig) -> EncoderConfig | None:
    """The decoder's EncoderConfig of an encoder-decoder's ``config.json`` (``config``: its encoder's), else None."""
    if not is_encoder_decoder(hf):
        return None
    scaled = hf.get("scale_decoder_outputs", hf.get("tie_word_embeddings", True))
    with described():
        return dataclasses.replace(
            config, num_layers=int(field(hf, "num_decoder_layers", default=config.num_layers)),
            attention=dataclasses.replace(config.attention, causal=True, cross=True),
            positions=dataclasses.replace(config.positions, bidirectional=False),
            head=Head(lm_head=True, output_scale=config.d_model ** -0.5 if scaled else 1.0) if generates(hf)
            else config.head)


def attention_ports(prefix: str, attention, config: EncoderConfig) -> list[Port]:
    """``SelfAttention.q`` / ``k`` / ``v`` (H dh, D) and ``o`` (D, H dh), no biases."""
    d, h, dh = config.d_model, config.num_heads, config.head_dim
    ports: list[Port] = [(f"{prefix}{name}.weight", dense.kernel, lambda w: reshaped(w.T, (d, h, dh)))
                         for name, dense in (("q", attention.query_dense), ("k", attention.key_dense),
                                             ("v", attention.value_dense))]
    return [*ports, (f"{prefix}o.weight", attention.output_dense.kernel, lambda w: reshaped(w.T, (h, dh, d)))]


def mlp_ports(prefix: str, layer, config: EncoderConfig) -> list[Port]:
    """``DenseReluDense``: ``wi`` and ``wo`` (dense), or ``wi_0`` (the activated gate) and ``wi_1`` fused, ``wo``."""
    if config.block.mlp == "dense":
        return [(f"{prefix}wi.weight", layer.intermediate.kernel, linear),
                (f"{prefix}wo.weight", layer.output_dense.kernel, linear)]
    return [((f"{prefix}wi_0.weight", f"{prefix}wi_1.weight"), layer.intermediate.kernel,
             gated_mlp_ports(prefix, layer)[0][2]),
            (f"{prefix}wo.weight", layer.output_dense.kernel, linear)]


def weight_ports(config: EncoderConfig, model) -> list[Port]:
    """The encoder's flat list of (checkpoint name, Keras variable, transform), ``encoder.`` stripped."""
    return stack_ports(config, model, "")


def decoder_weight_ports(config: EncoderConfig, model) -> list[Port]:
    """The decoder's ports: ``decoder.block.{i}`` with ``EncDecAttention`` as each layer's ``layer.1``, and the LM
    head of ``T5ForConditionalGeneration``."""
    ports = stack_ports(config, model, "decoder.")
    return [*ports, ("lm_head.weight", model.lm_head.kernel, linear)] if model.lm_head is not None else ports


def stack_ports(config: EncoderConfig, model, stack: str) -> list[Port]:
    """One stack's ports (``stack``: "" for the encoder, "decoder." for the decoder, whose layers have
    cross-attention as ``layer.1`` and the MLP as ``layer.2``)."""
    layers = config.num_layers if config.positions.per_layer else 1  # umT5: a table per layer, side by side
    tables = tuple(f"{stack}block.{i}.layer.0.SelfAttention.relative_attention_bias.weight" for i in range(layers))
    ports: list[Port] = [("shared.weight", model.token_embedding.embeddings, keep),
                         (tables, model.positions.relative_attention_bias.embeddings,
                          lambda *t: np.concatenate(t, axis=1))]
    for i, layer in enumerate(model.encoder_layers):
        prefix = f"{stack}block.{i}.layer."
        mlp = 1
        ports += [(f"{prefix}0.layer_norm.weight", layer.attention_norm.gamma, keep),
                  *attention_ports(f"{prefix}0.SelfAttention.", layer.attention, config)]
        if layer.cross_attention is not None:
            mlp = 2
            ports += [(f"{prefix}1.layer_norm.weight", layer.cross_attention_norm.gamma, keep),
                      *attention_ports(f"{prefix}1.EncDecAttention.", layer.cross_attention, config)]
        ports += [(f"{prefix}{mlp}.layer_norm.weight", layer.output_norm.gamma, keep),
                  *mlp_ports(f"{prefix}{mlp}.DenseReluDense.", layer, config)]
    return [*ports, (f"{stack}final_layer_norm.weight", model.final_norm.gamma, keep)]
