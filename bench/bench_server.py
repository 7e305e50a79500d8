"""Server batching: N single-text requests at C-way concurrency against one N-text request, on the same server.

    python bench/bench_server.py [--corpus ../shared/bench/sentences.txt] [-n 1000] [-c 64] [--repeats 3] [--url URL]
                                 [--client httpx|openai|openai-aiohttp] [--dtype int8]

Without --url it starts `embed serve` (the default model) on a free loopback port, at a lower priority (nice 10)
than this client. The ratio is the throughput of the single-text requests over that of the one big request (goal
>= 0.8): how well the engine packs concurrent requests together. On one machine the client's CPU comes out of the
server's: it is printed too. Timings are the best of --repeats; latency percentiles come from that best
concurrent run.
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
def server(url: str | None, *options: str) -> Iterator[tuple[str, int | None]]:
    """(URL, process id): the given server (pid unknown), or a fresh `embed serve` that is stopped afterwards."""
    if url:
        yield url, None
        return
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    command = [sys.executable, "-c", "from cli.serve import app; app()", "--port", str(port), "--preload", *options]
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


def client_for(url: str, kind: str, concurrency: int):
    """How a user's code calls the server: plain httpx, or the openai SDK (which asks for base64, as here) on its own
    default transport (httpx2) or on the aiohttp one it offers for high concurrency (`DefaultAioHttpClient`)."""
    if kind == "httpx":
        limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
        return httpx.AsyncClient(base_url=url, timeout=600, limits=limits)
    import openai

    transport = openai.DefaultAioHttpClient() if kind == "openai-aiohttp" else None
    return openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="none", timeout=600, http_client=transport)


async def embed(client, texts: str | list[str]) -> int:
    """One request; its token count."""
    if isinstance(client, httpx.AsyncClient):
        reply = await client.post("/v1/embeddings", json={"input": texts, "encoding_format": "base64"})
        reply.raise_for_status()
        return reply.json()["usage"]["total_tokens"]
    return (await client.embeddings.create(input=texts, model="default")).usage.total_tokens


async def one_request(url: str, texts: list[str], kind: str = "httpx") -> tuple[float, int]:
    """Seconds and tokens for all texts in one request."""
    async with client_for(url, kind, 1) as client:
        start = time.perf_counter()
        tokens = await embed(client, texts)
        return time.perf_counter() - start, tokens


async def many_requests(url: str, texts: list[str], concurrency: int,
                        kind: str = "httpx") -> tuple[float, int, list[float]]:
    """Seconds and tokens for one request per text, `concurrency` in flight; plus each request's latency."""
    gate = asyncio.Semaphore(concurrency)
    async with client_for(url, kind, concurrency) as client:

        async def ask(text: str) -> tuple[float, int]:
            async with gate:
                start = time.perf_counter()
                tokens = await embed(client, text)
                return time.perf_counter() - start, tokens

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
    parser.add_argument("--client", choices=["httpx", "openai", "openai-aiohttp"], default="httpx",
                        help="plain httpx, or the openai SDK's AsyncOpenAI on its default transport or on aiohttp")
    parser.add_argument("--dtype", help="the started server's --dtype")
    args = parser.parse_args()
    texts = [line for line in args.corpus.read_text(encoding="utf-8").splitlines() if line.strip()][: args.n]

    with server(args.url, *(("--dtype", args.dtype) if args.dtype else ())) as (url, _):
        asyncio.run(one_request(url, texts[:64]))  # warm-up: first batches compile kernels
        batch, single, best_latencies = float("inf"), float("inf"), []
        for _ in range(args.repeats):  # interleaved, so drift on a shared machine hits both alike
            seconds, tokens = asyncio.run(one_request(url, texts, args.client))
            batch = min(batch, seconds)
            cpu = time.process_time()
            seconds, many_tokens, latencies = asyncio.run(many_requests(url, texts, args.concurrency, args.client))
            if seconds < single:
                single, best_latencies, client_cpu = seconds, latencies, (time.process_time() - cpu) / seconds
        assert tokens == many_tokens, (tokens, many_tokens)

    p50, p99 = np.percentile(best_latencies, [50, 99]) * 1000
    print(f"corpus {args.corpus.name}: {len(texts)} texts, {tokens} tokens; best of {args.repeats}; "
          f"client {args.client}")
    print(f"one {len(texts)}-text request:        {batch:7.2f} s  {tokens / batch:8.0f} tok/s")
    print(f"{len(texts)} single-text requests, c={args.concurrency}: {single:7.2f} s  {tokens / single:8.0f} tok/s"
          f"  latency p50 {p50:.0f} ms  p99 {p99:.0f} ms")
    print(f"the client's own CPU meanwhile: {client_cpu:.0%} of a core (on one machine, taken from the server's)")
    print(f"ratio (singles / one request): {batch / single:.2f}  (goal >= 0.8)")


if __name__ == "__main__":
    main()
