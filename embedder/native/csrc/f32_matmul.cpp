// y = x @ w.T + bias in float32 on weights packed once: panels of PANEL output columns by the whole depth, tiles of
// 6 rows by one panel with one broadcast a row (AVX-512: 64 columns, four vectors; AVX2 with FMA: 16 columns, two
// vectors, so that the 12 sums, 2 weight vectors and the broadcast fit its 16 registers). For the small batches a
// server sees: the loaded BLAS packs the whole weight on every call, and at 30-60 rows ran 33-55 GMAC/s on one
// Emerald Rapids core where this ran 64-76; from ~500 rows on the BLAS is as fast or faster, and the callers keep it
// there. Built by embedder/native/build.py with -march=native; without AVX2 and FMA every entry returns NO_KERNEL.

#include <algorithm>
#include <cstring>

#include "boundary.h"
#include "packing.h"

#if defined(__AVX512F__)
#include <immintrin.h>
#define EMBED_F32 1
#define EMBED_F32_AVX512 1
#elif defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#define EMBED_F32 1
#endif

namespace {

using packing::lanes;
using packing::round_up;

constexpr int ROWS = 6;  // rows of x one tile multiplies

#ifdef EMBED_F32_AVX512
constexpr int PANEL = 64;  // output columns a packed panel holds: four vectors of 16

// y[r][column + c] for r < R rows of `a` and the 64 columns of one panel.
template <int R>
void tile(const float* a, int k, const float* panel, const float* bias, int column, int n, float* y) {
  __m512 acc[R][4];
#pragma GCC unroll 8
  for (int r = 0; r < R; r++)
    for (int v = 0; v < 4; v++) acc[r][v] = _mm512_setzero_ps();
  for (int i = 0; i < k; i++) {
    const float* p = panel + static_cast<long>(i) * PANEL;
    const __m512 b0 = _mm512_loadu_ps(p), b1 = _mm512_loadu_ps(p + 16), b2 = _mm512_loadu_ps(p + 32),
                 b3 = _mm512_loadu_ps(p + 48);
#pragma GCC unroll 8
    for (int r = 0; r < R; r++) {
      const __m512 x = _mm512_set1_ps(a[static_cast<long>(r) * k + i]);
      acc[r][0] = _mm512_fmadd_ps(x, b0, acc[r][0]);
      acc[r][1] = _mm512_fmadd_ps(x, b1, acc[r][1]);
      acc[r][2] = _mm512_fmadd_ps(x, b2, acc[r][2]);
      acc[r][3] = _mm512_fmadd_ps(x, b3, acc[r][3]);
    }
  }
#pragma GCC unroll 8
  for (int r = 0; r < R; r++)
    for (int v = 0; v < 4; v++) {
      const int c = column + v * 16;
      if (c >= n) break;
      const __mmask16 m = lanes(n - c);
      const __m512 add = bias ? _mm512_maskz_loadu_ps(m, bias + c) : _mm512_setzero_ps();
      _mm512_mask_storeu_ps(y + static_cast<long>(r) * n + c, m, _mm512_add_ps(acc[r][v], add));
    }
}

#else
constexpr int PANEL = 16;  // two vectors of 8

#ifdef EMBED_F32
// The mask of an 8-lane vector's lanes that hold values when `left` remain (AVX2 masks are vectors).
inline __m256i lanes8(int left) {
  return _mm256_cmpgt_epi32(_mm256_set1_epi32(std::min(left, 8)), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}

// y[r][column + c] for r < R rows of `a` and the 16 columns of one panel.
template <int R>
void tile(const float* a, int k, const float* panel, const float* bias, int column, int n, float* y) {
  __m256 acc[R][2];
#pragma GCC unroll 8
  for (int r = 0; r < R; r++) acc[r][0] = acc[r][1] = _mm256_setzero_ps();
  for (int i = 0; i < k; i++) {
    const float* p = panel + static_cast<long>(i) * PANEL;
    const __m256 b0 = _mm256_loadu_ps(p), b1 = _mm256_loadu_ps(p + 8);
#pragma GCC unroll 8
    for (int r = 0; r < R; r++) {
      const __m256 x = _mm256_broadcast_ss(a + static_cast<long>(r) * k + i);
      acc[r][0] = _mm256_fmadd_ps(x, b0, acc[r][0]);
      acc[r][1] = _mm256_fmadd_ps(x, b1, acc[r][1]);
    }
  }
#pragma GCC unroll 8
  for (int r = 0; r < R; r++)
    for (int v = 0; v < 2; v++) {
      const int c = column + v * 8;
      if (c >= n) break;
      const __m256i m = lanes8(n - c);
      const __m256 add = bias ? _mm256_maskload_ps(bias + c, m) : _mm256_setzero_ps();
      _mm256_maskstore_ps(y + static_cast<long>(r) * n + c, m, _mm256_add_ps(acc[r][v], add));
    }
}
#endif
#endif

#ifdef EMBED_F32
using Tile = void (*)(const float*, int, const float*, const float*, int, int, float*);
constexpr Tile TILES[ROWS + 1] = {nullptr, tile<1>, tile<2>, tile<3>, tile<4>, tile<5>, tile<6>};
#endif

}  // namespace

extern "C" int embed_f32_supported() {
#ifdef EMBED_F32
  return 1;
#else
  return 0;
#endif
}

// The packed size, in floats, of an (n, k) weight.
extern "C" long embed_f32_packed_floats(int n, int k) { return round_up(n, PANEL) * k; }

// w (n, k) float32 row-major (a Linear's weight) -> packed[n / 64][k][64]; padding columns are zeros.
extern "C" int embed_f32_pack(const float* w, int n, int k, float* packed) {
#ifdef EMBED_F32
  return boundary::guarded([&] {
    std::memset(packed, 0, sizeof(float) * round_up(n, PANEL) * k);
    for (long j = 0; j < n; j++)
      for (long i = 0; i < k; i++) packed[(j / PANEL) * PANEL * k + i * PANEL + j % PANEL] = w[j * k + i];
    return boundary::OK;
  });
#else
  return boundary::NO_KERNEL;
#endif
}

// y (m, n) = x (m, k) @ w.T + bias for a weight packed by embed_f32_pack; bias (n) may be null.
extern "C" int embed_f32_matmul(const float* x, int m, int k, const float* packed, const float* bias, int n,
                                float* y) {
#ifdef EMBED_F32
  for (int column = 0; column < n; column += PANEL) {
    const float* panel = packed + static_cast<long>(column) * k;
    for (int r = 0; r < m; r += ROWS)
      TILES[std::min(ROWS, m - r)](x + static_cast<long>(r) * k, k, panel, bias, column, n,
                                   y + static_cast<long>(r) * n);
  }
  return boundary::OK;
#else
  return boundary::NO_KERNEL;
#endif
}
