"""fastmath's GELU and masked attention match float64 references, on native kernels and on the built-in ones."""

import math

import mlx.core as mx
import numpy as np
import pytest

from embedder import fastmath


@pytest.fixture(params=["native", "builtin"])
def mode(request, monkeypatch):
    """The built-in path is what runs where native kernels cannot be built (no g++, not Linux)."""
    if request.param == "builtin":
        monkeypatch.setattr(fastmath, "_fast_path", lambda x: False)
    return request.param


def _gelu64(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    return x * 0.5 * np.vectorize(math.erfc)(-x / math.sqrt(2))


def test_gelu_equals_the_builtin_formula_and_the_reference(mode):
    """MLX's erf is PyTorch's CPU approximation (absolute error ~1e-7); native kernels must not change it."""
    x = np.concatenate([np.linspace(-10, 10, 20001), [0.0, -0.0, 1e-30, -1e-30, 3e-3]]).astype(np.float32)
    out = np.asarray(fastmath.gelu(mx.array(x)))
    np.testing.assert_allclose(out, np.asarray(fastmath._gelu_formula(mx.array(x))), rtol=1e-6, atol=1e-7)
    assert (np.abs(out - _gelu64(x)) <= 2e-7 * np.maximum(1, np.abs(x))).all()


def test_gelu_extremes_are_finite_and_shape_kept(mode):
    x = np.array([[-1e30, -200.0, -13.2, 13.2, 200.0, 1e30]], dtype=np.float32)
    out = np.asarray(fastmath.gelu(mx.array(x)))
    assert out.shape == x.shape and np.isfinite(out).all()
    assert (np.abs(out[0, :3]) < 1e-30).all()
    np.testing.assert_array_equal(out[0, 3:], x[0, 3:])


def _attention64(q, k, v, scale, keep):
    s = (q.astype(np.float64) @ np.swapaxes(k, -1, -2)) * scale
    s = np.where(keep, s, -np.inf)
    top = s.max(-1, keepdims=True)
    e = np.where(keep, np.exp(s - np.where(np.isfinite(top), top, 0)), 0.0)
    total = e.sum(-1, keepdims=True)
    p = np.divide(e, total, out=np.zeros_like(e), where=total > 0)
    return p @ v, p


@pytest.fixture(params=["one-pass", "exact"])
def softmax_mode(request):
    if request.param == "exact":
        with fastmath.exact_softmax():
            yield request.param
    else:
        yield request.param


def test_masked_attention_matches_reference_and_padding_rows_are_zero(mode, softmax_mode):
    rng = np.random.default_rng(0)
    B, H, L, D = 3, 2, 7, 4
    q, k, v = (rng.standard_normal((B, H, L, D)).astype(np.float32) * 4 for _ in range(3))
    keep = np.ones((B, 1, 1, L), dtype=bool)
    keep[1, ..., 5:] = False  # a padded row
    keep[2] = False  # an empty input: nothing to attend
    out = np.asarray(fastmath.attention(mx.array(q), mx.array(k), mx.array(v), 0.5, mx.array(keep)))
    ref, _ = _attention64(q, k, v, 0.5, keep)
    ref *= np.swapaxes(keep, -1, -2)  # padding queries: zeros
    assert out.shape == (B, H, L, D) and np.isfinite(out).all()
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)
    assert (out[2] == 0).all() and (out[1, :, 5:] == 0).all()
    unmasked = np.asarray(fastmath.attention(mx.array(q), mx.array(k), mx.array(v), 0.5, None))
    np.testing.assert_allclose(unmasked, _attention64(q, k, v, 0.5, np.ones_like(keep))[0], rtol=1e-5, atol=1e-5)


def test_one_pass_softmax_overflow_is_nan_and_exact_softmax_is_right():
    """A key scoring ~100 above a query's own score overflows the one-pass softmax: NaN, never a wrong number."""
    if not fastmath.fast_cpu_kernels(mx.float32):
        pytest.skip("the one-pass softmax is the native CPU path")
    rng = np.random.default_rng(2)
    q, k, v = (rng.standard_normal((1, 1, 4, 8)).astype(np.float32) for _ in range(3))
    k[0, 0, 3] = q[0, 0, 0] * 60  # query 0 scores ~60 |q|^2 with key 3
    keep = np.ones((1, 1, 1, 4), dtype=bool)
    args = (mx.array(q), mx.array(k), mx.array(v), 1.0, mx.array(keep))
    ref = _attention64(q, k, v, 1.0, keep)[0]
    out = np.asarray(fastmath.attention(*args))
    assert np.isnan(out[0, 0, 0]).all()
    for row in range(1, 4):  # each other query: NaN, or right
        assert np.isnan(out[0, 0, row]).all() or np.allclose(out[0, 0, row], ref[0, 0, row], rtol=1e-5, atol=1e-5)
    with fastmath.exact_softmax():
        exact = np.asarray(fastmath.attention(*args))
    np.testing.assert_allclose(exact, ref, rtol=1e-5, atol=1e-5)


def test_other_dtypes_and_devices_use_the_builtin_kernels():
    x = mx.array(np.linspace(-4, 4, 33), dtype=mx.float16)
    ref = x * (1 + mx.erf(x / math.sqrt(2))) / 2
    assert mx.array_equal(fastmath.gelu(x), ref)
