"""Pooling of token states into one vector (MLX), and the post-processing of vectors (NumPy)."""

from collections.abc import Callable

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


SPLADE_CHUNK_TOKENS = 512  # tokens whose vocabulary logits exist at once: 512 x 30,522 floats is 62 MB


def splade(hidden: mx.array, lengths: list[int], head: Callable[[mx.array], mx.array], strategy: str = "max",
           twice: bool = False) -> mx.array:
    """SPLADE weights (B, vocabulary) from (B, L, D) states: log(1 + relu(head(token))) (`twice`: a second log1p),
    max- or sum-pooled over each row's real tokens, as sentence-transformers' SpladePooling.

    The head runs on the real tokens alone, a few rows at a time: the logits of a whole padded batch would be
    gigabytes. Weights are >= 0, so a row's pool over its own tokens equals SpladePooling's over the masked ones.
    log1p(relu(x)) never decreases as x grows, so the max of the weights is the weight of the max logit: max
    pooling takes the logits' max first and transforms one value per vocabulary entry, not one per token.
    """
    B, L, D = hidden.shape
    flat = hidden.reshape(B * L, D)

    def weights(logits: mx.array) -> mx.array:
        out = mx.log1p(mx.maximum(logits, 0))
        return mx.log1p(out) if twice else out

    pooled, start = [], 0
    while start < B:
        end, tokens = start + 1, lengths[start]
        while end < B and tokens + lengths[end] <= SPLADE_CHUNK_TOKENS:
            tokens, end = tokens + lengths[end], end + 1
        rows = np.concatenate([k * L + np.arange(lengths[k]) for k in range(start, end)])
        logits = head(flat[mx.array(rows)]).astype(mx.float32)
        offsets = np.cumsum([0, *lengths[start:end]])
        spans = [(int(a), int(b)) for a, b in zip(offsets[:-1], offsets[1:])]
        if strategy == "max":
            pooled += [weights(logits[a:b].max(axis=0)) for a, b in spans]
        else:
            summed = weights(logits)
            pooled += [summed[a:b].sum(axis=0) for a, b in spans]
        mx.eval(pooled[-(end - start):])  # before the next chunk's logits exist
        start = end
    return mx.stack(pooled)


def truncate_dims(vectors: np.ndarray, dimensions: int | None) -> np.ndarray:
    """Matryoshka truncation: keep the first `dimensions` components."""
    return vectors if dimensions is None else vectors[:, :dimensions]


def largest_only(weights: np.ndarray, k: int | None) -> np.ndarray:
    """Each row's k largest weights (SPLADE's are >= 0), the others zeroed: sentence-transformers'
    `max_active_dims`; None keeps all."""
    if k is None or k >= weights.shape[1]:
        return weights
    top = np.argpartition(-weights, k - 1, axis=1)[:, :k]
    kept = np.zeros_like(weights)
    np.put_along_axis(kept, top, np.take_along_axis(weights, top, axis=1), axis=1)
    return kept


def normalize(vectors: np.ndarray) -> np.ndarray:
    """L2-normalize rows; a zero row stays zero instead of becoming NaN."""
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.maximum(norms, 1e-12)
