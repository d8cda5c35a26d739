"""Traces as files: compressed NPZ (everything, exact), JSON (everything, exact decimals), long-format attention
CSV; and reading each back.

NPZ and JSON are written and read field by field from ``dataclasses.fields(EncoderTrace)``: each field's type picks
one entry of ``encoder.trace_fields.KINDS``, which says how that kind of value is stored (``EncoderTrace.save`` and
``load`` use the same codec). NPZ keys and JSON keys are the field names,
plus ``has_pair`` (NPZ: whether ``pair`` is None), ``outputs/<name>`` (NPZ: one array per output), and the JSON
header "format", "version", "shapes" (informative) and "dtypes" (of the outputs). A field with a default may be
missing from a file (it reads back as the default), so files from before a new field still load; an optional array
that is None is written as no entry at all, and read back as None.
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from encoder.errors import ExportError, index_in_range
from encoder.trace import EncoderTrace
from encoder.trace_fields import MAPPING, build, field_kinds, json_value, read_npz, write_npz

DATA_FORMATS = ("npz", "json", "csv")
CSV_HEADER = ("layer", "head", "query_index", "query_token", "key_index", "key_token", "weight")
JSON_FORMAT = "headlight-trace"
JSON_VERSION = 1
# A spreadsheet runs a cell starting with one of these as a formula (OWASP "CSV injection"): such tokens are written
# with one more leading "'", which ``attention_from_csv`` takes off again.
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
_CSV_SPECIAL = re.compile(r'[,"\r\n]')  # a cell with one of these is quoted


# ---------------------------------------------------------------------------------------------------------------
# NPZ


def trace_to_npz(trace: EncoderTrace) -> bytes:
    """The whole trace as compressed NPZ bytes (read back with ``trace_from_npz``; ``EncoderTrace.save`` writes
    the same to a file)."""
    buffer = io.BytesIO()
    write_npz(trace, buffer)
    return buffer.getvalue()


def trace_from_npz(data: bytes) -> EncoderTrace:
    """Read NPZ bytes written by ``trace_to_npz``.

    Raises:
        ExportError: not an NPZ archive, or not a Headlight trace.
    """
    return read_npz(EncoderTrace, io.BytesIO(data), "the NPZ data")


def save_npz(trace: EncoderTrace, path: str | Path) -> Path:
    """Write ``trace_to_npz`` to ``path`` (exactly this name: no ".npz" is added); returns the path."""
    return trace.save(path)


def load_npz(path: str | Path) -> EncoderTrace:
    """Read an NPZ trace file (``save_npz``, ``EncoderTrace.save``).

    Raises:
        ExportError: the file is not an NPZ archive or not a Headlight trace.
        OSError: the file cannot be opened.
    """
    return EncoderTrace.load(path)


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
        "dtypes": {name: str(np.asarray(value).dtype) for field, kind in field_kinds(EncoderTrace) if kind is MAPPING
                   for name, value in getattr(trace, field.name).items()},
    }
    parts = [f"{json_value(key)}:{json_value(value)}" for key, value in header.items()]
    values = ((field.name, kind.to_json(getattr(trace, field.name))) for field, kind in field_kinds(EncoderTrace))
    parts += [f"{json_value(name)}:{value}" for name, value in values if value is not None]
    return "{" + ",".join(parts) + "}"


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
    return build(EncoderTrace, lambda field, kind: kind.from_json(document[field.name], field, document),
                 "the JSON")


# ---------------------------------------------------------------------------------------------------------------
# CSV (attention only)


def write_attention_csv(
    trace: EncoderTrace,
    handle,
    layers: Iterable[int] | None = None,
    heads: Iterable[int] | None = None,
    query_tokens: Sequence[str] | None = None,
) -> int:
    """Write attention in long format to a text ``handle``; returns the number of data rows.

    Columns: layer, head, query_index, query_token, key_index, key_token, weight (one row per weight, in
    (layer, head, query, key) order; weights in the shortest decimal that reads back to the same float32).
    ``layers``/``heads`` restrict the rows (default all); a full trace has L*H*T*T rows. ``query_tokens`` (Tq,)
    names the queries when they are another text's (cross-attention: ``trace.attention`` (L, H, Tq, T)). A token
    a spreadsheet would run as a formula (it starts with = + - @, tab or CR) is written with a leading "'".

    Raises:
        ExportError: a layer or head out of range, listed twice, or none chosen.
    """
    chosen_layers = _indices(layers, trace.num_layers, "layer")
    chosen_heads = _indices(heads, trace.num_heads, "head")
    writer = csv.writer(handle, lineterminator="\n")
    writer.writerow(CSV_HEADER)
    quoted = [csv_cell(t) for t in trace.tokens]
    queries = quoted if query_tokens is None else [csv_cell(t) for t in query_tokens]
    count = trace.num_tokens
    key_parts = [f"{k},{quoted[k]}," for k in range(count)]
    rows = 0
    for layer in chosen_layers:
        for head in chosen_heads:
            for query in range(len(queries)):
                prefix = f"{layer},{head},{query},{queries[query]},"
                values = trace.attention[layer, head, query].astype(str)
                handle.write("".join(f"{prefix}{key_parts[k]}{values[k]}\n" for k in range(count)))
                rows += count
    return rows


def trace_to_csv(trace: EncoderTrace, layers: Iterable[int] | None = None, heads: Iterable[int] | None = None,
                 query_tokens: Sequence[str] | None = None) -> str:
    """``write_attention_csv`` into a string."""
    buffer = io.StringIO()
    write_attention_csv(trace, buffer, layers, heads, query_tokens)
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
    chosen = [index_in_range(value, count, what, error=ExportError) for value in values]
    if not chosen:
        raise ExportError(f"{what}s is empty: choose at least one {what}")
    if len(set(chosen)) != len(chosen):
        raise ExportError(f"{what}s {chosen} lists a {what} twice")
    return sorted(chosen)


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
