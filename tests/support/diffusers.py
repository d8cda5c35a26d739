"""A diffusers-style image-generator folder assembled from the family fixtures (``tests/fixtures/families``):
``model_index.json`` and each text encoder with its tokenizer beside it, as diffusers saves a pipeline (copies of the
fixtures' files, so a test may damage its own folder)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from tests.support.families import FAMILIES_DIR

CLIP, T5 = FAMILIES_DIR / "clip-text", FAMILIES_DIR / "t5-encoder"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")


def sd_clip_tokenizer(folder: Path) -> Path:
    """The clip-text fixture's tokenizer as Stable Diffusion's ``tokenizer/`` folder stores it: vocab.json (the BPE
    vocabulary and the two special tokens, as CLIP's slow tokenizer saves it), merges.txt,
    special_tokens_map.json and a tokenizer_config.json, no tokenizer.json."""
    data = json.loads((CLIP / "tokenizer.json").read_text(encoding="utf-8"))
    vocab = dict(data["model"]["vocab"])
    vocab.update({token["content"]: token["id"] for token in data["added_tokens"]})
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    merges = [" ".join(pair) if isinstance(pair, list) else pair for pair in data["model"]["merges"]]
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    (folder / "special_tokens_map.json").write_text(json.dumps({
        "bos_token": {"content": "<|startoftext|>", "lstrip": False, "normalized": True, "rstrip": False},
        "eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>", "unk_token": "<|endoftext|>"}), encoding="utf-8")
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "CLIPTokenizer", "do_lower_case": True, "model_max_length": 77,
        "bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>"}), encoding="utf-8")
    return folder


def _copy_encoder(fixture: Path, folder: Path, architecture: str | None = None) -> None:
    """The fixture's config.json (with ``architecture`` as its class) and weights in ``folder``."""
    folder.mkdir(parents=True)
    config = json.loads((fixture / "config.json").read_text(encoding="utf-8"))
    if architecture is not None:
        config["architectures"] = [architecture]
    (folder / "config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    shutil.copyfile(fixture / "model.safetensors", folder / "model.safetensors")


def _copy_tokenizer(fixture: Path, folder: Path) -> None:
    folder.mkdir(parents=True)
    for name in TOKENIZER_FILES:
        shutil.copyfile(fixture / name, folder / name)


# Which fixture each component is, for each pipeline the tests assemble, and its class in model_index.json.
PIPELINES = {
    "StableDiffusionXLPipeline": {"text_encoder": (CLIP, "CLIPTextModel"),
                                  "text_encoder_2": (CLIP, "CLIPTextModelWithProjection")},
    "StableDiffusion3Pipeline": {"text_encoder": (CLIP, "CLIPTextModelWithProjection"),
                                 "text_encoder_2": (CLIP, "CLIPTextModelWithProjection"),
                                 "text_encoder_3": (T5, "T5EncoderModel")},
    "FluxPipeline": {"text_encoder": (CLIP, "CLIPTextModel"), "text_encoder_2": (T5, "T5EncoderModel")},
    "StableDiffusionPipeline": {"text_encoder": (CLIP, "CLIPTextModel")},
}


def write_diffusers_folder(folder: Path, pipeline: str = "StableDiffusionXLPipeline") -> Path:
    """An image generator's folder of class ``pipeline`` (one of ``PIPELINES``): ``model_index.json`` naming its
    text encoders, tokenizers, a UNet or transformer and a VAE (those two not written: Headlight reads text
    encoders only); ``tokenizer/`` as Stable Diffusion ships it (vocab.json + merges.txt, ``sd_clip_tokenizer``),
    the others with tokenizer.json."""
    components = PIPELINES[pipeline]
    index: dict = {"_class_name": pipeline, "_diffusers_version": "0.31.0",
                   "vae": ["diffusers", "AutoencoderKL"], "scheduler": ["diffusers", "EulerDiscreteScheduler"]}
    index["transformer" if pipeline.startswith(("StableDiffusion3", "Flux")) else "unet"] = ["diffusers", "Model"]
    for component, (fixture, architecture) in components.items():
        tokenizer = component.replace("text_encoder", "tokenizer", 1)
        tokenizer_class = "T5TokenizerFast" if fixture == T5 else "CLIPTokenizer"
        index[component], index[tokenizer] = ["transformers", architecture], ["transformers", tokenizer_class]
        _copy_encoder(fixture, folder / component, architecture)
        if component == "text_encoder":
            sd_clip_tokenizer(folder / tokenizer)
        else:
            _copy_tokenizer(fixture, folder / tokenizer)
    (folder / "model_index.json").write_text(json.dumps(index, indent=2), encoding="utf-8")
    return folder
