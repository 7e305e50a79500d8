"""Late interaction (ColBERT): tiny random encoders saved as sentence-transformers 6's MultiVectorEncoder, PyLate and
Stanford-NLP ColBERT save them, against MultiVectorEncoder itself (encode_query, encode_document, similarity), then
through every front: the engine, the real `embed` command (Parquet and JSONL read back), `embed rerank`, and the
real `embed serve` (TEI's /embed_all and /rerank, vLLM's /pooling and /score, OpenAI's /v1/embeddings refusing)."""

import json
import subprocess
import sys

import numpy as np
import pyarrow.parquet as pq
import pytest
from reference import require_oracle
from test_server import running_server
from tiny_models import tiny_colbert

from embedder import EmbeddingEngine
from embedder.errors import InputError

QUERIES = ["what is the capital of france?", "a", "", "long " * 40, "中文句子，还有一些日本語のテキスト。"]
DOCUMENTS = ["Paris, the capital. Of France!", "Berlin is the capital of Germany.", "", "long " * 60,
             "Emoji 🎉 and accents: café, naïve, e\u0301 (with punctuation...)"]
EMBED = [sys.executable, "-m", "cli"]


def reference(path):
    require_oracle()
    from sentence_transformers import MultiVectorEncoder

    return MultiVectorEncoder(str(path), device="cpu")


def assert_same_vectors(got: list[np.ndarray], want) -> None:
    assert len(got) == len(want)
    for g, w in zip(got, want):
        w = np.asarray(w)
        assert g.dtype == np.float32 and g.shape == w.shape, (g.shape, w.shape)
        np.testing.assert_allclose(g, w, atol=2e-5)


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    return tmp_path_factory.mktemp("colbert")


@pytest.fixture(scope="module")
def colbert(work, minilm_path):
    return tiny_colbert(minilm_path, work, "st")


@pytest.mark.parametrize("saved_as, attend, backbone", [("st", False, "bert"), ("st", True, "bert"),
                                                        ("pylate", False, "bert"), ("pylate", True, "bert"),
                                                        ("stanford", False, "bert"), ("st", False, "modernbert")])
def test_vectors_and_maxsim_equal_multi_vector_encoder(work, minilm_path, saved_as, attend, backbone):
    """Queries cut or expanded to 32 tokens ([MASK]s the encoder attends to or not), documents cut to 40 with
    punctuation dropped, each side's marker ([Q]/[D] text, or [unused0]/[unused1] kept whole), projected and
    normalized; MaxSim as MultiVectorEncoder.similarity. Several batches, mixed lengths in each."""
    path = tiny_colbert(minilm_path, work, saved_as, attend=attend, backbone=backbone)
    st = reference(path)
    engine = EmbeddingEngine(str(path), batch_tokens=256)
    assert engine.multi_vector and engine.dim == 24
    queries, documents = engine.multi_vectors(QUERIES, query=True), engine.multi_vectors(DOCUMENTS)
    assert_same_vectors(queries, st.encode_query(QUERIES, convert_to_numpy=True))
    assert_same_vectors(documents, st.encode_document(DOCUMENTS, convert_to_numpy=True))
    assert all(len(q) == 32 for q in queries[:3])
    want = st.similarity(st.encode_query(QUERIES[:2]), st.encode_document(DOCUMENTS)).numpy()
    got = np.array([engine.score([(q, d) for d in DOCUMENTS]) for q in QUERIES[:2]])
    np.testing.assert_allclose(got, want, rtol=1e-5)
    assert [i for i, _ in engine.rerank(QUERIES[0], DOCUMENTS)] == list(np.argsort(-want[0], kind="stable"))
    engine.unload()


