"""EncoderTrace and the functions that make one: the single place where tensors become NumPy."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from encoder.errors import InputError

if TYPE_CHECKING:
    from encoder.sources import LoadedModel


@dataclass(frozen=True, eq=False)
class EncoderTrace:
    """Everything one forward pass of one input shows: plain NumPy, validated on construction.

    Shapes: T tokens, L layers, H heads, D model width, P positional-table rows.
    ``attention[layer, head, query, key]`` are weights after softmax (each row sums to 1).
    """

    model: str
    tokens: tuple[str, ...]
    token_ids: np.ndarray  # (T,) int32
    segment_ids: np.ndarray  # (T,) int32, 0 for sentence A, 1 for B
    special: np.ndarray  # (T,) bool: [CLS], [SEP], ...
    attention: np.ndarray  # (L, H, T, T) float32
    positional: np.ndarray  # (T, D) positional rows added to these tokens
    positional_table: np.ndarray  # (P, D) the whole table
    hidden: np.ndarray  # (L + 1, T, D), embeddings first
    outputs: dict[str, np.ndarray] = field(default_factory=dict)
    text: str = ""
    pair: str | None = None
    truncated: bool = False
    untruncated_length: int = 0  # tokens the input had before truncation
    labels: tuple[str, ...] = ()  # class names when outputs has "probabilities"

    def __post_init__(self) -> None:
        t = len(self.tokens)
        _expect(self.token_ids, "token_ids", (t,), t)
        _expect(self.segment_ids, "segment_ids", (t,), t)
        _expect(self.special, "special", (t,), t)
        if self.attention.ndim != 4:
            raise ValueError(f"attention must be (layers, heads, T, T), got shape {self.attention.shape}")
        layers, heads = self.attention.shape[:2]
        _expect(self.attention, "attention", (layers, heads, t, t), t)
        if self.positional_table.ndim != 2:
            raise ValueError(f"positional_table must be (P, D), got shape {self.positional_table.shape}")
        depth = self.positional_table.shape[1]
        _expect(self.positional, "positional", (t, depth), t)
        _expect(self.hidden, "hidden", (layers + 1, t, depth), t)
        probabilities = self.outputs.get("probabilities")
        if self.labels and probabilities is not None and len(self.labels) != probabilities.shape[-1]:
            raise ValueError(f"{len(self.labels)} labels for {probabilities.shape[-1]} class probabilities")

    @property
    def num_layers(self) -> int:
        return self.attention.shape[0]

    @property
    def num_heads(self) -> int:
        return self.attention.shape[1]

    @property
    def num_tokens(self) -> int:
        return len(self.tokens)

    @property
    def is_pair(self) -> bool:
        return bool(np.any(self.segment_ids == 1))

    def replace(self, **changes) -> EncoderTrace:
        return dataclasses.replace(self, **changes)

    def save(self, path: str | Path) -> Path:
        """Write the trace as a compressed NPZ (read it back with ``EncoderTrace.load``)."""
        path = Path(path)
        arrays = {
            "model": np.array(self.model),
            "tokens": np.array(self.tokens, dtype=str),
            "token_ids": self.token_ids,
            "segment_ids": self.segment_ids,
            "special": self.special,
            "attention": self.attention,
            "positional": self.positional,
            "positional_table": self.positional_table,
            "hidden": self.hidden,
            "text": np.array(self.text),
            "pair": np.array("" if self.pair is None else self.pair),
            "has_pair": np.array(self.pair is not None),
            "truncated": np.array(self.truncated),
            "untruncated_length": np.array(self.untruncated_length),
            "labels": np.array(self.labels, dtype=str),
        }
        arrays.update({f"outputs/{name}": value for name, value in self.outputs.items()})
        with path.open("wb") as handle:
            np.savez_compressed(handle, **arrays)
        return path

    @classmethod
    def load(cls, path: str | Path) -> EncoderTrace:
        with np.load(Path(path), allow_pickle=False) as data:
            return cls(
                model=str(data["model"]),
                tokens=tuple(str(t) for t in data["tokens"]),
                token_ids=data["token_ids"],
                segment_ids=data["segment_ids"],
                special=data["special"],
                attention=data["attention"],
                positional=data["positional"],
                positional_table=data["positional_table"],
                hidden=data["hidden"],
                outputs={k.split("/", 1)[1]: data[k] for k in data.files if k.startswith("outputs/")},
                text=str(data["text"]),
                pair=str(data["pair"]) if bool(data["has_pair"]) else None,
                truncated=bool(data["truncated"]),
                untruncated_length=int(data["untruncated_length"]),
                labels=tuple(str(t) for t in data["labels"]),
            )


def class_probabilities(trace: EncoderTrace) -> list[tuple[str, float]]:
    """The trace's prediction as (label, probability) pairs, most probable first (ties keep label order).

    Returns [] when the model has no classification head (no "probabilities" output). Labels the model did not
    name are called "class 0", "class 1", ...

    Example:
        >>> class_probabilities(trace_text(load_source("tutorial"), "a wonderful, moving film"))  # doctest: +SKIP
        [('positive', 0.97...), ('negative', 0.02...)]
    """
    probabilities = trace.outputs.get("probabilities")
    if probabilities is None:
        return []
    probabilities = np.asarray(probabilities, dtype=np.float64).reshape(-1)  # (C,)
    labels = trace.labels or tuple(f"class {i}" for i in range(len(probabilities)))
    order = np.argsort(-probabilities, kind="stable")
    return [(labels[i], float(probabilities[i])) for i in order]


def _expect(array: np.ndarray, name: str, shape: tuple[int, ...], tokens: int) -> None:
    if tuple(array.shape) != tuple(shape):
        raise ValueError(f"{name} has shape {tuple(array.shape)}, while {tokens} tokens need {shape}")


def trace_text(
    model: LoadedModel, text: str, pair: str | None = None, max_tokens: int | None = None
) -> EncoderTrace:
    """Tokenize ``text`` (+ ``pair``), run the encoder once, and return every layer's attention.

    Args:
        model: a LoadedModel from ``encoder.sources.load_source``.
        text: the sentence (sentence A).
        pair: optional second sentence (B); tokens of B get segment id 1.
        max_tokens: keep at most this many tokens (default and cap: the model's maximum positions).

    Raises:
        InputError: empty text, text over the character limit, max_tokens too small.

    Example:
        >>> trace = trace_text(load_source("minilm"), "The cat sat.")  # doctest: +SKIP
        >>> trace.attention.shape  # doctest: +SKIP
        (6, 12, 6, 6)
    """
    encoded = model.tokenizer.encode(text, pair, max_tokens)
    raw = model.encoder.forward(encoded.token_ids[None], encoded.segment_ids[None])
    return _make_trace(model, encoded, {name: to_numpy(value)[0] for name, value in raw.items()}, text, pair)


def trace_batch(
    model: LoadedModel,
    texts: Sequence[str],
    pairs: Sequence[str | None] | None = None,
    max_tokens: int | None = None,
    batch_size: int = 32,
) -> list[EncoderTrace]:
    """Trace many texts, batching inputs of similar length (padded keys are masked to weight 0).

    Each trace equals ``trace_text`` of the same input (to float32 rounding). Order is preserved.
    """
    if pairs is not None and len(pairs) != len(texts):
        raise InputError(f"{len(texts)} texts but {len(pairs)} pairs")
    pairs = list(pairs) if pairs is not None else [None] * len(texts)
    encoded = [model.tokenizer.encode(t, p, max_tokens) for t, p in zip(texts, pairs)]
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i].tokens))
    traces: list[EncoderTrace | None] = [None] * len(encoded)
    pad = model.config.pad_token_id
    for start in range(0, len(order), batch_size):
        chunk = order[start:start + batch_size]
        width = max(len(encoded[i].tokens) for i in chunk)
        ids = np.full((len(chunk), width), pad, dtype=np.int32)
        segments = np.zeros((len(chunk), width), dtype=np.int32)
        mask = np.zeros((len(chunk), width), dtype=bool)
        for row, i in enumerate(chunk):
            n = len(encoded[i].tokens)
            ids[row, :n], segments[row, :n], mask[row, :n] = encoded[i].token_ids, encoded[i].segment_ids, True
        raw = {name: to_numpy(value) for name, value in model.encoder.forward_padded(ids, segments, mask).items()}
        for row, i in enumerate(chunk):
            n = len(encoded[i].tokens)
            traces[i] = _make_trace(
                model, encoded[i], _unpad({k: v[row] for k, v in raw.items()}, n), texts[i], pairs[i]
            )
    return traces  # type: ignore[return-value]


class _DLPackTensor:
    """Adapter so ``np.from_dlpack`` accepts a TensorFlow tensor (TF hands out a bare capsule)."""

    def __init__(self, tensor):
        self.tensor = tensor

    def __dlpack__(self, stream=None, **kwargs):
        import tensorflow as tf

        return tf.experimental.dlpack.to_dlpack(self.tensor)

    def __dlpack_device__(self):
        return (1, 0)  # kDLCPU, device 0


def to_numpy(tensor) -> np.ndarray:
    """A read-only NumPy view of a CPU tensor without copying (75 MB of attention at 512 tokens), else a copy."""
    try:
        return np.from_dlpack(_DLPackTensor(tensor))
    except (RuntimeError, TypeError, ValueError, BufferError):
        return tensor.numpy()


def _unpad(outputs: dict[str, np.ndarray], n: int) -> dict[str, np.ndarray]:
    return {
        **outputs,
        "hidden": np.ascontiguousarray(outputs["hidden"][:, :n]),
        "attention": np.ascontiguousarray(outputs["attention"][:, :, :n, :n]),
    }


def _make_trace(model: LoadedModel, encoded, outputs: dict[str, np.ndarray], text: str, pair: str | None):
    table = model.positional_table
    extra = {k: v for k, v in outputs.items() if k not in ("hidden", "attention")}
    return EncoderTrace(
        model=model.name,
        tokens=encoded.tokens,
        token_ids=encoded.token_ids,
        segment_ids=encoded.segment_ids,
        special=encoded.special,
        attention=outputs["attention"],
        positional=table[: len(encoded.tokens)],
        positional_table=table,
        hidden=outputs["hidden"],
        outputs=extra,
        text=text,
        pair=pair,
        truncated=encoded.truncated,
        untruncated_length=encoded.untruncated_length,
        labels=model.labels,
    )
