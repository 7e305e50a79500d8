"""dtype float16 on a CPU with AVX512-FP16 and bfloat16 on one with AVX512-BF16: each native matmul against the
same rounding done in NumPy, its stated fidelity to float32 on the real all-MiniLM-L6-v2 (golden texts), the
inputs float16 alone could not hold, and the fronts and model families running them (a cross-encoder and `embed
serve` with int8 too); where a kernel cannot run, MLX's own type. A kernel's tests are skipped on CPUs without its
instructions (AMD Zen 4 has AVX512-BF16 and no AVX512-FP16), where it is not built."""

import json
import os
import subprocess
import sys
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pyarrow.parquet as pq
import pytest
from mlx.utils import tree_flatten
from reference import PACKED_DTYPE_FIDELITY, cosine, needs_bf16, needs_f16, needs_int8
from test_server import running_server
from tiny_models import tiny_cross_encoder, tiny_encoder, tiny_transformer

from embedder import EmbeddingEngine
from embedder.errors import ModelError
from embedder.native import fastmath, kernels, mkl
from embedder.native.blas import dist_paths

GOLDEN = Path(__file__).parent / "golden"
BLOCK = 32  # depth pairs a float16 sum takes in csrc/f16_matmul.cpp
PACKERS = {"float16": kernels.pack_f16, "bfloat16": kernels.pack_bf16}
needs = {"float16": needs_f16, "bfloat16": needs_bf16, "int8": needs_int8}


def _dtypes(*names: str) -> list:
    """`names` as parameters, each skipped where its kernel does not run here."""
    return [pytest.param(name, marks=needs[name]) for name in names]


