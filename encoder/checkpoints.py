"""Hugging Face BERT-family import: a pure config mapping plus an explicit, shape-checked weight port.

Weights are read with ``safetensors.numpy`` (no PyTorch). Hugging Face stores Linear weights as (out, in);
Keras ``EinsumDense``/``Dense`` kernels are (in, ...), hence the transposes below.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from encoder.config import EncoderConfig
from encoder.errors import CheckpointError
from encoder.model import TransformerEncoder

SUPPORTED_MODEL_TYPES = ("bert",)
SUPPORTED_ACTIVATIONS = {"gelu": "gelu", "relu": "relu"}


def convert_config(hf_config: dict[str, Any]) -> EncoderConfig:
    """Map a Hugging Face BERT ``config.json`` to an EncoderConfig (pure function).

    Raises:
        CheckpointError: an architecture or option we do not run, named with what to do.
    """
    model_type = hf_config.get("model_type")
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise CheckpointError(
            f"model_type {model_type!r} is not supported; Headlight runs BERT-family encoders "
            f"(model_type {', '.join(map(repr, SUPPORTED_MODEL_TYPES))}) with absolute positions."
        )
    activation = hf_config.get("hidden_act", "gelu")
    if activation not in SUPPORTED_ACTIVATIONS:
        raise CheckpointError(
            f"hidden_act {activation!r} is not supported; expected one of {', '.join(SUPPORTED_ACTIVATIONS)}."
        )
    position_type = hf_config.get("position_embedding_type", "absolute")
    if position_type != "absolute":
        raise CheckpointError(
            f"position_embedding_type {position_type!r} is not supported; only 'absolute' positions are."
        )
    try:
        return EncoderConfig(
            vocab_size=int(hf_config["vocab_size"]),
            num_layers=int(hf_config["num_hidden_layers"]),
            num_heads=int(hf_config["num_attention_heads"]),
            d_model=int(hf_config["hidden_size"]),
            dff=int(hf_config["intermediate_size"]),
            max_positions=int(hf_config.get("max_position_embeddings", 512)),
            positional="learned",
            activation=SUPPORTED_ACTIVATIONS[activation],
            type_vocab_size=int(hf_config.get("type_vocab_size", 2)),
            scale_embeddings=False,
            embedding_layer_norm=True,
            layer_norm_epsilon=float(hf_config.get("layer_norm_eps", 1e-12)),
            dropout=0.0,
            pad_token_id=int(hf_config.get("pad_token_id", 0) or 0),
        )
    except KeyError as error:
        raise CheckpointError(f"config.json lacks the field {error.args[0]!r}") from error
    except ValueError as error:
        raise CheckpointError(f"config.json describes an impossible model: {error}") from error


def _linear(weights: np.ndarray) -> np.ndarray:
    return weights.T  # HF Linear is (out, in); Keras kernels are (in, out)


def weight_ports(config: EncoderConfig, model: TransformerEncoder) -> list[tuple[str, Any, Callable]]:
    """The flat list of (checkpoint name, Keras variable, transform), one row per tensor we load."""
    d, h, dh = config.d_model, config.num_heads, config.head_dim
    keep = np.asarray
    ports: list[tuple[str, Any, Callable]] = [
        ("embeddings.word_embeddings.weight", model.token_embedding.embeddings, keep),
        ("embeddings.position_embeddings.weight", model.position_embedding.embeddings, keep),
        ("embeddings.token_type_embeddings.weight", model.segment_embedding.embeddings, keep),
        ("embeddings.LayerNorm.weight", model.embedding_norm.gamma, keep),
        ("embeddings.LayerNorm.bias", model.embedding_norm.beta, keep),
    ]
    for i, layer in enumerate(model.encoder_layers):
        prefix = f"encoder.layer.{i}."
        attention = layer.attention
        for name, dense in (
            ("query", attention.query_dense),
            ("key", attention.key_dense),
            ("value", attention.value_dense),
        ):
            ports += [
                (f"{prefix}attention.self.{name}.weight", dense.kernel, lambda w: w.T.reshape(d, h, dh)),
                (f"{prefix}attention.self.{name}.bias", dense.bias, lambda b: b.reshape(h, dh)),
            ]
        ports += [
            (f"{prefix}attention.output.dense.weight", attention.output_dense.kernel,
             lambda w: w.T.reshape(h, dh, d)),
            (f"{prefix}attention.output.dense.bias", attention.output_dense.bias, keep),
            (f"{prefix}attention.output.LayerNorm.weight", layer.attention_norm.gamma, keep),
            (f"{prefix}attention.output.LayerNorm.bias", layer.attention_norm.beta, keep),
            (f"{prefix}intermediate.dense.weight", layer.intermediate.kernel, _linear),
            (f"{prefix}intermediate.dense.bias", layer.intermediate.bias, keep),
            (f"{prefix}output.dense.weight", layer.output_dense.kernel, _linear),
            (f"{prefix}output.dense.bias", layer.output_dense.bias, keep),
            (f"{prefix}output.LayerNorm.weight", layer.output_norm.gamma, keep),
            (f"{prefix}output.LayerNorm.bias", layer.output_norm.beta, keep),
        ]
    return ports


def _canonical_names(weights: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Strip a ``bert.`` prefix and rename old ``gamma``/``beta`` layer-norm names."""
    renamed = {}
    for name, value in weights.items():
        if name.startswith("bert."):
            name = name[len("bert."):]
        name = name.replace("LayerNorm.gamma", "LayerNorm.weight").replace("LayerNorm.beta", "LayerNorm.bias")
        renamed[name] = value
    return renamed


