"""Phi-3: Llama's blocks (RMSNorm, SwiGLU, rotary positions, grouped-query attention, an LM head) with fused
projections: ``self_attn.qkv_proj`` holds the query, key and value rows one after the other ([q; k; v], the key and
value parts ``num_key_value_heads * head_dim`` rows each) and ``mlp.gate_up_proj`` the gate's rows then the up
projection's ([gate; up]). No biases; ``partial_rotary_factor`` rotates only the first share of each head's
dimensions (Phi-4-mini: 0.75); ``sliding_window``, when set, is every layer's causal window. Phi-3's "longrope"
scaling (the 128k-context models) is refused by name.
"""

from __future__ import annotations

from typing import Any

from encoder.config import Attention, Block, Embeddings, EncoderConfig, Head
from encoder.families.common import Port, activation, build, described, field, linear, norm_ports, reshaped
from encoder.families.decoder import decoder_ports, layer_windows, output_ports, padding_id, rope_fields, shared_rotary

MODEL_TYPES = ("phi3",)
PREFIXES = ("model.",)


def convert_config(hf: dict[str, Any]) -> EncoderConfig:
    """Map a Hugging Face Phi-3 ``config.json`` to an EncoderConfig (pure function)."""
    layers, heads = int(field(hf, "num_hidden_layers")), int(field(hf, "num_attention_heads"))
    vocab_size = int(field(hf, "vocab_size"))
    with described():
        return build(
            num_layers=layers,
            d_model=int(field(hf, "hidden_size")),
            max_positions=int(field(hf, "max_position_embeddings", default=4096)),
            dropout=0.0,
            embeddings=Embeddings(vocab_size, scale=False, pad_token_id=padding_id(hf, vocab_size)),
            attention=Attention(heads, key_value_heads=int(field(hf, "num_key_value_heads", default=heads)),
                                head_dim=int(hf.get("head_dim") or 0), causal=True,
                                windows=layer_windows(hf, layers, hf.get("sliding_window"), None),
                                window_kind="causal"),
            positions=shared_rotary(rope_fields(hf)),
            block=Block(int(field(hf, "intermediate_size")), activation=activation(hf.get("hidden_act", "silu")),
                        norm="rmsnorm", placement="pre", mlp="gated", use_bias=False,
                        norm_epsilon=float(field(hf, "rms_norm_eps", default=1e-5)), final_norm=True),
            head=Head(pooling="last", lm_head=True, tie_embeddings=bool(hf.get("tie_word_embeddings", False))),
        )


def attention_ports(prefix: str, attention, config: EncoderConfig) -> list[Port]:
    """Query, key and value from the fused ``qkv_proj`` (rows [q; k; v]: H dh, then Hkv dh twice), and
    ``o_proj``. The same stored tensor feeds three variables, each taking its rows."""
    h, kv, dh, d = config.num_heads, config.key_value_heads, config.head_dim, config.d_model
    starts = (0, h * dh, (h + kv) * dh)
    ports: list[Port] = []
    for start, heads, dense in zip(starts, (h, kv, kv), (attention.query_dense, attention.key_dense,
                                                          attention.value_dense)):
        rows = slice(start, start + heads * dh)
        ports.append((f"{prefix}qkv_proj.weight", dense.kernel,
                      lambda w, r=rows, n=heads: reshaped(w[r].T, (d, n, dh))))
    return ports + output_ports(f"{prefix}o_proj", attention.output_dense, config)


def layer_ports(prefix: str, layer, config: EncoderConfig) -> list[Port]:
    """One layer (``layers.{i}.``): ``input_layernorm``, ``self_attn``, ``post_attention_layernorm``, the MLP
    (``gate_up_proj`` rows [gate; up] are the inner layer's columns [gate | up] as they stand)."""
    return [
        *norm_ports(f"{prefix}input_layernorm", layer.attention_norm),
        *attention_ports(f"{prefix}self_attn.", layer.attention, config),
        *norm_ports(f"{prefix}post_attention_layernorm", layer.output_norm),
        (f"{prefix}mlp.gate_up_proj.weight", layer.intermediate.kernel, linear),
        (f"{prefix}mlp.down_proj.weight", layer.output_dense.kernel, linear),
    ]


def weight_ports(config: EncoderConfig, model) -> list[Port]:
    """The flat list of (checkpoint name, Keras variable, transform), one row per variable we fill."""
    return decoder_ports(config, model, layer_ports)
