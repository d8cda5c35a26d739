"""Generation: a decoder continues a prompt, token by token, and the result is one trace of prompt + continuation.

``generate_ids`` runs the loop on token ids: a prefill of the prompt, then one cached step per new token
(``CompiledEncoder.extend``: each layer's keys and values are kept, so a step runs the new token alone through the
model's own layers), choosing each token greedily or by sampling. ``generate_text`` tokenizes the prompt, generates,
and traces the whole final sequence with one full forward pass (its attention, hidden states and LM-head outputs),
marking the generated tokens (``EncoderTrace.generated``) and keeping each step's top-K candidates
(``outputs["step_ids"]``, ``outputs["step_probs"]``).

A causal model's attention over the final sequence equals the attention each step computed (row ``P - 1 + k`` of
the final trace is the query of step k, P the prompt's tokens), up to float32 rounding: the step replay of the app
reads the final trace.

An encoder-decoder with an LM head (``T5ForConditionalGeneration``, ``BartForConditionalGeneration``) writes a target
for its source instead: the encoder runs once, then the decoder runs on its start token and the tokens written so far
at every step (no cache: outputs are short, and ``MAX_NEW_TOKENS`` and the decoder's positions bound them), and the
result is the source's trace teacher-forced on what it wrote (``encoder.trace.decoder_fields``: ``target`` its text).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from encoder.errors import InputError, whole_number
from encoder.model import TOP_K
from encoder.tokenizer import Encoded
from encoder.trace import EncoderTrace, _make_trace, decoder_fields, forward_outputs, has_lm_head, to_numpy

if TYPE_CHECKING:
    from encoder.sources import LoadedModel


MAX_NEW_TOKENS = 4096  # the most tokens one call may generate, whatever the model's positions
MAX_TEMPERATURE = 100.0
EOS_FILES = ("generation_config.json", "config.json")  # where a model folder names its end-of-sequence ids
_EOS_FILE_BYTES = 1 << 20


@dataclass(frozen=True)
class Generation:
    """What ``generate_ids`` produced.

    Attributes:
        prompt_ids: (P,) int32, the prompt's token ids (an encoder-decoder's: its source's).
        ids: (N,) int32, the generated ids in order (N <= max_new_tokens; fewer when it stopped at an EOS).
        step_ids, step_probs: (N, K) int32 / float32, each step's K most probable tokens of the distribution it
            chose from (after the temperature, top-k and top-p; the softmax of the logits for greedy steps).
        logits: (N, V) float32, each step's raw logits (before the temperature), or None unless asked.
        attention: N arrays (L, H, P + k) float32, step k's attention (its query's row over every key), or None
            unless asked.
    """

    prompt_ids: np.ndarray
    ids: np.ndarray
    step_ids: np.ndarray
    step_probs: np.ndarray
    logits: np.ndarray | None = None
    attention: tuple[np.ndarray, ...] | None = None

    @property
    def sequence(self) -> np.ndarray:
        """(P + N,) int32: the prompt followed by the generated tokens."""
        return np.concatenate([self.prompt_ids, self.ids]).astype(np.int32)


def generate_text(
    model: LoadedModel,
    prompt: str,
    max_new_tokens: int = 20,
    temperature: float = 0.0,
    top_k: int = 0,
    top_p: float = 1.0,
    seed: int | None = None,
    stop_at_eos: bool = False,
) -> EncoderTrace:
    """Continue ``prompt`` with up to ``max_new_tokens`` tokens and trace prompt + continuation; an
    encoder-decoder writes a target for ``prompt`` (its source) and traces it teacher-forced.

    Args:
        model: a LoadedModel with an LM head (a decoder: Llama, Mistral, Qwen, Gemma, Phi-3, ...; or an
            encoder-decoder's: T5ForConditionalGeneration, BartForConditionalGeneration).
        prompt: the text to continue (tokenized as ``trace_text`` tokenizes it: the BOS where the tokenizer adds
            one; refused when empty, as ``trace_text`` refuses it).
        max_new_tokens: a whole number from 1 to the model's remaining positions (and ``MAX_NEW_TOKENS``).
        temperature: 0 is greedy (the most probable token each step; the first on a tie); above 0 samples from
            softmax(logits / temperature).
        top_k: sample only among the ``top_k`` most probable tokens (0: all).
        top_p: sample only among the most probable tokens whose probabilities sum to at least ``top_p`` (nucleus
            sampling; 1: all).
        seed: the seed of the NumPy Generator that samples (the same seed gives the same tokens); None draws one.
        stop_at_eos: stop after the model's end-of-sequence token (the model folder's ``eos_token_id``).

    Returns:
        An EncoderTrace of the P prompt tokens and N generated ones: the full forward pass of that sequence,
        ``generated`` True at the N new tokens, ``outputs["step_ids"]`` / ``outputs["step_probs"]`` (N, K) the
        candidates each step chose from (of the distribution it sampled from, after the temperature; for greedy
        steps equal to ``next_ids[P - 1 + k]`` / ``next_probs[P - 1 + k]`` up to float32 rounding). ``text`` is
        the prompt followed by the decoded continuation. An encoder-decoder's: ``trace_text`` of the source with
        the decoder teacher-forced on the N tokens it wrote (its input the start token and the first N - 1 of
        them; ``target`` their decoded text, special tokens skipped); step candidates are not kept.

    Raises:
        InputError: no LM head, an empty or too long prompt, a setting out of range.

    Example:
        >>> trace = generate_text(load_source("models/smollm2"), "Once upon a time", max_new_tokens=5)  # doctest: +SKIP
        >>> trace.generated.sum()  # doctest: +SKIP
        5
    """
    check_generator(model)
    encoded = model.tokenizer.encode(prompt)
    generation = generate_ids(model, encoded.token_ids, max_new_tokens, temperature, top_k, top_p, seed,
                              stop_at_eos)
    if model.decoder is not None:
        return trace_written_target(model, encoded, generation, prompt)
    return trace_generation(model, encoded, generation, prompt)


def check_generator(model: LoadedModel) -> None:
    """Refuse a model that cannot continue a text (InputError): one without an LM head, or not causal; an
    encoder-decoder whose decoder has no LM head (``T5Model``, ``BartModel``)."""
    if model.decoder is not None:
        if not model.decoder.model.config.head.lm_head:
            raise InputError("This encoder-decoder has no language-model head (a T5Model or BartModel checkpoint): "
                             "it cannot write a target. Give a target to trace, or open its *ForConditionalGeneration "
                             "checkpoint.")
        return
    if not has_lm_head(model) or not model.config.attention.causal:
        raise InputError(f"{model.name} has no language-model head: it cannot continue a text. Choose a decoder "
                         "(a model that predicts the next token, such as Llama, Qwen, Gemma or Phi-3).")


def generate_ids(
    model: LoadedModel,
    prompt_ids,
    max_new_tokens: int = 20,
    temperature: float = 0.0,
    top_k: int = 0,
    top_p: float = 1.0,
    seed: int | None = None,
    stop_at_eos: bool = False,
    return_logits: bool = False,
    return_attention: bool = False,
) -> Generation:
    """Generate from token ids: a prefill of ``prompt_ids`` (P,), then one cached step per token; an
    encoder-decoder: the encoder on ``prompt_ids`` (the source) once, then its decoder on the start token and the
    tokens so far at every step (``max_new_tokens`` up to the decoder's positions).

    Arguments as ``generate_text``; ``return_logits`` keeps each step's raw logits (N, V), ``return_attention``
    each step's attention row (L, H, P + k) (a decoder-only model's).

    Raises:
        InputError: no LM head, an empty prompt, a setting out of range, ``return_attention`` for an
            encoder-decoder.
    """
    check_generator(model)
    prompt_ids = np.asarray(prompt_ids)
    if prompt_ids.ndim != 1 or prompt_ids.size == 0 or prompt_ids.dtype.kind not in "iu":
        raise InputError("the prompt must be a non-empty sequence of token ids")
    vocab = model.config.vocab_size
    if prompt_ids.min() < 0 or prompt_ids.max() >= vocab:
        raise InputError(f"prompt token ids must be in 0-{vocab - 1}")
    prompt_ids = prompt_ids.astype(np.int32)
    if model.decoder is not None and return_attention:
        raise InputError("an encoder-decoder's step attention is its final trace's (decoder_attention, "
                         "cross_attention): return_attention is for decoder-only models")
    room = (model.config.max_positions - len(prompt_ids) if model.decoder is None
            else model.decoder.model.config.max_positions)
    count = check_new_tokens(max_new_tokens, room)
    temperature, top_k, top_p = check_sampling(temperature, top_k, top_p, vocab)
    rng = np.random.default_rng(None if seed is None else whole_number(seed, "seed", error=InputError))
    stops = end_of_sequence_ids(model) if stop_at_eos else frozenset()

    out, step = (_cached_steps if model.decoder is None else _decoder_steps)(model, prompt_ids)
    ids, step_ids, step_probs, logits_kept, attention_kept = [], [], [], [], []
    for index in range(count):
        logits = to_numpy(out["logits"])[0]  # (V,) float32
        if return_logits:
            logits_kept.append(np.array(logits))
        if return_attention:
            attention_kept.append(np.array(to_numpy(out["attention"])[0]))  # (L, H, S)
        token, candidates, probs = choose(logits, temperature, top_k, top_p, rng)
        ids.append(token)
        step_ids.append(candidates)
        step_probs.append(probs)
        if token in stops or index == count - 1:
            break
        out = step(ids, out)
    return Generation(
        prompt_ids=prompt_ids,
        ids=np.asarray(ids, np.int32),
        step_ids=np.stack(step_ids).astype(np.int32),
        step_probs=np.stack(step_probs).astype(np.float32),
        logits=np.stack(logits_kept) if return_logits else None,
        attention=tuple(attention_kept) if return_attention else None,
    )


def _cached_steps(model: LoadedModel, prompt_ids: np.ndarray):
    """``(first, step)`` of a decoder-only model: the prefill's output, and ``step(ids, out)``, the output after
    the last of the generated ``ids`` (``out``: the previous step's, whose key/value cache it extends)."""
    encoder = model.encoder
    keys, values = encoder.empty_cache()

    def step(ids: list[int], out: dict) -> dict:
        position = len(prompt_ids) + len(ids) - 1
        return encoder.extend(np.array([ids[-1:]], np.int32), np.int32(position), out["keys"], out["values"])

    return encoder.extend(prompt_ids[None], np.int32(0), keys, values), step


def _decoder_steps(model: LoadedModel, source_ids: np.ndarray):
    """``(first, step)`` of an encoder-decoder: the encoder run once on ``source_ids``; each output holds
    ``logits`` (1, V), the LM head at the last decoder position of the start token followed by ``ids``."""
    outputs = model.encoder.forward(source_ids[None], np.zeros((1, len(source_ids)), np.int32))
    states = outputs.get("last_hidden_state", outputs["hidden"][:, -1])  # (1, S, D): what the decoder reads

    def step(ids: list[int], out: dict | None = None) -> dict:
        decoder_ids = np.array([[model.decoder_start, *ids]], np.int32)  # (1, n + 1)
        return {"logits": model.decoder.forward_decoder(decoder_ids, states, logits=True)["logits"][:, -1]}

    return step([]), step


def trace_written_target(model: LoadedModel, encoded: Encoded, generation: Generation, source: str) -> EncoderTrace:
    """An encoder-decoder's trace of ``source`` (``encoded``) teacher-forced on the tokens ``generation`` wrote."""
    tokenizer = model.tokenizer
    outputs = forward_outputs(model, encoded.token_ids[None], encoded.segment_ids[None])
    written = generation.ids
    special = np.array([int(i) in tokenizer.special_ids() for i in written], dtype=bool)
    decoder = decoder_fields(model, outputs, tokenizer.decode(written), written,
                             tuple(tokenizer.id_to_token(int(i)) for i in written), special)
    return _make_trace(model, encoded, outputs, source, None, decoder=decoder)


def check_new_tokens(max_new_tokens, remaining: int) -> int:
    """``max_new_tokens`` as an int from 1 to ``remaining`` (the model's positions after the prompt) and
    ``MAX_NEW_TOKENS``, else InputError."""
    count = whole_number(max_new_tokens, "max_new_tokens", "a whole number", error=InputError)
    if remaining < 1:
        raise InputError("The prompt fills all of the model's positions: shorten it to leave room for new tokens.")
    most = min(remaining, MAX_NEW_TOKENS)
    if not 1 <= count <= most:
        raise InputError(f"max_new_tokens must be from 1 to {most} here (the model has room for {remaining} more "
                         f"tokens after this prompt), got {count}")
    return count


def check_sampling(temperature, top_k, top_p, vocab: int) -> tuple[float, int, float]:
    """The sampling settings checked (InputError): temperature in [0, ``MAX_TEMPERATURE``], top_k a whole number
    >= 0 (0: off; capped at the vocabulary), top_p in (0, 1]."""
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float, np.floating, np.integer)):
        raise InputError(f"temperature must be a number, got {temperature!r}")
    temperature = float(temperature)
    if not 0.0 <= temperature <= MAX_TEMPERATURE:
        raise InputError(f"temperature must be from 0 (greedy) to {MAX_TEMPERATURE:g}, got {temperature!r}")
    top_k = whole_number(top_k, "top_k", "a whole number", error=InputError)
    if top_k < 0:
        raise InputError(f"top_k must be 0 (off) or a positive whole number, got {top_k}")
    if isinstance(top_p, bool) or not isinstance(top_p, (int, float, np.floating, np.integer)):
        raise InputError(f"top_p must be a number, got {top_p!r}")
    top_p = float(top_p)
    if not 0.0 < top_p <= 1.0:
        raise InputError(f"top_p must be above 0 and at most 1, got {top_p!r}")
    return temperature, min(top_k, vocab), top_p


