"""The PyTorch reference (sentence-transformers) the tests compare against, and how vectors are compared."""

import numpy as np
import pytest

ORACLE = ("torch", "transformers", "sentence_transformers")  # the `oracle` extra


def require_oracle() -> None:
    """A test that compares against the reference is skipped, visibly, where the oracle extra is not installed."""
    for name in ORACLE:
        pytest.importorskip(name)


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine similarity."""
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def st_reference(path, texts: list[str], prompt_name: str | None = None) -> tuple[np.ndarray, list[int]]:
    """sentence-transformers' vectors and token counts for `texts`, with the model's named prompt if given."""
    require_oracle()
    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(str(path), device="cpu")
    prompt = st.prompts.get(prompt_name, "") if prompt_name else ""
    tokens = st.preprocess([prompt + t for t in texts])["attention_mask"].sum(1).tolist()
    return st.encode(texts, batch_size=4, prompt_name=prompt_name, convert_to_numpy=True), tokens


def assert_int8_near_float32(path, texts: list[str]) -> None:
    """`dtype="int8"` against the same model in float32: finite, cosine >= 0.99 (its stated fidelity on tiny
    random models), the same token counts."""
    from embedder import EmbeddingEngine

    full, int8 = (EmbeddingEngine(str(path), dtype=d, batch_tokens=128) for d in ("float32", "int8"))
    got = int8.embed(texts)
    assert np.isfinite(got).all()
    assert cosine(got, full.embed(texts)).min() >= 0.99
    assert int8.tokens_per_text(texts) == full.tokens_per_text(texts)
    for engine in (full, int8):
        engine.unload()
