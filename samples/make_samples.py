"""Regenerate the sample inputs derived from docs.jsonl (the one hand-written source).

    .venv/bin/python samples/make_samples.py

Writes docs.txt (one text per line), docs.csv, docs.tsv and docs.parquet, all with the
same records in the same order, so every input format of `embed` can be demonstrated on
the same data and its outputs compared. The notes/ directory is hand-written, not generated.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

HERE = Path(__file__).resolve().parent
COLUMNS = ("id", "topic", "text")


def load_docs() -> list[dict[str, str]]:
    """Read docs.jsonl, refusing texts that would break the line-based or tab-separated files."""
    rows = [json.loads(line) for line in (HERE / "docs.jsonl").read_text("utf-8").splitlines() if line]
    for row in rows:
        if not row["text"] or any(ch in row["text"] for ch in "\t\r\n"):
            raise SystemExit(f"{row['id']}: sample texts must be non-empty single lines without tabs")
    return rows


def write_delimited(rows: list[dict[str, str]], name: str, delimiter: str) -> None:
    with open(HERE / name, "w", encoding="utf-8", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=COLUMNS, delimiter=delimiter, lineterminator="\n")
        writer.writeheader()
        writer.writerows({key: row[key] for key in COLUMNS} for row in rows)


def main() -> None:
    rows = load_docs()
    (HERE / "docs.txt").write_text("".join(row["text"] + "\n" for row in rows), encoding="utf-8")
    write_delimited(rows, "docs.csv", ",")
    write_delimited(rows, "docs.tsv", "\t")
    table = pa.table({key: pa.array([row[key] for row in rows], pa.string()) for key in COLUMNS})
    pq.write_table(table, HERE / "docs.parquet")
    print(f"{len(rows)} records -> docs.txt, docs.csv, docs.tsv, docs.parquet")


if __name__ == "__main__":
    main()
