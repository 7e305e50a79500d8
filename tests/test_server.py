"""The real `embed serve` in a subprocess, called with the openai SDK, curl and httpx: vectors equal the engine's."""

import asyncio
import base64
import contextlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import openai
import pytest
from reference import require_oracle

from embedder import DEFAULT_MODEL, EmbeddingEngine
from embedder.errors import InputError

API_KEY = "test-key"
SERVE = [sys.executable, "-m", "cli", "serve"]
TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "東京は日本の首都です。",
    "Emoji outside the BMP: 🦊🚀",
    "שלום עולם, مرحبا بالعالم",
    "Cafe\u0301 na\u0131\u0308ve combining accents",
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def running_server(*args: str, timeout: float = 90.0, log_path: Path | None = None) -> Iterator[str]:
    """Start `embed serve ARGS` on a free loopback port; yield its base URL once /health says ready. Its output
    goes to `log_path` if given."""
    port = _free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    with (open(log_path, "w+b") if log_path else tempfile.TemporaryFile()) as log:
        proc = subprocess.Popen([*SERVE, *args, "--port", str(port)], stdout=log, stderr=subprocess.STDOUT, env=env)
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + timeout
            while not _healthy(url):
                if proc.poll() is not None or time.monotonic() > deadline:
                    log.seek(0)
                    pytest.fail(f"server did not become ready:\n{log.read().decode(errors='replace')}")
                time.sleep(0.1)
            yield url
        finally:
            proc.terminate()
            proc.wait(timeout=30)


def _healthy(url: str) -> bool:
    try:
        return httpx.get(f"{url}/health", timeout=2).status_code == 200
    except httpx.TransportError:
        return False


def assert_close(got: np.ndarray, want: np.ndarray) -> None:
    """Row-wise cosine: the server and the in-process engine may batch the same rows differently."""
    got, want = np.asarray(got, np.float32), np.asarray(want, np.float32)
    assert got.shape == want.shape
    cos = (got * want).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(want, axis=1)
    assert cos.min() >= 0.9999, cos


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    with running_server("--api-key", API_KEY, "--lanes", "3") as url:  # more lanes than cores: jobs split across them
        yield url


@pytest.fixture(scope="module")
def engine() -> EmbeddingEngine:
    engine = EmbeddingEngine(DEFAULT_MODEL)
    engine.load()
    return engine


@pytest.fixture(scope="module")
def http(server: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=60) as client:
        yield client


@pytest.fixture(scope="module")
def sdk(server: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server}/v1", api_key=API_KEY, max_retries=0)


def test_health_and_model_list(server: str, http: httpx.Client) -> None:
    health = httpx.get(f"{server}/health")  # open even with --api-key
    assert health.status_code == 200 and health.json()["status"] == "ok"
    listing = http.get("/v1/models").json()
    assert listing["object"] == "list"
    assert [(m["id"], m["object"]) for m in listing["data"]] == [(DEFAULT_MODEL, "model")]


def test_head_retrieve_and_infinity_routes(server: str, http: httpx.Client, sdk: openai.OpenAI,
                                           engine: EmbeddingEngine) -> None:
    """HEAD on the GET routes (TEI's router answers it), OpenAI's models.retrieve by any served name, and infinity's
    /embeddings and /models without the /v1 prefix."""
    head = httpx.head(f"{server}/health")
    assert head.status_code == 200 and head.content == b""
    assert sdk.models.retrieve("all-MiniLM-L6-v2").id == "all-MiniLM-L6-v2"
    assert http.get(f"/v1/models/{DEFAULT_MODEL}").json()["id"] == DEFAULT_MODEL  # a Hub id holds a '/'
    with pytest.raises(openai.NotFoundError):
        sdk.models.retrieve("text-embedding-3-small")
    assert [m["id"] for m in http.get("/models").json()["data"]] == [DEFAULT_MODEL]
    reply = http.post("/embeddings", json={"input": TEXTS[:2], "encoding_format": "float"})
    assert_close([d["embedding"] for d in reply.json()["data"]], engine.embed(TEXTS[:2]))
    assert httpx.post(f"{server}/embeddings", json={"input": "hi"}).status_code == 401  # keyed as /v1/embeddings


def test_openai_sdk_default_is_base64(sdk: openai.OpenAI, engine: EmbeddingEngine) -> None:
    raw = sdk.embeddings.with_raw_response.create(model=DEFAULT_MODEL, input=TEXTS)
    assert all(isinstance(d["embedding"], str) for d in raw.http_response.json()["data"])
    reply = raw.parse()
    assert [d.index for d in reply.data] == list(range(len(TEXTS)))
    assert_close([d.embedding for d in reply.data], engine.embed(TEXTS))
    assert reply.usage.prompt_tokens == reply.usage.total_tokens == engine.count_tokens(TEXTS)
    assert reply.model == DEFAULT_MODEL


def test_openai_sdk_float_and_short_alias(sdk: openai.OpenAI, engine: EmbeddingEngine) -> None:
    reply = sdk.embeddings.create(model="all-MiniLM-L6-v2", input=TEXTS[1], encoding_format="float")
    assert_close([reply.data[0].embedding], engine.embed(TEXTS[1:2]))
    assert reply.usage.total_tokens == engine.count_tokens(TEXTS[1:2])