def choose(logits: np.ndarray, temperature: float, top_k: int, top_p: float,
           rng: np.random.Generator) -> tuple[int, np.ndarray, np.ndarray]:
    """One step's choice from ``logits`` (V,): ``(token, candidate ids (K,), their probabilities (K,))``.

    Greedy (temperature 0): the most probable token (the first of equal ones), candidates of softmax(logits).
    Sampling, in the order of transformers' logits processors: softmax(logits / temperature) in float64, kept to
    the ``top_k`` most probable tokens and renormalised, then to the smallest most-probable set whose probability
    reaches ``top_p`` (the token that crosses it included) and renormalised; one draw of ``rng``. The candidates
    are the K most probable tokens of the distribution chosen from (ties: lower id first).
    """
    scaled = logits.astype(np.float64) / (temperature if temperature > 0 else 1.0)
    probs = np.exp(scaled - scaled.max())
    probs /= probs.sum()
    if temperature == 0:
        token = int(np.argmax(logits))
    elif top_k == 0 and top_p >= 1.0:
        token = min(int(np.searchsorted(np.cumsum(probs), rng.random(), side="right")), len(probs) - 1)
    else:
        order = np.argsort(-probs, kind="stable")  # most probable first, lower id on ties
        ranked = probs[order[:top_k or len(order)]]
        ranked = ranked / ranked.sum()
        if top_p < 1.0:
            above = np.cumsum(ranked) - ranked  # the probability of the tokens ranked above each one
            ranked = ranked[:max(1, int(np.sum(above < top_p)))]
            ranked = ranked / ranked.sum()
        probs = np.zeros_like(probs)
        probs[order[:len(ranked)]] = ranked
        token = int(order[min(int(np.searchsorted(np.cumsum(ranked), rng.random(), side="right")),
                              len(ranked) - 1)])
    return (token, *top_candidates(probs))


