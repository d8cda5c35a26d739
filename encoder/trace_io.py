"""Traces as files: compressed NPZ (everything, exact), JSON (everything, exact decimals), long-format attention
CSV; and reading each back.

NPZ and JSON are written and read field by field from ``dataclasses.fields(EncoderTrace)``: each field's type picks
one entry of ``_KINDS``, which says how that kind of value is stored. NPZ keys and JSON keys are the field names,
plus ``has_pair`` (NPZ: whether ``pair`` is None), ``outputs/<name>`` (NPZ: one array per output), and the JSON
header "format", "version", "shapes" (informative) and "dtypes" (of the outputs). A field with a default may be
missing from a file (it reads back as the default), so files from before a new field still load; an optional array
that is None is written as no entry at all, and read back as None.
"""

from __future__ import annotations

import csv
import io
import json
import operator
import re
import typing
import zipfile
import zlib
from collections.abc import Callable, Iterable
from dataclasses import MISSING, Field, dataclass, fields
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from encoder.errors import ExportError
from encoder.trace import EncoderTrace

DATA_FORMATS = ("npz", "json", "csv")
CSV_HEADER = ("layer", "head", "query_index", "query_token", "key_index", "key_token", "weight")
JSON_FORMAT = "headlight-trace"
JSON_VERSION = 1
# A spreadsheet runs a cell starting with one of these as a formula (OWASP "CSV injection"): such tokens are written
# with one more leading "'", which ``attention_from_csv`` takes off again.
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
_CSV_SPECIAL = re.compile(r'[,"\r\n]')  # a cell with one of these is quoted


# ---------------------------------------------------------------------------------------------------------------
# One entry per kind of field


@dataclass(frozen=True)
class _Kind:
    """How one kind of field is stored.

    ``to_npz(name, value)`` returns the NPZ entries; ``from_npz(name, arrays)`` reads them back (KeyError when
    missing). ``to_json(value)`` returns JSON text, or None for no entry; ``from_json(value, field, document)``
    checks and converts the parsed value (TypeError or ValueError when it is not of this kind).
    """

    to_npz: Callable[[str, Any], dict[str, np.ndarray]]
    from_npz: Callable[[str, dict[str, np.ndarray]], Any]
    to_json: Callable[[Any], str | None]
    from_json: Callable[[Any, Field, dict], Any]


def _json_value(value) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def _checked(value, python_type: type, name: str):
    """``value`` if it is a ``python_type`` (a JSON boolean is not an int), else TypeError."""
    if not isinstance(value, python_type) or (python_type is int and isinstance(value, bool)):
        raise TypeError(f"{name} must be {python_type.__name__}, got {type(value).__name__}")
    return value


def _scalar(python_type: type) -> _Kind:
    """str, bool, int: a 0-d array in NPZ, a plain JSON value."""
    return _Kind(
        to_npz=lambda name, value: {name: np.array(value)},
        from_npz=lambda name, arrays: python_type(arrays[name]),
        to_json=_json_value,
        from_json=lambda value, field, document: _checked(value, python_type, field.name),
    )


def _strings_from_json(value, field: Field, document: dict) -> tuple[str, ...]:
    return tuple(_checked(item, str, field.name) for item in _checked(value, list, field.name))


def _optional_from_json(value, field: Field, document: dict) -> str | None:
    return None if value is None else _checked(value, str, field.name)


def _mapping_to_json(value: dict[str, np.ndarray]) -> str:
    return "{" + ",".join(f"{_json_value(name)}:{_json_array(np.asarray(v))}" for name, v in value.items()) + "}"


def _mapping_from_json(value, field: Field, document: dict) -> dict[str, np.ndarray]:
    dtypes = document["dtypes"]
    return {name: np.asarray(v, dtype=dtypes[name]) for name, v in _checked(value, dict, field.name).items()}


