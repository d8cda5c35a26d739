"""Image-generator folders as diffusers saves them: ``model_index.json`` at the root names the pipeline
(``_class_name``) and its components, each in a subfolder; the text encoders (``text_encoder``, ``text_encoder_2``,
...) are Hugging Face folders Headlight opens, each with its tokenizer beside it (``tokenizer``, ``tokenizer_2``,
...). This module reads the index (no TensorFlow), pairs each text encoder with its tokenizer, and says what the
image model reads of each (``ImageModelReads``): which layer's hidden states, which pooled vector, how many tokens.

Everything read from the folder is bounded and checked before use: the index's size (``MODEL_INDEX_BYTES``), that it
is a JSON object, that a component's name is a plain name (``text_encoder`` or ``text_encoder_N``: no ``..``, no
``/``), and that its subfolders exist inside the folder (symlinks resolved). Messages name components, never paths.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from encoder.errors import CheckpointError, SourceError

MODEL_INDEX = "model_index.json"
MODEL_INDEX_BYTES = 1 << 20  # a pipeline's index is a few hundred bytes; larger is not one
TEXT_ENCODER = re.compile(r"text_encoder(?:_([2-9]|[1-9][0-9]))?")  # text_encoder, text_encoder_2 ... _99
PIPELINE_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,99}")  # a Python class name, shown as it is
COMPONENT_MARK = "#"  # "folder#text_encoder_2": a folder's text encoder in one source name (``split_source``)
CLIP_LAYER = "hidden_states[-2]"  # SDXL and SD3 read CLIP's penultimate layer, before the final norm
LAST = "last_hidden_state"  # the last layer after the final norm


@dataclass(frozen=True)
class TextEncoderPart:
    """One text encoder of a diffusers folder: its component name, its class (``model_index.json``) and the
    subfolders of the encoder and of its tokenizer."""

    name: str  # "text_encoder_2"
    class_name: str  # "CLIPTextModelWithProjection" (a plain name, else "")
    encoder: Path
    tokenizer: Path


def tokenizer_of(component: str) -> str:
    """The tokenizer's component of a text encoder: ``text_encoder_2`` -> ``tokenizer_2``."""
    return component.replace("text_encoder", "tokenizer", 1)


@dataclass(frozen=True)
class ImageModelReads:
    """What the image model (the UNet or the transformer of ``pipeline``) reads of one text encoder.

    ``states``: the per-token hidden states it reads ("last_hidden_state": the last layer after the final norm;
    "hidden_states[-2]": the penultimate layer's output, before the final norm; "" none); ``pooled``: the one
    vector it reads at the end-of-text token ("text_embeds": through the text projection; "pooler_output": the last
    layer after the final norm; "" none); ``window``: how many tokens the pipeline keeps (the rest is cut).
    """

    pipeline: str  # model_index.json's _class_name, e.g. "StableDiffusionXLPipeline"
    component: str  # "text_encoder_2"
    reader: str  # "UNet" or "transformer"
    states: str
    pooled: str
    window: int
    encoder: str = "CLIP"  # "CLIP" or "T5": named in captions ("CLIP's 77-token window")

    def marks(self, layers: int) -> dict[int, str]:
        """Layer (0-based, -1: the embeddings) -> what the image model reads of that layer's output, for a
        ``layers``-layer encoder: "hidden_states[-2]" is the output of layer ``layers - 2``; last_hidden_state
        and the pooled vectors come from the last layer (after the final norm)."""
        found: dict[int, list[str]] = {}
        if self.states == CLIP_LAYER:
            found.setdefault(layers - 2, []).append(f"every token ({CLIP_LAYER}, before the final norm)")
        elif self.states:
            found.setdefault(layers - 1, []).append(f"every token after the final norm ({self.states})")
        if self.pooled:
            through = ", projected" if self.pooled == "text_embeds" else ""
            found.setdefault(layers - 1, []).append(f"the end-of-text token after the final norm{through} "
                                                    f"({self.pooled})")
        return {layer: " and ".join(what) for layer, what in found.items()}

    def describe(self, layers: int) -> str:
        """One sentence for the page: which layers the image model reads, and its token window."""
        read = "; ".join(f"{layer_name(layer)}: {what}" for layer, what in sorted(self.marks(layers).items()))
        return (f"{self.pipeline}'s {self.reader} reads {self.component}'s {read}. It keeps the first "
                f"{self.window} tokens of a prompt.")

    def read_from(self, trace) -> dict[str, np.ndarray]:
        """What the image model gets of ``trace`` (an ``EncoderTrace`` of this text encoder), by the names the
        pipeline reads them under: ``states`` (T, D) and ``pooled`` (D,) or (P,) (the projection's width)."""
        found = {}
        if self.states == CLIP_LAYER:
            found[CLIP_LAYER] = trace.hidden[-2]
        elif self.states:  # after the final norm: CLIP keeps it apart from hidden[-1], T5's hidden[-1] is it
            found[self.states] = trace.outputs.get(LAST, trace.hidden[-1])
        if self.pooled == "text_embeds":
            found[self.pooled] = trace.outputs["embedding"]
        elif self.pooled:  # without a projection the embedding is the pooled state itself
            found[self.pooled] = trace.outputs.get("pooled", trace.outputs["embedding"])
        return found

    def cut_note(self, kept: int, total: int) -> str:
        """The caption of a prompt cut at ``kept`` of its ``total`` tokens ("" when nothing was cut)."""
        dropped = total - kept
        if dropped <= 0:
            return ""
        tokens = "1 token" if dropped == 1 else f"{dropped} tokens"
        if kept < self.window:
            return f"{tokens} past Max tokens ({kept}) left out here; the {self.reader} reads up to {self.window}"
        return f"{tokens} past {self.encoder}'s {self.window}-token window are dropped"


