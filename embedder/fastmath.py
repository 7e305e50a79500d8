"""Element-wise kernels of the encoder forward pass (GELU, attention softmax), fast on MLX's CPU backend.

MLX's CPU `erf` and `exp` are scalar loops (~90% of a BERT layer's time); arithmetic, comparisons and bit
ops are vectorized. So on the CPU, exp and erfc are rebuilt here from those (float32-accurate, a few ulp)
and fused with `mx.compile`. On GPU backends, and for other dtypes, the built-in kernels are used unchanged.
"""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Callable

import mlx.core as mx

_LOG2E = 1.4426950408889634
_LN2_HI = 0.693359375  # few mantissa bits: k * _LN2_HI is exact for |k| < 2**15
_LN2_LO = -2.12194440e-4
_ROUNDER = 12582912.0  # 1.5 * 2**23: adding then subtracting it rounds a float32 to the nearest integer
_EXP_MIN = -87.33  # exp(_EXP_MIN) ~ 1e-38 is still a normal float32: 2**k below 2**-126 cannot be built from bits
_EXP_POLY = (1.9875691500e-4, 1.3981999507e-3, 8.3334519073e-3, 4.1665795894e-2, 1.6666665459e-1, 5.0000001201e-1)
# erfcx(z) = exp(z*z) * erfc(z) ~ P(z) / Q(z) on [0, 9.3], relative error 6e-9 (fitted, weighted least squares)
_ERFCX_P = (0.032673911092057834, 0.22856280076044727, 0.7301407076501496, 1.2369093383721401, 1.0000000059621215)
_ERFCX_Q = (0.0579122453129913, 0.405144806101774, 1.3226516386541607, 2.399074119468021, 2.3652891017130004, 1.0)
_GELU_MAX_ABS = 13.15  # past it Phi(-|x|) < 1e-38: clamping changes nothing a float32 can hold

Kernel = Callable[..., "mx.array | tuple[mx.array, ...]"]


def gelu(x: mx.array) -> mx.array:
    """The exact (erf) GELU that BERT-family models were trained with."""
    if not _fast_path(x):
        return x * (1 + mx.erf(x / math.sqrt(2))) / 2
    x = mx.maximum(x, -_GELU_MAX_ABS)  # gelu(x) for x below is under 1.2e-38 in magnitude
    part, bits = _run(_gelu_parts, mx.minimum(mx.abs(x), _GELU_MAX_ABS))
    return _run(_gelu_finish, x, x.view(mx.int32), part, bits.view(mx.float32))


def attention(q: mx.array, k: mx.array, v: mx.array, scale: float, mask: mx.array | None) -> mx.array:
    """Scaled dot-product attention; `mask` is boolean (B, 1, 1, L), True where a key may be attended.

    Masked keys get exactly zero weight; a query with no key to attend gets zeros, never NaN.
    """
    if not _fast_path(q):
        return mx.fast.scaled_dot_product_attention(q, k, v, scale=scale, mask=mask)
    return softmax((q * scale) @ k.swapaxes(-1, -2), mask) @ v


def softmax(scores: mx.array, mask: mx.array | None = None) -> mx.array:
    """Softmax over the last axis; exactly zero where the (broadcastable, boolean) `mask` is False.

    Masking is by a finite -1e30 before the max and a 0/1 factor after exp: no -inf enters arithmetic, so an
    all-masked row sums to 0 and stays 0. No `where`: MLX runs select (and min/max inside fused kernels) as
    scalar code, ~15x slower than arithmetic; broadcasts stay in eager ops, whose loops are vectorized.
    """
    if not _fast_path(scores):
        return mx.softmax(scores if mask is None else mx.where(mask, scores, -mx.inf), axis=-1)
    keep = None if mask is None else mask.astype(mx.float32)
    if keep is not None:
        scores = scores + (keep - 1.0) * 1e30
    shifted = mx.maximum(scores - scores.max(axis=-1, keepdims=True), _EXP_MIN)
    p, bits = _run(_exp_parts, shifted)
    e = p * bits.view(mx.float32)
    if keep is not None:
        e = e * keep
    return e * mx.reciprocal(mx.maximum(e.sum(axis=-1, keepdims=True), 1e-30))


