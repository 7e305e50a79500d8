"""`embed --ray` and `embed_dataset` on a real local Ray instance (2 CPUs) with the real all-MiniLM-L6-v2:
the output equals the single-machine run's, row for row."""

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

ray = pytest.importorskip("ray")
pytestmark = pytest.mark.slow

from embedder.errors import InputError  # noqa: E402
from embedder.io.pipeline import EmbedOptions, run  # noqa: E402
from embedder.ray import embed_dataset, run_job  # noqa: E402
from reference import needs_f16, needs_int8  # noqa: E402
from tiny_models import tiny_colbert, tiny_cross_encoder, tiny_sparse_encoder  # noqa: E402

FIXTURES = Path(__file__).parent / "fixtures"
ROOT = Path(__file__).resolve().parents[1]
_SCRIPT = Path(sys.executable).with_name("embed")
COMMAND = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "cli"]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}


@pytest.fixture(scope="module")
def local_ray():
    ray.shutdown()
    ray.init(num_cpus=2, include_dashboard=False)
    yield
    ray.shutdown()


def single_machine(engine, tmp_path, inputs, **options) -> pa.Table:
    out = tmp_path / "single.parquet"
    run(EmbedOptions(inputs=tuple(map(str, inputs)), output=str(out), **options), engine=engine)
    return pq.read_table(out)


def on_ray(minilm_path, tmp_path, inputs, **options) -> pa.Table:
    out = tmp_path / "ray_out"
    run_job(EmbedOptions(inputs=tuple(map(str, inputs)), output=str(out), model=str(minilm_path), **options),
            progress=False)
    return pq.read_table(out)


def assert_same_rows(got: pa.Table, want: pa.Table) -> None:
    """Sorted by id, the same ids, token counts and texts, and vectors at cosine >= 0.99999; the same schema."""
    assert got.schema.remove_metadata().equals(want.schema.remove_metadata())
    meta = {k: v for k, v in want.schema.metadata.items() if k not in (b"device", b"path")}
    assert {k: got.schema.metadata[k] for k in meta} == meta
    got, want = (t.take(pa.array(np.argsort(np.asarray(t["id"].to_pylist(), dtype=object), kind="stable")))
                 for t in (got, want))
    assert got.drop_columns(["embedding"]).equals(want.drop_columns(["embedding"]))
    a = np.stack(got["embedding"].to_numpy(zero_copy_only=False))
    b = np.stack(want["embedding"].to_numpy(zero_copy_only=False))
    cosine = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert cosine.min() >= 0.99999


def test_text_jsonl_csv_and_a_folder_equal_one_machine(local_ray, engine, minilm_path, tmp_path):
    inputs = [FIXTURES / n for n in ("nasty.txt", "nasty.jsonl", "nasty.csv", "nasty_dir")]
    want = single_machine(engine, tmp_path, inputs, include_text=True)
    got = on_ray(minilm_path, tmp_path, inputs, include_text=True)
    assert_same_rows(got, want)
    assert got.num_rows == want.num_rows > 20
    assert sorted(p.name for p in (tmp_path / "ray_out").iterdir() if not p.name.startswith("_")) == [
        f"part-{k:05d}.parquet" for k in range(3 + len(list((FIXTURES / "nasty_dir").rglob("*.*"))))]


def test_multi_file_parquet_with_an_id_column(local_ray, engine, minilm_path, tmp_path):
    texts = [f"document {i}: " + "word " * (i % 37) for i in range(300)]
    inputs = []
    for k in range(3):
        path = tmp_path / f"shard-{k}.parquet"
        rows = range(k * 100, (k + 1) * 100)
        pq.write_table(pa.table({"doc": [f"d{i}" for i in rows], "body": [texts[i] for i in rows]}), path,
                       row_group_size=40)
        inputs.append(path)
    options = dict(text_field="body", id_field="doc", dimensions=128, precision="float16")
    want = single_machine(engine, tmp_path, inputs, **options)
    got = on_ray(minilm_path, tmp_path, inputs, **options)
    assert_same_rows(got, want)
    assert got.schema.field("embedding").type == pa.list_(pa.float16(), 128)


@pytest.mark.parametrize("dtype", [pytest.param("int8", marks=needs_int8), pytest.param("float16", marks=needs_f16)])
def test_packed_dtype_job_equals_the_single_machine_one(local_ray, minilm_path, tmp_path, dtype):
    """dtype reaches every actor's engine; int8 and float16 scale per token, so Ray's batching changes no vector."""
    from embedder import EmbeddingEngine

    inputs = [FIXTURES / "nasty.jsonl"]
    engine = EmbeddingEngine(str(minilm_path), dtype=dtype)
    want = single_machine(engine, tmp_path, inputs, dtype=dtype)
    got = on_ray(minilm_path, tmp_path, inputs, dtype=dtype)
    assert_same_rows(got, want)
    assert got.schema.metadata[b"dtype"] == dtype.encode()
    engine.unload()


