"""The llm plugin (the real `llm` command), LangChain and LlamaIndex adapters: the engine's vectors, prompts mapped."""

import asyncio
import csv
import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from reference import cosine
from tiny_models import save_sentence_transformer, tiny_encoder

for _framework in ("llm", "langchain_core", "llama_index.core"):  # the test extra; skipped, visibly, without it
    pytest.importorskip(_framework)

from embedder import EmbeddingEngine  # noqa: E402
from embedder.integrations import llm_plugin  # noqa: E402
from embedder.integrations.langchain import EmbedEmbeddings  # noqa: E402
from embedder.integrations.llama_index import EmbedEmbedding  # noqa: E402

pytestmark = pytest.mark.slow

LLM = Path(sys.executable).with_name("llm")
MODEL_ID = "embed/all-MiniLM-L6-v2"
DOCS = {
    "cat": "The cat sat on the mat and purred.",
    "stocks": "Stock markets fell sharply after the central bank raised rates.",
    "python": "Python is a programming language with dynamic typing.",
    "rain": "Heavy rain is expected across the north this weekend.",
    "emoji": "Party time 🎉 with café crème and 中文 too",
}
QUERY = "a kitten napping on a rug"
TEXTS = ["Hello world", "中文句子，还有一些日本語のテキスト。", "Emoji 🎉 café e\u0301", "long " * 300]
PROMPTS = {"query": "query: ", "passage": "passage: "}  # "passage", not "document": the fallback name


