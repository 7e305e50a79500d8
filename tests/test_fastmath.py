"""fastmath's GELU and masked self-attention match float64 references, on native kernels and on the built-in ones."""

import dataclasses
import math

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest
from mlx.utils import tree_map
from reference import needs_bf16, needs_f16, needs_int8

from embedder.native import fastmath, kernels


@pytest.fixture(params=["native", "compiled", "builtin"])
def mode(request, monkeypatch):
    """The built-in path is what runs where native kernels cannot be built (no g++, not Linux); "compiled" is
    MLX's kernels built natively without ours (where our C++ does not build)."""
    if request.param == "builtin":
        monkeypatch.setattr(fastmath, "_fast_path", lambda x: False)
    elif not fastmath.fast_cpu_kernels(mx.float32):  # else "native" and "compiled" would test the built-in path
        pytest.skip("MLX's kernels do not build natively here (needs Linux and g++)")
    elif request.param == "native" and not kernels.available():
        pytest.skip("our C++ kernels do not build here")
    if request.param == "compiled":
        monkeypatch.setattr(kernels, "available", lambda: False)
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


def _attention64(q, k, v, scale, keep, bias=None):
    s = (q.astype(np.float64) @ np.swapaxes(k, -1, -2)) * scale
    if bias is not None:
        s = s + bias
    s = np.where(keep, s, -np.inf)
    top = s.max(-1, keepdims=True)
    e = np.where(keep, np.exp(s - np.where(np.isfinite(top), top, 0)), 0.0)
    total = e.sum(-1, keepdims=True)
    p = np.divide(e, total, out=np.zeros_like(e), where=total > 0)
    return p @ v


def _qkv(rng, B, L, H, D, spread):
    return rng.standard_normal((B, L, 3, H, D)).astype(np.float32) * spread


def _reference(qkv, scale, keep, bias=None):
    """float64 attention over (B, L, 3, H, D), `bias` (H, L, L) added to the scaled scores; padding queries zeros,
    as self_attention promises."""
    q, k, v = (np.swapaxes(qkv[:, :, i], 1, 2) for i in range(3))
    keep4 = keep[:, None, None, :]
    out = _attention64(q, k, v, scale, keep4, bias) * np.swapaxes(keep4, -1, -2)
    B, H, L, D = out.shape
    return np.swapaxes(out, 1, 2).reshape(B, L, H * D)


@pytest.mark.parametrize("L, H, D", [(7, 2, 4), (37, 3, 16), (70, 2, 32), (19, 2, 40), (33, 1, 64), (11, 2, 96),
                                     (9, 2, 128), (5, 1, 160)])
