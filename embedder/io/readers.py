"""Any input (text, JSONL, CSV/TSV, Parquet, directories, globs, stdin) as a lazy stream of `Record`s."""

from __future__ import annotations

import contextlib
import csv
import glob
import io
import json
import os
import sys
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, ContextManager

from embedder.errors import InputError, lone_surrogate
from embedder.images import is_image_path

FORMATS = ("txt", "jsonl", "csv", "tsv", "parquet")
_EXTENSIONS = {".txt": "txt", ".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv", ".tsv": "tsv", ".parquet": "parquet"}
_GLOB_CHARS = frozenset("*?[")
_BOM = b"\xef\xbb\xbf"
_PARQUET_BATCH_ROWS = 1024

RecordId = int | str


@dataclass(frozen=True)
class Record:
    """One text (or image) to embed. `index` counts records across all inputs of a run; `where` locates it for
    errors."""

    index: int
    id: RecordId
    text: str
    where: str = ""
    image: bytes | None = None  # an image file's bytes (the record of an image model), with `text` empty

    @classmethod
    def read(cls, index: int, record_id: RecordId | None, content: str | bytes, where: str) -> Record:
        """A record from what `read_source` yields: a text, or an image file's bytes; no id means the number."""
        record_id = index if record_id is None else record_id
        if isinstance(content, bytes):
            return cls(index, record_id, "", where, content)
        return cls(index, record_id, content, where)


@dataclass(frozen=True)
class ReadOptions:
    """How to find text (and ids) in structured inputs; `input_format` forces a format (stdin is txt unless told)."""

    text_field: str = "text"
    id_field: str | None = None
    input_format: str | None = None
    exclude: tuple[str, ...] = ()  # what a folder or glob must not yield: the run's own output and checkpoints


@dataclass(frozen=True)
class Source:
    """One concrete thing to read: a file in some format, stdin, or a file that is a single text."""

    name: str
    kind: str  # a FORMATS entry, "file" for one text per file, or "image" for one image per file


@dataclass
class ReadMeter:
    """How far reading has got: records produced and bytes of line-based files consumed, so a progress bar can
    estimate the total of a text file from its size (`estimated_total`)."""

    records: int = 0
    bytes_read: int = 0

    def estimated_total(self, total_bytes: int) -> int | None:
        if not self.bytes_read:
            return None
        return max(self.records, round(self.records * total_bytes / self.bytes_read))


def read_inputs(inputs: Sequence[str], options: ReadOptions = ReadOptions(),
                meter: ReadMeter | None = None) -> Iterator[Record]:
    """Records of every input in order, one continuous index; nothing is read before it is asked for."""
    index = 0
    for source in expand_sources(inputs or ["-"], options):
        for record_id, content, where in read_source(source, options, meter=meter):
            yield Record.read(index, record_id, content, where)
            index += 1
            if meter is not None:
                meter.records = index


def byte_total(inputs: Sequence[str], options: ReadOptions = ReadOptions()) -> int | None:
    """The bytes of every input when all are line-based files (txt, JSONL, CSV/TSV): what `ReadMeter` counts."""
    total = 0
    for source in expand_sources(inputs or ["-"], options):
        if source.name == "-" or source.kind not in ("txt", "jsonl", "csv", "tsv"):
            return None
        total += os.path.getsize(source.name)
    return total


def ids_are_text(inputs: Sequence[str], options: ReadOptions = ReadOptions()) -> bool:
    """Whether the id column must hold strings, decided up front: integers only when every id is known to be one.

    Record numbers and Parquet integer id columns are integers; paths and JSONL/CSV id fields may not be.
    """
    if options.id_field is None:  # whole files (a folder's, a glob's, an image) are named by their paths
        return any(source.kind in ("file", "image") for source in expand_sources(inputs or ["-"], options))
    for source in expand_sources(inputs or ["-"], options):
        if source.kind != "parquet" or not integer_ids(_open_parquet(source.name).schema_arrow, options.id_field):
            return True
    return False