def llm_cli(*args: str, user_dir: Path) -> str:
    env = {k: v for k, v in os.environ.items() if k != llm_plugin.MODELS_ENV}
    env.update(HF_HUB_OFFLINE="1", LLM_USER_PATH=str(user_dir))
    result = subprocess.run([str(LLM), *args], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_llm_lists_and_embeds(tmp_path, engine):
    assert MODEL_ID in llm_cli("embed-models", user_dir=tmp_path)
    vector = np.array([json.loads(llm_cli("embed", "-m", MODEL_ID, "-c", "hello", user_dir=tmp_path))])
    assert vector.shape == (1, 384)
    assert cosine(vector, engine.embed(["hello"]))[0] >= 0.9999


def test_llm_embed_multi_and_similar(tmp_path, engine):
    source = tmp_path / "docs.csv"
    with source.open("w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows([("id", "content"), *DOCS.items()])
    db = tmp_path / "embeddings.db"
    # Batches of 2 over 5 rows: the plugin must keep each slice's order.
    llm_cli("embed-multi", "docs", str(source), "-m", MODEL_ID, "-d", str(db), "--batch-size", "2", user_dir=tmp_path)
    with sqlite3.connect(db) as conn:
        stored = dict(conn.execute("select id, embedding from embeddings").fetchall())
    assert set(stored) == set(DOCS)
    got = np.stack([np.frombuffer(stored[i], "<f4") for i in DOCS])
    assert cosine(got, engine.embed(list(DOCS.values()))).min() >= 0.9999

    lines = llm_cli("similar", "docs", "-c", QUERY, "-d", str(db), user_dir=tmp_path).splitlines()
    ranked = [json.loads(line)["id"] for line in lines]
    scores = engine.embed(list(DOCS.values())) @ engine.embed([QUERY])[0]
    assert ranked[0] == "cat" == list(DOCS)[int(np.argmax(scores))]


def test_llm_finds_env_and_cached_models(tmp_path, monkeypatch):
    import huggingface_hub.constants

    for repo in ("BAAI--bge-small-en-v1.5", "someone--all-MiniLM-L6-v2"):
        snapshot = tmp_path / f"models--{repo}" / "snapshots" / "abc123"
        snapshot.mkdir(parents=True)
        (snapshot / "modules.json").write_text("[]")
    (tmp_path / "models--gpt2" / "snapshots" / "abc123").mkdir(parents=True)  # no modules.json: not an embedder
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setenv(llm_plugin.MODELS_ENV, " intfloat/e5-small-v2, all-MiniLM-L6-v2 ,/models/my-model")
    assert llm_plugin.local_models() == {
        "embed/all-MiniLM-L6-v2": "sentence-transformers/all-MiniLM-L6-v2",
        "embed/e5-small-v2": "intfloat/e5-small-v2",
        "embed/my-model": "/models/my-model",
        "embed/bge-small-en-v1.5": "BAAI/bge-small-en-v1.5",
        "embed/someone/all-MiniLM-L6-v2": "someone/all-MiniLM-L6-v2",
    }


@pytest.fixture(scope="module")
def prompted(tmp_path_factory, minilm_path) -> Path:
    """A tiny random BERT whose config_sentence_transformers.json names a query and a passage prompt."""
    work = tmp_path_factory.mktemp("prompted")
    path = save_sentence_transformer(tiny_encoder("bert", minilm_path, work), work / "st", "mean", True,
                                     max_seq_length=64, prompts=PROMPTS)
    config = path / "config_sentence_transformers.json"  # sentence-transformers 6 adds "document": "" on save;
    config.write_text(json.dumps({**json.loads(config.read_text()), "prompts": PROMPTS}))  # older models lack it
    return path


def check_adapter(query: list[float], documents: list[list[float]], engine: EmbeddingEngine, query_name=None,
                  document_name=None) -> None:
    assert cosine(np.array([query]), engine.embed([TEXTS[0]], prompt_name=query_name)).min() >= 0.9999
    assert cosine(np.array(documents), engine.embed(TEXTS, prompt_name=document_name)).min() >= 0.9999


async def langchain_async(embeddings: EmbedEmbeddings) -> tuple[list[float], list[list[float]]]:
    return await asyncio.gather(embeddings.aembed_query(TEXTS[0]), embeddings.aembed_documents(TEXTS))


async def llama_index_async(embedding: EmbedEmbedding) -> tuple[list[float], list[list[float]]]:
    return await asyncio.gather(embedding.aget_query_embedding(TEXTS[0]), embedding.aget_text_embedding_batch(TEXTS))


def test_langchain_without_prompts(engine):
    embeddings = EmbedEmbeddings(engine=engine)
    check_adapter(embeddings.embed_query(TEXTS[0]), embeddings.embed_documents(TEXTS), engine)
    check_adapter(*asyncio.run(langchain_async(embeddings)), engine)


def test_llama_index_without_prompts(engine):
    embedding = EmbedEmbedding(engine=engine, embed_batch_size=3)  # 4 texts: two slices
    check_adapter(embedding.get_query_embedding(TEXTS[0]), embedding.get_text_embedding_batch(TEXTS), engine)
    assert cosine(np.array([embedding.get_text_embedding(TEXTS[1])]), engine.embed(TEXTS[1:2])).min() >= 0.9999
    check_adapter(*asyncio.run(llama_index_async(embedding)), engine)


def test_adapters_map_query_and_passage_prompts(prompted):
    reference = EmbeddingEngine(str(prompted))
    plain, query = reference.embed([TEXTS[0]]), reference.embed([TEXTS[0]], prompt_name="query")
    assert cosine(plain, query)[0] < 0.999  # the prompt changes the vector, so the checks below can tell

    langchain = EmbedEmbeddings(str(prompted), batch_tokens=256)
    check_adapter(langchain.embed_query(TEXTS[0]), langchain.embed_documents(TEXTS), reference, "query", "passage")
    check_adapter(*asyncio.run(langchain_async(langchain)), reference, "query", "passage")

    llama = EmbedEmbedding(engine=langchain.engine)
    assert llama.model_name == str(prompted)
    check_adapter(llama.get_query_embedding(TEXTS[0]), llama.get_text_embedding_batch(TEXTS), reference, "query",
                  "passage")
    check_adapter(*asyncio.run(llama_index_async(llama)), reference, "query", "passage")
    for engine in (reference, langchain.engine):
        engine.unload()


def test_import_embedder_leaves_integrations_out():
    code = "import embedder, sys; assert not {'langchain_core', 'llama_index', 'llm'} & set(sys.modules)"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_llm_plugin_imports_no_mlx():
    """llm imports every plugin on every command, `llm --help` included."""
    code = "import embedder.integrations.llm_plugin, sys; assert 'mlx.core' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
