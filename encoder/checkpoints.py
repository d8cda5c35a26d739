"""Hugging Face checkpoint import: read ``config.json`` and the safetensors, map the config through the model's
family (``encoder.families``), and port every tensor after checking its name and shape.

Weights are read from the safetensors files' bytes at the places their headers give (no PyTorch), one tensor at a
time as the model's ports ask for them (``StoredTensors``), so loading holds the model and one port's tensors, not a
second copy of the checkpoint: bfloat16 tensors with their 16 bits shifted into the high half of a float32 (NumPy
has no bfloat16; exact), float16 ones widened to float32 (exact too); one file or the shards that
``model.safetensors.index.json`` names; and only after every size is checked (``encoder.limits``: config.json's
sizes, the parameter count, the safetensors headers): a folder that asks for an absurd model is refused before
anything is allocated.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from encoder.config import EncoderConfig
from encoder.errors import CheckpointError
from encoder.families import FAMILIES
from encoder.families.common import labels
from encoder.heap import release_freed_heap
from encoder.limits import (
    CONFIG_BYTES,
    TensorHeader,
    check_config,
    check_config_fields,
    check_tensors,
    parameter_count,
    read_headers,
)
from encoder.model import TransformerEncoder, drop_unfilled, fill, filled, unfilled_model
from encoder.settings import settings


def family_of(hf_config: dict[str, Any]):
    """The family module (``encoder.families``) of a ``config.json``.

    Raises:
        CheckpointError: a ``model_type`` we do not run, with the list of those we do.
    """
    model_type = hf_config.get("model_type")
    if model_type not in FAMILIES:
        raise CheckpointError(
            f"config.json's model_type is missing or not one Headlight runs ({', '.join(sorted(FAMILIES))})."
        )
    return FAMILIES[model_type]


def convert_config(hf_config: dict[str, Any]) -> EncoderConfig:
    """Map a Hugging Face ``config.json`` to an EncoderConfig (pure function), through the model's family; sizes
    outside ``encoder.limits.BOUNDS`` are refused before the family reads them. An encoder-decoder's config gives
    its encoder's (``convert_decoder_config`` its decoder's)."""
    check_config_fields(hf_config)
    return _mapped(family_of(hf_config).convert_config, hf_config)


def convert_decoder_config(hf_config: dict[str, Any], config: EncoderConfig) -> EncoderConfig | None:
    """The decoder's EncoderConfig of an encoder-decoder's ``config.json`` (``config``: its encoder's, from
    ``convert_config``), else None."""
    family = family_of(hf_config)
    if not hasattr(family, "decoder_config"):
        return None
    return _mapped(lambda hf: family.decoder_config(hf, config), hf_config)


def decoder_start(hf_config: dict[str, Any], vocab_size: int) -> int:
    """An encoder-decoder's ``decoder_start_token_id`` (the family's default when config.json gives none), which
    must be a token id."""
    start = hf_config.get("decoder_start_token_id")
    start = family_of(hf_config).DECODER_START if start is None else start
    if isinstance(start, bool) or not isinstance(start, int) or not 0 <= start < vocab_size:
        raise CheckpointError(f"config.json's decoder_start_token_id is not a token id (0 to {vocab_size - 1}).")
    return start


def _mapped(convert, hf_config: dict[str, Any]) -> EncoderConfig:
    """``convert(hf_config)``, a field of the wrong kind reported as our error."""
    try:
        return convert(hf_config)
    except (TypeError, ValueError, OverflowError) as error:  # OverflowError: int(Infinity)
        if isinstance(error, CheckpointError):
            raise
        raise CheckpointError(
            "config.json has a field of the wrong kind (text or a list where a number belongs, or the reverse); "
            "compare it with a config.json that transformers saved."
        ) from error


def _canonical_names(weights: Mapping[str, Any], prefixes: tuple[str, ...]) -> dict[str, Any]:
    """Strip a task model's backbone prefix (``bert.``, ``roberta.``, ...) and rename old ``gamma``/``beta``
    layer-norm names (the values are not touched: a ``StoredTensors`` reads none)."""
    return {_canonical_name(name, prefixes): value for name, value in weights.items()}


def _canonical_name(name: str, prefixes: tuple[str, ...]) -> str:
    for prefix in prefixes:
        if name.startswith(prefix):
            name = name[len(prefix):]
            break
    return name.replace("LayerNorm.gamma", "LayerNorm.weight").replace("LayerNorm.beta", "LayerNorm.bias")


def port_weights(model: TransformerEncoder, weights: Mapping[str, np.ndarray], source: str, family,
                 ports: list | None = None) -> None:
    """Copy checkpoint tensors into the model through ``ports`` (default: the family's ``weight_ports``; an
    encoder-decoder's decoder: its ``decoder_weight_ports``): every name they need checked first, then one port at a
    time its tensors read (``weights`` may be a ``StoredTensors``, which reads a tensor when asked), transformed,
    checked against the variable's shape and assigned, so only one port's tensors are in memory besides the model.
    A port's name may be a tuple of names: its transform then receives those tensors in order (Llama's
    ``gate_proj`` and ``up_proj`` fill one fused variable). On a mismatch the model is left half filled: the caller
    drops it (``load_hf_folder`` returns no model)."""
    stored = {_canonical_name(name, family.PREFIXES): name for name in weights}
    for name, alias in getattr(family, "ALIASES", {}).items():  # another name the same tensor is stored under
        if name not in stored and alias in stored:
            stored[name] = stored[alias]
    ports = family.weight_ports(model.config, model) if ports is None else ports
    needed = [n for name, _, _ in ports for n in (name if isinstance(name, tuple) else (name,))]
    missing = list(dict.fromkeys(name for name in needed if name not in stored))
    if missing:
        shown = ", ".join(missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
        raise CheckpointError(f"{source} lacks {len(missing)} tensors the model needs: {shown}; config.json and the "
                              "weights disagree.")
    for name, variable, transform in ports:
        names = name if isinstance(name, tuple) else (name,)
        tensors = [weights[stored[n]] for n in names]
        try:
            value = np.asarray(transform(*tensors), dtype=np.float32)
        except ValueError as error:  # tensors that cannot be joined (a fused port's parts of unequal widths)
            raise CheckpointError(f"{source}: {' and '.join(names)} do not fit together; config.json and the "
                                  "weights disagree.") from error
        if tuple(value.shape) != tuple(variable.shape):
            shapes = " and ".join(str(tuple(tensor.shape)) for tensor in tensors)
            raise CheckpointError(
                f"{source}: {' and '.join(names)} has shape {shapes}, which gives {tuple(value.shape)} "
                f"but the model expects {tuple(variable.shape)}; config.json and the weights disagree."
            )
        fill(variable, value)


def read_hf_config(folder: Path) -> dict[str, Any]:
    path = folder / "config.json"
    if not path.is_file():
        raise CheckpointError("The folder has no config.json; a Hugging Face model folder needs one.")
    if path.stat().st_size > CONFIG_BYTES:
        raise CheckpointError(f"config.json is larger than a model's config can be (at most {CONFIG_BYTES // 2**20} "
                              "MB).")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as error:  # RecursionError: [[[[...]]]]
        raise CheckpointError("config.json is not valid JSON (in UTF-8); save it again with transformers.") from error
    if not isinstance(data, dict):
        raise CheckpointError("config.json should hold a JSON object")
    return data


INDEX = "model.safetensors.index.json"  # a sharded checkpoint's map of tensor name -> shard file


def safetensors_files(folder: Path) -> list[Path]:
    """The shards ``model.safetensors.index.json`` names, else ``model.safetensors`` (or every ``*.safetensors``);
    our error when the folder has none."""
    if (folder / INDEX).is_file():
        return _indexed_shards(folder)
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        if any(folder.glob("*.bin")) or any(folder.glob("*.pt")) or any(folder.glob("*.h5")):
            raise CheckpointError(
                "The folder holds only PyTorch/TF weights (.bin/.pt/.h5). Headlight reads safetensors only "
                "(no PyTorch needed): convert once with `transformers` "
                "(model.save_pretrained(folder, safe_serialization=True))."
            )
        raise CheckpointError("The folder has no model.safetensors.")
    return files


def _indexed_shards(folder: Path) -> list[Path]:
    """The shard files of a sharded checkpoint, each a plain file name in ``folder`` holding the tensors the index
    gives it (so a damaged or hostile index reads nothing outside the folder and misses no tensor)."""
    damaged = CheckpointError(f"{INDEX} is not a valid index of safetensors shards (its weight_map must name "
                              "shard files of this folder, each holding the tensors listed for it); save it again.")
    path = folder / INDEX
    try:
        if path.stat().st_size > CONFIG_BYTES:
            raise damaged
        weight_map = json.loads(path.read_text(encoding="utf-8")).get("weight_map")
    except (OSError, ValueError, AttributeError, RecursionError) as error:
        raise damaged from error
    if not isinstance(weight_map, dict) or not weight_map:
        raise damaged
    shards: dict[str, list[str]] = {}
    for name, shard in weight_map.items():
        if not isinstance(shard, str) or Path(shard).name != shard or not shard.endswith(".safetensors"):
            raise damaged
        shards.setdefault(shard, []).append(name)
    files = []
    for shard, names in sorted(shards.items()):
        file = folder / shard
        if not file.is_file():
            raise CheckpointError(f"{INDEX} names the shard {shard[:80]!r}, which the folder lacks; copy every "
                                  "shard of the checkpoint.")
        if not set(names) <= set(read_headers([file])):
            raise damaged
        files.append(file)
    return files


def read_safetensors(folder: Path) -> dict[str, np.ndarray]:
    """All tensors of the folder's safetensors files (``safetensors_files``) as NumPy arrays; bfloat16 and float16
    ones as float32 with exactly their values."""
    stored = StoredTensors(safetensors_files(folder))
    return {name: stored[name] for name in stored}


# NumPy's type of each safetensors dtype read as it is stored (little-endian); bfloat16 is widened by ``_read``.
NUMPY_TYPES = {"F16": "<f2", "F32": "<f4", "F64": "<f8", "BOOL": "?", "U8": "u1", "I8": "i1", "U16": "<u2",
               "I16": "<i2", "U32": "<u4", "I32": "<i4", "U64": "<u8", "I64": "<i8"}


class StoredTensors(Mapping[str, np.ndarray]):
    """The tensors of safetensors ``files`` by name, each read from its file when it is asked for (nothing is read
    before): bfloat16 and float16 ones as float32 with exactly their values. The headers are read and checked
    (``encoder.limits.read_headers``) when this is made."""

    def __init__(self, files: list[Path]):
        self._where = {name: (file, header) for file in files for name, header in read_headers([file]).items()}

    def headers(self) -> dict[str, TensorHeader]:
        """Each tensor's header (dtype, shape, place in its file) by name."""
        return {name: header for name, (_, header) in self._where.items()}

    def __getitem__(self, name: str) -> np.ndarray:
        file, header = self._where[name]
        try:
            return _read(file, header)
        except (OSError, ValueError) as error:
            raise CheckpointError(f"{file.name} is not a readable safetensors file; save the weights again "
                                  "(safetensors).") from error

    def __iter__(self):
        return iter(self._where)

    def __len__(self) -> int:
        return len(self._where)


