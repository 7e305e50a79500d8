"""A Ray job's inputs: local paths and filesystem URIs as numbered files, each knowing its first record's number."""

from __future__ import annotations

import os
from dataclasses import dataclass, replace

from embedder.errors import InputError
from embedder.io.readers import ReadOptions, Source, expand_sources, format_of


@dataclass(frozen=True)
class InputFile:
    """One input file of the job. `source.name` is what the single-machine run calls it (ids of one-text-per-file
    inputs, error messages); `uri` is what Ray Data reads; `number` names the output part written for it."""

    source: Source
    uri: str
    number: int
    size: int
    mtime_ns: int | None
    first_index: int | None = None  # record number of its first record, once the files before it are counted


def is_uri(name: str) -> bool:
    return "://" in name


def expand_inputs(inputs: tuple[str, ...], options: ReadOptions) -> list[InputFile]:
    """Every input as files in order: local directories and globs as a single-machine run expands them, URIs
    through pyarrow's filesystems (s3://, gs://, hdfs://, file://...)."""
    if not inputs or "-" in inputs:
        raise InputError("--ray reads files or URIs, not stdin; pass the input's path")
    files: list[InputFile] = []
    for name in inputs:
        for source, uri, size, mtime_ns in (_remote(name, options) if is_uri(name) else _local(name, options)):
            files.append(InputFile(source, uri, len(files), size, mtime_ns))
    seen: set[str] = set()
    for f in files:  # Ray Data reads each path once, so each must name one output part
        if f.uri in seen:
            raise InputError(f"{f.source.name}: given twice; --ray embeds each input file once")
        seen.add(f.uri)
    return files


def _local(name: str, options: ReadOptions):
    for source in expand_sources([name], options):
        st = os.stat(source.name)
        yield source, os.path.abspath(source.name), st.st_size, st.st_mtime_ns


def _remote(name: str, options: ReadOptions):
    """A URI of a file, or of a folder (one text per file, sorted, hidden entries left out, as locally)."""
    import pyarrow.fs as pafs

    scheme = name.split("://", 1)[0]
    try:
        fs, path = pafs.FileSystem.from_uri(name)
        info = fs.get_file_info(path)
        if info.type == pafs.FileType.Directory:
            found = fs.get_file_info(pafs.FileSelector(path, recursive=True))
            entries = sorted((f for f in found if f.type == pafs.FileType.File), key=lambda f: f.path)
            for f in entries:
                relative = f.path[len(path.rstrip("/")) + 1:]
                if not any(part.startswith(".") for part in relative.split("/")):
                    uri = f"{scheme}://{f.path}"
                    yield Source(uri, "file"), uri, f.size, f.mtime_ns
            return
    except (OSError, ValueError) as e:  # pyarrow's errors for bad URIs, unknown schemes, unreachable stores
        raise InputError(f"{name}: cannot open ({e})") from e
    if info.type != pafs.FileType.File:
        raise InputError(f"{name}: no such file or directory")
    yield Source(name, options.input_format or format_of(name)), name, info.size, info.mtime_ns


def filesystem(uri: str):
    """(pyarrow filesystem, path in it) for a URI or a local path."""
    import pyarrow.fs as pafs

    return pafs.FileSystem.from_uri(uri) if is_uri(uri) else (pafs.LocalFileSystem(), os.path.abspath(uri))


def ray_path(uri: str) -> str:
    """The path Ray Data reports in its `path` column for a file read from `uri`: no scheme."""
    return uri.split("://", 1)[1] if is_uri(uri) else uri


def parquet_footer(file: InputFile):
    """A Parquet file's metadata (row count, schema), read from its footer only."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        fs, path = filesystem(file.uri)
        with fs.open_input_file(path) as f:
            return pq.ParquetFile(f).metadata
    except (OSError, pa.ArrowException) as e:
        raise InputError(f"{file.source.name}: not a readable Parquet file ({e})") from e


def numbered(files: list[InputFile], counts: dict[int, int]) -> list[InputFile]:
    """The files with the record number of each one's first record, from every file's record count."""
    out, index = [], 0
    for f in files:
        out.append(replace(f, first_index=index))
        index += counts[f.number]
    return out
