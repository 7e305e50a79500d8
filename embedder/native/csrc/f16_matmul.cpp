// y = x @ w.T with float16 multiplies (AVX512-FP16 `vfmadd231ph`: 32 multiply-adds an instruction, twice the
// float32 FMA rate on the Xeons that have it) and float32 sums. Weights are scaled per output channel by a power
// of two (exact) to a peak in [1, 2) and rounded to float16 once; each call scales x per row the same way. A lane
// adds BLOCK products in float16, then its sum is widened and added into float32, so rounding error grows with
// BLOCK, not with the depth; with both operands under 2 in size, a float16 sum of BLOCK products stays under
// 4 * BLOCK, far below float16's 65504: no input overflows. Undone at the end:
//   y[m][n] = sx[m] * sw[n] * sum_k hx[m][k] * hw[n][k].
// Built by embedder/native/build.py with -march=native; without AVX512-FP16 every entry returns NO_KERNEL.

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "boundary.h"
#include "packing.h"
#include "pairs.h"

#if defined(__AVX512FP16__) && defined(__AVX512BW__) && defined(__AVX512DQ__)
#include <immintrin.h>
#define EMBED_F16 1
#endif

namespace {

using packing::lanes;
using packing::round_up;
using pairs::PANEL;
using pairs::ROWS;

constexpr int VECTORS = PANEL / 16;  // float16 vectors a depth pair of a panel takes: 16 columns x 2 depths each
// Depth pairs a float16 sum takes before it is added into float32. all-MiniLM-L6-v2 with 16, 32 and 64: golden
// texts' min cosine to float32 0.999997, 0.999994 and 0.999991; sentences at 1.27x, 1.37x and 1.48x float32.
constexpr int BLOCK = 32;

}  // namespace

extern "C" int embed_f16_supported() {
#ifdef EMBED_F16
  return 1;
#else
  return 0;
#endif
}

// The packed size, in float16 values (2 bytes each), of an (n, k) weight.
extern "C" long embed_f16_packed_halves(int n, int k) { return pairs::packed_halves(n, k); }

#ifdef EMBED_F16
namespace {

// The power of two a row or channel whose largest |value| is `top` is divided by (a peak in [1, 2), exactly);
// 0 where `top` is zero or subnormal, and the row then multiplies as zeros (where a float32 matmul's products
// would be under 1e-37).
float unit(float top) { return top >= FLT_MIN ? std::ldexp(1.0f, std::ilogb(top)) : 0.0f; }

// `count` floats times `scale` as float16, round to nearest even.
void to_half(const float* x, int count, float scale, uint16_t* out) {
  const __m512 s = _mm512_set1_ps(scale);
  for (int i = 0; i < count; i += 16) {
    const __mmask16 m = lanes(count - i);
    const __m256i h = _mm512_cvtps_ph(_mm512_mul_ps(_mm512_maskz_loadu_ps(m, x + i), s), _MM_FROUND_TO_NEAREST_INT);
    _mm256_mask_storeu_epi16(out + i, m, h);
  }
}

// The largest |x[i]|, or -1 if x holds a NaN or an infinity (a float32 matmul would pass it on; scaling by it
// would hide it).
float peak(const float* x, int count) {
  __m512 top = _mm512_setzero_ps();
  __mmask16 bad = 0;
  for (int i = 0; i < count; i += 16) {
    const __mmask16 m = lanes(count - i);
    const __m512 v = _mm512_maskz_loadu_ps(m, x + i);
    bad |= _mm512_fpclass_ps_mask(v, 0x99);  // quiet NaN, +inf, -inf, signalling NaN
    top = _mm512_max_ps(top, _mm512_abs_ps(v));
  }
  return bad ? -1.0f : _mm512_reduce_max_ps(top);
}

// Lanes 2c and 2c + 1 of the 16 (lo) and 16 (hi) float32 partial sums hold column c's two depths; their sums.
__m512 pair_sums(__m512 lo, __m512 hi) {
  const __m512i even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
  const __m512i odd = _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
  return _mm512_add_ps(_mm512_permutex2var_ps(lo, even, hi), _mm512_permutex2var_ps(lo, odd, hi));
}

// y[r][column + c] for r < R rows of `a` (float16, `depth_pairs` pairs each) and the 64 columns of one panel.
// The float16 sums (R x 4 registers) are added into float32 ones kept in L1 every BLOCK pairs.
template <int R>
void tile(const uint16_t* a, long depth_pairs, const uint16_t* panel, const float* xs, const float* ws,
          const float* bias, int column, int n, float* y) {
  alignas(64) float sums[R][VECTORS][32] = {};  // lanes 2c, 2c + 1: column c's two depths
  for (long start = 0; start < depth_pairs; start += BLOCK) {
    const long end = std::min<long>(depth_pairs, start + BLOCK);
    __m512h acc[R][VECTORS];
#pragma GCC unroll 8
    for (int r = 0; r < R; r++)
      for (int v = 0; v < VECTORS; v++) acc[r][v] = _mm512_setzero_ph();
    for (long p = start; p < end; p++) {
      const uint16_t* w = panel + p * 2 * PANEL;
      __m512h b[VECTORS];
#pragma GCC unroll 8
      for (int v = 0; v < VECTORS; v++) b[v] = _mm512_castsi512_ph(_mm512_loadu_si512(w + 32 * v));
#pragma GCC unroll 8
      for (int r = 0; r < R; r++) {
        int32_t pair;
        std::memcpy(&pair, a + r * 2 * depth_pairs + 2 * p, 4);
        const __m512h x = _mm512_castsi512_ph(_mm512_set1_epi32(pair));
#pragma GCC unroll 8
        for (int v = 0; v < VECTORS; v++) acc[r][v] = _mm512_fmadd_ph(x, b[v], acc[r][v]);
      }
    }
#pragma GCC unroll 8
    for (int r = 0; r < R; r++)
      for (int v = 0; v < VECTORS; v++) {
        const __m512i bits = _mm512_castph_si512(acc[r][v]);
        float* s = sums[r][v];
        _mm512_store_ps(s, _mm512_add_ps(_mm512_load_ps(s), _mm512_cvtph_ps(_mm512_castsi512_si256(bits))));
        _mm512_store_ps(s + 16, _mm512_add_ps(_mm512_load_ps(s + 16),
                                              _mm512_cvtph_ps(_mm512_extracti64x4_epi64(bits, 1))));
      }
  }
#pragma GCC unroll 8
  for (int r = 0; r < R; r++) {
    const __m512 scale = _mm512_set1_ps(xs[r]);
    for (int v = 0; v < VECTORS; v++) {
      const int c = column + v * 16;
      if (c >= n) break;
      const __mmask16 m = lanes(n - c);
      const __m512 add = bias ? _mm512_maskz_loadu_ps(m, bias + c) : _mm512_setzero_ps();
      const __m512 total = pair_sums(_mm512_load_ps(sums[r][v]), _mm512_load_ps(sums[r][v] + 16));
      _mm512_mask_storeu_ps(y + static_cast<long>(r) * n + c, m,
                            _mm512_fmadd_ps(total, _mm512_mul_ps(scale, _mm512_loadu_ps(ws + c)), add));
    }
  }
}

using Tile = void (*)(const uint16_t*, long, const uint16_t*, const float*, const float*, const float*, int, int,
                      float*);
constexpr Tile TILES[ROWS + 1] = {nullptr, tile<1>, tile<2>, tile<3>, tile<4>, tile<5>, tile<6>};

}  // namespace
#endif

