"""Generation replayed: the trace a causal model had after each step, cut from the trace of the whole sequence.

A causal model's token ``t`` attends only to tokens ``<= t``, so its attention rows, hidden states and next-token
outputs do not depend on any later token: the trace of the first ``n`` tokens is exactly the first ``n`` rows of
the trace of all of them (to float32 rounding: another length may batch the sums differently). So step ``k`` of a
generation (the prompt's ``P`` tokens and the first ``k`` generated ones) costs a slice, not a model run.
"""

from __future__ import annotations

import numpy as np

from encoder.errors import AnalysisError
from encoder.trace import EncoderTrace

TOKEN_OUTPUTS = ("next_ids", "next_probs", "next_logprob", "logits")  # one row per token (logits: (T, V) only)
STEP_OUTPUTS = ("step_ids", "step_probs")  # one row per generation step


def is_causal(trace: EncoderTrace) -> bool:
    """Whether no token of ``trace`` saw a later one (a decoder's trace; sliding windows included)."""
    return trace.visible is not None and not np.triu(trace.visible, k=1).any()


def generated_mask(trace: EncoderTrace) -> np.ndarray:
    """(T,) bool: True for the tokens the model generated (all False for a trace that generated none)."""
    generated = getattr(trace, "generated", None)
    return np.zeros(trace.num_tokens, bool) if generated is None else np.asarray(generated, bool)


def prompt_length(trace: EncoderTrace) -> int:
    """P: the tokens before the first generated one (all of them when nothing was generated)."""
    generated = generated_mask(trace)
    return int(np.argmax(generated)) if generated.any() else trace.num_tokens


def generation_steps(trace: EncoderTrace) -> int:
    """N: how many tokens the model generated after the prompt."""
    return trace.num_tokens - prompt_length(trace)


def trace_prefix(trace: EncoderTrace, n: int) -> EncoderTrace:
    """The trace of the first ``n`` tokens of the causal ``trace``: what tracing them alone gives.

    Sliced to the first ``n`` tokens: tokens, ids, segments, special, words, attention and ``visible`` (queries and
    keys), ``logit_terms``, hidden states, positional rows, the per-token outputs (``TOKEN_OUTPUTS``; the last
    token's ``next_logprob`` becomes NaN: its next token is not part of the prefix), the generation steps whose
    token is in the prefix (``STEP_OUTPUTS``) and the ``generated`` mask. Outputs of the whole sequence (a pooled
    embedding, a classifier's probabilities) are dropped: they depend on every token. ``text`` and ``pair`` stay
    those of the whole trace.

    Raises:
        AnalysisError: the trace is not causal (a bidirectional encoder's tokens see later ones), or ``n`` is not
            between 1 and the trace's tokens.

    Example:
        >>> trace_prefix(trace_text(gpt2, "the cat sat on the mat"), 3).tokens  # doctest: +SKIP
        ('the', 'Ġcat', 'Ġsat')
    """
    if not is_causal(trace):
        raise AnalysisError("only a causal model's trace can be cut to its first tokens (here tokens also see later "
                            "ones)")
    total = trace.num_tokens
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or not 1 <= n <= total:
        raise AnalysisError(f"a prefix has between 1 and {total} tokens, got {n!r}")
    n = int(n)
    outputs: dict[str, np.ndarray] = {}
    for name in TOKEN_OUTPUTS:
        value = trace.outputs.get(name)
        if value is not None and value.ndim >= 1 and value.shape[0] == total and (name != "logits" or value.ndim == 2):
            outputs[name] = value[:n]
    if "next_logprob" in outputs:
        logprob = np.array(outputs["next_logprob"], dtype=np.float32)  # a copy: the trace's own stays read-only
        logprob[-1] = np.nan
        outputs["next_logprob"] = logprob
    steps = max(0, n - prompt_length(trace))
    outputs.update({name: trace.outputs[name][:steps] for name in STEP_OUTPUTS if name in trace.outputs})
    changes = {}
    if getattr(trace, "generated", None) is not None:
        changes["generated"] = trace.generated[:n]
    return trace.replace(
        tokens=trace.tokens[:n],
        token_ids=trace.token_ids[:n],
        segment_ids=trace.segment_ids[:n],
        special=trace.special[:n],
        attention=trace.attention[:, :, :n, :n],
        positional=trace.positional[:n],
        hidden=trace.hidden[:, :n],
        outputs=outputs,
        truncated=False,
        untruncated_length=n,
        words=None if trace.words is None else trace.words[:n],
        visible=trace.visible[:, :n, :n],
        logit_terms={name: term[:, :, :n, :n] for name, term in trace.logit_terms.items()},
        **changes,
    )


def step_trace(trace: EncoderTrace, step: int) -> EncoderTrace:
    """The trace after generation step ``step``: the prompt and the first ``step`` generated tokens (step 0: the
    prompt alone; step N: ``trace`` itself).

    Raises:
        AnalysisError: as ``trace_prefix``, or ``step`` is not between 0 and the steps the trace has.
    """
    steps = generation_steps(trace)
    if isinstance(step, bool) or not isinstance(step, (int, np.integer)) or not 0 <= step <= steps:
        raise AnalysisError(f"the generation has steps 0 to {steps}, got {step!r}")
    if step == steps:
        return trace
    return trace_prefix(trace, prompt_length(trace) + int(step))
