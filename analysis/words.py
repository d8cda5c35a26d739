"""Sub-word tokens merged into words, as Clark et al. (2019, "What does BERT look at?") do to compare attention
with word-level structure: a trace over words instead of tokens, which every view and analysis can show.
"""

from __future__ import annotations

import numpy as np

from encoder.errors import AnalysisError
from encoder.pieces import join_pieces, readable_piece
from encoder.trace import EncoderTrace


def word_starts(trace: EncoderTrace) -> np.ndarray:
    """(W,) int64: the index of each word's first token, in order.

    A word is a run of consecutive tokens with the same ``trace.words`` number; a special token, or one without a
    word (-1), is a word of its own.

    Raises:
        AnalysisError: the trace does not know which word each token belongs to (``words`` is None).
    """
    if trace.words is None:
        raise AnalysisError("This trace does not say which word each token belongs to (it was saved before "
                            "Headlight recorded words); trace the text again to merge sub-words into words.")
    words = np.asarray(trace.words)
    alone = (words < 0) | trace.special  # (T,)
    starts = np.ones(trace.num_tokens, dtype=bool)
    starts[1:] = alone[1:] | alone[:-1] | (words[1:] != words[:-1])
    return np.flatnonzero(starts)


def merge_words(trace: EncoderTrace) -> EncoderTrace:
    """The trace with each word's tokens merged into one (``word_starts`` says which).

    - attention to a word is the sum over its pieces (keys); attention from a word the mean over its pieces
      (queries), so every row still sums to 1: ``merged[l, h, a, b] = mean_{i in a} sum_{j in b} A[l, h, i, j]``.
    - ``visible``: a word sees another where any of its pieces saw any of the other's.
    - ``hidden`` and ``positional`` rows: the mean over the pieces.
    - ``logit_terms``: each term's mean over the query word's and the key word's pieces (the terms still sum to the
      mean logit; the softmax of that sum is not the merged attention).
    - ``token_ids``, ``segment_ids``, ``special``: those of the word's first piece.
    - ``tokens``: the word as people read it (``encoder.pieces.join_pieces``: "Ġhe" "ll" "o" -> "hello"), so the
      result's ``token_style`` is "" (plain text); special tokens stay as they are.
    - ``words``: one number per word, in order (-1 for special tokens).
    - An LM head's outputs (``word_predictions``): a word predicts what its last piece predicts; its
      ``next_logprob`` is the log-probability of the whole next word (the sum over that word's pieces); a word is
      ``generated`` when any of its pieces is; a generation's per-step candidates are dropped (steps are tokens);
      the candidates' pieces become plain text, as the tokens do.
    Everything else is unchanged.

    Merging a trace whose words are single tokens changes no number.

    Raises:
        AnalysisError: the trace has no ``words`` (see ``word_starts``).

    Example:
        >>> merge_words(trace).tokens  # doctest: +SKIP
        ('<s>', 'Café', 'naïve', '</s>')
    """
    starts = word_starts(trace)
    ends = np.append(starts[1:], trace.num_tokens)
    counts = (ends - starts).astype(np.float32)  # (W,) pieces per word
    to_words = np.add.reduceat(trace.attention, starts, axis=-1)  # (L, H, T, W): keys summed
    attention = np.add.reduceat(to_words, starts, axis=-2) / counts[:, None]  # (L, H, W, W): queries averaged
    visible = None
    if trace.visible is not None:
        visible = np.logical_or.reduceat(np.logical_or.reduceat(trace.visible, starts, axis=-1), starts, axis=-2)
    special = trace.special[starts]
    tokens = tuple(trace.tokens[a] if trace.special[a] else join_pieces(trace.tokens[a:b], trace.token_style)
                   for a, b in zip(starts.tolist(), ends.tolist()))
    words = np.where(special, -1, np.cumsum(~special) - 1).astype(np.int32)
    return trace.replace(
        tokens=tokens,
        token_ids=trace.token_ids[starts],
        segment_ids=trace.segment_ids[starts],
        special=special,
        attention=attention.astype(np.float32),
        positional=_mean_rows(trace.positional, starts, counts, axis=0),
        hidden=_mean_rows(trace.hidden, starts, counts, axis=1),
        words=words,
        visible=visible,
        token_style="",
        logit_terms={name: _mean_rows(_mean_rows(term, starts, counts, axis=-1), starts, counts, axis=-2)
                     for name, term in trace.logit_terms.items()},
        **word_predictions(trace, starts, ends),
    )


def word_predictions(trace: EncoderTrace, starts: np.ndarray, ends: np.ndarray) -> dict:
    """The ``outputs`` and ``generated`` of the merged trace: per word, the LM outputs of its last piece
    (``next_ids``, ``next_probs``, ``logits``), and ``next_logprob`` summed over the next word's pieces (NaN after
    the last word); nothing changes for a model without an LM head."""
    outputs = dict(trace.outputs)
    if "next_ids" in outputs:
        last = ends - 1  # (W,) each word's last piece
        for name in ("next_ids", "next_probs", "logits"):
            if name in outputs:
                outputs[name] = np.ascontiguousarray(outputs[name][last])
        if "next_logprob" in outputs:
            logprob = np.asarray(outputs["next_logprob"], dtype=np.float64)
            # The pieces of word w + 1 are predicted at positions last[w] .. last[w + 1] - 1.
            summed = [logprob[a:b].sum() for a, b in zip(last[:-1].tolist(), last[1:].tolist())]
            outputs["next_logprob"] = np.array([*summed, np.nan], dtype=np.float32)
        for name in ("step_ids", "step_probs"):
            outputs.pop(name, None)
    generated = None if trace.generated is None else np.logical_or.reduceat(trace.generated, starts)
    # The merged tokens are plain text (token_style ""): so are the candidates' pieces.
    pieces = tuple(readable_piece(piece, trace.token_style) for piece in trace.vocab_tokens)
    return {"outputs": outputs, "generated": generated, "vocab_tokens": pieces}


def _mean_rows(values: np.ndarray, starts: np.ndarray, counts: np.ndarray, axis: int) -> np.ndarray:
    """The mean of each word's rows of ``values`` along ``axis`` (the token axis), float32."""
    shape = [1] * values.ndim
    shape[axis] = counts.size
    return (np.add.reduceat(values, starts, axis=axis) / counts.reshape(shape)).astype(np.float32)
