// y = x @ w.T + bias in float32 on weights packed once (AVX-512: 64 output columns by the whole depth, 6 x 64
// tiles with one broadcast a row). For the small batches a server sees: the loaded BLAS packs the whole weight on
// every call, and at 30-60 rows ran 33-55 GMAC/s on one Emerald Rapids core where this ran 64-76; from ~500 rows
// on the BLAS is as fast or faster, and the callers keep it there. Built by embedder/native/build.py with
// -march=native; without AVX-512 every entry returns NO_KERNEL.

#include <algorithm>
#include <cstring>

#include "boundary.h"
#include "packing.h"

#if defined(__AVX512F__)
#include <immintrin.h>
#define EMBED_F32 1
#endif

namespace {

using packing::lanes;
using packing::round_up;

constexpr int PANEL = 64;  // output columns a packed panel holds: four vectors of 16
constexpr int ROWS = 6;    // rows of x one tile multiplies: 6 x 4 accumulators, 4 weight vectors, one broadcast

#ifdef EMBED_F32
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