def _read(file: Path, header: TensorHeader) -> np.ndarray:
    """One tensor's bytes as a NumPy array of its shape; bfloat16 as float32, each 16-bit word shifted into the
    high half of a 32-bit float, and float16 widened (both exact)."""
    stored = "<u2" if header.dtype == "BF16" else NUMPY_TYPES[header.dtype]
    data = np.fromfile(file, dtype=stored, count=header.size, offset=header.start)
    if data.size != header.size:
        raise ValueError("the file is cut short")
    if header.dtype == "BF16":
        data = (data.astype(np.uint32) << 16).view(np.float32)
    elif header.dtype == "F16":
        data = data.astype(np.float32)
    return data.reshape(header.shape)


@dataclass(frozen=True, eq=False)
class HFModels:
    """What a Hugging Face folder holds: the model (an encoder-decoder's encoder), its class labels (``id2label`` of a
    classifier, else ()), and an encoder-decoder's decoder with its ``decoder_start_token_id`` (None and 0 for a
    single stack)."""

    model: TransformerEncoder
    labels: tuple[str, ...] = ()
    decoder: TransformerEncoder | None = None
    decoder_start: int = 0


def load_hf_folder(
    folder: str | Path, hf_config: dict[str, Any] | None = None
) -> tuple[TransformerEncoder, tuple[str, ...]]:
    """Build a TransformerEncoder from a Hugging Face folder (config.json + safetensors) of a family we run;
    returns the model (an encoder-decoder's encoder) and its class labels (``id2label`` of a classifier, else ()).
    ``hf_config`` is the folder's config.json when the caller has read it already (``read_hf_config``)."""
    loaded = load_hf_models(folder, hf_config)
    return loaded.model, loaded.labels