def test_a_reply_sent_as_it_is_encoded_reads_as_one_built_whole(sdk: openai.OpenAI, http: httpx.Client,
                                                                engine: EmbeddingEngine) -> None:
    """A reply of more numbers than one piece (`streamed.PIECE_FLOATS`) is encoded while it is sent; the openai SDK
    reads it as it reads a small one, and it holds what the small one holds, key for key."""
    texts = [f"{text} ({k})" for k in range(8) for text in TEXTS][:60]  # 60 x 384 floats: two pieces
    reply = sdk.embeddings.create(model=DEFAULT_MODEL, input=texts, encoding_format="float")
    assert [d.index for d in reply.data] == list(range(len(texts)))
    assert_close([d.embedding for d in reply.data], engine.embed(texts))
    assert reply.usage.total_tokens == engine.count_tokens(texts) and reply.model == DEFAULT_MODEL
    large = http.post("/v1/embeddings", json={"input": texts, "encoding_format": "float", "precision": "int8"})
    small = http.post("/v1/embeddings", json={"input": texts[:2], "encoding_format": "float", "precision": "int8"})
    assert large.headers["content-type"] == small.headers["content-type"] == "application/json"
    assert list(large.json()) == list(small.json()) and list(large.json()["data"][0]) == list(small.json()["data"][0])
    assert all(isinstance(v, int) for d in large.json()["data"] for v in d["embedding"])
    pooled = http.post("/pooling", json={"input": texts}).json()
    assert [(d["index"], d["object"]) for d in pooled["data"]] == [(i, "pooling") for i in range(len(texts))]
    assert_close([d["data"] for d in pooled["data"]], engine.embed(texts))
    assert list(pooled) == ["id", "object", "created", "model", "data", "usage"]


def test_base64_is_little_endian_float32(http: httpx.Client, engine: EmbeddingEngine) -> None:
    data = http.post("/v1/embeddings", json={"input": TEXTS[:2], "encoding_format": "base64"}).json()["data"]
    got = [np.frombuffer(base64.b64decode(d["embedding"]), "<f4") for d in data]
    assert_close(got, engine.embed(TEXTS[:2]))


def test_both_ways_in_answer_alike(http: httpx.Client, engine: EmbeddingEngine) -> None:
    """A JSON body that validates is answered before FastAPI (`Front`); one with another content type, or that
    pydantic's JSON parser refuses (an escaped lone surrogate, JSON's NaN), goes through FastAPI. Both answer alike."""
    body = json.dumps({"input": TEXTS[:2], "encoding_format": "float"}).encode()
    replies = [http.post("/v1/embeddings", content=body, headers={"Content-Type": kind})
               for kind in ("application/json", "Application/JSON; charset=utf-8", "application/vnd.api+json")]
    for reply in replies:
        assert reply.status_code == 200, reply.text
        assert_close([d["embedding"] for d in reply.json()["data"]], engine.embed(TEXTS[:2]))
        assert reply.json()["usage"] == replies[0].json()["usage"]
    for raw, kind, param in ((b'{"input": ["a\\ud800"]}', "application/json", "input"),
                             (b'{"input": [NaN]}', "application/json", "input"),
                             (body, "text/plain", None), (body, None, None)):
        reply = http.post("/v1/embeddings", content=raw, headers={"Content-Type": kind} if kind else {})
        assert reply.status_code == 400 and reply.json()["error"]["param"] == param, reply.text


def _torch_values(raw: bytes, embed_dtype: str, endianness: str) -> np.ndarray:
    """Values in vLLM's `embed_dtype` and byte order, read back with torch's own types (its float8s included)."""
    import torch

    dtype = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16,
             "fp8_e4m3": torch.float8_e4m3fn, "fp8_e5m2": torch.float8_e5m2}[embed_dtype]
    width = dtype.itemsize
    if endianness == "big":  # torch reads native (little-endian here) bytes
        raw = np.frombuffer(raw, f">u{width}").astype(f"<u{width}").tobytes()
    return torch.frombuffer(bytearray(raw), dtype=torch.uint8).view(dtype).float().numpy()


def _torch_rounded(vectors: np.ndarray, embed_dtype: str) -> np.ndarray:
    import torch

    dtype = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16,
             "fp8_e4m3": torch.float8_e4m3fn, "fp8_e5m2": torch.float8_e5m2}[embed_dtype]
    return torch.from_numpy(np.ascontiguousarray(vectors, np.float32)).to(dtype).float().numpy()


@pytest.mark.parametrize("embed_dtype,endianness", [("float16", "big"), ("bfloat16", "little"), ("float32", "big"),
                                                    ("fp8_e4m3", "little"), ("fp8_e5m2", "big")])
def test_vllm_embed_dtype_and_endianness(http: httpx.Client, engine: EmbeddingEngine, embed_dtype: str,
                                         endianness: str) -> None:
    """As vLLM encodes them: the vectors' values in that type and byte order, rounded as torch rounds."""
    require_oracle()
    data = http.post("/v1/embeddings", json={"input": TEXTS[:2], "encoding_format": "base64",
                                             "embed_dtype": embed_dtype, "endianness": endianness}).json()["data"]
    raw = [base64.b64decode(d["embedding"]) for d in data]
    width = {"float32": 4, "float16": 2, "bfloat16": 2, "fp8_e4m3": 1, "fp8_e5m2": 1}[embed_dtype]
    assert all(len(r) == width * 384 for r in raw)
    got = np.stack([_torch_values(r, embed_dtype, endianness) for r in raw])
    want = _torch_rounded(engine.embed(TEXTS[:2]), embed_dtype)
    np.testing.assert_array_equal(got, want)  # torch's rounding, bit for bit


def test_fp8_values_saturate_rather_than_turn_nan() -> None:
    """fp8_e4m3 has no infinity, and torch turns a value past 464 into NaN; embed gives the largest, 448."""
    from embedder.serve.api import typed_values

    codes = typed_values(np.array([500.0, -1e6, 448.0, 1e-9], np.float32), "fp8_e4m3")
    assert codes.tolist() == [0x7E, 0xFE, 0x7E, 0x00]
    assert typed_values(np.array([1e6], np.float32), "fp8_e5m2").tolist() == [0x7B]  # 57344, not infinity