_STRINGS = _Kind(
    to_npz=lambda name, value: {name: np.array(value, dtype=str)},
    from_npz=lambda name, arrays: tuple(str(t) for t in arrays[name]),
    to_json=lambda value: _json_value(list(value)),
    from_json=_strings_from_json,
)
# None is stored as "" plus has_<name> false, so the NPZ holds no object arrays.
_OPTIONAL_STRING = _Kind(
    to_npz=lambda name, value: {name: np.array("" if value is None else value),
                                f"has_{name}": np.array(value is not None)},
    from_npz=lambda name, arrays: str(arrays[name]) if bool(arrays[f"has_{name}"]) else None,
    to_json=_json_value,
    from_json=_optional_from_json,
)
_ARRAY = _Kind(
    to_npz=lambda name, value: {name: value},
    from_npz=lambda name, arrays: arrays[name],
    to_json=lambda value: _json_array(np.asarray(value)),
    from_json=lambda value, field, document: np.asarray(value, dtype=field.metadata["dtype"]),
)
# An array or nothing: None has no NPZ entry and no JSON key (so it reads back as the field's default, None).
_OPTIONAL_ARRAY = _Kind(
    to_npz=lambda name, value: {} if value is None else _ARRAY.to_npz(name, value),
    from_npz=_ARRAY.from_npz,
    to_json=lambda value: None if value is None else _ARRAY.to_json(value),
    from_json=lambda value, field, document: None if value is None else _ARRAY.from_json(value, field, document),
)
# One NPZ entry "<name>/<key>" per array; JSON keeps each array's dtype in the header's "dtypes".
_MAPPING = _Kind(
    to_npz=lambda name, value: {f"{name}/{key}": v for key, v in value.items()},
    from_npz=lambda name, arrays: {k.split("/", 1)[1]: v for k, v in arrays.items() if k.startswith(f"{name}/")},
    to_json=_mapping_to_json,
    from_json=_mapping_from_json,
)
_KINDS: dict[Any, _Kind] = {
    str: _scalar(str),
    bool: _scalar(bool),
    int: _scalar(int),
    tuple[str, ...]: _STRINGS,
    str | None: _OPTIONAL_STRING,
    np.ndarray: _ARRAY,
    np.ndarray | None: _OPTIONAL_ARRAY,
    dict[str, np.ndarray]: _MAPPING,
}


def _field_kinds() -> list[tuple[Field, _Kind]]:
    hints = typing.get_type_hints(EncoderTrace)
    unknown = [f"{f.name}: {hints[f.name]}" for f in fields(EncoderTrace) if hints[f.name] not in _KINDS]
    if unknown:
        raise TypeError(f"trace_io cannot store EncoderTrace fields {unknown}: add their kind to _KINDS")
    return [(f, _KINDS[hints[f.name]]) for f in fields(EncoderTrace)]


_FIELDS = _field_kinds()


def _has_default(field: Field) -> bool:
    return field.default is not MISSING or field.default_factory is not MISSING


def _build_trace(read: Callable[[Field, _Kind], Any], where: str) -> EncoderTrace:
    """An EncoderTrace from ``read(field, kind)`` per field; any failure is an ExportError naming ``where``."""
    values = {}
    for field, kind in _FIELDS:
        try:
            values[field.name] = read(field, kind)
        except KeyError as error:
            if error.args[0] == field.name and _has_default(field):
                continue
            raise ExportError(f"{where} is not a Headlight trace: it has no {error.args[0]!r}") from None
        except (TypeError, ValueError) as error:
            raise ExportError(f"{where} is not a Headlight trace: {field.name!r} cannot be read ({error})") from None
    try:
        return EncoderTrace(**values)
    except ValueError as error:
        raise ExportError(f"{where} is not a valid trace: {error}") from None


# ---------------------------------------------------------------------------------------------------------------
# NPZ


def _write_npz(trace: EncoderTrace, handle: BinaryIO) -> None:
    arrays: dict[str, np.ndarray] = {}
    for field, kind in _FIELDS:
        arrays.update(kind.to_npz(field.name, getattr(trace, field.name)))
    np.savez_compressed(handle, **arrays)


def _read_npz(source: BinaryIO | Path, where: str) -> EncoderTrace:
    try:
        loaded = np.load(source, allow_pickle=False)
        if not isinstance(loaded, np.lib.npyio.NpzFile):
            raise ValueError("it holds one array, not an NPZ archive")
        with loaded:
            arrays = {name: loaded[name] for name in loaded.files}
    except (ValueError, EOFError, zipfile.BadZipFile, zlib.error) as error:
        raise ExportError(f"{where} is not an NPZ archive ({error})") from None
    return _build_trace(lambda field, kind: kind.from_npz(field.name, arrays), where)


def trace_to_npz(trace: EncoderTrace) -> bytes:
    """The whole trace as compressed NPZ bytes (read back with ``trace_from_npz``; ``EncoderTrace.save`` writes
    the same to a file)."""
    buffer = io.BytesIO()
    _write_npz(trace, buffer)
    return buffer.getvalue()


def trace_from_npz(data: bytes) -> EncoderTrace:
    """Read NPZ bytes written by ``trace_to_npz``.

    Raises:
        ExportError: not an NPZ archive, or not a Headlight trace.
    """
    return _read_npz(io.BytesIO(data), "the NPZ data")


def save_npz(trace: EncoderTrace, path: str | Path) -> Path:
    """Write ``trace_to_npz`` to ``path`` (exactly this name: no ".npz" is added); returns the path."""
    path = Path(path)
    with path.open("wb") as handle:
        _write_npz(trace, handle)
    return path


