"""How each field of a trace is stored in NPZ and JSON, chosen by the field's type: the codec under
``EncoderTrace.save``/``load`` (``encoder.trace``) and the file functions of ``encoder.trace_io``.

It works from ``dataclasses.fields`` of the class it is given (``EncoderTrace``), so the class and its files are
written and read field by field: each field's type picks one entry of ``KINDS``. NPZ keys and JSON keys are the
field names, plus ``has_<name>`` (NPZ: whether an optional string is None) and ``<name>/<key>`` (NPZ: one array per
entry of a mapping). A field with a default may be missing from a file (it reads back as the default).
"""

from __future__ import annotations

import json
import typing
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import MISSING, Field, dataclass, fields
from functools import cache
from pathlib import Path
from typing import Any, BinaryIO, TypeVar

import numpy as np

from encoder.attention_store import LazyAttention, LazyVisible
from encoder.errors import ExportError

T = TypeVar("T")


# ---------------------------------------------------------------------------------------------------------------
# One entry per kind of field


@dataclass(frozen=True)
class Kind:
    """How one kind of field is stored.

    ``to_npz(name, value)`` returns the NPZ entries; ``from_npz(name, arrays)`` reads them back (KeyError when
    missing). ``to_json(value)`` returns JSON text, or None for no entry; ``from_json(value, field, document)``
    checks and converts the parsed value (TypeError or ValueError when it is not of this kind).
    """

    to_npz: Callable[[str, Any], dict[str, np.ndarray]]
    from_npz: Callable[[str, dict[str, np.ndarray]], Any]
    to_json: Callable[[Any], str | None]
    from_json: Callable[[Any, Field, dict], Any]