@pytest.mark.parametrize("path, task", [("/v1/embeddings", None), ("/pooling", "embed"), ("/pooling", "token_embed")])
def test_vllm_bytes_replies(http: httpx.Client, engine: EmbeddingEngine, path: str, task: str | None) -> None:
    """vLLM's `bytes` (the values as the body, a JSON `metadata` header saying where each input's lie) and
    `bytes_only` (the body alone) replies, in each embed_dtype and byte order."""
    require_oracle()
    asked = {"input": TEXTS[:3]} | ({"task": task} if task else {})
    floats = http.post(path, json=asked | {"encoding_format": "float"}).json()["data"]
    want = [np.array(d["embedding" if task is None else "data"], np.float32) for d in floats]
    for embed_dtype, endianness in (("float32", "little"), ("float16", "big"), ("bfloat16", "native"),
                                    ("fp8_e4m3", "big")):
        for encoding in ("bytes", "bytes_only"):
            reply = http.post(path, json=asked | {"encoding_format": encoding, "embed_dtype": embed_dtype,
                                                  "endianness": endianness})
            assert reply.status_code == 200 and reply.headers["content-type"] == "application/octet-stream"
            if encoding == "bytes_only":  # the same body, without the header
                assert "metadata" not in reply.headers and reply.content == described
                continue
            described, metadata = reply.content, json.loads(reply.headers["metadata"])
            assert metadata["model"] == DEFAULT_MODEL and metadata["usage"]["prompt_tokens"] > 0
            assert [item["index"] for item in metadata["data"]] == [0, 1, 2]
            assert metadata["data"][-1]["end"] == len(reply.content)
            for item, expected in zip(metadata["data"], want):
                assert (item["embed_dtype"], item["endianness"]) == (embed_dtype, endianness)
                assert tuple(item["shape"]) == expected.shape
                got = _torch_values(reply.content[item["start"]:item["end"]], embed_dtype, endianness)
                np.testing.assert_array_equal(got.reshape(expected.shape), _torch_rounded(expected, embed_dtype))
    compact = http.post("/v1/embeddings", json={"input": TEXTS[:2], "encoding_format": "bytes", "precision": "int8"})
    assert compact.status_code == 400 and compact.json()["error"]["param"] == "encoding_format"


@pytest.mark.parametrize("nested", [False, True])
def test_token_ids_are_embedded_as_given(http: httpx.Client, engine: EmbeddingEngine, nested: bool) -> None:
    ids = engine.tokenize(TEXTS[:2] if nested else TEXTS[:1])
    reply = http.post("/v1/embeddings", json={"input": ids if nested else ids[0], "model": DEFAULT_MODEL}).json()
    assert_close([d["embedding"] for d in reply["data"]], engine.embed_tokens(ids))
    assert reply["usage"]["prompt_tokens"] == sum(map(len, ids))


def test_dimensions_truncate_then_renormalize(sdk: openai.OpenAI, engine: EmbeddingEngine) -> None:
    reply = sdk.embeddings.create(model=DEFAULT_MODEL, input=TEXTS, dimensions=64)
    got = np.array([d.embedding for d in reply.data])
    assert got.shape == (len(TEXTS), 64)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    assert_close(got, engine.embed(TEXTS, dimensions=64))


def test_long_input_is_truncated_and_counted(http: httpx.Client, engine: EmbeddingEngine) -> None:
    text = "a very long sentence " * 300
    reply = http.post("/v1/embeddings", json={"input": [text]}).json()
    assert reply["usage"]["total_tokens"] == engine.max_length
    assert_close([reply["data"][0]["embedding"]], engine.embed([text]))
    ids = list(range(1000, 1000 + engine.max_length + 50))
    assert http.post("/v1/embeddings", json={"input": ids}).json()["usage"]["total_tokens"] == engine.max_length


def test_curl(server: str, engine: EmbeddingEngine) -> None:
    body = json.dumps({"input": TEXTS[:2], "model": DEFAULT_MODEL})
    out = subprocess.run(
        ["curl", "-sS", "--fail-with-body", f"{server}/v1/embeddings", "-H", "Content-Type: application/json",
         "-H", f"Authorization: Bearer {API_KEY}", "-d", body],
        capture_output=True, check=True, timeout=60,
    ).stdout
    reply = json.loads(out)
    assert reply["object"] == "list" and [d["object"] for d in reply["data"]] == ["embedding", "embedding"]
    assert_close([d["embedding"] for d in reply["data"]], engine.embed(TEXTS[:2]))


@pytest.mark.parametrize("logged", [True, False])
def test_access_log_line_per_request_unless_turned_off(tmp_path: Path, logged: bool) -> None:
    log = tmp_path / "server.log"
    with running_server(*([] if logged else ["--no-access-log"]), log_path=log) as url:
        assert httpx.post(f"{url}/v1/embeddings", json={"input": "hello"}, timeout=60).status_code == 200
    assert ('"POST /v1/embeddings HTTP/1.1" 200' in log.read_text(errors="replace")) == logged


def test_api_key_is_required(server: str) -> None:
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": API_KEY}):
        reply = httpx.post(f"{server}/v1/embeddings", json={"input": "hi"}, headers=headers)
        assert reply.status_code == 401
        assert reply.json()["error"]["type"] == "authentication_error"
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{server}/v1", api_key="wrong", max_retries=0).embeddings.create(
            model=DEFAULT_MODEL, input="hi"
        )


def test_unknown_model_is_404(http: httpx.Client) -> None:
    reply = http.post("/v1/embeddings", json={"input": "hi", "model": "text-embedding-3-small"})
    assert reply.status_code == 404
    assert reply.json()["error"]["param"] == "model" and reply.json()["error"]["code"] == "model_not_found"


def test_64_concurrent_clients_get_their_own_vectors(server: str, engine: EmbeddingEngine) -> None:
    texts = [f"request number {i}: {TEXTS[i % len(TEXTS)]} " + "word " * (i % 17) for i in range(64)]

    async def ask(client: httpx.AsyncClient, text: str) -> list[float]:
        reply = await client.post("/v1/embeddings", json={"input": text})
        assert reply.status_code == 200, reply.text
        return reply.json()["data"][0]["embedding"]

    async def all_at_once() -> list[list[float]]:
        limits = httpx.Limits(max_connections=64)
        headers = {"Authorization": f"Bearer {API_KEY}"}
        async with httpx.AsyncClient(base_url=server, headers=headers, limits=limits, timeout=120) as client:
            return await asyncio.gather(*(ask(client, t) for t in texts))

    assert_close(asyncio.run(all_at_once()), engine.embed(texts))