def load_npz(path: str | Path) -> EncoderTrace:
    """Read an NPZ trace file (``save_npz``, ``EncoderTrace.save``).

    Raises:
        ExportError: the file is not an NPZ archive or not a Headlight trace.
        OSError: the file cannot be opened.
    """
    return _read_npz(Path(path), str(path))


# ---------------------------------------------------------------------------------------------------------------
# JSON


def trace_to_json(trace: EncoderTrace) -> str:
    """The whole trace as JSON: metadata plus every array as nested lists (read back with ``trace_from_json``).

    Floats are written as the shortest decimal that reads back to the same float32, so the round trip is exact.
    A full trace is large (~19 MB at 128 tokens for MiniLM); the CSV export can hold just one layer or head.
    """
    header = {
        "format": JSON_FORMAT,
        "version": JSON_VERSION,
        "shapes": {"layers": trace.num_layers, "heads": trace.num_heads, "tokens": trace.num_tokens},
        "dtypes": {name: str(np.asarray(value).dtype) for field, kind in _FIELDS if kind is _MAPPING
                   for name, value in getattr(trace, field.name).items()},
    }
    parts = [f"{_json_value(key)}:{_json_value(value)}" for key, value in header.items()]
    values = ((field.name, kind.to_json(getattr(trace, field.name))) for field, kind in _FIELDS)
    parts += [f"{_json_value(name)}:{value}" for name, value in values if value is not None]
    return "{" + ",".join(parts) + "}"


def _json_array(array: np.ndarray) -> str:
    """A nested JSON list; float32 values in their shortest exact decimal form (NumPy's repr)."""
    if array.dtype.kind != "f":
        return json.dumps(array.tolist())
    if not np.all(np.isfinite(array)):
        raise ExportError("the trace holds NaN or infinite values, which JSON cannot store")
    text = array.astype(str)

    def nest(block: np.ndarray) -> str:
        if block.ndim == 1:
            return "[" + ",".join(block.tolist()) + "]"
        return "[" + ",".join(nest(inner) for inner in block) + "]"

    return nest(text) if array.ndim else str(text)


def trace_from_json(text: str) -> EncoderTrace:
    """Read a trace written by ``trace_to_json``.

    Raises:
        ExportError: not JSON, or not a Headlight trace.
    """
    try:
        document = json.loads(text)
    except json.JSONDecodeError as error:
        raise ExportError(f"not a JSON trace: {error}") from error
    if not isinstance(document, dict) or document.get("format") != JSON_FORMAT:
        raise ExportError(f"not a Headlight trace: expected \"format\": \"{JSON_FORMAT}\"")
    if document.get("version") != JSON_VERSION:
        raise ExportError(f"JSON trace version {document.get('version')!r} is not {JSON_VERSION}, the one we read")
    return _build_trace(lambda field, kind: kind.from_json(document[field.name], field, document), "the JSON")


# ---------------------------------------------------------------------------------------------------------------
# CSV (attention only)


def write_attention_csv(
    trace: EncoderTrace,
    handle,
    layers: Iterable[int] | None = None,
    heads: Iterable[int] | None = None,
) -> int:
    """Write attention in long format to a text ``handle``; returns the number of data rows.

    Columns: layer, head, query_index, query_token, key_index, key_token, weight (one row per weight, in
    (layer, head, query, key) order; weights in the shortest decimal that reads back to the same float32).
    ``layers``/``heads`` restrict the rows (default all); a full trace has L*H*T*T rows. A token a spreadsheet
    would run as a formula (it starts with = + - @, tab or CR) is written with a leading "'".

    Raises:
        ExportError: a layer or head out of range, listed twice, or none chosen.
    """
    chosen_layers = _indices(layers, trace.num_layers, "layer")
    chosen_heads = _indices(heads, trace.num_heads, "head")
    writer = csv.writer(handle, lineterminator="\n")
    writer.writerow(CSV_HEADER)
    quoted = [csv_cell(t) for t in trace.tokens]
    count = trace.num_tokens
    key_parts = [f"{k},{quoted[k]}," for k in range(count)]
    rows = 0
    for layer in chosen_layers:
        for head in chosen_heads:
            for query in range(count):
                prefix = f"{layer},{head},{query},{quoted[query]},"
                values = trace.attention[layer, head, query].astype(str)
                handle.write("".join(f"{prefix}{key_parts[k]}{values[k]}\n" for k in range(count)))
                rows += count
    return rows


