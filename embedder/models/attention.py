"""Attention helpers shared by our own encoders: boolean masks from padding, windows and causality; RoPE; relative
position buckets."""

import math

import mlx.core as mx
import numpy as np


def allowed_keys(
    attention_mask: mx.array, *, causal: bool = False, max_distance: int | None = None
) -> mx.array:
    """(B, 1, L, L) boolean, True where query i may attend key j.

    A key must be a real token, within `max_distance` positions of the query, and not after it when
    `causal`. Every query also keeps itself, so a padded query far from any real token never gets an
    empty row (NaN that would then reach real tokens through the values).
    """
    L = attention_mask.shape[1]
    q = mx.arange(L)[:, None]
    k = mx.arange(L)[None]
    allowed = (attention_mask != 0)[:, None, None, :]
    if causal:
        allowed = allowed & (k <= q)
    if max_distance is not None:
        allowed = allowed & (mx.abs(q - k) <= max_distance)
    return allowed | (q == k)


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