def integer_ids(schema, id_field: str) -> bool:
    """Whether a Parquet schema's `id_field` holds integers the output's int64 id column takes: not uint64's, whose
    values past 2^63 - 1 are written as text, losslessly."""
    import pyarrow as pa

    id_type = schema.field(id_field).type if id_field in schema.names else None
    return id_type is not None and pa.types.is_integer(id_type) and not pa.types.is_uint64(id_type)


def count_hint(inputs: Sequence[str], options: ReadOptions = ReadOptions()) -> int | None:
    """The number of records when known without reading the data (Parquet footers, file counts), else None."""
    total = 0
    for source in expand_sources(inputs or ["-"], options):
        if source.kind in ("file", "image"):
            total += 1
        elif source.kind == "parquet":
            total += _open_parquet(source.name).metadata.num_rows
        else:
            return None
    return total


def check_inputs(inputs: Sequence[str], options: ReadOptions = ReadOptions()) -> None:
    """Fail on a missing input, an empty glob or an unknown extension before any model is loaded."""
    for _ in expand_sources(inputs or ["-"], options):
        pass


def expand_sources(inputs: Iterable[str], options: ReadOptions) -> Iterator[Source]:
    """Inputs to sources: stdin, files by format, directories and globs to their files in sorted order."""
    for name in inputs:
        if name == "-":
            if options.input_format == "parquet":
                raise InputError("<stdin>: Parquet cannot be read from stdin; pass the file's path")
            yield Source("-", options.input_format or "txt")
        elif os.path.isdir(name):
            yield from (_whole_file(path) for path in _tree_files(name, _real_paths(options.exclude)))
        elif os.path.exists(name):
            yield Source(name, options.input_format or ("image" if is_image_path(name) else format_of(name)))
        elif _GLOB_CHARS & set(name):
            matches = sorted(glob.glob(name, recursive=True))
            if not matches:
                raise InputError(f"{name}: no files match this pattern")
            excluded = _real_paths(options.exclude)
            for match in matches:  # like a folder's files: regular ones only, never the run's own
                if _excluded(match, excluded):
                    continue
                paths = _tree_files(match, excluded) if os.path.isdir(match) else [match]
                yield from (_whole_file(path) for path in paths if os.path.isfile(path))
        else:
            raise InputError(f"{name}: no such file or directory")


def _whole_file(path: str) -> Source:
    """A file of a folder or glob: one record, its text, or its image for an image model."""
    return Source(path, "image" if is_image_path(path) else "file")


def _tree_files(root: str, excluded: frozenset[str] = frozenset()) -> list[str]:
    """Regular files under `root`, sorted, skipping hidden files and folders (.git and the like), anything else
    (a FIFO would block the read forever) and `excluded` paths (real paths); a folder that cannot be read is an
    error, not a silent gap."""
    def unreadable(err: OSError) -> None:
        raise InputError(f"{err.filename}: cannot read this folder ({err.strerror})")

    found = []
    for folder, dirs, files in os.walk(root, onerror=unreadable):
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and not _excluded(os.path.join(folder, d), excluded))
        found.extend(path for path in (os.path.join(folder, f) for f in sorted(files) if not f.startswith("."))
                     if os.path.isfile(path) and not _excluded(path, excluded))
    return found


def _real_paths(paths: tuple[str, ...]) -> frozenset[str]:
    return frozenset(os.path.realpath(p) for p in paths)


def _excluded(path: str, excluded: frozenset[str]) -> bool:
    return bool(excluded) and os.path.realpath(path) in excluded


def format_of(path: str) -> str:
    """The format a file's extension names; an unknown one is an error rather than a guess."""
    fmt = _EXTENSIONS.get(Path(path).suffix.lower())
    if fmt is None:
        known = ", ".join(sorted(_EXTENSIONS))
        raise InputError(f"{path}: unknown input extension (known: {known}; or pass --input-format)")
    return fmt


