"""Gemma 2 and Gemma 3 (``gemma3_text``; a multimodal ``gemma3`` folder is read through its ``text_config``, its
language model alone). Llama-like decoders with:

- embeddings times ``sqrt(hidden_size)`` (the factor rounded to float32, as transformers does);
- ``(1 + w)`` RMSNorms: the stored ``w`` is ported as ``1 + w`` in float32, exactly the factor transformers
  multiplies by;
- sandwich norms: ``input_layernorm`` and ``post_attention_layernorm`` around the attention,
  ``pre_feedforward_layernorm`` and ``post_feedforward_layernorm`` around the GeGLU MLP (``gelu_pytorch_tanh``);
- the attention scaled by ``query_pre_attn_scalar ** -0.5``; Gemma 2 soft-caps its logits
  (``attn_logit_softcapping``) and the final logits (``final_logit_softcapping``);
- sliding-window layers (``layer_types``; else Gemma 2 alternates sliding and full from layer 0, Gemma 3 has a full
  layer every ``sliding_window_pattern``-th): query i sees key j only when ``0 <= i - j < sliding_window``;
- Gemma 3: q/k RMSNorm per head before the rotation, and rotary bases per layer type (``rope_parameters`` by layer
  type, or ``rope_theta`` + ``rope_scaling`` for full layers and ``rope_local_base_freq`` for sliding ones).

Absent fields take transformers' defaults (Gemma 3's multimodal configs leave many out). Bidirectional Gemma
(``use_bidirectional_attention``, the embedding models) is refused.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from encoder.config import Attention, Block, Embeddings, EncoderConfig, Head, RotaryPositions
from encoder.errors import CheckpointError
from encoder.families.common import Port, activation, build, described, field
from encoder.families.decoder import (
    attention_ports,
    decoder_ports,
    gated_mlp_ports,
    layer_windows,
    padding_id,
    rope_fields,
    shared_rotary,
)
from encoder.limits import check_config_fields

MODEL_TYPES = ("gemma2", "gemma3_text", "gemma3")
# Multimodal Gemma 3 puts the language model under ``model.language_model.`` (``language_model.model.`` before
# transformers 4.52, its head ``language_model.lm_head``); text models under ``model.``.
PREFIXES = ("model.language_model.", "language_model.model.", "language_model.", "model.")
SHARED = {"vocab_size": 256_000, "hidden_size": 2304, "intermediate_size": 9216, "num_hidden_layers": 26,
          "num_attention_heads": 8, "num_key_value_heads": 4, "head_dim": 256,
          "hidden_activation": "gelu_pytorch_tanh", "rms_norm_eps": 1e-6, "pad_token_id": 0, "eos_token_id": 1,
          "tie_word_embeddings": True, "attention_bias": False, "query_pre_attn_scalar": 256,
          "sliding_window": 4096}
DEFAULTS = {
    "gemma2": {**SHARED, "max_position_embeddings": 8192, "final_logit_softcapping": 30.0,
               "attn_logit_softcapping": 50.0, "rope_theta": 10_000.0},
    "gemma3_text": {**SHARED, "vocab_size": 262_208, "max_position_embeddings": 131_072,
                    "final_logit_softcapping": None, "attn_logit_softcapping": None},
}
THETAS = {"full_attention": ("rope_theta", 1_000_000.0), "sliding_attention": ("rope_local_base_freq", 10_000.0)}


def text_config(hf: dict[str, Any]) -> dict[str, Any]:
    """The language model's config: ``hf`` itself, or a multimodal ``gemma3``'s ``text_config`` (its sizes bounded
    as the top level's are), with transformers' defaults for what is absent."""
    if hf.get("model_type") == "gemma3":
        text = hf.get("text_config")
        if not isinstance(text, dict):
            raise CheckpointError("config.json of a multimodal Gemma 3 needs its text_config.")
        check_config_fields(text)
        hf = {"tie_word_embeddings": hf.get("tie_word_embeddings", True), **text, "model_type": "gemma3_text"}
    return {**DEFAULTS[hf["model_type"]], **hf}


def convert_config(hf: dict[str, Any]) -> EncoderConfig:
    """Map a Hugging Face Gemma 2 / Gemma 3 ``config.json`` to an EncoderConfig (pure function)."""
    hf = text_config(hf)
    gemma3 = hf["model_type"] == "gemma3_text"
    if hf.get("use_bidirectional_attention"):
        raise CheckpointError("config.json asks for bidirectional attention (an embedding Gemma); Headlight runs "
                              "Gemma as a causal decoder only.")
    layers, heads = int(field(hf, "num_hidden_layers")), int(field(hf, "num_attention_heads"))
    vocab_size, d_model = int(field(hf, "vocab_size")), int(field(hf, "hidden_size"))
    every = int(hf.get("sliding_window_pattern") or hf.get("_sliding_window_pattern") or 6) if gemma3 else 2
    sliding = [bool((i + 1) % every) for i in range(layers)]
    bias = bool(hf.get("attention_bias"))
    with described():
        return build(
            num_layers=layers,
            d_model=d_model,
            max_positions=int(field(hf, "max_position_embeddings")),
            dropout=0.0,
            embeddings=Embeddings(vocab_size, scale=True, pad_token_id=padding_id(hf, vocab_size)),
            attention=Attention(heads, key_value_heads=int(field(hf, "num_key_value_heads", default=heads)),
                                head_dim=int(field(hf, "head_dim")),
                                scaling=float(field(hf, "query_pre_attn_scalar")) ** -0.5, causal=True,
                                windows=layer_windows(hf, layers, hf.get("sliding_window"), sliding),
                                window_kind="causal", query_key_value_bias=bias, output_bias=bias,
                                qk_norm=gemma3, softcap=float(hf.get("attn_logit_softcapping") or 0.0)),
            positions=rotary(hf) if gemma3 else shared_rotary(rope_fields(hf)),
            block=Block(int(field(hf, "intermediate_size")),
                        activation=activation(hf.get("hidden_activation") or hf.get("hidden_act"),
                                              "hidden_activation"),
                        norm="rmsnorm", placement="pre", mlp="gated", use_bias=False,
                        norm_epsilon=float(field(hf, "rms_norm_eps")), final_norm=True, sandwich_norms=True),
            head=Head(pooling="last", lm_head=True, tie_embeddings=bool(hf.get("tie_word_embeddings")),
                      logit_softcap=float(hf.get("final_logit_softcapping") or 0.0)),
        )


def rotary(hf: dict[str, Any]) -> RotaryPositions:
    """Gemma 3's rotary positions: full layers' and sliding layers' bases and scaling each from their own
    ``rope_parameters`` entry, or (older configs) ``rope_theta`` and ``rope_scaling`` for full layers and
    ``rope_local_base_freq`` (unscaled) for sliding ones."""
    parameters = hf.get("rope_parameters") or {}
    nested = isinstance(parameters, dict) and any(name in parameters for name in THETAS)
    values = {}
    for layer_type, (name, default) in THETAS.items():
        if nested:
            values[layer_type] = rope_fields(hf, layer_type, float(hf.get(name) or default))
        elif layer_type == "full_attention":
            values[layer_type] = rope_fields({**hf, "rope_theta": hf.get("rope_theta") or default}, None)
        else:
            values[layer_type] = {"theta": float(hf.get(name) or default), "rope_type": "default", "fraction": 1.0}
    full, local = values["full_attention"], values["sliding_attention"]
    if local["rope_type"] == "llama3" or local["fraction"] != full["fraction"]:
        raise CheckpointError("config.json's sliding layers ask for rotary positions Headlight does not run there "
                              "(llama3 scaling, or another partial_rotary_factor than the full layers').")
    return RotaryPositions(**full, local_theta=local["theta"], local_rope_type=local["rope_type"],
                           local_factor=local.get("factor", 1.0), logit_terms=False)


def one_plus(weights: np.ndarray) -> np.ndarray:
    """Gemma's norm weight ``w`` as the factor it multiplies by: ``1 + w`` in float32 (transformers'
    ``1.0 + weight.float()``)."""
    return np.float32(1.0) + np.asarray(weights, np.float32)


def layer_ports(prefix: str, layer, config: EncoderConfig) -> list[Port]:
    """One layer (``layers.{i}.``): ``input_layernorm``, ``self_attn`` (with ``q_norm``/``k_norm`` in Gemma 3),
    ``post_attention_layernorm``, ``pre_feedforward_layernorm``, ``mlp``, ``post_feedforward_layernorm``; every
    norm weight as ``1 + w``."""
    return [
        (f"{prefix}input_layernorm.weight", layer.attention_norm.gamma, one_plus),
        *attention_ports(f"{prefix}self_attn.", layer.attention, config, norm=one_plus),
        (f"{prefix}post_attention_layernorm.weight", layer.attended_norm.gamma, one_plus),
        (f"{prefix}pre_feedforward_layernorm.weight", layer.output_norm.gamma, one_plus),
        *gated_mlp_ports(f"{prefix}mlp.", layer),
        (f"{prefix}post_feedforward_layernorm.weight", layer.mlp_output_norm.gamma, one_plus),
    ]


def weight_ports(config: EncoderConfig, model) -> list[Port]:
    """The flat list of (checkpoint name, Keras variable, transform), one row per variable we fill."""
    return decoder_ports(config, model, layer_ports, norm=one_plus)