// w (n, k) float32, row-major (a Linear's weight) -> packed[n / 64][k / 2][4][16][2] float16 and scales[n], each
// channel's `unit` (the halves hold w / scale); padding columns and depth are zeros, their scales 1. scales has
// room for n rounded up to 64.
extern "C" int embed_f16_pack(const float* w, int n, int k, uint16_t* packed, float* scales) {
#ifdef EMBED_F16
  return boundary::guarded([&] {
    std::fill(scales, scales + round_up(n, PANEL), 1.0f);
    return pairs::pack(n, k, packed, [&](long j, uint16_t* row) {
      const float top = peak(w + j * k, k);
      if (top < 0.0f) return boundary::NOT_FINITE;
      scales[j] = unit(top);
      to_half(w + j * k, k, scales[j] > 0.0f ? 1.0f / scales[j] : 0.0f, row);
      return boundary::OK;
    });
  });
#else
  return boundary::NO_KERNEL;
#endif
}

// y (m, n) = x (m, k) @ w.T + bias for a weight packed by embed_f16_pack; bias (n) may be null.
extern "C" int embed_f16_matmul(const float* x, int m, int k, const uint16_t* packed, const float* scales,
                                const float* bias, int n, float* y) {
#ifdef EMBED_F16
  return boundary::guarded([&] {
    const long depth = round_up(k, 2);
    float xs[pairs::CHUNK];  // each converted row's scale
    return pairs::matmul(
        m, k, n,
        [&](long row, int r, uint16_t* out) {
          const float top = peak(x + row * k, k);
          if (top < 0.0f) return boundary::NOT_FINITE;
          xs[r] = unit(top);
          to_half(x + row * k, k, xs[r] > 0.0f ? 1.0f / xs[r] : 0.0f, out);
          return boundary::OK;
        },
        [&](const uint16_t* a, int r, int rows, int column, long y_row) {
          TILES[rows](a, depth / 2, packed + column * depth, xs + r, scales, bias, column, n, y + y_row * n);
        });
  });
#else
  return boundary::NO_KERNEL;
#endif
}
