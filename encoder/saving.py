"""Our own model folder: ``config.json`` (format "headlight"), ``model.safetensors`` keyed by Keras variable
path, ``tokenizer.json``. This is how the trained tutorial model ships, with ``initial.safetensors``: the weights
training started from (``tutorial-initial`` loads them, so no process-wide random seed is involved)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import keras
import numpy as np

from encoder.config import EncoderConfig
from encoder.errors import CheckpointError
from encoder.limits import CONFIG_BYTES
from encoder.model import POSITIONS, TransformerEncoder, drop_unfilled, fill, filled, unfilled_model

FORMAT = "headlight"
INITIAL_WEIGHTS = "initial.safetensors"


def initial_model(config: EncoderConfig, seed: int) -> TransformerEncoder:
    """A TransformerEncoder at its seeded random initialisation (the same seed gives the same weights)."""
    keras.utils.set_random_seed(seed)
    return TransformerEncoder(config, name="encoder")


def model_state(model: TransformerEncoder) -> dict[str, np.ndarray]:
    """Every weight by its Keras variable path, as float32 NumPy."""
    return {variable.path: np.asarray(variable.numpy(), dtype=np.float32) for variable in model.weights}


def save_folder(
    folder: str | Path,
    model: TransformerEncoder,
    tokenizer_json: str,
    labels: tuple[str, ...] = (),
    metadata: dict[str, Any] | None = None,
) -> Path:
    """Write config.json, model.safetensors and tokenizer.json into ``folder`` (created if missing)."""
    from safetensors.numpy import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    config = {
        "format": FORMAT,
        "encoder": model.config.to_dict(),
        "labels": list(labels),
        **(metadata or {}),
    }
    (folder / "config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    save_file(model_state(model), str(folder / "model.safetensors"))
    (folder / "tokenizer.json").write_text(tokenizer_json, encoding="utf-8")
    return folder


def save_initial_weights(folder: str | Path, state: dict[str, np.ndarray]) -> Path:
    """Write ``state`` (``model_state`` of the model before training) as ``folder/initial.safetensors``."""
    from safetensors.numpy import save_file

    path = Path(folder) / INITIAL_WEIGHTS
    save_file(state, str(path))
    return path


def is_headlight_folder(folder: Path) -> bool:
    """Whether ``folder`` is one of ours; its config.json is read only when it is of a config's size (a hostile
    folder's giant or deeply nested file is then refused by the Hugging Face reader, with our error)."""
    path = folder / "config.json"
    try:
        if path.stat().st_size > CONFIG_BYTES:
            return False
        return json.loads(path.read_text(encoding="utf-8")).get("format") == FORMAT
    except (OSError, ValueError, AttributeError, RecursionError):
        return False


def read_folder_config(folder: Path) -> tuple[EncoderConfig, dict[str, Any]]:
    """The EncoderConfig and the whole config.json of one of our folders."""
    path = folder / "config.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return EncoderConfig.from_dict(data["encoder"]), data
    except OSError as error:
        raise CheckpointError("The model folder's config.json cannot be read.") from error
    except (ValueError, KeyError, TypeError) as error:
        raise CheckpointError("config.json is not a valid Headlight model config (its \"encoder\" section is missing "
                              "or describes an impossible model); save the model again.") from error


def stored_path(path: str, weights: dict[str, np.ndarray]) -> str | None:
    """The name ``weights`` stores the variable at ``path`` under, or None: the path itself, or for the position
    scheme's variables (``positions/...``) the model-level path folders saved before the parts had
    (``position_embedding/embeddings``)."""
    if path in weights:
        return path
    legacy = path.removeprefix(f"{POSITIONS}/")
    return legacy if legacy != path and legacy in weights else None


def load_folder(
    folder: str | Path, weights_file: str = "model.safetensors"
) -> tuple[TransformerEncoder, dict[str, Any]]:
    """Rebuild a saved model: config, then every weight of ``weights_file`` (``INITIAL_WEIGHTS`` for the state
    before training) by name with its shape checked."""
    from safetensors.numpy import load_file

    folder = Path(folder)
    config, data = read_folder_config(folder)
    weights_path = folder / weights_file
    if not weights_path.is_file():
        raise CheckpointError("The folder has no model.safetensors.")
    try:
        weights = load_file(str(weights_path))
    except Exception as error:  # safetensors raises several types for a damaged file
        raise CheckpointError("model.safetensors is not a readable safetensors file; save the model again.") from error
    model = unfilled_model(config, "encoder")  # each weight made once, from the file
    try:
        for variable in model.weights:
            path = stored_path(variable.path, weights)
            if path is None:
                raise CheckpointError(f"model.safetensors lacks {variable.path}; was it saved by another version?")
            value = weights[path]
            if tuple(value.shape) != tuple(variable.shape):
                raise CheckpointError(
                    f"model.safetensors: {variable.path} has shape {tuple(value.shape)}, "
                    f"the config gives {tuple(variable.shape)}"
                )
            fill(variable, value)
    except BaseException:
        drop_unfilled()
        raise
    return filled(model), data
