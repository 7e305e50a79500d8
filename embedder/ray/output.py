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
        return _part_numbers(fs.get_file_info(pafs.FileSelector(base)))

    def check(self, *, resume: bool, overwrite: bool) -> None:
        """Refuse, before any work, a file in the folder's place or a folder of embed's that the job would replace
        without being told to."""
        import pyarrow.fs as pafs

        fs, base = self._fs_path
        info = fs.get_file_info(base)
        if info.type == pafs.FileType.File:
            raise InputError(f"{self.uri} is a file; --ray writes a folder of Parquet files")
        if not (resume or overwrite) and info.type == pafs.FileType.Directory \
                and fs.get_file_info(pafs.FileSelector(base)):
            raise InputError(f"{self.uri} already exists; pass --overwrite to replace it or --resume to continue")

    def prepare(self, job: Mapping[str, object], inputs: list[list], *, resume: bool) -> set[int]:
        """Make the folder ready for the job and return the parts a resume keeps: those whose input file is the
        same as when its part was written (name, size, time and first record number), under the same settings."""
        import pyarrow.fs as pafs

        fs, base = self._fs_path
        info = fs.get_file_info(base)
        entries = fs.get_file_info(pafs.FileSelector(base)) if info.type == pafs.FileType.Directory else []
        manifest = json.loads(json.dumps({"job": job, "inputs": inputs}))
        stored = self._read_manifest(fs, base) if entries and resume else None
        if stored is not None and stored.get("job") != manifest["job"]:
            raise InputError(f"{self.uri} was started with other inputs or settings; "
                             "run without --resume (and with --overwrite) to start over")
        before = stored.get("inputs", []) if stored is not None else []
        keep = {k for k in _part_numbers(entries)
                if k < min(len(before), len(inputs)) and before[k] == manifest["inputs"][k]}
        for entry in entries:  # what a dead attempt was writing, parts of changed inputs, or an overwritten job
            name = entry.base_name
            own = name == MANIFEST or name.startswith(("part-", ".part-"))
            if own and _part_number(name) not in keep:
                fs.delete_file(entry.path)
        fs.create_dir(base, recursive=True)
        with fs.open_output_stream(f"{base}/{MANIFEST}") as f:
            f.write(json.dumps(manifest, indent=1).encode())
        return keep

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


def _part_numbers(entries: Iterable) -> set[int]:
    """The input file numbers of the complete parts among a folder listing's entries."""
    numbers = (_part_number(entry.base_name) for entry in entries)
    return {n for n in numbers if n is not None}


def _part_number(name: str) -> int | None:
    """The input file number of a complete part's name, `part-NNNNN.parquet`; None for any other name."""
    digits = name.removeprefix("part-").removesuffix(".parquet")
    return int(digits) if name.startswith("part-") and name.endswith(".parquet") and digits.isdigit() else None
