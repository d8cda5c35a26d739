"""Baselines for the tutorial classifier, in NumPy: majority class, and logistic regression on word presence.

Both report accuracy on the same test split as the trained encoder (``metrics.json``), so its score has a floor
to beat.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np
from tokenizers import Tokenizer

from tutorial.dataset import Example


def accuracy_by_source(examples: Sequence[Example], predicted: Sequence[str]) -> dict[str, float]:
    """Accuracy within each source (sources in first-seen order)."""
    right: Counter[str] = Counter()
    total: Counter[str] = Counter()
    for example, label in zip(examples, predicted):
        total[example.source] += 1
        right[example.source] += example.label == label
    return {source: right[source] / total[source] for source in total}


def accuracy(examples: Sequence[Example], predicted: Sequence[str]) -> float:
    return float(np.mean([e.label == p for e, p in zip(examples, predicted)])) if examples else float("nan")


def majority_baseline(train: Sequence[Example], test: Sequence[Example]) -> dict[str, Any]:
    """Always answer the training split's most common label (ties: the first in sorted order)."""
    counts = Counter(e.label for e in train)
    label = min(counts, key=lambda k: (-counts[k], k))
    predicted = [label] * len(test)
    return {"label": label, "test_accuracy": accuracy(test, predicted),
            "test_accuracy_by_source": accuracy_by_source(test, predicted)}


def bag_of_words_baseline(
    tokenizer: Tokenizer, splits: dict[str, Sequence[Example]], labels: Sequence[str],
    l2_values: Sequence[float] = (1e-5, 1e-4, 1e-3, 1e-2), steps: int = 300,
) -> dict[str, Any]:
    """Logistic regression on word presence (NumPy): the words are the tokenizer's normalised, pre-tokenised
    words (no sub-word pieces) seen at least twice in training; the L2 strength is picked on validation."""
    def words(text: str) -> set[str]:
        normalized = tokenizer.normalizer.normalize_str(text)
        return {w for w, _ in tokenizer.pre_tokenizer.pre_tokenize_str(normalized)}

    counts = Counter(w for e in splits["train"] for w in words(e.text))
    vocabulary = {w: i for i, w in enumerate(sorted(w for w, c in counts.items() if c >= 2))}
    index = {label: i for i, label in enumerate(labels)}

    def features(part: Sequence[Example]) -> tuple[np.ndarray, np.ndarray, int]:
        rows, columns = [], []
        for r, e in enumerate(part):
            ids = [vocabulary[w] for w in words(e.text) if w in vocabulary]
            rows += [r] * len(ids)
            columns += ids
        return np.array(rows, dtype=np.int64), np.array(columns, dtype=np.int64), len(part)

    data = {name: features(part) for name, part in splits.items()}
    targets = {name: np.array([index[e.label] for e in part]) for name, part in splits.items()}
    best: dict[str, Any] | None = None
    for l2 in l2_values:
        weights, bias = _fit_logistic(*data["train"], targets["train"], len(vocabulary), len(labels), l2, steps)
        validation = accuracy(splits["validation"], [labels[i] for i in
                                                     _logits(*data["validation"], weights, bias).argmax(-1)])
        if best is None or validation > best["validation_accuracy"]:
            predicted = [labels[i] for i in _logits(*data["test"], weights, bias).argmax(-1)]
            best = {"l2": l2, "vocabulary": len(vocabulary), "validation_accuracy": validation,
                    "test_accuracy": accuracy(splits["test"], predicted),
                    "test_accuracy_by_source": accuracy_by_source(splits["test"], predicted)}
    return best  # type: ignore[return-value]


def _logits(rows: np.ndarray, columns: np.ndarray, n: int, weights: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """(n, C) logits of a binary sparse matrix given as (row, column) pairs."""
    out = np.tile(bias, (n, 1))
    for c in range(weights.shape[1]):
        out[:, c] += np.bincount(rows, weights=weights[columns, c], minlength=n)
    return out


def _fit_logistic(rows, columns, n, y, features, classes, l2, steps, learning_rate=0.05):
    """Softmax regression by full-batch Adam on mean cross-entropy + l2/2 * |W|^2; deterministic."""
    weights, bias = np.zeros((features, classes)), np.zeros(classes)
    moments = [np.zeros_like(weights), np.zeros_like(weights), np.zeros_like(bias), np.zeros_like(bias)]
    onehot = np.eye(classes)[y]
    for step in range(1, steps + 1):
        logits = _logits(rows, columns, n, weights, bias)
        p = np.exp(logits - logits.max(axis=1, keepdims=True))
        residual = (p / p.sum(axis=1, keepdims=True) - onehot) / n  # (n, C)
        grad_w = np.stack([np.bincount(columns, weights=residual[rows, c], minlength=features)
                           for c in range(classes)], axis=1) + l2 * weights
        grad_b = residual.sum(axis=0)
        for param, grad, m, v in ((weights, grad_w, moments[0], moments[1]), (bias, grad_b, moments[2], moments[3])):
            m *= 0.9
            m += 0.1 * grad
            v *= 0.999
            v += 0.001 * grad**2
            param -= learning_rate * (m / (1 - 0.9**step)) / (np.sqrt(v / (1 - 0.999**step)) + 1e-8)
    return weights, bias
