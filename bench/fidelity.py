"""How far each compute dtype's vectors are from float32: the golden texts against sentence-transformers' own
vectors (`tests/golden`), and passages and sentences against embed's float32, with retrieval agreement.

    .venv/bin/python bench/fidelity.py [--dtypes float32,float16,int8,bfloat16] [--rows 300] [--queries 50]

Retrieval: the first `--queries` texts of a corpus search all `--rows` of it by cosine; a query's top 10 agrees when
it lists the same documents (`same set`) or the same documents in the same order (`same order`) as float32's;
`overlap` is the share of float32's top 10 a dtype's top 10 keeps, averaged over queries.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from embedder import EmbeddingEngine
from embedder.hub import packaged_default

ROOT = Path(__file__).resolve().parents[1]
CORPUS = Path("/work/shared/bench")


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def top10(vectors: np.ndarray, queries: int) -> np.ndarray:
    return np.argsort(-(vectors[:queries] @ vectors.T), axis=1, kind="stable")[:, :10]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dtypes", default="float32,float16,int8,bfloat16")
    parser.add_argument("--rows", type=int, default=300)
    parser.add_argument("--queries", type=int, default=50)
    parser.add_argument("--corpus-dir", type=Path, default=CORPUS)
    args = parser.parse_args()
    model = str(packaged_default())
    texts = json.loads((ROOT / "tests/golden/minilm_texts.json").read_text(encoding="utf-8"))
    golden = np.load(ROOT / "tests/golden/minilm_golden.npz")["embeddings"]
    corpora = {name: (args.corpus_dir / f"{name}.txt").read_text(encoding="utf-8").splitlines()[:args.rows]
               for name in ("passages", "sentences")}
    reference = EmbeddingEngine(model, dtype="float32")
    wanted = {name: reference.embed(rows) for name, rows in corpora.items()}
    print(f"| dtype | golden texts ({len(texts)}) vs sentence-transformers: min / mean cosine | "
          + " | ".join(f"{n} ({args.rows}) vs float32: min / mean cosine; top-10 overlap; same set, same order"
                       for n in corpora) + " |")
    print("|---|---|" + "---|" * len(corpora))
    for dtype in args.dtypes.split(","):
        engine = EmbeddingEngine(model, dtype=dtype)
        g = cosine(engine.embed(texts), golden)
        cells = [f"{g.min():.6f} / {g.mean():.6f}"]
        for name, rows in corpora.items():
            got = engine.embed(rows)
            c = cosine(got, wanted[name])
            mine, theirs = top10(got, args.queries), top10(wanted[name], args.queries)
            same_set = sum(set(a) == set(b) for a, b in zip(mine, theirs))
            same_order = int((mine == theirs).all(1).sum())
            shared = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(mine, theirs)])
            cells.append(f"{c.min():.6f} / {c.mean():.6f}; {shared:.1%}; {same_set}/{args.queries}, "
                         f"{same_order}/{args.queries}")
        print(f"| {dtype} | " + " | ".join(cells) + " |")
        engine.unload()


if __name__ == "__main__":
    main()
