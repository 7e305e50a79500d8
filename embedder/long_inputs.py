"""Inputs longer than the model's maximum, embedded whole: cut into windows that each fit, every window framed by
the model's special tokens, their vectors averaged by token count (vLLM's chunked processing), so a 1,500-word
document is not silently its first 256 tokens."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .errors import InputError

LONG_INPUT_MODES = ("truncate", "error", "chunk")


@dataclass(frozen=True)
class Windows:
    """How an over-long row of token ids is cut: `prefix` and `suffix` (the model's special tokens, e.g. [CLS] and
    [SEP]) frame every window of at most `max_length` tokens; consecutive windows share `overlap` tokens."""

    prefix: tuple[int, ...]
    suffix: tuple[int, ...]
    max_length: int
    overlap: int = 0

    def __post_init__(self) -> None:
        width = self.max_length - len(self.prefix) - len(self.suffix)
        if width < 1:
            raise InputError(f"max_length {self.max_length} leaves no room for text between this model's "
                             f"{len(self.prefix) + len(self.suffix)} special tokens, so nothing can be chunked",
                             "max_length")
        if not 0 <= self.overlap < width:
            raise InputError(f"chunk overlap must be at least 0 and under {width} tokens for this model, "
                             f"got {self.overlap}", "chunk_overlap")

    def split(self, row: Sequence[int]) -> list[list[int]]:
        """`row` itself when it fits; else its windows. A row without the special tokens (raw token ids) is cut
        as it is."""
        row = list(row)
        if len(row) <= self.max_length:
            return [row]
        framed = (tuple(row[: len(self.prefix)]) == self.prefix
                  and tuple(row[len(row) - len(self.suffix):]) == self.suffix)
        prefix, suffix = (list(self.prefix), list(self.suffix)) if framed else ([], [])
        content = row[len(prefix): len(row) - len(suffix)]
        width = self.max_length - len(prefix) - len(suffix)
        windows, start = [], 0
        while True:
            windows.append(prefix + content[start: start + width] + suffix)
            if start + width >= len(content):
                return windows
            start += width - self.overlap


def combine_max(vectors: np.ndarray, windows_per_input: Sequence[int]) -> np.ndarray:
    """Each input's window vectors, their element-wise max: a max-pooled SPLADE vector's own pooling, so the
    whole text's vector is the max over all its tokens, whichever window holds them."""
    ends = np.cumsum(windows_per_input)
    return np.stack([vectors[end - n: end].max(0) for n, end in zip(windows_per_input, ends)])


def combine(vectors: np.ndarray, windows_per_input: Sequence[int], tokens: Sequence[int]) -> np.ndarray:
    """Each input's window vectors, averaged with each window's token count as its weight."""
    weights = np.asarray(tokens, np.float32)[:, None]
    ends = np.cumsum(windows_per_input)
    return np.stack([(vectors[end - n: end] * weights[end - n: end]).sum(0) / weights[end - n: end].sum()
                     for n, end in zip(windows_per_input, ends)])