def test_metrics(server: str, http: httpx.Client) -> None:
    http.post("/v1/embeddings", json={"input": ["one", "two"]})
    text = httpx.get(f"{server}/metrics").text
    assert 'embed_requests_total{path="/v1/embeddings",status="200"}' in text
    assert 'embed_requests_total{path="/v1/embeddings",status="401"}' in text
    for name in ("embed_inputs_total", "embed_tokens_total", "embed_in_flight_inputs 0", "embed_request_seconds_bucket",
                 "embed_engine_queue_rows", "embed_engine_batches_total", 'embed_engine_lanes{model="'):
        assert name in text
    assert [line.split()[-1] for line in text.splitlines() if line.startswith("embed_engine_lanes{")] == ["3"]


def test_prompt_extension_fields(http: httpx.Client, engine: EmbeddingEngine) -> None:
    reply = http.post("/v1/embeddings", json={"input": TEXTS[:2], "prompt": "query: "}).json()
    assert_close([d["embedding"] for d in reply["data"]], engine.embed(TEXTS[:2], prompt="query: "))
    assert reply["usage"]["prompt_tokens"] == engine.count_tokens(TEXTS[:2], prompt="query: ")
    unknown = http.post("/v1/embeddings", json={"input": "x", "prompt_name": "query"})
    assert unknown.status_code == 400 and "prompt_name" in unknown.json()["error"]["message"]


@pytest.mark.parametrize("precision", ["int8", "uint8", "binary", "ubinary"])
def test_compact_vectors_as_sentence_transformers_quantizes_them(http: httpx.Client, precision: str) -> None:
    """The `precision` extension: the request's float vectors through quantize_embeddings (int8/uint8 ranges from
    the request's own vectors), as JSON integers and as base64 bytes."""
    from reference import require_oracle

    require_oracle()
    from sentence_transformers.util.quantization import quantize_embeddings

    floats = np.array([d["embedding"] for d in http.post("/v1/embeddings", json={"input": TEXTS}).json()["data"]],
                      np.float32)
    want = quantize_embeddings(floats, precision=precision)
    as_json = http.post("/v1/embeddings", json={"input": TEXTS, "precision": precision}).json()["data"]
    np.testing.assert_array_equal(np.array([d["embedding"] for d in as_json]), want)
    as_b64 = http.post("/v1/embeddings", json={"input": TEXTS, "precision": precision,
                                               "encoding_format": "base64"}).json()["data"]
    got = np.stack([np.frombuffer(base64.b64decode(d["embedding"]), want.dtype) for d in as_b64])
    np.testing.assert_array_equal(got, want)


def test_int8_needs_more_than_one_vector_for_its_ranges(http: httpx.Client) -> None:
    reply = http.post("/v1/embeddings", json={"input": "alone", "precision": "int8"})
    assert reply.status_code == 400 and reply.json()["error"]["param"] == "precision"


def test_truncate_prompt_tokens_keeps_the_last_tokens_as_vllm(http: httpx.Client, engine: EmbeddingEngine) -> None:
    """vLLM's field: each input's last N tokens of its whole tokenization; -1 is the model's maximum."""
    long_text = "the start of a long text " + "middle words " * 200 + "and its very end"
    whole = engine.model.tokenizer.encode_whole([long_text, TEXTS[0]])
    for n, cut in ((5, 5), (-1, engine.max_length)):
        reply = http.post("/v1/embeddings", json={"input": [long_text, TEXTS[0]], "truncate_prompt_tokens": n}).json()
        kept = [ids[-cut:] for ids in whole]
        assert reply["usage"]["prompt_tokens"] == sum(map(len, kept))
        assert_close([d["embedding"] for d in reply["data"]], engine.embed_tokens(kept))
    by_ids = http.post("/v1/embeddings", json={"input": [whole[1]], "truncate_prompt_tokens": 3}).json()
    assert_close([by_ids["data"][0]["embedding"]], engine.embed_tokens([whole[1][-3:]]))
    for bad in (0, -2, engine.max_length + 1):
        reply = http.post("/v1/embeddings", json={"input": "hi", "truncate_prompt_tokens": bad})
        assert reply.status_code == 400 and reply.json()["error"]["param"] == "truncate_prompt_tokens"


# ---- Text Embeddings Inference's API ------------------------------------------------------------------------

def test_tei_embed_as_text_embeddings_inference(http: httpx.Client, engine: EmbeddingEngine) -> None:
    for path in ("/embed", "/"):  # TEI serves its model's task on its root too
        reply = http.post(path, json={"inputs": TEXTS})
        assert reply.status_code == 200, reply.text
        assert_close(reply.json(), engine.embed(TEXTS))
    assert_close(http.post("/embed", json={"inputs": TEXTS[0]}).json(), engine.embed(TEXTS[:1]))
    raw = np.array(http.post("/embed", json={"inputs": TEXTS[:2], "normalize": False}).json())
    np.testing.assert_allclose(raw, engine.embed(TEXTS[:2], normalize=False), rtol=1e-4, atol=1e-5)
    assert np.linalg.norm(raw, axis=1).min() > 1.5  # MiniLM's pooled vectors before its Normalize module
    short = np.array(http.post("/embed", json={"inputs": TEXTS[:1], "dimensions": 64}).json())
    assert short.shape == (1, 64)
    long_text = " ".join(f"word{i}" for i in range(600))
    left = http.post("/embed", json={"inputs": [long_text], "truncation_direction": "Left"}).json()
    last = http.post("/v1/embeddings", json={"input": [long_text], "truncate_prompt_tokens": -1}).json()
    assert_close(left, [last["data"][0]["embedding"]])
    for truncate in (None, True):  # absent or true: cut, as this server cuts
        asked = {"inputs": [TEXTS[0], long_text]} | ({} if truncate is None else {"truncate": truncate})
        assert_close(http.post("/embed", json=asked).json(), engine.embed([TEXTS[0], long_text]))
    refused = http.post("/embed", json={"inputs": [TEXTS[0], long_text], "truncate": False})
    assert refused.status_code == 422 and refused.json()["error_type"] == "Validation"  # as TEI answers
    assert refused.json()["error"].startswith("input 1 has ")
    assert http.post("/embed", json={"inputs": TEXTS, "truncate": False}).status_code == 200


