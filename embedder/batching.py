"""Cut rows into batches that waste the least compute on padding (pure, no MLX)."""

import dataclasses
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
    padding_cost: float = 1.0  # a padding token's cost against a real one's: 1 where the model computes padding
    real_tokens: int | None = None  # real tokens, where the layers run packed (their scratch); None: unbounded


# On a CPU a pass costs little beyond its arithmetic. With MLX's attention, whose (B, H, L, L) scores should
# stay in the cache the lanes share, 4 rows of 256 tokens ran 13% faster than 8; with the fused native
# attention 4-16 rows measure the same and 32 rows 5% slower (bench/README.md), so 4 stays. A GPU has no
# such cliff but pays for every kernel launch. Measured on an H200: 16,384 tokens and 256 rows beat both
# smaller batches and 32,768 tokens or 512-1,024 rows.
CPU_BATCH = BatchShape(tokens=8192, rows=256, attention=4 * 256 * 256, overhead_tokens=128)
GPU_BATCH = BatchShape(tokens=16384, rows=256, attention=None, overhead_tokens=4096)


# Where a model runs its layers on the real tokens alone (`fastmath.PackedTokens`), padding costs only the
# embedding, unpacking and pooling passes: 0.014-0.034 of a real token, measured from mixed against length-sorted
# batches of sentences (one lane, Emerald Rapids). Their real tokens are bounded instead: 2,048 embed 4,000
# sentences as fast as 8,192 with ~100 MB less peak memory (the layers' scratch grows with them).
PACKED_PADDING_COST = 0.03
PACKED_REAL_TOKENS = 2048


def packed(shape: BatchShape) -> BatchShape:
    """`shape` for a model whose layers skip padding: mixed lengths then share a batch. Cut by length as if
    padding cost a full token, 64 concurrent one-text requests ran in batches of 8 rows; mixed, in 13-14, and the
    server answered 8-10% more of them."""
    return dataclasses.replace(shape, padding_cost=PACKED_PADDING_COST, real_tokens=PACKED_REAL_TOKENS)


def token_cost(lengths: np.ndarray) -> np.ndarray:
    """A row's compute in units of one token of a short row: attention makes long rows dearer per token."""
    return lengths * (1 + lengths / ATTENTION_LENGTH_SCALE)


def batch_cost(rows: np.ndarray, longest: np.ndarray, real: np.ndarray, shape: BatchShape) -> np.ndarray:
    """Estimated compute of a padded batch, in units of one token of a short row: its rows' `real` cost (summed
    `token_cost`), what padding them to `longest` adds at `shape.padding_cost`, and the pass's overhead."""
    padded = rows * token_cost(longest)
    return real + shape.padding_cost * (padded - real) + shape.overhead_tokens


def plan_batches(lengths: Sequence[int], shape: BatchShape) -> list[list[int]]:
    """Indices of `lengths`, longest first, cut into contiguous runs of the sorted order.

    The cut minimises the summed `batch_cost` (dynamic programming over the sorted lengths) within `shape`'s
    bounds (padded tokens, not text count, bound memory). A greedy fill pads a few short rows up to one long
    one; this pays a batch's overhead only where it saves more. A single row longer than the budget still gets
    a batch of its own.
    """
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    sorted_lengths = np.array([lengths[i] for i in order], dtype=np.float64)
    summed = np.concatenate([[0.0], np.cumsum(token_cost(sorted_lengths))])
    real = np.concatenate([[0.0], np.cumsum(sorted_lengths)])
    n = len(order)
    best = np.zeros(n + 1)
    start_of = np.zeros(n + 1, dtype=np.int64)
    for end in range(1, n + 1):
        starts = np.arange(max(0, end - shape.rows), end)
        rows = end - starts
        longest = sorted_lengths[starts]  # sorted longest first: a run's longest is its first
        cost = best[starts] + batch_cost(rows, longest, summed[end] - summed[starts], shape)
        too_big = rows * longest > shape.tokens
        if shape.attention is not None:
            too_big |= rows * longest * longest > shape.attention
        if shape.real_tokens is not None:
            too_big |= real[end] - real[starts] > shape.real_tokens
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
