"""Pooling of token states into one vector (MLX), and the post-processing of vectors (NumPy)."""

import mlx.core as mx
import numpy as np

from .errors import ModelError


def _first_index(mask: mx.array) -> mx.array:
    return mx.argmax(mask, axis=1)


def _last_index(mask: mx.array) -> mx.array:
    L = mask.shape[1]
    return L - 1 - mx.argmax(mask[:, ::-1], axis=1)


def _take_rows(hidden: mx.array, index: mx.array) -> mx.array:
    return mx.take_along_axis(hidden, index[:, None, None], axis=1)[:, 0]


def pool(hidden: mx.array, mask: mx.array, modes: tuple[str, ...]) -> mx.array:
    """Pool (B, L, D) states over the tokens where `mask` (B, L) is 1, concatenating `modes`.

    Works in float32 whatever the model's dtype, so fp16 sums cannot overflow; every mode honours
    the mask, so padding never leaks into a vector.
    """
    hidden = hidden.astype(mx.float32)
    mask = mask.astype(mx.float32)
    m = mask[..., None]
    counts = mx.maximum(mask.sum(axis=1, keepdims=True), 1e-9)
    out = []
    for mode in modes:
        if mode == "cls":
            out.append(_take_rows(hidden, _first_index(mask)))
        elif mode == "lasttoken":
            out.append(_take_rows(hidden, _last_index(mask)))
        elif mode == "max":
            out.append(mx.where(m > 0, hidden, -mx.inf).max(axis=1))
        elif mode == "mean":
            out.append((hidden * m).sum(axis=1) / counts)
        elif mode == "mean_sqrt_len_tokens":
            out.append((hidden * m).sum(axis=1) / mx.sqrt(counts))
        elif mode == "weightedmean":
            weights = m * mx.arange(1, mask.shape[1] + 1, dtype=mx.float32)[None, :, None]
            out.append((hidden * weights).sum(axis=1) / mx.maximum(weights.sum(axis=1), 1e-9))
        else:
            raise ModelError(f"unknown pooling mode {mode!r}")
    return out[0] if len(out) == 1 else mx.concatenate(out, axis=-1)


def truncate_dims(vectors: np.ndarray, dimensions: int | None) -> np.ndarray:
    """Matryoshka truncation: keep the first `dimensions` components."""
    return vectors if dimensions is None else vectors[:, :dimensions]


def normalize(vectors: np.ndarray) -> np.ndarray:
    """L2-normalize rows; a zero row stays zero instead of becoming NaN."""
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.maximum(norms, 1e-12)
