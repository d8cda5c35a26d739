"""Llama and the decoders built like it: Mistral, Qwen2, Qwen3. Causal pre-norm blocks with RMSNorm
(``input_layernorm``, ``post_attention_layernorm`` before the MLP, ``norm`` on the last hidden state, which
``hidden[-1]`` reports), rotary positions (``encoder.families.decoder.rope_fields``: default, linear or Llama 3
scaling), grouped-query attention (``num_key_value_heads``), a SwiGLU MLP (``down_proj(silu(gate_proj(x)) *
up_proj(x))``) and an LM head (``lm_head.weight``, or the token embedding when ``tie_word_embeddings``).

What differs by ``model_type``:

- llama: ``attention_bias`` on all four projections, ``mlp_bias``; no sliding window.
- mistral: no biases; ``sliding_window`` (default 4096, null for none) in every layer.
- qwen2: biases on q, k and v only; sliding windows in the layers from ``max_window_layers`` on when
  ``use_sliding_window`` (or ``layer_types``).
- qwen3: qwen2's windows, ``attention_bias`` on all four, and q/k RMSNorm per head (``q_norm``, ``k_norm``)
  before the rotation.

A sliding window lets query i see key j only when ``0 <= i - j < sliding_window``. ``*ForCausalLM`` checkpoints put
the backbone under ``model.``.
"""

from __future__ import annotations

from typing import Any

from encoder.config import Attention, Block, Embeddings, EncoderConfig, Head
from encoder.families.common import Port, activation, build, described, field, norm_ports
from encoder.families.decoder import (
    attention_ports,
    decoder_ports,
    gated_mlp_ports,
    layer_windows,
    padding_id,
    rope_fields,
    shared_rotary,
)

MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3")
PREFIXES = ("model.",)
DEFAULT_THETA = {"llama": 10_000.0, "mistral": 10_000.0, "qwen2": 10_000.0, "qwen3": 10_000.0}


def convert_config(hf: dict[str, Any]) -> EncoderConfig:
    """Map a Hugging Face Llama / Mistral / Qwen2 / Qwen3 ``config.json`` to an EncoderConfig (pure function)."""
    kind = hf.get("model_type")
    layers, d_model = int(field(hf, "num_hidden_layers")), int(field(hf, "hidden_size"))
    heads = int(field(hf, "num_attention_heads"))
    vocab_size = int(field(hf, "vocab_size"))
    attention_bias = bool(hf.get("attention_bias", False))
    qkv_bias, output_bias = {"llama": (attention_bias, attention_bias), "mistral": (False, False),
                             "qwen2": (True, False), "qwen3": (attention_bias, attention_bias)}[kind]
    with described():
        return build(
            num_layers=layers,
            d_model=d_model,
            max_positions=int(field(hf, "max_position_embeddings", default=2048)),
            dropout=0.0,
            embeddings=Embeddings(vocab_size, scale=False, pad_token_id=padding_id(hf, vocab_size)),
            attention=Attention(heads, key_value_heads=int(field(hf, "num_key_value_heads", default=heads)),
                                head_dim=int(hf.get("head_dim") or 0), causal=True,
                                windows=windows(hf, layers), window_kind="causal",
                                query_key_value_bias=qkv_bias, output_bias=output_bias, qk_norm=kind == "qwen3"),
            positions=shared_rotary(rope_fields(hf, theta=DEFAULT_THETA[kind])),
            block=Block(int(field(hf, "intermediate_size")), activation=activation(hf.get("hidden_act", "silu")),
                        norm="rmsnorm", placement="pre", mlp="gated", use_bias=bool(hf.get("mlp_bias", False)),
                        norm_epsilon=float(field(hf, "rms_norm_eps", default=1e-6)), final_norm=True),
            head=Head(pooling="last", lm_head=True, tie_embeddings=bool(hf.get("tie_word_embeddings", False))),
        )


def windows(hf: dict[str, Any], layers: int) -> tuple[int, ...]:
    """Each layer's causal window (0: full attention), by the family's rule (see the module docstring)."""
    kind = hf.get("model_type")
    if kind == "llama":
        return layer_windows(hf, layers, None, [False] * layers)
    if kind == "mistral":
        return layer_windows(hf, layers, hf.get("sliding_window", 4096), None)
    window = hf.get("sliding_window", 4096) if hf.get("use_sliding_window", False) else None
    first = int(hf.get("max_window_layers", 28) or 0)
    return layer_windows(hf, layers, window, [window is not None and i >= first for i in range(layers)])


def layer_ports(prefix: str, layer, config: EncoderConfig) -> list[Port]:
    """One layer (``layers.{i}.``): ``input_layernorm``, ``self_attn``, ``post_attention_layernorm`` (before the
    MLP), ``mlp``."""
    return [
        *norm_ports(f"{prefix}input_layernorm", layer.attention_norm),
        *attention_ports(f"{prefix}self_attn.", layer.attention, config),
        *norm_ports(f"{prefix}post_attention_layernorm", layer.output_norm),
        *gated_mlp_ports(f"{prefix}mlp.", layer),
    ]


def weight_ports(config: EncoderConfig, model) -> list[Port]:
    """The flat list of (checkpoint name, Keras variable, transform), one row per variable we fill."""
    return decoder_ports(config, model, layer_ports)
