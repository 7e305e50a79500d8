"""The encoder forward pass's GELU and attention, fast on MLX's CPU backend.

MLX's prebuilt CPU `erf` and `exp` are scalar loops on x86 (~90% of a BERT layer's time). Fused by `mx.compile`
and built for this CPU's vector units (`cpu_compile`), the same built-in GELU formula runs 4-5x faster with the
same results. Attention on the CPU in float32 is our own fused C++ kernel (`kernels/attention.cpp`), which never
writes the scores to memory. Where neither can be built (no g++, not Linux) or for other dtypes, MLX's built-in
kernels run unchanged; on a GPU, GELU is fused by `mx.compile` too, and attention is MLX's
`scaled_dot_product_attention`.
"""

from __future__ import annotations

import ctypes
import functools
import math

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from .cpu_compile import native_kernels, native_library


def gelu(x: mx.array) -> mx.array:
    """The erf GELU that BERT-family models were trained with (MLX's erf: PyTorch's CPU approximation)."""
    if _fast_path(x) or mx.default_device() == mx.gpu:  # one fused kernel, not five element-wise passes
        return _gelu(x)
    return _gelu_formula(x)


def self_attention(qkv: mx.array, n_heads: int, scale: float, mask: mx.array | None) -> mx.array:
    """Scaled dot-product self-attention from fused projections (B, L, 3 * H * D) to (B, L, H * D); `mask` is
    boolean (B, 1, 1, L), True at real tokens. Masked keys get exactly zero weight, masked (padding) queries zeros.
    """
    B, L, width = qkv.shape
    D = width // (3 * n_heads)
    kernel = _attention_kernel() if _fast_path(qkv) and D <= 128 else None
    if kernel is not None and (mask is None or mask.shape == (B, 1, 1, L)):
        return _native_attention(kernel, qkv, n_heads, scale, mask)
    q, k, v = (qkv.reshape(B, L, 3, n_heads, D)[:, :, i].swapaxes(1, 2) for i in range(3))
    return attention(q, k, v, scale, mask).swapaxes(1, 2).reshape(B, L, n_heads * D)


def attention(q: mx.array, k: mx.array, v: mx.array, scale: float, mask: mx.array | None) -> mx.array:
    """MLX's attention on (B, H, L, D) heads, with `self_attention`'s treatment of padding."""
    if mask is None:
        return mx.fast.scaled_dot_product_attention(q, k, v, scale=scale)
    keep = mask.astype(q.dtype).swapaxes(-1, -2)  # zero values: a query with no key to attend gets zeros
    return mx.fast.scaled_dot_product_attention(q, k, v * keep, scale=scale, mask=mask) * keep


def _native_attention(kernel, qkv: mx.array, n_heads: int, scale: float, mask: mx.array | None) -> mx.array:
    """MLX has no CPU custom-kernel API: evaluate the projections, run the C++ kernel on their memory (ctypes lets
    other threads run meanwhile), and hand its output back as a new array."""
    B, L, width = qkv.shape
    mx.eval(qkv) if mask is None else mx.eval(qkv, mask)
    data = np.ascontiguousarray(qkv)  # a view of MLX's buffer when contiguous, as a projection's output is
    keep = None if mask is None else np.ascontiguousarray(mask.reshape(B, L))  # bool: one byte per token
    out = np.empty((B, L, width // 3), np.float32)
    status = kernel(data.ctypes.data, None if keep is None else keep.ctypes.data, out.ctypes.data,
                    B, L, n_heads, width // (3 * n_heads), scale)
    if status != 0:
        raise RuntimeError(f"native attention failed ({status}) for head size {width // (3 * n_heads)}")
    return mx.array(out)


@functools.cache
def _attention_kernel():
    library = native_library("attention")
    if library is None:
        return None
    kernel = library.embed_self_attention
    kernel.argtypes = [ctypes.c_void_p] * 3 + [ctypes.c_int] * 4 + [ctypes.c_float]
    kernel.restype = ctypes.c_int
    return kernel


def fast_cpu_kernels(dtype: mx.Dtype) -> bool:
    """Whether `dtype` arrays take the native CPU kernels here."""
    return dtype == mx.float32 and mx.default_device() == mx.cpu and native_kernels()


def _fast_path(x: mx.array) -> bool:
    return fast_cpu_kernels(x.dtype)


def _gelu_formula(x: mx.array) -> mx.array:
    return x * (1 + mx.erf(x / math.sqrt(2))) / 2


_gelu = mx.compile(_gelu_formula)


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
