"""Pieces every family port shares: reading config fields, the classifier head, and the transforms between
Hugging Face's tensors and our Keras variables.

Hugging Face stores ``nn.Linear`` weights as (out, in); Keras ``Dense`` kernels are (in, out) and the attention's
``EinsumDense`` kernels (D, H, dh) for query/key/value and (H, dh, D) for the output, hence the transposes.
GPT-2's ``Conv1D`` stores (in, out) already.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import numpy as np

from encoder.config import FIELDS, GROUPS, EncoderConfig
from encoder.errors import CheckpointError

Port = tuple[str, Any, Callable[[np.ndarray], np.ndarray]]  # (checkpoint name, Keras variable, transform)
# What every Hugging Face port sets the same way: embeddings used as stored (no sqrt(d) scaling), no dropout (we
# only run inference).
PORTED = {"scale_embeddings": False, "dropout": 0.0}
ACTIVATIONS = {"gelu": "gelu", "relu": "relu", "gelu_new": "gelu_new", "gelu_pytorch_tanh": "gelu_new",
               "silu": "silu", "quick_gelu": "quick_gelu"}


def keep(weights: np.ndarray) -> np.ndarray:
    return np.asarray(weights)


def linear(weights: np.ndarray) -> np.ndarray:
    """An ``nn.Linear`` weight (out, in) as a Keras kernel (in, out)."""
    return weights.T


def field(hf: Mapping[str, Any], *names: str, default: Any = None) -> Any:
    """The first of ``names`` present in ``config.json`` (families name the same thing differently)."""
    for name in names:
        if name in hf and hf[name] is not None:
            return hf[name]
    if default is None:
        raise CheckpointError(f"config.json lacks the field {names[0]!r}")
    return default


def pad_token(hf: Mapping[str, Any], vocab_size: int) -> int:
    """``pad_token_id`` (0 when absent), which must be a token id: we pad batches with it, RoBERTa numbers
    positions from it, and transformers itself refuses a ``padding_idx`` outside the token table."""
    pad = int(hf.get("pad_token_id") or 0)
    if not 0 <= pad < vocab_size:
        raise CheckpointError(
            f"pad_token_id {pad} is not a token id: the vocabulary has {vocab_size} tokens (0 to {vocab_size - 1}).")
    return pad


def activation(name: Any, key: str = "hidden_act") -> str:
    """Our name for the activation ``name`` that ``config.json`` gives under ``key``."""
    if name not in ACTIVATIONS:
        raise CheckpointError(f"config.json's {key} is not an activation Headlight runs; expected one of "
                              f"{', '.join(ACTIVATIONS)}.")
    return ACTIVATIONS[name]


def classifier_fields(hf: Mapping[str, Any], head_activation: str) -> dict[str, Any]:
    """``num_classes``, ``pooling`` and ``classifier_activation`` for a ``*ForSequenceClassification`` folder
    (its ``architectures`` say so), else no classifier."""
    architectures = hf.get("architectures") or []
    if not any(str(name).endswith("ForSequenceClassification") for name in architectures):
        return {}
    labels = hf.get("id2label") or {}
    count = int(hf.get("num_labels") or len(labels) or 2)
    return {"num_classes": count, "pooling": "cls", "classifier_activation": head_activation}


def is_encoder_decoder(hf: Mapping[str, Any]) -> bool:
    """Whether ``config.json`` describes a whole encoder-decoder (T5, BART): ``is_encoder_decoder`` (true when
    absent, as transformers' T5 and BART configs default it) and no ``*EncoderModel`` architecture (SD3's
    ``T5EncoderModel`` configs say ``is_encoder_decoder`` true too)."""
    architectures = [str(name) for name in hf.get("architectures") or []]
    return bool(hf.get("is_encoder_decoder", True)) and not any(name.endswith("EncoderModel")
                                                                 for name in architectures)


def generates(hf: Mapping[str, Any]) -> bool:
    """Whether an encoder-decoder's checkpoint has its LM head: a ``*ForConditionalGeneration`` architecture."""
    return any(str(name).endswith("ForConditionalGeneration") for name in hf.get("architectures") or [])


