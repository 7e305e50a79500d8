"""Pooling on hand-made masks, and the batch planner's guarantees."""

import random

import mlx.core as mx
import numpy as np

from embedder.batching import CPU_BATCH, GPU_BATCH, PACKED_REAL_TOKENS, BatchShape, packed, plan_batches, spread
from embedder.pooling import normalize, pool, truncate_dims

H = mx.array([[[1.0, 2.0], [3.0, 4.0], [100.0, 100.0]], [[5.0, -6.0], [-7.0, 8.0], [9.0, 10.0]]])
MASK = mx.array([[1, 1, 0], [1, 1, 1]])


def test_each_mode_honours_the_mask():
    np.testing.assert_allclose(pool(H, MASK, ("mean",)), [[2, 3], [7 / 3, 4]], rtol=1e-6)
    np.testing.assert_allclose(pool(H, MASK, ("max",)), [[3, 4], [9, 10]])
    np.testing.assert_allclose(pool(H, MASK, ("cls",)), [[1, 2], [5, -6]])
    np.testing.assert_allclose(pool(H, MASK, ("lasttoken",)), [[3, 4], [9, 10]])
    np.testing.assert_allclose(pool(H, MASK, ("mean_sqrt_len_tokens",)), [[4 / 2**0.5, 6 / 2**0.5], [7 / 3**0.5, 12 / 3**0.5]], rtol=1e-6)
    np.testing.assert_allclose(pool(H, MASK, ("weightedmean",)), [[7 / 3, 10 / 3], [(5 - 14 + 27) / 6, (-6 + 16 + 30) / 6]], rtol=1e-6)
    assert pool(H, MASK, ("cls", "mean")).shape == (2, 4)


def test_fp16_states_pool_in_float32():
    big = mx.full((1, 4, 2), 60000.0, dtype=mx.float16)
    out = pool(big, mx.ones((1, 4)), ("mean",))
    assert out.dtype == mx.float32 and np.isfinite(np.array(out)).all()


def test_truncate_then_normalize():
    v = np.array([[3.0, 4.0, 12.0], [0.0, 0.0, 0.0]], np.float32)
    np.testing.assert_allclose(normalize(truncate_dims(v, 2)), [[0.6, 0.8], [0, 0]])
    assert truncate_dims(v, None) is v


def test_batches_respect_budget_and_cover_every_index():
    rng = random.Random(0)
    lengths = [rng.randint(1, 300) for _ in range(1000)]
    shape = BatchShape(tokens=2048, rows=64, attention=8 * 256 * 256, overhead_tokens=128)
    batches = plan_batches(lengths, shape)
    seen = sorted(i for b in batches for i in b)
    assert seen == list(range(1000))
    for b in batches:
        longest = max(lengths[i] for i in b)
        assert len(b) <= 64
        assert len(b) == 1 or (len(b) * longest <= 2048 and len(b) * longest**2 <= shape.attention)
    assert plan_batches([5000], BatchShape(tokens=100, rows=8, attention=None, overhead_tokens=128)) == [[0]]


def test_gpu_shape_takes_fewer_larger_batches():
    lengths = [256] * 64 + [30] * 2000
    cpu, gpu = plan_batches(lengths, CPU_BATCH), plan_batches(lengths, GPU_BATCH)
    # the CPU fills batches of long rows up to its attention bound (scores kept in cache), no further
    assert max(len(b) for b in cpu if lengths[b[0]] == 256) == CPU_BATCH.attention // 256**2
    # the GPU has no such bound: the long rows fit its token and row budgets, so they go in one launch
    assert 64 * 256 <= GPU_BATCH.tokens and 64 <= GPU_BATCH.rows and GPU_BATCH.attention is None
    assert [len(b) for b in gpu if lengths[b[0]] == 256] == [64]
    assert len(gpu) < len(cpu)
    assert sorted(i for b in gpu for i in b) == list(range(len(lengths)))


def test_planner_pads_less_than_a_greedy_fill():
    rng = random.Random(1)
    lengths = [rng.choice([8, 12, 16, 20, 120, 250]) for _ in range(64)]
    batches = plan_batches(lengths, CPU_BATCH)
    padded = sum(len(b) * max(lengths[i] for i in b) for b in batches)
    greedy_padded = len(lengths) * max(lengths)  # 64 rows x 250 fit the budget: one batch, all padded to 250
    assert padded < greedy_padded / 2
    assert sorted(i for b in batches for i in b) == list(range(64))


def test_packed_layers_take_mixed_lengths_in_one_batch_within_their_real_tokens():
    """Where the layers skip padding, a long row and many short ones share a batch that the padded cost model
    would cut by length; the real tokens still bound a batch, and a cut still pays where padding is most."""
    mixed = [60] + [20] * 30
    assert len(plan_batches(mixed, CPU_BATCH)) > 1
    assert plan_batches(mixed, packed(CPU_BATCH)) == [list(range(31))]
    lengths = [100] * 50
    batches = plan_batches(lengths, packed(CPU_BATCH))
    assert sorted(i for b in batches for i in b) == list(range(50))
    assert all(sum(lengths[i] for i in b) <= PACKED_REAL_TOKENS for b in batches) and len(batches) == 3
    assert len(plan_batches([250] * 4 + [4] * 200, packed(CPU_BATCH))) == 2  # 1,000 wasted padded tokens a row


def test_spread_gives_every_lane_a_batch_when_rows_allow():
    assert spread([[0, 1, 2, 3, 4]], 2) == [[0, 1], [2, 3, 4]]
    assert spread([[0, 1, 2, 3, 4, 5, 6, 7], [8]], 4) == [[0, 1], [2, 3], [4, 5, 6, 7], [8]]
    assert spread([[0], [1]], 8) == [[0], [1]]  # one row cannot be cut
    many = [[i] for i in range(5)]
    assert spread(many, 2) == many