def test_bad_input_fails_with_the_single_machine_message(local_ray, engine, minilm_path, tmp_path):
    bad = FIXTURES / "broken_json_line3.jsonl"
    with pytest.raises(InputError) as single:
        run(EmbedOptions(inputs=(str(bad),), output=str(tmp_path / "x.parquet")), engine=engine)
    with pytest.raises(InputError) as distributed:
        on_ray(minilm_path, tmp_path, [FIXTURES / "nasty.txt", bad])
    assert str(distributed.value) == str(single.value) and "line 3" in str(single.value)


def test_embed_dataset_adds_the_engines_vectors_and_token_counts(local_ray, engine, minilm_path):
    texts = [f"row {i} " + "text " * (i % 50) for i in range(200)] + ["東京は日本の首都です。", "🙂 emoji"]
    ds = ray.data.from_items([{"text": t, "n": i} for i, t in enumerate(texts)])
    out = embed_dataset(ds, model=str(minilm_path), batch_size=64).take_all()
    out.sort(key=lambda row: row["n"])
    assert [row["text"] for row in out] == texts
    got = np.stack([np.asarray(row["embedding"]) for row in out])
    np.testing.assert_allclose(got, engine.embed(texts), atol=1e-5)
    assert [row["tokens"] for row in out] == engine.tokens_per_text(texts)


def test_resume_after_a_partial_run_redoes_only_missing_parts(local_ray, engine, minilm_path, tmp_path):
    inputs = [FIXTURES / n for n in ("nasty.txt", "nasty.jsonl", "nasty.tsv")]
    options = EmbedOptions(inputs=tuple(map(str, inputs)), output=str(tmp_path / "out"), model=str(minilm_path))
    run_job(options, progress=False)
    whole = pq.read_table(tmp_path / "out")
    (tmp_path / "out" / "part-00001.parquet").unlink()
    (tmp_path / "out" / ".part-00001.parquet.dead.tmp").write_bytes(b"half a file")
    with pytest.raises(InputError, match="--resume"):
        run_job(options, progress=False)
    summary = run_job(EmbedOptions(**{**options.__dict__, "resume": True}), progress=False)
    assert summary.resumed_files == 2
    assert summary.rows == pq.read_table(tmp_path / "out" / "part-00001.parquet").num_rows == 12
    assert pq.read_table(tmp_path / "out").equals(whole)
    assert not list((tmp_path / "out").glob(".part-*"))
    with pytest.raises(InputError, match="other inputs or settings"):
        run_job(EmbedOptions(**{**options.__dict__, "resume": True, "dimensions": 64}), progress=False)


@pytest.mark.parametrize("fix", ["replace", "delete"])
def test_bad_input_keeps_the_other_files_parts_and_resume_redoes_only_what_changed(local_ray, engine, minilm_path,
                                                                                   tmp_path, fix):
    """An empty line fails its file; the parts already written stay, and once it is fixed --resume keeps every part
    whose file and first record number are unchanged: a fix that keeps the line count redoes that file alone, one
    that drops the line also redoes the files after it (their ids move)."""
    inputs = []
    for k in range(3):
        path = tmp_path / f"in-{k}.txt"
        path.write_text("".join(f"file {k} line {i}\n" for i in range(12)))
        inputs.append(path)
    lines = inputs[1].read_text().splitlines()
    inputs[1].write_text("\n".join(lines[:5] + [""] + lines[6:]) + "\n")
    options = EmbedOptions(inputs=tuple(map(str, inputs)), output=str(tmp_path / "out"), model=str(minilm_path))
    with pytest.raises(InputError, match=r"in-1.txt line 6: empty text") as failed:
        run_job(options, progress=False)
    saved = {p.name for p in (tmp_path / "out").glob("part-*.parquet")}
    assert "part-00001.parquet" not in saved
    assert ("--resume to embed only the rest" in str(failed.value)) == bool(saved)
    inputs[1].write_text("\n".join(lines if fix == "replace" else lines[:5] + lines[6:]) + "\n")
    summary = run_job(EmbedOptions(**{**options.__dict__, "resume": True}), progress=False)
    kept = saved if fix == "replace" else saved & {"part-00000.parquet"}
    assert summary.resumed_files == len(kept)
    assert_same_rows(pq.read_table(tmp_path / "out"), single_machine(engine, tmp_path, inputs))


