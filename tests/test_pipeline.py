"""The pipeline in-process with the real engine (conftest's all-MiniLM-L6-v2): order, vectors, tokens, resume."""

import json
import os
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from embedder.errors import InputError
from embedder.io.pipeline import EmbedOptions, run
from embedder.io.writers import partial_dir

FIXTURES = Path(__file__).parent / "fixtures"
# Lengths shuffled on purpose: the engine batches by length, the output must still follow the input.
TEXTS = [
    "a",
    "The quick brown fox jumps over the lazy dog while the cat watches from the window sill.",
    "漢字かな交じり文",
    "emoji 🙂🚀",
    "שלום עולם",
    "Cafe\u0301 au lait",
    "short",
    "A somewhat longer sentence about batching, padding and the order of outputs in a pipeline.",
]


@pytest.fixture(scope="module")
def expected(engine):
    return engine.embed(TEXTS)


def read_parquet(path):
    table = pq.read_table(path)
    vectors = np.stack(table["embedding"].to_numpy(zero_copy_only=False)) if table.num_rows else None
    return table, vectors


def interrupt_after_first_window(progress):
    """A progress callback: Ctrl-C once the first window (3 rows) is written."""
    if progress.rows >= 3:
        raise KeyboardInterrupt


def options(tmp_path, lines, name="out.parquet", **kw):
    source = tmp_path / "in.txt"
    source.write_text("\n".join(lines) + "\n")
    return EmbedOptions(inputs=(str(source),), output=str(tmp_path / name), chunk_rows=3, **kw)


def test_order_ids_tokens_and_vectors_match_the_engine(tmp_path, engine, expected):
    seen = []
    summary = run(options(tmp_path, TEXTS), seen.append, engine=engine)
    table, vectors = read_parquet(tmp_path / "out.parquet")
    assert table["id"].to_pylist() == list(range(len(TEXTS)))
    assert table["tokens"].to_pylist() == engine.tokens_per_text(TEXTS)
    np.testing.assert_allclose(vectors, expected, atol=1e-5)
    assert pq.ParquetFile(tmp_path / "out.parquet").metadata.num_row_groups == 3  # windows of 3 records
    assert json.loads(table.schema.metadata[b"dim"]) == 384
    assert table.schema.metadata[b"model"].decode() == engine.info()["model"]
    assert [p.rows for p in seen] == [3, 6, 8] and seen[-1].tokens == summary.tokens == sum(table["tokens"].to_pylist())


def test_dimensions_prompt_and_no_normalize(tmp_path, engine):
    run(options(tmp_path, TEXTS, dimensions=64, prompt="query: "), engine=engine)
    table, vectors = read_parquet(tmp_path / "out.parquet")
    np.testing.assert_allclose(vectors, engine.embed(TEXTS, prompt="query: ", dimensions=64), atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-5)
    assert table["tokens"].to_pylist() == engine.tokens_per_text(TEXTS, prompt="query: ")
    run(options(tmp_path, TEXTS, name="raw.jsonl", normalize=False), engine=engine)
    rows = [json.loads(line) for line in (tmp_path / "raw.jsonl").read_text().splitlines()]
    np.testing.assert_allclose([r["embedding"] for r in rows], engine.embed(TEXTS, normalize=False), atol=1e-4)
    assert table.schema.metadata[b"prompt"] == b"query: "


@pytest.mark.parametrize("policy", ["skip", "zero"])
def test_empty_texts_skip_or_zero(tmp_path, engine, expected, policy):
    lines = [TEXTS[0], "", TEXTS[1], "   ", TEXTS[2]]
    summary = run(options(tmp_path, lines, on_empty=policy), engine=engine)
    table, vectors = read_parquet(tmp_path / "out.parquet")
    if policy == "skip":
        assert table["id"].to_pylist() == [0, 2, 4] and summary.skipped == 2
        np.testing.assert_allclose(vectors, expected[:3], atol=1e-5)
    else:
        assert table["id"].to_pylist() == [0, 1, 2, 3, 4]
        assert table["tokens"].to_pylist()[1::2] == [0, 0] and not vectors[[1, 3]].any()
        np.testing.assert_allclose(vectors[[0, 2, 4]], expected[:3], atol=1e-5)


