"""Make the decoder screenshots of docs/img/: the Next-token view, the logit lens, the model view with attention
sinks marked, and the head grid of a grouped-query model.

Run ``python -m docs.images`` (or ``--decoder FOLDER`` for another decoder, ``--out DIR`` for another folder).
Without ``--decoder`` the decoder is the decoder bench's SmolLM2-135M-shaped Llama (30 layers, 9 query heads sharing
3 key/value heads, random weights, a byte-level BPE trained on data/train.tsv), made in a temporary folder by
``bench.decoder.make_folder`` (needs ``requirements-bench.txt``: torch and transformers). Its weights are random, so
its predictions are not language: the images show how to read the views, not what a trained model predicts.
Attention sinks need a trained model: the model-view image is MiniLM's (pretrained). The head grid and the model
view are of the app's example sentence, the Next-token view and the lens of a greedy continuation of ``PROMPT``.

The other images in docs/img/ were made with ``python -m cli ... -o docs/img/NAME.png`` (docs/export.md).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

HERE = Path(__file__).resolve().parent
PROMPT = "Once upon a time, there was"  # generated from, greedy
NEW_TOKENS = 10
SENTENCE = "The cat sat on the mat because it was tired."  # the app's example (docs/analyses.md counts its sinks)
GRID_LAYER = 0


def make_images(decoder: Path, out: Path) -> list[Path]:
    """Write the four images into ``out``; returns their paths."""
    from analysis.inputs import TraceInputs
    from encoder.generate import generate_text
    from encoder.sources import load_source
    from encoder.trace import trace_text
    from viz.registry import ANALYSES, build_view
    from viz.render import figure_to_bytes

    model = load_source(str(decoder))
    story = generate_text(model, PROMPT, max_new_tokens=NEW_TOKENS)
    prompt_end = int(story.generated.argmax()) - 1  # the prompt's last token: it chose the first generated one
    lens = ANALYSES["lens"]
    figures = {
        "next-token.png": build_view(story, "next-token", query=prompt_end),
        "logit-lens.png": lens.figures(lens.compute(TraceInputs(story, model), {}), story, {})[0][1],
        "head-grid-gqa.png": build_view(trace_text(model, SENTENCE), "head-grid", layer=GRID_LAYER),
        "model-view-sinks.png": build_view(trace_text(load_source("minilm"), SENTENCE), "model", sinks=True),
    }
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, fig in figures.items():
        path = out / name
        path.write_bytes(figure_to_bytes(fig, "png"))
        written.append(path)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m docs.images", description=__doc__.split("\n\n")[0])
    parser.add_argument("--decoder", type=Path, help="a decoder folder (default: the bench's SmolLM2-shaped Llama)")
    parser.add_argument("--out", type=Path, default=HERE / "img", help="where to write (default docs/img)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as temp:
        decoder = args.decoder
        if decoder is None:
            from bench.decoder import make_folder

            decoder = make_folder(Path(temp) / "smollm2-shaped")
        for path in make_images(decoder, args.out):
            print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
