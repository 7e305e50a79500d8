"""Attention helpers shared by our own encoders: boolean masks from padding, windows and causality; RoPE; relative
position buckets."""

import math
from dataclasses import dataclass

import mlx.core as mx
import numpy as np

from ..native import fastmath, kernels


def allowed_keys(
    attention_mask: mx.array, *, causal: bool = False, max_distance: int | None = None
) -> mx.array:
    """(B, 1, L, L) boolean, True where query i may attend key j.

    A key must be a real token, within `max_distance` positions of the query, and not after it when
    `causal`; a padded query attends to real keys alone, as transformers' (a ColBERT query's expansion tokens).
    A row may be empty: `masked_attention` gives it zeros.
    """
    L = attention_mask.shape[1]
    q = mx.arange(L)[:, None]
    k = mx.arange(L)[None]
    allowed = (attention_mask != 0)[:, None, None, :]
    if causal:
        allowed = allowed & (k <= q)
    if max_distance is not None:
        allowed = allowed & (mx.abs(q - k) <= max_distance)
    return allowed


def masked_attention(q: mx.array, k: mx.array, v: mx.array, scale: float, allowed: mx.array) -> mx.array:
    """Scaled dot-product attention where `allowed` (`allowed_keys`) says which keys each query sees; a query
    that sees none (padding far from any real token) gets zeros, as torch's attention gives it, never a NaN."""
    live = allowed.any(axis=-1, keepdims=True)
    return mx.fast.scaled_dot_product_attention(q, k, v, scale=scale, mask=allowed | ~live) * live


def rope_theta(rope_parameters: dict | None, layer_type: str, default: float) -> float:
    """transformers 5 writes per-layer-type `rope_parameters`; older configs a flat theta (the default)."""
    params = (rope_parameters or {}).get(layer_type) or {}
    return float(params.get("rope_theta", default))


def rope_scale(rope_parameters: dict | None, rope_scaling: dict | None, layer_type: str) -> float:
    """Linear RoPE scaling divides positions by `factor`; other types are not used by these encoders."""
    params = (rope_parameters or {}).get(layer_type) or rope_scaling or {}
    if params.get("rope_type", params.get("type", "default")) == "linear":
        return 1.0 / float(params["factor"])
    return 1.0


def relative_position_buckets(length: int, num_buckets: int, max_distance: int) -> np.ndarray:
    """(length, length) bucket of each (query, key) offset, bidirectional, as T5 and MPNet bucket them: half the
    buckets for keys after the query; in each half, exact offsets up to a quarter of the buckets, then logarithmic
    bins up to `max_distance`. In float32 as PyTorch computes it, so that bins meet where transformers' do."""
    positions = np.arange(length)
    offset = positions[None, :] - positions[:, None]  # key - query
    half = num_buckets // 2
    exact = half // 2
    distance = np.abs(offset)
    far = np.maximum(distance, exact).astype(np.float32)  # no log(0); nearer offsets take the exact buckets
    scaled = (np.log(far / np.float32(exact)) / np.float32(math.log(max_distance / exact)) * np.float32(half - exact))
    large = np.minimum(exact + scaled.astype(np.int64), half - 1)
    return (offset > 0) * half + np.where(distance < exact, distance, large)


@dataclass(frozen=True)
class Rotation:
    """RoPE as NomicBERT and GTE apply it: the first `dims` floats of each query and key head turned in pairs, pair i
    at position p by p / periods[i] radians; pairs (i, i + dims / 2), or (2i, 2i + 1) when `interleaved`."""

    dims: int
    periods: np.ndarray  # float32 (dims / 2,)
    interleaved: bool = False

    @classmethod
    def of_base(cls, dims: int, base: float, interleaved: bool = False) -> "Rotation":
        """periods base ** (2i / dims), in float32 as transformers computes them."""
        exponents = np.arange(0, dims, 2).astype(np.float32) / np.float32(dims)
        return cls(dims, np.float32(base) ** exponents, interleaved)

    def table(self, length: int) -> kernels.Rotary:
        """The native kernels' cosines and sines for positions 0 to length - 1; the angles rounded to float32 as
        transformers rounds them (position times the inverse period), their cosines and sines then exact."""
        angles = np.arange(length, dtype=np.float32)[:, None] * (np.float32(1) / self.periods)[None]
        return kernels.Rotary(np.cos(angles, dtype=np.float64).astype(np.float32),
                              np.sin(angles, dtype=np.float64).astype(np.float32), self.interleaved)

    def self_attention(self, qkv: mx.array, n_heads: int, mask: mx.array | fastmath.PackedTokens,
                       q_scale: mx.array | None = None) -> mx.array:
        """`fastmath.self_attention` with queries and keys turned: from fused projections (B, L, 3 * H * D) to
        (B, L, H * D), or packed ((T, 3 * H * D) with `PackedTokens`); `mask` (B, 1, 1, L) is True at real tokens,
        `q_scale` (B, 1, 1, 1) multiplies the queries. The native kernel turns them as it reads them; elsewhere
        MLX's RoPE turns query and key heads, which are fused again for `fastmath.self_attention`."""
        if isinstance(mask, fastmath.PackedTokens):  # padded batches only scale queries (GTE's don't pack then)
            D = qkv.shape[-1] // (3 * n_heads)
            return kernels.self_attention(qkv, n_heads, D**-0.5, None, starts=mask.starts, keys=mask.keys,
                                          rotary=self.table(mask.shape[1]))
        B, L, width = qkv.shape
        D = width // (3 * n_heads)
        if q_scale is None and fastmath.native_heads(qkv.dtype, D) and mask.dtype == mx.bool_:
            return kernels.self_attention(qkv, n_heads, D**-0.5, mask, rotary=self.table(L))
        heads = qkv.reshape(B, L, 3 * n_heads, D).swapaxes(1, 2)
        q, k = mx.split(mx.fast.rope(heads[:, : 2 * n_heads], self.dims, traditional=self.interleaved, base=None,
                                     scale=1.0, offset=0, freqs=mx.array(self.periods)), 2, axis=1)
        if q_scale is not None:
            q = q * q_scale.astype(q.dtype)
        qkv = mx.concatenate([q, k, heads[:, 2 * n_heads:]], axis=1).swapaxes(1, 2).reshape(B, L, width)
        return fastmath.self_attention(qkv, n_heads, D**-0.5, mask)
