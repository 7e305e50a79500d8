"""`embed rerank`: every record of the inputs scored against one query, then written best first."""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..engine import EmbeddingEngine, ranked
from ..errors import InputError, located
from .readers import ReadOptions, Record, check_inputs, ids_are_text, read_inputs
from .writers import check_target, number_array, output_format, string_array

CHUNK_RECORDS = 1024  # records scored per engine job: reading overlaps scoring, and a bad record fails early


@dataclass(frozen=True)
class RankOptions:
    query: str
    inputs: tuple[str, ...]
    output: str | None = None
    read: ReadOptions = ReadOptions()
    top_n: int | None = None  # None: every record
    overwrite: bool = False


@dataclass(frozen=True)
class RankSummary:
    documents: int
    tokens: int
    seconds: float


def check_ranking(options: RankOptions) -> None:
    """What can be refused before a model loads."""
    if not options.query.strip():
        raise InputError("the query is empty or blank; give the text to rank the documents against", "query")
    if options.top_n is not None and options.top_n < 1:
        raise InputError(f"--top-n must be 1 or more, got {options.top_n}", "top_n")
    check_target(options.output, overwrite=options.overwrite, resume=False)
    check_inputs(options.inputs, options.read)


def rank_file(engine: EmbeddingEngine, options: RankOptions) -> RankSummary:
    """Score every record against the query (a cross-encoder's scores, or an embedding model's cosines) and write
    the best `top_n`, best first, ties in input order; the output appears only when complete."""
    check_ranking(options)
    engine.check_rankable()
    start = time.perf_counter()
    records: list[Record] = []
    jobs: list[tuple[Future, int]] = []
    batch: list[Record] = []
    for record in read_inputs(options.inputs, options.read):
        batch.append(record)
        if len(batch) == CHUNK_RECORDS:
            jobs.append(_submit(engine, options.query, batch))
            records += batch
            batch = []
    if batch:
        jobs.append(_submit(engine, options.query, batch))
        records += batch
    if not records:
        raise InputError("the inputs hold no documents to rank")
    scores = np.concatenate([future.result() for future, _ in jobs])
    order = ranked(scores, options.top_n)
    rows = [{"rank": k + 1, "index": records[i].index, "id": records[i].id, "score": score, "text": records[i].text}
            for k, (i, score) in enumerate(order)]
    _write(rows, options, engine, ids_are_text(options.inputs, options.read))
    return RankSummary(len(records), sum(tokens for _, tokens in jobs), time.perf_counter() - start)


def _submit(engine: EmbeddingEngine, query: str, batch: Sequence[Record]) -> tuple[Future, int]:
    try:
        return engine.submit_scores([query] * len(batch), [r.text for r in batch])
    except InputError as e:  # the tokenizer counts from the batch's start: name the record instead
        raise located(e, [r.where for r in batch]) from e


def _write(rows: list[dict], options: RankOptions, engine: EmbeddingEngine, text_ids: bool) -> None:
    """JSONL on stdout, or the -o file written aside and renamed into place; ids are strings where the id column is
    text, as `embed` writes them."""
    if text_ids:
        rows = [{**row, "id": str(row["id"])} for row in rows]
    if options.output is None:
        sys.stdout.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
        sys.stdout.flush()
        return
    target = Path(options.output)
    fd, staged = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    os.close(fd)
    try:
        if output_format(options.output) == "parquet":
            _write_parquet(rows, staged, text_ids, {"embed.model": engine.model_id, "embed.query": options.query})
        else:
            with open(staged, "w", encoding="utf-8") as f:
                f.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
        os.replace(staged, target)
    finally:
        if os.path.exists(staged):
            os.remove(staged)


def _write_parquet(rows: list[dict], path: str, text_ids: bool, metadata: dict[str, str]) -> None:
    """rank int32, index int64, id (int64, or string), score float32, text."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    def column(name: str, dtype: type | None = None):
        values = [row[name] for row in rows]
        return string_array(values) if dtype is None else number_array(np.asarray(values, dtype))

    table = pa.table({"rank": column("rank", np.int32), "index": column("index", np.int64),
                      "id": column("id") if text_ids else column("id", np.int64), "score": column("score", np.float32),
                      "text": column("text")})
    pq.write_table(table.replace_schema_metadata(metadata), path)
