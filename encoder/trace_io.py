"""Traces as files: compressed NPZ (everything, exact), JSON (everything, exact decimals), long-format attention
CSV; and reading each back."""

from __future__ import annotations

import csv
import io
import json
import tempfile
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from encoder.errors import ExportError
from encoder.trace import EncoderTrace

DATA_FORMATS = ("npz", "json", "csv")
CSV_HEADER = ("layer", "head", "query_index", "query_token", "key_index", "key_token", "weight")
JSON_FORMAT = "headlight-trace"


def trace_to_npz(trace: EncoderTrace) -> bytes:
    """The whole trace as compressed NPZ bytes (``EncoderTrace.save`` format; read back with ``EncoderTrace.load``)."""
    with tempfile.TemporaryDirectory() as folder:
        path = trace.save(Path(folder) / "trace.npz")
        return path.read_bytes()


def trace_to_json(trace: EncoderTrace) -> str:
    """The whole trace as JSON: metadata plus every array as nested lists (read back with ``trace_from_json``).

    Floats are written as the shortest decimal that reads back to the same float32, so the round trip is exact.
    A full trace is large (~19 MB at 128 tokens for MiniLM); the CSV export can hold just one layer or head.
    """
    meta = {
        "format": JSON_FORMAT,
        "version": 1,
        "model": trace.model,
        "text": trace.text,
        "pair": trace.pair,
        "truncated": trace.truncated,
        "untruncated_length": trace.untruncated_length,
        "labels": list(trace.labels),
        "tokens": list(trace.tokens),
        "shapes": {"layers": trace.num_layers, "heads": trace.num_heads, "tokens": trace.num_tokens},
        "token_ids": trace.token_ids.tolist(),
        "segment_ids": trace.segment_ids.tolist(),
        "special": trace.special.tolist(),
        "dtypes": {name: str(np.asarray(value).dtype) for name, value in trace.outputs.items()},
    }
    arrays = {
        "attention": trace.attention,
        "positional": trace.positional,
        "positional_table": trace.positional_table,
        "hidden": trace.hidden,
    }
    parts = [json.dumps(meta, ensure_ascii=False, separators=(",", ":"))[:-1]]
    parts += [f',"{name}":{_json_array(value)}' for name, value in arrays.items()]
    outputs = ",".join(f"{json.dumps(name)}:{_json_array(np.asarray(v))}" for name, v in trace.outputs.items())
    parts.append(f',"outputs":{{{outputs}}}}}')
    return "".join(parts)


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
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise ExportError(f"not a JSON trace: {error}") from error
    if not isinstance(data, dict) or data.get("format") != JSON_FORMAT:
        raise ExportError(f"not a Headlight trace: expected \"format\": \"{JSON_FORMAT}\"")
    return EncoderTrace(
        model=data["model"],
        tokens=tuple(data["tokens"]),
        token_ids=np.asarray(data["token_ids"], dtype=np.int32),
        segment_ids=np.asarray(data["segment_ids"], dtype=np.int32),
        special=np.asarray(data["special"], dtype=bool),
        attention=np.asarray(data["attention"], dtype=np.float32),
        positional=np.asarray(data["positional"], dtype=np.float32),
        positional_table=np.asarray(data["positional_table"], dtype=np.float32),
        hidden=np.asarray(data["hidden"], dtype=np.float32),
        outputs={k: np.asarray(v, dtype=data["dtypes"][k]) for k, v in data["outputs"].items()},
        text=data["text"],
        pair=data["pair"],
        truncated=data["truncated"],
        untruncated_length=data["untruncated_length"],
        labels=tuple(data["labels"]),
    )


def write_attention_csv(
    trace: EncoderTrace,
    handle,
    layers: Iterable[int] | None = None,
    heads: Iterable[int] | None = None,
) -> int:
    """Write attention in long format to a text ``handle``; returns the number of data rows.

    Columns: layer, head, query_index, query_token, key_index, key_token, weight (one row per weight, in
    (layer, head, query, key) order; weights in the shortest decimal that reads back to the same float32).
    ``layers``/``heads`` restrict the rows (default all); a full trace has L*H*T*T rows.
    """
    from viz.common import check_heads, check_layer

    chosen_layers = sorted({check_layer(trace, x) for x in layers}) if layers is not None else range(trace.num_layers)
    chosen_heads = check_heads(trace, heads)
    writer = csv.writer(handle, lineterminator="\n")
    writer.writerow(CSV_HEADER)
    quoted = [_csv_field(t) for t in trace.tokens]
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
        tokens[index] = token
    for index, token in zip(key_col.tolist(), columns[5]):
        tokens[index] = token
    expected = len(layers) * len(heads) * count * count
    if len(records) != expected:
        raise ExportError(f"CSV has {len(records)} rows; {len(layers)} layers x {len(heads)} heads x {count}² "
                          f"tokens need {expected}")
    attention = np.zeros((len(layers), len(heads), count, count), dtype=np.float32)
    attention[np.searchsorted(layers, layer_col), np.searchsorted(heads, head_col), query_col, key_col] = weights
    return tuple(tokens), attention, layers, heads


def _csv_field(token: str) -> str:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="").writerow([token])
    return buffer.getvalue()

