"""Element-wise kernels of the encoder forward pass (GELU, masked attention softmax), fast on MLX's CPU backend.

MLX's prebuilt CPU `erf` and `exp` are scalar loops on x86 (~90% of a BERT layer's time). Fused by `mx.compile`
and built for this CPU's vector units (`cpu_compile`), the same built-in formulas run 4-5x faster with the same
results. Where that cannot be done (no g++, other dtypes) the built-in kernels run unchanged. On a GPU, GELU is
fused by `mx.compile` too, and attention is MLX's `scaled_dot_product_attention`.
"""

from __future__ import annotations

import math

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
    """Scaled dot-product attention; `mask` is boolean (B, 1, 1, L), True where a key may be attended.

    Masked keys get exactly zero weight; a query with no key to attend gets zeros, never NaN.
    """
    if mask is None:
        if not _fast_path(q):
            return mx.fast.scaled_dot_product_attention(q, k, v, scale=scale)
        return _softmax((q * scale) @ k.swapaxes(-1, -2)) @ v
    keep = mask.astype(q.dtype).swapaxes(-1, -2)  # (B, 1, L, 1)
    if not _fast_path(q):  # zero values: a row with every key masked gets uniform weights, so zeros
        return mx.fast.scaled_dot_product_attention(q, k, v * keep, scale=scale, mask=mask)
    # The mask rides in the scores matmul as one more coordinate (1 for queries, 0 or -1e30 for keys): a
    # broadcast operand would make the fused softmax kernel index-by-index, a contiguous one vectorizes.
    B, H, L, _ = q.shape
    q = mx.concatenate([q * scale, mx.ones((B, H, L, 1), q.dtype)], axis=-1)
    k = mx.concatenate([k, mx.broadcast_to((1.0 - keep) * _MASKED, (*k.shape[:-1], 1))], axis=-1)
    return _softmax(q @ k.swapaxes(-1, -2)) @ (v * keep)


def softmax(scores: mx.array, mask: mx.array | None = None) -> mx.array:
    """Softmax over the last axis; exactly zero where the (broadcastable, boolean) `mask` is False."""
    if not _fast_path(scores):
        return mx.softmax(scores if mask is None else mx.where(mask, scores, -mx.inf), axis=-1)
    if mask is not None:
        scores = scores + (1.0 - mask.astype(scores.dtype)) * _MASKED
    return _softmax(scores)


def _fast_path(x: mx.array) -> bool:
    return x.dtype == mx.float32 and mx.default_device() == mx.cpu and native_kernels()


def _gelu_formula(x: mx.array) -> mx.array:
    return x * (1 + mx.erf(x / math.sqrt(2))) / 2


def _softmax_formula(scores: mx.array) -> mx.array:
    e = mx.exp(scores - scores.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


_gelu = mx.compile(_gelu_formula)
_softmax = mx.compile(_softmax_formula)


def activation(name: str):
    """A config's `hidden_act` as a function; the exact GELU goes through the fast kernel above."""
    table = {"gelu": gelu, "gelu_new": nn.gelu_approx, "gelu_pytorch_tanh": nn.gelu_approx,
             "gelu_fast": nn.gelu_approx, "relu": nn.relu, "silu": nn.silu}
    if name not in table:
        raise ValueError(f"unsupported activation {name!r}; supported: {', '.join(table)}")
    return table[name]
