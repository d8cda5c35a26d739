"""The head report card and the head clusters as registry analyses: over this text, or over a corpus the inputs
traced (``Inputs.corpus_report``). The numbers themselves live in ``analysis.report`` and ``analysis.clustering``."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from analysis.clustering import HeadClustering, cluster_heads
from analysis.divergence import head_distances
from analysis.report import HeadReport, head_report

if TYPE_CHECKING:
    from analysis.inputs import Inputs, Options
    from encoder.trace import EncoderTrace

DEFAULT_STATISTIC = "entropy"  # the report card's statistic drawn unless another is chosen
DEFAULT_CLUSTERS = 4  # clusters outlined and numbered


def compute_report(inputs: Inputs, options: Options) -> HeadReport:
    """The report card over the chosen corpus, else over the trace."""
    report = inputs.corpus_report(distances=False)
    return head_report(inputs.trace) if report is None else report


def compute_clusters(inputs: Inputs, options: Options) -> HeadClustering:
    """Heads clustered by their mean Jensen-Shannon distance, over the chosen corpus, else over the trace."""
    report = inputs.corpus_report(distances=True)
    if report is not None:
        return cluster_heads(report.distance, report.num_layers, report.num_heads)
    trace = inputs.trace
    return cluster_heads(head_distances(trace.attention), trace.num_layers, trace.num_heads)


def clusters_rows(result: HeadClustering, trace: EncoderTrace | None, options: Options) -> tuple[list[dict], Any]:
    """One row per head with its cluster among ``options["clusters"]`` (default ``DEFAULT_CLUSTERS``)."""
    return result.rows(options.get("clusters") or DEFAULT_CLUSTERS), result
