"""A long trace's overview: every layer's and head's whole-text block image (the block max of its (T, T) weights
on at most ``OVERVIEW_CELLS`` x ``OVERVIEW_CELLS`` cells), reduced while the forward pass by rows computes the
weights (``OverviewImages``), so a view of one head of a long trace reads its image instead of computing the head
again (``viz.long_inputs.head_block``).

The cells are ``viz.long_inputs.block_image``'s (``block_edges``), and so is the reduction: the max of each block
over the weights of the cells its queries can see (masked weights are exactly 0 and weights are >= 0, so the max of
every cell is the same), NaN for a block of masked cells only (``seen_blocks``). A max does not round: the image
equals the on-demand one as far as the pass's weights equal the ones computed again (within float32 rounding).
"""

from __future__ import annotations

import itertools

import numpy as np

OVERVIEW_CELLS = 256  # an overview image has at most this many cells a side (``viz.long_inputs.IMAGE_CELLS``)
OVERVIEW_HOW = "max"  # its reduction: the one the app's heatmap shows by default
OVERVIEW_MIN_TOKENS = 2048  # a long trace keeps overview images above this many tokens (shorter: computed on demand)


def block_edges(length: int, size: int) -> np.ndarray:
    """``size + 1`` edges splitting ``range(length)`` into ``size`` nearly equal, non-empty blocks."""
    return np.linspace(0, length, size + 1).round().astype(np.int64)


def overview_edges(length: int) -> np.ndarray:
    """The edges of an overview image's blocks along either axis of a ``length``-token text (``block_edges``,
    ``OVERVIEW_CELLS`` read when called)."""
    return block_edges(length, min(OVERVIEW_CELLS, length))


def seen_blocks(edges: np.ndarray, causal: bool, window: int = 0, window_kind: str = "symmetric") -> np.ndarray:
    """(S, S) bool: whether block (r, c) between ``edges`` (S + 1,) holds a cell that a query sees in a layer that
    is ``causal`` and has ``window`` (``encoder.parts.attention.visible_rows``' rule: query i sees key j when
    ``lowest <= i - j <= highest``); all True when nothing is masked. The differences ``i - j`` of a block are every
    integer from ``r0 - (c1 - 1)`` to ``(r1 - 1) - c0``, so the block has a seen cell when that range meets the
    rule's."""
    lowest, highest = -np.inf, np.inf
    if causal or (window and window_kind == "causal"):
        lowest = 0
    if window:
        before, after = (window - 1, 0) if window_kind == "causal" else (window // 2, window // 2)
        lowest, highest = max(lowest, -after), before
    starts, stops = edges[:-1], edges[1:]
    smallest = starts[:, None] - (stops[None, :] - 1)  # (S, S): the block's smallest i - j
    largest = (stops[:, None] - 1) - starts[None, :]  # and largest
    return np.maximum(smallest, lowest) <= np.minimum(largest, highest)


class OverviewImages:
    """Each layer's and head's overview image, filled as the pass by rows computes the weights (``add``, a block
    of queries at a time: ``TransformerEncoder.call_rows``' ``overview``), then masked (``images``).

    Args:
        recipe: the trace's ``AttentionRecipe`` (its ``causal``, ``windows`` (L,) and ``window_kind``).
        heads: int, H.
        length: int, T.

    Attributes:
        edges: (S + 1,) int64, the blocks' edges along either axis (``overview_edges``).
    """

    def __init__(self, recipe, heads: int, length: int) -> None:
        self.recipe, self.length = recipe, int(length)
        self.edges = overview_edges(self.length)
        side = self.edges.size - 1
        self._images = np.zeros((len(recipe.windows), heads, side, side), np.float32)  # (L, H, S, S)

    def add(self, layer: int, weights, begin: int, end: int, first: int, last: int) -> None:
        """Reduce the weights (1, H, R, K) of queries ``begin`` .. ``end - 1`` over keys ``first`` .. ``last - 1``
        (the other keys' weights are 0) into ``layer``'s images, in place: each block's rows first (an elementwise
        max of contiguous rows: one pass over the weights), then its columns (``column_max``, on a block's height
        times fewer numbers)."""
        weights = np.asarray(weights)[0]  # (H, R, K): a view of the tensor's buffer
        rows, row_starts = self._cut(begin, end)
        columns, column_starts = self._cut(first, last)
        by_rows = np.empty((weights.shape[0], len(row_starts) - 1, weights.shape[2]), np.float32)  # (H, r, K)
        for place, (start, stop) in enumerate(itertools.pairwise(row_starts)):
            np.max(weights[:, start:stop], axis=1, out=by_rows[:, place])
        reduced = column_max(by_rows, column_starts)  # (H, r, c)
        shown = self._images[layer, :, rows, columns]
        np.maximum(shown, reduced, out=shown)

    def _cut(self, begin: int, end: int) -> tuple[slice, np.ndarray]:
        """The blocks that tokens ``begin`` .. ``end - 1`` fall in (a slice of block indices) and where each
        block's part starts and the last one ends, counted from ``begin`` ((c + 1,) int64)."""
        low = int(np.searchsorted(self.edges, begin, "right")) - 1
        high = int(np.searchsorted(self.edges, end - 1, "right"))
        return slice(low, high), np.clip(self.edges[low:high + 1], begin, end) - begin

    def images(self) -> np.ndarray:
        """(L, H, S, S) float32: the images, NaN where a block has no seen cell (the pass must be complete)."""
        recipe, masks = self.recipe, {}
        for layer, window in enumerate(recipe.windows):
            window = int(window)
            if window not in masks:
                masks[window] = ~seen_blocks(self.edges, recipe.causal, window, recipe.window_kind)
            self._images[layer][:, masks[window]] = np.nan
        return self._images


def column_max(array: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """(..., c) float32: the max of ``array`` (..., K) over each run of its last axis between ``edges`` (c + 1,),
    first 0, last K (non-empty runs). Runs of one width w: the max of the w strided views (every w-th column);
    else of w gathers (w the widest run, each run's index clipped to its last column: a max does not mind
    repeats). Both read the array a few times over in order, several times faster than ``np.maximum.reduceat``."""
    starts, stops = edges[:-1], edges[1:]
    widths = stops - starts
    width = int(widths.max())
    if widths.min() == width:
        out = array[..., 0::width].copy()
        for step in range(1, width):
            np.maximum(out, array[..., step::width], out=out)
        return out
    out = np.take(array, starts, axis=-1)
    gathered = np.empty_like(out)
    for step in range(1, width):
        np.take(array, np.minimum(starts + step, stops - 1), axis=-1, out=gathered)
        np.maximum(out, gathered, out=out)
    return out