def trace_to_csv(trace: EncoderTrace, layers: Iterable[int] | None = None, heads: Iterable[int] | None = None) -> str:
    """``write_attention_csv`` into a string."""
    buffer = io.StringIO()
    write_attention_csv(trace, buffer, layers, heads)
    return buffer.getvalue()


def attention_from_csv(text: str) -> tuple[tuple[str, ...], np.ndarray, list[int], list[int]]:
    """Read long-format attention CSV back: (tokens, attention (L', H', T, T) float32, layers, heads).

    ``layers`` and ``heads`` list which of the trace's layers and heads the rows held, in order.

    Raises:
        ExportError: wrong header, or rows missing for a (layer, head, query, key).
    """
    reader = csv.reader(io.StringIO(text))
    header = next(reader, None)
    if tuple(header or ()) != CSV_HEADER:
        raise ExportError(f"CSV header is {header}, expected {list(CSV_HEADER)}")
    records = list(reader)
    if not records:
        raise ExportError("CSV has a header but no rows")
    columns = list(zip(*records))
    layer_col, head_col, query_col, key_col = (np.asarray(columns[i], dtype=np.int64) for i in (0, 1, 2, 4))
    weights = np.asarray(columns[6], dtype=np.float32)
    layers, heads = sorted(set(layer_col.tolist())), sorted(set(head_col.tolist()))
    count = int(max(query_col.max(), key_col.max())) + 1
    tokens = [""] * count
    for index, token in zip(query_col.tolist(), columns[3]):
        tokens[index] = _csv_token(token)
    for index, token in zip(key_col.tolist(), columns[5]):
        tokens[index] = _csv_token(token)
    expected = len(layers) * len(heads) * count * count
    if len(records) != expected:
        raise ExportError(f"CSV has {len(records)} rows; {len(layers)} layers x {len(heads)} heads x {count}² "
                          f"tokens need {expected}")
    attention = np.zeros((len(layers), len(heads), count, count), dtype=np.float32)
    attention[np.searchsorted(layers, layer_col), np.searchsorted(heads, head_col), query_col, key_col] = weights
    return tuple(tokens), attention, layers, heads


def _indices(values: Iterable[int] | int | None, count: int, what: str) -> list[int]:
    """Sorted distinct indices in ``range(count)``; None means all, one int means just it.

    Raises:
        ExportError: naming the bad value and the range ("layer 9 is out of range: the model has 6 layers (0-5)").
    """
    if values is None:
        return list(range(count))
    if isinstance(values, (int, np.integer)) and not isinstance(values, bool):
        values = [values]
    chosen = [_index(value, count, what) for value in values]
    if not chosen:
        raise ExportError(f"{what}s is empty: choose at least one {what}")
    if len(set(chosen)) != len(chosen):
        raise ExportError(f"{what}s {chosen} lists a {what} twice")
    return sorted(chosen)


def _index(value, count: int, what: str) -> int:
    try:
        if isinstance(value, bool):
            raise TypeError
        index = operator.index(value)
    except TypeError:
        raise ExportError(f"{what} must be an integer, got {value!r}") from None
    if not 0 <= index < count:
        raise ExportError(f"{what} {index} is out of range: the model has {count} {what}s (0-{count - 1})")
    return index


def spreadsheet_safe(text: str) -> str:
    """``text`` with one more leading "'" when a spreadsheet would run it as a formula (it starts with = + - @, tab
    or CR, also after "'"s, so that taking one "'" off reads back exactly); else unchanged.

    Example:
        >>> spreadsheet_safe("=1+1"), spreadsheet_safe("cat")
        ("'=1+1", 'cat')
    """
    return "'" + text if text.lstrip("'").startswith(FORMULA_STARTS) else text


def csv_cell(value) -> str:
    """``value`` as one CSV cell, the one rule for every CSV we write (``analysis.rows_to_csv`` too): text made
    ``spreadsheet_safe`` and quoted where CSV needs it (a comma, a quote, a CR or LF inside); a number as Python
    writes it (-0.5 is a number, not a formula); None empty.

    Example:
        >>> csv_cell("-"), csv_cell("a,b"), csv_cell(-0.5)
        ("'-", '"a,b"', '-0.5')
    """
    if value is None:
        return ""
    text = spreadsheet_safe(value) if isinstance(value, str) else str(value)
    if text and not _CSV_SPECIAL.search(text):
        return text
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\r\n").writerow([text])  # this terminator: a CR or LF inside is quoted
    return buffer.getvalue()[:-2]


def _csv_token(cell: str) -> str:
    """The token ``csv_cell`` wrote as ``cell`` (after CSV unquoting)."""
    if cell.startswith("'") and cell.lstrip("'").startswith(FORMULA_STARTS):
        return cell[1:]
    return cell