def _bfloat16(a: np.ndarray) -> np.ndarray:
    """`a` rounded to bfloat16 (nearest even), as float32: the top 16 bits of each float32 kept."""
    bits = a.astype(np.float32).view(np.uint32).astype(np.uint64)
    return ((bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000).astype(np.uint32).view(np.float32)


def _unit(peak: np.ndarray) -> np.ndarray:
    """The power of two each peak is divided by; 0 for a zero or subnormal peak (a row of zeros then)."""
    normal = peak >= np.finfo(np.float32).tiny
    return np.where(normal, np.exp2(np.floor(np.log2(np.where(normal, peak, 1)))), 0).astype(np.float32)


def _float16_reference(x: np.ndarray, w: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """What the kernel computes: w per output channel and x per row scaled by a power of two to a peak in [1, 2) and
    rounded to float16;
    each output lane (even and odd depths apart) sums BLOCK products with one float16 rounding each (an FMA), then
    adds that sum into float32; the two lanes added, the scales undone, the bias added."""
    def scaled(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        scale = _unit(np.abs(a).max(1))
        halves = (a * np.divide(1, scale, out=np.zeros_like(scale), where=scale > 0)[:, None]).astype(np.float16)
        return np.pad(halves, ((0, 0), (0, a.shape[1] % 2))).astype(np.float64), scale

    (hx, xs), (hw, ws) = scaled(x), scaled(w)
    pairs = hx.shape[1] // 2
    sums = np.zeros((len(x), len(w), 2), np.float32)
    for start in range(0, pairs, BLOCK):
        lanes = np.zeros((len(x), len(w), 2), np.float16)
        for p in range(start, min(pairs, start + BLOCK)):
            for parity in (0, 1):
                i = 2 * p + parity
                lanes[..., parity] = (lanes[..., parity] + hx[:, i, None] * hw[None, :, i]).astype(np.float16)
        sums += lanes.astype(np.float32)
    return (sums[..., 0] + sums[..., 1]) * (xs[:, None] * ws[None, :]) + bias


@needs_f16
@pytest.mark.parametrize("m, k, n", [(1, 1, 1), (7, 5, 3), (6, 64, 64), (13, 97, 130), (200, 70, 65)])
def test_kernel_equals_the_same_rounding_in_numpy(m, k, n):
    """Every tail: rows past a 6-row tile and a 192-row pass, an odd depth, a depth past one float16 block, outputs
    not of 64; an all-zero row and channel; the bias added in the same pass."""
    rng = np.random.default_rng(m * 1000 + k + n)
    x = rng.standard_normal((m, k)).astype(np.float32) * rng.uniform(0.1, 10, (m, 1)).astype(np.float32)
    w = (rng.standard_normal((n, k)) * 0.05).astype(np.float32)
    x[-1], w[0] = 0, 0
    bias = rng.standard_normal(n).astype(np.float32)
    got = np.asarray(kernels.packed_matmul(mx.array(x), kernels.pack_f16(mx.array(w)), mx.array(bias))[0])
    want = _float16_reference(x, w, bias)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6 * np.abs(want).max())
    exact = x.astype(np.float64) @ w.T.astype(np.float64)
    assert np.linalg.norm(got - bias - exact) <= 2e-3 * np.linalg.norm(exact)  # float16's own error, no more


@needs_bf16
@pytest.mark.parametrize("m, k, n", [(1, 1, 1), (7, 5, 3), (6, 64, 64), (13, 97, 130), (200, 70, 65)])
def test_bfloat16_kernel_equals_the_same_rounding_in_numpy(m, k, n):
    """x and w rounded to bfloat16, their products (exact in float32) summed in float32: the same tails as above,
    and values float16 could not hold, which bfloat16's float32 range takes unscaled."""
    rng = np.random.default_rng(m * 1000 + k + n)
    x = rng.standard_normal((m, k)).astype(np.float32) * np.float32(1e30) ** rng.uniform(-1, 1, (m, 1))
    w = (rng.standard_normal((n, k)) * 0.05).astype(np.float32)
    x[-1], w[0] = 0, 0
    bias = rng.standard_normal(n).astype(np.float32)
    got = np.asarray(kernels.packed_matmul(mx.array(x), kernels.pack_bf16(mx.array(w)), mx.array(bias))[0])
    want = _bfloat16(x).astype(np.float64) @ _bfloat16(w).T.astype(np.float64) + bias
    scale = np.abs(x).max(1, keepdims=True) * np.abs(w).max() * k + np.abs(bias)
    assert (np.abs(got - want) <= 1e-6 * scale).all()
    exact = x.astype(np.float64) @ w.T.astype(np.float64)
    assert np.linalg.norm(got - bias - exact) <= 1e-2 * np.linalg.norm(exact)  # bfloat16's own error, no more


@needs_bf16
def test_bfloat16_passes_nan_and_infinity_on_as_float32_does():
    """bfloat16 has float32's exponent: an infinite or NaN input is not rounded away, it reaches the output (where
    the engine refuses the batch by name), as a float32 matmul's would."""
    w = np.ones((4, 8), np.float32)
    x = np.ones((3, 8), np.float32)
    x[1, 5], x[2, 0] = np.nan, np.inf
    got = np.asarray(kernels.packed_matmul(mx.array(x), kernels.pack_bf16(mx.array(w)))[0])
    np.testing.assert_array_equal(got[0], 8)
    assert np.isnan(got[1]).all() and np.isinf(got[2]).all()


@pytest.mark.parametrize("dtype", _dtypes("bfloat16", "int8"))
def test_bfloat16_and_int8_multiply_in_the_gemm_embed_gemm_and_the_cpu_choose(dtype):
    """oneMKL (whose kernels use AMX's tiles) where EMBED_GEMM says "mkl", or says "auto" (the default) on a CPU
    with AMX and oneMKL installed; our AVX512-BF16 or AVX512-VNNI kernel otherwise."""
    weight = (kernels.pack_bf16 if dtype == "bfloat16" else kernels.pack_int8)(mx.ones((3, 2)))
    choice = os.environ.get(mkl.ENV_VAR, "auto")
    onemkl = choice == "mkl" or (choice == "auto" and mkl.AMX_FLAGS[dtype] in mkl.cpu_flags() and _onemkl_installed())
    assert kernels.onemkl(dtype) is onemkl
    assert weight.packed.size == (6 if onemkl else 64 * (2 if dtype == "bfloat16" else 4))  # plain rows, or panels


def _onemkl_installed() -> bool:
    return bool(dist_paths("mkl", "libmkl_rt.so*"))


@pytest.mark.skipif(not _onemkl_installed(), reason="oneMKL is not installed (the test extra installs it)")
@pytest.mark.skipif(not (kernels.bf16_available() or kernels.int8_available()), reason="no bfloat16 or int8 kernel")
def test_every_bfloat16_and_int8_test_passes_on_the_other_gemm():
    """The choice is made once a process, so the bfloat16 and int8 tests run again in a second pytest on the GEMM
    this one does not use: oneMKL on a CPU without AMX (what runs on AMX but for the tiles), or our kernels on one
    with it. The CLI and servers they start inherit the choice."""
    other = "native" if kernels.onemkl("bfloat16" if kernels.bf16_available() else "int8") else "mkl"
    here = Path(__file__).parent
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(here / "test_int8.py"), __file__, "-k",
         "test_int8.py or ((bfloat16 or int8) and not other_gemm)"], env={**os.environ, mkl.ENV_VAR: other},
        cwd=here, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert " passed" in result.stdout and " failed" not in result.stdout


@pytest.fixture
def fresh_gemm_choice():
    """`mkl.gemm` decides again inside the test, and again after it, as the process would."""
    mkl.gemm.cache_clear()
    mkl._library.cache_clear()
    yield
    mkl.gemm.cache_clear()
    mkl._library.cache_clear()


def test_a_bad_embed_gemm_is_refused_by_name(monkeypatch, fresh_gemm_choice):
    monkeypatch.setenv(mkl.ENV_VAR, "fastest")
    with pytest.raises(ModelError, match="EMBED_GEMM='fastest': expected one of auto, mkl, native"):
        mkl.gemm("int8")


def test_without_onemkl_an_amx_cpu_is_told_the_extra_and_mkl_is_refused(monkeypatch, fresh_gemm_choice):
    """Where oneMKL is not installed: `auto` on a CPU listing AMX warns, naming the extra, and runs our kernels;
    `mkl` is refused in one line."""
    monkeypatch.setattr(mkl, "dist_paths", lambda dist, pattern: [])
    monkeypatch.setattr(mkl, "cpu_flags", lambda: {"avx512_bf16", "amx_bf16", "amx_int8"})
    monkeypatch.setenv(mkl.ENV_VAR, "auto")
    with pytest.warns(RuntimeWarning, match=r"has AMX, but oneMKL is not installed \(pip install 'embed\[amx\]'\)"):
        assert mkl.gemm("bfloat16") is None
    mkl.gemm.cache_clear()
    monkeypatch.setenv(mkl.ENV_VAR, "mkl")
    with pytest.raises(ModelError, match="EMBED_GEMM=mkl: oneMKL is not installed"):
        mkl.gemm("int8")


@pytest.mark.parametrize("dtype", _dtypes("float16", "bfloat16"))
def test_a_packed_layer_reads_back_its_weight_as_its_dtype_rounded_it(dtype):
    """For model code that reads a Linear's weight rather than calling it (mlx-embeddings' SigLIP)."""
    w = np.random.default_rng(5).standard_normal((70, 33)).astype(np.float32)
    w[3] = 0
    layer = fastmath.PackedLinear.from_linear(nn.Linear(33, 70), PACKERS[dtype])
    layer.packed = PACKERS[dtype](mx.array(w))
    scale = _unit(np.abs(w).max(1))[:, None]
    want = (_bfloat16(w) if dtype == "bfloat16"
            else (w * np.divide(1, scale, out=np.zeros_like(scale), where=scale > 0)).astype(np.float16) * scale)
    np.testing.assert_allclose(np.asarray(layer.weight), want, rtol=1e-6)
    assert layer.weight.shape == (70, 33) and layer.weight is layer.weight  # unpacked once
    assert "_unpacked" not in dict(layer.items())


@needs_f16
def test_rows_of_subnormals_multiply_as_zeros():
    """A row whose largest value is subnormal (1e-45) has no float32 scale to bring it into float16: it multiplies
    as zeros, where float32's products would be under 1e-37, never as the infinity 1 / 1e-45 would make."""
    x = np.full((2, 9), 1e-45, np.float32)
    x[1] = np.linspace(-1, 1, 9)
    w = np.random.default_rng(2).standard_normal((5, 9)).astype(np.float32)
    bias = np.arange(5, dtype=np.float32)
    got = np.asarray(kernels.packed_matmul(mx.array(x), kernels.pack_f16(mx.array(w)), mx.array(bias))[0])
    np.testing.assert_array_equal(got[0], bias)
    np.testing.assert_allclose(got[1], x[1] @ w.T + bias, atol=3e-3)


@needs_f16
@pytest.mark.parametrize("magnitude", [1e30, 1e-30])
def test_rows_float16_cannot_hold_are_scaled_into_it(magnitude):
    """Activations far past float16's range (65504) or below its smallest value still multiply to within float16's
    precision: each row is scaled by a power of two to a peak in [1, 2) first, so no sum overflows or flushes to
    zero."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((5, 300)).astype(np.float32) * np.float32(magnitude)
    w = rng.standard_normal((40, 300)).astype(np.float32)
    got = np.asarray(kernels.packed_matmul(mx.array(x), kernels.pack_f16(mx.array(w)))[0])
    exact = x.astype(np.float64) @ w.T.astype(np.float64)
    assert np.isfinite(got).all()
    assert np.linalg.norm(got - exact) <= 2e-3 * np.linalg.norm(exact)


@needs_f16
def test_non_finite_weights_and_activations_are_errors():
    w = np.ones((4, 8), np.float32)
    w[2, 3] = np.inf
    with pytest.raises(ModelError, match="float16 pack kernel met a NaN"):
        kernels.pack_f16(mx.array(w))
    x = np.ones((3, 8), np.float32)
    x[1, 5] = np.nan
    with pytest.raises(ModelError, match="float16 matmul kernel met a NaN"):
        kernels.packed_matmul(mx.array(x), kernels.pack_f16(mx.array(np.ones((4, 8), np.float32))))


@pytest.mark.parametrize("dtype, least, mean, alone_least", [
    pytest.param("int8", 0.99, 0.997, 0.99999, marks=needs_int8),  # measured 0.9918 min, 0.9982 mean
    pytest.param("float16", 0.99999, 0.999995, 0.999999, marks=needs_f16),  # measured 0.999994 min
    pytest.param("bfloat16", 0.9999, 0.99995, 0.999999, marks=needs_bf16),  # measured 0.99995 min, 0.99999 mean
])
def test_minilm_packed_dtype_fidelity_on_the_golden_texts(minilm_path, dtype, least, mean, alone_least):
    """The figures bench/README.md states, against sentence-transformers' float32; tokens exact, and a text's
    vector does not depend on what it was batched with (activations are quantized or scaled per token)."""
    texts = json.loads((GOLDEN / "minilm_texts.json").read_text(encoding="utf-8"))
    golden = np.load(GOLDEN / "minilm_golden.npz")
    engine = EmbeddingEngine(str(minilm_path), dtype=dtype)
    got = engine.embed(texts)
    assert got.dtype == np.float32 and np.isfinite(got).all()
    similarity = cosine(got, golden["embeddings"])
    assert similarity.min() >= least and similarity.mean() >= mean, (similarity.min(), similarity.mean())
    assert engine.tokens_per_text(texts) == golden["tokens"].tolist()
    alone = np.concatenate([engine.embed([t]) for t in texts[:8]])
    assert cosine(alone, got[:8]).min() >= alone_least
    assert engine.info()["dtype"] == dtype
    engine.unload()


@pytest.mark.parametrize("dtype, least", [pytest.param("float16", 0.99999, marks=needs_f16),
                                          pytest.param("bfloat16", 0.9999, marks=needs_bf16)])
def test_cli_16_bit_dtypes_write_their_dtype_and_near_exact_vectors(tmp_path, minilm_path, dtype, least):
    source = tmp_path / "in.txt"
    source.write_text("The quick brown fox.\nTout le monde.\n中文句子\n" + "long " * 300 + "\n", encoding="utf-8")
    vectors = {}
    for dtype in ("float32", dtype):
        out = tmp_path / f"{dtype}.parquet"
        done = subprocess.run([sys.executable, "-m", "cli", str(source), "-o", str(out), "-m", str(minilm_path),
                               "--dtype", dtype, "--quiet"], capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
        assert "warning:" not in done.stderr  # the fast path: no slow-kernel warning
        assert pq.read_metadata(out).metadata[b"dtype"] == dtype.encode()
        vectors[dtype] = np.stack(pq.read_table(out)["embedding"].to_numpy(zero_copy_only=False))
    assert cosine(vectors[dtype], vectors["float32"]).min() >= least


@pytest.mark.parametrize("dtype, atol", [pytest.param("int8", 0.02, marks=needs_int8),
                                         pytest.param("float16", 0.01, marks=needs_f16),
                                         pytest.param("bfloat16", 0.02, marks=needs_bf16)])
def test_cross_encoder_scores_in_packed_dtypes(tmp_path, minilm_path, dtype, atol):
    """Untrained weights carry the error further than a real model's: measured 0.006 in float16 here."""
    path = tiny_cross_encoder("bert", minilm_path, tmp_path, saved_by="st")
    docs = ["Paris is the capital of France.", "The mitochondria is the powerhouse of the cell.", "bonjour"]
    pairs = [("what is the capital of france", d) for d in docs]
    full, packed = (EmbeddingEngine(str(path), dtype=d) for d in ("float32", dtype))
    np.testing.assert_allclose(packed.score(pairs), full.score(pairs), atol=atol)
    for engine in (full, packed):
        engine.unload()


@pytest.mark.parametrize("dtype, least", [pytest.param("int8", 0.99, marks=needs_int8),
                                          pytest.param("float16", 0.99999, marks=needs_f16),
                                          pytest.param("bfloat16", 0.9999, marks=needs_bf16)])
def test_server_serves_packed_dtypes_to_the_openai_client(minilm_path, dtype, least):
    import openai

    texts = ["The quick brown fox.", "中文句子，还有一些日本語のテキスト。", "def f(x): return x", "long " * 300]
    want = EmbeddingEngine(str(minilm_path)).embed(texts)
    with running_server(str(minilm_path), "--dtype", dtype) as url:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0)
        reply = client.embeddings.create(model=str(minilm_path), input=texts)  # base64, the SDK's default
    got = np.array([d.embedding for d in reply.data], np.float32)
    assert cosine(got, want).min() >= least


