"""Reading a corpus: a text file (one sentence per line) or one column of a CSV, TSV, JSONL or Parquet file, in
bounded pieces, never the whole file in memory.

A build first plans its input (``plan_input``): one streaming pass that checks the file (UTF-8 text, no NUL bytes,
the column there and holding text, at least one sentence) and cuts it into ``Chunk`` descriptors, each a few
hundred KB of it. A worker then reads one chunk (``read_chunk``) and cuts it into batches of ``batch_size``
sentences; the batches are the same whatever runs them, so every runner traces the same padded batches.

Sentence ids: a text file's sentence is its 0-based line number; a table's, its 0-based data row. Blank lines (and
empty or missing cells) are skipped but counted, so ids always point back at the input.

A CSV, TSV or JSONL file is first copied, streamed, into a Parquet file of the one column (``stage_table``): its
rows cannot be found by byte offset (a quoted field may hold a newline), a Parquet file's can (row groups).
"""

from __future__ import annotations

import codecs
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from corpus.format import CorpusError

TEXT, TABLE = "text", "table"
TABLE_SUFFIXES = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".parquet": "parquet"}
CHUNK_BYTES = 256 * 1024  # a text chunk: about 3,000 sentences of data/
CHUNK_ROWS = 4096  # a staged table's row group (a chunk); and how many rows a Parquet input is read at a time
READ_BLOCK = 1 << 20  # the planning pass reads the file a block at a time
TABLE_BLOCK = 1 << 22  # pyarrow's streaming readers: bytes per block
MAX_LINE_BYTES = 1 << 20  # a longer "line" is not a sentence (a file of one huge line is not one sentence per line)


@dataclass(frozen=True)
class Chunk:
    """A piece of the input a worker reads on its own: bytes ``start`` .. ``stop`` of a text file, whose first line
    is line ``first`` of the file; or rows ``start`` .. ``stop`` of a Parquet file (``first`` == ``start``)."""

    index: int
    path: str
    kind: str  # TEXT or TABLE
    start: int
    stop: int
    first: int
    column: str | None = None


@dataclass(frozen=True)
class Batch:
    """``batch_size`` sentences (fewer at a chunk's end) of one chunk, in input order: the unit RunInference traces.
    ``index``: (chunk index, batch within the chunk), which orders batches as the input does."""

    index: tuple[int, int]
    ids: tuple[int, ...]
    texts: tuple[str, ...]


@dataclass(frozen=True)
class InputPlan:
    """What ``plan_input`` found: the chunks (a CSV/TSV/JSONL input's read from its staged Parquet copy), how many
    lines or rows the input has, and its kind (TEXT or TABLE)."""

    chunks: tuple[Chunk, ...]
    rows: int
    kind: str


def input_kind(path: Path, column: str | None) -> str:
    """"text" or the table format of ``path`` by its suffix; a table needs ``column`` and a text file refuses it."""
    suffix = path.suffix.lower()
    if suffix in TABLE_SUFFIXES:
        if not column:
            raise CorpusError(f"A {suffix[1:].upper()} input needs --column: the column that holds the sentences.")
        return TABLE_SUFFIXES[suffix]
    if column:
        raise CorpusError("--column is for CSV, TSV, JSONL and Parquet inputs (by their file name's ending); a text "
                          "file holds one sentence per line.")
    return TEXT


def plan_input(path: str | Path, column: str | None, staging: Path, chunk_bytes: int = CHUNK_BYTES) -> InputPlan:
    """Check ``path`` and cut it into chunks (see the module docstring); a CSV/TSV/JSONL input is first staged as
    ``staging`` (a Parquet file of the column).

    Raises:
        CorpusError: no such file, not UTF-8 text, binary, a missing or non-text column, no sentence at all.
    """
    path = Path(path)
    if not path.is_file():
        raise CorpusError("The input file does not exist (give a text, CSV, TSV, JSONL or Parquet file).")
    kind = input_kind(path, column)
    if kind == TEXT:
        return _plan_text(path, chunk_bytes)
    source = path if kind == "parquet" else stage_table(path, kind, column, staging)
    return _plan_parquet(source, column)


