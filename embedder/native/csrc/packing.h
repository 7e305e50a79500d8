// What the matmul kernels on weights packed once (f32_matmul, int8_matmul, f16_matmul) share.
#pragma once

namespace packing {

// `v` rounded up to a multiple of `to`: a packed weight's columns to whole panels, its depth to whole lanes.
inline long round_up(long v, long to) { return (v + to - 1) / to * to; }

}  // namespace packing
