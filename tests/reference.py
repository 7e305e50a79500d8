"""The PyTorch reference (sentence-transformers) the tests compare against, and how vectors are compared."""

import numpy as np
import pytest

ORACLE = ("torch", "transformers", "sentence_transformers")  # the `oracle` extra


def _kernels():
    from embedder.native import kernels

    return kernels


needs_int8 = pytest.mark.skipif(not _kernels().int8_available(), reason="no AVX512-VNNI int8 kernel on this CPU")
needs_f16 = pytest.mark.skipif(not _kernels().f16_available(), reason="no AVX512-FP16 float16 kernel on this CPU")
needs_bf16 = pytest.mark.skipif(not _kernels().bf16_available(), reason="no AVX512-BF16 bfloat16 kernel on this CPU")


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


# The least cosine to the same model's float32 vectors each packed CPU dtype keeps on tiny random models, whose
# untrained weights carry its error further than a real model's (all-MiniLM-L6-v2 on the golden texts: int8
# 0.9918, float16 0.999994; bench/README.md; tiny GTE in float16: 0.99990).
PACKED_DTYPE_FIDELITY = {"int8": 0.99, "float16": 0.9995, "bfloat16": 0.999}


def assert_packed_near_float32(path, texts: list[str], dtype: str = "int8") -> None:
    """`dtype` (int8, or float16 on the packed CPU kernel) against the same model in float32: finite, near it by
    cosine as `PACKED_DTYPE_FIDELITY` states, the same token counts."""
    from embedder import EmbeddingEngine

    full, packed = (EmbeddingEngine(str(path), dtype=d, batch_tokens=128) for d in ("float32", dtype))
    got = packed.embed(texts)
    assert np.isfinite(got).all()
    assert cosine(got, full.embed(texts)).min() >= PACKED_DTYPE_FIDELITY[dtype]
    assert packed.tokens_per_text(texts) == full.tokens_per_text(texts)
    for engine in (full, packed):
        engine.unload()


def assert_one_call_on_real_tokens(path, texts: list[str], monkeypatch, batch_tokens: int = 128) -> None:
    """The model at `path` runs every batch's layers in one native call (`kernels.encoder_layers`) over exactly its
    real tokens, no padding, with sentence-transformers' vectors (cosine >= 0.9999)."""
    from embedder import EmbeddingEngine

    kernels = _kernels()
    if not kernels.layers_available():
        pytest.skip("the one-call layers do not build here")
    expected, tokens = st_reference(path, texts)
    rows = []
    one_call = kernels.encoder_layers
    monkeypatch.setattr(kernels, "encoder_layers", lambda x, *rest: rows.append(x.shape[0]) or one_call(x, *rest))
    engine = EmbeddingEngine(str(path), batch_tokens=batch_tokens)
    engine.load()
    rows.clear()  # the load's warm-up batches
    assert cosine(engine.embed(texts), expected).min() >= 0.9999
    assert sum(rows) == sum(tokens)  # every real token once
    engine.unload()
