"""Server batching: N single-text requests at C-way concurrency against one N-text request, on the same server.

    python bench/bench_server.py [--corpus ../shared/bench/sentences.txt] [-n 1000] [-c 64] [--repeats 3] [--url URL]

Without --url it starts `embed serve` (the default model) on a free loopback port, at a lower priority (nice 10)
than this client. The ratio is the throughput of
the single-text requests over that of the one big request (goal >= 0.8): how well the engine packs concurrent
requests together. Timings are the best of --repeats; latency percentiles come from that best concurrent run.
"""

import argparse
import asyncio
import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np

DEFAULT_CORPUS = Path(__file__).resolve().parents[2] / "shared" / "bench" / "sentences.txt"


@contextlib.contextmanager
def server(url: str | None) -> Iterator[tuple[str, int | None]]:
    """(URL, process id): the given server (pid unknown), or a fresh `embed serve` that is stopped afterwards."""
    if url:
        yield url, None
        return
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    command = [sys.executable, "-c", "from cli.serve import app; app()", "--port", str(port), "--preload"]
    # The server runs at a lower priority: on a small machine the load generator shares its cores, and a starved
    # client shows its own lag as latency (p99 ~3 s on 2 cores) and can lose keep-alive races (httpx.ReadError).
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, "HF_HUB_OFFLINE": "1"},
                            preexec_fn=(lambda: os.nice(10)) if hasattr(os, "nice") else None)
    url = f"http://127.0.0.1:{port}"
    try:
        while not _ready(url):
            if proc.poll() is not None:
                sys.exit("embed serve exited before it was ready")
            time.sleep(0.2)
        yield url, proc.pid
    finally:
        proc.terminate()
        proc.wait()


def _ready(url: str) -> bool:
    try:
        return httpx.get(f"{url}/health").status_code == 200
    except httpx.TransportError:
        return False


async def one_request(url: str, texts: list[str]) -> tuple[float, int]:
    """Seconds and tokens for all texts in one request."""
    async with httpx.AsyncClient(base_url=url, timeout=600) as client:
        start = time.perf_counter()
        reply = await client.post("/v1/embeddings", json={"input": texts, "encoding_format": "base64"})
        reply.raise_for_status()
        return time.perf_counter() - start, reply.json()["usage"]["total_tokens"]


async def many_requests(url: str, texts: list[str], concurrency: int) -> tuple[float, int, list[float]]:
    """Seconds and tokens for one request per text, `concurrency` in flight; plus each request's latency."""
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    gate = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=600, limits=limits) as client:

        async def ask(text: str) -> tuple[float, int]:
            async with gate:
                start = time.perf_counter()
                reply = await client.post("/v1/embeddings", json={"input": text, "encoding_format": "base64"})
                reply.raise_for_status()
                return time.perf_counter() - start, reply.json()["usage"]["total_tokens"]

        start = time.perf_counter()
        results = await asyncio.gather(*(ask(t) for t in texts))
        return time.perf_counter() - start, sum(n for _, n in results), [s for s, _ in results]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS)
    parser.add_argument("-n", type=int, default=1000, help="texts (first N lines of the corpus)")
    parser.add_argument("-c", "--concurrency", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--url", help="an already running server; default: start one")
    args = parser.parse_args()
    texts = [line for line in args.corpus.read_text(encoding="utf-8").splitlines() if line.strip()][: args.n]

    with server(args.url) as (url, _):
        asyncio.run(one_request(url, texts[:64]))  # warm-up: first batches compile kernels
        batch, single, best_latencies = float("inf"), float("inf"), []
        for _ in range(args.repeats):  # interleaved, so drift on a shared machine hits both alike
            seconds, tokens = asyncio.run(one_request(url, texts))
            batch = min(batch, seconds)
            seconds, many_tokens, latencies = asyncio.run(many_requests(url, texts, args.concurrency))
            if seconds < single:
                single, best_latencies = seconds, latencies
        assert tokens == many_tokens, (tokens, many_tokens)

    p50, p99 = np.percentile(best_latencies, [50, 99]) * 1000
    print(f"corpus {args.corpus.name}: {len(texts)} texts, {tokens} tokens; best of {args.repeats}")
    print(f"one {len(texts)}-text request:        {batch:7.2f} s  {tokens / batch:8.0f} tok/s")
    print(f"{len(texts)} single-text requests, c={args.concurrency}: {single:7.2f} s  {tokens / single:8.0f} tok/s"
          f"  latency p50 {p50:.0f} ms  p99 {p99:.0f} ms")
    print(f"ratio (singles / one request): {batch / single:.2f}  (goal >= 0.8)")


if __name__ == "__main__":
    main()
