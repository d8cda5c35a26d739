"""Encoder trace latency: Headlight vs Hugging Face transformers (PyTorch, eager attention) on MiniLM.

Both sides do the whole job a user waits for: tokenize, forward with every attention map and hidden state, and
both as NumPy arrays (attention (L, H, T, T), hidden (L + 1, T, D)). Runs alternate (ours, theirs, ours, ...) so
machine load hits both alike. Each table names the CPU (``bench.common.cpu_description``); ``python -m bench
encoder --isa avx2`` measures with both frameworks capped at AVX2.
"""

from __future__ import annotations

import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np

TEXT = (
    "Attention lets every token look at every other token, and each head learns its own pattern of looking; "
    "some heads follow syntax, some track position, and some simply rest on the separator. "
)
LENGTHS = (32, 128, 512)


def text_of_length(tokenizer, n: int) -> str:
    """A prefix of real prose (cut between words) that tokenizes to exactly ``n`` tokens, specials included (the
    prose repeated as often as ``n`` needs: at least two words a token)."""
    words = (TEXT * max(60, n // 16)).split()
    low, high = 1, len(words)
    while low < high:  # the largest word count whose encoding has at most n tokens
        mid = (low + high + 1) // 2
        if tokenizer.encode(" ".join(words[:mid])).untruncated_length <= n:
            low = mid
        else:
            high = mid - 1
    text = " ".join(words[:low])
    for filler in (" .", "."):  # " ." is one more token in most vocabularies, "." where " ." takes two
        while (tokenizer.encode(text).untruncated_length < n
               and tokenizer.encode(text + filler).untruncated_length <= n):
            text += filler
    return text


def _median_ms(samples: list[float]) -> float:
    return 1000 * statistics.median(samples)


def load_runners():
    """The loaded MiniLM and three ways to trace a text of n tokens (warm after one call each): "ours"
    (``trace_text``) and "theirs" (transformers, eager attention), each returning (attention, hidden) as NumPy, and
    "plain" (our compiled forward pass that returns the last hidden state only)."""
    import tensorflow as tf
    import torch
    from transformers import AutoTokenizer, BertModel

    from bench.common import bench_threads
    from encoder.sources import load_source
    from encoder.trace import trace_text

    torch.set_num_threads(bench_threads())
    ours = load_source("minilm")
    folder = str(ours.folder)
    hf_tokenizer = AutoTokenizer.from_pretrained(folder)
    hf_model = BertModel.from_pretrained(folder, attn_implementation="eager").eval()
    texts = {n: text_of_length(ours.tokenizer, n) for n in LENGTHS}

    plain = tf.function(
        lambda ids, segs: ours.model(ids, segs, training=False)["hidden"][:, -1],
        input_signature=[tf.TensorSpec([None, None], tf.int32)] * 2,
    )

    def run_ours(n):
        trace = trace_text(ours, texts.get(n) or text_of_length(ours.tokenizer, n))
        return trace.attention, trace.hidden

    def run_theirs(n):
        batch = hf_tokenizer(texts[n], truncation=True, max_length=512, return_tensors="pt")
        with torch.inference_mode():
            out = hf_model(**batch, output_attentions=True, output_hidden_states=True)
        return np.stack([a[0].numpy() for a in out.attentions]), np.stack([h[0].numpy() for h in out.hidden_states])

    def run_plain(n):
        encoded = ours.tokenizer.encode(texts[n])
        return plain(encoded.token_ids[None], encoded.segment_ids[None]).numpy()

    return ours, {"ours": run_ours, "theirs": run_theirs, "plain": run_plain}


def length_row(n: int, runners: dict, repeats: int) -> dict:
    """One table row: median ms of each runner at ``n`` tokens (runs alternate), the CPU ms (all threads of this
    process) the two traces took, and the attention gap. CPU time is what a run costs however busy the machine is;
    wall time is what a user waits."""
    (a, hidden_a), (b, hidden_b) = runners["ours"](n), runners["theirs"](n)  # warm up (and compile) both
    runners["plain"](n)
    assert a.shape == b.shape == (6, 12, n, n), (a.shape, b.shape)
    assert hidden_a.shape == hidden_b.shape == (7, n, 384), (hidden_a.shape, hidden_b.shape)
    gap = float(np.abs(a - b).max())
    times = {name: [] for name in runners}
    cpu = {name: [] for name in runners}
    for _ in range(repeats if n < 512 else max(10, repeats // 3)):
        for name, run in runners.items():
            start, start_cpu = time.perf_counter(), time.process_time()
            run(n)
            times[name].append(time.perf_counter() - start)
            cpu[name].append(time.process_time() - start_cpu)
    ours_ms, theirs_ms, plain_ms = (_median_ms(times[k]) for k in ("ours", "theirs", "plain"))
    ours_cpu, theirs_cpu = _median_ms(cpu["ours"]), _median_ms(cpu["theirs"])
    return {
        "tokens": n,
        "headlight trace ms": round(ours_ms, 1),
        "transformers trace ms": round(theirs_ms, 1),
        "ratio (<= 1 is faster)": round(ours_ms / theirs_ms, 2),
        "CPU ms headlight / transformers": f"{ours_cpu:.0f} / {theirs_cpu:.0f} ({ours_cpu / theirs_cpu:.2f})",
        "forward w/o attention out ms": round(plain_ms, 1),
        "instrumentation overhead": f"{100 * (ours_ms / plain_ms - 1):+.0f}%",
        "max |attention diff|": f"{gap:.1e}",
    }


def retrace_row(ours, run_ours) -> dict:
    """One table row: how many times the encoder retraced for four new lengths (should be 0)."""
    before = ours.encoder.tracing_count()
    for n in (7, 19, 77, 301):
        run_ours(n)
    return {"tokens": "7/19/77/301", "headlight trace ms": "new lengths",
            "instrumentation overhead": f"retraces: {ours.encoder.tracing_count() - before}"}


def main(repeats: int = 30) -> list[dict]:
    ours, runners = load_runners()
    return [*(length_row(n, runners, repeats) for n in LENGTHS), retrace_row(ours, runners["ours"])]


if __name__ == "__main__":
    from bench.common import print_table

    print_table("Encoder trace, MiniLM (6x12, d=384), median of alternating runs", main())