@pytest.mark.parametrize("dtype, stored", [pytest.param("float16", "bfloat16", marks=needs_f16),
                                           pytest.param("int8", "float16", marks=needs_int8),
                                           pytest.param("bfloat16", "bfloat16", marks=needs_bf16)])
def test_a_checkpoint_stored_in_16_bits_is_packed_as_stored(tmp_path, minilm_path, dtype, stored):
    """Packed dtypes build the model in the checkpoint's own type (a bfloat16 decoder is half its float32 size),
    pack each Linear in turn, then compute everything else in float32."""
    path = (tiny_encoder("bert", minilm_path, tmp_path) if dtype == "int8"
            else tiny_transformer("qwen3", minilm_path, tmp_path))
    weights = mx.load(str(path / "model.safetensors"))
    mx.save_safetensors(str(path / "model.safetensors"), {k: v.astype(getattr(mx, stored)) for k, v in weights.items()})
    texts = ["a short text", "and a longer one, with more words in it"]
    packed = EmbeddingEngine(str(path), dtype=dtype, max_length=64)
    got = packed.embed(texts)
    params = tree_flatten(packed.model.module.parameters())
    assert params and all(v.dtype == mx.float32 for _, v in params)
    want = EmbeddingEngine(str(path), dtype="float32", max_length=64).embed(texts)
    assert cosine(got, want).min() >= PACKED_DTYPE_FIDELITY[dtype]


