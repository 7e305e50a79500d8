"""SPLADE sparse vectors: tiny random masked-LM encoders built by the tests against sentence-transformers'
SparseEncoder, through the engine, the real `embed` command (Parquet and JSONL read back) and TEI's /embed_sparse on
the real `embed serve`."""

import json
import subprocess
import sys

import numpy as np
import pyarrow.parquet as pq
import pytest
from reference import require_oracle
from test_server import running_server
from tiny_models import tiny_inference_free_splade, tiny_sparse_encoder

from embedder import EmbeddingEngine
from embedder.errors import InputError
from embedder.io.pipeline import EmbedOptions, run

TEXTS = ["a", "The quick brown fox jumps over the lazy dog.", "中文句子，还有一些日本語のテキスト。", "",
         "Emoji 🎉 and accents: café, naïve, e\u0301", "long " * 300]
EMBED = [sys.executable, "-m", "cli"]


def sparse_encoder_vectors(path, texts) -> np.ndarray:
    """SparseEncoder's vectors, dense: one weight per vocabulary entry."""
    require_oracle()
    from sentence_transformers import SparseEncoder

    encoder = SparseEncoder(str(path), device="cpu")
    return encoder.encode(texts, batch_size=4, convert_to_sparse_tensor=False).numpy()


def assert_same_sparse(got: np.ndarray, want: np.ndarray) -> None:
    """The same nonzero entries (but a few at the edge of zero), their weights within float32 error."""
    assert got.shape == want.shape and np.isfinite(got).all() and (got >= 0).all()
    differs = (got > 0) != (want > 0)
    assert differs.sum() <= 1e-4 * want.size and np.abs(want[differs]).max(initial=0) < 1e-5
    np.testing.assert_allclose(got, want, atol=2e-5 * np.abs(want).max())


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    return tmp_path_factory.mktemp("sparse")


@pytest.fixture(scope="module")
def splade(work, minilm_path):
    return tiny_sparse_encoder("bert", minilm_path, work)


@pytest.mark.parametrize("kind, strategy, activation", [("bert", "max", "relu"), ("distilbert", "max", "log1p_relu"),
                                                        ("xlm-roberta", "sum", "relu")])
def test_vectors_equal_sparse_encoder(work, minilm_path, kind, strategy, activation):
    path = tiny_sparse_encoder(kind, minilm_path, work, strategy=strategy, activation=activation)
    engine = EmbeddingEngine(str(path), batch_tokens=256)  # several batches, mixed lengths in each
    got = engine.embed(TEXTS)
    assert engine.sparse and engine.dim == 30522 and engine.info()["pooling"] == "splade"
    assert_same_sparse(got, sparse_encoder_vectors(path, TEXTS))
    for (indices, values), row in zip(engine.embed_sparse(TEXTS), got):
        assert indices.dtype == np.int32 and (np.diff(indices) > 0).all()
        np.testing.assert_array_equal(values, row[indices])
        assert (values > 0).all() and np.count_nonzero(row) == len(indices)
    engine.unload()


def test_a_bare_masked_lm_with_splade_pooling(work, minilm_path, splade):
    """TEI's `--pooling splade` over a transformers checkpoint: SpladePooling's default (max of log1p(relu))."""
    bare = tiny_sparse_encoder("bert", minilm_path, work, bare=True)
    engine = EmbeddingEngine(str(bare), pooling="splade")
    assert_same_sparse(engine.embed(TEXTS), sparse_encoder_vectors(splade, TEXTS))
    engine.unload()
    with pytest.raises(Exception, match="masked-LM head"):
        EmbeddingEngine(str(minilm_path), pooling="splade").load()


