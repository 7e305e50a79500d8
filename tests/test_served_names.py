"""Serving a model under the names clients already use (`--served-model-name`, NAME=MODEL, "default"), through a
real `embed serve` on loopback driven by the openai SDK and curl."""

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
from test_server import API_KEY, SERVE, TEXTS, assert_close, running_server

from embedder import DEFAULT_MODEL, EmbeddingEngine
from embedder.errors import InputError
from embedder.serve.registry import build_registry


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    with running_server(f"text-embedding-3-small={DEFAULT_MODEL}", "--served-model-name", "text-embedding-ada-002",
                        "--api-key", API_KEY) as url:
        yield url


def test_openai_model_names_answer_and_are_echoed(server: str, engine: EmbeddingEngine) -> None:
    sdk = openai.OpenAI(base_url=f"{server}/v1", api_key=API_KEY, max_retries=0)
    for name in ("text-embedding-3-small", "text-embedding-ada-002", DEFAULT_MODEL):
        reply = sdk.embeddings.create(model=name, input=TEXTS[:2])
        assert reply.model == name
        assert_close([d.embedding for d in reply.data], engine.embed(TEXTS[:2]))
    assert [m.id for m in sdk.models.list().data] == ["text-embedding-3-small", "text-embedding-ada-002"]
    with pytest.raises(openai.NotFoundError):
        sdk.embeddings.create(model="text-embedding-3-large", input="hi")


def test_llm_asks_for_text_embedding_3_small_through_openai_base_url(server: str, engine: EmbeddingEngine,
                                                                     tmp_path) -> None:
    """simonw's llm, unchanged, with its own OpenAI model `3-small`: only OPENAI_BASE_URL points it here."""
    llm = Path(sys.executable).with_name("llm")
    if not llm.exists():
        pytest.skip("llm is not installed (the test extra)")
    env = {**os.environ, "OPENAI_BASE_URL": f"{server}/v1", "OPENAI_API_KEY": API_KEY, "LLM_USER_PATH": str(tmp_path)}
    out = subprocess.run([str(llm), "embed", "-m", "3-small", "-c", TEXTS[0]], env=env, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert_close([json.loads(out.stdout)], engine.embed(TEXTS[:1]))


def test_default_names_the_first_model_as_candle_vllms_curl_example(server: str, engine: EmbeddingEngine) -> None:
    body = json.dumps({"model": "default", "input": ["This is a test sentence.", "And another one."]})
    out = subprocess.run(
        ["curl", "-sS", "--fail-with-body", f"{server}/v1/embeddings", "-H", "Content-Type: application/json",
         "-H", f"Authorization: Bearer {API_KEY}", "-d", body], capture_output=True, check=True, timeout=60).stdout
    reply = json.loads(out)
    assert reply["model"] == "text-embedding-3-small"
    assert_close([d["embedding"] for d in reply["data"]], engine.embed(["This is a test sentence.", "And another one."]))
    health = httpx.get(f"{server}/health").json()
    assert health["models"] == ["text-embedding-3-small"]


def test_names_are_grouped_per_model_and_conflicts_refused(minilm_path) -> None:
    model = str(minilm_path)
    registry = build_registry([f"a={model}", f"b={model}", model])
    assert len(registry.models) == 1 and registry.models[0].served_names == ("a", "b")
    assert registry.resolve("b") is registry.resolve("default") is registry.models[0]
    pinned = build_registry([f"small={model}"], embedding_model=model, served_model_names=["big"])
    assert pinned.models[0].served_names == ("small", "big") and pinned.pinned
    with pytest.raises(InputError, match="names one model"):
        build_registry([model, DEFAULT_MODEL], served_model_names=["x"])
    with pytest.raises(InputError, match="given to both"):
        build_registry([f"x={model}", f"x={DEFAULT_MODEL}"])


def test_vllm_mlx_documented_examples_run_as_written(tmp_path, minilm_path) -> None:
    """vllm-mlx's embeddings guide, with the 4-bit MiniLM made by `embed convert --quantize 4` and served under its
    mlx-community name: the OpenAI SDK calls and the curl call as the guide writes them."""
    q4 = tmp_path / "all-MiniLM-L6-v2-4bit"
    subprocess.run([*SERVE[:-1], "convert", str(minilm_path), "-o", str(q4), "--quantize", "4"], check=True, timeout=300,
                   capture_output=True)
    name = "mlx-community/all-MiniLM-L6-v2-4bit"
    with running_server("--embedding-model", f"{name}={q4}") as url:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="not-needed")
        response = client.embeddings.create(model=name, input="Hello world")
        assert len(response.data[0].embedding[:5]) == 5 and response.model == name
        texts = ["I love machine learning", "Deep learning is fascinating", "Natural language processing rocks"]
        response = client.embeddings.create(model=name, input=texts)
        assert [len(item.embedding) for item in response.data] == [384, 384, 384]
        quantized = EmbeddingEngine(str(q4))
        assert_close([item.embedding for item in response.data], quantized.embed(texts))
        quantized.unload()
        out = subprocess.run(["curl", "-sS", "--fail-with-body", f"{url}/v1/embeddings", "-H",
                              "Content-Type: application/json", "-d",
                              json.dumps({"model": name, "input": ["Hello world", "How are you?"]})],
                             capture_output=True, check=True, timeout=60).stdout
        assert [d["index"] for d in json.loads(out)["data"]] == [0, 1]
