// What the matmul kernels on weights packed once (f32_matmul, int8_matmul, f16_matmul, bf16_matmul) share.
#pragma once

namespace packing {

// `v` rounded up to a multiple of `to`: a packed weight's columns to whole panels, its depth to whole lanes.
inline long round_up(long v, long to) { return (v + to - 1) / to * to; }

// The mask of a 16-lane vector's lanes that hold values when `left` remain: all 16, or the first `left`.
inline unsigned short lanes(long left) { return left >= 16 ? 0xffff : (1u << left) - 1; }

}  // namespace packing
