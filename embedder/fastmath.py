"""Element-wise kernels of the encoder forward pass (GELU, masked attention softmax), fast on MLX's CPU backend.

MLX's prebuilt CPU `erf` and `exp` are scalar loops on x86 (~90% of a BERT layer's time). Fused by `mx.compile`
and built for this CPU's vector units (`cpu_compile`), the same built-in formulas run 4-5x faster with the same
results. Where that cannot be done (no g++, other dtypes) the built-in kernels run unchanged. On a GPU, GELU is
fused by `mx.compile` too, and attention is MLX's `scaled_dot_product_attention`.
"""

from __future__ import annotations

import contextlib
import math
import threading

import mlx.core as mx
import mlx.nn as nn

from .cpu_compile import native_kernels

_MASKED = -1e30  # finite: masked scores never put an inf into arithmetic


def gelu(x: mx.array) -> mx.array:
    """The erf GELU that BERT-family models were trained with (MLX's erf: PyTorch's CPU approximation)."""
    if _fast_path(x) or mx.default_device() == mx.gpu:  # one fused kernel, not five element-wise passes
        return _gelu(x)
    return _gelu_formula(x)


def attention(q: mx.array, k: mx.array, v: mx.array, scale: float, mask: mx.array | None) -> mx.array:
    """Scaled dot-product self-attention; `mask` is boolean (B, 1, 1, L), True at real tokens.

    Masked keys get exactly zero weight, and masked (padding) queries get zeros, never NaN.
    """
    if not _fast_path(q):
        if mask is None:
            return mx.fast.scaled_dot_product_attention(q, k, v, scale=scale)
        keep = mask.astype(q.dtype).swapaxes(-1, -2)  # zero values: a query with no key to attend gets zeros
        return mx.fast.scaled_dot_product_attention(q, k, v * keep, scale=scale, mask=mask) * keep
    B, H, L, D = q.shape
    keep = mx.ones((B, 1, L, 1), q.dtype) if mask is None else mask.astype(q.dtype).swapaxes(-1, -2)
    ones = mx.ones((B, H, L, 1), q.dtype)
    masked = mx.broadcast_to((1.0 - keep) * _MASKED, (B, H, L, 1))
    if getattr(_exact, "on", False):
        q = mx.concatenate([q * scale, ones], axis=-1)
        k = mx.concatenate([k, masked], axis=-1)
        return _softmax(q @ k.swapaxes(-1, -2)) @ v * keep
    # A broadcast operand makes a fused CPU kernel go index by index; contiguous ones vectorize. So each query's
    # shift (its score with its own key, not the row max: no max pass, and exp(0) = 1 keeps the sum >= 1) and
    # the mask ride in the scores matmul as extra coordinates, and the softmax sum in the values matmul as a
    # column of ones: one exp pass over the scores. A score more than ~88 above the shift overflows to inf and
    # comes out as NaN, which the engine answers by running the batch again with the row max (`exact_softmax`).
    own = (q * k).sum(axis=-1, keepdims=True)
    q = mx.concatenate([q, -own, ones], axis=-1)
    k = mx.concatenate([k, ones, masked / scale], axis=-1)
    weighted = _exp_scaled(q @ k.swapaxes(-1, -2), scale) @ mx.concatenate([v, ones], axis=-1)
    weighted = weighted.swapaxes(1, 2)  # normalized straight into (B, L, H, D) order, for the caller's reshape
    out = _normalize(weighted[..., :D], weighted[..., D:], keep.swapaxes(1, 2))
    return out.swapaxes(1, 2)


@contextlib.contextmanager
def exact_softmax():
    """Attention softmax shifted by the row max (one more pass) in this thread while inside; for the rare
    overflowing batch (each engine's worker thread traces its own forward passes)."""
    saved, _exact.on = getattr(_exact, "on", False), True
    try:
        yield
    finally:
        _exact.on = saved


def fast_cpu_kernels(dtype: mx.Dtype) -> bool:
    """Whether `dtype` arrays take the native CPU kernels here, the one-pass attention softmax included."""
    return dtype == mx.float32 and mx.default_device() == mx.cpu and native_kernels()


def _fast_path(x: mx.array) -> bool:
    return fast_cpu_kernels(x.dtype)


def _gelu_formula(x: mx.array) -> mx.array:
    return x * (1 + mx.erf(x / math.sqrt(2))) / 2


def _softmax_formula(scores: mx.array) -> mx.array:
    e = mx.exp(scores - scores.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def _normalize_formula(weighted: mx.array, total: mx.array, keep: mx.array) -> mx.array:
    """Divide by the softmax sum; an infinite sum (overflow) gives NaN, never a silent zero; padding gives 0."""
    return mx.where(keep > 0, weighted / total + total * 0, 0)


_gelu = mx.compile(_gelu_formula)
_softmax = mx.compile(_softmax_formula)
_exp_scaled = mx.compile(lambda scores, scale: mx.exp(scores * scale))
_normalize = mx.compile(_normalize_formula)
_exact = threading.local()


class Linear(nn.Linear):
    """nn.Linear; on the fast CPU path a matmul then a vectorized bias add, since MLX's CPU `addmm` first
    copies the broadcast bias into its output (BERT forward, same process, A/B: +5% at 8x256 and 128x32)."""

    def __call__(self, x: mx.array) -> mx.array:
        if "bias" in self and _fast_path(x):
            return x @ self["weight"].T + self["bias"]
        return super().__call__(x)


def activation(name: str):
    """A config's `hidden_act` as a function; the exact GELU goes through the fast kernel above."""
    table = {"gelu": gelu, "gelu_new": nn.gelu_approx, "gelu_pytorch_tanh": nn.gelu_approx,
             "gelu_fast": nn.gelu_approx, "relu": nn.relu, "silu": nn.silu}
    if name not in table:
        raise ValueError(f"unsupported activation {name!r}; supported: {', '.join(table)}")
    return table[name]
