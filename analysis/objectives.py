"""The scalars a gradient explains (``analysis.gradients``): functions of the model's outputs, one value per batch
row, for ``CompiledEncoder.input_gradients`` and ``attention_gradients``.

Each objective is ``f(model, outputs, target, direction) -> (B,)``: ``model`` the ``TransformerEncoder``,
``outputs`` its output dict (``hidden`` (B, L + 1, T, D), ``probabilities`` (B, C) for a classifier, ...),
``target`` (B,) int32 a class and ``direction`` (B, D) float32 a vector (each objective reads the one it needs).
They run inside the encoder's compiled gradient graph, so they use ``keras.ops``, imported inside the functions:
importing this module (like every analysis module) loads no TensorFlow.
"""

from __future__ import annotations

from collections.abc import Callable


def probability(model, outputs: dict, target, direction):
    """(B,): the probability of class ``target`` (``direction`` unused)."""
    from keras import ops

    return ops.take_along_axis(outputs["probabilities"], ops.expand_dims(target, 1), axis=1)[:, 0]


def projection(model, outputs: dict, target, direction):
    """(B,): the pooled vector (``TransformerEncoder.pool`` of the last hidden state, before any normalisation)
    dotted with ``direction`` (``target`` unused)."""
    from keras import ops

    return ops.sum(_pooled(model, outputs) * direction, axis=-1)


def cosine(model, outputs: dict, target, direction):
    """(B,): the cosine between the pooled vector (as ``projection``) and ``direction`` (``target`` unused)."""
    from keras import ops

    pooled = _pooled(model, outputs)
    return ops.sum(pooled * direction, axis=-1) / (ops.norm(pooled, axis=-1) * ops.norm(direction, axis=-1))


def _pooled(model, outputs: dict):
    """(B, D): the pooled last hidden state of an unpadded batch, before any normalisation."""
    return model.pool(outputs["hidden"][:, -1], None)


ObjectiveFunction = Callable[..., object]  # (model, outputs, target (B,), direction (B, D)) -> (B,) tensor
# ``analysis.gradients.Objective.kind`` -> its function.
OBJECTIVES: dict[str, ObjectiveFunction] = {"probability": probability, "projection": projection, "cosine": cosine}
