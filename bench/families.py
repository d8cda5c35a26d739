"""Every ported family on its fixture-sized model (tests/fixtures/families: 2-3 layers, width 32): Headlight's
trace against Hugging Face transformers (PyTorch, eager attention, every attention map), tokenization included,
alternating runs; and the largest attention difference between the two."""

from __future__ import annotations

import json
import os
import statistics
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ["HF_HUB_OFFLINE"] = "1"  # local folders only

import numpy as np

FIXTURES = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "families"
TOKENS = 60  # the fixtures accept 64 positions
REPEATS = 15


def _family_row(name: str) -> dict:
    import torch
    import transformers

    from bench.encoder import text_of_length
    from encoder.sources import load_path
    from encoder.trace import trace_text

    transformers.logging.set_verbosity_error()
    folder = FIXTURES / name
    ours = load_path(folder, name=name)
    text = text_of_length(ours.tokenizer, TOKENS)
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    model = transformers.AutoModel.from_pretrained(folder, attn_implementation="eager").eval()

    def theirs() -> np.ndarray:
        with torch.no_grad():
            out = model(**tokenizer(text, return_tensors="pt"), output_attentions=True)
        return torch.stack(out.attentions, dim=1)[0].numpy()

    def headlight() -> np.ndarray:
        return trace_text(ours, text).attention

    difference = float(np.abs(headlight() - theirs()).max())
    samples: dict[str, list[float]] = {"ours": [], "theirs": []}
    for _ in range(REPEATS):
        for side, run in (("ours", headlight), ("theirs", theirs)):
            start = time.perf_counter()
            run()
            samples[side].append(time.perf_counter() - start)
    ours_ms, theirs_ms = (1000 * statistics.median(samples[side]) for side in ("ours", "theirs"))
    config = ours.config
    return {"family": name, "layers x heads": f"{config.num_layers} x {config.num_heads}",
            "tokens": len(ours.tokenizer.encode(text).tokens), "Headlight": f"{ours_ms:.1f} ms",
            "transformers": f"{theirs_ms:.1f} ms", "ratio": f"{ours_ms / theirs_ms:.2f}",
            "max |attention difference|": f"{difference:.1e}"}


def main() -> list[dict]:
    names = sorted(path.name for path in FIXTURES.iterdir() if (path / "reference.npz").is_file())
    from encoder.families import FAMILIES

    rows = []
    for name in names:
        model_type = json.loads((FIXTURES / name / "config.json").read_text())["model_type"]
        if model_type in FAMILIES:
            rows.append(_family_row(name))
    return rows
