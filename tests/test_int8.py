"""dtype int8: the native int8 matmul against the same quantization done in NumPy, its stated fidelity to float32
on tiny random models, and the engine and `embed` running it (the golden texts' fidelity, a cross-encoder and
`embed serve`, for both packed dtypes, are in test_float16_cpu.py). Skipped where the CPU has no AVX512-VNNI (the
kernel is not built there)."""

import subprocess
import sys

import mlx.core as mx
import numpy as np
import pyarrow.parquet as pq
import pytest
from reference import assert_packed_near_float32, cosine
from tiny_models import save_sentence_transformer, tiny_encoder, tiny_transformer

from embedder import EmbeddingEngine
from embedder.errors import ModelError
from embedder.native import kernels

pytestmark = pytest.mark.skipif(not kernels.int8_available(), reason="no AVX512-VNNI int8 kernel on this CPU")

TEXTS = ["a", "The quick brown fox jumps over the lazy dog.", "中文句子，还有一些日本語のテキスト。",
         "Emoji 🎉 and accents: café, naïve, e\u0301", "def f(x):\n    return x ** 2  # code", "long " * 200]


def _quantized_reference(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """What the kernel computes, in float64: w symmetric per output channel (127 levels), x per row asymmetric
    (uint8 with a zero point), the integer product rescaled."""
    w_scale = np.abs(w).max(1) / 127
    w_scale = np.where(w_scale > 0, w_scale, 1)
    qw = np.clip(np.rint(w / w_scale[:, None]), -127, 127)
    low, high = np.minimum(x.min(1), 0), np.maximum(x.max(1), 0)
    span = (high / np.float32(255) - low / np.float32(255)).astype(np.float32)
    x_scale = np.where(span >= np.finfo(np.float32).tiny, span, 1).astype(np.float32)
    zero = np.clip(np.rint(-low / x_scale), 0, 255)
    qx = np.clip(np.rint(x * (np.float32(1) / x_scale)[:, None]) + zero[:, None], 0, 255)
    return ((qx - zero[:, None]) @ qw.T) * x_scale[:, None].astype(np.float64) * w_scale[None]


@pytest.mark.parametrize("m, k, n", [(1, 4, 1), (7, 5, 3), (6, 384, 64), (13, 384, 1152), (200, 1536, 384),
                                     (5, 70, 130), (193, 33, 65)])
def test_kernel_equals_the_same_quantization_in_numpy(m, k, n):
    """Every tail: rows past a 6-row tile and a 192-row block, depth not a multiple of 4, outputs not of 64; the
    bias added in the same pass."""
    rng = np.random.default_rng(m * 1000 + k + n)
    x = rng.standard_normal((m, k)).astype(np.float32) * rng.uniform(0.1, 10, (m, 1)).astype(np.float32)
    x[0] = np.abs(x[0])  # a row with no negative value: its zero point is 0
    w = (rng.standard_normal((n, k)) * 0.05).astype(np.float32)
    w[0] = 0  # an all-zero channel
    bias = rng.standard_normal(n).astype(np.float32)
    got = np.asarray(kernels.packed_matmul(mx.array(x), kernels.pack_int8(mx.array(w)), mx.array(bias))[0])
    want = _quantized_reference(x, w) + bias
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())
    exact = x.astype(np.float64) @ w.T.astype(np.float64) + bias
    assert np.abs(got - exact).max() <= 0.03 * np.abs(exact).max()  # int8's own error, not the kernel's


def test_kernel_takes_zero_and_constant_rows_and_batched_shapes():
    x = np.zeros((2, 3, 40), np.float32)
    x[0, 1] = 2.5  # a constant row: one level, exact
    w = np.random.default_rng(0).standard_normal((24, 40)).astype(np.float32)
    got = np.asarray(kernels.packed_matmul(mx.array(x), kernels.pack_int8(mx.array(w)))[0])
    assert got.shape == (2, 3, 24) and np.isfinite(got).all()
    assert not got[1].any() and not got[0, 0].any()
    np.testing.assert_allclose(got[0, 1], _quantized_reference(x[0, 1:2], w)[0], rtol=1e-5, atol=1e-5)