def top_candidates(probs: np.ndarray, k: int = TOP_K) -> tuple[np.ndarray, np.ndarray]:
    """``(ids (K,) int32, probabilities (K,) float32)``: the K most probable entries of ``probs`` (V,), most
    probable first, lower id first among equal ones (without sorting the whole vocabulary)."""
    k = min(k, len(probs))
    best = np.argpartition(-probs, k - 1)[:k] if k < len(probs) else np.arange(len(probs))
    best = best[np.lexsort((best, -probs[best]))]
    return best.astype(np.int32), probs[best].astype(np.float32)


def end_of_sequence_ids(model: LoadedModel) -> frozenset[int]:
    """The ids that end a generation: ``eos_token_id`` (an int or a list) of the model folder's
    ``generation_config.json``, else its ``config.json``; else the tokenizer's own end tokens by name."""
    folder = getattr(model, "folder", None)
    for name in EOS_FILES if folder is not None else ():
        path = folder / name
        try:
            if not path.is_file() or path.stat().st_size > _EOS_FILE_BYTES:
                continue
            value = json.loads(path.read_text(encoding="utf-8")).get("eos_token_id")
        except (OSError, ValueError, AttributeError):
            continue
        values = value if isinstance(value, list) else [value]
        ids = {v for v in values if isinstance(v, int) and not isinstance(v, bool) and 0 <= v < model.config.vocab_size}
        if ids:
            return frozenset(ids)
    names = ("</s>", "<eos>", "<|endoftext|>", "<|end_of_text|>", "<|eot_id|>", "<|im_end|>", "<|end|>")
    return frozenset(i for i in map(model.tokenizer.token_to_id, names) if i is not None)