def test_tei_clients_and_info(server: str, http: httpx.Client, engine: EmbeddingEngine,
                              monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub.constants
    from huggingface_hub import InferenceClient

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)  # a loopback server, not the Hub
    client = InferenceClient(base_url=server, api_key=API_KEY)
    assert_close(client.feature_extraction(TEXTS[:2]), engine.embed(TEXTS[:2]))
    vectors = engine.embed(TEXTS[:3])
    similar = client.sentence_similarity(TEXTS[0], other_sentences=TEXTS[1:3])  # TEI's root route, as /similarity
    np.testing.assert_allclose(similar, vectors[1:] @ vectors[0], atol=1e-5)
    direct = http.post("/similarity", json={"inputs": {"source_sentence": TEXTS[0], "sentences": TEXTS[1:3]}})
    np.testing.assert_allclose(direct.json(), similar, atol=1e-6)
    empty = http.post("/similarity", json={"inputs": {"source_sentence": TEXTS[0], "sentences": []}})
    assert empty.status_code == 400 and empty.json()["error_type"] == "Empty"
    info = http.get("/info").json()
    assert info["model_type"] == {"embedding": {"pooling": "mean"}}
    assert info["max_input_length"] == engine.max_length and info["max_client_batch_size"] == 2048
    assert info["model_dtype"] == engine.info()["dtype"] == "float32"


def test_vllm_use_activation_false_gives_the_pooled_vectors_unnormalized(http: httpx.Client,
                                                                        minilm_path: Path) -> None:
    """vLLM's `use_activation` (and its older `normalize`) false on /v1/embeddings and /pooling: each vector as
    the pooling made it, sentence-transformers' Transformer and Pooling modules without its Normalize."""
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(minilm_path), device="cpu")
    pooled = SentenceTransformer(modules=[model[0], model[1]], device="cpu").encode(TEXTS[:2])
    assert np.all(np.linalg.norm(pooled, axis=1) > 1.5)  # unnormalized, so the check below can fail
    for field in ("use_activation", "normalize"):
        for path, key in (("/v1/embeddings", "embedding"), ("/pooling", "data"), ("/invocations", "embedding")):
            reply = http.post(path, json={"input": TEXTS[:2], field: False, "encoding_format": "float"})
            np.testing.assert_allclose([d[key] for d in reply.json()["data"]], pooled, rtol=1e-4, atol=1e-4)
    kept = http.post("/v1/embeddings", json={"input": TEXTS[:2], "use_activation": True, "encoding_format": "float"})
    assert_close([d["embedding"] for d in kept.json()["data"]], pooled / np.linalg.norm(pooled, axis=1)[:, None])


def test_sagemaker_invocations_and_ping_as_tei_and_vllm(server: str, http: httpx.Client,
                                                        engine: EmbeddingEngine) -> None:
    """SageMaker's /invocations answers by the body, as vLLM's does (OpenAI's `input`, vLLM's /pooling and /score)
    and TEI's (`inputs`, as its root route); /ping (GET or POST) and TEI's GET / are health checks."""
    vectors = engine.embed(TEXTS[:3])
    openai_body = http.post("/invocations", json={"input": TEXTS[:2], "encoding_format": "float"}).json()
    assert openai_body["object"] == "list" and openai_body["id"].startswith("embd-") and openai_body["created"] > 0
    assert_close([d["embedding"] for d in openai_body["data"]], vectors[:2])
    assert_close(http.post("/invocations", json={"inputs": TEXTS[:2]}).json(), vectors[:2])
    pooled = http.post("/invocations", json={"input": TEXTS[:2], "task": "embed"}).json()
    assert pooled["id"].startswith("pool-") and [d["object"] for d in pooled["data"]] == ["pooling"] * 2
    scored = http.post("/invocations", json={"text_1": TEXTS[0], "text_2": TEXTS[1:3]}).json()
    np.testing.assert_allclose([d["score"] for d in scored["data"]], vectors[1:] @ vectors[0], atol=1e-5)
    tei_refused = http.post("/invocations", json={"inputs": []})
    assert tei_refused.status_code == 400 and tei_refused.json()["error_type"] == "Empty"
    openai_refused = http.post("/invocations", json={"input": []})
    assert openai_refused.status_code == 400 and openai_refused.json()["error"]["param"] == "input"
    assert httpx.post(f"{server}/invocations", json={"input": "hi"}).status_code == 401  # keyed as /v1
    for method, path in (("GET", "/ping"), ("POST", "/ping"), ("GET", "/")):
        assert httpx.request(method, f"{server}{path}").status_code == 200  # open to probes, as /health


def test_tei_options_where_tei_takes_them(http: httpx.Client, engine: EmbeddingEngine) -> None:
    """/similarity's options in `parameters`, /tokenize's `prompt_name`, and TEI's 400s: an empty text or id list,
    a body that is not JSON."""
    long_text = "word " * 400
    sentences = {"source_sentence": long_text, "sentences": TEXTS[:2]}
    assert http.post("/similarity", json={"inputs": sentences}).status_code == 200  # cut, as this server cuts
    refused = http.post("/similarity", json={"inputs": sentences, "parameters": {"truncate": False}})
    assert refused.status_code == 422 and refused.json()["error"].startswith("input 0 has "), refused.text
    unknown = http.post("/similarity", json={"inputs": sentences, "parameters": {"prompt_name": "query"}})
    assert unknown.status_code == 422 and "unknown prompt_name 'query'" in unknown.json()["error"]
    unknown = http.post("/tokenize", json={"inputs": "hello", "prompt_name": "query"})
    assert unknown.status_code == 422 and "unknown prompt_name 'query'" in unknown.json()["error"]
    for path, body in (("/predict", {"inputs": ""}), ("/tokenize", {"inputs": ""}), ("/tokenize", {"inputs": []}),
                       ("/decode", {"ids": [[]]}), ("/decode", {"ids": []}), ("/embed", {"inputs": ""})):
        reply = http.post(path, json=body)
        assert reply.status_code == 400 and reply.json()["error_type"] == "Empty", (path, body, reply.text)
    for raw in (b'{"inputs": "a"', b'"a"'):
        reply = http.post("/embed", content=raw, headers={"Content-Type": "application/json"})
        assert reply.status_code == 400 and reply.json()["error_type"] == "Validation", reply.text
    assert http.get("/info").json()["served_model_name"] == DEFAULT_MODEL