def read_source(source: Source, options: ReadOptions, data: bytes | None = None,
                meter: ReadMeter | None = None) -> Iterator[tuple[RecordId | None, str | bytes, str]]:
    """(id or None for the record number, text or an image's bytes, location) triples of one source.

    `data` is the source's content when it was fetched elsewhere (Ray Data reads it from any filesystem): the
    records, and the errors naming them, are then the same as for a local file.
    """
    if source.kind == "image":
        yield source.name, read_bytes(source.name) if data is None else data, source.name
        return
    if source.kind == "file":
        yield source.name, _whole_text(read_bytes(source.name) if data is None else data, source.name), source.name
        return
    if source.kind == "parquet":
        yield from _read_parquet(source.name, options, data)
        return
    with _open_binary(source.name) if data is None else io.BytesIO(data) as stream:
        label = "<stdin>" if source.name == "-" else source.name
        if source.kind == "txt":
            yield from ((None, text, f"{label} line {n}") for n, text in _lines(stream, label, meter))
        elif source.kind == "jsonl":
            yield from _read_jsonl(stream, label, options, meter)
        else:
            yield from _read_table(stream, label, "\t" if source.kind == "tsv" else ",", options, meter)


def _open_binary(name: str) -> ContextManager[BinaryIO]:
    """The file, or stdin's bytes, opened for reading; a failure names the file."""
    if name == "-":
        return contextlib.nullcontext(sys.stdin.buffer)
    try:
        return open(name, "rb")
    except OSError as e:
        raise InputError(f"{name}: cannot read ({e.strerror})") from e


def read_bytes(path: str | os.PathLike) -> bytes:
    """A file's bytes; a failure names the file."""
    try:
        return Path(path).read_bytes()
    except OSError as e:
        raise InputError(f"{path}: cannot read ({e.strerror})") from e


def _whole_text(data: bytes, path: str) -> str:
    """A whole file as one text: UTF-8 (a BOM dropped), line endings normalized to \\n."""
    try:
        text = data.removeprefix(_BOM).decode("utf-8")
    except UnicodeDecodeError as e:
        raise InputError(f"{path}: not valid UTF-8 (byte {e.start})") from e
    return text.replace("\r\n", "\n").rstrip()  # a file's final newline is not part of its text


def _decoded(stream: BinaryIO, label: str, meter: ReadMeter | None = None) -> Iterator[tuple[int, str]]:
    """(line number, line with its ending) split on \\n only, as files are; a leading BOM dropped."""
    for number, raw in enumerate(stream, 1):
        if meter is not None:
            meter.bytes_read += len(raw)
        try:
            line = (raw.removeprefix(_BOM) if number == 1 else raw).decode("utf-8")
        except UnicodeDecodeError as e:
            raise InputError(f"{label} line {number}: not valid UTF-8 (byte {e.start})") from e
        yield number, line


def _lines(stream: BinaryIO, label: str, meter: ReadMeter | None = None) -> Iterator[tuple[int, str]]:
    """(line number, line) without its \\n or \\r\\n."""
    for number, line in _decoded(stream, label, meter):
        yield number, line.removesuffix("\n").removesuffix("\r")


def _read_jsonl(stream: BinaryIO, label: str, options: ReadOptions,
                meter: ReadMeter | None = None) -> Iterator[tuple[RecordId | None, str, str]]:
    """One JSON object per line; blank lines are allowed and skipped, as JSONL writers often leave one at the end."""
    for number, line in _lines(stream, label, meter):
        if not line.strip():
            continue
        where = f"{label} line {number}"
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise InputError(f"{where}: invalid JSON ({e.msg} at column {e.colno})") from e
        except ValueError as e:  # an integer of over 4,300 digits
            raise InputError(f"{where}: invalid JSON ({e})") from e
        except RecursionError:
            raise InputError(f"{where}: JSON nested too deeply to read") from None
        if not isinstance(obj, dict):
            raise InputError(f"{where}: expected a JSON object, got {type(obj).__name__}")
        yield _pick(obj, where, options)