def test_an_error_in_the_first_window_leaves_nothing(tmp_path, engine):
    opts = options(tmp_path, TEXTS[:1] + [""] + TEXTS[1:])
    with pytest.raises(InputError, match=r"in.txt line 2: empty text \(pass --on-empty skip or --on-empty zero\)$"):
        run(opts, engine=engine)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.txt"]


def test_bad_input_keeps_the_records_before_it_and_resumes_once_fixed(tmp_path, engine):
    """Bad input loses nothing already done: the windows before it stay checkpointed, and once the record is fixed
    --resume embeds only the rest, to the same file a clean run makes."""
    texts = [f"record {i} " + "words " * (i % 5) for i in range(10)]
    run(options(tmp_path, texts, name="whole.parquet"), engine=engine)
    broken = texts[:7] + [""] + texts[8:]
    opts = options(tmp_path, broken)
    with pytest.raises(InputError, match=r"in.txt line 8: empty text.*; the first 6 records are saved in .*"
                                         r"out.parquet.partial: fix the input and run again with --resume"):
        run(opts, engine=engine)
    assert partial_dir(opts.output).exists() and not (tmp_path / "out.parquet").exists()
    (tmp_path / "in.txt").write_text("\n".join(texts) + "\n")
    summary = run(EmbedOptions(**{**opts.__dict__, "resume": True}), engine=engine)
    assert summary.resumed_at == 6 and summary.rows == 4
    resumed, vectors = read_parquet(tmp_path / "out.parquet")
    reference, reference_vectors = read_parquet(tmp_path / "whole.parquet")
    assert resumed["id"].to_pylist() == list(range(10))
    assert resumed["tokens"].equals(reference["tokens"])
    np.testing.assert_allclose(vectors, reference_vectors, atol=1e-6)


def test_a_checkpoint_without_a_record_digest_is_refused(tmp_path, engine):
    """A checkpoint an older embed wrote holds no digest to check the records by: refused, never trusted."""
    opts = options(tmp_path, TEXTS)
    with pytest.raises(KeyboardInterrupt):
        run(opts, interrupt_after_first_window, engine=engine)
    state = partial_dir(opts.output) / "state.json"
    state.write_text(json.dumps({k: v for k, v in json.loads(state.read_text()).items() if k != "digest"}))
    with pytest.raises(InputError, match="older embed, which kept no digest"):
        run(EmbedOptions(**{**opts.__dict__, "resume": True}), engine=engine)


@pytest.mark.parametrize("edit, message", [
    (lambda t: t[:2] + ["record 2, edited"] + t[3:], "the input's first 6 records changed since"),
    (lambda t: t[:4], "the input now holds 4 records, fewer than the 6 that"),
])
def test_a_resume_whose_done_records_changed_is_refused_and_the_checkpoint_kept(tmp_path, engine, edit, message):
    texts = [f"record {i}" for i in range(10)]
    opts = options(tmp_path, texts[:7] + [""] + texts[8:])
    with pytest.raises(InputError, match="empty text"):
        run(opts, engine=engine)
    (tmp_path / "in.txt").write_text("\n".join(edit(texts)) + "\n")
    with pytest.raises(InputError, match=message + ".*run without --resume to start over"):
        run(EmbedOptions(**{**opts.__dict__, "resume": True}), engine=engine)
    assert (partial_dir(opts.output) / "state.json").exists()


