"""Gradient attributions of one scalar of the model's output: attention x gradient, input x gradient and integrated
gradients, by ``tf.GradientTape`` through the encoder's compiled entry points (nothing here imports TensorFlow).

Shapes: L layers, H heads, T tokens, D model width. x (T, D) is the input embedding the first layer reads
(``trace.hidden[0]``); the encoder adds ``embedding_noise`` to it, so the gradient with respect to the noise at 0
is the gradient with respect to x. ``attention_scale`` multiplies every layer's weights alpha before they mix the
values; its gradient at ones is alpha * df/dalpha.

The scalar explained, f (``Objective``):

- a classifier: the probability of the class it predicts for the text (what the scoreboard's leave-one-out
  measures);
- a sentence-embedding model: the projection of the pooled vector (mean of the last hidden states, or [CLS], before
  any normalisation) onto the clean pooled vector's direction, which at the text itself is the pooled vector's
  length (the cosine to itself would have zero gradient there);
- the similarity explainer: the cosine between this text's pooled vector and the other text's (held fixed).

Integrated gradients (Sundararajan et al., 2017) integrate the gradient along the straight path from a baseline x'
to x: the baseline is the embedding of the same input with every non-special token replaced by the pad token
(specials kept), and token j's attribution is sum_d (x - x')_jd * mean gradient_jd over the path. The mean is a
Gauss-Legendre quadrature: the integrand is smooth (softmax, GELU, layer norm), so it converges much faster than
the trapezoid rule, and the completeness error |sum of attributions - (f(x) - f(x'))| / |f(x) - f(x')| measures it.
Where it is above 1% (a ReLU's kinks on the path), the path is cut into stretches and the worst halved, each with its
own rule: on a stretch the attributions must sum to f(end) - f(start), which f at the ends says exactly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from analysis.checks import Progress
from analysis.inputs import chosen_layer
from analysis.objectives import OBJECTIVES
from analysis.perturb import check_pairing
from analysis.tables import matrix_result, matrix_rows
from encoder.errors import AnalysisError
from encoder.trace import EncoderTrace, to_numpy

if TYPE_CHECKING:
    from analysis.inputs import Inputs, Options
    from encoder.sources import LoadedModel

DEFAULT_STEPS = 50  # Gauss-Legendre points on the path (see the README for the completeness errors measured)
MAX_STEPS = 1600  # path points at most, refinement included
TOLERANCE = 0.01  # the completeness error integrated gradients aim for, refining the path until reached
PANEL_STEPS = 12  # Gauss-Legendre points on each half of a refined stretch of the path
BATCH_BYTES = 256 * 2**20  # activations kept for one gradient call stay near this
BASELINE = "every non-special token replaced by the pad token (specials kept)"


@dataclass(frozen=True)
class Objective:
    """The scalar f a gradient explains.

    Attributes:
        kind: "probability", "projection" or "cosine" (``analysis.objectives.OBJECTIVES``).
        target: the class for "probability" (else 0).
        direction: (D,) float32, the vector f projects on or takes the cosine with (zeros for "probability").
        description: what f is, in words, for titles and captions.
    """

    kind: str
    target: int
    direction: np.ndarray
    description: str


@dataclass(frozen=True, eq=False)
class TokenAttribution:
    """One number per token: how much of f it accounts for (signed).

    Attributes:
        method: "input-gradient" (sum_d x_d df/dx_d) or "integrated-gradients".
        tokens: (T,) the text's tokens.
        values: (T,) float64 attributions.
        objective: what f is (``Objective.description``).
        value: f(x), at the text.
        baseline_value: f(x'), at the baseline (integrated gradients; else None).
        steps: quadrature points on the path (integrated gradients; else None).
        completeness_error: |sum(values) - (f(x) - f(x'))| / |f(x) - f(x')| (integrated gradients; NaN when
            f(x) = f(x'); else None).
        baseline: how the baseline was made (integrated gradients; else "").
        panels: stretches of the path, each with its own Gauss-Legendre rule (integrated gradients: 1 unless
            refined; else None).
    """

    method: str
    tokens: tuple[str, ...]
    values: np.ndarray
    objective: str
    value: float
    baseline_value: float | None = None
    steps: int | None = None
    completeness_error: float | None = None
    baseline: str = ""
    panels: int | None = None

    def rows(self) -> list[dict]:
        """One dict per token: index, token, attribution."""
        return [{"index": i, "token": token, "attribution": float(v)}
                for i, (token, v) in enumerate(zip(self.tokens, self.values))]


@dataclass(frozen=True, eq=False)
class AttentionGradient:
    """Attention x gradient: ``values[l, h, i, j] = alpha_lhij * df/dalpha_lhij`` (L, H, T, T) float64, signed.

    ``objective`` says what f is and ``value`` is f at the text.
    """

    values: np.ndarray
    tokens: tuple[str, ...]
    objective: str
    value: float

    def head_mean(self, layer: int) -> np.ndarray:
        """(T, T): layer ``layer``'s values averaged over heads."""
        return self.values[layer].mean(axis=0)


def pooled_vector(model: LoadedModel, trace: EncoderTrace) -> np.ndarray:
    """(D,) float64: the pooled last hidden state of ``trace`` before any normalisation (mean over tokens, or
    [CLS] for a [CLS]-pooled model; CLIP's end-of-text state after the final norm, ``outputs["pooled"]``, or its
    ``embedding`` without a text projection)."""
    if model.config.pooling == "eos":
        return np.asarray(trace.outputs.get("pooled", trace.outputs["embedding"]), np.float64)
    last = np.asarray(trace.hidden[-1], np.float64)
    return last[0] if model.config.pooling == "cls" else last.mean(axis=0)


def objective(model: LoadedModel, trace: EncoderTrace) -> Objective:
    """The f explained for one text (module doc): the predicted class's probability for a classifier, else the
    projection of the pooled vector onto the clean pooled vector's direction."""
    d = model.config.d_model
    probabilities = trace.outputs.get("probabilities")
    if probabilities is not None:
        target = int(np.argmax(probabilities))
        label = trace.labels[target] if target < len(trace.labels) else f"class {target}"
        return Objective("probability", target, np.zeros(d, np.float32), f"p({label})")
    pooled = pooled_vector(model, trace)
    length = np.linalg.norm(pooled)
    if length == 0:
        raise AnalysisError("The sentence embedding of this text is zero, so it has no direction to explain.")
    what = {"cls": "[CLS] vector", "eos": "end-of-text embedding"}.get(model.config.pooling, "mean-pooled embedding")
    return Objective("projection", 0, (pooled / length).astype(np.float32),
                     f"the {what}'s length (projection on its own direction)")


def cosine_objective(other: np.ndarray, description: str) -> Objective:
    """f = cosine(this text's pooled vector, ``other``) with ``other`` (D,) fixed (the similarity explainer)."""
    return Objective("cosine", 0, np.asarray(other, np.float32), description)


def _repeat(trace: EncoderTrace, rows: int) -> tuple[np.ndarray, np.ndarray]:
    return np.repeat(trace.token_ids[None], rows, axis=0), np.repeat(trace.segment_ids[None], rows, axis=0)


def _targets(goal: Objective, rows: int) -> tuple[np.ndarray, np.ndarray]:
    return np.full(rows, goal.target, np.int32), np.repeat(goal.direction[None], rows, axis=0)


def _check(model: LoadedModel, trace: EncoderTrace, goal: Objective | None) -> Objective:
    check_pairing(model, trace)
    return objective(model, trace) if goal is None else goal


def attention_gradient(model: LoadedModel, trace: EncoderTrace, goal: Objective | None = None) -> AttentionGradient:
    """Attention x gradient of f (``objective``, unless ``goal`` is given) in every layer and head, one gradient
    call: the gradient of f with respect to ``attention_scale`` at ones."""
    goal = _check(model, trace, goal)
    layers, heads, t, d = trace.num_layers, trace.num_heads, trace.num_tokens, trace.hidden.shape[-1]
    ids, segments = _repeat(trace, 1)
    f, _, scale = model.encoder.attention_gradients(
        OBJECTIVES[goal.kind], ids, segments, np.zeros((1, t, d), np.float32),
        np.ones((1, layers, heads, t, t), np.float32), *_targets(goal, 1))
    return AttentionGradient(to_numpy(scale)[0].astype(np.float64), trace.tokens, goal.description,
                             float(to_numpy(f)[0]))


def input_gradient(model: LoadedModel, trace: EncoderTrace, goal: Objective | None = None) -> TokenAttribution:
    """Input x gradient: token j's attribution is sum_d x_jd df/dx_jd (signed), x = ``trace.hidden[0]``."""
    goal = _check(model, trace, goal)
    t, d = trace.num_tokens, trace.hidden.shape[-1]
    ids, segments = _repeat(trace, 1)
    f, gradient = model.encoder.input_gradients(OBJECTIVES[goal.kind], ids, segments, np.zeros((1, t, d), np.float32),
                                                *_targets(goal, 1))
    x = np.asarray(trace.hidden[0], np.float64)
    values = (x * to_numpy(gradient)[0]).sum(axis=-1)
    return TokenAttribution("input-gradient", trace.tokens, values, goal.description, float(to_numpy(f)[0]))


def baseline_ids(model: LoadedModel, trace: EncoderTrace) -> np.ndarray:
    """(T,) int32: the text's ids with every non-special token replaced by the pad token."""
    special = np.asarray(trace.special, bool)
    return np.where(special, trace.token_ids, np.int32(model.config.pad_token_id)).astype(np.int32)


def baseline_embedding(model: LoadedModel, trace: EncoderTrace) -> np.ndarray:
    """(T, D) float32: the input embedding of ``baseline_ids`` (same segments), the integrated-gradients baseline."""
    embedded = model.encoder.embed(baseline_ids(model, trace)[None], trace.segment_ids[None])
    return to_numpy(embedded)[0]


def path_points(steps: int) -> tuple[np.ndarray, np.ndarray]:
    """Gauss-Legendre nodes on [0, 1] and their weights (``steps`` of each, float64; the weights sum to 1)."""
    nodes, weights = np.polynomial.legendre.leggauss(steps)
    return (nodes + 1) / 2, weights / 2


def rows_per_call(trace: EncoderTrace, dff: int) -> int:
    """Path points per gradient call, so the activations a backward pass keeps stay near ``BATCH_BYTES``: about
    six (H, T, T) tensors and twelve (T, D) / three (T, dff) per layer, float32."""
    layers, heads, t, d = trace.num_layers, trace.num_heads, trace.num_tokens, trace.hidden.shape[-1]
    floats = layers * (6 * heads * t * t + t * (12 * d + 3 * dff))
    return max(1, BATCH_BYTES // (4 * floats))


def integrated_gradients(
    model: LoadedModel,
    trace: EncoderTrace,
    steps: int = DEFAULT_STEPS,
    goal: Objective | None = None,
    baseline: np.ndarray | None = None,
    progress: Progress | None = None,
    tolerance: float | None = TOLERANCE,
) -> TokenAttribution:
    """Integrated gradients of f on the input embeddings, straight path from the baseline (module doc) to x.

    Args:
        steps: Gauss-Legendre points on the whole path (1 to ``MAX_STEPS``), batched a few per call.
        goal: f (default ``objective(model, trace)``).
        baseline: (T, D) baseline embedding (default ``baseline_embedding``: non-special tokens padded).
        progress: ``progress(done, total)`` counts gradient evaluations (f(x) and f(x') included; the total
            grows when the path is refined).
        tolerance: while the completeness error is above this, the path is refined (``_refine``) until it is, or
            until ``MAX_STEPS`` points; None keeps the ``steps`` points. GELU models (MiniLM) need no refinement
            on the shipped sentences; ReLU models (the tutorial model) have kinks on the path, where one
            Gauss-Legendre rule converges only as 1 / steps^2, and f(x) - f(x') can be tiny next to f's swing.

    Returns:
        ``TokenAttribution`` with f(x), f(x'), the points used and the completeness error.

    Raises:
        AnalysisError: the trace is not this model's, steps out of range, or a baseline of the wrong shape.
    """
    goal = _check(model, trace, goal)
    if not 1 <= steps <= MAX_STEPS:
        raise AnalysisError(f"steps must be between 1 and {MAX_STEPS}, got {steps}")
    x = np.asarray(trace.hidden[0], np.float32)
    reference = baseline_embedding(model, trace) if baseline is None else np.asarray(baseline, np.float32)
    if reference.shape != x.shape:
        raise AnalysisError(f"The baseline must have the embedding's shape {x.shape}, got {reference.shape}")
    path = _Path(model, trace, goal, (reference - x).astype(np.float64), progress)
    ends, _ = path.run(np.array([1.0, 0.0]))  # f(x), f(x')
    change = ends[0] - ends[1]
    # f(x) = f(x') up to float32 rounding (which differs between CPUs): no relative error to report.
    flat = abs(change) <= 16 * np.finfo(np.float32).eps * max(1.0, abs(ends[0]), abs(ends[1]))
    panels = [path.panel(0.0, 1.0, ends[1], ends[0], steps)]
    while True:
        values = np.sum([panel.values for panel in panels], axis=0)
        error = float("nan") if flat else abs(values.sum() - change) / abs(change)
        if tolerance is None or not error > tolerance:
            break
        refined = _refine(path, panels)
        if refined is None:
            break
        panels = refined
    return TokenAttribution("integrated-gradients", trace.tokens, values, goal.description, float(ends[0]),
                            float(ends[1]), path.points, float(error), BASELINE if baseline is None else "given",
                            len(panels))


@dataclass(frozen=True, eq=False)
class _Panel:
    """A stretch [start, end] of the path, its endpoints' f, and its Gauss-Legendre attributions (T,)."""

    start: float
    end: float
    f_start: float
    f_end: float
    values: np.ndarray

    @property
    def error(self) -> float:
        """|sum of the attributions - (f(end) - f(start))|: exact for the stretch, so it says where to refine."""
        return abs(self.values.sum() - (self.f_end - self.f_start))


def _refine(path: _Path, panels: list[_Panel]) -> list[_Panel] | None:
    """Halve the panels with the largest errors (together at least half of all panels' error), each half with
    ``PANEL_STEPS`` points, in one batch; None when that would pass ``MAX_STEPS`` points."""
    order = sorted(range(len(panels)), key=lambda i: -panels[i].error)
    total, chosen, covered = sum(panel.error for panel in panels), set(), 0.0
    for i in order:
        chosen.add(i)
        covered += panels[i].error
        if covered >= total / 2:
            break
    if path.points + len(chosen) * 2 * PANEL_STEPS > MAX_STEPS:
        return None
    middles = np.array([(panels[i].start + panels[i].end) / 2 for i in sorted(chosen)])
    f_middle = dict(zip(sorted(chosen), path.run(middles)[0]))
    refined = []
    for i, panel in enumerate(panels):
        if i not in chosen:
            refined.append(panel)
            continue
        middle = (panel.start + panel.end) / 2
        refined += [path.panel(panel.start, middle, panel.f_start, f_middle[i], PANEL_STEPS),
                    path.panel(middle, panel.end, f_middle[i], panel.f_end, PANEL_STEPS)]
    return refined


class _Path:
    """f and its gradient at points ``x + (1 - alpha)(x' - x)``, a few points per compiled call."""

    def __init__(self, model: LoadedModel, trace: EncoderTrace, goal: Objective, offset: np.ndarray,
                 progress: Progress | None):
        self.model, self.trace, self.goal, self.offset, self.progress = model, trace, goal, offset, progress
        self.rows = rows_per_call(trace, model.config.dff)
        self.done = self.planned = self.points = 0

    def panel(self, start: float, end: float, f_start: float, f_end: float, steps: int) -> _Panel:
        """The stretch [start, end] integrated with ``steps`` Gauss-Legendre points."""
        nodes, weights = path_points(steps)
        _, dots = self.run(start + (end - start) * nodes)
        self.points += steps
        return _Panel(start, end, f_start, f_end, (end - start) * (weights @ dots))

    def run(self, alphas: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """At the K points ``alphas``: f (K,), and (K, T) the gradient dotted with x - x' per token, float64."""
        f, dots = np.empty(len(alphas)), np.empty((len(alphas), self.offset.shape[0]))
        self.planned += len(alphas)
        for start in range(0, len(alphas), self.rows):
            part = alphas[start:start + self.rows]
            noise = ((1.0 - part)[:, None, None] * self.offset).astype(np.float32)
            ids, segments = _repeat(self.trace, len(part))
            values, gradient = self.model.encoder.input_gradients(OBJECTIVES[self.goal.kind], ids, segments, noise,
                                                                  *_targets(self.goal, len(part)))
            f[start:start + len(part)] = to_numpy(values)
            dots[start:start + len(part)] = np.einsum("ktd,td->kt", to_numpy(gradient).astype(np.float64),
                                                      -self.offset)
            self.done += len(part)
            if self.progress is not None:
                self.progress(self.done, self.planned)
        return f, dots


# ---------------------------------------------------------------------------------------------------------------
# The registry's gradient entries: compute(inputs, options), rows(result, trace, options)


def compute_attention_gradient(inputs: Inputs, options: Options) -> AttentionGradient:
    """``attention_gradient`` of the trace: (L, H, T, T)."""
    return attention_gradient(inputs.model(), inputs.trace)


def attention_gradient_rows(result: AttentionGradient, trace: EncoderTrace,
                            options: Options) -> tuple[list[dict], dict]:
    """The head mean at the chosen layer (default the last), one row per cell, and its JSON with f."""
    layer = chosen_layer(trace, options)
    rows = matrix_rows(result.head_mean(layer), trace.tokens, "attention_gradient")
    return rows, matrix_result("attention-gradient", trace, layer, rows, objective=result.objective,
                               value=result.value)


def compute_input_gradient(inputs: Inputs, options: Options) -> TokenAttribution:
    """``input_gradient`` of the trace: (T,)."""
    return input_gradient(inputs.model(), inputs.trace)


def compute_integrated_gradients(inputs: Inputs, options: Options) -> TokenAttribution:
    """Integrated gradients with ``options["steps"]`` points (default ``DEFAULT_STEPS``)."""
    return integrated_gradients(inputs.model(), inputs.trace, options.get("steps") or DEFAULT_STEPS,
                                progress=inputs.progress("points on the path"))
