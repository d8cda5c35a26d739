"""The logit lens (nostalgebraist, 2020, "interpreting GPT: the logit lens"): re-runs the model's final norm and LM
head on every layer's residual stream, through ``CompiledEncoder.lens_top_k``, to read what the model would predict
if it stopped after that layer.

Rows: ``trace.hidden[0]`` (the embeddings) to ``hidden[L - 1]`` go through the final norm and the LM head;
``hidden[L]`` is after the final norm already (it is what the LM head reads), so its row is the model's own
prediction (``outputs["next_ids"][:, 0]``). Each cell costs one V-wide product (V up to 256k), so the lens covers a
window of at most ``LENS_WINDOW`` positions ending at ``until`` (default the last token), and runs in calls of at
most ``LENS_CHUNK_BYTES`` of logits. Nothing here imports TensorFlow: arrays go in, NumPy comes out.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from analysis.perturb import check_pairing
from encoder.errors import AnalysisError, ViewError, whole_number
from encoder.pieces import readable_piece
from encoder.trace import EncoderTrace, to_numpy

if TYPE_CHECKING:
    from analysis.inputs import Inputs, Options
    from encoder.sources import LoadedModel

LENS_WINDOW = 48  # positions the lens covers, ending at ``until``
LENS_CHUNK_BYTES = 64 * 2**20  # the (rows, V) float32 logits of one lens_top_k call stay under this
NO_LM_HEAD = ("The logit lens needs a model that predicts the next token (a decoder with an LM head, such as Llama "
              "or Qwen); this model has none.")


@dataclass(frozen=True, eq=False)
class LogitLens:
    """The top-K next-token candidates of every layer's residual stream, over a window of positions.

    Shapes: L layers, W positions, K candidates. Row 0 is the embeddings, row l the output of layer l - 1, row L
    the model's output (after the final norm).

    Attributes:
        positions: (W,) int32, the token positions of the window, in order.
        ids: (L + 1, W, K) int32, the candidates, most probable first.
        probs: (L + 1, W, K) float32, their probabilities (softmax over the whole vocabulary).
        texts: (L + 1, W, K) nested lists of the candidates as people read them.
        following: (W,) int32, the id of the token after each position (-1 after the last token).
    """

    positions: np.ndarray
    ids: np.ndarray
    probs: np.ndarray
    texts: list
    following: np.ndarray

    @property
    def num_layers(self) -> int:
        """L: the rows are L + 1 (the embeddings, then each layer's output)."""
        return self.ids.shape[0] - 1

    def rows(self) -> list[dict]:
        """One row per (layer row, position, rank): ``layer`` (0: the embeddings, l: after layer l - 1), position,
        rank (1 = top), candidate, id, probability."""
        return [
            {"layer": row, "position": int(position), "rank": rank + 1, "candidate": self.texts[row][col][rank],
             "id": int(self.ids[row, col, rank]), "probability": float(self.probs[row, col, rank])}
            for row in range(self.ids.shape[0])
            for col, position in enumerate(self.positions.tolist())
            for rank in range(self.ids.shape[2])
        ]


def lens_limit(trace: EncoderTrace) -> str | None:
    """Why the lens cannot run on ``trace`` (its model has no LM head), or None."""
    return None if trace.has_lm_head else NO_LM_HEAD


def lens_window(trace: EncoderTrace, until: int | None = None) -> np.ndarray:
    """(W,) int32: the positions the lens covers, at most ``LENS_WINDOW`` ending at ``until`` (default the last)."""
    count = trace.num_tokens
    end = count - 1 if until is None else whole_number(until, "until", "a token index")
    if not 0 <= end < count:
        raise ViewError(f"until {end} is out of range: the text has {count} tokens (0-{count - 1})")
    return np.arange(max(0, end - LENS_WINDOW + 1), end + 1, dtype=np.int32)


def logit_lens(model: LoadedModel, trace: EncoderTrace, until: int | None = None) -> LogitLens:
    """The logit lens of ``trace`` (made by ``model``) over ``lens_window(trace, until)``.

    Raises:
        AnalysisError: the model has no LM head, or the trace was not made by this model.
    """
    if lens_limit(trace):
        raise AnalysisError(NO_LM_HEAD)
    check_pairing(model, trace)
    positions = lens_window(trace, until)
    layers, width = trace.num_layers, len(positions)
    streams = trace.hidden[:, positions]  # (L + 1, W, D)
    before = _top_k(model, streams[:layers].reshape(layers * width, -1), normed=False)
    output = _top_k(model, streams[layers], normed=True)
    ids = np.concatenate([before[0], output[0]]).reshape(layers + 1, width, -1).astype(np.int32)
    probs = np.concatenate([before[1], output[1]]).reshape(layers + 1, width, -1).astype(np.float32)
    following = np.array([trace.token_ids[p + 1] if p + 1 < trace.num_tokens else -1 for p in positions], np.int32)
    return LogitLens(positions, ids, probs, _texts(model, trace, ids), following)


def _top_k(model: LoadedModel, hidden: np.ndarray, normed: bool) -> tuple[np.ndarray, np.ndarray]:
    """``lens_top_k`` of (N, D) residual vectors, a few rows per call (``LENS_CHUNK_BYTES`` of logits)."""
    rows = max(1, LENS_CHUNK_BYTES // (4 * model.config.vocab_size))
    ids, probs = [], []
    for start in range(0, len(hidden), rows):
        top_ids, top_probs = model.encoder.lens_top_k(np.ascontiguousarray(hidden[start:start + rows]), normed)
        ids.append(np.array(to_numpy(top_ids)))
        probs.append(np.array(to_numpy(top_probs)))
    return np.concatenate(ids), np.concatenate(probs)


def _texts(model: LoadedModel, trace: EncoderTrace, ids: np.ndarray) -> list:
    """``ids`` (any shape) as nested lists of the tokens as people read them."""
    unique, inverse = np.unique(ids, return_inverse=True)
    pieces = np.array([readable_piece(model.tokenizer.id_to_token(int(i)), trace.token_style) for i in unique],
                      dtype=object)
    return pieces[inverse.reshape(ids.shape)].tolist()


# ---------------------------------------------------------------------------------------------------------------
# The registry's compute and rows


def compute_lens(inputs: Inputs, options: Options) -> LogitLens:
    """The logit lens of the inputs' trace, over the window ending at ``options["until"]`` (default the last
    token)."""
    return logit_lens(inputs.model(), inputs.trace, options.get("until"))


def lens_rows(result: LogitLens, trace: EncoderTrace | None, options: Options) -> tuple[list[dict], Any]:
    """The long-format rows (``LogitLens.rows``), and the result itself as the JSON."""
    return result.rows(), result