def test_rows_at_float32s_ends_stay_finite():
    """A row spanning -3e38 to 3e38 (its range overflows float32) or only subnormals: finite, no NaN."""
    x = np.array([[-3e38, 3e38, 1.0, 0.0], [1e-45, -1e-45, 0.0, 1e-45]], np.float32)
    w = np.full((3, 4), 1e-3, np.float32)
    got = np.asarray(kernels.packed_matmul(mx.array(x), kernels.pack_int8(mx.array(w)))[0])
    assert np.isfinite(got).all()
    np.testing.assert_allclose(got[1], 0, atol=1e-30)


def test_non_finite_weights_are_refused_at_pack():
    w = np.ones((4, 8), np.float32)
    w[2, 3] = np.nan
    with pytest.raises(ModelError, match="int8 pack kernel met a NaN"):
        kernels.pack_int8(mx.array(w))


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_activations_are_an_error_not_a_level(bad):
    x = np.ones((3, 40), np.float32)
    x[1, 17] = bad
    with pytest.raises(ModelError, match="int8 matmul kernel met a NaN"):
        kernels.packed_matmul(mx.array(x), kernels.pack_int8(mx.array(np.ones((8, 40), np.float32))))


@pytest.mark.parametrize("kind", ["bert", "distilbert", "mpnet", "modernbert"])
def test_tiny_encoders_in_int8_stay_near_float32(tmp_path, minilm_path, kind):
    hf = (tiny_transformer(kind, minilm_path, tmp_path) if kind == "modernbert"
          else tiny_encoder(kind, minilm_path, tmp_path))
    assert_packed_near_float32(save_sentence_transformer(hf, tmp_path / "st", "mean", True, max_seq_length=64), TEXTS)


def test_models_without_an_int8_path_are_refused_in_one_line(tmp_path, minilm_path):
    decoder = tiny_transformer("qwen3", minilm_path, tmp_path)
    with pytest.raises(ModelError, match="dtype int8 is not available for 'qwen3'"):
        EmbeddingEngine(str(decoder), dtype="int8").embed(["x"])


def test_a_cpu_without_the_kernel_is_told_so(minilm_path, monkeypatch):
    monkeypatch.setattr(kernels, "int8_available", lambda: False)
    with pytest.raises(ModelError, match="AVX512-VNNI"):
        EmbeddingEngine(str(minilm_path), dtype="int8").embed(["x"])


def _embed_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cli", *args], capture_output=True, text=True, timeout=300)


def test_cli_dtype_int8_writes_its_dtype_and_close_vectors(tmp_path, minilm_path):
    source = tmp_path / "in.txt"
    source.write_text("\n".join(TEXTS[1:]) + "\n", encoding="utf-8")
    outputs = {}
    for dtype in ("float32", "int8"):
        out = tmp_path / f"{dtype}.parquet"
        done = _embed_cli(str(source), "-o", str(out), "-m", str(minilm_path), "--dtype", dtype, "--quiet")
        assert done.returncode == 0, done.stderr
        outputs[dtype] = pq.read_table(out)
        assert pq.read_metadata(out).metadata[b"dtype"] == dtype.encode()
    vectors = {d: np.stack(t["embedding"].to_numpy(zero_copy_only=False)) for d, t in outputs.items()}
    assert cosine(vectors["int8"], vectors["float32"]).min() >= 0.99
    assert outputs["int8"]["tokens"].to_pylist() == outputs["float32"]["tokens"].to_pylist()
    bad = _embed_cli(str(source), "-m", str(minilm_path), "--dtype", "int4")
    assert bad.returncode == 2 and "int4" in bad.stderr and "Traceback" not in bad.stderr
