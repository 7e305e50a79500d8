"""A Ray job's output folder: one Parquet part per input file, renamed into place when complete, and a manifest
that a resume must match. Any pyarrow filesystem: a local folder or a URI."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from embedder.errors import InputError
from embedder.io.writers import parquet_options
from embedder.ray.sources import filesystem

MANIFEST = "_embed_job.json"  # a leading "_" keeps pyarrow's dataset reader away from it


@dataclass(frozen=True)
class OutputDir:
    uri: str

    @property
    def _fs_path(self):
        return filesystem(self.uri)

    def part(self, number: int) -> str:
        return f"part-{number:05d}.parquet"

    def done(self) -> set[int]:
        """Numbers of the parts already complete (only a finished part has its final name)."""
        import pyarrow.fs as pafs

        fs, base = self._fs_path
        if fs.get_file_info(base).type != pafs.FileType.Directory:
            return set()
        names = (f.base_name for f in fs.get_file_info(pafs.FileSelector(base)))
        return {int(n[5:10]) for n in names if n.startswith("part-") and n.endswith(".parquet") and n[5:10].isdigit()}

    def prepare(self, settings: Mapping[str, object], *, resume: bool, overwrite: bool) -> set[int]:
        """Check the folder against the job; returns the parts a resume keeps (none for a fresh job)."""
        import pyarrow.fs as pafs

        fs, base = self._fs_path
        info = fs.get_file_info(base)
        if info.type == pafs.FileType.File:
            raise InputError(f"{self.uri} is a file; --ray writes a folder of Parquet files")
        entries = fs.get_file_info(pafs.FileSelector(base)) if info.type == pafs.FileType.Directory else []
        plain = json.loads(json.dumps(settings))
        if entries and resume:
            stored = self._read_manifest(fs, base)
            if stored is not None and stored != plain:
                raise InputError(f"{self.uri} was started with other inputs or settings; "
                                 "run without --resume (and with --overwrite) to start over")
            if stored is not None:
                for entry in entries:  # what an attempt that died was writing; its file is embedded again
                    if entry.base_name.startswith(".part-") and entry.base_name.endswith(".tmp"):
                        fs.delete_file(entry.path)
                return self.done()
        if entries and not (resume or overwrite):
            raise InputError(f"{self.uri} already exists; pass --overwrite to replace it or --resume to continue")
        for entry in entries:  # overwrite, or a resume with no manifest: only embed's own files go
            if entry.base_name == MANIFEST or entry.base_name.startswith(("part-", ".part-")):
                fs.delete_file(entry.path)
        fs.create_dir(base, recursive=True)
        with fs.open_output_stream(f"{base}/{MANIFEST}") as f:
            f.write(json.dumps(plain, indent=1).encode())
        return set()

    def write_part(self, number: int, schema, tables: Iterable) -> None:
        """Write a part aside, then rename it into place: a part that exists is complete, even after a crash."""
        import pyarrow.parquet as pq

        fs, base = self._fs_path
        staged = f"{base}/.{self.part(number)}.{uuid.uuid4().hex}.tmp"
        try:
            with fs.open_output_stream(staged) as stream, \
                    pq.ParquetWriter(stream, schema, **parquet_options(schema)) as writer:
                for table in tables:
                    writer.write_table(table)
            fs.move(staged, f"{base}/{self.part(number)}")
        except BaseException:
            try:
                fs.delete_file(staged)
            except OSError:
                pass  # never created
            raise

    @staticmethod
    def _read_manifest(fs, base: str) -> object | None:
        try:
            with fs.open_input_stream(f"{base}/{MANIFEST}") as f:
                return json.loads(f.read())
        except (OSError, ValueError):
            return None
