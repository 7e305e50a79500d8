"""Cut rows into batches that waste the least compute on padding (pure, no MLX)."""

from collections.abc import Sequence

import numpy as np

# A forward pass has a fixed cost (op dispatch, one eval, one copy) worth about this many padded tokens.
BATCH_OVERHEAD_TOKENS = 128
# Attention makes a token's cost grow with the batch's padded length: twice as dear at this length.
ATTENTION_LENGTH_SCALE = 256
# rows x longest^2 bounds the attention scores per head (8 rows of 256 tokens): past it they fall out of cache.
ATTENTION_BUDGET = 8 * 256 * 256


def batch_cost(rows: np.ndarray, longest: np.ndarray) -> np.ndarray:
    """Estimated compute of a padded batch, in units of one token of a short batch."""
    return rows * longest * (1 + longest / ATTENTION_LENGTH_SCALE) + BATCH_OVERHEAD_TOKENS


def plan_batches(lengths: Sequence[int], budget: int, max_rows: int) -> list[list[int]]:
    """Indices of `lengths`, longest first, cut into contiguous runs of the sorted order.

    The cut minimises the summed `batch_cost` (dynamic programming over the sorted lengths), subject to
    rows x longest <= budget (padded cost, not text count, bounds memory) and rows <= max_rows. A greedy
    fill pads a few short rows up to one long one; this pays a batch's overhead only where it saves more.
    A single row longer than the budget still gets a batch of its own.
    """
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    sorted_lengths = np.array([lengths[i] for i in order], dtype=np.float64)
    n = len(order)
    best = np.zeros(n + 1)
    start_of = np.zeros(n + 1, dtype=np.int64)
    for end in range(1, n + 1):
        starts = np.arange(max(0, end - max_rows), end)
        rows = end - starts
        longest = sorted_lengths[starts]  # sorted longest first: a run's longest is its first
        cost = best[starts] + batch_cost(rows, longest)
        too_big = (rows * longest > budget) | (rows * longest * longest > ATTENTION_BUDGET)
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
