"""Analyses on traces: attention math in NumPy, plus the modules that re-run the model (``perturb``,
``value_zeroing``, ``gradients``, ``faithfulness``) through the encoder's compiled graphs.

Shapes: L layers, H heads, T tokens, N = L * H heads in layer-major order (head ``n`` is layer ``n // H``, head
``n % H``). ``attention[layer, head, query, key]`` rows are probability distributions over keys. Logarithms are
natural (entropies and divergences in nats). Every function takes and returns plain NumPy or small frozen
dataclasses; importing this package never imports TensorFlow (``perturb`` drives a loaded model through its
compiled graphs, but the arrays it gets back are NumPy).

Modules: ``flow`` (rollout, max-flow), ``divergence`` (entropy, Jensen-Shannon), ``report`` (head report card,
corpora), ``clustering``, ``diff`` (two traces; a minimal pair from the pooled token), ``pooled`` (the token a
model's output reads), ``tables`` (rows, CSV, JSON), ``words`` (sub-words merged into words),
``perturb`` (noise, ablation), ``attribution`` (norm-based, GlobEnc, ALTI), ``value_zeroing``, ``gradients``
(attention/input x gradient, integrated gradients), ``faithfulness`` (the scoreboard, one text or a corpus),
``similarity`` (why two sentences are similar), ``positional`` (the positional lab), ``heads`` (the report card and
clusters over a text or a corpus), ``inputs`` (what an analysis runs on).
The names below are re-exported so ``import analysis; analysis.attention_rollout(...)`` reads as one library.

Each registry analysis (``viz.registry.ANALYSES``) names two plain functions of its module here:
``compute_<name>(inputs, options) -> result`` (``inputs`` an ``analysis.inputs.Inputs``, ``options`` its settings by
name) and ``<name>_rows(result, trace, options) -> (csv rows, json result)`` (``tables.result_rows`` where the
result lists its own rows); its figures are in ``viz/``.
"""

from analysis.checks import Progress, check_attention, check_residual
from analysis.clustering import HeadClustering, cluster_heads
from analysis.diff import AttentionDiff, PooledDiff, diff_traces, pooled_diff
from analysis.divergence import entropy, head_distances, head_divergence, js_divergence, xlogx_sums
from analysis.flow import (
    DEFAULT_RESIDUAL,
    MAX_FLOW_TOKENS,
    attention_flow,
    attention_rollout,
    layered_max_flow,
    residual_attention,
)
from analysis.report import (
    STATISTICS,
    HeadReport,
    corpus_head_report,
    head_report,
    iter_traces,
    sentences_from_text,
    token_classes,
)
from analysis.tables import head_rows, matrix_rows, rows_to_csv, to_json
from analysis.words import merge_words, word_starts

__all__ = [
    "DEFAULT_RESIDUAL",
    "MAX_FLOW_TOKENS",
    "STATISTICS",
    "AttentionDiff",
    "HeadClustering",
    "HeadReport",
    "PooledDiff",
    "Progress",
    "attention_flow",
    "attention_rollout",
    "check_attention",
    "check_residual",
    "cluster_heads",
    "corpus_head_report",
    "diff_traces",
    "entropy",
    "head_distances",
    "head_divergence",
    "head_report",
    "head_rows",
    "iter_traces",
    "js_divergence",
    "layered_max_flow",
    "matrix_rows",
    "merge_words",
    "pooled_diff",
    "residual_attention",
    "rows_to_csv",
    "sentences_from_text",
    "to_json",
    "token_classes",
    "word_starts",
    "xlogx_sums",
]