def test_a_long_text_in_windows_takes_the_max_over_them(splade):
    """--long-input chunk on a max-pooled SPLADE model: the max over every window's tokens, not their mean."""
    chunked = EmbeddingEngine(str(splade), long_input="chunk", chunk_overlap=16)
    text = " ".join(f"word{i % 97} token{i % 13}" for i in range(300))
    row = chunked.tokenize([text])[0]
    windows = chunked._windows.split(row)
    assert len(windows) > 2
    whole = chunked.embed([text])[0]
    np.testing.assert_allclose(whole, chunked.embed_tokens(windows).max(0), atol=1e-6)
    chunked.unload()


def test_a_splade_model_ranks_by_dot_product(splade):
    """Rerank, score and TEI's /similarity with a SPLADE model use SparseEncoder's similarity, the dot product of the
    sparse vectors."""
    require_oracle()
    import httpx
    from sentence_transformers import SparseEncoder

    documents = ["The quick brown fox.", "a", "Emoji 🎉 and accents: café", "long " * 50]
    encoder = SparseEncoder(str(splade), device="cpu")
    want = encoder.similarity(encoder.encode_query(["quick fox"]), encoder.encode_document(documents))[0].numpy()
    engine = EmbeddingEngine(str(splade))
    np.testing.assert_allclose(engine.score([("quick fox", d) for d in documents]), want, rtol=1e-4)
    assert [i for i, _ in engine.rerank("quick fox", documents)] == list(np.argsort(-want, kind="stable"))
    engine.unload()
    with running_server(str(splade)) as url:
        similarity = httpx.post(f"{url}/similarity", timeout=60,
                                json={"inputs": {"source_sentence": "quick fox", "sentences": documents}})
    assert similarity.status_code == 200, similarity.text
    np.testing.assert_allclose(similarity.json(), want, rtol=1e-4)


def test_max_active_dims_keeps_each_vectors_largest_weights(work, minilm_path, splade):
    """sentence-transformers' `max_active_dims`: saved in config_sentence_transformers.json it applies to every
    vector, as SparseEncoder applies it; the engine's option (SparseEncoder's argument) overrides it."""
    require_oracle()
    from sentence_transformers import SparseEncoder

    saved = tiny_sparse_encoder("bert", minilm_path, work / "capped")
    config = json.loads((saved / "config_sentence_transformers.json").read_text())
    (saved / "config_sentence_transformers.json").write_text(json.dumps({**config, "max_active_dims": 7}))
    capped = EmbeddingEngine(str(saved), batch_tokens=256)
    got = capped.embed(TEXTS)
    assert_same_sparse(got, sparse_encoder_vectors(saved, TEXTS))
    assert ((got > 0).sum(1) == 7).all() and capped.info()["max_active_dims"] == 7
    for k, path in ((3, saved), (20, splade)):
        want = SparseEncoder(str(path), device="cpu", max_active_dims=k).encode(TEXTS, convert_to_sparse_tensor=False)
        override = EmbeddingEngine(str(path), max_active_dims=k)
        assert_same_sparse(override.embed(TEXTS), want.numpy())
        override.unload()
    capped.unload()
    text = " ".join(f"word{i % 97} token{i % 13}" for i in range(300))  # several windows
    whole, cut = (EmbeddingEngine(str(splade), long_input="chunk", max_active_dims=k).embed([text])[0]
                  for k in (None, 9))
    top = np.argsort(-whole)[:9]
    assert set(np.flatnonzero(cut)) == set(top) and np.array_equal(cut[top], whole[top])  # the text's cap, whole
    (saved / "config_sentence_transformers.json").write_text(json.dumps({**config, "max_active_dims": 0}))
    with pytest.raises(Exception, match="config_sentence_transformers.json: max_active_dims must be a whole number"):
        EmbeddingEngine(str(saved)).load()


def test_refusals(splade, engine):
    sparse = EmbeddingEngine(str(splade))
    with pytest.raises(InputError, match="sparse .SPLADE. model.*dimensions does not apply"):
        sparse.embed(["a"], dimensions=64)
    sparse.unload()
    with pytest.raises(InputError, match="is a dense model"):
        engine.embed_sparse(["a"])


