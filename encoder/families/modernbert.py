"""ModernBERT: pre-layer-norm layers with rotary positions (RoPE) and no position table, no token types, no biases.

Every ``global_attn_every_n_layers``-th layer (0, n, 2n, ...) is global: it attends to every token, its queries and
keys rotated with ``global_rope_theta``. The others are local: query i sees key j only when
``|i - j| <= local_attention // 2``, rotated with ``local_rope_theta``. The feed-forward block is GeGLU
(``mlp.Wi`` projects to twice ``intermediate_size``: the GELU of the first half times the second half); the
embeddings are layer-normalised, layer 0 has no attention norm (its input is that norm already) and
``final_norm`` comes after the last layer (``hidden[-1]`` reports it, as transformers does).

transformers 5 writes ``layer_types`` and ``rope_parameters``; Hub checkpoints carry ``global_attn_every_n_layers``,
``global_rope_theta`` and ``local_rope_theta``; both are read, and ``layer_types`` must follow the every-n pattern.
Task models (``ModernBertForMaskedLM``, ...) put the backbone under ``model.``; their heads are not run, so
Headlight shows ModernBERT's attention and hidden states only.
"""

from __future__ import annotations

from typing import Any

from encoder.config import Attention, Block, Embeddings, EncoderConfig, RotaryPositions
from encoder.errors import CheckpointError
from encoder.families.common import (
    Port,
    activation,
    build,
    dense_ports,
    described,
    field,
    keep,
    norm_ports,
    pad_token,
    reshaped,
)

MODEL_TYPES = ("modernbert",)
PREFIXES = ("model.",)
THETAS = {"full_attention": ("global_rope_theta", 160_000.0), "sliding_attention": ("local_rope_theta", 10_000.0)}


def convert_config(hf: dict[str, Any]) -> EncoderConfig:
    """Map a Hugging Face ModernBERT ``config.json`` to an EncoderConfig (pure function)."""
    layers = int(field(hf, "num_hidden_layers"))
    every = int(field(hf, "global_attn_every_n_layers", default=3))
    if every < 1:
        raise CheckpointError("config.json's global_attn_every_n_layers must be at least 1.")
    check_layer_types(hf, layers, every)
    vocab_size, dff = int(field(hf, "vocab_size")), int(field(hf, "intermediate_size"))
    heads, width = int(field(hf, "num_attention_heads")), int(field(hf, "local_attention", default=128))
    epsilon = float(field(hf, "norm_eps", default=1e-5))
    with described():
        return build(
            num_layers=layers,
            d_model=int(field(hf, "hidden_size")),
            max_positions=int(field(hf, "max_position_embeddings", default=8192)),
            dropout=0.0,
            embeddings=Embeddings(vocab_size, scale=False, layer_norm=True, pad_token_id=pad_token(hf, vocab_size)),
            attention=Attention(heads, windows=tuple(width if i % every else 0 for i in range(layers))),
            positions=RotaryPositions(theta=rope_theta(hf, "full_attention"),
                                      local_theta=rope_theta(hf, "sliding_attention")),
            block=Block(dff, activation=activation(hf.get("hidden_activation", "gelu"), "hidden_activation"),
                        placement="pre", mlp="gated", use_bias=uses_biases(hf), norm_epsilon=epsilon,
                        first_attention_norm=False, final_norm=True),
        )


def check_layer_types(hf: dict[str, Any], layers: int, every: int) -> None:
    """Refuse ``layer_types`` (transformers 5) other than every ``every``-th layer global, the others local."""
    expected = ["sliding_attention" if i % every else "full_attention" for i in range(layers)]
    given = hf.get("layer_types")
    if given is not None and list(given) != expected:
        raise CheckpointError(
            f"config.json's layer_types are not every {every}-th layer global (global_attn_every_n_layers) and the "
            "others local; Headlight runs only that pattern.")


def rope_theta(hf: dict[str, Any], layer_type: str) -> float:
    """The rotary base of ``layer_type`` layers: ``rope_parameters[layer_type]["rope_theta"]`` (transformers 5),
    else the Hub's ``global_rope_theta`` / ``local_rope_theta``, else ModernBERT's defaults. Scaled RoPE variants
    (``rope_type`` other than "default", ``rope_scaling``) are refused."""
    if hf.get("rope_scaling"):
        raise CheckpointError("config.json's rope_scaling is not supported; Headlight runs plain rotary positions.")
    name, default = THETAS[layer_type]
    parameters = (hf.get("rope_parameters") or {}).get(layer_type) or {}
    if parameters.get("rope_type", "default") != "default":
        raise CheckpointError(f"config.json's rope_type for {layer_type} is not supported; only 'default' is.")
    return float(parameters.get("rope_theta") or field(hf, name, default=default))


def uses_biases(hf: dict[str, Any]) -> bool:
    """Whether the attention, feed-forward and norm layers have biases (ModernBERT's have none); all three must
    agree."""
    flags = {bool(hf.get(name, False)) for name in ("attention_bias", "mlp_bias", "norm_bias")}
    if len(flags) > 1:
        raise CheckpointError("config.json's attention_bias, mlp_bias and norm_bias differ; Headlight runs "
                              "ModernBERT with biases everywhere or (as published) nowhere.")
    return flags.pop()


def attention_ports(prefix: str, attention, config: EncoderConfig) -> list[Port]:
    """Query, key and value from the fused ``attn.Wqkv`` (weight (3D, D): query rows, then key, then value), and
    the output ``attn.Wo``. The same stored tensor feeds three variables, each taking its third of the rows."""
    d, h, dh = config.d_model, config.num_heads, config.head_dim
    ports: list[Port] = []
    for index, dense in enumerate((attention.query_dense, attention.key_dense, attention.value_dense)):
        rows = slice(index * d, (index + 1) * d)
        ports.append((f"{prefix}Wqkv.weight", dense.kernel, lambda w, r=rows: reshaped(w[r].T, (d, h, dh))))
        if dense.bias is not None:
            ports.append((f"{prefix}Wqkv.bias", dense.bias, lambda b, r=rows: reshaped(b[r], (h, dh))))
    ports.append((f"{prefix}Wo.weight", attention.output_dense.kernel, lambda w: reshaped(w.T, (h, dh, d))))
    if attention.output_dense.bias is not None:
        ports.append((f"{prefix}Wo.bias", attention.output_dense.bias, keep))
    return ports


def layer_ports(prefix: str, layer, config: EncoderConfig) -> list[Port]:
    """One layer (``layers.{i}.``): ``attn_norm`` (none in layer 0), attention, ``mlp_norm``, the GeGLU MLP."""
    norm = norm_ports(f"{prefix}attn_norm", layer.attention_norm) if layer.index else []
    return [
        *norm,
        *attention_ports(f"{prefix}attn.", layer.attention, config),
        *norm_ports(f"{prefix}mlp_norm", layer.output_norm),
        *dense_ports(f"{prefix}mlp.Wi", layer.intermediate),
        *dense_ports(f"{prefix}mlp.Wo", layer.output_dense),
    ]


def weight_ports(config: EncoderConfig, model) -> list[Port]:
    """The flat list of (checkpoint name, Keras variable, transform), one row per variable we fill."""
    ports: list[Port] = [
        ("embeddings.tok_embeddings.weight", model.token_embedding.embeddings, keep),
        *norm_ports("embeddings.norm", model.embedding_norm),
    ]
    for i, layer in enumerate(model.encoder_layers):
        ports += layer_ports(f"layers.{i}.", layer, config)
    return ports + norm_ports("final_norm", model.final_norm)
