"""A running hash of the records a job has read, so a resume can prove it is reading the same records again.

A checkpoint stores the hash of the records it covers. A resume reads that many records again, hashes them the same
way and compares: any change before the checkpoint (an edit, a file added, removed or renamed in a glob, different
records on stdin) is refused, and any change after it is welcome: a record fixed after a bad-input error, a file
appended to a folder. Only the records count, not the files' sizes or times, so touching a file voids nothing.
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Iterator

from embedder.errors import InputError
from embedder.io.readers import Record


class RecordDigest:
    """blake2b over each record's id, text and image bytes, each length-prefixed, in input order."""

    def __init__(self) -> None:
        self._hash = hashlib.blake2b(digest_size=16)
        self.records = 0

    def add(self, record: Record) -> None:
        for part in (repr(record.id).encode(), record.text.encode("utf-8", "surrogatepass"), record.image or b""):
            self._hash.update(len(part).to_bytes(8, "little"))
            self._hash.update(part)
        self.records += 1

    def hexdigest(self) -> str:
        return self._hash.hexdigest()

    def hashed(self, records: Iterator[Record]) -> Iterator[Record]:
        """`records`, each added as it passes."""
        for record in records:
            self.add(record)
            yield record

    def resume(self, records: Iterator[Record], start: int, expected: str, where: str) -> Iterator[Record]:
        """Read and hash the first `start` records now, refusing the resume unless they hash to `expected` (the
        checkpoint at `where`); then the records after them, hashed as they pass."""
        if start and not expected:
            raise InputError(f"{where} was written by an older embed, which kept no digest of its records to check "
                             "them by; run without --resume to start over")
        for record in itertools.islice(records, start):
            self.add(record)
        if self.records < start:
            raise InputError(f"the input now holds {self.records:,} records, fewer than the {start:,} that {where} "
                             "covers; run without --resume to start over")
        if start and self.hexdigest() != expected:
            raise InputError(f"the input's first {start:,} records changed since {where} was written; run without "
                             "--resume to start over")
        return self.hashed(records)
