"""The faithfulness scoreboard for one text: each explanation's token importance against the model's own behaviour.

Shapes: T tokens, M methods, N non-special tokens (the ones ranked and removed). A method's importance of token
``j`` is the row the output reads of its (T, T) matrix: row 0 ([CLS]) for a [CLS]-pooled model, the end-of-text
token's for CLIP, the last token's for a decoder, the mean over rows for a mean-pooled one; the gradient methods'
per-token vectors (input x gradient, integrated gradients) are used directly (``gradient_vectors``). The ground
truth is leave-one-out: token ``j``'s id deleted from the input and the model run again; the output change is the
drop in the clean predicted class's probability for a classifier, else ``1 - cosine`` between the sentence
embeddings. Each method gets Spearman's rho against that effect, and AOPC:
the mean output change with its top ``k`` tokens removed, ``k = 1..K``, ``K = min(10, N)``. All shortened inputs
run through ``forward_padded`` in batches; nothing here imports TensorFlow.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from analysis import attribution, gradients, value_zeroing
from analysis.checks import Progress
from analysis.flow import attention_rollout
from analysis.perturb import check_pairing
from analysis.pooled import output_position
from encoder.errors import AnalysisError
from encoder.trace import EncoderTrace, pad_batch, to_numpy, trace_text

if TYPE_CHECKING:
    from analysis.inputs import Inputs, Options
    from encoder.sources import LoadedModel

MAX_DELETIONS = 10  # AOPC removes the top 1..K tokens, K = min(this, non-special tokens)
BATCH = 64  # shortened inputs per forward_padded call
CORPUS_MAX = 200  # sentences one app run may score (each re-runs the model ~100 times)
CORPUS_TOKENS = 128  # a corpus sentence is scored on at most this many tokens (bounds one run's work)


@dataclass(frozen=True, eq=False)
class Faithfulness:
    """How well each method's token importance matches the model's leave-one-out effects on one text.

    Attributes:
        methods: (M,) method names ("attention", "rollout", "value-zeroing", where the blocks decompose (post-LN
            BERT, pre-LN with a layer norm) "norm", "globenc", "alti", then "attention-gradient", "input-gradient",
            "integrated-gradients").
        tokens: (T,) the text's tokens.  positions: (N,) indices of the non-special tokens, the ones ranked.
        importance: (M, N) each method's importance of those tokens.
        loo: (N,) the output change with each of those tokens removed alone.
        spearman: (M,) Spearman's rho between ``importance[m]`` and ``loo``.
        aopc: (M,) mean output change with the method's top 1..K tokens removed.  deletions: K.
        output: what the output change measures (e.g. "drop in p(positive)").
    """

    methods: tuple[str, ...]
    tokens: tuple[str, ...]
    positions: np.ndarray
    importance: np.ndarray
    loo: np.ndarray
    spearman: np.ndarray
    aopc: np.ndarray
    deletions: int
    output: str

    def rows(self) -> list[dict]:
        """One dict per method: method, spearman, aopc."""
        return [{"method": m, "spearman": float(rho), "aopc": float(aopc)}
                for m, rho, aopc in zip(self.methods, self.spearman, self.aopc)]

    def token_rows(self) -> list[dict]:
        """One dict per ranked token: index, token, loo and each method's importance."""
        return [{"index": int(i), "token": self.tokens[i], "loo": float(self.loo[n]),
                 **{m: float(self.importance[k, n]) for k, m in enumerate(self.methods)}}
                for n, i in enumerate(self.positions)]


def ranks(values: np.ndarray) -> np.ndarray:
    """Ranks 1..n of a 1-D array, tied values sharing their average rank (float64)."""
    values = np.asarray(values, np.float64)
    order = np.argsort(values, kind="stable")
    ordered = values[order]
    starts = np.r_[True, ordered[1:] != ordered[:-1]]  # first element of each run of ties
    group = np.cumsum(starts) - 1
    first = np.flatnonzero(starts)
    last = np.r_[first[1:], len(values)] - 1
    out = np.empty(len(values))
    out[order] = (first[group] + last[group]) / 2 + 1
    return out


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman's rho: the Pearson correlation of the average ranks; NaN when either side is constant."""
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape or a.ndim != 1:
        raise AnalysisError(f"spearman needs two 1-D arrays of one length, got shapes {a.shape} and {b.shape}")
    ra, rb = ranks(a) - (len(a) + 1) / 2, ranks(b) - (len(b) + 1) / 2
    scale = np.sqrt((ra * ra).sum() * (rb * rb).sum())
    return float((ra * rb).sum() / scale) if scale > 0 else float("nan")