# What each pipeline reads: (class-name prefix, reader, component -> (states, pooled, T5 window or 0)); the first
# prefix that matches wins (diffusers' encode_prompt of each pipeline).
PIPELINES: tuple[tuple[str, str, dict[str, tuple[str, str, int]]], ...] = (
    ("StableDiffusionXL", "UNet", {"text_encoder": (CLIP_LAYER, "", 0),
                                   "text_encoder_2": (CLIP_LAYER, "text_embeds", 0)}),
    ("StableDiffusion3", "transformer", {"text_encoder": (CLIP_LAYER, "text_embeds", 0),
                                         "text_encoder_2": (CLIP_LAYER, "text_embeds", 0),
                                         "text_encoder_3": (LAST, "", 256)}),
    ("Flux", "transformer", {"text_encoder": ("", "pooler_output", 0), "text_encoder_2": (LAST, "", 512)}),
    ("StableDiffusion", "UNet", {"text_encoder": (LAST, "", 0)}),
)


def layer_name(layer: int) -> str:
    """"layer 10", or "embeddings" for -1 (a one-layer encoder's hidden_states[-2])."""
    return "embeddings" if layer < 0 else f"layer {layer}"


def image_model_reads(pipeline: str, component: str, max_positions: int, model_type: str | None
                      ) -> ImageModelReads | None:
    """What ``pipeline`` (model_index.json's ``_class_name``) reads of its ``component``, a text encoder of
    ``max_positions`` positions and ``model_type``; None for a pipeline or component not in ``PIPELINES``.
    The window is CLIP's positions, or the pipeline's default T5 length (SD3: 256, Flux: 512) within the
    model's positions."""
    for prefix, reader, components in PIPELINES:
        if pipeline.startswith(prefix):
            if component not in components:
                return None
            states, pooled, t5_window = components[component]
            t5 = model_type in ("t5", "umt5")
            window = min(t5_window, max_positions) if t5 and t5_window else max_positions
            return ImageModelReads(pipeline, component, reader, states, pooled, window, "T5" if t5 else "CLIP")
    return None


def split_source(name: str) -> tuple[str, str | None]:
    """``"folder#text_encoder_2"`` -> ("folder", "text_encoder_2"); a name without a text-encoder suffix is
    returned whole, with None."""
    base, mark, component = name.rpartition(COMPONENT_MARK)
    if mark and base and TEXT_ENCODER.fullmatch(component):
        return base, component
    return name, None


def source_name(name: str, component: str | None) -> str:
    """The one source name of ``name``'s text encoder ``component`` (``split_source`` reads it back)."""
    return f"{name}{COMPONENT_MARK}{component}" if component else name


