"""Whole-process `embed --ray` (a local Ray instance) against single-process `embed` on the same machine and file.

    .venv/bin/python bench/bench_ray.py [--corpus sentences|passages] [--rows N] [--repeat R] [--runs N]

Each run is a fresh process timed from start to exit: Ray's start-up, the counting pass, the actor's model load
and the Parquet writing are all included. The two commands alternate `--runs` times; the ratio reported is the
median of the side-by-side ratios (this VM's speed moves from minute to minute). The fixed cost of `--ray` is
measured on a one-line file, and the actor's own throughput is its tokens over the time left after that cost.
"""

from __future__ import annotations

import argparse
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench_cli import CORPUS, ENV, first_rows

from embedder.hub import packaged_default


def run(command: list[str]) -> tuple[float, int]:
    """Wall seconds and tokens embedded (from embed's summary line) of one process, which must succeed."""
    start = time.perf_counter()
    done = subprocess.run(command, env=ENV, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"failed ({done.returncode}): {' '.join(command)}\n{done.stderr[-2000:]}")
    tokens = re.search(r"embedded [\d,]+ rows, ([\d,]+) tokens", done.stderr)
    return seconds, int(tokens.group(1).replace(",", "")) if tokens else 0


def command(source: Path, out: Path, model: str, ray: bool) -> list[str]:
    shutil.rmtree(out, ignore_errors=True)  # a folder from the last --ray run
    out.unlink(missing_ok=True)  # a file from the last single run
    return [sys.executable, "-m", "cli", str(source), "-o", str(out), "--model", model, *(["--ray"] if ray else [])]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", choices=["passages", "sentences"], default="sentences")
    parser.add_argument("--rows", type=int, default=13295)
    parser.add_argument("--repeat", type=int, default=2, help="embed those rows this many times over")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--model", help="model folder (default: the packaged all-MiniLM-L6-v2)")
    parser.add_argument("--corpus-dir", type=Path, default=CORPUS)
    args = parser.parse_args()
    model = args.model or str(packaged_default())
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), "unknown CPU")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        source = first_rows(args.corpus_dir / f"{args.corpus}.txt", args.rows, folder, args.repeat)
        tiny = first_rows(args.corpus_dir / f"{args.corpus}.txt", 1, folder)
        single_startup = run(command(tiny, folder / "tiny.parquet", model, ray=False))[0]
        ray_startup = run(command(tiny, folder / "tiny_ray", model, ray=True))[0]
        ratios, singles, rays = [], [], []
        for _ in range(args.runs):
            single, tokens = run(command(source, folder / "single.parquet", model, ray=False))
            ray, ray_tokens = run(command(source, folder / "ray_out", model, ray=True))
            assert ray_tokens == tokens, (ray_tokens, tokens)
            singles.append(single)
            rays.append(ray)
            ratios.append(single / ray)
            print(f"  single {single:6.1f} s  ray {ray:6.1f} s  ray/single throughput {single / ray:.3f}x",
                  file=sys.stderr)
    single, ray = statistics.median(singles), statistics.median(rays)
    print(f"{cpu}, {args.corpus} {args.rows:,} rows x{args.repeat}, {tokens:,} tokens, median of {args.runs} pairs")
    print(f"single process: {single:.1f} s ({tokens / single:,.0f} tok/s), start-up on one line {single_startup:.1f} s")
    print(f"--ray:          {ray:.1f} s ({tokens / ray:,.0f} tok/s), start-up on one line {ray_startup:.1f} s")
    print(f"--ray keeps {statistics.median(ratios):.3f}x the single-process throughput "
          f"(pairs {min(ratios):.3f}-{max(ratios):.3f}); the actor alone, past the fixed cost: "
          f"{tokens / max(ray - ray_startup, 1e-9):,.0f} tok/s")


if __name__ == "__main__":
    main()
