"""Token vectors (the encoder's last hidden state at every token) against sentence-transformers'
`output_value="token_embeddings"`: all-MiniLM-L6-v2 and tiny random encoders, through the engine and TEI's /embed_all
on the real `embed serve`."""

import threading

import numpy as np
import pytest
from reference import require_oracle
from test_server import running_server
from tiny_models import save_sentence_transformer, tiny_cross_encoder, tiny_encoder, tiny_transformer

from embedder import EmbeddingEngine
from embedder.errors import InputError, InputTooLong

# Short next to long, so every batch pads; one over the window, cut as sentence-transformers cuts it.
TEXTS = ["a", "The quick brown fox jumps over the lazy dog.", "中文句子，还有一些日本語のテキスト。",
         "ok", "Emoji 🎉 and accents: café, naïve, e\u0301", "long " * 300]


def st_token_embeddings(path, texts) -> list[np.ndarray]:
    require_oracle()
    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(str(path), device="cpu")
    return [t.numpy() for t in st.encode(texts, batch_size=4, output_value="token_embeddings")]


def assert_same_tokens(got: list[np.ndarray], want: list[np.ndarray]) -> None:
    """Row by row: the same tokens, and each token's vector at cosine >= 0.9999 and near in value."""
    assert [g.shape for g in got] == [w.shape for w in want]
    for g, w in zip(got, want):
        cos = (g * w).sum(1) / (np.linalg.norm(g, axis=1) * np.linalg.norm(w, axis=1))
        assert cos.min() >= 0.9999 and np.isfinite(g).all()
        np.testing.assert_allclose(g, w, atol=2e-4 * np.abs(w).max())


def test_minilm_token_vectors_equal_sentence_transformers(engine, minilm_path):
    got = engine.token_embeddings(TEXTS)
    assert_same_tokens(got, st_token_embeddings(minilm_path, TEXTS))
    assert [len(g) for g in got] == engine.tokens_per_text(TEXTS)
    np.testing.assert_allclose(engine.token_embeddings([TEXTS[1]])[0], got[1], atol=1e-5)  # padding changes nothing


@pytest.mark.parametrize("kind", ["bert", "distilbert", "mpnet", "modernbert"])
def test_tiny_encoders_token_vectors(tmp_path, minilm_path, kind):
    hf = tiny_transformer(kind, minilm_path, tmp_path) if kind == "modernbert" else tiny_encoder(kind, minilm_path,
                                                                                                 tmp_path)
    path = save_sentence_transformer(hf, tmp_path / "st", "mean", True, max_seq_length=64)
    engine = EmbeddingEngine(str(path), batch_tokens=128)
    assert_same_tokens(engine.token_embeddings(TEXTS), st_token_embeddings(path, TEXTS))
    engine.unload()


def test_token_and_pooled_jobs_at_once_each_get_their_own(engine):
    """Concurrent pooled and per-token requests share the engine but never a batch; each is answered right."""
    pooled, tokens = engine.embed(TEXTS), engine.token_embeddings(TEXTS)
    results: dict = {}

    def run(name, call):
        results[name] = call()

    threads = [threading.Thread(target=run, args=(f"pooled{i}", lambda: engine.embed(TEXTS))) for i in range(3)]
    threads += [threading.Thread(target=run, args=(f"tokens{i}", lambda: engine.token_embeddings(TEXTS)))
                for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    for i in range(3):
        np.testing.assert_allclose(results[f"pooled{i}"], pooled, atol=1e-5)
        for got, want in zip(results[f"tokens{i}"], tokens):
            np.testing.assert_allclose(got, want, atol=1e-5)


def test_refusals(tmp_path, minilm_path):
    chunked = EmbeddingEngine(str(minilm_path), long_input="chunk")
    with pytest.raises(InputTooLong, match="input 1 has 302 tokens, .*token vectors need texts cut to it"):
        chunked.token_embeddings(["short", "long " * 300])
    chunked.unload()
    reranker = EmbeddingEngine(str(tiny_cross_encoder("bert", minilm_path, tmp_path)))
    with pytest.raises(InputError, match="is a cross-encoder"):
        reranker.token_embeddings(["a"])
    reranker.unload()


def test_tei_embed_all(engine):
    import httpx

    texts = TEXTS[:3]
    want = engine.token_embeddings(texts)
    with running_server("all-MiniLM-L6-v2") as url, httpx.Client(base_url=url, timeout=60) as http:
        one = http.post("/embed_all", json={"inputs": texts[1]})
        many = http.post("/embed_all", json={"inputs": texts})
        long = http.post("/embed_all", json={"inputs": "long " * 300, "truncate": False})
        empty = http.post("/embed_all", json={"inputs": []})
        cut = http.post("/embed_all", json={"inputs": ["long " * 300, texts[0]]})  # 256 tokens: 7 pieces streamed
    assert one.status_code == 200 and many.status_code == 200, (one.text, many.text)
    assert cut.headers["content-type"] == "application/json"
    for got, w in zip(cut.json(), engine.token_embeddings(["long " * 300, texts[0]])):
        np.testing.assert_allclose(np.array(got), w, atol=1e-5)
    np.testing.assert_allclose(np.array(one.json()[0]), want[1], atol=1e-5)
    assert len(many.json()) == 3
    for got, w in zip(many.json(), want):
        np.testing.assert_allclose(np.array(got), w, atol=1e-5)
    assert long.status_code == 422 and "more than the model's maximum of 256" in long.json()["error"]
    assert empty.status_code == 400 and set(empty.json()) == {"error", "error_type"}
