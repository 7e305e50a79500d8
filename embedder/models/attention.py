"""Attention helpers shared by our own encoders: boolean masks from padding, windows and causality; RoPE."""

import mlx.core as mx


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