def test_truncate_dim_saved_or_asked(tmp_path, work, minilm_path, colbert):
    """A saved `truncate_dim` sets the vectors' width (the engine's dim); `dimensions` (`--dimensions`) cuts them
    per call, each token vector normalized again, as MultiVectorEncoder's truncate_dim."""
    st = reference(colbert)
    engine = EmbeddingEngine(str(colbert))
    assert_same_vectors(engine.multi_vectors(DOCUMENTS, dimensions=8),
                        st.encode_document(DOCUMENTS, truncate_dim=8, convert_to_numpy=True))
    assert_same_vectors(engine.multi_vectors(QUERIES, query=True, dimensions=8),
                        st.encode_query(QUERIES, truncate_dim=8, convert_to_numpy=True))
    with pytest.raises(InputError, match="dimensions must be between 1 and 24"):
        engine.multi_vectors(["a"], dimensions=25)
    source = tmp_path / "in.txt"
    source.write_text("\n".join(DOCUMENTS[:2]) + "\n")
    done = subprocess.run([*EMBED, str(source), "-o", str(tmp_path / "out.parquet"), "-m", str(colbert),
                           "--dimensions", "8"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    got = pq.read_table(tmp_path / "out.parquet")["embedding"].to_pylist()
    for g, w in zip(got, engine.multi_vectors(DOCUMENTS[:2], dimensions=8)):
        np.testing.assert_allclose(np.array(g, np.float32), w, atol=1e-6)
    engine.unload()
    saved = tiny_colbert(minilm_path, work / "truncated", "st")
    config = json.loads((saved / "config_sentence_transformers.json").read_text())
    (saved / "config_sentence_transformers.json").write_text(json.dumps({**config, "truncate_dim": 16}))
    truncated = EmbeddingEngine(str(saved))
    assert truncated.dim == 16
    assert_same_vectors(truncated.multi_vectors(DOCUMENTS), reference(saved).encode_document(DOCUMENTS,
                                                                                              convert_to_numpy=True))
    truncated.unload()


def test_refusals(colbert, engine):
    multi = EmbeddingEngine(str(colbert))
    with pytest.raises(InputError, match="multi-vector .ColBERT. model: a vector per token"):
        multi.embed(["a"])
    multi.unload()
    with pytest.raises(InputError, match="is not a multi-vector"):
        engine.multi_vectors(["a"])
    with pytest.raises(InputError, match="long_input chunk does not apply"):
        EmbeddingEngine(str(colbert), long_input="chunk").load()


def test_cli_writes_each_texts_vectors(tmp_path, colbert):
    """`embed FILE -m COLBERT` writes documents' vectors, `--prompt-name query` queries': Parquet's `embedding` a
    list of fixed-size vectors per row, JSONL the same nested; `tokens` the text's own tokens."""
    source = tmp_path / "in.txt"
    texts = [t for t in DOCUMENTS if t]
    source.write_text("\n".join(texts) + "\n")
    engine = EmbeddingEngine(str(colbert))
    for side, extra in (("document", []), ("query", ["--prompt-name", "query"])):
        out = tmp_path / f"{side}.parquet"
        done = subprocess.run([*EMBED, str(source), "-o", str(out), "-m", str(colbert), *extra], capture_output=True,
                              text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        table = pq.read_table(out)
        assert table.column_names == ["id", "embedding", "tokens"]
        vectors = table.schema.field("embedding").type
        assert vectors.value_type.list_size == 24 and str(vectors.value_type.value_type) == "float"
        want = engine.multi_vectors(texts, query=side == "query")
        for got, w in zip(table["embedding"].to_pylist(), want):
            np.testing.assert_allclose(np.array(got, np.float32), w, atol=1e-6)
        metadata = pq.read_metadata(out).metadata
        assert json.loads(metadata[b"multi_vector"])["document_length"] == 40
        assert metadata[b"prompt"] == (b"[Q] " if side == "query" else b"[D] ")
    lines = subprocess.run([*EMBED, str(source), "-m", str(colbert)], capture_output=True, timeout=120).stdout
    rows = [json.loads(line) for line in lines.decode().splitlines()]
    np.testing.assert_allclose(np.array(rows[1]["embedding"], np.float32), engine.multi_vectors(texts)[1], atol=1e-6)
    engine.unload()


def test_embed_rerank_by_maxsim(tmp_path, colbert):
    st = reference(colbert)
    want = st.similarity(st.encode_query([QUERIES[0]]), st.encode_document(DOCUMENTS[:2])).numpy()[0]
    source = tmp_path / "docs.txt"
    source.write_text("\n".join(DOCUMENTS[:2]) + "\n")
    done = subprocess.run([*EMBED, "rerank", QUERIES[0], str(source), "-m", str(colbert)], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    rows = [json.loads(line) for line in done.stdout.splitlines()]
    np.testing.assert_allclose([r["score"] for r in sorted(rows, key=lambda r: r["index"])], want, rtol=1e-5)


def test_server_routes(colbert):
    """TEI's /embed_all and vLLM's /pooling (token_embed) give the multi-vectors (`prompt_name: query` for a query),
    /rerank, /score and TEI's /similarity (the source sentence the query) MaxSim; the pooled routes refuse in
    OpenAI's shape."""
    import httpx

    engine = EmbeddingEngine(str(colbert))
    documents, queries = engine.multi_vectors(DOCUMENTS[:2]), engine.multi_vectors(QUERIES[:1], query=True)
    scores = engine.score([(QUERIES[0], d) for d in DOCUMENTS[:2]])
    engine.unload()
    with running_server(str(colbert)) as url, httpx.Client(base_url=url, timeout=60) as http:
        embed_all = http.post("/embed_all", json={"inputs": DOCUMENTS[:2]})
        query = http.post("/embed_all", json={"inputs": QUERIES[0], "prompt_name": "query"})
        pooling = http.post("/pooling", json={"input": DOCUMENTS[:2], "task": "token_embed"})
        rerank = http.post("/rerank", json={"query": QUERIES[0], "texts": DOCUMENTS[:2]})
        score = http.post("/score", json={"text_1": QUERIES[0], "text_2": DOCUMENTS[:2]})
        pair = {"source_sentence": QUERIES[0], "sentences": DOCUMENTS[:2]}
        similarity = http.post("/similarity", json={"inputs": pair})
        prompted = http.post("/similarity", json={"inputs": pair, "prompt_name": "query"})
        long_text = http.post("/rerank", json={"query": QUERIES[0], "texts": [DOCUMENTS[0], DOCUMENTS[3]],
                                               "truncate": False})
        long_document = http.post("/similarity", json={"inputs": {"source_sentence": QUERIES[0],
                                                                  "sentences": [DOCUMENTS[0], DOCUMENTS[3]]},
                                                       "truncate": False})
        refused = http.post("/v1/embeddings", json={"input": "a"})
        too_long = http.post("/embed_all", json={"inputs": DOCUMENTS[3], "truncate": False})  # over 40 tokens
    assert embed_all.status_code == 200, embed_all.text
    for got, want in zip(embed_all.json(), documents):
        np.testing.assert_allclose(np.array(got, np.float32), want, atol=1e-6)
    np.testing.assert_allclose(np.array(query.json()[0], np.float32), queries[0], atol=1e-6)
    assert pooling.status_code == 200, pooling.text
    np.testing.assert_allclose(np.array(pooling.json()["data"][1]["data"], np.float32), documents[1], atol=1e-6)
    assert rerank.status_code == 200, rerank.text
    np.testing.assert_allclose(sorted(r["score"] for r in rerank.json()), sorted(scores), rtol=1e-5)
    assert score.status_code == 200, score.text
    np.testing.assert_allclose([d["score"] for d in score.json()["data"]], scores, rtol=1e-5)
    assert similarity.status_code == 200, similarity.text
    np.testing.assert_allclose(similarity.json(), scores, rtol=1e-5)
    assert prompted.status_code == 422 and "'prompt_name' does not apply" in prompted.json()["error"], prompted.text
    assert long_document.status_code == 422 and "input 1" in long_document.json()["error"], long_document.text
    assert long_text.status_code == 422 and "input 1" in long_text.json()["error"], long_text.text
    assert refused.status_code == 400 and "multi-vector" in refused.json()["error"]["message"]
    assert too_long.status_code == 422 and "maximum of 40" in too_long.json()["error"], too_long.text