def trace_generation(model: LoadedModel, encoded: Encoded, generation: Generation, prompt: str) -> EncoderTrace:
    """The trace of ``generation``'s whole sequence (one full forward pass), ``encoded`` being its prompt."""
    sequence = generation.sequence
    count = len(generation.ids)
    tokenizer = model.tokenizer
    new_tokens = tuple(tokenizer.id_to_token(int(i)) for i in generation.ids)
    special_ids = tokenizer.special_ids()
    new_special = np.array([int(i) in special_ids for i in generation.ids], dtype=bool)
    whole = Encoded(
        tokens=encoded.tokens + new_tokens,
        token_ids=sequence,
        segment_ids=np.zeros(len(sequence), np.int32),
        special=np.concatenate([encoded.special, new_special]),
        truncated=encoded.truncated,
        untruncated_length=encoded.untruncated_length + count,
        words=continued_words(encoded.words, new_tokens, new_special, encoded.token_style),
        token_style=encoded.token_style,
    )
    outputs = forward_outputs(model, sequence[None], whole.segment_ids[None])
    outputs["step_ids"], outputs["step_probs"] = generation.step_ids, generation.step_probs
    text = prompt + continuation_text(tokenizer, generation.prompt_ids, generation.ids)
    return _make_trace(model, whole, outputs, text, None, generated=np.arange(len(sequence)) >= len(encoded.tokens))