def json_value(value) -> str:
    """Compact JSON text of a plain value (str, number, bool, list, None), non-ASCII characters kept."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def _checked(value, python_type: type, name: str):
    """``value`` if it is a ``python_type`` (a JSON boolean is not an int), else TypeError."""
    if not isinstance(value, python_type) or (python_type is int and isinstance(value, bool)):
        raise TypeError(f"{name} must be {python_type.__name__}, got {type(value).__name__}")
    return value


def _scalar(python_type: type) -> Kind:
    """str, bool, int: a 0-d array in NPZ, a plain JSON value."""
    return Kind(
        to_npz=lambda name, value: {name: np.array(value)},
        from_npz=lambda name, arrays: python_type(arrays[name]),
        to_json=json_value,
        from_json=lambda value, field, document: _checked(value, python_type, field.name),
    )


def _strings_from_json(value, field: Field, document: dict) -> tuple[str, ...]:
    return tuple(_checked(item, str, field.name) for item in _checked(value, list, field.name))


def _optional_from_json(value, field: Field, document: dict) -> str | None:
    return None if value is None else _checked(value, str, field.name)


def _mapping_to_json(value: dict[str, np.ndarray]) -> str:
    return "{" + ",".join(f"{json_value(name)}:{json_array(np.asarray(v))}" for name, v in value.items()) + "}"


def _mapping_from_json(value, field: Field, document: dict) -> dict[str, np.ndarray]:
    dtypes = document["dtypes"]
    return {name: np.asarray(v, dtype=dtypes[name]) for name, v in _checked(value, dict, field.name).items()}


_STRINGS = Kind(
    to_npz=lambda name, value: {name: np.array(value, dtype=str)},
    from_npz=lambda name, arrays: tuple(str(t) for t in arrays[name]),
    to_json=lambda value: json_value(list(value)),
    from_json=_strings_from_json,
)
# None is stored as "" plus has_<name> false, so the NPZ holds no object arrays.
_OPTIONAL_STRING = Kind(
    to_npz=lambda name, value: {name: np.array("" if value is None else value),
                                f"has_{name}": np.array(value is not None)},
    from_npz=lambda name, arrays: str(arrays[name]) if bool(arrays[f"has_{name}"]) else None,
    to_json=json_value,
    from_json=_optional_from_json,
)
_ARRAY = Kind(
    to_npz=lambda name, value: {name: value},
    from_npz=lambda name, arrays: arrays[name],
    to_json=lambda value: json_array(np.asarray(value)),
    from_json=lambda value, field, document: np.asarray(value, dtype=field.metadata["dtype"]),
)
# An array or nothing: None has no NPZ entry and no JSON key (so it reads back as the field's default, None).
_OPTIONAL_ARRAY = Kind(
    to_npz=lambda name, value: {} if value is None else _ARRAY.to_npz(name, value),
    from_npz=_ARRAY.from_npz,
    to_json=lambda value: None if value is None else _ARRAY.to_json(value),
    from_json=lambda value, field, document: None if value is None else _ARRAY.from_json(value, field, document),
)
# One NPZ entry "<name>/<key>" per array; JSON keeps each array's dtype in the header's "dtypes".
MAPPING = Kind(
    to_npz=lambda name, value: {f"{name}/{key}": v for key, v in value.items()},
    from_npz=lambda name, arrays: {k.split("/", 1)[1]: v for k, v in arrays.items() if k.startswith(f"{name}/")},
    to_json=_mapping_to_json,
    from_json=_mapping_from_json,
)


def _array_or(lazy: type, optional: bool) -> Kind:
    """An array or a lazy one (``encoder.attention_store``: a long trace's attention or mask), or None when
    ``optional``. NPZ: the array as ``<name>``, or the lazy one's ``arrays()`` as ``<name>/<key>``; JSON: the
    array (a lazy one raises ExportError: a long trace is saved as NPZ)."""
    plain = _OPTIONAL_ARRAY if optional else _ARRAY

    def to_npz(name, value):
        if isinstance(value, lazy):
            return {f"{name}/{key}": array for key, array in value.arrays().items()}
        return plain.to_npz(name, value)

    def from_npz(name, arrays):
        if name in arrays:
            return arrays[name]
        parts = MAPPING.from_npz(name, arrays)
        if not parts:
            raise KeyError(name)
        return lazy.from_arrays(parts)

    def to_json(value):
        if isinstance(value, lazy):
            raise ExportError("A long trace (its attention kept as queries and keys) is saved as NPZ, not JSON.")
        return plain.to_json(value)

    return Kind(to_npz=to_npz, from_npz=from_npz, to_json=to_json, from_json=plain.from_json)


KINDS: dict[Any, Kind] = {
    np.ndarray | LazyAttention: _array_or(LazyAttention, optional=False),
    np.ndarray | LazyVisible | None: _array_or(LazyVisible, optional=True),
    str: _scalar(str),
    bool: _scalar(bool),
    int: _scalar(int),
    tuple[str, ...]: _STRINGS,
    str | None: _OPTIONAL_STRING,
    np.ndarray: _ARRAY,
    np.ndarray | None: _OPTIONAL_ARRAY,
    dict[str, np.ndarray]: MAPPING,
}


@cache
def field_kinds(cls: type) -> tuple[tuple[Field, Kind], ...]:
    """Each field of the dataclass ``cls`` with the kind that stores it.

    Raises:
        TypeError: a field whose type has no kind in ``KINDS``.
    """
    hints = typing.get_type_hints(cls)
    unknown = [f"{f.name}: {hints[f.name]}" for f in fields(cls) if hints[f.name] not in KINDS]
    if unknown:
        raise TypeError(f"cannot store {cls.__name__} fields {unknown}: add their kind to KINDS")
    return tuple((f, KINDS[hints[f.name]]) for f in fields(cls))


def _has_default(field: Field) -> bool:
    return field.default is not MISSING or field.default_factory is not MISSING


def build(cls: type[T], read: Callable[[Field, Kind], Any], where: str) -> T:
    """A ``cls`` (``EncoderTrace``) from ``read(field, kind)`` per field; any failure is an ExportError naming
    ``where``."""
    values = {}
    for field, kind in field_kinds(cls):
        try:
            values[field.name] = read(field, kind)
        except KeyError as error:
            if error.args[0] == field.name and _has_default(field):
                continue
            raise ExportError(f"{where} is not a Headlight trace: it has no {error.args[0]!r}") from None
        except (TypeError, ValueError) as error:
            raise ExportError(f"{where} is not a Headlight trace: {field.name!r} cannot be read ({error})") from None
    try:
        return cls(**values)
    except ValueError as error:
        raise ExportError(f"{where} is not a valid trace: {error}") from None


# ---------------------------------------------------------------------------------------------------------------
# NPZ


def write_npz(trace: Any, handle: BinaryIO) -> None:
    """Write every field of the dataclass instance ``trace`` into one compressed NPZ archive."""
    arrays: dict[str, np.ndarray] = {}
    for field, kind in field_kinds(type(trace)):
        arrays.update(kind.to_npz(field.name, getattr(trace, field.name)))
    np.savez_compressed(handle, **arrays)


def read_npz(cls: type[T], source: BinaryIO | Path, where: str) -> T:
    """A ``cls`` read from an NPZ archive (``write_npz``); ``where`` names the source in messages.

    Raises:
        ExportError: not an NPZ archive, or not a trace.
    """
    try:
        loaded = np.load(source, allow_pickle=False)
        if not isinstance(loaded, np.lib.npyio.NpzFile):
            raise ValueError("it holds one array, not an NPZ archive")
        with loaded:
            arrays = {name: loaded[name] for name in loaded.files}
    except (ValueError, EOFError, zipfile.BadZipFile, zlib.error) as error:
        raise ExportError(f"{where} is not an NPZ archive ({error})") from None
    return build(cls, lambda field, kind: kind.from_npz(field.name, arrays), where)


# ---------------------------------------------------------------------------------------------------------------
# JSON values


def json_array(array: np.ndarray) -> str:
    """A nested JSON list; float32 values in their shortest exact decimal form (NumPy's repr), NaN as ``null``
    (JSON has no NaN; ``null`` reads back as NaN into a float array: ``next_logprob``'s last position)."""
    if array.dtype.kind != "f":
        return json.dumps(array.tolist())
    if np.any(np.isinf(array)):
        raise ExportError("the trace holds infinite values, which JSON cannot store")
    text = np.where(np.isnan(array), "null", array.astype(str))

    def nest(block: np.ndarray) -> str:
        if block.ndim == 1:
            return "[" + ",".join(block.tolist()) + "]"
        return "[" + ",".join(nest(inner) for inner in block) + "]"

    return nest(text) if array.ndim else str(text)
