"""Analyses that re-run the encoder on a perturbed input: embedding noise (stability) and head masks (ablation).

Both go through ``CompiledEncoder.forward_perturbed(ids, segments, mask, head_mask (B, L, H), noise (B, T, D))``,
batching many perturbations of one input into a few calls. A call with a batch of one, zero noise and an all-ones
head mask gives bit for bit the attention and outputs of ``trace_text`` (tested); in batches of more than one the
matrix kernels block differently and values differ by float32 rounding (~1e-6 in attention), far below any effect
shown here. Nothing here imports TensorFlow: arrays go in, NumPy comes out.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from analysis.checks import Progress
from analysis.divergence import head_divergence, xlogx_sums
from analysis.tables import head_rows
from encoder.errors import AnalysisError
from encoder.trace import EncoderTrace, to_numpy

if TYPE_CHECKING:
    from analysis.inputs import Inputs, Options
    from encoder.sources import LoadedModel

DEFAULT_SIGMAS = (0.0, 0.05, 0.1, 0.2, 0.5, 1.0)
DEFAULT_SAMPLES = 8
BATCH_BYTES = 256 * 2**20  # outputs of one forward_perturbed call stay under this (attention dominates)


def check_pairing(model: LoadedModel, trace: EncoderTrace) -> None:
    """ValueError unless ``trace`` was made by ``model`` (the clean reference must be this model's output)."""
    cfg = model.config
    if trace.model != model.name:
        raise AnalysisError(f"The trace comes from model {trace.model!r}, not {model.name!r}; trace the text again.")
    if (trace.num_layers, trace.num_heads, trace.hidden.shape[-1]) != (cfg.num_layers, cfg.num_heads, cfg.d_model):
        raise AnalysisError(
            f"The trace has {trace.num_layers}x{trace.num_heads} heads of width {trace.hidden.shape[-1]}; the model "
            f"{cfg.num_layers}x{cfg.num_heads} of width {cfg.d_model}."
        )


def _rows_per_call(trace: EncoderTrace) -> int:
    floats = trace.attention[0, 0].size * trace.num_layers * trace.num_heads + trace.hidden.size
    return max(1, BATCH_BYTES // (4 * floats))


def _chunks(
    model: LoadedModel, trace: EncoderTrace, head_mask: np.ndarray, noise: np.ndarray
) -> Iterator[tuple[slice, dict[str, np.ndarray]]]:
    """Run the trace's input once per row of ``head_mask`` (B, L, H) / ``noise`` (B, T, D), a few rows per call."""
    rows = _rows_per_call(trace)
    for start in range(0, len(head_mask), rows):
        part = slice(start, min(start + rows, len(head_mask)))
        b = part.stop - part.start
        outputs = model.encoder.forward_perturbed(
            np.repeat(trace.token_ids[None], b, axis=0),
            np.repeat(trace.segment_ids[None], b, axis=0),
            np.ones((b, trace.num_tokens), dtype=bool),
            head_mask[part],
            noise[part],
        )
        yield part, {name: to_numpy(value) for name, value in outputs.items()}


def _inputs(trace: EncoderTrace, head_mask: np.ndarray | None, noise: np.ndarray | None) -> tuple[np.ndarray, ...]:
    layers, heads, t, d = trace.num_layers, trace.num_heads, trace.num_tokens, trace.hidden.shape[-1]
    batch = len(head_mask) if head_mask is not None else len(noise) if noise is not None else 1
    head_mask = np.ones((batch, layers, heads), np.float32) if head_mask is None else np.asarray(head_mask, np.float32)
    noise = np.zeros((batch, t, d), np.float32) if noise is None else np.asarray(noise, np.float32)
    if head_mask.shape != (batch, layers, heads):
        raise AnalysisError(f"head_mask must have shape {(batch, layers, heads)}, got {head_mask.shape}")
    if noise.shape != (batch, t, d):
        raise AnalysisError(f"noise must have shape {(batch, t, d)}, got {noise.shape}")
    return head_mask, noise


def run_perturbed(
    model: LoadedModel, trace: EncoderTrace, head_mask: np.ndarray | None = None, noise: np.ndarray | None = None
) -> dict[str, np.ndarray]:
    """Re-run the trace's input B times, row ``b`` with ``head_mask[b]`` (L, H) (1 keeps a head, 0 silences its
    output) and ``noise[b]`` (T, D) added to the input embeddings. Either may be omitted (all ones / zeros).

    Returns the model's outputs with a leading batch axis: ``attention`` (B, L, H, T, T), ``hidden``
    (B, L + 1, T, D), ``embedding`` (B, D), and ``probabilities`` (B, C) for a classifier.
    """
    check_pairing(model, trace)
    head_mask, noise = _inputs(trace, head_mask, noise)
    parts = [outputs for _, outputs in _chunks(model, trace, head_mask, noise)]
    return {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}


def _cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine between vectors along the last axis, in float64."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return (a * b).sum(-1) / np.maximum(np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1), 1e-300)


# ---------------------------------------------------------------------------------------------------------------
# Noise stability


def embedding_rms(trace: EncoderTrace) -> float:
    """Root mean square of the input embeddings (``hidden[0]``, all tokens and dimensions): the noise unit."""
    return float(np.sqrt(np.mean(np.square(trace.hidden[0], dtype=np.float64))))


def embedding_noise(trace: EncoderTrace, sigma: float, samples: int, seed: int = 0) -> np.ndarray:
    """Gaussian noise for the input embeddings: (samples, T, D) float32, ``sigma * embedding_rms(trace) * z``.

    ``z`` of sample ``s`` is standard normal from ``numpy.random.default_rng([seed, s])``: the same for every
    sigma (so a curve over sigma scales one set of directions), different per sample. Sigma 0 gives zeros.
    """
    if not (math.isfinite(sigma) and sigma >= 0):
        raise AnalysisError(f"sigma must be a finite number >= 0, got {sigma}")
    if samples < 1:
        raise AnalysisError(f"samples must be at least 1, got {samples}")
    scale = np.float32(sigma * embedding_rms(trace))
    shape = trace.hidden.shape[1:]
    return np.stack([
        scale * np.random.default_rng([seed, s]).standard_normal(shape, dtype=np.float32) for s in range(samples)
    ])


@dataclass(frozen=True, eq=False)
class NoiseStability:
    """How far each head's attention moves under input-embedding noise.

    ``divergence[s, l, h]``: JS divergence (nats) between the clean and the noisy attention rows of head (l, h),
    averaged over queries and over the samples at ``sigmas[s]``; ``spread`` its standard deviation over samples.
    ``cosine[s]``: mean cosine between the noisy and the clean sentence embedding. ``rms``: the embedding RMS
    that sigma is relative to.
    """

    sigmas: np.ndarray
    divergence: np.ndarray
    spread: np.ndarray
    cosine: np.ndarray
    samples: int
    seed: int
    rms: float

    def curve(self) -> np.ndarray:
        """(S,) mean divergence over all heads, per sigma."""
        return self.divergence.mean(axis=(1, 2))

    def rows(self) -> list[dict]:
        """One dict per sigma and head: sigma, layer, head, mean and std of the JS divergence."""
        return [
            {"sigma": float(sigma), **row, "js_std": float(self.spread[s, row["layer"], row["head"]])}
            for s, sigma in enumerate(self.sigmas)
            for row in head_rows(self.divergence[s], "js_divergence")
        ]


def noise_stability(
    model: LoadedModel,
    trace: EncoderTrace,
    sigmas: Sequence[float] = DEFAULT_SIGMAS,
    samples: int = DEFAULT_SAMPLES,
    seed: int = 0,
    progress: Progress | None = None,
) -> NoiseStability:
    """Add Gaussian noise of scale ``sigma * embedding_rms(trace)`` to the input embeddings (``embedding_noise``),
    ``samples`` seeded draws per sigma, and measure each head's mean JS divergence from the clean trace.

    Sigma 0 runs once with zero noise in a batch of one, which reproduces the clean trace exactly (divergence 0).
    All noisy runs go through ``forward_perturbed`` in batches. ``progress(done, total)`` counts runs.
    """
    check_pairing(model, trace)
    sigmas = np.asarray(sigmas, dtype=np.float64)
    if sigmas.ndim != 1 or sigmas.size == 0:
        raise AnalysisError(f"sigmas must be a non-empty list of numbers, got {sigmas!r}")
    noises = [embedding_noise(trace, float(sigma), 1 if sigma == 0 else samples, seed) for sigma in sigmas]
    owner = np.repeat(np.arange(len(sigmas)), [len(n) for n in noises])  # which sigma each run belongs to
    head_mask, noise = _inputs(trace, None, np.concatenate(noises))
    per_run = np.empty((len(noise), trace.num_layers, trace.num_heads))
    cosine = np.empty(len(noise))
    zero = sigmas[owner] == 0
    clean_sums = xlogx_sums(trace.attention)
    done = 0
    for runs in (np.nonzero(zero)[0], np.nonzero(~zero)[0]):  # zero noise alone: a batch of one is exact
        for part, outputs in _chunks(model, trace, head_mask[runs], noise[runs]):
            for row, run in enumerate(runs[part]):
                per_run[run] = head_divergence(trace.attention, outputs["attention"][row], clean_sums)
            cosine[runs[part]] = _cosine(outputs["embedding"], trace.outputs["embedding"])
            done += part.stop - part.start
            if progress is not None:
                progress(done, len(noise))
    divergence = np.stack([per_run[owner == s].mean(axis=0) for s in range(len(sigmas))])
    spread = np.stack([per_run[owner == s].std(axis=0) for s in range(len(sigmas))])
    mean_cosine = np.array([cosine[owner == s].mean() for s in range(len(sigmas))])
    return NoiseStability(sigmas, divergence, spread, mean_cosine, samples, seed, embedding_rms(trace))


# ---------------------------------------------------------------------------------------------------------------
# Head ablation (Michel et al., 2019)


def head_mask(num_layers: int, num_heads: int, heads: Iterable[tuple[int, int]]) -> np.ndarray:
    """(L, H) float32 of ones with 0 at every ``(layer, head)`` in ``heads``.

    Raises:
        AnalysisError: a layer or head out of range (the message names it and the range).
    """
    mask = np.ones((num_layers, num_heads), np.float32)
    for layer, head in heads:
        if not 0 <= layer < num_layers:
            raise AnalysisError(
                f"layer {layer} is out of range: the model has {num_layers} layers (0-{num_layers - 1})")
        if not 0 <= head < num_heads:
            raise AnalysisError(
                f"head {head} is out of range: the model has {num_heads} heads (0-{num_heads - 1})")
        mask[layer, head] = 0.0
    return mask


@dataclass(frozen=True, eq=False)
class AblationEffect:
    """The output with some heads silenced, next to the clean output.

    ``cosine``: between the clean and the ablated sentence embedding (``outputs["embedding"]``, mean-pooled for
    MiniLM). ``probabilities`` / ``clean_probabilities`` (C,) for a classifier, else None. ``attention`` (L, H,
    T, T): the ablated run's attention (heads after the silenced ones see a changed input), only when asked for
    (``ablate_heads(..., keep_attention=True)``): 72 MB at 512 tokens, which no figure or number here needs.
    """

    heads: tuple[tuple[int, int], ...]
    cosine: float
    embedding: np.ndarray
    clean_embedding: np.ndarray
    probabilities: np.ndarray | None
    clean_probabilities: np.ndarray | None
    labels: tuple[str, ...]
    attention: np.ndarray | None = None

    @property
    def probability_change(self) -> np.ndarray | None:
        """(C,) ablated minus clean class probabilities, or None without a classifier."""
        if self.probabilities is None or self.clean_probabilities is None:
            return None
        return self.probabilities.astype(np.float64) - self.clean_probabilities

    def rows(self) -> list[dict]:
        """One dict per class (label, clean, ablated, change) for a classifier, else one row with the cosine."""
        change = self.probability_change
        if change is None:
            return [{"heads": _describe(self.heads), "embedding_cosine": self.cosine}]
        labels = self.labels or tuple(str(i) for i in range(len(change)))
        return [
            {"heads": _describe(self.heads), "label": label, "clean": float(self.clean_probabilities[i]),
             "ablated": float(self.probabilities[i]), "change": float(change[i]), "embedding_cosine": self.cosine}
            for i, label in enumerate(labels)
        ]


def _describe(heads: Sequence[tuple[int, int]]) -> str:
    return " ".join(f"L{layer}H{head}" for layer, head in heads) or "none"


def ablate_heads(
    model: LoadedModel, trace: EncoderTrace, heads: Iterable[tuple[int, int]], keep_attention: bool = False
) -> AblationEffect:
    """Silence ``heads`` (``(layer, head)`` pairs; their context vectors are multiplied by 0 before the output
    projection) and compare the output with the clean trace. Masking no head reproduces the trace exactly.
    ``keep_attention`` keeps the ablated run's (L, H, T, T) attention in the result.
    """
    check_pairing(model, trace)
    heads = tuple(sorted({(int(layer), int(head)) for layer, head in heads}))
    mask = head_mask(trace.num_layers, trace.num_heads, heads)[None]
    outputs = run_perturbed(model, trace, head_mask=mask)
    probabilities = outputs.get("probabilities")
    return AblationEffect(
        heads=heads,
        cosine=float(_cosine(outputs["embedding"][0], trace.outputs["embedding"])),
        embedding=outputs["embedding"][0],
        clean_embedding=trace.outputs["embedding"],
        probabilities=None if probabilities is None else probabilities[0],
        clean_probabilities=trace.outputs.get("probabilities"),
        labels=trace.labels,
        attention=outputs["attention"][0] if keep_attention else None,
    )


@dataclass(frozen=True, eq=False)
class HeadImportance:
    """Each head silenced alone: ``importance`` (L, H) and what it is made of.

    For a classifier, ``importance`` is the drop in the probability of the clean prediction
    (``labels[predicted]``) when the head is silenced (negative: the head worked against it); otherwise
    ``1 - cosine`` between the clean and the ablated sentence embedding. ``cosine`` (L, H) is always there;
    ``probabilities`` (L, H, C) for a classifier.
    """

    importance: np.ndarray
    metric: str
    cosine: np.ndarray
    probabilities: np.ndarray | None
    clean_probabilities: np.ndarray | None
    predicted: int | None
    labels: tuple[str, ...]

    def rows(self) -> list[dict]:
        """One dict per head: layer, head, importance, embedding cosine."""
        return [
            {**row, "embedding_cosine": float(self.cosine[row["layer"], row["head"]])}
            for row in head_rows(self.importance, "importance")
        ]


def head_importance(model: LoadedModel, trace: EncoderTrace, progress: Progress | None = None) -> HeadImportance:
    """Silence every head alone (L * H runs, batched into a few ``forward_perturbed`` calls) and measure the
    effect on the output (see ``HeadImportance``). ``progress(done, total)`` counts heads."""
    check_pairing(model, trace)
    layers, heads = trace.num_layers, trace.num_heads
    runs = np.arange(layers * heads)
    masks = np.ones((layers * heads, layers, heads), np.float32)
    masks[runs, runs // heads, runs % heads] = 0.0  # run n silences head n (layer-major)
    masks, noise = _inputs(trace, masks, None)
    cosine = np.empty(layers * heads)
    clean = trace.outputs.get("probabilities")
    probabilities = None if clean is None else np.empty((layers * heads, clean.shape[-1]))
    for part, outputs in _chunks(model, trace, masks, noise):
        cosine[part] = _cosine(outputs["embedding"], trace.outputs["embedding"])
        if probabilities is not None:
            probabilities[part] = outputs["probabilities"]
        if progress is not None:
            progress(part.stop, layers * heads)
    cosine = cosine.reshape(layers, heads)
    if probabilities is None:
        return HeadImportance(1.0 - cosine, "1 - cosine of the sentence embedding with the head silenced", cosine,
                              None, None, None, trace.labels)
    probabilities = probabilities.reshape(layers, heads, -1)
    predicted = int(np.argmax(clean))
    name = trace.labels[predicted] if trace.labels else str(predicted)
    importance = float(clean[predicted]) - probabilities[:, :, predicted]
    return HeadImportance(importance, f"drop in P({name}) with the head silenced", cosine, probabilities,
                          clean, predicted, trace.labels)


# ---------------------------------------------------------------------------------------------------------------
# The registry's noise stability, head importance and ablation: compute(inputs, options)


def compute_noise(inputs: Inputs, options: Options) -> NoiseStability:
    """Noise stability at ``DEFAULT_SIGMAS`` (and ``options["sigma"]``), ``options["samples"]`` per sigma."""
    sigma = options.get("sigma")
    sigmas = DEFAULT_SIGMAS if sigma is None else tuple(sorted({*DEFAULT_SIGMAS, sigma}))
    samples = options.get("samples") or DEFAULT_SAMPLES
    return noise_stability(inputs.model(), inputs.trace, sigmas, samples, progress=inputs.progress("noisy runs"))


def measured_sigmas(result: NoiseStability) -> list[float]:
    """The sigmas a noise result holds (the choices of the sigma its map is drawn at)."""
    return [float(s) for s in result.sigmas]


def compute_importance(inputs: Inputs, options: Options) -> HeadImportance:
    """Every head silenced alone."""
    return head_importance(inputs.model(), inputs.trace, progress=inputs.progress("heads silenced"))


def compute_ablation(inputs: Inputs, options: Options) -> AblationEffect:
    """The heads ``options["ablate"]`` ((layer, head) pairs) silenced together."""
    return ablate_heads(inputs.model(), inputs.trace, options["ablate"])
