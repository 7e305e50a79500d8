"""Cut rows into batches that waste the least compute on padding (pure, no MLX)."""

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

# Attention makes a token's cost grow with the batch's padded length: twice as dear at this length.
ATTENTION_LENGTH_SCALE = 256


@dataclass(frozen=True)
class BatchShape:
    """How large a batch may be, and what one costs beyond its tokens."""

    tokens: int  # padded tokens (rows x longest): bounds memory
    rows: int
    attention: int | None  # rows x longest^2, the attention scores per head; None: unbounded
    overhead_tokens: int  # a forward pass's fixed cost (op dispatch, one eval, one copy) in padded tokens


# On a CPU a pass costs little beyond its arithmetic. With MLX's attention, whose (B, H, L, L) scores should
# stay in the cache the lanes share, 4 rows of 256 tokens ran 13% faster than 8; with the fused native
# attention 4-16 rows measure the same and 32 rows 5% slower (bench/README.md), so 4 stays. A GPU has no
# such cliff but pays for every kernel launch. Measured on an H200: 16,384 tokens and 256 rows beat both
# smaller batches and 32,768 tokens or 512-1,024 rows.
CPU_BATCH = BatchShape(tokens=8192, rows=256, attention=4 * 256 * 256, overhead_tokens=128)
GPU_BATCH = BatchShape(tokens=16384, rows=256, attention=None, overhead_tokens=4096)


def batch_cost(rows: np.ndarray, longest: np.ndarray, overhead_tokens: int) -> np.ndarray:
    """Estimated compute of a padded batch, in units of one token of a short batch."""
    return rows * longest * (1 + longest / ATTENTION_LENGTH_SCALE) + overhead_tokens


def plan_batches(lengths: Sequence[int], shape: BatchShape) -> list[list[int]]:
    """Indices of `lengths`, longest first, cut into contiguous runs of the sorted order.

    The cut minimises the summed `batch_cost` (dynamic programming over the sorted lengths) within `shape`'s
    bounds (padded tokens, not text count, bound memory). A greedy fill pads a few short rows up to one long
    one; this pays a batch's overhead only where it saves more. A single row longer than the budget still gets
    a batch of its own.
    """
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    sorted_lengths = np.array([lengths[i] for i in order], dtype=np.float64)
    n = len(order)
    best = np.zeros(n + 1)
    start_of = np.zeros(n + 1, dtype=np.int64)
    for end in range(1, n + 1):
        starts = np.arange(max(0, end - shape.rows), end)
        rows = end - starts
        longest = sorted_lengths[starts]  # sorted longest first: a run's longest is its first
        cost = best[starts] + batch_cost(rows, longest, shape.overhead_tokens)
        too_big = rows * longest > shape.tokens
        if shape.attention is not None:
            too_big |= rows * longest * longest > shape.attention
        cost[too_big & (rows > 1)] = np.inf
        k = int(np.argmin(cost))
        best[end], start_of[end] = cost[k], starts[k]
    batches = []
    end = n
    while end > 0:
        start = int(start_of[end])
        batches.append(order[start:end])
        end = start
    return batches[::-1]


def spread(batches: list[list[int]], lanes: int) -> list[list[int]]:
    """Halve the largest batches until every lane has one (where rows allow): a lone request then runs on all
    lanes at once instead of on one."""
    batches = list(batches)
    while len(batches) < lanes:
        largest = max(range(len(batches)), key=lambda i: len(batches[i]), default=None)
        if largest is None or len(batches[largest]) < 2:
            break
        rows = batches.pop(largest)
        batches[largest:largest] = [rows[: len(rows) // 2], rows[len(rows) // 2:]]
    return batches
