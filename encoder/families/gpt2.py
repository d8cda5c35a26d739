"""GPT-2: a causal decoder read as an encoder. Learned positions (``wpe``), no token types and no embedding norm;
pre-layer-norm blocks (``x + attn(ln_1(x))``, then ``x + mlp(ln_2(x))``), ``gelu_new``, and ``ln_f`` on the last
hidden state (which ``hidden[-1]`` reports, as transformers does). Each token attends to itself and earlier tokens.

Its ``Conv1D`` layers store weights (in, out), Keras' order already; ``attn.c_attn`` holds query, key and value
side by side (D, 3D). Task models (``GPT2LMHeadModel``, ...) put the backbone under ``transformer.``; their heads
are not run (``GPT2ForSequenceClassification`` reads the last token, a pooling we do not have), so Headlight shows
GPT-2's attention and hidden states only.

Options that change the attention logits (``scale_attn_weights`` false, ``scale_attn_by_inverse_layer_idx``) are
refused; ``reorder_and_upcast_attn`` only reorders the same float32 arithmetic (scale inside the product), so it
is run as is.
"""

from __future__ import annotations

from typing import Any

from encoder.config import AbsolutePositions, Attention, Block, Embeddings, EncoderConfig
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

MODEL_TYPES = ("gpt2",)
PREFIXES = ("transformer.",)


def convert_config(hf: dict[str, Any]) -> EncoderConfig:
    """Map a Hugging Face GPT-2 ``config.json`` to an EncoderConfig (pure function)."""
    check_attention_options(hf)
    d_model, vocab_size = int(field(hf, "n_embd", "hidden_size")), int(field(hf, "vocab_size"))
    heads = int(field(hf, "n_head", "num_attention_heads"))
    dff = int(field(hf, "n_inner", default=4 * d_model))  # None in config.json means 4 * n_embd
    epsilon = float(field(hf, "layer_norm_epsilon", default=1e-5))
    with described():
        return build(
            num_layers=int(field(hf, "n_layer", "num_hidden_layers")),
            d_model=d_model,
            max_positions=int(field(hf, "n_positions", "max_position_embeddings", default=1024)),
            dropout=0.0,
            embeddings=Embeddings(vocab_size, scale=False,
                                  pad_token_id=pad_token({"pad_token_id": padding_id(hf)}, vocab_size)),
            attention=Attention(heads, causal=True),
            positions=AbsolutePositions(table="learned"),
            block=Block(dff, activation=activation(hf.get("activation_function", "gelu_new"), "activation_function"),
                        placement="pre", norm_epsilon=epsilon, final_norm=True),
        )


def padding_id(hf: dict[str, Any]) -> int:
    """GPT-2 has no padding token (``pad_token_id`` null): pad batches with ``eos_token_id`` (``<|endoftext|>``),
    as transformers' users do, else 0. The choice never shows: padding comes after the text, which a causal model
    never reads, and padded keys are masked anyway."""
    for name in ("pad_token_id", "eos_token_id"):
        value = hf.get(name)
        if isinstance(value, list):
            value = value[0] if value else None
        if value is not None:
            return int(value)
    return 0


def check_attention_options(hf: dict[str, Any]) -> None:
    """Refuse the options whose attention our layers do not compute."""
    if not hf.get("scale_attn_weights", True):
        raise CheckpointError("scale_attn_weights false (unscaled attention logits) is not supported; "
                              "Headlight divides the logits by sqrt(head size), as GPT-2 does by default.")
    if hf.get("scale_attn_by_inverse_layer_idx", False):
        raise CheckpointError("scale_attn_by_inverse_layer_idx true (logits divided by the layer number) is not "
                              "supported.")


def attention_ports(prefix: str, attention, config: EncoderConfig) -> list[Port]:
    """Query, key and value from the fused ``c_attn`` (weight (D, 3D), bias (3D,)), and the output ``c_proj``.
    The same stored tensor feeds three variables, each taking its third of the columns."""
    d, h, dh = config.d_model, config.num_heads, config.head_dim
    ports: list[Port] = []
    for index, dense in enumerate((attention.query_dense, attention.key_dense, attention.value_dense)):
        columns = slice(index * d, (index + 1) * d)
        ports += [
            (f"{prefix}c_attn.weight", dense.kernel, lambda w, c=columns: reshaped(w[:, c], (d, h, dh))),
            (f"{prefix}c_attn.bias", dense.bias, lambda b, c=columns: reshaped(b[c], (h, dh))),
        ]
    dense = attention.output_dense
    ports.append((f"{prefix}c_proj.weight", dense.kernel, lambda w: reshaped(w, (h, dh, d))))
    ports.append((f"{prefix}c_proj.bias", dense.bias, keep))
    return ports


def layer_ports(prefix: str, layer, config: EncoderConfig) -> list[Port]:
    """One block (``h.{i}.``): ``ln_1`` (our attention norm), attention, ``ln_2`` (our output norm), the MLP."""
    return [
        *norm_ports(f"{prefix}ln_1", layer.attention_norm),
        *attention_ports(f"{prefix}attn.", layer.attention, config),
        *norm_ports(f"{prefix}ln_2", layer.output_norm),
        *dense_ports(f"{prefix}mlp.c_fc", layer.intermediate, keep),
        *dense_ports(f"{prefix}mlp.c_proj", layer.output_dense, keep),
    ]


def weight_ports(config: EncoderConfig, model) -> list[Port]:
    """The flat list of (checkpoint name, Keras variable, transform), one row per variable we fill."""
    ports: list[Port] = [
        ("wte.weight", model.token_embedding.embeddings, keep),
        ("wpe.weight", model.positions.table.embeddings, keep),
    ]
    for i, layer in enumerate(model.encoder_layers):
        ports += layer_ports(f"h.{i}.", layer, config)
    return ports + norm_ports("ln_f", model.final_norm)
