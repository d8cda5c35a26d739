"""The difference between the attention of two traces of the same shape (two models, or a minimal pair), and a
minimal pair through a model that reads its output at one token (CLIP's end-of-text token): how that token's row
changes, layer by layer, and how close the two outputs are."""

from __future__ import annotations

from dataclasses import dataclass
from difflib import SequenceMatcher

import numpy as np

from analysis.divergence import head_divergence
from analysis.flow import attention_rollout
from analysis.pooled import PooledRow, pooled_row
from encoder.errors import AnalysisError
from encoder.trace import EncoderTrace


@dataclass(frozen=True, eq=False)
class AttentionDiff:
    """Two traces of the same length compared head by head.

    ``difference`` (L, H, T, T) float32 is ``b - a``; ``divergence`` (L, H) float64 the mean over queries of
    JS(a row, b row) in nats. ``tokens_a`` / ``tokens_b`` label the axes: the tokens as people read them
    (``EncoderTrace.readable_tokens``; equal when one text went through two models).
    """

    label_a: str
    label_b: str
    tokens_a: tuple[str, ...]
    tokens_b: tuple[str, ...]
    difference: np.ndarray
    divergence: np.ndarray

    def ranking(self) -> np.ndarray:
        """(N, 2) int64 ``(layer, head)`` pairs, the most changed head first (ties: lower layer, then head)."""
        flat = self.divergence.ravel()
        order = np.lexsort((np.arange(flat.size), -flat))
        return np.stack(np.divmod(order, self.divergence.shape[1]), axis=1).astype(np.int64)

    def rows(self) -> list[dict]:
        """One dict per head, ranked: rank, layer, head, JS divergence, max |difference|."""
        peak = np.abs(self.difference).max(axis=(2, 3))
        return [
            {"rank": rank + 1, "layer": int(layer), "head": int(head),
             "js_divergence": float(self.divergence[layer, head]), "max_abs_difference": float(peak[layer, head])}
            for rank, (layer, head) in enumerate(self.ranking())
        ]


def diff_traces(
    a: EncoderTrace, b: EncoderTrace, label_a: str | None = None, label_b: str | None = None
) -> AttentionDiff:
    """Compare two traces: the same text through two models that share a tokenizer, or a minimal pair (two texts
    with the same number of tokens) through one model.

    Raises:
        AnalysisError: different token counts (both named), different tokens for the same text (the models do not
            share a tokenizer), or models of different shapes.
    """
    same_input = a.text == b.text and a.pair == b.pair
    if a.num_tokens != b.num_tokens:
        what = "the two models tokenize the text differently" if same_input else "a minimal pair needs equal lengths"
        raise AnalysisError(
            f"Cannot compare: the first input has {a.num_tokens} tokens, the second {b.num_tokens} ({what})."
        )
    if same_input and a.tokens != b.tokens:
        raise AnalysisError(
            f"Cannot compare: the same text gives different tokens ({a.num_tokens} and {b.num_tokens}); the two "
            "models must share a tokenizer."
        )
    if a.attention.shape[:2] != b.attention.shape[:2]:
        raise AnalysisError(
            f"Cannot compare models of different shapes: {a.num_layers}x{a.num_heads} and "
            f"{b.num_layers}x{b.num_heads} (layers x heads)."
        )
    difference = b.attention.astype(np.float32) - a.attention.astype(np.float32)
    divergence = head_divergence(a.attention, b.attention)
    return AttentionDiff(label_a or a.model, label_b or b.model, a.readable_tokens, b.readable_tokens, difference,
                         divergence)


@dataclass(frozen=True, eq=False)
class PooledDiff:
    """A minimal pair through a model that reads its output at one token (``analysis.pooled``), seen from that
    token: its row of a rolled-out token matrix (attention rollout, ALTI, value zeroing) after every layer in each
    text, lined up token by token.

    The two token sequences are aligned by their token ids (``difflib``): tokens both texts share are one column
    each; each stretch that differs ("red" in one, "bl", "ue" in the other) is one column, its shares summed on each
    side. C columns in all.

    Attributes:
        label_a, label_b: the two sides ("first text", "second text").
        pooled_a, pooled_b: each text's ``PooledRow`` (its position and token).
        columns: (C,) the column labels: a shared token, or "first → second" for a changed stretch.
        changed: (C,) bool, True for a changed stretch.
        shares_a, shares_b: (L, C) float64, the pooled token's row after each layer, per column; rows sum to 1.
        cosines: {"pooled": cos of the two pooled vectors (``outputs["pooled"]``), "embedding": cos of the two
            output embeddings (``outputs["embedding"]``, CLIP's ``text_embeds``)}, those the traces have.
        note: why the pair is compared this way when the token counts differ, else "".
        method: the rolled-out matrix the rows come from ("attention rollout", "ALTI", "value zeroing").
    """

    label_a: str
    label_b: str
    pooled_a: PooledRow
    pooled_b: PooledRow
    columns: tuple[str, ...]
    changed: np.ndarray
    shares_a: np.ndarray
    shares_b: np.ndarray
    cosines: dict[str, float]
    note: str
    method: str = "attention rollout"

    @property
    def change(self) -> np.ndarray:
        """(L, C) float64: ``shares_b - shares_a``, what the second text's pooled token draws on more."""
        return self.shares_b - self.shares_a

    @property
    def layer_change(self) -> np.ndarray:
        """(L,) float64: per layer, the total variation distance of the two rows (half their L1 distance), 0 to 1."""
        return 0.5 * np.abs(self.change).sum(axis=1)

    def rows(self) -> list[dict]:
        """One dict per layer and column: layer, token, changed, share_a, share_b, change."""
        change = self.change
        return [{"layer": layer, "token": column, "changed": bool(self.changed[c]),
                 "share_a": float(self.shares_a[layer, c]), "share_b": float(self.shares_b[layer, c]),
                 "change": float(change[layer, c])}
                for layer in range(change.shape[0]) for c, column in enumerate(self.columns)]


