"""Embedded chunks to Parquet or JSONL: checkpointed beside the target, renamed into place only when complete."""

from __future__ import annotations

import json
import os
import shutil
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from embedder.errors import InputError
from embedder.io.readers import RecordId
from embedder.quantize import quantize, sparse_rows, stored_dtype, stored_width

OUTPUT_FORMATS = {".parquet": "parquet", ".jsonl": "jsonl", ".ndjson": "jsonl"}
_STATE = "state.json"
_JSONL_DATA = "data.jsonl"


@dataclass(frozen=True)
class Chunk:
    """Consecutive output rows; `next_index` is the first record not yet covered, the point a resume continues from."""

    ids: Sequence[RecordId]
    vectors: np.ndarray | list[np.ndarray]  # (rows, dim) float32, stored at the spec's precision; multi-vector: a
    # (vectors, dim) array per row
    tokens: np.ndarray  # (rows,) int32: tokens embedded, after truncation, no padding
    texts: Sequence[str] | None
    next_index: int
    digest: str = ""  # `RecordDigest` of the records before `next_index`, stored with the checkpoint


@dataclass(frozen=True)
class OutputSpec:
    """Where and how to write; `settings` must match for a resume, `metadata` goes into Parquet's key-value footer."""

    path: str | None  # None: JSONL on stdout
    dim: int  # of the float vectors, before `precision` packs them
    include_text: bool = False
    text_ids: bool = False
    metadata: Mapping[str, str] = field(default_factory=dict)
    settings: Mapping[str, object] = field(default_factory=dict)
    precision: str = "float32"  # `quantize.PRECISIONS`: how the vectors are stored
    ranges: Any = None  # int8/uint8: the (2, dim) calibration ranges
    sparse: bool = False  # a SPLADE model's: each row's nonzero `indices` and their `values`, not `embedding`
    labels: tuple[str, ...] = ()  # a classifier's: each row's best `label`, its `score` and every label's `scores`
    multi_vector: bool = False  # a late-interaction model's: `embedding` holds a vector per token, not one


def output_format(path: str) -> str:
    """`parquet` or `jsonl` from the extension; anything else is refused before any work is done."""
    fmt = OUTPUT_FORMATS.get(Path(path).suffix.lower())
    if fmt is None:
        raise InputError(f"{path}: unknown output extension (use .parquet or .jsonl)")
    return fmt


def partial_dir(path: str) -> Path:
    """The folder beside the target where an unfinished job keeps its checkpoints."""
    target = Path(path)
    return target.with_name(target.name + ".partial")


def check_target(path: str | None, *, overwrite: bool, resume: bool) -> None:
    """Refuse early (before loading a model) to clobber an existing output or to resume into stdout."""
    if path is None:
        if resume:
            raise InputError("--resume needs an output file (-o); stdout cannot be resumed")
        return
    output_format(path)
    if os.path.isdir(path):
        raise InputError(f"{path} is a folder; name the output file to write")
    if os.path.exists(path) and not (overwrite or resume):
        raise InputError(f"{path} already exists; pass --overwrite to replace it")
    if resume and os.path.exists(path) and not overwrite and not partial_dir(path).exists():
        raise InputError(f"{path} is already complete: there is nothing to resume (pass --overwrite to make it "
                         "again)")


