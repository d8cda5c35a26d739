"""CLIP's text transformer (``CLIPTextModel``, ``CLIPTextModelWithProjection``, and the text half of a whole CLIP
checkpoint: ``model_type`` "clip" with a ``text_config``, tensors under ``text_model.``, ``text_projection.weight``
at the top level). The text encoder of Stable Diffusion 1.x/2.x and SDXL.

Learned absolute positions from 0, no token types and no embedding norm; pre-layer-norm blocks (``layer_norm1``
before attention, ``layer_norm2`` before the MLP), ``quick_gelu`` (``x * sigmoid(1.702 x)``) or another
activation, a causal mask, and ``final_layer_norm``. transformers reports ``hidden_states[-1]`` *before* the final
norm and ``last_hidden_state`` after it; so does Headlight: ``hidden[-1]`` is the last layer's output and
``outputs["last_hidden_state"]`` the normalised one (``Block.final_norm_in_hidden`` False). The pooled output is
``last_hidden_state`` at the first ``eos_token_id`` token (``outputs["pooled"]``; configs with ``eos_token_id`` 2,
written before transformers fixed it, pool at the highest token id, as transformers does), and
``outputs["embedding"]`` is ``text_projection(pooled)`` (no bias) where the checkpoint has the projection, else the
pooled state itself.
"""

from __future__ import annotations

from typing import Any

from encoder.config import AbsolutePositions, Attention, Block, Embeddings, EncoderConfig, Head
from encoder.errors import CheckpointError
from encoder.families.common import (
    Port,
    activation,
    attention_ports,
    build,
    dense_ports,
    described,
    field,
    keep,
    linear,
    norm_ports,
    pad_token,
)

MODEL_TYPES = ("clip_text_model", "clip")
PREFIXES = ("text_model.",)
ATTENTION_NAMES = {"query": "q_proj", "key": "k_proj", "value": "v_proj", "output": "out_proj"}
OLD_EOS = 2  # transformers' marker of a config written before eos_token_id was right: pool at the highest id


def text_config(hf: dict[str, Any]) -> dict[str, Any]:
    """The text tower's config: ``text_config`` of a whole CLIP checkpoint (with its ``projection_dim``), else
    ``hf`` itself."""
    if hf.get("model_type") != "clip":
        return hf
    text = hf.get("text_config")
    if not isinstance(text, dict):
        raise CheckpointError("config.json of a CLIP model has no text_config object: no text encoder to open.")
    return {"projection_dim": hf.get("projection_dim", 512), "architectures": ["CLIPTextModelWithProjection"],
            **text}


def has_projection(hf: dict[str, Any]) -> bool:
    """A text projection is run for ``CLIPTextModelWithProjection`` and whole CLIP checkpoints."""
    return hf.get("model_type") == "clip" or "CLIPTextModelWithProjection" in (hf.get("architectures") or [])


def convert_config(hf: dict[str, Any]) -> EncoderConfig:
    """Map a Hugging Face CLIP (text) ``config.json`` to an EncoderConfig (pure function)."""
    projected = has_projection(hf)
    hf = text_config(hf)
    d_model, vocab_size = int(field(hf, "hidden_size", default=512)), int(field(hf, "vocab_size", default=49408))
    eos = int(field(hf, "eos_token_id", default=OLD_EOS))
    if not 0 <= eos < vocab_size:
        raise CheckpointError(f"eos_token_id is not a token id: the vocabulary has {vocab_size} tokens.")
    projection = int(field(hf, "projection_dim", default=512)) if projected else 0
    with described():
        return build(
            num_layers=int(field(hf, "num_hidden_layers", default=12)),
            d_model=d_model,
            max_positions=int(field(hf, "max_position_embeddings", default=77)),
            dropout=0.0,
            embeddings=Embeddings(vocab_size, scale=False, pad_token_id=pad_token(hf, vocab_size)),
            attention=Attention(int(field(hf, "num_attention_heads", default=8)), causal=True),
            positions=AbsolutePositions(table="learned"),
            block=Block(int(field(hf, "intermediate_size", default=2048)),
                        activation=activation(hf.get("hidden_act", "quick_gelu")), placement="pre",
                        norm_epsilon=float(field(hf, "layer_norm_eps", default=1e-5)), final_norm=True,
                        final_norm_in_hidden=False),
            head=Head(pooling="eos", eos_token_id=-1 if eos == OLD_EOS else eos, projection=projection),
        )


def layer_ports(prefix: str, layer, config: EncoderConfig) -> list[Port]:
    """One layer (``encoder.layers.{i}.``): ``layer_norm1``, attention, ``layer_norm2``, ``mlp.fc1`` / ``fc2``."""
    return [
        *norm_ports(f"{prefix}layer_norm1", layer.attention_norm),
        *attention_ports(f"{prefix}self_attn.", layer.attention, config, ATTENTION_NAMES),
        *norm_ports(f"{prefix}layer_norm2", layer.output_norm),
        *dense_ports(f"{prefix}mlp.fc1", layer.intermediate),
        *dense_ports(f"{prefix}mlp.fc2", layer.output_dense),
    ]


def weight_ports(config: EncoderConfig, model) -> list[Port]:
    """The flat list of (checkpoint name, Keras variable, transform) (``text_model.`` stripped); a whole CLIP
    checkpoint's vision tower is not read."""
    ports: list[Port] = [
        ("embeddings.token_embedding.weight", model.token_embedding.embeddings, keep),
        ("embeddings.position_embedding.weight", model.positions.table.embeddings, keep),
    ]
    for i, layer in enumerate(model.encoder_layers):
        ports += layer_ports(f"encoder.layers.{i}.", layer, config)
    ports += norm_ports("final_layer_norm", model.final_norm)
    if model.projection is not None:
        ports.append(("text_projection.weight", model.projection.kernel, linear))
    return ports