def _plan_text(path: Path, chunk_bytes: int) -> InputPlan:
    """Chunks of about ``chunk_bytes`` each ending at a line end, with each one's first line number; checks the
    file is UTF-8 text with at least one non-blank line."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    chunks: list[Chunk] = []
    start = offset = lines = start_line = 0
    blank, longest, current = True, 0, 0
    with path.open("rb") as handle:
        while block := handle.read(READ_BLOCK):
            if b"\x00" in block:
                raise CorpusError("The input file is binary (it holds NUL bytes), not text with one sentence per line.")
            try:
                decoder.decode(block)
            except UnicodeDecodeError:
                raise CorpusError("The input file is not UTF-8 text: save it as UTF-8, one sentence per line.") \
                    from None
            blank = blank and not block.strip()
            longest, current = _longest_line(block, longest, current)
            position = 0
            while (cut := start + chunk_bytes) < offset + len(block):  # chunk boundaries inside this block
                newline = block.find(b"\n", max(cut - offset, position))
                if newline < 0:
                    break
                end = offset + newline + 1
                lines += block.count(b"\n", position, newline + 1)
                chunks.append(Chunk(len(chunks), str(path), TEXT, start, end, start_line))
                start, start_line, position = end, lines, newline + 1
            lines += block.count(b"\n", position)
            offset += len(block)
    try:
        decoder.decode(b"", final=True)
    except UnicodeDecodeError:
        raise CorpusError("The input file is not UTF-8 text (it ends inside a character).") from None
    if blank:
        raise CorpusError("The input file has no sentences: put one sentence per line.")
    if longest > MAX_LINE_BYTES:
        raise CorpusError(f"The input file has a line of over {MAX_LINE_BYTES >> 20} MB: a text input holds one "
                          "sentence per line.")
    if start < offset:
        chunks.append(Chunk(len(chunks), str(path), TEXT, start, offset, start_line))
    return InputPlan(tuple(chunks), lines + (not _ends_with_newline(path, offset)), TEXT)


def _longest_line(block: bytes, longest: int, current: int) -> tuple[int, int]:
    """The longest line so far and the length of the line still open after ``block`` (bytes)."""
    parts = block.split(b"\n")
    if len(parts) == 1:
        return max(longest, current + len(block)), current + len(block)
    longest = max(longest, current + len(parts[0]), *(len(part) for part in parts[1:-1]))
    return max(longest, len(parts[-1])), len(parts[-1])


def _ends_with_newline(path: Path, size: int) -> bool:
    if size == 0:
        return True
    with path.open("rb") as handle:
        handle.seek(size - 1)
        return handle.read(1) == b"\n"


def stage_table(path: Path, kind: str, column: str, staging: Path) -> Path:
    """Copy ``column`` of a CSV/TSV/JSONL file into the Parquet file ``staging``, a block at a time (pyarrow's
    streaming readers). Returns ``staging``."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    reader = _open_table(path, kind)
    if column not in reader.schema.names:
        raise CorpusError(f"The input has no column {column!r}; its columns: {_names(reader.schema.names)}.")
    _check_text_type(reader.schema.field(column).type, column)
    staging.parent.mkdir(parents=True, exist_ok=True)
    with pq.ParquetWriter(staging, pa.schema([(column, pa.string())])) as writer:
        try:
            for block in reader:
                writer.write_table(pa.table({column: block.column(column).cast(pa.string())}),
                                   row_group_size=CHUNK_ROWS)
        except pa.ArrowException as error:
            raise CorpusError(f"The input is not a well-formed {kind.upper()} file: {_first_line(error)}.") from None
    return staging


def _open_table(path: Path, kind: str):
    """pyarrow's streaming reader of a CSV, TSV or JSONL file (every column read as it is typed)."""
    import pyarrow as pa
    import pyarrow.csv as csv
    import pyarrow.json as json

    try:
        if kind == "jsonl":
            return json.open_json(path, read_options=json.ReadOptions(block_size=TABLE_BLOCK))
        parse = csv.ParseOptions(delimiter="\t", quote_char=False) if kind == "tsv" else csv.ParseOptions()
        return csv.open_csv(path, read_options=csv.ReadOptions(block_size=TABLE_BLOCK), parse_options=parse)
    except (pa.ArrowException, UnicodeDecodeError) as error:
        raise CorpusError(f"The input is not a readable {kind.upper()} file: {_first_line(error)}.") from None


