"""The real `embed` command in a subprocess: every input kind, stdout JSONL, exit codes, Ctrl-C then --resume."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from embedder.io.writers import partial_dir

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).parent / "fixtures"
EXPECTED = json.loads((FIXTURES / "expected.json").read_text())
_SCRIPT = Path(sys.executable).with_name("embed")
# The installed console script when there is one; until then the same entry point through `python -m cli`.
COMMAND = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "cli"]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
MAX_LENGTH = 64  # every run truncates here: the long fixture texts still get cut, at a quarter of the cost


@pytest.fixture(scope="module")
def short_engine(minilm_path):
    """The engine the runs below should agree with: the same model and max length, in this process."""
    from embedder import EmbeddingEngine

    engine = EmbeddingEngine(str(minilm_path), max_length=MAX_LENGTH)
    engine.load()
    yield engine
    engine.unload()


def embed(*args, stdin: bytes | None = None, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([*COMMAND, *map(str, args)], input=stdin, capture_output=True, env=ENV, cwd=cwd,
                          timeout=120)


def expected_texts(name: str) -> list[str]:
    entry = EXPECTED["files"][name]
    return EXPECTED["texts"][entry["texts"]] + entry.get("extra", [])


def vectors_of(table) -> np.ndarray:
    return np.stack(table["embedding"].to_numpy(zero_copy_only=False))


def test_every_input_kind_in_one_run(tmp_path, short_engine):
    engine = short_engine
    names = ["nasty.txt", "nasty.jsonl", "nasty.csv", "nasty.tsv", "nasty.parquet", "nasty_dir"]
    out = tmp_path / "out.parquet"
    result = embed(*(FIXTURES / n for n in names), "-o", out, "--include-text", "--max-length", MAX_LENGTH)
    assert result.returncode == 0, result.stderr
    assert result.stdout == b"" and b"embedded" in result.stderr
    texts = [t for n in names for t in expected_texts(n)]
    table = pq.read_table(out)
    assert table.column_names == ["id", "embedding", "tokens", "text"]
    assert table["text"].to_pylist() == texts
    dir_ids = [str(p) for p in sorted((FIXTURES / "nasty_dir").iterdir())]
    assert table["id"].to_pylist() == [str(i) for i in range(len(texts) - len(dir_ids))] + dir_ids
    assert table["tokens"].to_pylist() == engine.tokens_per_text(texts)
    assert max(table["tokens"].to_pylist()) == MAX_LENGTH  # the long texts were truncated, not refused
    unique = sorted(set(texts))  # the formats share texts: each one is embedded once here
    by_text = dict(zip(unique, engine.embed(unique)))
    np.testing.assert_allclose(vectors_of(table), [by_text[t] for t in texts], atol=1e-5)
    assert json.loads(table.schema.metadata[b"normalize"]) is True
    assert list(tmp_path.iterdir()) == [out]


def test_id_field_and_jsonl_output(tmp_path):
    out = tmp_path / "out.jsonl"
    result = embed(FIXTURES / "nasty.parquet", "-o", out, "--id-field", "id", "--dimensions", "32", "-q",
                   "--max-length", MAX_LENGTH)
    assert result.returncode == 0 and result.stderr == b"", result.stderr
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["id"] for r in rows] == EXPECTED["files"]["nasty.parquet"]["ids"]  # int64 ids stay integers
    assert {len(r["embedding"]) for r in rows} == {32}
    np.testing.assert_allclose(np.linalg.norm([r["embedding"] for r in rows], axis=1), 1, atol=1e-5)


def test_stdin_to_stdout_is_pure_jsonl(short_engine):
    engine = short_engine
    texts = expected_texts("nasty.txt")
    result = embed("--max-length", MAX_LENGTH, "--lanes", 1, stdin=(FIXTURES / "nasty.txt").read_bytes())
    assert result.returncode == 0, result.stderr
    rows = [json.loads(line) for line in result.stdout.decode().splitlines()]
    assert [r["id"] for r in rows] == list(range(len(texts)))
    assert [r["tokens"] for r in rows] == engine.tokens_per_text(texts)
    np.testing.assert_allclose([r["embedding"] for r in rows], engine.embed(texts), atol=1e-5)
    jsonl = embed("-", "--input-format", "jsonl", "--id-field", "id", "--on-empty", "skip",
                  stdin=(FIXTURES / "nasty_with_empty.jsonl").read_bytes())
    ids = [json.loads(line)["id"] for line in jsonl.stdout.decode().splitlines()]
    assert ids == [i for k, i in enumerate(EXPECTED["files"]["nasty_with_empty.jsonl"]["ids"]) if k != 2]


def test_help_is_instant_and_never_imports_mlx():
    code = ("import sys; from cli.main import app\ntry: app(['--help'], prog_name='embed')\nexcept SystemExit: pass\n"
            "assert 'mlx.core' not in sys.modules and 'numpy' not in sys.modules")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, env=ENV, timeout=60)
    assert result.returncode == 0, result.stderr
    assert b"--resume" in result.stdout and b"--on-empty" in result.stdout
    assert embed("--help").stdout == result.stdout and b"embed serve" in result.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["broken_json_line3.jsonl"], "broken_json_line3.jsonl line 3: invalid JSON"),
        (["broken_missing_text.jsonl"], "broken_missing_text.jsonl line 2: no field 'text'"),
        (["broken_invalid_utf8.txt"], "broken_invalid_utf8.txt line 2: not valid UTF-8"),
        (["broken_lone_surrogate.jsonl"], "broken_lone_surrogate.jsonl line 2: field 'text' holds a lone UTF-16"),
        (["broken_nested.jsonl"], "broken_nested.jsonl line 2: JSON nested too deeply"),
        (["broken_null_text.parquet"], "broken_null_text.parquet row 1: field 'text' is null"),
        (["broken_no_text_column.csv"], "broken_no_text_column.csv: no column 'text'"),
        (["nasty_with_empty.tsv"], "nasty_with_empty.tsv line 4: empty text"),
        (["missing.txt"], "missing.txt: no such file or directory"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_no_output(tmp_path, args, message):
    out = tmp_path / "out.parquet"
    result = embed(*args, "-o", out, cwd=FIXTURES)
    lines = result.stderr.decode().splitlines()
    assert result.returncode == 2 and len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ") and message in lines[0] and "EMBED_DEBUG=1" in lines[0]
    assert list(tmp_path.iterdir()) == []


def test_a_warning_is_one_line_that_says_what_to_use_instead(tmp_path):
    """With the native kernels off no CPU has a fast 16-bit dtype: float16 runs MLX's generic kernels, and says so
    in one `warning:` line (not Python's file, line and source line) that points to float32, the fastest here."""
    source = tmp_path / "in.txt"
    source.write_text("A short text.\n", encoding="utf-8")
    out = tmp_path / "out.parquet"
    result = subprocess.run([*COMMAND, str(source), "-o", str(out), "--dtype", "float16", "--quiet"],
                            capture_output=True, env={**ENV, "EMBED_NATIVE_KERNELS": "0"}, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stderr.decode().splitlines() == [
        "warning: dtype float16 on the CPU runs MLX's generic kernels (no AVX512-FP16 float16 kernel here), ~30x "
        "slower than float32 (which is exact); float32 is the fastest dtype on this CPU"]
    assert pq.read_metadata(out).metadata[b"dtype"] == b"float16"


def test_refuses_to_overwrite_without_overwrite(tmp_path):
    source, out = tmp_path / "in.txt", tmp_path / "out.jsonl"
    source.write_text("one\ntwo\n")
    out.write_text("precious\n")
    result = embed(source, "-o", out)
    assert result.returncode == 2 and b"--overwrite" in result.stderr and out.read_text() == "precious\n"
    assert embed(source, "-o", out, "--overwrite").returncode == 0
    assert len(out.read_text().splitlines()) == 2


def test_outputs_the_system_refuses_are_one_line(tmp_path):
    """A folder where the file must go is bad input (exit 2, before any work); a path the system cannot write
    (a file where a folder must be) exits 74 naming it, with no traceback."""
    source = tmp_path / "in.txt"
    source.write_text("one\ntwo\n")
    (tmp_path / "taken.parquet").mkdir()
    folder = embed(source, "-o", tmp_path / "taken.parquet", "--overwrite")
    assert folder.returncode == 2 and b"is a folder; name the output file" in folder.stderr
    blocked = embed(source, "-o", source / "out.parquet")
    lines = blocked.stderr.decode().splitlines()
    assert blocked.returncode == 74 and len(lines) == 1 and lines[0].startswith(f"error: {source}"), lines
    assert "Traceback" not in blocked.stderr.decode()


def test_resume_refuses_a_finished_file(tmp_path):
    source, out = tmp_path / "in.txt", tmp_path / "out.parquet"
    source.write_text("\n".join(f"line {i}" for i in range(20)) + "\n")
    assert embed(source, "-o", out).returncode == 0
    finished = out.read_bytes()
    again = embed(source, "-o", out, "--resume", "--dimensions", "64")
    assert again.returncode == 2 and b"already complete" in again.stderr and out.read_bytes() == finished


def test_bad_json_mid_file_keeps_the_work_before_it_and_resumes_once_fixed(tmp_path):
    lines = [json.dumps({"text": f"passage {i} " + "about the sea " * (i % 4)}) for i in range(40)]
    source, out, whole = tmp_path / "in.jsonl", tmp_path / "out.parquet", tmp_path / "whole.parquet"
    source.write_text("\n".join(lines) + "\n")
    assert embed(source, "-o", whole, "--chunk-rows", "8").returncode == 0
    source.write_text("\n".join(lines[:29] + ['{"text": "cut off'] + lines[30:]) + "\n")
    failed = embed(source, "-o", out, "--chunk-rows", "8")
    message = failed.stderr.decode().splitlines()
    assert failed.returncode == 2 and len(message) == 1, message
    assert f"{source} line 30" in message[0] and "the first 24 records are saved" in message[0]
    assert "--resume" in message[0] and not out.exists()

    refused = embed("-", "-o", out, "--chunk-rows", "8", "--resume", stdin=source.read_bytes())
    assert refused.returncode == 2 and b"other inputs or settings" in refused.stderr  # stdin is another input
    source.write_text("\n".join(lines) + "\n")
    resumed = embed(source, "-o", out, "--chunk-rows", "8", "--resume")
    assert resumed.returncode == 0 and b"resumed at record 24" in resumed.stderr, resumed.stderr
    table, reference = pq.read_table(out), pq.read_table(whole)
    assert table.select(["id", "tokens"]).equals(reference.select(["id", "tokens"]))
    np.testing.assert_allclose(vectors_of(table), vectors_of(reference), atol=1e-6)


def test_stdin_resume_is_refused_when_other_records_come(tmp_path):
    out = tmp_path / "out.parquet"
    text = "".join(f"line {i}\n" for i in range(20)).encode()
    failed = embed("-", "-o", out, "--chunk-rows", "8", stdin=text + b"\n")
    assert failed.returncode == 2 and b"line 21: empty text" in failed.stderr and b"first 16 records" in failed.stderr
    other = text.replace(b"line 3\n", b"line three\n")
    refused = embed("-", "-o", out, "--chunk-rows", "8", "--resume", stdin=other)
    assert refused.returncode == 2 and b"first 16 records changed since" in refused.stderr, refused.stderr
    assert embed("-", "-o", out, "--chunk-rows", "8", "--resume", stdin=text).returncode == 0
    assert pq.read_table(out)["id"].to_pylist() == list(range(20))


def test_closed_pipe_ends_quietly(tmp_path):
    source = tmp_path / "in.txt"
    source.write_text("\n".join(f"line {i}" for i in range(200)) + "\n")
    command = " ".join([*COMMAND, str(source), "--chunk-rows", "4"]) + " | head -n 1"
    result = subprocess.run(["bash", "-o", "pipefail", "-c", command], capture_output=True, env=ENV, timeout=120)
    assert result.returncode == 0 and result.stderr == b"", result.stderr
    assert json.loads(result.stdout)["id"] == 0


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGKILL], ids=["ctrl-c", "kill-9"])
def test_interrupt_then_resume_equals_an_uninterrupted_run(tmp_path, stop):
    """The job reads stdin, and the test holds back the second half of it: the interrupt always lands mid-job,
    however fast the machine."""
    ROWS = 96
    text = "".join(f"sentence number {i} of the job\n" for i in range(ROWS)).encode()
    half = text.index(b"sentence number 48 ")
    whole, out = tmp_path / "whole.parquet", tmp_path / "out.parquet"
    assert embed("-", "-o", whole, "--chunk-rows", "8", "-q", stdin=text).returncode == 0

    # Ctrl-C reaches a process started from a terminal; one started by a runner in the background inherits
    # SIGINT ignored (and Python keeps it so), so the child gets the terminal's default back first.
    process = subprocess.Popen([*COMMAND, "-", "-o", str(out), "--chunk-rows", "8"], stdin=subprocess.PIPE,
                               stderr=subprocess.PIPE, env=ENV,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    process.stdin.write(text[:half])
    process.stdin.flush()
    state = partial_dir(str(out)) / "state.json"
    deadline = time.monotonic() + 120
    while not (state.exists() and json.loads(state.read_text())["rows"] > 0) and time.monotonic() < deadline:
        time.sleep(0.02)
    process.send_signal(stop)
    _, stderr = process.communicate(timeout=60)
    if stop == signal.SIGINT:
        assert process.returncode == 130 and b"--resume" in stderr, stderr
    else:
        assert process.returncode == -signal.SIGKILL
    assert not out.exists()
    done = json.loads(state.read_text())["rows"]
    assert 0 < done <= ROWS // 2

    result = embed("-", "-o", out, "--chunk-rows", "8", "--resume", stdin=text)
    assert result.returncode == 0, result.stderr
    assert f"resumed at record {done}".encode() in result.stderr
    resumed, reference = pq.read_table(out), pq.read_table(whole)
    assert resumed.select(["id", "tokens"]).equals(reference.select(["id", "tokens"]))
    assert resumed.schema.equals(reference.schema, check_metadata=True)
    assert pq.ParquetFile(out).metadata.num_row_groups == pq.ParquetFile(whole).metadata.num_row_groups == ROWS // 8
    np.testing.assert_allclose(vectors_of(resumed), vectors_of(reference), atol=1e-6)
    assert not partial_dir(str(out)).exists()


def test_progress_on_a_terminal_counts_to_the_total_with_rates(tmp_path):
    """stderr a terminal (a pty): the bar's last frame shows rows of the exact total, rows/s and tokens/s, then the
    summary line; the bar itself is erased."""
    import pty

    source = tmp_path / "docs.txt"
    source.write_text("".join(f"text number {i}\n" for i in range(40)))
    parent, child = pty.openpty()
    proc = subprocess.Popen([*COMMAND, str(source), "-o", str(tmp_path / "out.parquet")], stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=child, env={**ENV, "COLUMNS": "160"})
    os.close(child)
    seen = b""
    while True:
        try:
            chunk = os.read(parent, 65536)
        except OSError:  # the child closed its end
            break
        if not chunk:
            break
        seen += chunk
    os.close(parent)
    assert proc.wait(timeout=300) == 0, seen
    text = seen.decode(errors="replace")
    assert "40/40" in text and " rows/s " in text and " tokens/s" in text, text
    assert "embedded 40 rows, " in text


def test_a_refused_long_input_names_its_file_and_line(tmp_path):
    """The tokenizer counts inputs from the batch's start; the error names the record (file and line) instead,
    whatever the chunking."""
    source = tmp_path / "in.txt"
    source.write_text("short\nalso short\n" + "word " * 400 + "\nafter\n")
    for chunk_rows in ("1", "100"):
        result = embed(source, "--long-input", "error", "--chunk-rows", chunk_rows)
        lines = result.stderr.decode().splitlines()
        assert result.returncode == 2 and len(lines) == 1, result.stderr
        assert f"{source} line 3 has 402 tokens, more than the model's maximum of 256" in lines[0]
    prompt = embed(source, "--prompt", b"\xff ".decode("utf-8", "surrogateescape"))
    assert prompt.returncode == 2 and b"the prompt holds a lone UTF-16 surrogate" in prompt.stderr
