"""Reranking: tiny random cross-encoders built by the tests against sentence-transformers' CrossEncoder, through
the engine, the real `embed serve` (httpx and curl) and `embed rerank`; embedding models rank by cosine."""

import json
import subprocess
import sys

import numpy as np
import pyarrow.parquet as pq
import pytest
from reference import require_oracle
from test_server import running_server
from tiny_models import tiny_cross_encoder

from embedder import EmbeddingEngine
from embedder.errors import InputError, InputTooLong, ModelError

QUERY = "how do cats sleep"
DOCUMENTS = [
    "Cats sleep twelve to sixteen hours a day, mostly in short naps.",
    "The stock market closed higher on Tuesday.",
    "",
    "東京の猫はよく眠ります。🐈",
    "sleep " * 200,  # over the 128-token window: the pair is cut from its longer text first
    "Dogs, unlike cats, sleep at night with their owners.",
]
PAIRS = [(QUERY, d) for d in DOCUMENTS] + [("word " * 150, "a short document"), ("a", "b")]
EMBED = [sys.executable, "-m", "cli"]

# (kind, labels, saved by): rerankers as the Hub has them, and as sentence-transformers 6 saves them.
CROSS_ENCODERS = [("bert", 1, "st"), ("bert", 1, "hf"), ("bert", 2, "hf"), ("xlm-roberta", 1, "hf"),
                  ("modernbert", 1, "st"), ("modernbert", 3, "hf")]


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    return tmp_path_factory.mktemp("rerank")


@pytest.fixture(scope="module")
def reranker(work, minilm_path):
    """A one-label BERT cross-encoder saved by sentence-transformers: the one the server and CLI tests use."""
    return tiny_cross_encoder("bert", minilm_path, work, saved_by="st")


def cross_encoder_scores(path, pairs):
    require_oracle()
    from sentence_transformers import CrossEncoder

    return CrossEncoder(str(path), device="cpu").predict(pairs, batch_size=3)


@pytest.mark.parametrize("kind,labels,saved_by", CROSS_ENCODERS)
def test_scores_equal_cross_encoder_predict(work, minilm_path, kind, labels, saved_by):
    path = tiny_cross_encoder(kind, minilm_path, work, labels=labels, saved_by=saved_by)
    want = cross_encoder_scores(path, PAIRS)
    engine = EmbeddingEngine(str(path), batch_tokens=256)  # several batches, mixed lengths in each
    got = engine.score(PAIRS)
    engine.unload()
    assert got.shape == want.shape == ((len(PAIRS),) if labels == 1 else (len(PAIRS), labels))
    assert np.isfinite(got).all()
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)
    assert want.std() > 0.01  # the scores really differ, so a wrong pair or token type cannot hide


def test_legacy_activation_setting_is_honoured(work, minilm_path):
    """sentence-transformers < 4 stored the activation in config.json; ms-marco-MiniLM's says Identity (logits)."""
    path = tiny_cross_encoder("bert", minilm_path, work, saved_by="hf",
                              sbert_ce_default_activation_function="torch.nn.modules.linear.Identity")
    want = cross_encoder_scores(path, PAIRS)
    assert (want < 0).any() or (want > 1).any()  # logits, not probabilities
    np.testing.assert_allclose(EmbeddingEngine(str(path)).score(PAIRS), want, atol=1e-5, rtol=0)


def test_rerank_equals_cross_encoder_rank(reranker):
    require_oracle()
    from sentence_transformers import CrossEncoder

    want = CrossEncoder(str(reranker), device="cpu").rank(QUERY, DOCUMENTS, top_k=4)
    got = EmbeddingEngine(str(reranker)).rerank(QUERY, DOCUMENTS, top_n=4)
    assert [i for i, _ in got] == [w["corpus_id"] for w in want]
    np.testing.assert_allclose([s for _, s in got], [w["score"] for w in want], atol=1e-5, rtol=0)


def test_long_pairs_are_refused_when_asked(reranker):
    engine = EmbeddingEngine(str(reranker), long_input="error")
    assert engine.score(PAIRS[:2]).shape == (2,)
    with pytest.raises(InputTooLong, match="input 4 has .* tokens, more than the model's maximum of 128"):
        engine.score(PAIRS)
    with pytest.raises(ModelError, match="never chunked"):
        EmbeddingEngine(str(reranker), long_input="chunk").load()