def port_weights(model: TransformerEncoder, weights: dict[str, np.ndarray], source: str) -> None:
    """Copy checkpoint tensors into the model, checking every name and shape first."""
    weights = _canonical_names(weights)
    ports = weight_ports(model.config, model)
    missing = [name for name, _, _ in ports if name not in weights]
    if missing:
        shown = ", ".join(missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
        raise CheckpointError(f"{source} lacks {len(missing)} tensors the model needs: {shown}")
    values = []
    for name, variable, transform in ports:
        value = np.asarray(transform(weights[name]), dtype=np.float32)
        if tuple(value.shape) != tuple(variable.shape):
            raise CheckpointError(
                f"{source}: {name} has shape {tuple(weights[name].shape)}, which gives {tuple(value.shape)} "
                f"but the model expects {tuple(variable.shape)}; config.json and the weights disagree."
            )
        values.append(value)
    for (_, variable, _), value in zip(ports, values):
        variable.assign(value)


def read_hf_config(folder: Path) -> dict[str, Any]:
    path = folder / "config.json"
    if not path.is_file():
        raise CheckpointError(f"{folder} has no config.json; a Hugging Face model folder needs one.")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise CheckpointError(f"{path} is not valid JSON: {error}") from error
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} should hold a JSON object")
    return data


def read_safetensors(folder: Path) -> dict[str, np.ndarray]:
    """All tensors of ``model.safetensors`` (or sharded ``model-*.safetensors``) as NumPy arrays."""
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    files = sorted(folder.glob("*.safetensors"))
    if not files:
        if any(folder.glob("*.bin")) or any(folder.glob("*.pt")) or any(folder.glob("*.h5")):
            raise CheckpointError(
                f"{folder} holds only PyTorch/TF weights (.bin/.pt/.h5). Headlight reads safetensors only "
                "(no PyTorch needed): convert once with `transformers` "
                "(model.save_pretrained(folder, safe_serialization=True))."
            )
        raise CheckpointError(f"{folder} has no model.safetensors.")
    weights: dict[str, np.ndarray] = {}
    for file in files:
        try:
            weights.update(load_file(str(file)))
        except (SafetensorError, OSError, ValueError) as error:
            raise CheckpointError(f"{file} is not a readable safetensors file: {error}") from error
    return weights


def load_hf_folder(folder: str | Path) -> TransformerEncoder:
    """Build a TransformerEncoder from a Hugging Face BERT-family folder (config.json + safetensors)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise CheckpointError(f"{folder} is not a folder.")
    config = _sentence_transformer_pooling(folder, convert_config(read_hf_config(folder)))
    weights = read_safetensors(folder)
    model = TransformerEncoder(config, name="encoder")
    port_weights(model, weights, str(folder))
    return model


def _sentence_transformer_pooling(folder: Path, config: EncoderConfig) -> EncoderConfig:
    """Read sentence-transformers' pooling/normalisation (modules.json) so ``embedding`` matches its output."""
    modules_path = folder / "modules.json"
    if not modules_path.is_file():
        return config
    try:
        modules = json.loads(modules_path.read_text(encoding="utf-8"))
        types = [m.get("type", "") for m in modules]
        pooling_path = folder / "1_Pooling" / "config.json"
        pooling = json.loads(pooling_path.read_text(encoding="utf-8")) if pooling_path.is_file() else {}
    except (ValueError, AttributeError, OSError):
        return config
    return dataclasses.replace(
        config,
        pooling="cls" if pooling.get("pooling_mode_cls_token") else "mean",
        normalize_embedding=any(t.endswith("Normalize") for t in types),
    )
