"""Analysis results as numbers: long-format rows, CSV and JSON (the downloads and the CLI's csv/json output)."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from encoder.errors import AnalysisError
from encoder.trace_io import csv_cell

if TYPE_CHECKING:
    from encoder.trace import EncoderTrace


_LARGE_FIELDS = ("attention", "difference")  # (L, H, T, T) fields that to_json leaves out by default

def matrix_rows(values: np.ndarray, tokens: Sequence[str], name: str = "value") -> list[dict]:
    """Long-format rows of a (T, T) or (L, T, T) token matrix (rollout, flow): [layer,] query, key, value."""
    values = np.asarray(values)
    if values.ndim not in (2, 3) or values.shape[-2:] != (len(tokens), len(tokens)):
        raise AnalysisError(f"values must be (T, T) or (L, T, T) for {len(tokens)} tokens, got shape {values.shape}")
    stack = values[None] if values.ndim == 2 else values
    rows = []
    for layer, matrix in enumerate(stack):
        for i, query in enumerate(tokens):
            for j, key in enumerate(tokens):
                row = {"layer": layer} if values.ndim == 3 else {}
                row.update(query_index=i, query_token=query, key_index=j, key_token=key)
                row[name] = float(matrix[i, j])
                rows.append(row)
    return rows


def head_rows(values: np.ndarray, name: str = "value") -> list[dict]:
    """Long-format rows of an (L, H) per-head map: layer, head, value."""
    values = np.asarray(values)
    if values.ndim != 2:
        raise AnalysisError(f"values must be (layers, heads), got shape {values.shape}")
    return [{"layer": layer, "head": head, name: float(values[layer, head])}
            for layer in range(values.shape[0]) for head in range(values.shape[1])]


def rows_to_csv(rows: Sequence[dict]) -> str:
    """CSV text of dict rows (the header from the first row's keys), each cell by ``encoder.trace_io.csv_cell``:
    text a spreadsheet would run as a formula (a token "=", "-", "@"...) gets a leading "'"; numbers stay numbers."""
    if not rows:
        raise AnalysisError("no rows to write")
    names = list(rows[0])
    lines = [",".join(csv_cell(name) for name in names)]
    lines += [",".join(csv_cell(row.get(name)) for name in names) for row in rows]
    return "\n".join(lines) + "\n"


def to_json(result, include_large: bool = False) -> str:
    """JSON text of an analysis result (any dataclass here or in ``analysis.perturb``, an array, or a dict):
    arrays become nested lists, the class name is kept under ``"kind"``.

    The (L, H, T, T) fields ``attention`` and ``difference`` are left out unless ``include_large`` (at 512 tokens
    they are 19 million numbers; export one head with ``matrix_rows`` instead).
    """
    data = _jsonable(result)
    if not include_large and isinstance(data, dict):
        data = {k: v for k, v in data.items() if k not in _LARGE_FIELDS}
    return json.dumps(data)


def _jsonable(value):
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {"kind": type(value).__name__,
                **{f.name: _jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}}
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value


# ---------------------------------------------------------------------------------------------------------------
# The rows of registry analyses: ``rows(result, trace, options) -> (csv rows, json result)``


def result_rows(result, trace: EncoderTrace | None, options: Mapping[str, Any]) -> tuple[list[dict], Any]:
    """The rows of a result that lists its own (``result.rows()``), and the result itself as the JSON."""
    return result.rows(), result


def result_table(result) -> list[dict]:
    """``result.rows()``: the sortable table the app shows under the figures."""
    return result.rows()


def matrix_result(kind: str, trace: EncoderTrace, layer: int, rows: list[dict], **extra: Any) -> dict:
    """The JSON of a token x token analysis: what it is, its input, the layer, ``extra`` settings, the tokens and
    ``rows`` (from ``matrix_rows``)."""
    return {"kind": kind, "model": trace.model, "text": trace.text, "pair": trace.pair, "layer": layer, **extra,
            "tokens": trace.tokens, "rows": rows}
