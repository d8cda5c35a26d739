"""Heads clustered by average linkage (UPGMA) on a head distance matrix."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from encoder.errors import AnalysisError

if TYPE_CHECKING:
    pass


@dataclass(frozen=True, eq=False)
class HeadClustering:
    """Heads clustered by average linkage (UPGMA) on a head distance matrix.

    ``distance`` (N, N) as given; ``order`` (N,) head indices in dendrogram leaf order (similar heads adjacent);
    ``merges`` (N - 1, 4) rows ``[cluster a, cluster b, distance, size]`` in SciPy's linkage convention
    (clusters ``0..N-1`` are heads, ``N + r`` is the cluster made by row ``r``).
    """

    distance: np.ndarray
    order: np.ndarray
    merges: np.ndarray
    num_layers: int
    num_heads: int

    def labels(self) -> list[str]:
        """"L2 H5" for every head, in head-index order."""
        return [f"L{n // self.num_heads} H{n % self.num_heads}" for n in range(self.num_layers * self.num_heads)]

    def clusters(self, count: int) -> np.ndarray:
        """(N,) cluster number (0..count-1, numbered by first appearance in ``order``) when cut into ``count``."""
        n = len(self.order)
        if not 1 <= count <= n:
            raise AnalysisError(f"count must be between 1 and {n}, got {count}")
        members = {i: [i] for i in range(n)}
        for row, (a, b, _, _) in enumerate(self.merges[: n - count]):
            members[n + row] = members.pop(int(a)) + members.pop(int(b))
        label = np.empty(n, dtype=np.int64)
        for number, group in enumerate(sorted(members.values(), key=lambda g: min(self._rank[h] for h in g))):
            label[group] = number
        return label

    @property
    def _rank(self) -> np.ndarray:
        rank = np.empty(len(self.order), dtype=np.int64)
        rank[self.order] = np.arange(len(self.order))
        return rank

    def rows(self, count: int = 4) -> list[dict]:
        """One dict per head in cluster order: position, layer, head, cluster (cut into ``count``)."""
        label = self.clusters(min(count, len(self.order)))
        return [
            {"position": position, "layer": int(n) // self.num_heads, "head": int(n) % self.num_heads,
             "cluster": int(label[n])}
            for position, n in enumerate(self.order)
        ]


def cluster_heads(distance: np.ndarray, num_layers: int, num_heads: int) -> HeadClustering:
    """Average-linkage hierarchical clustering of the heads from an (N, N) distance matrix (N = L * H).

    At each step the two closest clusters merge; the distance between clusters is the mean distance between
    their members (UPGMA, updated by Lance-Williams). Ties go to the lowest indices, so the result is
    deterministic.
    """
    distance = np.asarray(distance, dtype=np.float64)
    n = num_layers * num_heads
    if distance.shape != (n, n):
        raise AnalysisError(f"distance has shape {distance.shape}, while {num_layers}x{num_heads} heads need {(n, n)}")
    if not np.allclose(distance, distance.T, atol=1e-12):
        raise AnalysisError("distance must be symmetric")
    work = distance.copy()
    np.fill_diagonal(work, np.inf)
    size = np.ones(n)
    cluster_id = np.arange(n)
    merges = np.zeros((max(n - 1, 0), 4))
    children: dict[int, tuple[int, int]] = {}
    for row in range(n - 1):
        flat = int(np.argmin(work))
        a, b = divmod(flat, n)
        a, b = min(a, b), max(a, b)
        first, second = sorted((int(cluster_id[a]), int(cluster_id[b])))
        merges[row] = (first, second, work[a, b], size[a] + size[b])
        children[n + row] = (first, second)
        merged = (size[a] * work[a] + size[b] * work[b]) / (size[a] + size[b])
        work[a], work[:, a] = merged, merged
        work[a, a] = np.inf
        work[b], work[:, b] = np.inf, np.inf
        size[a] += size[b]
        cluster_id[a] = n + row
    order = _leaf_order(children, n, 2 * n - 2 if n > 1 else 0)
    return HeadClustering(distance, order, merges, num_layers, num_heads)


def _leaf_order(children: dict[int, tuple[int, int]], n: int, root: int) -> np.ndarray:
    order, stack = [], [root]
    while stack:
        node = stack.pop()
        if node < n:
            order.append(node)
        else:
            left, right = children[node]
            stack.extend((right, left))
    return np.array(order, dtype=np.int64)
