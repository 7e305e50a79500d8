"""Our C++ CPU kernels (`embedder/kernels`), run on MLX arrays' memory: MLX has no CPU custom-kernel API.

Each call evaluates its inputs, runs a kernel on their buffers through ctypes (which lets other threads run
meanwhile), and returns an MLX array: a new one, or the matmul output it was given, written in place. That
array is fresh and held by nothing else, so no other array sees the write (NumPy views of an evaluated MLX array
share its memory, as MLX documents). float32 on the CPU only; `available()` says whether the kernels built here.
"""

from __future__ import annotations

import ctypes
import functools
from types import SimpleNamespace

import mlx.core as mx
import numpy as np

from .cpu_compile import native_library

_PTR, _INT, _FLOAT = ctypes.c_void_p, ctypes.c_int, ctypes.c_float


@functools.cache
def _kernels() -> SimpleNamespace | None:
    attention, layer_ops = native_library("attention"), native_library("layer_ops")
    if attention is None or layer_ops is None:
        return None
    kernels = SimpleNamespace(attention=attention.embed_self_attention, bias_gelu=layer_ops.embed_bias_gelu,
                              add_layer_norm=layer_ops.embed_add_layer_norm)
    kernels.attention.argtypes, kernels.attention.restype = [_PTR] * 3 + [_INT] * 4 + [_FLOAT], _INT
    kernels.bias_gelu.argtypes, kernels.bias_gelu.restype = [_PTR] * 2 + [_INT] * 2, None
    kernels.add_layer_norm.argtypes, kernels.add_layer_norm.restype = [_PTR] * 5 + [_INT] * 2 + [_FLOAT], None
    return kernels


def available() -> bool:
    return _kernels() is not None


def self_attention(qkv: mx.array, n_heads: int, scale: float, mask: mx.array | None) -> mx.array:
    """`fastmath.self_attention` with a (B, 1, 1, L) or no mask, for head sizes up to 128."""
    B, L, width = qkv.shape
    head_dim = width // (3 * n_heads)
    data = _evaluated(qkv)
    keep = None if mask is None else _evaluated(mask.reshape(B, L))  # bool: one byte per token
    out = np.empty((B, L, width // 3), np.float32)
    status = _kernels().attention(data.ctypes.data, _address(keep), out.ctypes.data, B, L, n_heads, head_dim, scale)
    if status != 0:
        raise ValueError(f"the native attention kernel has no head size {head_dim}")
    return mx.array(out)


def bias_gelu(y: mx.array, bias: mx.array | None) -> mx.array:
    """gelu(y + bias), the erf GELU, written over y (a fresh matmul output)."""
    rows, data = _in_place(y)
    _kernels().bias_gelu(data.ctypes.data, _address(_evaluated(bias)), rows, y.shape[-1])
    return y


def add_layer_norm(y: mx.array, bias: mx.array | None, residual: mx.array, weight: mx.array | None,
                   beta: mx.array | None, eps: float) -> mx.array:
    """layer_norm(y + bias + residual) * weight + beta, written over y (a fresh matmul output)."""
    rows, data = _in_place(y)
    res = _evaluated(residual)
    if res.shape != data.shape:
        raise ValueError(f"residual shape {res.shape} differs from {data.shape}")
    _kernels().add_layer_norm(data.ctypes.data, _address(_evaluated(bias)), res.ctypes.data,
                              _address(_evaluated(weight)), _address(_evaluated(beta)), rows, y.shape[-1], eps)
    return y


def _evaluated(a: mx.array | None) -> np.ndarray | None:
    """A C-order view of `a`'s memory (a copy only if MLX holds it strided)."""
    if a is None:
        return None
    mx.eval(a)
    return np.ascontiguousarray(a)


def _in_place(y: mx.array) -> tuple[int, np.ndarray]:
    if y.dtype != mx.float32:
        raise TypeError(f"native kernels take float32, not {y.dtype}")
    mx.eval(y)
    data = np.asarray(y)
    if not (data.flags.c_contiguous and data.flags.writeable and np.may_share_memory(data, np.asarray(y))):
        raise ValueError("native kernels write over a contiguous matmul output, not a copy of it")
    return data.size // y.shape[-1], data


def _address(a: np.ndarray | None) -> int | None:
    return None if a is None else a.ctypes.data