def token_maps(model: LoadedModel, trace: EncoderTrace) -> dict[str, np.ndarray]:
    """Each method's last-layer (T, T) token-to-token matrix; norm-based, GlobEnc and ALTI where the blocks decompose,
    value zeroing for every model within its size limit (``value_zeroing.size_limit``)."""
    maps = {"attention": trace.attention[-1].mean(axis=0, dtype=np.float64),
            "rollout": attention_rollout(trace.attention)[-1]}
    if value_zeroing.size_limit(trace.num_layers, trace.hidden.shape[-1], trace.num_tokens) is None:
        maps["value-zeroing"] = value_zeroing.value_zeroing(model, trace).rollout[-1]
    try:
        weights = [attribution.layer_weights(model, layer) for layer in range(trace.num_layers)]
    except AnalysisError:
        return maps
    maps["norm"] = attribution.norm_based(trace.hidden, trace.attention, weights)[-1].mean(axis=0)
    maps["globenc"] = attribution.rollout(attribution.globenc_layers(trace.hidden, trace.attention, weights))[-1]
    maps["alti"] = attribution.rollout(attribution.alti_layers(trace.hidden, trace.attention, weights))[-1]
    return maps


def gradient_vectors(model: LoadedModel, trace: EncoderTrace) -> dict[str, np.ndarray]:
    """Each gradient method's (T,) token importance (``analysis.gradients``; f is the predicted class's probability
    or the pooled vector's length): attention x gradient's last layer (head mean) through ``output_row`` like the
    maps, input x gradient and integrated gradients as they are (signed)."""
    attention = gradients.attention_gradient(model, trace).head_mean(-1)
    return {"attention-gradient": output_row(attention, model.config.pooling, trace),
            "input-gradient": gradients.input_gradient(model, trace).values,
            "integrated-gradients": gradients.integrated_gradients(model, trace).values}


def output_row(matrix: np.ndarray, pooling: str, trace: EncoderTrace) -> np.ndarray:
    """The row of a (T, T) matrix the output reads (``analysis.pooled.output_position``): row 0 for "cls" pooling,
    the end-of-text token's for "eos" (CLIP), the last token's for "last", the mean over rows for "mean"."""
    position = output_position(trace, pooling)
    return np.asarray(matrix).mean(axis=0) if position is None else np.asarray(matrix)[position]


def output_change(model: LoadedModel, trace: EncoderTrace, removals: Sequence[Sequence[int]]) -> np.ndarray:
    """The output change with each set of token positions deleted from the input: (len(removals),) float64.

    A classifier: the clean predicted class's probability minus its probability without the tokens. Otherwise:
    ``1 - cosine(embedding without the tokens, clean embedding)``.
    """
    inputs = [(np.delete(trace.token_ids, list(r)), np.delete(trace.segment_ids, list(r))) for r in removals]
    changes = []
    for start in range(0, len(inputs), BATCH):
        chunk = inputs[start:start + BATCH]
        ids, segments, mask = pad_batch([i for i, _ in chunk], model.config.pad_token_id, [s for _, s in chunk])
        outputs = {k: to_numpy(v) for k, v in model.encoder.forward_padded(ids, segments, mask).items()}
        changes.append(_change(trace, outputs))
    return np.concatenate(changes) if changes else np.zeros(0)


def _change(trace: EncoderTrace, outputs: dict[str, np.ndarray]) -> np.ndarray:
    clean = trace.outputs.get("probabilities")
    if clean is not None:
        predicted = int(np.argmax(clean))
        return float(clean[predicted]) - np.asarray(outputs["probabilities"], np.float64)[:, predicted]
    a, b = np.asarray(outputs["embedding"], np.float64), np.asarray(trace.outputs["embedding"], np.float64)
    return 1.0 - (a @ b) / np.maximum(np.linalg.norm(a, axis=-1) * np.linalg.norm(b), 1e-300)