def test_a_cross_encoder_embeds_nothing(reranker):
    with pytest.raises(InputError, match="is a cross-encoder"):
        EmbeddingEngine(str(reranker)).embed(["text"])


def test_several_labels_cannot_rank(work, minilm_path):
    engine = EmbeddingEngine(str(tiny_cross_encoder("bert", minilm_path, work, labels=2)))
    with pytest.raises(InputError, match="2 scores per pair"):
        engine.rerank(QUERY, DOCUMENTS)


def test_an_embedding_model_scores_by_cosine(engine):
    vectors = engine.embed([QUERY, *DOCUMENTS])
    np.testing.assert_allclose(engine.score([(QUERY, d) for d in DOCUMENTS]), vectors[1:] @ vectors[0], atol=1e-6)
    ranking = engine.rerank(QUERY, DOCUMENTS, top_n=2)
    assert [i for i, _ in ranking] == list(np.argsort(-(vectors[1:] @ vectors[0]), kind="stable")[:2])


# ---- the server ---------------------------------------------------------------------------------------------

API_KEY = "rerank-key"


@pytest.fixture(scope="module")
def server(reranker):
    with running_server(f"reranker={reranker}", "all-MiniLM-L6-v2", "--api-key", API_KEY) as url:
        yield url


@pytest.fixture(scope="module")
def http(server):
    import httpx

    with httpx.Client(base_url=server, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=60) as client:
        yield client


@pytest.mark.parametrize("path", ["/v1/rerank", "/rerank", "/v2/rerank"])
def test_server_ranks_as_cross_encoder(http, reranker, path):
    want = cross_encoder_scores(reranker, [(QUERY, d) for d in DOCUMENTS])
    documents = [d if i % 2 else {"text": d} for i, d in enumerate(DOCUMENTS)]  # Cohere v1 sends objects
    reply = http.post(path, json={"model": "reranker", "query": QUERY, "documents": documents, "top_n": 3})
    assert reply.status_code == 200, reply.text
    body = reply.json()
    order = np.argsort(-want, kind="stable")[:3]
    assert body["model"] == "reranker" and body["id"].startswith("rerank-")
    assert [r["index"] for r in body["results"]] == list(order)
    np.testing.assert_allclose([r["relevance_score"] for r in body["results"]], want[order], atol=1e-5)
    assert [r["document"]["text"] for r in body["results"]] == [DOCUMENTS[i] for i in order]
    tokens = EmbeddingEngine(str(reranker)).submit_scores([QUERY] * len(DOCUMENTS), DOCUMENTS)[1]
    assert body["usage"]["total_tokens"] == tokens


def test_server_scores_as_vllm(http, reranker):
    """vLLM's /score: the cross-encoder's score of each pair, in order (an unnamed request goes to the reranker)."""
    want = cross_encoder_scores(reranker, [(QUERY, d) for d in DOCUMENTS])
    body = http.post("/score", json={"text_1": QUERY, "text_2": DOCUMENTS}).json()
    assert body["model"] == "reranker" and [d["index"] for d in body["data"]] == list(range(len(DOCUMENTS)))
    np.testing.assert_allclose([d["score"] for d in body["data"]], want, atol=1e-5)
    # the sides as vLLM's newer requests name them, here and on SageMaker's /invocations
    for first, second in (("queries", "documents"), ("queries", "items"), ("data_1", "data_2")):
        for path in ("/score", "/invocations"):
            named = http.post(path, json={first: QUERY, second: DOCUMENTS}).json()
            np.testing.assert_allclose([d["score"] for d in named["data"]], want, atol=1e-5)
    refused = http.post("/score", json={"queries": [QUERY, QUERY], "items": DOCUMENTS})
    assert refused.status_code == 400 and f"'queries' holds 2 texts and 'items' {len(DOCUMENTS)}" in refused.text