@pytest.mark.parametrize("kind", ["splade", "classifier", "colbert"])
def test_sparse_classifier_and_multi_vector_outputs_equal_the_single_machine_run(local_ray, minilm_path, tmp_path,
                                                                                 kind):
    """Both Ray paths write a SPLADE model's `indices` and `values`, a classifier's `label`, `score` and `scores`,
    and a ColBERT model's vectors per token, as the single-machine run does."""
    model = (tiny_sparse_encoder("bert", minilm_path, tmp_path) if kind == "splade" else
             tiny_cross_encoder("bert", minilm_path, tmp_path, labels=3) if kind == "classifier" else
             tiny_colbert(minilm_path, tmp_path, "st"))
    texts = ["a short one", "x", "a somewhat longer sentence about sparse retrieval"]
    (tmp_path / "in.txt").write_text("\n".join(texts) + "\n")
    run(EmbedOptions(inputs=(str(tmp_path / "in.txt"),), output=str(tmp_path / "single.parquet"), model=str(model)))
    want = pq.read_table(tmp_path / "single.parquet").to_pylist()
    got = on_ray(model, tmp_path, [tmp_path / "in.txt"]).to_pylist()
    rows = embed_dataset(ray.data.from_items([{"text": t} for t in texts]), str(model)).take_all()
    rows = sorted(rows, key=lambda row: texts.index(row["text"]))
    for w, g, r in zip(want, got, rows):
        for name, value in w.items():
            if name in ("values", "score", "scores", "embedding"):
                np.testing.assert_allclose(g[name], value, rtol=1e-5)
                np.testing.assert_allclose(r[name], value, rtol=1e-5)
            elif name != "id":
                assert g[name] == r[name] == value, name


def test_an_actor_killed_mid_job_is_restarted_and_nothing_is_lost_or_doubled(engine, minilm_path, tmp_path):
    """Ray restarts the actor and embeds file 1 again; each part is renamed into place whole, so ids appear once."""
    ray.shutdown()
    marker = tmp_path / "died"
    hook_env = {"EMBED_TEST_DIE_MARKER": str(marker),
                "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), str(ROOT), os.environ.get("PYTHONPATH", "")])}
    ray.init(num_cpus=2, include_dashboard=False,
             runtime_env={"env_vars": hook_env, "worker_process_setup_hook": "ray_faults.die_once_on_file_1"})
    try:
        inputs = [FIXTURES / n for n in ("nasty.txt", "nasty.jsonl", "nasty.csv")]
        got = on_ray(minilm_path, tmp_path, inputs)
    finally:
        ray.shutdown()
    assert marker.exists(), "the actor never died: the fault was not injected"
    assert_same_rows(got, single_machine(engine, tmp_path, inputs))
    ids = got["id"].to_pylist()
    assert len(ids) == len(set(ids))


def test_cli_driver_killed_mid_job_then_resume_equals_an_uninterrupted_run(engine, tmp_path, minilm_path):
    """kill -9 of `embed --ray` once its first part is written; the rerun with --resume completes the folder.
    (On a machine fast enough to finish first, the rerun finds every part done and must still agree.)"""
    ray.shutdown()
    inputs = []
    for k in range(6):
        path = tmp_path / f"in-{k}.txt"
        path.write_text("".join(f"file {k} sentence {i} " + "word " * (i % 30) + "\n" for i in range(150)))
        inputs.append(str(path))
    out = tmp_path / "out"
    args = [*COMMAND, *inputs, "-o", str(out), "--ray", "-m", str(minilm_path)]
    driver = subprocess.Popen(args, env=ENV, stderr=subprocess.PIPE, start_new_session=True)
    deadline = time.monotonic() + 300
    while not list(out.glob("part-*.parquet")) and driver.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    os.killpg(driver.pid, signal.SIGKILL)
    driver.communicate(timeout=60)
    done = len(list(out.glob("part-*.parquet")))
    assert done >= 1, "no part was written before the kill"
    resumed = subprocess.run([*args, "--resume"], env=ENV, capture_output=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    # the driver's orphaned actor may still finish a part after the count, so the rerun skips at least `done`
    skipped = re.search(rb"; ([\d,]+) files already done", resumed.stderr)
    assert skipped and done <= int(skipped[1].replace(b",", b"")) <= len(inputs), resumed.stderr
    assert_same_rows(pq.read_table(out), single_machine(engine, tmp_path, inputs))


def test_ray_missing_is_one_line_saying_how_to_install(tmp_path):
    code = ("import sys; sys.modules['ray'] = None; from cli.main import main; "
            f"main(['{FIXTURES / 'nasty.txt'}', '-o', '{tmp_path / 'out'}', '--ray'])")
    done = subprocess.run([sys.executable, "-c", code], env=ENV, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        "error: Ray Data is not installed (ray is missing): pip install 'embed[ray]' (set EMBED_DEBUG=1 for a traceback)"]