def continuation_text(tokenizer, prompt_ids: np.ndarray, ids: np.ndarray) -> str:
    """The text the generated ``ids`` add after the prompt: the decoded whole minus the decoded prompt (so a
    leading space the tokenizer marks on the first new piece is kept), or the new ids decoded alone."""
    before = tokenizer.decode(prompt_ids)
    whole = tokenizer.decode(np.concatenate([prompt_ids, ids]))
    return whole[len(before):] if whole.startswith(before) else tokenizer.decode(ids)


def continued_words(words: np.ndarray | None, pieces: tuple[str, ...], special: np.ndarray,
                    style: str) -> np.ndarray | None:
    """``words`` (the prompt's) continued over generated ``pieces``: a piece starts a new word when it starts with
    the style's word mark (a space ``Ġ``/``▁`` for byte-level and SentencePiece pieces; anything but ``##`` for
    WordPiece), else it continues the last word; special pieces are -1. None when the prompt's words are."""
    if words is None:
        return None
    numbers, last = list(words.tolist()), int(words.max(initial=-1))
    previous_word = numbers[-1] if numbers else -1
    for piece, is_special in zip(pieces, special.tolist()):
        if is_special:
            numbers.append(-1)
            previous_word = -1
            continue
        starts = (not piece.startswith("##") if style == "wordpiece"
                  else piece.startswith(("Ġ", "▁", " ", "Ċ", "\n")) or style not in ("bytelevel", "metaspace"))
        if starts or previous_word < 0:
            last += 1
            previous_word = last
        numbers.append(previous_word)
    return np.asarray(numbers, np.int32)

