"""Soak: `embed serve` under 64 concurrent clients mixing good and hostile requests for 10 minutes on loopback.

    python bench/soak_server.py [--minutes 10] [-c 64] [--hostile 0.3] [--url URL]

Each good request embeds 1-8 texts whose vectors were computed beforehand in this process by the engine; every
answer is checked (cosine >= 0.9999 row by row). Hostile requests are the ones a real client or fuzzer sends
(malformed JSON, lone surrogates, wrong types, empty and over-long inputs, token ids out of range, bad dimensions,
a body over the limit, a client hanging up mid-request) and must get a 4xx in OpenAI's shape. Reported: requests
by status, wrong vectors, 5xx and transport errors (all must be 0), the server's RSS once a minute, and latency
percentiles of the good requests. Without --url it starts its own server, as bench_server does.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import random
import time
from pathlib import Path

import httpx
import numpy as np
from bench_server import server

from embedder import DEFAULT_MODEL, EmbeddingEngine

TEXTS = [f"soak sentence {i}: " + " ".join(["words", "of", "varied", "length"] * (i % 23)) for i in range(256)]
HOSTILE = [
    b'{"input": "unterminated',
    b'{"input": "a\\ud800b"}',
    b'{"input": ["fine", "\\udfff"]}',
    b'{"input": null}',
    b'{"input": {"text": "x"}}',
    b'{"input": ""}',
    b'{"input": []}',
    b'{"input": [[1, 2, 99999999]]}',
    b'{"input": "hi", "dimensions": "8"}',
    b'{"input": "hi", "dimensions": 0}',
    b'{"input": "hi", "encoding_format": "int8"}',
    b'{"input": "hi", "model": "no-such-model"}',
    b'{"input": ' + b"[" * 5000 + b"]" * 5000 + b"}",
    b'["not", "an", "object"]',
]


def rss_kib(pid: int | None) -> int | None:
    if pid is None:
        return None
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return None


async def client(url: str, until: float, hostile_share: float, want: np.ndarray, tally: collections.Counter,
                 latencies: list[float], rng: random.Random) -> None:
    async with httpx.AsyncClient(base_url=url, timeout=120) as http:
        while time.monotonic() < until:
            try:
                if rng.random() < hostile_share:
                    await hostile(http, rng, tally)
                    continue
                rows = rng.sample(range(len(TEXTS)), rng.randint(1, 8))
                start = time.perf_counter()
                reply = await http.post("/v1/embeddings", json={"input": [TEXTS[r] for r in rows],
                                                                "encoding_format": rng.choice(["float", None])})
                latencies.append(time.perf_counter() - start)
                tally[f"good {reply.status_code}"] += 1
                if reply.status_code == 200:
                    got = np.asarray([d["embedding"] for d in reply.json()["data"]], np.float32)
                    cosine = (got * want[rows]).sum(1) / np.linalg.norm(got, axis=1)
                    tally["wrong vectors"] += int((cosine < 0.9999).sum())
            except httpx.TransportError as e:
                tally[f"transport error {type(e).__name__}"] += 1


async def hostile(http: httpx.AsyncClient, rng: random.Random, tally: collections.Counter) -> None:
    kind = rng.randrange(len(HOSTILE) + 2)
    if kind == len(HOSTILE):  # a body over the server's limit
        reply = await http.post("/v1/embeddings", content=b'{"input": "' + b"x" * 40_000_000 + b'"}',
                                headers={"Content-Type": "application/json"})
    elif kind == len(HOSTILE) + 1:  # a client that hangs up mid-request
        try:
            await http.post("/v1/embeddings", json={"input": TEXTS[:64]}, timeout=0.005)
            tally["hang-up answered first"] += 1
        except httpx.TimeoutException:
            tally["hang-up"] += 1
        return
    else:
        reply = await http.post("/v1/embeddings", content=HOSTILE[kind], headers={"Content-Type": "application/json"})
    ok = 400 <= reply.status_code < 500 and set(reply.json()) == {"error"}
    tally[f"hostile {reply.status_code}" if ok else f"hostile BAD {reply.status_code}"] += 1


async def sample_rss(pid: int | None, until: float, samples: list[int]) -> None:
    """The server's RSS once a minute: flat after warm-up, or a leak."""
    while pid is not None and time.monotonic() < until:
        await asyncio.sleep(min(60, max(0.0, until - time.monotonic())))
        samples.append(rss_kib(pid))


async def soak(url: str, pid: int | None, minutes: float, clients: int, hostile_share: float, want: np.ndarray):
    tally: collections.Counter = collections.Counter()
    latencies: list[float] = []
    samples = [rss_kib(pid)] if pid is not None else []
    until = time.monotonic() + minutes * 60
    await asyncio.gather(sample_rss(pid, until, samples),
                         *(client(url, until, hostile_share, want, tally, latencies, random.Random(k))
                           for k in range(clients)))
    return tally, latencies, samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10)
    parser.add_argument("-c", "--clients", type=int, default=64)
    parser.add_argument("--hostile", type=float, default=0.3, help="share of hostile requests")
    parser.add_argument("--url")
    args = parser.parse_args()
    engine = EmbeddingEngine(DEFAULT_MODEL)
    want = engine.embed(TEXTS)
    engine.unload()
    with server(args.url) as (url, pid):
        httpx.post(f"{url}/v1/embeddings", json={"input": TEXTS[:8]}, timeout=120)  # warm
        tally, latencies, samples = asyncio.run(soak(url, pid, args.minutes, args.clients, args.hostile, want))
    print(f"{args.minutes:g} min, {args.clients} clients, {args.hostile:.0%} hostile")
    for key, count in sorted(tally.items()):
        print(f"  {key}: {count:,}")
    bad = sum(v for k, v in tally.items() if "BAD" in k or "transport" in k or k.startswith("good 5")
              or k == "wrong vectors")
    if latencies:
        p50, p99 = np.percentile(latencies, [50, 99]) * 1000
        print(f"  good-request latency p50 {p50:.0f} ms, p99 {p99:.0f} ms, max {max(latencies) * 1000:.0f} ms")
    if samples:
        print(f"  server RSS by minute (MiB): {' '.join(f'{kib / 1024:.0f}' for kib in samples)}")
    print("  FAILED: wrong vectors, 5xx, bad refusals or transport errors" if bad else "  zero wrong vectors, 5xx, "
          "bad refusals and transport errors")


if __name__ == "__main__":
    main()