def test_vllm_use_activation_false_gives_the_logits(http, reranker):
    """vLLM's `use_activation: false` on /score and /rerank: each pair's logit, before the sigmoid."""
    require_oracle()
    import torch
    from sentence_transformers import CrossEncoder

    pairs = [(QUERY, d) for d in DOCUMENTS]
    logits = CrossEncoder(str(reranker), device="cpu").predict(pairs, activation_fn=torch.nn.Identity())
    scored = http.post("/score", json={"text_1": QUERY, "text_2": DOCUMENTS, "use_activation": False}).json()
    np.testing.assert_allclose([d["score"] for d in scored["data"]], logits, atol=1e-5)
    ranked = http.post("/rerank", json={"query": QUERY, "documents": DOCUMENTS, "use_activation": False}).json()
    np.testing.assert_allclose([r["relevance_score"] for r in sorted(ranked["results"], key=lambda r: r["index"])],
                               logits, atol=1e-5)


@pytest.mark.parametrize("path, body, field", [
    ("/rerank", {"max_tokens_per_doc": 10}, "max_tokens_per_doc"),
    ("/rerank", {"max_tokens_per_doc": 0}, "max_tokens_per_doc"),
    ("/rerank", {"truncate_prompt_tokens": 20}, "truncate_prompt_tokens"),
    ("/score", {"truncate_prompt_tokens": 20}, "truncate_prompt_tokens"),
])
def test_pair_cuts_below_the_models_length_are_refused_not_ignored(http, path, body, field):
    sides = {"query": QUERY, "documents": DOCUMENTS} if path == "/rerank" else {"text_1": QUERY, "text_2": DOCUMENTS}
    refused = http.post(path, json=sides | body)
    assert refused.status_code == 400 and refused.json()["error"]["param"] == field, refused.text
    assert http.post(path, json=sides | {field: 128}).status_code == 200  # the model's length: cuts nothing new


def test_server_rerank_without_documents_and_with_every_one(http):
    body = http.post("/v1/rerank", json={"model": "reranker", "query": QUERY, "documents": DOCUMENTS,
                                         "return_documents": False, "top_n": 0}).json()
    assert sorted(r["index"] for r in body["results"]) == list(range(len(DOCUMENTS)))
    assert all("document" not in r for r in body["results"])
    scores = [r["relevance_score"] for r in body["results"]]
    assert scores == sorted(scores, reverse=True)


def test_server_rerank_with_an_embedding_model_ranks_by_cosine(http, engine):
    vectors = engine.embed([QUERY, *DOCUMENTS])
    body = http.post("/v1/rerank", json={"model": "all-MiniLM-L6-v2", "query": QUERY, "documents": DOCUMENTS}).json()
    got = {r["index"]: r["relevance_score"] for r in body["results"]}
    np.testing.assert_allclose([got[i] for i in range(len(DOCUMENTS))], vectors[1:] @ vectors[0], atol=1e-5)


@pytest.mark.parametrize("request_body,param", [
    ({"query": QUERY, "documents": []}, "documents"),
    ({"query": QUERY, "documents": ["d"] * 10_000}, "documents"),
    ({"query": "", "documents": ["d"]}, "query"),
    ({"documents": ["d"]}, "query"),
    ({"query": QUERY, "documents": ["d", 7]}, "documents"),
    ({"query": QUERY, "documents": ["d"], "top_n": -1}, "top_n"),
    ({"query": QUERY, "documents": ["\ud800"]}, "documents"),
])
def test_server_refuses_bad_rerank_requests(http, request_body, param):
    body = json.dumps({"model": "reranker", **request_body})  # ASCII JSON: a lone surrogate travels escaped
    reply = http.post("/v1/rerank", content=body, headers={"Content-Type": "application/json"})
    assert reply.status_code == 400, reply.text
    error = reply.json()["error"]
    assert error["type"] == "invalid_request_error" and error["param"] == param and error["message"]


def test_server_refuses_to_embed_with_a_reranker(http):
    reply = http.post("/v1/embeddings", json={"model": "reranker", "input": "text"})
    assert reply.status_code == 400 and "cross-encoder" in reply.json()["error"]["message"]


@pytest.mark.parametrize("path, body", [("/v1/embeddings", {"input": ["text", "more"]}),
                                        ("/v1/embeddings", {"model": "default", "input": ["text", "more"]}),
                                        ("/embed", {"inputs": ["text", "more"]})])