def test_interrupted_run_resumes_to_the_same_file(tmp_path, engine):
    whole = options(tmp_path, TEXTS, name="whole.parquet")
    run(whole, engine=engine)

    opts = options(tmp_path, TEXTS)
    with pytest.raises(KeyboardInterrupt):
        run(opts, interrupt_after_first_window, engine=engine)
    assert not (tmp_path / "out.parquet").exists() and partial_dir(opts.output).exists()
    summary = run(EmbedOptions(**{**opts.__dict__, "resume": True}), engine=engine)
    assert summary.resumed_at == 3 and summary.rows == len(TEXTS) - 3
    resumed, vectors = read_parquet(tmp_path / "out.parquet")
    reference, reference_vectors = read_parquet(tmp_path / "whole.parquet")
    assert resumed.select(["id", "tokens"]).equals(reference.select(["id", "tokens"]))
    assert resumed.schema.equals(reference.schema, check_metadata=True)
    np.testing.assert_allclose(vectors, reference_vectors, atol=1e-6)
    assert not partial_dir(opts.output).exists()


@pytest.mark.parametrize("change, resumes", [("add", False), ("remove", False), ("edit", False),
                                             ("append", True), ("edit_later", True), ("touch", True)])
def test_a_glob_resumes_only_when_its_done_records_are_unchanged(tmp_path, engine, change, resumes):
    """A glob's or folder's checkpoint vouches for the records it covers: a file added, removed or edited among
    them voids it (resuming would skip or repeat records); one added or edited after them, or a file merely
    touched, does not, and the resumed file equals a fresh run over the files as they are now."""
    folder = tmp_path / "docs"
    folder.mkdir()
    for i in range(8):
        (folder / f"f{i:02d}.md").write_text(f"document {i}")

    opts = EmbedOptions(inputs=(str(folder / "*.md"),), output=str(tmp_path / "out.parquet"), chunk_rows=3)
    with pytest.raises(KeyboardInterrupt):
        run(opts, interrupt_after_first_window, engine=engine)
    change_file = {
        "add": lambda: (folder / "f00a.md").write_text("a document added between two done ones"),
        "remove": lambda: (folder / "f01.md").unlink(),
        "edit": lambda: (folder / "f01.md").write_text("document 1, edited"),
        "append": lambda: (folder / "f09.md").write_text("a document added after the others"),
        "edit_later": lambda: (folder / "f07.md").write_text("document 7, edited"),
        "touch": lambda: os.utime(folder / "f01.md", ns=(1, 1)),
    }
    change_file[change]()
    resume = EmbedOptions(**{**opts.__dict__, "resume": True})
    if not resumes:
        with pytest.raises(InputError, match="records changed since .*run without --resume to start over"):
            run(resume, engine=engine)
        return
    assert run(resume, engine=engine).resumed_at == 3
    run(EmbedOptions(**{**opts.__dict__, "output": str(tmp_path / "fresh.parquet")}), engine=engine)
    resumed, vectors = read_parquet(tmp_path / "out.parquet")
    fresh, fresh_vectors = read_parquet(tmp_path / "fresh.parquet")
    assert resumed.select(["id", "tokens"]).equals(fresh.select(["id", "tokens"]))
    np.testing.assert_allclose(vectors, fresh_vectors, atol=1e-6)


@pytest.mark.parametrize("name, damage, message", [
    ("out.parquet", lambda d: (d / "part-000000.parquet").write_bytes(b"PAR1 cut"), "part-000000.parquet"),
    ("out.parquet", lambda d: (d / "part-000000.parquet").unlink(), "part-000000.parquet"),
    ("out.jsonl", lambda d: (d / "data.jsonl").write_bytes((d / "data.jsonl").read_bytes()[:-20]), "data.jsonl"),
])
def test_a_damaged_checkpoint_is_refused_before_any_work(tmp_path, engine, name, damage, message):
    """A checkpoint whose files were cut or lost since: --resume says so at once, rather than fail at the end or
    pad a JSONL with zeros."""
    opts = options(tmp_path, TEXTS, name=name)
    with pytest.raises(KeyboardInterrupt):
        run(opts, interrupt_after_first_window, engine=engine)
    damage(partial_dir(opts.output))
    with pytest.raises(InputError, match=f"is damaged .*{message}.*run without --resume to start over"):
        run(EmbedOptions(**{**opts.__dict__, "resume": True}), engine=engine)