class Writer:
    """Appends chunks in order; `start_index` says where a resumed job picks up (0 for a fresh one)."""

    def __init__(self, spec: OutputSpec, *, resume: bool = False) -> None:
        self.spec = spec
        self.format = "jsonl" if spec.path is None else output_format(spec.path)
        self.rows = 0
        self.start_index = 0
        self.digest = ""  # of the records before `start_index`
        self._parts = 0
        self._bytes = 0
        self._dir = None if spec.path is None else partial_dir(spec.path)
        if self._dir is not None:
            self._open_dir(resume)

    def write(self, chunk: Chunk) -> None:
        """Write one chunk (one Parquet row group), then record the checkpoint that covers it."""
        if not chunk.ids:
            pass  # every record of the chunk was skipped; only the checkpoint moves
        elif self._dir is None:
            sys.stdout.buffer.write(_jsonl(chunk, self.spec))
            sys.stdout.buffer.flush()
        elif self.format == "parquet":
            import pyarrow.parquet as pq

            table = arrow_table(chunk, self.spec)
            pq.write_table(table, self._dir / f"part-{self._parts:06d}.parquet", **parquet_options(table.schema))
            self._parts += 1
        else:
            with open(self._dir / _JSONL_DATA, "ab") as f:
                self._bytes += f.write(_jsonl(chunk, self.spec))
        self.rows += len(chunk.ids)
        self.start_index, self.digest = chunk.next_index, chunk.digest
        if self._dir is not None:
            self._save_state()

    def finish(self) -> None:
        """Assemble the final file aside, rename it over the target, and drop the checkpoints."""
        if self._dir is None:
            return
        target = Path(self.spec.path)
        if self.format == "jsonl":
            (self._dir / _JSONL_DATA).touch()
            os.replace(self._dir / _JSONL_DATA, target)
        else:
            staged = self._dir / "final.parquet"
            self._merge_parts(staged)
            os.replace(staged, target)
        shutil.rmtree(self._dir)

    @property
    def checkpoint(self) -> str:
        """Where the checkpoint is kept, to name it in messages."""
        return str(self._dir)

    def discard(self) -> None:
        """Forget a job that wrote nothing: nothing is left beside the target."""
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)

    def _open_dir(self, resume: bool) -> None:
        """Continue from a matching checkpoint when resuming; otherwise start from an empty folder."""
        state = _load_state(self._dir) if resume else None
        if state is not None and state["settings"] != _plain(self.spec.settings):
            raise InputError(
                f"{self._dir} was started with other inputs or settings; run without --resume to start over"
            )
        if state is None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir.mkdir(parents=True)
            self._save_state()
            return
        self.rows, self.start_index, self.digest = state["rows"], state["next_index"], state.get("digest", "")
        self._parts, self._bytes = state["parts"], state["bytes"]
        self._check_checkpoints()
        for stray in self._dir.glob("part-*.parquet"):
            if int(stray.stem.removeprefix("part-")) >= self._parts:
                stray.unlink()  # written after the last checkpoint, maybe half
        if self.format == "jsonl":
            with open(self._dir / _JSONL_DATA, "ab") as f:
                f.truncate(self._bytes)

    def _check_checkpoints(self) -> None:
        """Refuse a checkpoint whose files were damaged since (a part missing or cut short, the JSONL shorter than
        recorded) before any work, rather than fail, or pad with zeros, at the end."""
        damaged = f"{self._dir} is damaged ({{}}); run without --resume to start over"
        if self.format == "jsonl":
            data = self._dir / _JSONL_DATA
            size = data.stat().st_size if data.exists() else 0
            if size < self._bytes:
                raise InputError(damaged.format(f"{_JSONL_DATA} holds {size:,} bytes of the {self._bytes:,} written"))
            return
        import pyarrow as pa
        import pyarrow.parquet as pq

        rows = 0
        for k in range(self._parts):
            part = self._dir / f"part-{k:06d}.parquet"
            try:
                rows += pq.read_metadata(part).num_rows
            except (OSError, pa.ArrowException) as e:
                raise InputError(damaged.format(f"{part.name}: {e}")) from None
        if rows != self.rows:
            raise InputError(damaged.format(f"its parts hold {rows:,} rows of the {self.rows:,} written"))

    def _save_state(self) -> None:
        """Replace the checkpoint atomically, so an interrupt never leaves one that is half written."""
        state = {
            "rows": self.rows,
            "next_index": self.start_index,
            "digest": self.digest,
            "parts": self._parts,
            "bytes": self._bytes,
            "settings": _plain(self.spec.settings),
        }
        staged = self._dir / (_STATE + ".tmp")
        staged.write_text(json.dumps(state, indent=1))
        os.replace(staged, self._dir / _STATE)

    def _merge_parts(self, staged: Path) -> None:
        """One row group per part, in order; parts are read one at a time, so memory stays at one chunk."""
        import pyarrow.parquet as pq

        schema = arrow_schema(self.spec)
        with pq.ParquetWriter(staged, schema, **parquet_options(schema)) as out:
            for k in range(self._parts):
                with pq.ParquetFile(self._dir / f"part-{k:06d}.parquet") as part:  # read_table imports pandas
                    out.write_table(part.read())