@pytest.mark.parametrize("dtype, probe, instructions", [("float16", "f16_available", "AVX512-FP16"),
                                                        ("bfloat16", "bf16_available", "AVX512-BF16")])
def test_without_the_kernel_16_bit_dtypes_run_mlx_and_say_it_is_slow(minilm_path, monkeypatch, dtype, probe,
                                                                     instructions):
    """A CPU without the instructions (or the kernels off) keeps MLX's generic type, with its warning."""
    monkeypatch.setattr(kernels, probe, lambda: False)
    engine = EmbeddingEngine(str(minilm_path), dtype=dtype)
    with pytest.warns(RuntimeWarning, match=f"generic kernels \\(no {instructions} {dtype} kernel here\\)"):
        got = engine.embed(["A sentence to embed.", "Another one"])
    want = EmbeddingEngine(str(minilm_path)).embed(["A sentence to embed.", "Another one"])
    assert cosine(got, want).min() >= 0.999
    engine.unload()


@pytest.mark.parametrize("dtype", _dtypes("float16", "bfloat16"))
@pytest.mark.parametrize("kind", ["llama", "phi3", "gemma2", "gemma3_text", "embeddinggemma", "qwen2", "glm4", "qwen3",
                                  "qwen3_moe"])
def test_decoders_in_16_bits_run_every_linear_in_the_kernel(tmp_path, minilm_path, kind, dtype):
    """An mlx-lm decoder (or our Gemma 3) in float16 or bfloat16: each Linear, attention's, the MLP's and a mixture
    of experts' router, multiplies in the kernel on float32 activations, near the same model in float32."""
    path = tiny_transformer(kind, minilm_path, tmp_path)
    texts = ["a short text", "and a longer one, with more words in it", "中文 and emoji 🎉"]
    half = EmbeddingEngine(str(path), dtype=dtype, max_length=64)
    got = half.embed(texts)
    linears = [m for _, m in half.model.module.named_modules() if isinstance(m, nn.Linear)]
    assert not linears and any(isinstance(m, fastmath.PackedLinear) for _, m in half.model.module.named_modules())
    want = EmbeddingEngine(str(path), dtype="float32", max_length=64).embed(texts)
    assert got.dtype == np.float32 and np.isfinite(got).all()
    assert cosine(got, want).min() >= PACKED_DTYPE_FIDELITY[dtype]