def is_diffusers_folder(folder: Path) -> bool:
    return (folder / MODEL_INDEX).is_file()


def read_model_index(folder: Path) -> dict:
    """``model_index.json`` of ``folder`` as a dict, read only when small enough to be one.

    Raises:
        CheckpointError: too large, not JSON in UTF-8, or not a JSON object.
    """
    path = folder / MODEL_INDEX
    try:
        if path.stat().st_size > MODEL_INDEX_BYTES:
            raise CheckpointError(f"{MODEL_INDEX} is larger than a pipeline's index can be (at most "
                                  f"{MODEL_INDEX_BYTES // 1024} KB); save the pipeline again with diffusers.")
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as error:  # ValueError: bad JSON or UTF-8; RecursionError: [[[[
        raise CheckpointError(f"{MODEL_INDEX} is not valid JSON (in UTF-8); save the pipeline again with "
                              "diffusers.") from error
    if not isinstance(data, dict):
        raise CheckpointError(f"{MODEL_INDEX} should hold a JSON object naming the pipeline's components.")
    return data


def pipeline_name(index: dict) -> str:
    """The index's ``_class_name`` when it is a plain class name, else ""."""
    name = index.get("_class_name")
    return name if isinstance(name, str) and PIPELINE_NAME.fullmatch(name) else ""


def _order(name: str) -> int:
    number = TEXT_ENCODER.fullmatch(name).group(1)
    return int(number) if number else 1


def text_encoder_names(index: dict) -> list[str]:
    """The text encoders the index names, in order (``text_encoder``, ``text_encoder_2``, ...): keys of that form
    whose value is ``[library, class]`` with a class (``[null, null]`` marks a component left out). Other keys
    (``unet``, ``vae``, a name with ``..`` or ``/``) are not text encoders."""
    names = [key for key, value in index.items() if isinstance(key, str) and TEXT_ENCODER.fullmatch(key)
             and isinstance(value, list) and len(value) == 2 and isinstance(value[1], str) and value[1]]
    return sorted(names, key=_order)


def text_encoders(folder: Path) -> tuple[dict, list[str]]:
    """The index of ``folder`` and its text encoders' names (``text_encoder_names``).

    Raises:
        CheckpointError: the index cannot be read or names no text encoder.
    """
    index = read_model_index(folder)
    names = text_encoder_names(index)
    if not names:
        raise CheckpointError(f"{MODEL_INDEX} names no text encoder (text_encoder, text_encoder_2, ...): this "
                              "image model has none Headlight could open.")
    return index, names


def text_encoder_part(folder: Path, component: str | None = None) -> tuple[str, TextEncoderPart]:
    """The pipeline's class name and the text encoder ``component`` of the diffusers ``folder`` (default: the
    first), with the subfolders of the encoder and its tokenizer, both checked to lie inside ``folder``.

    Raises:
        SourceError: ``component`` is not one of the folder's text encoders (the message lists them, and does not
            repeat what was asked).
        CheckpointError: the index cannot be read, or a subfolder is missing or lies outside the folder.
    """
    index, names = text_encoders(folder)
    if component is None:
        component = names[0]
    if component not in names:
        raise SourceError(f"This image model has no such text encoder; it has {', '.join(names)}.")
    class_name = index[component][1] if PIPELINE_NAME.fullmatch(index[component][1]) else ""
    root = folder.resolve()
    encoder, tokenizer = (_subfolder(root, name, component) for name in (component, tokenizer_of(component)))
    return pipeline_name(index), TextEncoderPart(component, class_name, encoder, tokenizer)


def _subfolder(root: Path, name: str, component: str) -> Path:
    """``root / name`` resolved, when it is a folder inside ``root`` (a symlink out of it is refused)."""
    try:
        sub = (root / name).resolve()
        inside = sub.is_relative_to(root) and sub.is_dir()
    except (OSError, RuntimeError):  # a symlink loop
        inside = False
    if not inside:
        raise CheckpointError(f"{MODEL_INDEX} names {component}, but the folder has no {name}/ subfolder inside it; "
                              "copy the whole pipeline folder.")
    return sub
