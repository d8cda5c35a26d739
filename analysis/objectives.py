"""The scalars a gradient explains (``analysis.gradients``): functions of the model's outputs, one value per batch
row, for ``CompiledEncoder.input_gradients`` and ``attention_gradients``.

Each objective is ``f(ops, model, outputs, target, direction) -> (B,)``: ``ops`` the tensor operations the hook
hands over (``keras.ops``), ``model`` the ``TransformerEncoder``,
``outputs`` its output dict (``hidden`` (B, L + 1, T, D), ``probabilities`` (B, C) for a classifier, ...),
``target`` (B,) int32 a class and ``direction`` (B, D) float32 a vector (each objective reads the one it needs).
They run inside the encoder's compiled gradient graph on the ``ops`` they are given, so ``analysis/`` names no
tensor library (the layer rule of ``tests/test_imports.py``).
"""

from __future__ import annotations

from collections.abc import Callable


def probability(ops, model, outputs: dict, target, direction):
    """(B,): the probability of class ``target`` (``direction`` unused)."""
    return ops.take_along_axis(outputs["probabilities"], ops.expand_dims(target, 1), axis=1)[:, 0]


def projection(ops, model, outputs: dict, target, direction):
    """(B,): the pooled vector (``TransformerEncoder.pool`` of the last hidden state, before any normalisation)
    dotted with ``direction`` (``target`` unused)."""
    return ops.sum(_pooled(model, outputs) * direction, axis=-1)


def cosine(ops, model, outputs: dict, target, direction):
    """(B,): the cosine between the pooled vector (as ``projection``) and ``direction`` (``target`` unused)."""
    pooled = _pooled(model, outputs)
    return ops.sum(pooled * direction, axis=-1) / (ops.norm(pooled, axis=-1) * ops.norm(direction, axis=-1))


def _pooled(model, outputs: dict):
    """(B, D): the pooled last hidden state of an unpadded batch, before any normalisation (CLIP's, pooled at the
    end-of-text token after the final norm, is the model's own ``pooled`` output, or its ``embedding`` without a
    projection)."""
    if model.config.head.pooling == "eos":
        return outputs.get("pooled", outputs["embedding"])
    return model.pool(outputs["hidden"][:, -1], None)


ObjectiveFunction = Callable[..., object]  # (ops, model, outputs, target (B,), direction (B, D)) -> (B,) tensor
# ``analysis.gradients.Objective.kind`` -> its function.
OBJECTIVES: dict[str, ObjectiveFunction] = {"probability": probability, "projection": projection, "cosine": cosine}