def _read_table(
    stream: BinaryIO, label: str, delimiter: str, options: ReadOptions, meter: ReadMeter | None = None
) -> Iterator[tuple[RecordId | None, str, str]]:
    """CSV/TSV with a header row; the text (and id) columns are found by name, never by position."""
    csv.field_size_limit(2**31 - 1)  # whole documents in one cell are normal here; the default is 128 KiB
    # strict: a stray or unclosed quote is an error naming its line, not records silently merged into one
    reader = csv.reader((line for _, line in _decoded(stream, label, meter)), delimiter=delimiter, strict=True)
    try:
        header = next(reader, None)
        if header is None:
            return
        _require_columns(header, label, options)
        for row in reader:
            if not row:
                continue
            where = f"{label} line {reader.line_num}"
            if len(row) != len(header):
                raise InputError(f"{where}: {len(row)} fields, but the header has {len(header)}")
            yield _pick(dict(zip(header, row)), where, options)
    except csv.Error as e:
        raise InputError(f"{label} line {reader.line_num}: {e}") from e


def _read_parquet(path: str, options: ReadOptions,
                  data: bytes | None = None) -> Iterator[tuple[RecordId | None, str, str]]:
    """Only the needed columns, a batch of rows at a time: a large file is never read whole."""
    parquet = _open_parquet(path, data)
    _require_columns(parquet.schema_arrow.names, path, options)
    columns = [options.text_field] + ([options.id_field] if options.id_field else [])
    row = 0
    for batch in parquet.iter_batches(batch_size=_PARQUET_BATCH_ROWS, columns=columns):
        for obj in batch.to_pylist():
            yield _pick(obj, f"{path} row {row}", options)
            row += 1


def _open_parquet(path: str, data: bytes | None = None):
    """A Parquet file's reader; an unreadable or non-Parquet file is an InputError naming it."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        return pq.ParquetFile(path if data is None else pa.BufferReader(data))
    except (OSError, pa.ArrowException) as e:
        raise InputError(f"{path}: not a readable Parquet file ({e})") from e


def _require_columns(names: Sequence[str], label: str, options: ReadOptions) -> None:
    """A missing column is reported once, with the columns that do exist; a column named twice is ambiguous."""
    for field in (options.text_field, options.id_field):
        if field is not None and list(names).count(field) > 1:
            raise InputError(f"{label}: the header names column {field!r} twice; which one holds it is ambiguous")
        if field is not None and field not in names:
            raise InputError(f"{label}: no column {field!r} (columns: {', '.join(map(str, names))}); see --text-field")


def _pick(obj: dict, where: str, options: ReadOptions) -> tuple[RecordId | None, str, str]:
    """The text and id of one structured record, checked: text must be a string, an id a string or integer."""
    if options.text_field not in obj:
        raise InputError(f"{where}: no field {options.text_field!r} (see --text-field)")
    text = obj[options.text_field]
    if not isinstance(text, str):
        raise InputError(f"{where}: field {options.text_field!r} is {_kind(text)}, not a string")
    if (at := lone_surrogate(text)) is not None:
        raise InputError(f"{where}: field {options.text_field!r} holds a lone UTF-16 surrogate at character {at}, "
                         "which is not text")
    if options.id_field is None:
        return None, text, where
    if options.id_field not in obj:
        raise InputError(f"{where}: no field {options.id_field!r} (see --id-field)")
    record_id = obj[options.id_field]
    if isinstance(record_id, bool) or not isinstance(record_id, (str, int)):
        raise InputError(f"{where}: field {options.id_field!r} is {_kind(record_id)}, not a string or integer")
    return record_id, text, where


def _kind(value: object) -> str:
    """A JSON-ish name for a value's type, for error messages."""
    return "null" if value is None else type(value).__name__