def load_hf_models(folder: str | Path, hf_config: dict[str, Any] | None = None) -> HFModels:
    """Every stack of a Hugging Face folder: the model and, for an encoder-decoder (T5, BART), its decoder, each
    size of both checked (their parameters together within the cap, the stored tensors enough for both) before
    either is built."""
    folder = Path(folder)
    if not folder.is_dir():
        raise CheckpointError("The model path is not a folder: give the folder that holds config.json.")
    hf_config = read_hf_config(folder) if hf_config is None else hf_config
    family = family_of(hf_config)
    config = _sentence_transformer_pooling(folder, convert_config(hf_config))
    decoder_config = convert_decoder_config(hf_config, config)
    stacks = [config] if decoder_config is None else [config, decoder_config]
    start = 0 if decoder_config is None else decoder_start(hf_config, config.vocab_size)
    total = sum(map(parameter_count, stacks))
    for stack in stacks:
        check_config(stack, settings().max_parameters, others=total - parameter_count(stack))
    weights = StoredTensors(safetensors_files(folder))  # the headers only
    check_tensors(_canonical_names(weights.headers(), family.PREFIXES), config, decoder_config)
    try:  # only now, with every size checked, is anything big built: each weight once, from the checkpoint
        model = unfilled_model(config, "encoder")
        port_weights(model, weights, "model.safetensors", family)
        if decoder_config is None:
            return HFModels(filled(model), labels(hf_config, config))
        decoder = unfilled_model(decoder_config, "decoder")
        port_weights(decoder, weights, "model.safetensors", family,
                     family.decoder_weight_ports(decoder_config, decoder))
        return HFModels(filled(model), labels(hf_config, config), filled(decoder), start)
    except BaseException:
        drop_unfilled()
        raise
    finally:
        release_freed_heap()  # the tensors' buffers, freed as their variables took them


def _sentence_transformer_pooling(folder: Path, config: EncoderConfig) -> EncoderConfig:
    """Read sentence-transformers' pooling/normalisation (modules.json) so ``embedding`` matches its output."""
    modules_path = folder / "modules.json"
    if not modules_path.is_file():
        return config
    try:
        modules = json.loads(modules_path.read_text(encoding="utf-8"))
        types = [m.get("type", "") for m in modules]
        pooling_path = folder / "1_Pooling" / "config.json"
        pooling = json.loads(pooling_path.read_text(encoding="utf-8")) if pooling_path.is_file() else {}
    except (ValueError, AttributeError, OSError):
        return config
    return dataclasses.replace(
        config,
        pooling="cls" if pooling.get("pooling_mode_cls_token") else "mean",
        normalize_embedding=any(t.endswith("Normalize") for t in types),
    )
