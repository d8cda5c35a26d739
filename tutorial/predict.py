"""Class predictions of the tutorial classifier for many texts at once (evaluation, baselines).

One input's prediction is ``encoder.trace.class_probabilities(trace)``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from encoder.trace import pad_batch

if TYPE_CHECKING:
    from encoder.compiled import CompiledEncoder
    from encoder.sources import LoadedModel


def batch_probabilities(
    encoder: CompiledEncoder, sequences: Sequence[np.ndarray], batch_size: int = 64
) -> np.ndarray:
    """Class probabilities (N, C) for N token-id sequences (each (T_i,) int32, specials included).

    Sequences are batched by length and padded (padded keys are masked, so each row equals the sequence run
    alone, to float32 rounding); rows come back in input order.
    """
    if encoder.model.config.num_classes == 0:
        raise ValueError("this model has no classification head (num_classes is 0)")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    lengths = np.array([len(s) for s in sequences])
    order = np.argsort(lengths, kind="stable")
    result = np.zeros((len(sequences), encoder.model.config.num_classes), dtype=np.float32)
    for start in range(0, len(order), batch_size):
        chunk = order[start:start + batch_size]
        ids, segments, mask = pad_batch([sequences[i] for i in chunk], encoder.model.config.pad_token_id)
        outputs = encoder.forward_padded(ids, segments, mask)
        result[chunk] = outputs["probabilities"].numpy()
    return result


def predict_texts(model: LoadedModel, texts: Sequence[str], max_tokens: int | None = None) -> list[str]:
    """The most probable label for each text (tokenized as ``trace_text`` would)."""
    if not model.labels:
        raise ValueError(f"{model.name} has no class labels: it is not a classifier")
    sequences = [model.tokenizer.encode(text, max_tokens=max_tokens).token_ids for text in texts]
    probabilities = batch_probabilities(model.encoder, sequences)
    return [model.labels[i] for i in probabilities.argmax(axis=-1)]