Column = tuple[list[int], list[int], str, bool]  # positions in a, positions in b, label, changed


def aligned_columns(a: EncoderTrace, b: EncoderTrace) -> list[Column]:
    """The columns of ``PooledDiff``, in text order: the positions of ``a`` and of ``b`` each holds (one each for a
    shared token; a changed stretch holds its tokens on either side, possibly none on one), its label, and whether
    it is a changed stretch."""
    matcher = SequenceMatcher(None, a.token_ids.tolist(), b.token_ids.tolist(), autojunk=False)
    columns: list[Column] = []
    for tag, a0, a1, b0, b1 in matcher.get_opcodes():
        if tag == "equal":
            columns += [([i], [j], a.readable_tokens[i], False) for i, j in zip(range(a0, a1), range(b0, b1))]
        else:
            first, second = (" ".join(t.readable_tokens[lo:hi]) or "∅" for t, lo, hi in ((a, a0, a1), (b, b0, b1)))
            columns.append((list(range(a0, a1)), list(range(b0, b1)), f"{first} → {second}", True))
    return columns


def _cosine(u: np.ndarray, v: np.ndarray) -> float:
    u, v = np.asarray(u, np.float64).ravel(), np.asarray(v, np.float64).ravel()
    return float(u @ v / max(np.linalg.norm(u) * np.linalg.norm(v), 1e-300))


def pooled_diff(a: EncoderTrace, b: EncoderTrace, label_a: str = "first text", label_b: str = "second text",
                rolled: tuple[np.ndarray, np.ndarray] | None = None, method: str = "attention rollout") -> PooledDiff:
    """Compare two texts through one model from the token its output reads (``PooledDiff``); the texts may have
    different token counts.

    Args:
        a, b: the two traces.
        label_a, label_b: their names in titles.
        rolled: each text's rolled-out (L, T, T) token matrix of a method (``analysis.attribution.alti_layers``
            rolled out, ``ValueZeroing.rollout``), named by ``method``; default attention rollout (residual 0.5).

    Raises:
        AnalysisError: the traces come from different models, the model has no single output token (a mean- or
            [CLS]-pooled encoder), or ``rolled`` does not fit the traces.
    """
    if a.model != b.model or a.attention.shape[:2] != b.attention.shape[:2]:
        raise AnalysisError(f"The pooled-token comparison takes two texts through one model, got {a.model} and "
                            f"{b.model}.")
    row_a, row_b = pooled_row(a), pooled_row(b)
    if row_a is None or row_b is None:
        raise AnalysisError(f"{a.model} does not read its output at one token (it pools over all of them), so "
                            "there is no pooled-token row to compare.")
    if rolled is None:
        rolled = (attention_rollout(a.attention), attention_rollout(b.attention))
    columns = aligned_columns(a, b)
    shares = []
    for trace, matrix, row, side in ((a, rolled[0], row_a, 0), (b, rolled[1], row_b, 1)):
        expected = (trace.num_layers, trace.num_tokens, trace.num_tokens)
        if np.shape(matrix) != expected:
            raise AnalysisError(f"{method} must be {expected} for this text, got shape {np.shape(matrix)}")
        rows = np.asarray(matrix, np.float64)[:, row.index]  # (L, T)
        shares.append(np.stack([rows[:, column[side]].sum(axis=1) for column in columns], axis=1))  # (L, C)
    cosines = {name: _cosine(a.outputs[name], b.outputs[name]) for name in ("pooled", "embedding")
               if name in a.outputs and name in b.outputs}
    labels = tuple(column[2] for column in columns)
    changed = np.array([column[3] for column in columns], dtype=bool)
    note = ""
    if a.num_tokens != b.num_tokens:
        stretches = "; ".join(label for label, change in zip(labels, changed) if change)
        note = (f"The two texts have {a.num_tokens} and {b.num_tokens} tokens, so their attention cannot be "
                f"subtracted cell by cell; the {row_a.token} rows are compared on the tokens both share, each changed "
                f"stretch as one column ({stretches}).")
    return PooledDiff(label_a, label_b, row_a, row_b, labels, changed, shares[0], shares[1], cosines, note, method)