def _fast_path(x: mx.array) -> bool:
    return x.dtype == mx.float32 and mx.default_device() == mx.cpu


def _exp_parts(hi: mx.array, lo: mx.array | float = 0.0) -> tuple[mx.array, mx.array]:
    """exp(hi + lo) = p * 2**k for hi in [-87.33, 88]: p a degree-7 polynomial, 2**k as float32 bits.

    The bits come back as int32 because `.view` ends a fused kernel: the caller views them (free) and
    multiplies. `lo` carries the low part of an argument that a float32 cannot hold alone (see `_gelu_parts`).
    """
    k = (hi * _LOG2E + _ROUNDER) - _ROUNDER  # round to nearest without floor(), a scalar libm call in C++
    r = hi - k * _LN2_HI - k * _LN2_LO + lo
    p = _horner(r, _EXP_POLY) * r * r + r + 1.0
    return p, mx.left_shift(k.astype(mx.int32) + 127, 23)


def _gelu_parts(a: mx.array) -> tuple[mx.array, mx.array]:
    """Phi(-a) = erfc(a/sqrt 2)/2 = exp(-a*a/2) * erfcx/2 for a = |x| <= 13.15, as (p * erfcx/2, bits of 2**k).

    a*a/2 is split into an exact high part and a small low part (Veltkamp), since a rounded a*a would cost exp
    ~a*a*6e-8 of relative accuracy (1e-5 at x = -10).
    """
    c = a * 4097.0
    a_hi = c - (c - a)  # the top 12 significant bits of a: a_hi * a_hi is exact
    p, bits = _exp_parts(a_hi * a_hi * -0.5, (a - a_hi) * (a + a_hi) * -0.5)
    z = a * (1 / math.sqrt(2))
    return p * _horner(z, _ERFCX_P) / (_horner(z, _ERFCX_Q) * 2.0), bits


def _gelu_finish(x: mx.array, x_bits: mx.array, part: mx.array, two_k: mx.array) -> mx.array:
    """x * Phi(x), with Phi(x) = 1 - Phi(-x) for x >= 0 so that neither tail cancels; the sign from bits."""
    half_erfc = part * two_k
    positive = (mx.right_shift(x_bits, 31) + 1).astype(mx.float32)  # 1.0 where the sign bit is clear, else 0.0
    return x * (half_erfc + positive * (1.0 - 2.0 * half_erfc))


def _horner(x: mx.array, coefficients: tuple[float, ...]) -> mx.array:
    acc = x * coefficients[0] + coefficients[1]
    for c in coefficients[2:]:
        acc = acc * x + c
    return acc


def _run(kernel: Kernel, *args: mx.array) -> mx.array | tuple[mx.array, ...]:
    """Fused by `mx.compile` (several times fewer memory passes) where MLX can build it; eager if not."""
    return _compiled(kernel)(*args) if _compile_works() else kernel(*args)


@functools.cache
def _compiled(kernel: Kernel) -> Kernel:
    return mx.compile(kernel)


@functools.cache
def _compile_works() -> bool:
    """MLX builds fused CPU kernels with the `g++` on PATH at run time; with none it runs them op by op
    (correct, slower), but a g++ that cannot build them raises: then stay eager."""
    try:
        mx.eval(mx.compile(lambda a: a * 2.0 + 1.0)(mx.zeros(4)))
    except (RuntimeError, ValueError) as err:
        warnings.warn(f"embedder.fastmath: mx.compile unavailable ({err}); using uncompiled kernels (slower)",
                      RuntimeWarning, stacklevel=2)
        return False
    return True