def _output_name(trace: EncoderTrace) -> str:
    probabilities = trace.outputs.get("probabilities")
    if probabilities is None:
        return "1 - cosine to the clean embedding"
    predicted = int(np.argmax(probabilities))
    label = trace.labels[predicted] if predicted < len(trace.labels) else f"class {predicted}"
    return f"drop in p({label})"


def faithfulness(model: LoadedModel, trace: EncoderTrace) -> Faithfulness:
    """Score raw attention, rollout (and norm-based, GlobEnc, ALTI where the model allows) and the gradient
    methods (attention x gradient, input x gradient, integrated gradients) on ``trace``.

    Raises:
        AnalysisError: the trace is not this model's, or it has fewer than 2 non-special tokens.
    """
    check_pairing(model, trace)
    positions = np.flatnonzero(~np.asarray(trace.special, bool))
    if len(positions) < 2:
        raise AnalysisError(f"The scoreboard ranks the text's tokens, so it needs at least 2 besides [CLS] and "
                            f"[SEP]; this text has {len(positions)}.")
    maps = token_maps(model, trace)
    rows = {name: output_row(m, model.config.pooling, trace) for name, m in maps.items()}
    vectors = rows | gradient_vectors(model, trace)
    importance = np.stack([vector[positions] for vector in vectors.values()])  # (M, N)
    deletions = min(MAX_DELETIONS, len(positions))
    top = [positions[np.argsort(-row, kind="stable")] for row in importance]  # most important first
    removals = [[int(i)] for i in positions] + [list(order[:k]) for order in top for k in range(1, deletions + 1)]
    changes = output_change(model, trace, removals)
    loo = changes[:len(positions)]
    aopc = changes[len(positions):].reshape(len(vectors), deletions).mean(axis=1)
    rho = np.array([spearman(row, loo) for row in importance])
    return Faithfulness(tuple(vectors), trace.tokens, positions, importance, loo, rho, aopc, deletions,
                        _output_name(trace))


@dataclass(frozen=True, eq=False)
class CorpusFaithfulness:
    """The scoreboard over many sentences: each method's Spearman rho and AOPC per sentence, and their means.

    Shapes: S sentences scored, M methods. A sentence with fewer than 2 non-special tokens is skipped (counted in
    ``skipped``); a rho that is undefined on a sentence (a constant importance or effect), or a method that did not
    run on it (value zeroing past its size limit), is NaN there and left out of that method's mean.

    Attributes:
        methods: (M,) method names, as ``Faithfulness.methods``.
        texts: (S,) the sentences scored.
        spearman: (S, M) float64 rho per sentence and method (NaN where undefined).
        aopc: (S, M) float64 AOPC per sentence and method.
        skipped: sentences left out (too few tokens to rank).
        truncated: sentences scored on their first ``max_tokens`` tokens only.
        output: what the output change measures ("drop in p(predicted class)", "1 - cosine ...").
        corpus: the corpus' name ("the first 100 test sentences").
    """

    methods: tuple[str, ...]
    texts: tuple[str, ...]
    spearman: np.ndarray
    aopc: np.ndarray
    skipped: int
    output: str
    corpus: str = ""
    truncated: int = 0

    @property
    def mean_spearman(self) -> np.ndarray:
        """(M,) mean rho over the sentences where it is defined (NaN when it is defined on none)."""
        return _nanmean(self.spearman)

    @property
    def sem_spearman(self) -> np.ndarray:
        """(M,) the standard error of ``mean_spearman`` (sample standard deviation / sqrt(count))."""
        counts = np.isfinite(self.spearman).sum(axis=0)
        centred = np.where(np.isfinite(self.spearman), self.spearman - self.mean_spearman, 0.0)
        variance = (centred ** 2).sum(axis=0) / np.maximum(counts - 1, 1)
        return np.where(counts > 1, np.sqrt(variance / np.maximum(counts, 1)), np.nan)

    @property
    def best_share(self) -> np.ndarray:
        """(M,) the share of sentences on which each method has the highest rho (ties split evenly)."""
        finite = np.where(np.isfinite(self.spearman), self.spearman, -np.inf)
        best = finite == finite.max(axis=1, keepdims=True)
        best &= np.isfinite(finite.max(axis=1, keepdims=True))
        wins = best / np.maximum(best.sum(axis=1, keepdims=True), 1)
        return wins.sum(axis=0) / max(len(self.texts), 1)

    def rows(self) -> list[dict]:
        """One dict per method, best mean rho first: method, mean_spearman, sem, sentences, mean_aopc, best_share."""
        counts = np.isfinite(self.spearman).sum(axis=0)
        rows = [{"method": m, "mean_spearman": float(rho), "sem": float(sem), "sentences": int(n),
                 "mean_aopc": float(aopc), "best_share": float(best)}
                for m, rho, sem, n, aopc, best in zip(self.methods, self.mean_spearman, self.sem_spearman, counts,
                                                      _nanmean(self.aopc), self.best_share)]
        return sorted(rows, key=lambda row: -row["mean_spearman"] if np.isfinite(row["mean_spearman"]) else np.inf)

    def sentence_rows(self) -> list[dict]:
        """One dict per sentence: index, text and each method's rho."""
        return [{"index": s, "text": text, **{m: float(self.spearman[s, k]) for k, m in enumerate(self.methods)}}
                for s, text in enumerate(self.texts)]