def _first_line(error: Exception) -> str:
    """An Arrow error's first line, cut to 200 characters, without any path in it (a word with a "/")."""
    lines = str(error).splitlines()
    words = lines[0].split() if lines else [type(error).__name__]
    return " ".join("(a path)" if "/" in word else word for word in words)[:200]


def _names(names: list[str]) -> str:
    shown = ", ".join(repr(name) for name in names[:20])
    return shown + (f" and {len(names) - 20} more" if len(names) > 20 else "")


def _check_text_type(arrow_type, column: str) -> None:
    import pyarrow as pa

    if not (pa.types.is_string(arrow_type) or pa.types.is_large_string(arrow_type) or pa.types.is_null(arrow_type)):
        raise CorpusError(f"Column {column!r} holds {arrow_type} values, not text: choose the column of sentences.")


def _plan_parquet(path: Path, column: str) -> InputPlan:
    """A chunk per row group of a Parquet file, after checking the column is there and holds text."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        metadata = pq.ParquetFile(path).metadata
        schema = metadata.schema.to_arrow_schema()
    except (pa.ArrowException, OSError) as error:
        raise CorpusError(f"The input is not a readable Parquet file: {_first_line(error)}.") from None
    if column not in schema.names:
        raise CorpusError(f"The input has no column {column!r}; its columns: {_names(schema.names)}.")
    _check_text_type(schema.field(column).type, column)
    chunks, first = [], 0
    for group in range(metadata.num_row_groups):
        count = metadata.row_group(group).num_rows
        chunks.append(Chunk(group, str(path), TABLE, first, first + count, first, column))
        first += count
    plan = InputPlan(tuple(chunks), first, TABLE)
    if not any(True for chunk in plan.chunks for _ in _table_rows(chunk)):
        raise CorpusError("The input has no sentences: every cell of the column is empty.")
    return plan


def read_chunk(chunk: Chunk, batch_size: int) -> Iterator[Batch]:
    """The batches of ``chunk``: runs of ``batch_size`` non-blank sentences (stripped), in input order."""
    pairs = _text_lines(chunk) if chunk.kind == TEXT else _table_rows(chunk)
    ids: list[int] = []
    texts: list[str] = []
    number = 0
    for sentence, text in pairs:
        ids.append(sentence)
        texts.append(text)
        if len(ids) == batch_size:
            yield Batch((chunk.index, number), tuple(ids), tuple(texts))
            ids, texts, number = [], [], number + 1
    if ids:
        yield Batch((chunk.index, number), tuple(ids), tuple(texts))


def _text_lines(chunk: Chunk) -> Iterator[tuple[int, str]]:
    """(line number, stripped text) of each non-blank line of a text chunk."""
    with open(chunk.path, "rb") as handle:
        handle.seek(chunk.start)
        data = handle.read(chunk.stop - chunk.start)
    for number, line in enumerate(data.decode("utf-8").split("\n"), start=chunk.first):
        if text := line.strip():
            yield number, text


def _table_rows(chunk: Chunk) -> Iterator[tuple[int, str]]:
    """(row number, stripped text) of each non-empty cell of a Parquet chunk (one row group), streamed in
    ``CHUNK_ROWS`` rows at a time."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    number = chunk.start
    try:
        for block in pq.ParquetFile(chunk.path).iter_batches(CHUNK_ROWS, row_groups=[chunk.index],
                                                               columns=[chunk.column]):
            for value in block.column(0).to_pylist():
                if value is not None and (text := value.strip()):
                    yield number, text
                number += 1
    except pa.ArrowException as error:
        raise CorpusError(f"The input is not a readable Parquet file: {_first_line(error)}.") from None


def token_priority(sentences: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """(N,) uint64: a fixed pseudo-random priority of each token (splitmix64 of sentence and position, a
    bijection), for a sample that is the same on every runner: the tokens of lowest priority."""
    x = (sentences.astype(np.uint64) << np.uint64(20)) + positions.astype(np.uint64)
    with np.errstate(over="ignore"):
        x = x + np.uint64(0x9E3779B97F4A7C15)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))