def test_cli_writes_indices_and_values(tmp_path, splade):
    source = tmp_path / "in.txt"
    texts = [t for t in TEXTS if t]
    source.write_text("\n".join(texts) + "\n")
    engine = EmbeddingEngine(str(splade))
    want = engine.embed_sparse(texts)
    done = subprocess.run([*EMBED, str(source), "-o", str(tmp_path / "out.parquet"), "-m", str(splade)],
                          capture_output=True, timeout=120)
    assert done.returncode == 0, done.stderr
    table = pq.read_table(tmp_path / "out.parquet")
    assert table.column_names == ["id", "indices", "values", "tokens"]
    assert table["tokens"].to_pylist() == engine.tokens_per_text(texts)
    for (indices, values), got_indices, got_values in zip(want, table["indices"].to_pylist(),
                                                          table["values"].to_pylist()):
        assert got_indices == indices.tolist()
        np.testing.assert_allclose(got_values, values, rtol=1e-5)
    lines = subprocess.run([*EMBED, str(source), "-m", str(splade)], capture_output=True, timeout=120).stdout
    rows = [json.loads(line) for line in lines.decode().splitlines()]
    assert set(rows[0]) == {"id", "indices", "values", "tokens"} and rows[1]["indices"] == want[1][0].tolist()
    refused = run_refused(tmp_path, splade, precision="int8", calibration=str(tmp_path / "out.parquet"))
    assert "--precision int8 does not apply" in refused
    engine.unload()
    capped = subprocess.run([*EMBED, str(source), "-m", str(splade), "--max-active-dims", "4"], capture_output=True,
                            timeout=120)
    assert capped.returncode == 0, capped.stderr
    assert [len(json.loads(line)["indices"]) for line in capped.stdout.decode().splitlines()] == [4] * len(texts)
    dense = subprocess.run([*EMBED, str(source), "--max-active-dims", "4"], capture_output=True, text=True, timeout=120)
    assert dense.returncode == 2 and "max_active_dims is for sparse (SPLADE) models" in dense.stderr
    assert len(dense.stderr.strip().splitlines()) == 1 and "Traceback" not in dense.stderr


def run_refused(tmp_path, model, **options) -> str:
    with pytest.raises(InputError) as refused:
        run(EmbedOptions(inputs=(str(tmp_path / "in.txt"),), output=str(tmp_path / "refused.parquet"),
                         model=str(model), **options))
    return str(refused.value)


def test_tei_embed_sparse(splade):
    import httpx

    engine = EmbeddingEngine(str(splade))
    want = engine.embed_sparse(TEXTS[:3])
    texts = [text for text in TEXTS if text] * 8  # more entries than a piece: the reply is sent as it is encoded
    want_many = engine.embed_sparse(texts)
    engine.unload()
    with running_server(str(splade), "all-MiniLM-L6-v2") as url, httpx.Client(base_url=url, timeout=60) as http:
        name = str(splade)
        got = http.post("/embed_sparse", json={"inputs": TEXTS[:3], "model": name})
        dense = http.post("/v1/embeddings", json={"input": "a", "model": name})
        unnamed = http.post("/embed_sparse", json={"inputs": "a"})  # the first model served: the SPLADE one
        root = http.post("/", json={"inputs": ["a"]})  # TEI answers its root as /embed_sparse for a SPLADE model
        wrong = http.post("/embed_sparse", json={"inputs": "a", "model": "all-MiniLM-L6-v2"})
        many = http.post("/embed_sparse", json={"inputs": texts, "model": name})
    assert got.status_code == 200, got.text
    assert many.status_code == 200 and len(many.json()) == len(texts) and sum(map(len, many.json())) > 16384

    def densified(rows):  # the server batches them otherwise: an entry at the edge of zero may differ
        out = np.zeros((len(rows), 30522), np.float32)
        for k, (indices, values) in enumerate(rows):
            out[k, indices] = values
        return out

    assert_same_sparse(densified([([v["index"] for v in row], [v["value"] for v in row]) for row in many.json()]),
                       densified(want_many))
    for row, (indices, values) in zip(got.json(), want):
        assert [v["index"] for v in row] == indices.tolist()
        np.testing.assert_allclose([v["value"] for v in row], values, rtol=1e-5)
    assert unnamed.status_code == 200 and len(unnamed.json()) == 1
    assert root.status_code == 200 and root.json() == unnamed.json()
    assert dense.status_code == 400 and "ask /embed_sparse" in dense.json()["error"]["message"]
    assert wrong.status_code == 422 and "is a dense model" in wrong.json()["error"]