def _load_state(folder: Path) -> dict | None:
    """The last checkpoint, or None when there is none to resume from."""
    try:
        return json.loads((folder / _STATE).read_text())
    except (OSError, ValueError):
        return None


def _plain(settings: Mapping[str, object]) -> object:
    """Settings as JSON would give them back (tuples as lists), so a stored copy compares equal."""
    return json.loads(json.dumps(settings))


def parquet_options(schema) -> dict:
    """Dictionary encoding for every column but the vectors: their values are all distinct, so a dictionary is
    pure cost (hashing every float, twice with the merge: the largest cost outside the model in a py-spy profile
    of a sentences job; 2% off the whole process, 3 alternating pairs)."""
    return {"use_dictionary": [name for name in schema.names if name != "embedding"]}


def arrow_schema(spec: OutputSpec):
    """id, embedding fixed_size_list<stored type>[stored width] (a sparse model's: indices list<int32> and values
    list<float32>; a classifier's: label string, score float32 and scores fixed_size_list<float32>[labels]; a
    multi-vector model's embedding: list<fixed_size_list<float32>[dim]>), tokens int32, optional text; the metadata
    rides on the schema."""
    import pyarrow as pa

    stored = pa.from_numpy_dtype(np.dtype(stored_dtype(spec.precision)))
    if spec.sparse:
        vectors = [pa.field("indices", pa.list_(pa.int32())), pa.field("values", pa.list_(pa.float32()))]
    elif spec.labels:
        vectors = [pa.field("label", pa.string()), pa.field("score", pa.float32()),
                   pa.field("scores", pa.list_(pa.float32(), len(spec.labels)))]
    elif spec.multi_vector:
        vectors = [pa.field("embedding", pa.list_(pa.list_(pa.float32(), spec.dim)))]
    else:
        vectors = [pa.field("embedding", pa.list_(stored, stored_width(spec.dim, spec.precision)))]
    fields = [
        pa.field("id", pa.string() if spec.text_ids else pa.int64()),
        *vectors,
        pa.field("tokens", pa.int32()),
    ]
    if spec.include_text:
        fields.append(pa.field("text", pa.string()))
    return pa.schema(fields, metadata={str(k): str(v) for k, v in spec.metadata.items()})


def arrow_table(chunk: Chunk, spec: OutputSpec):
    """One chunk as an Arrow table in the output schema; ids become strings when the column is text."""
    import pyarrow as pa

    schema = arrow_schema(spec)
    columns = [
        string_array([str(i) for i in chunk.ids]) if spec.text_ids else number_array(np.asarray(chunk.ids, np.int64)),
        *output_arrays(chunk.vectors, chunk.tokens, spec),
        number_array(np.asarray(chunk.tokens, np.int32)),
    ]
    if spec.include_text:
        columns.append(string_array(chunk.texts))
    return pa.Table.from_arrays(columns, schema=schema)


# Arrow arrays straight from buffers: `pa.array` first checks whether its input is a pandas object, which
# imports pandas where it is installed: ~0.2 s of every run, a third of a small job's start.
def number_array(values: np.ndarray):
    import pyarrow as pa

    values = np.ascontiguousarray(values)
    return pa.Array.from_buffers(pa.from_numpy_dtype(values.dtype), len(values), [None, pa.py_buffer(values)])


