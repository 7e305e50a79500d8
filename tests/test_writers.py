"""Writers: schema and metadata, one row group per chunk, nothing at the target until done, exact resume."""

import json
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from embedder.errors import InputError
from embedder.io.writers import Chunk, OutputSpec, Writer, check_target, partial_dir

DIM = 4


def chunk(start: int, rows: int, texts: bool = False) -> Chunk:
    vectors = np.arange(start * DIM, (start + rows) * DIM, dtype=np.float32).reshape(rows, DIM) / 7
    return Chunk(
        ids=list(range(start, start + rows)),
        vectors=vectors,
        tokens=np.arange(start, start + rows, dtype=np.int32) + 2,
        texts=[f"t{i} é🙂" for i in range(start, start + rows)] if texts else None,
        next_index=start + rows,
    )


def spec(path, **kw) -> OutputSpec:
    return OutputSpec(path=str(path), dim=DIM, metadata={"model": "m", "dim": "4"}, settings={"job": [1]}, **kw)


def write_all(path, chunks, **kw) -> None:
    writer = Writer(spec(path, **kw))
    for c in chunks:
        writer.write(c)
    writer.finish()


def test_parquet_schema_metadata_and_row_groups(tmp_path):
    out = tmp_path / "out.parquet"
    write_all(out, [chunk(0, 3, True), chunk(3, 2, True)], include_text=True)
    table = pq.read_table(out)
    assert table.schema.field("embedding").type == pa.list_(pa.float32(), DIM)
    assert table.schema.field("tokens").type == pa.int32() and table.schema.field("id").type == pa.int64()
    assert table.column_names == ["id", "embedding", "tokens", "text"]
    assert table["id"].to_pylist() == [0, 1, 2, 3, 4] and table["text"][4].as_py() == "t4 é🙂"
    expected = np.concatenate([chunk(0, 3).vectors, chunk(3, 2).vectors])
    np.testing.assert_array_equal(np.stack(table["embedding"].to_numpy(zero_copy_only=False)), expected)
    assert table.schema.metadata[b"model"] == b"m"
    assert pq.ParquetFile(out).metadata.num_row_groups == 2
    assert not partial_dir(str(out)).exists()


def test_float16_and_text_ids(tmp_path):
    out = tmp_path / "out.parquet"
    write_all(out, [chunk(0, 2)], precision="float16", text_ids=True)
    table = pq.read_table(out)
    assert table.schema.field("embedding").type == pa.list_(pa.float16(), DIM)
    assert table["id"].to_pylist() == ["0", "1"]


def test_jsonl_rows(tmp_path):
    out = tmp_path / "out.jsonl"
    write_all(out, [chunk(0, 2, True), chunk(2, 1, True)], include_text=True)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["id"] for r in rows] == [0, 1, 2] and rows[2]["tokens"] == 4 and rows[0]["text"] == "t0 é🙂"
    np.testing.assert_allclose(rows[1]["embedding"], chunk(1, 1).vectors[0], rtol=1e-7)


def test_empty_chunk_moves_only_the_checkpoint(tmp_path):
    out = tmp_path / "out.parquet"
    empty = Chunk(ids=[], vectors=np.zeros((0, DIM), np.float32), tokens=np.zeros(0, np.int32), texts=None,
                  next_index=5)
    write_all(out, [empty, chunk(5, 1)])
    assert pq.read_table(out)["id"].to_pylist() == [5]
    write_all(tmp_path / "none.parquet", [])
    assert pq.read_table(tmp_path / "none.parquet").num_rows == 0


@pytest.mark.parametrize("name", ["out.parquet", "out.jsonl"])
def test_resume_after_an_interrupted_chunk_gives_the_same_file(tmp_path, name):
    whole = tmp_path / "whole" / name
    whole.parent.mkdir()
    write_all(whole, [chunk(0, 3), chunk(3, 3), chunk(6, 2)])

    out = tmp_path / name
    writer = Writer(spec(out))
    writer.write(chunk(0, 3))
    state = (partial_dir(str(out)) / "state.json").read_text()
    writer.write(chunk(3, 3))
    (partial_dir(str(out)) / "state.json").write_text(state)  # as if killed before the second checkpoint
    assert not out.exists()

    resumed = Writer(spec(out), resume=True)
    assert (resumed.start_index, resumed.rows) == (3, 3)
    resumed.write(chunk(3, 3))
    resumed.write(chunk(6, 2))
    resumed.finish()
    if name.endswith(".jsonl"):
        assert out.read_bytes() == whole.read_bytes()
    else:
        assert pq.read_table(out).equals(pq.read_table(whole))
        assert pq.ParquetFile(out).metadata.num_row_groups == 3


def test_resume_refuses_other_settings_and_fresh_run_starts_over(tmp_path):
    out = tmp_path / "out.parquet"
    Writer(spec(out)).write(chunk(0, 2))
    with pytest.raises(InputError, match="other inputs or settings"):
        Writer(OutputSpec(path=str(out), dim=DIM, settings={"job": [2]}), resume=True)
    assert Writer(spec(out)).start_index == 0


def test_discard_leaves_nothing(tmp_path):
    out = tmp_path / "out.jsonl"
    writer = Writer(spec(out))
    writer.write(chunk(0, 1))
    writer.discard()
    assert list(tmp_path.iterdir()) == []


def test_check_target(tmp_path):
    out = tmp_path / "out.parquet"
    out.write_bytes(b"old")
    with pytest.raises(InputError, match="already exists; pass --overwrite"):
        check_target(str(out), overwrite=False, resume=False)
    check_target(str(out), overwrite=True, resume=False)
    with pytest.raises(InputError, match="unknown output extension"):
        check_target(str(tmp_path / "out.csv"), overwrite=False, resume=False)
    with pytest.raises(InputError, match="--resume needs an output file"):
        check_target(None, overwrite=False, resume=True)


def test_writing_parquet_does_not_import_pandas(tmp_path):
    """pandas costs ~0.2 s of every run's start, and embed never needs it."""
    code = (
        "import sys, numpy as np\n"
        "from embedder.io.writers import Chunk, OutputSpec, Writer\n"
        f"w = Writer(OutputSpec(path={str(tmp_path / 'o.parquet')!r}, dim=2, metadata={{}}, settings={{}}, "
        "include_text=True, text_ids=True))\n"
        "w.write(Chunk(ids=['a', 'b'], vectors=np.ones((2, 2), np.float32), tokens=np.array([1, 2], np.int32), "
        "texts=['x', 'é'], next_index=2))\n"
        "w.finish()\n"
        "assert 'pandas' not in sys.modules, 'pandas was imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
    table = pq.read_table(tmp_path / "o.parquet")
    assert table.column("id").to_pylist() == ["a", "b"] and table.column("text").to_pylist() == ["x", "é"]