def test_serve_a_masked_lm_with_splade_pooling(work, minilm_path, splade):
    """`embed serve MODEL --pooling splade`, as TEI's flag: a bare masked-LM checkpoint served as SPLADE."""
    import httpx

    bare = tiny_sparse_encoder("bert", minilm_path, work, bare=True)
    engine = EmbeddingEngine(str(splade))
    want = engine.embed_sparse(TEXTS[:2])
    engine.unload()
    with running_server(str(bare), "--pooling", "splade") as url:
        got = httpx.post(f"{url}/embed_sparse", json={"inputs": TEXTS[:2]}, timeout=60)
    assert got.status_code == 200, got.text
    assert [[v["index"] for v in row] for row in got.json()] == [indices.tolist() for indices, _ in want]


def test_an_inference_free_model_weighs_queries_from_its_table(tmp_path, work, minilm_path):
    """SparseEncoder's Router (OpenSearch's doc-only encoders): documents through the encoder, queries (`prompt_name`
    "query") weighed token by token, no encoder; rerank and score by their dot product, as SparseEncoder's
    similarity of encode_query and encode_document. The same through `embed --prompt-name query` and /embed_sparse."""
    require_oracle()
    import httpx
    from sentence_transformers import SparseEncoder

    path = tiny_inference_free_splade(minilm_path, work)
    st = SparseEncoder(str(path), device="cpu")
    queries = ["what is the capital of france", "a", "中文句子", "long " * 300]
    engine = EmbeddingEngine(str(path), batch_tokens=256)
    assert engine.sparse
    assert_same_sparse(engine.embed(TEXTS), st.encode_document(TEXTS, convert_to_sparse_tensor=False).numpy())
    want = st.encode_query(queries, convert_to_sparse_tensor=False).numpy()
    got = engine.embed(queries, prompt_name="query")
    np.testing.assert_allclose(got, want, rtol=1e-6)
    with pytest.raises(InputError, match="input 1 holds a lone UTF-16 surrogate at character 2,"):
        engine.tokenize(["fine", "ab\ud800"], prompt="q: ", prompt_name="query")  # the caller's characters counted
    assert ((got > 0).sum(1) == (want > 0).sum(1)).all()
    scores = st.similarity(st.encode_query(queries[:2]), st.encode_document(TEXTS)).numpy()
    np.testing.assert_allclose([engine.score([(q, d) for d in TEXTS]) for q in queries[:2]], scores, rtol=1e-4)
    source = tmp_path / "queries.txt"
    source.write_text("\n".join(queries[:3]) + "\n")
    done = subprocess.run([*EMBED, str(source), "-m", str(path), "--prompt-name", "query"], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    rows = [json.loads(line) for line in done.stdout.splitlines()]
    for row, (indices, values) in zip(rows, engine.embed_sparse(queries[:3], prompt_name="query")):
        assert row["indices"] == indices.tolist() and row["tokens"] == len(indices)
        np.testing.assert_allclose(row["values"], values, rtol=1e-6)
    engine.unload()
    with running_server(str(path)) as url:
        answer = httpx.post(f"{url}/embed_sparse", json={"inputs": queries[0], "prompt_name": "query"}, timeout=60)
    assert answer.status_code == 200, answer.text
    np.testing.assert_allclose([v["value"] for v in answer.json()[0]], want[0][want[0] > 0], rtol=1e-6)