def _nanmean(values: np.ndarray) -> np.ndarray:
    counts = np.isfinite(values).sum(axis=0)
    totals = np.where(np.isfinite(values), values, 0.0).sum(axis=0)
    return np.where(counts > 0, totals / np.maximum(counts, 1), np.nan)


def corpus_faithfulness(model: LoadedModel, texts: Sequence[str], progress: Progress | None = None,
                        corpus: str = "", max_tokens: int | None = None) -> CorpusFaithfulness:
    """Run the one-text scoreboard (``faithfulness``) on each of ``texts`` (each traced alone) and collect it.

    Args:
        model: the LoadedModel.
        texts: the sentences (at least one with 2 or more non-special tokens).
        progress: called as ``progress(done, total)`` after each sentence.
        corpus: the corpus' name, kept with the result.
        max_tokens: trace at most this many tokens per sentence (the model's limit when None).

    Raises:
        AnalysisError: no sentence has 2 tokens to rank.
    """
    limit = {} if max_tokens is None else {"max_tokens": max_tokens}
    methods: dict[str, None] = {}  # in order of first appearance (a long sentence may lack a size-limited method)
    kept, scored, skipped, truncated = [], [], 0, 0
    classifier, output = False, ""
    for done, text in enumerate(texts, start=1):
        trace = trace_text(model, text, **limit)
        truncated += trace.truncated
        if (~np.asarray(trace.special, bool)).sum() < 2:
            skipped += 1
        else:
            scores = faithfulness(model, trace)
            methods.update(dict.fromkeys(scores.methods))
            classifier, output = "probabilities" in trace.outputs, scores.output
            kept.append(text)
            scored.append(scores)
        if progress is not None:
            progress(done, len(texts))
    if not scored:
        raise AnalysisError("no sentence of the corpus has 2 tokens to rank besides the special tokens")
    names = tuple(methods)
    rho, aopc = (np.array([[dict(zip(s.methods, getattr(s, field))).get(m, np.nan) for m in names] for s in scored],
                          np.float64) for field in ("spearman", "aopc"))
    return CorpusFaithfulness(names, tuple(kept), rho, aopc, skipped,
                              "drop in p(predicted class)" if classifier else output, corpus, truncated)


def compute_faithfulness(inputs: Inputs, options: Options) -> Faithfulness | CorpusFaithfulness:
    """The scoreboard of the trace, or over the chosen corpus (each sentence on at most ``CORPUS_TOKENS``)."""
    corpus = inputs.corpus_sentences()
    if corpus is None:
        return faithfulness(inputs.model(), inputs.trace)
    name, sentences = corpus
    return corpus_faithfulness(inputs.model(), sentences, inputs.progress("sentences scored"), name,
                               max_tokens=CORPUS_TOKENS)