def test_cohere_embed_with_the_cohere_sdk(server: str, engine: EmbeddingEngine) -> None:
    """Cohere's /v2/embed (as vLLM serves it) and /v1/embed, through the cohere SDK: every embedding type, the
    compact ones as sentence-transformers' quantize_embeddings makes them, and Cohere's truncate."""
    require_oracle()
    import cohere
    from sentence_transformers.quantization import quantize_embeddings

    client = cohere.ClientV2(api_key=API_KEY, base_url=server)
    types = ["float", "int8", "uint8", "binary", "ubinary", "base64"]
    reply = client.embed(texts=TEXTS[:3], model=DEFAULT_MODEL, input_type="search_document", embedding_types=types)
    vectors = engine.embed(TEXTS[:3])
    assert_close(reply.embeddings.float_, vectors)
    for kind in ("int8", "uint8", "binary", "ubinary"):
        np.testing.assert_array_equal(getattr(reply.embeddings, kind), quantize_embeddings(vectors, kind))
    decoded = [np.frombuffer(base64.b64decode(b), "<f4") for b in reply.embeddings.base64]
    np.testing.assert_array_equal(decoded, np.array(reply.embeddings.float_, np.float32))
    assert reply.texts == TEXTS[:3] and reply.meta.api_version.version == "2"
    assert reply.meta.billed_units.input_tokens == reply.meta.tokens.input_tokens == engine.count_tokens(TEXTS[:3])
    v1 = cohere.Client(api_key=API_KEY, base_url=server).embed(texts=TEXTS[:2], model=DEFAULT_MODEL,
                                                               input_type="search_query")
    assert v1.response_type == "embeddings_floats" and v1.meta.api_version.version == "1"
    assert_close(v1.embeddings, vectors[:2])
    long_text = " ".join(f"alpha{i}" for i in range(300)) + " " + " ".join(f"omega{i}" for i in range(300))
    cut = {t: client.embed(texts=[long_text], model=DEFAULT_MODEL, input_type="search_query", embedding_types=["float"],
                           truncate=t).embeddings.float_[0] for t in ("END", "START")}
    assert_close([cut["END"]], engine.embed([long_text]))
    assert_close([cut["START"]], engine.submit(engine.tokenize([long_text], keep_last=engine.max_length)).result())
    with pytest.raises(cohere.BadRequestError, match="more than the model's maximum of 256"):
        client.embed(texts=[long_text], model=DEFAULT_MODEL, input_type="search_query", truncate="NONE")
    with pytest.raises(cohere.BadRequestError, match="Unsupported input_type 'nonexistent_type'"):
        client.embed(texts=["a"], model=DEFAULT_MODEL, input_type="nonexistent_type", embedding_types=["float"])
    with pytest.raises(cohere.BadRequestError, match="at least two inputs"):
        client.embed(texts=["a"], model=DEFAULT_MODEL, input_type="search_query", embedding_types=["int8"])
    with pytest.raises(cohere.BadRequestError, match="is a text model: it embeds no images"):
        client.embed(images=["data:image/png;base64,iVBORw0KGgo="], model=DEFAULT_MODEL, input_type="image")


def test_cohere_input_types_name_the_models_prompts() -> None:
    from embedder.serve.api import cohere_prompt_name

    prompts = {"query": "query: ", "passage": "passage: ", "classification": "topic: "}
    assert cohere_prompt_name("search_query", prompts) == "query"
    assert cohere_prompt_name("search_document", prompts) == "passage"
    assert cohere_prompt_name("classification", prompts) == "classification"
    assert cohere_prompt_name("clustering", prompts) is None  # Cohere's, where the model has no such prompt
    assert cohere_prompt_name("passage", prompts) == "passage"  # the model's own name
    assert cohere_prompt_name(None, prompts) is None
    with pytest.raises(InputError, match="Unsupported input_type 'topic'"):
        cohere_prompt_name("topic", prompts)


def test_infinity_client_defaults(http: httpx.Client, engine: EmbeddingEngine) -> None:
    """What infinity's generated client sends unless told otherwise: the model "default/not-specified", and
    `dimensions` 0 for the model's own."""
    reply = http.post("/embeddings", json={"input": TEXTS[:2], "model": "default/not-specified", "dimensions": 0,
                                           "modality": "text", "encoding_format": "float"})
    assert reply.status_code == 200 and reply.json()["model"] == DEFAULT_MODEL
    assert_close([d["embedding"] for d in reply.json()["data"]], engine.embed(TEXTS[:2]))
    zero = http.post("/v1/embeddings", json={"input": TEXTS[:2], "dimensions": 0})  # OpenAI's route refuses it
    assert zero.status_code == 400 and zero.json()["error"]["param"] == "dimensions"


@pytest.mark.parametrize("request_body, status, error_type, named", [
    ({"inputs": []}, 400, "Empty", "'inputs' is an empty list"),
    ({"inputs": ["a", ""]}, 400, "Empty", "input 1 is empty"),
    ({"inputs": 7}, 422, "Validation", "'inputs'"),
    ({"inputs": "a", "normalize": "yes"}, 422, "Validation", "'normalize'"),
    ({"inputs": "a", "truncation_direction": "Up"}, 422, "Validation", "'truncation_direction'"),
    ({"inputs": "a", "dimensions": 5000}, 422, "Validation", "dimensions must be between 1 and 384"),
])
def test_tei_embed_refuses_bad_requests_as_tei(http: httpx.Client, request_body: dict, status: int, error_type: str,
                                               named: str) -> None:
    """TEI's routes answer in TEI's error shape and statuses (`{"error": ..., "error_type": ...}`: Empty 400, its JSON
    extractor 422, Validation 422 since TEI 1.9), which huggingface_hub's InferenceClient reads; the message names the field."""
    reply = http.post("/embed", json=request_body)
    assert reply.status_code == status, reply.text
    assert set(reply.json()) == {"error", "error_type"} and reply.json()["error_type"] == error_type
    assert named in reply.json()["error"]