@pytest.mark.parametrize("kind", ["jsonl", "txt", "parquet"])
def test_progress_knows_the_total(tmp_path, engine, kind):
    """Parquet's total comes from its footer; a line-based file's is estimated from the bytes read, and is exact
    once the whole file is read."""
    texts = [f"record {i}: " + "words " * (i % 7) for i in range(300)]
    path = tmp_path / f"in.{kind}"
    if kind == "parquet":
        import pyarrow as pa

        pq.write_table(pa.table({"text": texts}), path)
    else:
        path.write_text("".join((json.dumps({"text": t}) if kind == "jsonl" else t) + "\n" for t in texts))
    seen = []
    run(EmbedOptions(inputs=(str(path),), output=str(tmp_path / "out.parquet"), chunk_rows=32), engine=engine,
        on_progress=seen.append)
    assert seen and all(p.total is not None for p in seen)
    assert seen[-1].rows == seen[-1].total == 300
    # rows vary in length: the estimate, made once a chunk (32 records) is read, is close, not exact (worst: 21)
    assert all(abs(p.total - 300) <= 30 for p in seen)


@pytest.mark.parametrize("precision", ["float16", "int8", "uint8", "binary", "ubinary"])
def test_compact_vectors_equal_sentence_transformers_quantization(tmp_path, engine, precision):
    """Each precision's Parquet column holds quantize_embeddings of the float32 vectors; int8/uint8 with the ranges
    of a calibration file, which the output's metadata records; DuckDB and polars read the same values."""
    from reference import require_oracle

    require_oracle()
    from sentence_transformers.util.quantization import quantize_embeddings

    source = FIXTURES / "nasty.jsonl"
    floats_path = tmp_path / "floats.parquet"
    run(EmbedOptions(inputs=(str(source),), output=str(floats_path)), engine=engine)
    floats = np.stack(pq.read_table(floats_path)["embedding"].to_numpy(zero_copy_only=False))
    calibration = str(floats_path) if precision in ("int8", "uint8") else None
    out = tmp_path / f"{precision}.parquet"
    run(EmbedOptions(inputs=(str(source),), output=str(out), precision=precision, calibration=calibration),
        engine=engine)
    table = pq.read_table(out)
    got = np.stack(table["embedding"].to_numpy(zero_copy_only=False))
    if precision == "float16":
        want = floats.astype(np.float16)
    else:
        want = quantize_embeddings(floats, precision=precision, calibration_embeddings=floats)
    assert got.dtype == want.dtype and got.shape == want.shape
    np.testing.assert_array_equal(got, want)
    # the file reads the same in the tools users query vector files with
    import duckdb
    import polars

    in_duckdb = [row[0] for row in duckdb.sql(f"SELECT embedding FROM '{out}'").fetchall()]
    np.testing.assert_array_equal(np.array(in_duckdb).astype(want.dtype), want)
    np.testing.assert_array_equal(polars.read_parquet(out)["embedding"].to_numpy(), want)
    ranges = json.loads(table.schema.metadata[b"quantization_ranges"])
    assert (ranges is not None) == (calibration is not None)


def test_int8_without_calibration_is_refused_before_any_work(tmp_path):
    with pytest.raises(InputError, match="needs --calibration"):
        run(EmbedOptions(inputs=(str(FIXTURES / "nasty.txt"),), output=str(tmp_path / "o.parquet"), precision="int8"))
    assert not list(tmp_path.iterdir())


def test_uint64_ids_past_int64_are_kept_as_text(tmp_path, engine):
    import pyarrow as pa

    ids = [0, 2**63 - 1, 2**63, 2**64 - 1]
    source = tmp_path / "in.parquet"
    pq.write_table(pa.table({"id": pa.array(ids, pa.uint64()), "text": [f"row {i}" for i in range(4)]}), source)
    run(EmbedOptions(inputs=(str(source),), output=str(tmp_path / "out.parquet"), id_field="id"), engine=engine)
    table, vectors = read_parquet(tmp_path / "out.parquet")
    assert table["id"].to_pylist() == [str(i) for i in ids] and vectors.shape == (4, 384)
