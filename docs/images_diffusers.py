"""Make the image-generator screenshots of docs/img/ (docs/models.md, "Image generators' folders"): the model view of
SDXL's first text encoder with the layer the UNet reads marked, and the token view of a long prompt cut at CLIP's
77-token window.

Run ``python -m docs.images_diffusers`` (``--out DIR`` for another folder). The folder is SDXL-shaped and assembled
from the tiny random clip-text fixture (``tests.support.diffusers.write_diffusers_folder``), its position table
widened from 64 to 77 rows (the new rows drawn like the others) so the window is Stable Diffusion's; the figures are
the command line's (``cli.run``), marks included. The weights are random: the images show how to read the marks, not
what a trained CLIP attends to.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

HERE = Path(__file__).resolve().parent
WINDOW = 77  # Stable Diffusion's CLIP positions
PROMPT = ("a photograph of an astronaut riding a horse on the moon, highly detailed, sharp focus, dramatic light, "
          "trending on artstation, by a famous painter, golden hour, wide angle, volumetric fog, octane render, "
          "masterpiece, best quality, ultra detailed, cinematic composition, rich colours")


def widen_positions(encoder: Path, rows: int = WINDOW, seed: int = 0) -> None:
    """Give the text encoder in ``encoder`` ``rows`` positions: its position table grown with rows drawn from a
    normal distribution of the table's own spread, and ``max_position_embeddings`` set to match."""
    import numpy as np
    from safetensors.numpy import load_file, save_file

    weights = load_file(encoder / "model.safetensors")
    name = next(key for key in weights if key.endswith("position_embedding.weight"))
    table = weights[name]
    extra = np.random.default_rng(seed).normal(0.0, float(table.std()), (rows - table.shape[0], table.shape[1]))
    weights[name] = np.concatenate([table, extra.astype(table.dtype)])
    save_file(weights, encoder / "model.safetensors")
    config = json.loads((encoder / "config.json").read_text(encoding="utf-8"))
    (encoder / "config.json").write_text(json.dumps({**config, "max_position_embeddings": rows}), encoding="utf-8")


def make_images(folder: Path, out: Path) -> list[Path]:
    """Write the two images into ``out`` from the image generator's ``folder``; returns their paths."""
    import cli

    out.mkdir(parents=True, exist_ok=True)
    runs = {
        "diffusers-model-view.png": ["--view", "model", "--text", "a photo of a cat riding a horse"],
        "diffusers-cut.png": ["--view", "tokens", "--text", PROMPT, "--layer", "1", "--query", "5"],
    }
    return [cli.run(["--model", str(folder), *arguments, "-o", str(out / name)]) for name, arguments in runs.items()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m docs.images_diffusers", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=HERE / "img", help="where to write (default docs/img)")
    args = parser.parse_args(argv)
    from tests.support.diffusers import write_diffusers_folder

    with tempfile.TemporaryDirectory() as temp:
        folder = write_diffusers_folder(Path(temp) / "sdxl", "StableDiffusionXLPipeline")
        for encoder in ("text_encoder", "text_encoder_2"):
            widen_positions(folder / encoder)
        for path in make_images(folder, args.out):
            print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