def labels(hf: Mapping[str, Any], config: EncoderConfig) -> tuple[str, ...]:
    """Class names from ``id2label`` (in id order) for a classifier, else ()."""
    if not config.num_classes:
        return ()
    names = hf.get("id2label") or {}
    return tuple(str(names.get(str(i), names.get(i, f"class {i}"))) for i in range(config.num_classes))


def build(**values: Any) -> EncoderConfig:
    """An EncoderConfig, with an impossible combination reported as our error. ``values`` are its fields and groups
    (``embeddings=Embeddings(...)``, ``positions=RotaryPositions(...)``), or flat names (``FLAT_DEFAULTS``: the
    BERT-like families' shared fields) with whole groups for what those do not say (``positions=...``)."""
    groups = {name: values.pop(name) for name in list(values) if name in GROUPS or name == "positions"}
    with described():
        if set(values) - set(FIELDS):  # flat names, then the groups given whole
            return dataclasses.replace(EncoderConfig(**values), **groups)
        return EncoderConfig(**values, **groups)


@contextmanager
def described() -> Iterator[None]:
    """Report a value the config refuses (a ValueError or TypeError of ``EncoderConfig`` or one of its groups) as
    our error: the config describes an impossible model."""
    try:
        yield
    except (TypeError, ValueError) as error:
        raise CheckpointError(f"config.json describes an impossible model: {error}") from error


def attention_ports(prefix: str, attention, config: EncoderConfig, names: Mapping[str, str]) -> list[Port]:
    """Query, key, value and output projections of one layer from ``nn.Linear`` tensors named
    ``{prefix}{names[part]}.weight`` / ``.bias`` for part in query, key, value, output."""
    d, h, dh = config.d_model, config.num_heads, config.head_dim
    ports: list[Port] = []
    for part, dense in (("query", attention.query_dense), ("key", attention.key_dense),
                        ("value", attention.value_dense)):
        ports += head_projection_ports(f"{prefix}{names[part]}", dense, config)
    dense = attention.output_dense
    ports.append((f"{prefix}{names['output']}.weight", dense.kernel, lambda w: reshaped(w.T, (h, dh, d))))
    ports.append((f"{prefix}{names['output']}.bias", dense.bias, keep))
    return ports


def head_projection_ports(name: str, dense, config: EncoderConfig) -> list[Port]:
    """A projection into heads (an ``EinsumDense`` with kernel (D, H, dh) and bias (H, dh)) from the ``nn.Linear``
    tensors ``{name}.weight`` / ``.bias``."""
    d, h, dh = config.d_model, config.num_heads, config.head_dim
    return [(f"{name}.weight", dense.kernel, lambda w: reshaped(w.T, (d, h, dh))),
            (f"{name}.bias", dense.bias, lambda b: reshaped(b, (h, dh)))]


def reshaped(weights: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """``weights`` as ``shape`` (the attention's (D, H, dh), (H, dh) and (H, dh, D)); a tensor of another size
    stays as it is, so ``port_weights`` reports both shapes as our error instead of NumPy failing to reshape."""
    return weights.reshape(shape) if weights.size == math.prod(shape) else weights


def dense_ports(name: str, dense, transform: Callable[[np.ndarray], np.ndarray] = linear) -> list[Port]:
    """A dense layer's weight and, when it has one, its bias."""
    bias = [(f"{name}.bias", dense.bias, keep)] if dense.bias is not None else []
    return [(f"{name}.weight", dense.kernel, transform), *bias]


def norm_ports(name: str, norm) -> list[Port]:
    """A layer norm's weight and, when it has one, its bias."""
    bias = [(f"{name}.bias", norm.beta, keep)] if norm.beta is not None else []
    return [(f"{name}.weight", norm.gamma, keep), *bias]


def classifier_ports(model, hidden: str | None, output: str) -> list[Port]:
    """The head on the pooled token: an optional dense layer (``hidden``: the pooler, RoBERTa's
    ``classifier.dense``, DistilBERT's ``pre_classifier``) and the output layer."""
    if model.classifier is None:
        return []
    ports = dense_ports(hidden, model.pre_classifier) if hidden and model.pre_classifier is not None else []
    return ports + dense_ports(output, model.classifier)
