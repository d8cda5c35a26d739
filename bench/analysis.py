"""Analysis speed on MiniLM: rollout and report card at 512 tokens, flow at short lengths, the corpus report over
1,000 test sentences (encoder included), noise stability and the ablation of all 72 heads at 32 tokens, value
zeroing at 32, 128 and 512 tokens.

Each number is the median of a few runs after a warm-up; the corpus modes alternate twice, best of two.
"""

from __future__ import annotations

import os
import time
from functools import partial
from pathlib import Path

from bench.common import median_ms

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

CORPUS_SIZE = 1000
DATA = Path(__file__).resolve().parent.parent / "data" / "test.tsv"
warm_median_ms = partial(median_ms, warm_up=True)  # first call compiles the shape


def _row(what: str, tokens, ms: float, note: str = "") -> dict:
    return {"analysis": what, "tokens": tokens, "ms": f"{ms:,.1f}", "note": note}


def per_input_rows(model) -> list[dict]:
    from analysis import attention_flow, attention_rollout, head_distances, head_report
    from analysis.perturb import DEFAULT_SAMPLES, DEFAULT_SIGMAS, head_importance, noise_stability
    from bench.encoder import text_of_length
    from encoder.trace import trace_text

    long = trace_text(model, text_of_length(model.tokenizer, 512))
    short = trace_text(model, text_of_length(model.tokenizer, 32))
    rows = [
        _row("trace (for scale)", 512, warm_median_ms(lambda: trace_text(model, long.text), 5)),
        _row("attention rollout", 512, warm_median_ms(lambda: attention_rollout(long.attention), 5),
             "6 layers, float64"),
        _row("head report card", 512, warm_median_ms(lambda: head_report(long), 5), "8 statistics x 72 heads"),
        _row("head distances (clustering)", 128, warm_median_ms(
            lambda: head_distances(trace_text(model, text_of_length(model.tokenizer, 128)).attention), 3),
            "2,556 head pairs, trace included"),
        _row("head distances (clustering)", 512, warm_median_ms(lambda: head_distances(long.attention), 1),
             "2,556 head pairs"),
    ]
    for n in (16, 24, 32):
        attention = trace_text(model, text_of_length(model.tokenizer, n)).attention
        rows.append(_row("attention flow", n, warm_median_ms(lambda a=attention: attention_flow(a), 3),
                         f"{n * n} max-flow problems"))
    runs = 1 + (len(DEFAULT_SIGMAS) - 1) * DEFAULT_SAMPLES
    rows.append(_row("noise stability", 32, warm_median_ms(lambda: noise_stability(model, short), 3),
                     f"{len(DEFAULT_SIGMAS)} sigmas, {runs} encoder runs"))
    rows.append(_row("head ablation importance map", 32, warm_median_ms(lambda: head_importance(model, short), 3),
                     "72 heads, each silenced alone"))
    return rows + value_zeroing_rows(model)


def value_zeroing_rows(model) -> list[dict]:
    """Value zeroing at 32, 128 and 512 tokens: each layer run once per token. One graph per layer serves every
    length, so the warm-up at 32 tokens compiles it for all three."""
    from analysis.value_zeroing import rows_per_call, value_zeroing
    from bench.encoder import text_of_length
    from encoder.trace import trace_text

    rows = []
    for n, repeats in ((32, 5), (128, 3), (512, 1)):
        trace = trace_text(model, text_of_length(model.tokenizer, n))
        timed = partial(median_ms, warm_up=n == 32)
        calls = 6 * -(-n // (rows_per_call(model.config.num_heads, n) - 1))
        rows.append(_row("value zeroing", n, timed(lambda t=trace: value_zeroing(model, t), repeats),
                         f"6 x {n} layer runs in {calls} calls"))
    return rows


def gradient_rows(model) -> list[dict]:
    """Attention x gradient, input x gradient and integrated gradients (default points) at 32, 128, 512 tokens,
    with the growth of the process's peak resident memory during each (integrated gradients batch their points)."""
    import resource

    from analysis.gradients import DEFAULT_STEPS, attention_gradient, input_gradient, integrated_gradients
    from bench.encoder import text_of_length
    from encoder.trace import trace_text

    methods = {  # integrated gradients first, so the peak it reaches is its own
        "integrated gradients": (integrated_gradients, f"{DEFAULT_STEPS} Gauss-Legendre points + 2 ends"),
        "input x gradient": (input_gradient, "1 gradient call"),
        "attention x gradient": (attention_gradient, "1 gradient call, (L, H, T, T) out")}
    rows = []
    for n in (32, 128, 512):
        trace = trace_text(model, text_of_length(model.tokenizer, n))
        for what, (method, note) in methods.items():
            before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            ms = warm_median_ms(lambda m=method, t=trace: m(model, t), 3 if n < 512 else 1)
            grown = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
            rows.append(_row(what, n, ms, f"{note}; peak memory +{grown:,.0f} MB"))
    return rows


def corpus_rows(model) -> list[dict]:
    from analysis import corpus_head_report, iter_traces
    from tutorial.dataset import read_split

    sentences = [example.text for example in read_split(DATA)][:CORPUS_SIZE]
    list(iter_traces(model, sentences[:64]))  # warm up the padded graph
    modes = {
        "encoder only (trace_batch)": lambda: sum(1 for _ in iter_traces(model, sentences)),
        "report card": lambda: corpus_head_report(iter_traces(model, sentences), distances=False),
        "report card + head distances": lambda: corpus_head_report(iter_traces(model, sentences)),
    }
    best = dict.fromkeys(modes, float("inf"))
    for _ in range(2):  # alternate the modes and keep each one's best, so load from elsewhere hits all alike
        for what, run in modes.items():
            start = time.perf_counter()
            run()
            best[what] = min(best[what], time.perf_counter() - start)
    return [{"corpus (1,000 test sentences)": what, "seconds": f"{seconds:.2f}",
             "sentences / s": f"{len(sentences) / seconds:,.0f}"} for what, seconds in best.items()]


def main() -> None:
    from bench.common import print_table
    from encoder.sources import load_source

    model = load_source("minilm")
    print_table("Analysis per input, MiniLM (6x12), median ms", per_input_rows(model))
    print_table("Gradient attributions, MiniLM (6x12), median ms", gradient_rows(model))
    print_table("Corpus head report, MiniLM, encoder time included", corpus_rows(model))


if __name__ == "__main__":
    main()