def test_tei_routes_need_the_api_key(server: str) -> None:
    for method, path in (("POST", "/embed"), ("POST", "/"), ("GET", "/info")):
        reply = httpx.request(method, f"{server}{path}", json={"inputs": "hi"})
        assert reply.status_code == 401, (path, reply.text)


def test_tokenize_and_detokenize_as_vllm(http: httpx.Client, engine: EmbeddingEngine) -> None:
    text = "Tokenize me, please: naïve café 🙂 " + "word " * 300  # past max length: never cut here
    reply = http.post("/tokenize", json={"prompt": text}).json()
    whole = engine.model.tokenizer.encode_whole([text])[0]
    assert reply["tokens"] == whole and reply["count"] == len(whole) > engine.max_length
    assert reply["max_model_len"] == engine.max_length
    bare = http.post("/tokenize", json={"prompt": "hello world", "add_special_tokens": False}).json()["tokens"]
    assert bare == engine.tokenize(["hello world"])[0][1:-1]  # without [CLS] and [SEP]
    back = http.post("/detokenize", json={"tokens": engine.tokenize(["hello world"])[0]}).json()
    assert back == {"prompt": "[CLS] hello world [SEP]"}


def test_tokenize_and_decode_as_text_embeddings_inference(http: httpx.Client, engine: EmbeddingEngine,
                                                         minilm_path: Path) -> None:
    from tokenizers import Tokenizer

    texts = ["Hello, wörld!", "émoji 🙂 here"]
    reply = http.post("/tokenize", json={"inputs": texts}).json()
    oracle = Tokenizer.from_file(str(minilm_path / "tokenizer.json"))
    oracle.no_truncation()
    oracle.no_padding()
    for text, tokens in zip(texts, reply):
        want = oracle.encode(text)
        assert [t["id"] for t in tokens] == want.ids
        assert [t["special"] for t in tokens] == [bool(m) for m in want.special_tokens_mask]
        assert tokens[0] == {"id": 101, "text": "[CLS]", "special": True, "start": None, "stop": None}
        for token, (start, stop) in zip(tokens[1:-1], want.offsets[1:-1]):  # TEI's spans count UTF-8 bytes
            at = len(text[:start].encode()), len(text[:stop].encode())
            assert (token["start"], token["stop"]) == at and token["text"] == text.encode()[at[0]:at[1]].decode()
            assert token["text"] == text[start:stop]
    decoded = http.post("/decode", json={"ids": [engine.tokenize(t)[0] for t in (["hello world"], ["a b"])]}).json()
    assert decoded == ["hello world", "a b"]
    assert http.post("/decode", json={"ids": [7592, 2088]}).json() == ["hello world"]


def test_tokenize_streams_long_texts_and_refuses_what_tei_refuses(http: httpx.Client, minilm_path: Path) -> None:
    """TEI's /tokenize of texts past 4,096 characters is sent a text at a time, as the same JSON; a text of more than
    250 characters a token of the model's length is refused, as TEI refuses it (vLLM's `prompt` too)."""
    from tokenizers import Tokenizer

    oracle = Tokenizer.from_file(str(minilm_path / "tokenizer.json"))
    oracle.no_truncation()
    oracle.no_padding()
    texts = [" ".join(f"wörd{i}" for i in range(n)) for n in (900, 1, 1200)]
    reply = http.post("/tokenize", json={"inputs": texts})
    assert reply.status_code == 200 and "content-length" not in reply.headers  # streamed
    for text, tokens in zip(texts, reply.json()):
        assert [t["id"] for t in tokens] == oracle.encode(text).ids
        assert all(text.encode()[t["start"]:t["stop"]].decode() == t["text"] for t in tokens if not t["special"])
    too_long = "a " * 32_001  # 64,002 characters; MiniLM's 256 tokens take 64,000
    refused = http.post("/tokenize", json={"inputs": ["ok", too_long]})
    assert refused.status_code == 422 and refused.json()["error"].startswith("input 1 has 64,002 characters")
    refused = http.post("/tokenize", json={"prompt": too_long})
    assert refused.status_code == 400 and refused.json()["error"]["param"] == "prompt"


def test_score_as_vllm_with_an_embedding_model(http: httpx.Client, engine: EmbeddingEngine) -> None:
    """vLLM's /score on an embedding model: each pair's cosine similarity, one text_1 against every text_2 or the
    lists paired."""
    vectors = engine.embed(TEXTS[:3])
    one = http.post("/score", json={"text_1": TEXTS[0], "text_2": TEXTS[1:3]}).json()
    assert one["object"] == "list" and one["id"].startswith("score-") and one["model"] == DEFAULT_MODEL
    assert [d["index"] for d in one["data"]] == [0, 1]
    np.testing.assert_allclose([d["score"] for d in one["data"]], vectors[1:3] @ vectors[0], atol=1e-5)
    paired = http.post("/v1/score", json={"text_1": TEXTS[:2], "text_2": TEXTS[1:3]}).json()
    np.testing.assert_allclose([d["score"] for d in paired["data"]],
                               [vectors[0] @ vectors[1], vectors[1] @ vectors[2]], atol=1e-5)
    assert paired["usage"]["total_tokens"] == engine.count_tokens(TEXTS[:3])