def test_unnamed_embeddings_go_to_the_embedding_model_beside_a_reranker(http, engine, path, body):
    """The reranker is served first here; a request that names no model (TEI's never do) still embeds, with the
    first embedding model."""
    reply = http.post(path, json={**body, "encoding_format": "float"} if path != "/embed" else body)
    assert reply.status_code == 200, reply.text
    got = reply.json()
    vectors = [d["embedding"] for d in got["data"]] if path != "/embed" else got
    np.testing.assert_allclose(vectors, engine.embed(["text", "more"]), atol=1e-5)


@pytest.mark.parametrize("order", ["reranker first", "reranker second"])
def test_unnamed_reranks_go_to_the_reranker_beside_an_embedding_model(reranker, order):
    from embedder.serve.registry import build_registry

    models = [f"reranker={reranker}", "all-MiniLM-L6-v2"]
    registry = build_registry(models if order == "reranker first" else models[::-1])
    assert registry.resolve(None, rerank=True).public_name == "reranker"
    assert registry.resolve("default", rerank=True).public_name == "reranker"
    assert registry.resolve(None).public_name == registry.resolve("default").public_name == "all-MiniLM-L6-v2"
    assert registry.resolve("all-MiniLM-L6-v2", rerank=True).public_name == "all-MiniLM-L6-v2"  # named: as named
    assert not any(m.engine.loaded for m in registry.models)  # told apart by their configs, nothing loaded


def test_server_ranks_as_text_embeddings_inference(http, reranker):
    """TEI's /rerank: `texts`, the default model, a bare list of ranks; `raw_scores` the logits before the
    cross-encoder's activation (sigmoid here)."""
    require_oracle()
    import torch
    from sentence_transformers import CrossEncoder

    model = CrossEncoder(str(reranker), device="cpu")
    pairs = [(QUERY, d) for d in DOCUMENTS]
    scores, logits = model.predict(pairs), model.predict(pairs, activation_fn=torch.nn.Identity())
    assert not np.allclose(scores, logits, atol=1e-3)
    ranks = http.post("/rerank", json={"query": QUERY, "texts": DOCUMENTS, "return_text": True}).json()
    order = np.argsort(-scores, kind="stable")
    assert [r["index"] for r in ranks] == list(order)
    np.testing.assert_allclose([r["score"] for r in ranks], scores[order], atol=1e-5)
    assert [r["text"] for r in ranks] == [DOCUMENTS[i] for i in order]
    raw = http.post("/rerank", json={"query": QUERY, "texts": DOCUMENTS, "raw_scores": True}).json()
    assert all(set(r) == {"index", "score"} for r in raw)
    np.testing.assert_allclose([r["score"] for r in sorted(raw, key=lambda r: r["index"])], logits, atol=1e-5)
    # infinity's request (`documents`) takes `raw_scores` too
    raw = http.post("/rerank", json={"query": QUERY, "documents": DOCUMENTS, "raw_scores": True}).json()["results"]
    np.testing.assert_allclose([r["relevance_score"] for r in sorted(raw, key=lambda r: r["index"])], logits,
                               atol=1e-5)
    # A TEI request's refusals come in TEI's shape and statuses (Empty 400, Validation 422, as TEI answers since its 1.9).
    refused = http.post("/rerank", json={"query": QUERY, "texts": []})
    assert refused.status_code == 400 and refused.json() == {"error": "'texts' is an empty list; send at least one "
                                                             "document", "error_type": "Empty"}
    long = http.post("/rerank", json={"query": QUERY, "texts": DOCUMENTS, "truncate": False})  # text 4 is too long
    assert long.status_code == 422 and long.json()["error_type"] == "Validation", long.text
    assert "input 4 has" in long.json()["error"] and "'truncate': true" in long.json()["error"]
    fits = http.post("/rerank", json={"query": QUERY, "texts": DOCUMENTS[:4], "truncate": False})
    assert fits.status_code == 200 and len(fits.json()) == 4
    left = http.post("/rerank", json={"query": QUERY, "texts": DOCUMENTS, "truncation_direction": "Left"})
    assert left.status_code == 422 and "truncation_direction Left" in left.json()["error"]
    cohere = http.post("/rerank", json={"query": QUERY, "documents": []})  # the same route, Cohere's request
    assert cohere.status_code == 400 and cohere.json()["error"]["param"] == "documents"


