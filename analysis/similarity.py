"""Why are these two similar? The cosine of two mean-pooled sentence embeddings, split exactly into token pairs.

A mean-pooled model embeds text A as a = mean_i h_i and text B as b = mean_j g_j, where h (n, D) and g (m, D) are
the last hidden states of every token the model pools (special tokens included). Their cosine is bilinear in the
tokens:

    cos(a, b) = a · b / (‖a‖ ‖b‖) = Σ_ij (h_i · g_j) / (n · m · ‖a‖ · ‖b‖)

so cell (i, j) is token pair (i, j)'s share of the cosine, and the n × m cells sum to it exactly. L2-normalising the
embedding (sentence-transformers' ``Normalize``) does not change a cosine, so the split holds for every mean-pooled
model; a model that pools the first token ([CLS]) has no such split and is refused.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import numpy as np

from analysis.gradients import TokenAttribution, cosine_objective, integrated_gradients
from encoder.errors import AnalysisError
from encoder.trace import EncoderTrace, trace_text

if TYPE_CHECKING:
    from analysis.inputs import Inputs, Options
    from encoder.sources import LoadedModel

NO_SECOND_TEXT = ("Type a second sentence to compare (the sidebar's second sentence; --pair on the command line): "
                  "each text is traced alone and the cosine of their embeddings is split into token pairs.")


@dataclass(frozen=True)
class SimilaritySplit:
    """The cosine of A's and B's sentence embeddings as token-pair contributions.

    Attributes:
        contributions: (n, m) float64, cell (i, j) = (h_i · g_j) / (n · m · ‖a‖ · ‖b‖); sums to ``cosine``.
        tokens_a, tokens_b: the tokens of each side as the model pools them (n and m of them).
        readable_a, readable_b: the same tokens as people read them (``EncoderTrace.readable_tokens``).
        cosine: a · b / (‖a‖ ‖b‖) of the mean-pooled last hidden states.
        model_cosine: the cosine of the model's own ``outputs["embedding"]`` of each side (a second computation).
        text_a, text_b: the two texts, each traced alone.
        gradients_a, gradients_b: integrated gradients of f = cosine(A, B) over each text's tokens, the other
            text's embedding held fixed (``similarity_gradients``; None from ``similarity_split`` alone).
    """

    contributions: np.ndarray
    tokens_a: tuple[str, ...]
    tokens_b: tuple[str, ...]
    readable_a: tuple[str, ...]
    readable_b: tuple[str, ...]
    cosine: float
    model_cosine: float
    text_a: str
    text_b: str
    gradients_a: TokenAttribution | None = None
    gradients_b: TokenAttribution | None = None

    def rows(self) -> list[dict]:
        """One dict per token pair: a_index, a_token, b_index, b_token, contribution."""
        return [{"a_index": i, "a_token": a, "b_index": j, "b_token": b,
                 "contribution": float(self.contributions[i, j])}
                for i, a in enumerate(self.tokens_a) for j, b in enumerate(self.tokens_b)]


def check_mean_pooling(model: LoadedModel) -> None:
    """Raise ``AnalysisError`` unless ``model`` mean-pools its tokens into its sentence embedding."""
    pooling = model.config.pooling
    if pooling != "mean":
        raise AnalysisError(f"the similarity split needs a mean-pooled sentence embedding; {model.name} pools "
                            f"{'the first token ([CLS])' if pooling == 'cls' else repr(pooling)}, whose cosine "
                            "does not split into token pairs")


def similarity_split(trace_a: EncoderTrace, trace_b: EncoderTrace) -> SimilaritySplit:
    """Split the cosine of two single-text traces' mean-pooled last hidden states into token pairs (module doc).

    Raises:
        AnalysisError: traces of different models, a trace of a sentence pair, or a zero embedding.
    """
    if trace_a.model != trace_b.model:
        raise AnalysisError(f"the two texts were traced by different models: {trace_a.model} and {trace_b.model}")
    for name, trace in (("A", trace_a), ("B", trace_b)):
        if trace.pair is not None:
            raise AnalysisError(f"text {name} must be traced alone, not as a sentence pair")
    h = trace_a.hidden[-1].astype(np.float64)  # (n, D)
    g = trace_b.hidden[-1].astype(np.float64)  # (m, D)
    a, b = h.mean(axis=0), g.mean(axis=0)  # (D,)
    norms = float(np.linalg.norm(a) * np.linalg.norm(b))
    if norms == 0.0:
        raise AnalysisError("a sentence embedding is zero, so its cosine is undefined")
    contributions = (h @ g.T) / (len(h) * len(g) * norms)  # (n, m)
    return SimilaritySplit(
        contributions=contributions,
        tokens_a=trace_a.tokens, tokens_b=trace_b.tokens,
        readable_a=trace_a.readable_tokens, readable_b=trace_b.readable_tokens,
        cosine=float(a @ b / norms),
        model_cosine=_cosine(trace_a.outputs["embedding"], trace_b.outputs["embedding"]),
        text_a=trace_a.text, text_b=trace_b.text,
    )


def explain_similarity(model: LoadedModel, text_a: str, text_b: str) -> SimilaritySplit:
    """Trace ``text_a`` and ``text_b`` each alone with ``model`` and split their embeddings' cosine.

    Raises:
        AnalysisError: the model does not mean-pool (``check_mean_pooling``).

    Example:
        >>> split = explain_similarity(load_source("minilm"), "A cat sat.", "A dog sat.")  # doctest: +SKIP
        >>> round(split.contributions.sum(), 6) == round(split.model_cosine, 6)  # doctest: +SKIP
        True
    """
    check_mean_pooling(model)
    trace_a, trace_b = trace_text(model, text_a), trace_text(model, text_b)
    return replace(similarity_split(trace_a, trace_b), gradients_a=similarity_gradients(model, trace_a, trace_b, "B"),
                   gradients_b=similarity_gradients(model, trace_b, trace_a, "A"))


def similarity_gradients(model: LoadedModel, trace: EncoderTrace, other: EncoderTrace,
                         other_name: str) -> TokenAttribution:
    """Integrated gradients over ``trace``'s tokens of f = cosine(its mean-pooled embedding, ``other``'s), the
    other text's embedding held fixed; the baseline pads this text's non-special tokens. The attributions sum to
    cos(A, B) - cos(baseline, B) up to the completeness error."""
    pooled = np.asarray(other.hidden[-1], np.float64).mean(axis=0)
    return integrated_gradients(model, trace, goal=cosine_objective(pooled, f"cos(text, text {other_name})"))


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


# ---------------------------------------------------------------------------------------------------------------
# The registry's "why similar?": the trace's text and its pair, each traced alone


def similarity_limit(trace: EncoderTrace) -> str | None:
    """``NO_SECOND_TEXT`` when the trace has no second sentence, else None."""
    return NO_SECOND_TEXT if trace.pair is None else None


def compute_similarity(inputs: Inputs, options: Options) -> SimilaritySplit:
    """``explain_similarity`` of the trace's text and its pair (AnalysisError ``NO_SECOND_TEXT`` without one)."""
    trace = inputs.trace
    if trace.pair is None:
        raise AnalysisError(NO_SECOND_TEXT)
    return explain_similarity(inputs.model(), trace.text, trace.pair)