@pytest.mark.parametrize("path, body, param", [
    ("/tokenize", {"prompt": "a", "inputs": "b"}, "inputs"),  # TEI's field: TEI's shape
    ("/tokenize", {}, "prompt"),
    ("/tokenize", {"prompt": "a\ud800"}, None),
    ("/detokenize", {"tokens": [101, 10_000_000]}, "tokens"),
    ("/decode", {"ids": [[-1]]}, "ids"),
    ("/decode", {"ids": []}, "ids"),
    ("/score", {"text_1": ["a", "b"], "text_2": ["c", "d", "e"]}, "text_1"),
    ("/score", {"text_1": "a", "text_2": []}, "text_2"),
    ("/score", {"text_1": " ", "text_2": "b"}, "text_1"),
])
def test_tokenize_decode_and_score_refuse_bad_requests(http: httpx.Client, path: str, body: dict,
                                                       param: str | None) -> None:
    """vLLM's requests get OpenAI's error shape (a 400 naming the field); TEI's (/decode, /tokenize with `inputs`)
    TEI's, whose message names it."""
    reply = http.post(path, content=json.dumps(body), headers={"Content-Type": "application/json"})
    if path == "/decode" or "inputs" in body:
        assert reply.status_code in (400, 422) and reply.json()["error_type"], reply.text
        assert param in reply.json()["error"]
        return
    assert reply.status_code == 400, reply.text
    assert reply.json()["error"]["param"] == param and reply.json()["error"]["message"]


def test_bodies_over_a_megabyte_are_answered_as_small_ones(http: httpx.Client, engine: EmbeddingEngine) -> None:
    """Large bodies are parsed and checked off the event loop (32 MB of token ids once stalled every other request
    for seconds); what they get back is what a small body gets."""
    ids = [101] + [7592] * 600_000 + [102]  # ~4.2 MB of JSON
    reply = http.post("/v1/embeddings", json={"input": [ids], "encoding_format": "float"})
    assert reply.status_code == 200, reply.text
    assert reply.json()["usage"]["total_tokens"] == engine.max_length  # cut, as a short list past the limit is
    assert_close([reply.json()["data"][0]["embedding"]], engine.submit([ids[:engine.max_length]]).result())
    bad = http.post("/v1/embeddings", json={"input": [ids], "dimensions": "8"})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "dimensions", bad.text
    negative = http.post("/v1/embeddings", json={"input": [ids[:-1] + [-1]]})
    assert negative.status_code == 400 and negative.json()["error"]["param"] == "input", negative.text


def test_cors_only_for_the_origins_allowed() -> None:
    """A browser's preflight (no API key) and its request get the CORS headers for an allowed origin; other origins
    and servers without --cors-allow-origin get none."""
    with running_server("--cors-allow-origin", "https://app.example", "--api-key", API_KEY) as url:
        asked = {"Origin": "https://app.example", "Access-Control-Request-Method": "POST",
                 "Access-Control-Request-Headers": "authorization, content-type"}
        preflight = httpx.options(f"{url}/v1/embeddings", headers=asked)
        assert preflight.status_code == 200
        assert preflight.headers["access-control-allow-origin"] == "https://app.example"
        reply = httpx.post(f"{url}/v1/embeddings", json={"input": "hi"},
                           headers={"Origin": "https://app.example", "Authorization": f"Bearer {API_KEY}"})
        assert reply.status_code == 200 and reply.headers["access-control-allow-origin"] == "https://app.example"
        other = httpx.options(f"{url}/v1/embeddings", headers={**asked, "Origin": "https://evil.example"})
        assert "access-control-allow-origin" not in other.headers


def test_pooling_as_vllm(http: httpx.Client, engine: EmbeddingEngine) -> None:
    """vLLM's /pooling: an embeddings request answered as `data` lists of pooled vectors, base64 too."""
    reply = http.post("/pooling", json={"input": TEXTS[:2], "encoding_format": "float"}).json()
    assert reply["object"] == "list" and reply["id"].startswith("pool-") and reply["model"] == DEFAULT_MODEL
    assert [(d["index"], d["object"]) for d in reply["data"]] == [(0, "pooling"), (1, "pooling")]
    assert_close([d["data"] for d in reply["data"]], engine.embed(TEXTS[:2]))
    assert reply["usage"]["total_tokens"] == engine.count_tokens(TEXTS[:2])
    packed = http.post("/pooling", json={"input": TEXTS[:1], "encoding_format": "base64"}).json()["data"][0]["data"]
    assert_close([np.frombuffer(base64.b64decode(packed), "<f4")], engine.embed(TEXTS[:1]))
    refused = http.post("/pooling", json={"input": []})
    assert refused.status_code == 400 and refused.json()["error"]["param"] == "input"


def test_pooling_tasks_as_vllm(http: httpx.Client, engine: EmbeddingEngine) -> None:
    """vLLM's /pooling `task`: token_embed gives each token's vector, L2-normalized per token (raw with
    use_activation false); a task embed does not run is refused, naming the field."""
    tokens = http.post("/pooling", json={"input": TEXTS[:2], "task": "token_embed"})
    assert tokens.status_code == 200, tokens.text
    want = engine.token_embeddings(TEXTS[:2])
    for got, w in zip([d["data"] for d in tokens.json()["data"]], want):
        np.testing.assert_allclose(got, w / np.linalg.norm(w, axis=1, keepdims=True), atol=1e-5)
    assert tokens.json()["usage"]["total_tokens"] == sum(map(len, want))
    assert set(tokens.json()) == {"id", "object", "created", "model", "data", "usage"}
    assert tokens.json()["id"].startswith("pool-") and tokens.json()["model"] == DEFAULT_MODEL
    assert [(d["index"], d["object"]) for d in tokens.json()["data"]] == [(0, "pooling"), (1, "pooling")]
    raw = http.post("/pooling", json={"input": TEXTS[:1], "task": "token_embed", "use_activation": False,
                                      "encoding_format": "base64"}).json()["data"][0]["data"]
    np.testing.assert_allclose(np.frombuffer(base64.b64decode(raw), "<f4").reshape(want[0].shape), want[0], atol=1e-5)
    embedded = http.post("/pooling", json={"input": TEXTS[:1], "task": "embed"}).json()["data"][0]["data"]
    assert_close([embedded], engine.embed(TEXTS[:1]))
    for body, message in (({"input": "a", "task": "token_classify"}, "'task'"),
                          ({"input": "a", "task": "token_embed", "dimensions": 8}, "'dimensions' applies to pooled"),
                          ({"input": "a", "task": "classify"}, "is an embedding model, with no labels")):
        refused = http.post("/pooling", json=body)
        assert refused.status_code == 400 and message in refused.json()["error"]["message"], refused.text