def output_arrays(vectors: np.ndarray | list[np.ndarray], tokens: np.ndarray, spec: OutputSpec) -> list:
    """The columns the engine's output fills, as `arrow_schema` names them for the model's kind: `embedding` at the
    spec's precision; a SPLADE model's `indices` and `values`; a classifier's `label`, `score` and `scores`; a
    multi-vector model's `embedding`, a list of vectors per row."""
    import pyarrow as pa

    if spec.multi_vector:
        offsets = number_array(np.cumsum([0, *map(len, vectors)], dtype=np.int32))
        flat = np.concatenate([np.zeros((0, spec.dim), np.float32), *vectors]).reshape(-1)
        return [pa.ListArray.from_arrays(offsets, pa.FixedSizeListArray.from_arrays(number_array(flat), spec.dim))]
    if spec.sparse:
        rows = sparse_rows(vectors)
        offsets = number_array(np.cumsum([0, *(len(indices) for indices, _ in rows)], dtype=np.int32))
        parts = ([np.zeros(0, np.int32), *(i for i, _ in rows)], [np.zeros(0, np.float32), *(v for _, v in rows)])
        return [pa.ListArray.from_arrays(offsets, number_array(np.concatenate(part))) for part in parts]
    if spec.labels:
        labels, scores = best_labels(vectors, tokens, spec.labels)
        return [string_array(labels), number_array(scores),
                pa.FixedSizeListArray.from_arrays(number_array(vectors.reshape(-1)), len(spec.labels))]
    stored = quantize(vectors, spec.precision, spec.ranges)
    return [pa.FixedSizeListArray.from_arrays(number_array(stored.reshape(-1)), stored.shape[1])]


def best_labels(scores: np.ndarray, tokens: np.ndarray, names: Sequence[str]) -> tuple[list[str], np.ndarray]:
    """Each row's most probable label and its score; "" and 0 for a row with no tokens (`--on-empty zero`)."""
    best = scores.argmax(axis=1)
    kept = np.asarray(tokens) > 0
    return ([names[b] if k else "" for b, k in zip(best.tolist(), kept)],
            np.where(kept, scores[np.arange(len(scores)), best], 0).astype(np.float32))


def string_array(values: Sequence[str]):
    import pyarrow as pa

    encoded = [v.encode() for v in values]
    offsets = np.concatenate([[0], np.cumsum([len(e) for e in encoded], dtype=np.int64)])
    if offsets[-1] > np.iinfo(np.int32).max:
        raise InputError(f"{offsets[-1]:,} bytes of text in one chunk: more than a Parquet string column holds; "
                         "use a smaller --chunk-rows")
    offsets = offsets.astype(np.int32)
    buffers = [None, pa.py_buffer(offsets), pa.py_buffer(b"".join(encoded))]
    return pa.Array.from_buffers(pa.string(), len(encoded), buffers)


def _jsonl(chunk: Chunk, spec: OutputSpec) -> bytes:
    """One JSON object per row: {"id", "embedding", "tokens"} (a sparse model's "indices" and "values", a
    classifier's "label", "score" and "scores" for "embedding") (+ "text"), UTF-8, newline-terminated."""
    tokens = chunk.tokens.tolist()
    if spec.sparse:
        vectors = [{"indices": i.tolist(), "values": v.tolist()} for i, v in sparse_rows(chunk.vectors)]
    elif spec.labels:
        labels, scores = best_labels(chunk.vectors, chunk.tokens, spec.labels)
        vectors = [{"label": label, "score": score, "scores": row}
                   for label, score, row in zip(labels, scores.tolist(), chunk.vectors.tolist())]
    elif spec.multi_vector:
        vectors = [{"embedding": v.tolist()} for v in chunk.vectors]
    else:
        vectors = [{"embedding": v} for v in quantize(chunk.vectors, spec.precision, spec.ranges).tolist()]
    lines = []
    for row, record_id in enumerate(chunk.ids):
        obj = {"id": str(record_id) if spec.text_ids else record_id, **vectors[row], "tokens": tokens[row]}
        if spec.include_text:
            obj["text"] = chunk.texts[row]
        lines.append(json.dumps(obj, ensure_ascii=False))
    return ("\n".join(lines) + "\n").encode() if lines else b""