def test_rerank_needs_the_api_key(server):
    import httpx

    reply = httpx.post(f"{server}/rerank", json={"query": QUERY, "documents": DOCUMENTS})
    assert reply.status_code == 401 and reply.json()["error"]["type"] == "authentication_error"


def test_curl_rerank(server, reranker):
    body = json.dumps({"model": "reranker", "query": QUERY, "documents": DOCUMENTS[:2]})
    out = subprocess.run(["curl", "-sS", "--fail-with-body", f"{server}/rerank", "-H", "Content-Type: application/json",
                          "-H", f"Authorization: Bearer {API_KEY}", "-d", body],
                         capture_output=True, check=True, timeout=60).stdout
    results = json.loads(out)["results"]
    want = cross_encoder_scores(reranker, [(QUERY, d) for d in DOCUMENTS[:2]])
    np.testing.assert_allclose([r["relevance_score"] for r in sorted(results, key=lambda r: r["index"])], want,
                               atol=1e-5)


# ---- embed rerank -------------------------------------------------------------------------------------------

def test_embed_rerank_writes_parquet_best_first(tmp_path, reranker):
    docs = tmp_path / "docs.jsonl"
    docs.write_text("".join(json.dumps({"key": f"doc-{i}", "body": d}) + "\n" for i, d in enumerate(DOCUMENTS)))
    out = tmp_path / "ranked.parquet"
    run = subprocess.run([*EMBED, "rerank", QUERY, str(docs), "-m", str(reranker), "--text-field", "body",
                          "--id-field", "key", "-o", str(out)], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert f"ranked {len(DOCUMENTS)} documents" in run.stderr
    table = pq.read_table(out)
    assert table.schema.names == ["rank", "index", "id", "score", "text"]
    assert table.schema.metadata[b"embed.query"] == QUERY.encode()
    want = cross_encoder_scores(reranker, [(QUERY, d) for d in DOCUMENTS])
    order = np.argsort(-want, kind="stable")
    rows = table.to_pylist()
    assert [r["rank"] for r in rows] == list(range(1, len(DOCUMENTS) + 1))
    assert [r["index"] for r in rows] == list(order)
    assert [r["id"] for r in rows] == [f"doc-{i}" for i in order]
    assert [r["text"] for r in rows] == [DOCUMENTS[i] for i in order]
    np.testing.assert_allclose([r["score"] for r in rows], want[order], atol=1e-5)


def test_embed_rerank_top_n_on_stdout(tmp_path, reranker):
    docs = tmp_path / "docs.txt"
    docs.write_text("\n".join(d for d in DOCUMENTS if d) + "\n")
    run = subprocess.run([*EMBED, "rerank", QUERY, "-m", str(reranker), "--top-n", "2", "-q"], input=docs.read_text(),
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0 and run.stderr == "", run.stderr
    rows = [json.loads(line) for line in run.stdout.splitlines()]
    assert [r["rank"] for r in rows] == [1, 2] and rows[0]["score"] >= rows[1]["score"]


@pytest.mark.parametrize("args,message", [
    (["", "{docs}"], "the query is empty"),
    (["  \t", "{docs}"], "the query is empty or blank"),
    ([QUERY, "{tmp}/long.txt", "--long-input", "error"], "long.txt line 2 has"),
    ([QUERY, "{docs}", "--long-input", "chunk"], "never chunked"),
    ([QUERY, "{docs}", "-o", "{out}"], "already exists"),
    ([QUERY, "{docs}", "-o", "{docs}"], "unknown output extension"),
    ([QUERY, "{tmp}/missing.txt"], "missing.txt"),
])
def test_embed_rerank_refuses_in_one_line(tmp_path, reranker, args, message):
    docs, out = tmp_path / "docs.txt", tmp_path / "out.jsonl"
    docs.write_text("one\ntwo\n")
    (tmp_path / "long.txt").write_text("short\n" + "word " * 400 + "\n")
    out.write_text("earlier results\n")
    args = [a.format(docs=docs, out=out, tmp=tmp_path) for a in args]
    run = subprocess.run([*EMBED, "rerank", *args, "-m", str(reranker)],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode != 0 and message in run.stderr and len(run.stderr.strip().splitlines()) == 1, run.stderr
    assert out.read_text() == "earlier results\n"
