"""Long inputs (issue 22): a trace of 2,048 / 4,096 / 8,192 tokens, its attention kept lazily
(``encoder.attention_store.LazyAttention``), each length in a fresh process: the trace's time, the process's peak
resident memory (and the part above the loaded model), the first head's (T, T) weights and a head change.

Models, random weights made here (no download), with the ModernBERT fixture's byte-level BPE tokenizer (ids under
1,500): a MiniLM-shaped encoder (6 layers, 12 heads, width 384, learned positions) and a ModernBERT-base-shaped one
(22 layers, 12 heads, width 768, rotary positions, a 128-token window in two layers of three), both with 8,192
positions. ``python -m bench long``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FIXTURE = ROOT / "tests" / "fixtures" / "families" / "modernbert"
LENGTHS = (2048, 4096, 8192)
SHAPES = {
    "MiniLM-shaped (6 x 12, d=384)": dict(num_layers=6, num_heads=12, d_model=384, dff=1536, positional="learned",
                                          norm_first=False, local_attention=0, global_attention_every=0),
    "ModernBERT-base-shaped (22 x 12, d=768)": dict(num_layers=22, num_heads=12, d_model=768, dff=1152,
                                                    local_attention=128, global_attention_every=3),
}

CHILD = """
import json, resource, sys, time
from encoder.config import EncoderConfig
from encoder.compiled import CompiledEncoder
from encoder.model import TransformerEncoder
from encoder.sources import LoadedModel, load_path
from encoder.trace import trace_text

shape, length = json.loads(sys.argv[1]), int(sys.argv[2])
fixture = load_path(sys.argv[3], name="fixture")
config = EncoderConfig(**{**fixture.config.flat(), **shape, "max_positions": 8192})
model = LoadedModel("long", "random", CompiledEncoder(TransformerEncoder(config)), fixture.tokenizer)
model.tokenizer.max_length = 8192
text = " ".join("w%d" % (i % 97) for i in range(length))
peak = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
loaded = peak()
start = time.perf_counter()
trace = trace_text(model, text, max_tokens=length)
traced = time.perf_counter() - start
start = time.perf_counter()
first = trace.attention[config.num_layers - 1, 0]
first_head = time.perf_counter() - start
start = time.perf_counter()
trace.attention[config.num_layers - 1, 1]
change = time.perf_counter() - start
print(json.dumps({"tokens": trace.num_tokens, "lazy": type(trace.attention).__name__, "trace_s": traced,
                  "first_head_s": first_head, "head_change_s": change, "peak": peak(), "loaded": loaded,
                  "attention_gb": 4 * config.num_layers * config.num_heads * trace.num_tokens ** 2 / 2**30}))
"""


def measure(shape: dict, length: int) -> dict:
    """One fresh process's numbers (``CHILD``) for ``shape`` at ``length`` tokens."""
    environment = {**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "2", "KERAS_BACKEND": "tensorflow"}
    result = subprocess.run([sys.executable, "-c", CHILD, json.dumps(shape), str(length), str(FIXTURE)], cwd=ROOT,
                            capture_output=True, text=True, env=environment, check=False)
    if result.returncode:
        raise RuntimeError(result.stderr[-3000:])
    return json.loads(result.stdout.strip().splitlines()[-1])


def main(lengths=LENGTHS, shapes=tuple(SHAPES)) -> None:
    print("| model | tokens | (L, H, T, T) would be | trace | peak memory (above the loaded model) | first head | "
          "head change |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for name in shapes:
        for length in lengths:
            m = measure(SHAPES[name], length)
            print(f"| {name} | {m['tokens']:,} | {m['attention_gb']:.1f} GB | {m['trace_s']:.1f} s | "
                  f"{m['peak'] / 2**30:.2f} GB ({(m['peak'] - m['loaded']) / 2**30:.2f} GB) | "
                  f"{m['first_head_s'] * 1000:.0f} ms | {m['head_change_s'] * 1000:.0f} ms |", flush=True)


if __name__ == "__main__":
    arguments = sys.argv[1:]
    main(tuple(int(a) for a in arguments if a.isdigit()) or LENGTHS,
         tuple(name for name in SHAPES if not any(a.isalpha() for a in arguments) or any(
             a.lower() in name.lower() for a in arguments if a.isalpha())))
