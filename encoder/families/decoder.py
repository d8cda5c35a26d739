"""What the decoder families (Llama, Mistral, Qwen2/3, Phi-3, Gemma 2/3) share: rotary parameters as
``config.json`` gives them, causal sliding windows per layer, the pad token, and the ports of their common
tensor names (``model.layers.{i}.self_attn.q_proj`` ..., ``lm_head.weight`` at the top level).

Rotary parameters come from ``rope_parameters`` (transformers 5; per layer type when nested, Gemma 3) or from
``rope_theta`` and ``rope_scaling`` (older configs). Rope types "default", "linear" and "llama3" are run; any other
is refused by name.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from encoder.config import EncoderConfig, RotaryPositions
from encoder.errors import CheckpointError
from encoder.families.common import Port, field, keep, linear, norm_ports, pad_token, reshaped

RUN_ROPE_TYPES = ("default", "linear", "llama3")
# Rope types transformers knows that Headlight does not run: named when refused (another value is not echoed).
KNOWN_ROPE_TYPES = ("dynamic", "yarn", "longrope", "proportional", "su", "mrope", "default", "linear", "llama3")
LAYER_TYPES = ("full_attention", "sliding_attention")


def rope_fields(hf: Mapping[str, Any], layer_type: str | None = None, theta: float = 10_000.0) -> dict[str, Any]:
    """``RotaryPositions`` fields of one kind of layer: ``theta``, ``rope_type``, ``factor`` (and Llama 3's
    ``low_freq_factor``, ``high_freq_factor``, ``original_max_positions``) and ``fraction``
    (``partial_rotary_factor``), from ``rope_parameters`` (its ``layer_type`` entry when nested) or
    ``rope_theta`` + ``rope_scaling``; ``theta`` is the family's default base.

    Raises:
        CheckpointError: a rope type Headlight does not run (named when transformers knows it).
    """
    parameters = hf.get("rope_parameters") or {}
    if not isinstance(parameters, Mapping):
        raise CheckpointError("config.json's rope_parameters is not an object.")
    if layer_type is not None and any(name in parameters for name in LAYER_TYPES):
        parameters = parameters.get(layer_type) or {}
    elif not parameters:
        parameters = hf.get("rope_scaling") or {}
    if not isinstance(parameters, Mapping):
        raise CheckpointError("config.json's rope parameters are not an object.")
    rope_type = parameters.get("rope_type", parameters.get("type", "default"))
    if rope_type not in RUN_ROPE_TYPES:
        named = f"rope_type {rope_type!r}" if rope_type in KNOWN_ROPE_TYPES else "a rope_type"
        raise CheckpointError(f"config.json asks for {named}, which Headlight does not run; it runs "
                              f"{', '.join(RUN_ROPE_TYPES)}.")
    fields: dict[str, Any] = {
        "theta": float(parameters.get("rope_theta") or hf.get("rope_theta") or theta),
        "rope_type": rope_type,
        "fraction": float(parameters.get("partial_rotary_factor") or hf.get("partial_rotary_factor") or 1.0),
    }
    if rope_type in ("linear", "llama3"):
        fields["factor"] = float(field(parameters, "factor"))
    if rope_type == "llama3":
        fields["low_freq_factor"] = float(field(parameters, "low_freq_factor"))
        fields["high_freq_factor"] = float(field(parameters, "high_freq_factor"))
        fields["original_max_positions"] = int(hf.get("original_max_position_embeddings")
                                               or parameters.get("original_max_position_embeddings")
                                               or field(hf, "max_position_embeddings"))
    return fields


def shared_rotary(fields: dict[str, Any]) -> RotaryPositions:
    """Rotary positions with one base and scaling for every layer, windowed or not (``rope_fields``); no logit
    terms (decoders leave out their second product)."""
    return RotaryPositions(**fields, local_theta=fields["theta"], local_rope_type=fields["rope_type"],
                           local_factor=fields.get("factor", 1.0), logit_terms=False)


def layer_windows(hf: Mapping[str, Any], layers: int, window: int | None,
                  sliding: list[bool] | None) -> tuple[int, ...]:
    """One causal window per layer (0: full attention): ``layer_types`` when config.json gives them, else
    ``sliding`` (the family's own rule, True for a windowed layer; None: every layer when ``window`` is set).

    Raises:
        CheckpointError: layer types other than full and sliding attention, or not one per layer; a window below 1.
    """
    given = hf.get("layer_types")
    if given is not None:
        if not isinstance(given, list) or len(given) != layers or any(t not in LAYER_TYPES for t in given):
            raise CheckpointError(f"config.json's layer_types must give one of {', '.join(LAYER_TYPES)} per layer.")
        sliding = [t == "sliding_attention" for t in given]
    elif sliding is None:
        sliding = [window is not None] * layers
    if not any(sliding):
        return ()
    if window is None or int(window) < 1:
        raise CheckpointError("config.json has sliding-attention layers but no sliding_window of at least 1.")
    return tuple(int(window) if s else 0 for s in sliding)


def padding_id(hf: Mapping[str, Any], vocab_size: int) -> int:
    """``pad_token_id``, else the first ``eos_token_id`` (decoders often have no padding token; padding follows the
    text, which a causal model never reads, and padded keys are masked anyway), else 0."""
    for name in ("pad_token_id", "eos_token_id"):
        value = hf.get(name)
        if isinstance(value, list):
            value = value[0] if value else None
        if value is not None:
            return pad_token({"pad_token_id": value}, vocab_size)
    return 0


def head_ports(name: str, dense, heads: int, head_dim: int, d_model: int) -> list[Port]:
    """A projection into ``heads`` heads (kernel (D, heads, dh), bias (heads, dh)) from ``{name}.weight`` (out, in)
    and, when the layer has one, ``{name}.bias``."""
    ports: list[Port] = [(f"{name}.weight", dense.kernel, lambda w: reshaped(w.T, (d_model, heads, head_dim)))]
    if dense.bias is not None:
        ports.append((f"{name}.bias", dense.bias, lambda b: reshaped(b, (heads, head_dim))))
    return ports


def output_ports(name: str, dense, config: EncoderConfig) -> list[Port]:
    """The attention's output projection (kernel (H, dh, D)) from ``{name}.weight`` (D, H dh) (+ bias)."""
    h, dh, d = config.num_heads, config.head_dim, config.d_model
    ports: list[Port] = [(f"{name}.weight", dense.kernel, lambda w: reshaped(w.T, (h, dh, d)))]
    if dense.bias is not None:
        ports.append((f"{name}.bias", dense.bias, keep))
    return ports


def attention_ports(prefix: str, attention, config: EncoderConfig, norm=keep) -> list[Port]:
    """``q_proj``, ``k_proj``, ``v_proj`` (key/value heads: grouped-query attention), ``o_proj`` and, with
    ``attention.qk_norm``, ``q_norm``/``k_norm`` (their weights through ``norm``: Gemma's ``1 + w``)."""
    h, kv, dh, d = config.num_heads, config.key_value_heads, config.head_dim, config.d_model
    ports = [*head_ports(f"{prefix}q_proj", attention.query_dense, h, dh, d),
             *head_ports(f"{prefix}k_proj", attention.key_dense, kv, dh, d),
             *head_ports(f"{prefix}v_proj", attention.value_dense, kv, dh, d),
             *output_ports(f"{prefix}o_proj", attention.output_dense, config)]
    if attention.query_norm is not None:
        ports += [(f"{prefix}q_norm.weight", attention.query_norm.gamma, norm),
                  (f"{prefix}k_norm.weight", attention.key_norm.gamma, norm)]
    return ports


def gated_mlp_ports(prefix: str, layer) -> list[Port]:
    """``mlp.gate_proj`` and ``mlp.up_proj`` into the fused inner layer (columns [gate | up]: the activated half
    first), ``mlp.down_proj`` into the output layer (no biases, or ``mlp_bias``)."""
    ports: list[Port] = [((f"{prefix}gate_proj.weight", f"{prefix}up_proj.weight"), layer.intermediate.kernel,
                          lambda gate, up: np.concatenate([gate.T, up.T], axis=1))]
    if layer.intermediate.bias is not None:
        ports.append(((f"{prefix}gate_proj.bias", f"{prefix}up_proj.bias"), layer.intermediate.bias,
                      lambda gate, up: np.concatenate([gate, up])))
    ports.append((f"{prefix}down_proj.weight", layer.output_dense.kernel, linear))
    if layer.output_dense.bias is not None:
        ports.append((f"{prefix}down_proj.bias", layer.output_dense.bias, keep))
    return ports


def lm_head_ports(model) -> list[Port]:
    """The untied LM head's ``lm_head.weight`` (V, D) as the kernel (D, V); none when tied to the embedding."""
    return [] if model.lm_head is None else [("lm_head.weight", model.lm_head.kernel, linear)]


def decoder_ports(config, model, layer_ports, norm=keep) -> list[Port]:
    """A decoder's flat list of (checkpoint name, Keras variable, transform): ``embed_tokens``, each layer's
    ``layer_ports(f"layers.{i}.", layer, config)``, then ``final_ports`` (``norm``: the final norm's transform)."""
    ports: list[Port] = [("embed_tokens.weight", model.token_embedding.embeddings, keep)]
    for i, layer in enumerate(model.encoder_layers):
        ports += layer_ports(f"layers.{i}.", layer, config)
    return ports + final_ports(model, norm)


def final_ports(model, norm=keep) -> list[Port]:
    """The final ``norm`` and the LM head."""
    return [(name, variable, norm) for name, variable, _ in norm_ports("norm", model.final_norm)] + \
        lm_head_ports(model)