def test_self_attention_matches_float64_and_padding_gets_zeros(mode, L, H, D):
    """Head sizes on both sides of the kernel's vector width, lengths off its blocks, and a head too big for it."""
    rng = np.random.default_rng(L)
    qkv = _qkv(rng, 4, L, H, D, 2.0)
    keep = np.ones((4, L), dtype=bool)
    keep[1, L // 2:] = False  # right padding, as the engine pads
    keep[2] = False  # an empty input: nothing to attend
    keep[3, ::3] = False  # holes: any mask, not only a prefix
    scale = 1 / math.sqrt(D)
    out = np.asarray(fastmath.self_attention(mx.array(qkv.reshape(4, L, -1)), H, scale,
                                             mx.array(keep)[:, None, None, :]))
    assert out.shape == (4, L, H * D) and np.isfinite(out).all()
    np.testing.assert_allclose(out, _reference(qkv, scale, keep), rtol=1e-5, atol=2e-5)
    assert (out[2] == 0).all() and (out[1, L // 2:] == 0).all() and (out[3, ::3] == 0).all()
    unmasked = np.asarray(fastmath.self_attention(mx.array(qkv.reshape(4, L, -1)), H, scale, None))
    np.testing.assert_allclose(unmasked, _reference(qkv, scale, np.ones_like(keep)), rtol=1e-5, atol=2e-5)


@pytest.mark.parametrize("L, H, D", [(7, 2, 4), (37, 3, 16), (70, 2, 64), (9, 2, 128)])
def test_packed_tokens_attend_as_the_padded_batch_does(L, H, D):
    """The native path's packing: real tokens row after row, sequences cut by `starts`; the same attention as the
    padded batch, and pack/unpack a round trip with zeros at padding. An empty sequence and a full one included."""
    if not fastmath.fast_cpu_kernels(mx.float32) or not kernels.available():
        pytest.skip("our C++ kernels do not build here")
    rng = np.random.default_rng(L)
    lengths = np.array([L, L // 2, 0, 1, max(1, L - 3)])
    keep = np.arange(L) < lengths[:, None]
    qkv = mx.array(_qkv(rng, len(lengths), L, H, D, 2.0).reshape(len(lengths), L, -1))
    packed = fastmath.PackedTokens.of(mx.array(keep.astype(np.int32)), qkv, D)
    assert packed is not None and packed.starts.tolist() == [0, *np.cumsum(lengths)]
    scale = 1 / math.sqrt(D)
    flat = fastmath.self_attention(packed.pack(qkv), H, scale, packed)
    assert flat.shape == (lengths.sum(), H * D)
    want = np.asarray(fastmath.self_attention(qkv, H, scale, mx.array(keep)[:, None, None, :]))
    np.testing.assert_allclose(np.asarray(packed.unpack(flat)), want, rtol=1e-6, atol=1e-6)
    assert (np.asarray(packed.unpack(packed.pack(qkv))) == np.asarray(qkv) * keep[..., None]).all()
    full = fastmath.PackedTokens.of(mx.array(np.ones((2, L), np.int32)), qkv[:2], D)  # no padding: a reshape
    assert full.rows is None and full.starts.tolist() == [0, L, 2 * L]
    assert (np.asarray(full.unpack(full.pack(qkv[:2]))) == np.asarray(qkv[:2])).all()
    holes = keep.copy()
    holes[0, 0] = False
    assert fastmath.PackedTokens.of(mx.array(holes.astype(np.int32)), qkv, D) is None  # not right-padded


@pytest.mark.parametrize("L, H, D", [(37, 3, 16), (70, 2, 64)])
def test_self_attention_adds_a_position_bias(mode, L, H, D):
    """MPNet's relative position bias: (H, L, L) added to the scaled scores, padding and holes in the mask too."""
    rng = np.random.default_rng(L)
    qkv = _qkv(rng, 3, L, H, D, 1.0)
    bias = (rng.standard_normal((H, L, L)) * 3).astype(np.float32)
    keep = np.ones((3, L), dtype=bool)
    keep[1, L // 2:] = False
    keep[2, ::4] = False
    scale = 1 / math.sqrt(D)
    out = np.asarray(fastmath.self_attention(mx.array(qkv.reshape(3, L, -1)), H, scale,
                                             mx.array(keep)[:, None, None, :], mx.array(bias)))
    np.testing.assert_allclose(out, _reference(qkv, scale, keep, bias), rtol=1e-5, atol=2e-5)


def _rotated64(x: np.ndarray, dims: int, periods: np.ndarray, interleaved: bool) -> np.ndarray:
    """float64 RoPE over (B, L, H, D) heads: pair i at position p turned by p / periods[i] radians (the angle
    rounded to float32 as transformers rounds it)."""
    angles = np.arange(x.shape[1], dtype=np.float32)[:, None] * (np.float32(1) / periods)[None]
    cos, sin = (f(angles.astype(np.float64))[None, :, None, :] for f in (np.cos, np.sin))
    out = x.astype(np.float64).copy()
    first, second = (slice(0, dims, 2), slice(1, dims, 2)) if interleaved else (slice(0, dims // 2),
                                                                                 slice(dims // 2, dims))
    a, b = out[..., first].copy(), out[..., second].copy()
    out[..., first], out[..., second] = a * cos - b * sin, b * cos + a * sin
    return out


@pytest.mark.parametrize("L, H, D, dims, interleaved", [(37, 3, 16, 16, False), (19, 2, 32, 16, True),
                                                        (70, 2, 64, 64, False), (9, 2, 128, 32, False)])
def test_rotary_attention_matches_float64(mode, L, H, D, dims, interleaved):
    """NomicBERT's and GTE's RoPE (rotate-half or interleaved pairs, all or part of a head) turned inside the native
    kernel, or by MLX's RoPE elsewhere: the float64 rotation and attention, padded and packed."""
    from embedder.models.attention import Rotation

    rng = np.random.default_rng(L + dims)
    rotation = Rotation.of_base(dims, 100.0, interleaved)
    qkv = _qkv(rng, 3, L, H, D, 1.5)
    keep = np.arange(L) < np.array([L, L // 2, 1])[:, None]
    turned = qkv.astype(np.float64)
    for i in range(2):
        turned[:, :, i] = _rotated64(qkv[:, :, i], dims, rotation.periods, interleaved)
    scale = 1 / math.sqrt(D)
    want = _reference(turned, scale, keep)
    fused = mx.array(qkv.reshape(3, L, -1))
    out = np.asarray(rotation.self_attention(fused, H, mx.array(keep)[:, None, None, :]))
    np.testing.assert_allclose(out, want, rtol=2e-5, atol=5e-5)
    packed = fastmath.PackedTokens.of(mx.array(keep.astype(np.int32)), fused, D)
    assert (packed is not None) == (mode != "compiled")  # MLX's attention never packs
    if packed is not None:
        flat = rotation.self_attention(packed.pack(fused), H, packed)
        np.testing.assert_allclose(np.asarray(packed.unpack(flat)), want, rtol=2e-5, atol=5e-5)


@pytest.mark.parametrize("L, H, D, window", [(37, 3, 16, 4), (70, 2, 64, 16), (9, 2, 128, 1)])
def test_windowed_attention_matches_float64(L, H, D, window):
    """ModernBERT's local layers: a key more than `window` positions from its query gets no weight, padded and
    packed alike."""
    _native_or_skip()
    rng = np.random.default_rng(L)
    qkv = _qkv(rng, 3, L, H, D, 1.5)
    keep = np.arange(L) < np.array([L, L // 2, 1])[:, None]
    distance = np.abs(np.arange(L)[:, None] - np.arange(L)[None])
    outside = np.broadcast_to(np.where(distance > window, -np.inf, 0.0), (H, L, L))
    want = _reference(qkv, 1 / math.sqrt(D), keep, outside)
    fused = mx.array(qkv.reshape(3, L, -1))
    got = kernels.self_attention(fused, H, 1 / math.sqrt(D), mx.array(keep)[:, None, None, :], window=window)
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=2e-5)
    packed = fastmath.PackedTokens.of(mx.array(keep.astype(np.int32)), fused, D)
    flat = kernels.self_attention(packed.pack(fused), H, 1 / math.sqrt(D), None, starts=packed.starts, window=window)
    np.testing.assert_allclose(np.asarray(packed.unpack(flat)), want, rtol=1e-5, atol=2e-5)


@pytest.mark.parametrize("L, H, D", [(37, 3, 16), (32, 2, 64), (9, 2, 128)])
def test_packed_rows_past_their_keys_attend_without_being_attended(L, H, D):
    """A ColBERT query's expansion tokens: with `keys`, a packed sequence's rows past keys[b] query its first keys[b]
    rows and are keys to none; every row gets its attention (the padded reference, keys masked, queries not)."""
    _native_or_skip()
    rng = np.random.default_rng(L + D)
    qkv = _qkv(rng, 3, L, H, D, 1.5)
    lengths, keys = np.array([L, L // 2, 3]), np.array([L // 3, L // 2, 1], np.int32)
    keep = np.arange(L) < keys[:, None]
    q, k, v = (np.swapaxes(qkv[:, :, i], 1, 2) for i in range(3))
    want = np.swapaxes(_attention64(q, k, v, 1 / math.sqrt(D), keep[:, None, None, :], None), 1, 2).reshape(3, L, -1)
    rows = np.arange(L) < lengths[:, None]
    packed = dataclasses.replace(fastmath.PackedTokens.of(mx.array(rows.astype(np.int32)), mx.array(qkv), D),
                                 keys=keys)
    fused = mx.array(qkv.reshape(3, L, -1))
    flat = kernels.self_attention(packed.pack(fused), H, 1 / math.sqrt(D), None, starts=packed.starts, keys=keys)
    np.testing.assert_allclose(np.asarray(packed.unpack(flat))[rows], want[rows], rtol=1e-5, atol=2e-5)
    with pytest.raises(Exception, match="failed"):  # keys and a window cannot go together
        kernels.self_attention(packed.pack(fused), H, 1.0, None, starts=packed.starts, keys=keys, window=2)


def test_rotary_tables_that_do_not_fit_are_refused():
    from embedder.errors import ModelError
    from embedder.models.attention import Rotation

    _native_or_skip()
    qkv = mx.zeros((1, 8, 3 * 2 * 16))
    with pytest.raises(ModelError, match="do not cover 8 positions of 16-wide heads"):
        kernels.self_attention(qkv, 2, 1.0, None, rotary=Rotation.of_base(16, 100.0).table(7))
    with pytest.raises(ModelError, match="do not cover 8 positions of 16-wide heads"):
        kernels.self_attention(qkv, 2, 1.0, None, rotary=Rotation.of_base(32, 100.0).table(8))


def test_self_attention_with_scores_in_the_hundreds_is_exact(mode):
    """Scores far past exp's float32 range (~88): the softmax is shifted by each row's max, never overflows.

    Scores of ~400 carry float32 rounding of ~1e-4, so the weights (and outputs ~4) are good to ~1e-4 relative."""
    rng = np.random.default_rng(2)
    qkv = _qkv(rng, 2, 40, 2, 32, 4.0)  # scores up to ~400
    keep = np.ones((2, 40), dtype=bool)
    keep[1, 25:] = False
    mask = mx.array(keep)[:, None, None, :]
    out = np.asarray(fastmath.self_attention(mx.array(qkv.reshape(2, 40, -1)), 2, 1.0, mask))
    assert np.isfinite(out).all()
    np.testing.assert_allclose(out, _reference(qkv, 1.0, keep), rtol=1e-5, atol=5e-4)


def test_the_native_kernels_build_where_native_kernels_do():
    if not fastmath.fast_cpu_kernels(mx.float32):
        pytest.skip("needs Linux and g++")
    assert kernels.available()


def _linear(rng, dims_in, dims_out):
    dense = fastmath.Linear(dims_in, dims_out)
    dense.update({"weight": mx.array(rng.standard_normal((dims_out, dims_in)).astype(np.float32) / 4),
                  "bias": mx.array(rng.standard_normal(dims_out).astype(np.float32))})
    return dense


@pytest.mark.parametrize("dims_out", [384, 40, 7])
def test_linear_gelu_matches_float64_and_leaves_its_input(mode, dims_out):
    rng = np.random.default_rng(dims_out)
    dense = _linear(rng, 24, dims_out)
    x = rng.standard_normal((3, 5, 24)).astype(np.float32) * 3
    x_mx = mx.array(x)
    out = np.asarray(fastmath.linear_activation(dense, x_mx, fastmath.gelu))
    pre = x.astype(np.float64) @ np.asarray(dense.weight, np.float64).T + np.asarray(dense.bias)
    assert out.shape == (3, 5, dims_out)
    np.testing.assert_allclose(out, _gelu64(pre), rtol=2e-6, atol=2e-6)
    np.testing.assert_array_equal(np.asarray(x_mx), x)


@pytest.mark.parametrize("hidden", [384, 40, 7])
@pytest.mark.parametrize("gate, act64", [
    (nn.silu, lambda g: g / (1 + np.exp(-g))), (mx.sigmoid, lambda g: 1 / (1 + np.exp(-g))),
    (None, _gelu64),  # fastmath.gelu, once the module's `gelu` is defined
])
def test_linear_gated_matches_float64_and_leaves_its_input(mode, hidden, gate, act64):
    """A gated feed-forward's value * act(gate) over the halves of one projection: SwiGLU, GLU and GeGLU, gates far
    into both tails included (exp must not overflow)."""
    rng = np.random.default_rng(hidden)
    dense = _linear(rng, 24, 2 * hidden)
    x = rng.standard_normal((3, 5, 24)).astype(np.float32) * 3
    x[0, 0] = 40  # gates in the hundreds, both signs
    x_mx = mx.array(x)
    out = np.asarray(fastmath.linear_gated(dense, x_mx, gate or fastmath.gelu))
    pre = np.asarray(x_mx @ dense.weight.T + dense.bias, np.float64)  # the activation's error alone, not the matmul's
    with np.errstate(over="ignore"):
        want = pre[..., :hidden] * act64(pre[..., hidden:])
    assert out.shape == (3, 5, hidden) and np.isfinite(out).all()
    np.testing.assert_allclose(out, want, rtol=2e-6, atol=2e-5)
    np.testing.assert_array_equal(np.asarray(x_mx), x)


@pytest.mark.parametrize("dims", [384, 40, 7])
def test_linear_add_layer_norm_matches_float64_and_leaves_its_inputs(mode, dims):
    rng = np.random.default_rng(dims)
    dense = _linear(rng, 24, dims)
    norm = nn.LayerNorm(dims, eps=1e-12)
    norm.update({"weight": mx.array(rng.standard_normal(dims).astype(np.float32)),
                 "bias": mx.array(rng.standard_normal(dims).astype(np.float32))})
    x, residual = rng.standard_normal((4, 24)).astype(np.float32), rng.standard_normal((4, dims)).astype(np.float32) * 5
    x_mx, residual_mx = mx.array(x), mx.array(residual)
    out = np.asarray(fastmath.linear_add_norm(dense, x_mx, residual_mx, norm))
    y = x.astype(np.float64) @ np.asarray(dense.weight, np.float64).T + np.asarray(dense.bias) + residual
    mean, var = y.mean(-1, keepdims=True), y.var(-1, keepdims=True)
    ref = (y - mean) / np.sqrt(var + 1e-12) * np.asarray(norm.weight) + np.asarray(norm.bias)
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(np.asarray(x_mx), x)
    np.testing.assert_array_equal(np.asarray(residual_mx), residual)


def _bert_layer(rng, hidden: int, heads: int, act: str = "gelu", family: str = "bert"):
    """One random-weight layer: BERT's, or MPNet's (BERT's layer around MPNet's attention)."""
    from embedder.models import bert, mpnet

    module = mpnet if family == "mpnet" else bert
    args = module.ModelArgs(model_type=family, hidden_size=hidden, num_hidden_layers=1, num_attention_heads=heads,
                            intermediate_size=4 * hidden, max_position_embeddings=64, vocab_size=10, hidden_act=act)
    layer = bert.Layer(args, mpnet.Attention) if family == "mpnet" else bert.Layer(args)
    layer.update(tree_map(lambda p: mx.array(rng.standard_normal(p.shape).astype(np.float32) / 4), layer.parameters()))
    return layer


@pytest.mark.parametrize("dtype", ["float32", pytest.param("int8", marks=needs_int8),
                                   pytest.param("float16", marks=needs_f16),
                                   pytest.param("bfloat16", marks=needs_bf16)])
@pytest.mark.parametrize("act, family, count", [("gelu", "bert", 1), ("gelu", "bert", 3), ("relu", "bert", 2),
                                                ("gelu", "mpnet", 2)])
def test_layers_on_packed_rows_equal_the_padded_layers(dtype, act, family, count):
    """BERT's and MPNet's layers over packed rows (all in one native call with GELU, MPNet's position bias
    included; kernel by kernel with another activation) give what the padded MLX batch gives at its real tokens,
    for one layer and stacks of them; int8, float16 and bfloat16 projections too."""
    _native_or_skip()
    rng = np.random.default_rng(7)
    layers = [_bert_layer(rng, 64, 4, act, family) for _ in range(count)]
    bias = mx.array(rng.standard_normal((4, 9, 9)).astype(np.float32)) if family == "mpnet" else None
    _assert_packed_layers_equal_padded(rng, layers, family, dtype, act == "gelu", bias=bias)


def _assert_packed_layers_equal_padded(rng, layers: list, family: str, dtype: str, one_call_expected: bool,
                                       bias: mx.array | None = None, rotation=None) -> None:
    """`layers` (their matmuls in `dtype`) over a packed batch of mixed lengths, in one native call when
    `one_call_expected` and layer by layer, equal the padded batch's layers at its real tokens, zeros at padding."""
    from embedder.models.bert import run_layers
    from embedder.models.quantized import use_packed_matmuls

    if dtype != "float32":
        for layer in layers:
            use_packed_matmuls(layer, family, dtype)
    lengths = np.array([9, 3, 1, 9, 6])
    keep = np.arange(9) < lengths[:, None]
    x = mx.array(rng.standard_normal((5, 9, 64)).astype(np.float32))
    packed = fastmath.PackedTokens.of(mx.array(keep.astype(np.int32)), x, 16)
    rotary = None if rotation is None else rotation.table(9)
    one_call = fastmath.encoder_layers(packed.pack(x), packed, [layer.parts() for layer in layers], bias, rotary)
    assert (one_call is not None) == one_call_expected
    got = np.asarray(run_layers(layers, x, packed, bias, rotary))
    want = np.asarray(run_layers(layers, x, mx.array(keep)[:, None, None, :], bias))
    np.testing.assert_allclose(got[keep], want[keep], rtol=3e-5, atol=3e-5)
    assert not got[~keep].any()  # padding comes back as zeros
    if one_call is not None:
        np.testing.assert_array_equal(one_call, got[keep])


def _gated_layer(rng, family: str, gate: str):
    """One random-weight NomicBERT layer (gate: its `activation_function`) or GTE layer (gate: `hidden_act`)."""
    from embedder.models import gte, nomic_bert

    if family == "nomic_bert":
        args = nomic_bert.ModelArgs(model_type=family, vocab_size=10, n_embd=64, n_head=4, n_layer=1, n_inner=96,
                                    activation_function=gate, rotary_emb_base=100.0, rotary_emb_fraction=0.5)
        layer = nomic_bert.Layer(args)
    else:
        args = gte.ModelArgs(model_type="new", vocab_size=10, hidden_size=64, num_hidden_layers=1,
                             num_attention_heads=4, intermediate_size=96, hidden_act=gate, rope_theta=100.0)
        layer = gte.Layer(args)
    layer.update(tree_map(lambda p: mx.array(rng.standard_normal(p.shape).astype(np.float32) / 4), layer.parameters()))
    return layer


@pytest.mark.parametrize("dtype", ["float32", pytest.param("int8", marks=needs_int8),
                                   pytest.param("float16", marks=needs_f16),
                                   pytest.param("bfloat16", marks=needs_bf16)])
@pytest.mark.parametrize("family, gate, native", [("nomic_bert", "swiglu", True), ("nomic_bert", "geglu", True),
                                                  ("nomic_bert", "glu", True), ("gte", "gelu", True),
                                                  ("gte", "gelu_new", False)])
def test_gated_rotary_layers_on_packed_rows_equal_the_padded_layers(dtype, family, gate, native):
    """NomicBERT's and GTE's layers (rotary attention, gated feed-forward, half-width rotation for NomicBERT) over
    packed rows, two in one native call where the gate has a kernel, give what the padded batch gives at its real
    tokens; a gate without one (tanh GELU) runs kernel by kernel on the packed rows."""
    _native_or_skip()
    rng = np.random.default_rng(11)
    layers = [_gated_layer(rng, family, gate) for _ in range(2)]
    rotation = layers[0].attn.rotation(9) if family == "nomic_bert" else layers[0].attention.rotation
    _assert_packed_layers_equal_padded(rng, layers, family, dtype, native, rotation=rotation)


@pytest.mark.parametrize("width", [40, 44])
@pytest.mark.parametrize("sequences", [5, 120])
def test_one_call_layers_on_both_sides_of_the_small_batch_bound(sequences, width):
    """Under 512 packed rows (`kernels.SMALL_BATCH_ROWS`) the float32 projections run on weights packed once, from
    there on in the BLAS: both give the padded MLX layers' values, here with widths that are not multiples of 64
    (AVX-512's panel) nor, for 44 and its 132-wide qkv, of 8 (an AVX2 vector)."""
    from embedder.models.bert import run_layers

    _native_or_skip()
    rng = np.random.default_rng(sequences)
    layers = [_bert_layer(rng, width, 4) for _ in range(2)]
    lengths = rng.integers(1, 10, sequences)
    lengths[0] = 9
    keep = np.arange(9) < lengths[:, None]
    assert (keep.sum() < 512) == (sequences == 5)
    x = mx.array(rng.standard_normal((sequences, 9, width)).astype(np.float32))
    packed = fastmath.PackedTokens.of(mx.array(keep.astype(np.int32)), x, 10)
    one_call = fastmath.encoder_layers(packed.pack(x), packed, [layer.parts() for layer in layers])
    want = np.asarray(run_layers(layers, x, mx.array(keep)[:, None, None, :]))
    np.testing.assert_allclose(one_call, want[keep], rtol=3e-5, atol=3e-5)


def test_models_over_the_copy_bound_keep_small_batches_in_the_blas(monkeypatch):
    """No packed copy is made where a model's float32 projections are over `SMALL_BATCH_COPY_BYTES`."""
    _native_or_skip()
    layers = [_bert_layer(np.random.default_rng(3), 32, 2)]
    x = mx.array(np.random.default_rng(4).standard_normal((2, 5, 32)).astype(np.float32))
    packed = fastmath.PackedTokens.of(mx.array(np.ones((2, 5), np.int32)), x, 16)
    parts = [layer.parts() for layer in layers]
    monkeypatch.setattr(fastmath, "SMALL_BATCH_COPY_BYTES", 4 * sum(p.size for p in (
        parts[0].qkv["weight"], parts[0].attention_out["weight"], parts[0].up["weight"], parts[0].down["weight"])) - 1)
    over = fastmath.encoder_layers(packed.pack(x), packed, parts)
    assert not any("_small_batches" in d.__dict__ for d in (parts[0].qkv, parts[0].up))
    monkeypatch.undo()
    under = fastmath.encoder_layers(packed.pack(x), packed, parts)
    np.testing.assert_allclose(over, under, rtol=3e-5, atol=3e-5)
    if kernels.pack_f32(parts[0].qkv["weight"]) is not None:
        assert "_small_batches" in parts[0].qkv.__dict__


def test_the_small_batch_weight_follows_its_weight():
    """Packed at first use, and packed again once the weight is replaced (loading other weights)."""
    _native_or_skip()
    dense = fastmath.Linear(24, 70)
    first = dense.small_batch_weight()
    if first is None:
        pytest.skip("no packed float32 kernel on this CPU")
    assert dense.small_batch_weight() is first and "_small_batches" not in dense.parameters()
    dense.update({"weight": dense["weight"] * 2})
    np.testing.assert_array_equal(dense.small_batch_weight(), first * 2)


@needs_int8
def test_the_one_call_layers_report_a_kernel_failure():
    """A NaN reaching an int8 projection inside the one-call layers comes back as the kernel's error."""
    from embedder.errors import ModelError
    from embedder.models.quantized import use_packed_matmuls

    _native_or_skip()
    layer = _bert_layer(np.random.default_rng(1), 32, 2)
    use_packed_matmuls(layer, "bert", "int8")
    x = np.ones((1, 4, 32), np.float32)
    x[0, 2, 5] = np.nan
    packed = fastmath.PackedTokens.of(mx.array(np.ones((1, 4), np.int32)), mx.array(x), 16)
    with pytest.raises(ModelError, match="encoder layers kernel met a NaN"):
        fastmath.encoder_layers(packed.pack(mx.array(x)), packed, [layer.parts()])


def test_other_dtypes_and_devices_use_the_builtin_kernels():
    x = mx.array(np.linspace(-4, 4, 33), dtype=mx.float16)
    ref = x * (1 + mx.erf(x / math.sqrt(2))) / 2
    assert mx.array_equal(fastmath.gelu(x), ref)


def _native_or_skip():
    if not (fastmath.fast_cpu_kernels(mx.float32) and kernels.available()):
        pytest.skip("the native kernels do not build here (needs Linux and g++)")


@pytest.mark.parametrize("call, message", [
    (lambda x, w, b: kernels.linear_gelu(x, w, b[:5]), r"bias is float32\(5,\), not float32\(7,\)"),
    (lambda x, w, b: kernels.linear_gelu(x, w, b.astype(mx.float16)), "bias is float16"),
    (lambda x, w, b: kernels.linear_gelu(x, w.astype(mx.bfloat16), b), "not float32 operands"),
    (lambda x, w, b: kernels.linear_gelu(x[..., :3], w, b), "not float32 operands"),
    (lambda x, w, b: kernels.linear_add_layer_norm(x, w, b, mx.zeros((2, 6)), None, None, 1e-5), "residual is"),
    (lambda x, w, b: kernels.self_attention(mx.zeros((2, 4, 24)), 2, 1.0, mx.zeros((2, 1, 1, 4))), "mask is float32"),
    (lambda x, w, b: kernels.self_attention(mx.zeros((2, 4, 25)), 2, 1.0, None), "not 3 x 2 heads"),
    (lambda x, w, b: kernels.self_attention(mx.zeros((5, 24)), 2, 1.0, None, starts=np.array([0, 3, 4], np.int32)),
     "starts do not cut 5 packed rows"),
    (lambda x, w, b: kernels.self_attention(mx.zeros((5, 24)), 2, 1.0, None, starts=np.array([0, 6, 5], np.int32)),
     "starts do not cut 5 packed rows"),
])
def test_native_kernels_refuse_buffers_that_are_not_theirs(call, message):
    """Every buffer handed to C is checked first: a wrong dtype or length is an error, never a wild read."""
    from embedder.errors import ModelError

    _native_or_skip()
    x, w, b = mx.ones((2, 4)), mx.ones((7, 4)), mx.ones(7)
    with pytest.raises(ModelError, match=message):
        call(x, w, b)


def test_a_kernel_failure_comes_back_as_a_status_raised_as_model_error():
    """A head size with no kernel is reported across the C boundary and raised, not a crash."""
    from embedder.errors import ModelError

    _native_or_skip()
    too_wide = kernels.max_head_dim() + 1
    with pytest.raises(ModelError, match="no kernel for this head size"):
        kernels.self_attention(mx.zeros((1, 3, 3 * too_wide)), 1, 1.0, None)
    wide = np.random.default_rng(0).standard_normal((1, 3, 3 * too_wide)).astype(np.float32)
    out = fastmath.self_attention(mx.array(wide), 1, 1.0, None)  # the public path falls back to MLX's kernel
    want = _reference(wide.reshape(1, 3, 3, 1, too_wide), 1.0, np.ones((1, 3), bool))
    np.testing.assert_allclose(np.asarray(out), want, rtol=1e-4, atol=1e-4)
