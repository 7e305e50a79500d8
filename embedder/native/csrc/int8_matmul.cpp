// y = x @ w.T with 8-bit integer multiplies (AVX512-VNNI `vpdpbusd`: 64 multiply-adds an instruction, 4x the
// float32 FMA rate on the cores it was measured on). Weights are quantized once, symmetric per output channel,
// and packed for the kernel; each call quantizes x per row, asymmetric (uint8 with a zero point, so the 255
// levels span the row's own range), and undoes both scales on the int32 sums:
//   y[m][n] = sx[m] * sw[n] * (sum_k qx[m][k] * qw[n][k] - zx[m] * sum_k qw[n][k]).
// Built by embedder/native/build.py with -march=native; without AVX512-VNNI every entry returns NO_KERNEL.
//
// On CPUs with AMX the caller hands over oneMKL's int8 GEMM instead (embed_int8_use_mkl, before any weight is
// packed: embedder/native/mkl.py), which multiplies in AMX's tiles: the same quantization, weights kept as plain
// (n, k) rows, the int32 sums taken from oneMKL and both scales undone here.

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "boundary.h"
#include "packing.h"

#if defined(__AVX512VNNI__) && defined(__AVX512BW__) && defined(__AVX512DQ__)
#include <immintrin.h>
#define EMBED_INT8 1
#endif

namespace {

using packing::lanes;
using packing::round_up;

constexpr int PANEL = 64;  // output columns a packed panel holds: four vectors of 16 int32 sums
constexpr int ROWS = 6;    // rows of x one tile multiplies: 6 x 4 accumulators, 4 weight vectors, one broadcast
constexpr int BLOCK = 192; // rows of x quantized per pass, their uint8 copy small enough to stay in L2
constexpr int MKL_ROWS = 512;  // rows of x per oneMKL call

// oneMKL's cblas_gemm_s8u8s32: layout, trans a, trans b, offset kind, m, n, k, alpha, a, lda, a's offset, b, ldb,
// b's offset, beta, c, ldc, c's offsets.
using MklGemm = void (*)(int, int, int, int, int, int, int, float, const int8_t*, int, int8_t, const uint8_t*, int,
                         int8_t, float, int32_t*, int, const int32_t*);
MklGemm mkl_gemm = nullptr;  // set once, before any weight is packed; null: our kernel

}  // namespace

// From now on, weights are packed for and multiplied by oneMKL's `gemm` (cblas_gemm_s8u8s32).
extern "C" int embed_int8_use_mkl(MklGemm gemm) {
  mkl_gemm = gemm;
  return boundary::OK;
}

extern "C" int embed_int8_supported() {
#ifdef EMBED_INT8
  return 1;
#else
  return 0;
#endif
}

// The packed size in bytes of an (n, k) weight.
extern "C" long embed_int8_packed_bytes(int n, int k) {
  return mkl_gemm ? static_cast<long>(n) * k : round_up(n, PANEL) * round_up(k, 4);
}

// w (n, k) float32, row-major (a Linear's weight) -> packed[n / 64][k / 4][64][4] int8, scales[n] and sums[n];
// padding columns and depth are zeros. scales and sums have room for n rounded up to 64. For oneMKL: the plain
// (n, k) int8 rows.
extern "C" int embed_int8_pack(const float* w, int n, int k, int8_t* packed, float* scales, int32_t* sums) {
  return boundary::guarded([&] {
    const long depth = round_up(k, 4), columns = round_up(n, PANEL);
    std::memset(packed, 0, embed_int8_packed_bytes(n, k));
    for (long j = 0; j < columns; j++) {
      scales[j] = 0.0f;
      sums[j] = 0;
      if (j >= n) continue;
      const float* row = w + j * k;
      float peak = 0.0f;
      for (int i = 0; i < k; i++) {
        if (!std::isfinite(row[i])) return boundary::NOT_FINITE;
        peak = std::max(peak, std::fabs(row[i]));
      }
      const float scale = peak > 0.0f ? peak / 127.0f : 1.0f;
      int32_t total = 0;
      for (int i = 0; i < k; i++) {
        const int q = static_cast<int>(std::nearbyint(row[i] / scale));
        const int8_t v = static_cast<int8_t>(std::clamp(q, -127, 127));
        const long at =
            mkl_gemm ? j * k + i : (j / PANEL) * PANEL * depth + ((i / 4) * PANEL + j % PANEL) * 4 + i % 4;
        packed[at] = v;
        total += v;
      }
      scales[j] = scale;
      sums[j] = total;
    }
    return boundary::OK;
  });
}

#ifdef EMBED_INT8
namespace {

// One row of x as uint8 (depth bytes, the tail zero), with its scale and zero point; false if the row holds a
// NaN or an infinity (a float32 matmul would pass it on; rounding it to a level would hide it).
bool quantize_row(const float* x, int k, long depth, uint8_t* q, float* scale, int32_t* zero) {
  __m512 lo = _mm512_setzero_ps(), hi = _mm512_setzero_ps();
  __mmask16 bad = 0;
  for (int i = 0; i < k; i += 16) {
    const __mmask16 m = lanes(k - i);
    const __m512 v = _mm512_maskz_loadu_ps(m, x + i);
    bad |= _mm512_fpclass_ps_mask(v, 0x99);  // quiet NaN, +inf, -inf, signalling NaN
    lo = _mm512_min_ps(lo, v);
    hi = _mm512_max_ps(hi, v);
  }
  if (bad) return false;
  const float low = _mm512_reduce_min_ps(lo), high = _mm512_reduce_max_ps(hi);
  // Each end divided first: high - low itself overflows for a row spanning more than float32's largest value.
  // A constant row, or one whose range is subnormal, takes one level (every value its zero point).
  const float range = high / 255.0f - low / 255.0f;
  const float s = range >= FLT_MIN ? range : 1.0f;
  const int32_t z = std::clamp(static_cast<int32_t>(std::nearbyint(-low / s)), 0, 255);
  const __m512 inv = _mm512_set1_ps(1.0f / s);
  const __m512i zv = _mm512_set1_epi32(z), top = _mm512_set1_epi32(255), none = _mm512_setzero_si512();
  for (int i = 0; i < k; i += 16) {
    const __mmask16 m = lanes(k - i);
    __m512i v = _mm512_add_epi32(_mm512_cvtps_epi32(_mm512_mul_ps(_mm512_maskz_loadu_ps(m, x + i), inv)), zv);
    v = _mm512_min_epi32(_mm512_max_epi32(v, none), top);
    _mm512_mask_cvtepi32_storeu_epi8(q + i, m, v);
  }
  std::memset(q + k, 0, depth - k);
  *scale = s;
  *zero = z;
  return true;
}

// y_row's 16 outputs from column c on (fewer at n) from their int32 sums: the zero point taken out with the weights'
// sums, both scales undone, the bias added. ws and sums are padded to whole panels.
inline void store_rescaled(__m512i acc, int32_t zero, float scale, const float* ws, const int32_t* sums,
                           const float* bias, int c, int n, float* y_row) {
  const __mmask16 m = lanes(n - c);
  const __m512i taken = _mm512_mullo_epi32(_mm512_set1_epi32(zero), _mm512_loadu_si512(sums + c));
  const __m512 both = _mm512_mul_ps(_mm512_set1_ps(scale), _mm512_loadu_ps(ws + c));
  const __m512 add = bias ? _mm512_maskz_loadu_ps(m, bias + c) : _mm512_setzero_ps();
  const __m512 out = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_sub_epi32(acc, taken)), both, add);
  _mm512_mask_storeu_ps(y_row + c, m, out);
}

// y[r][c] for r < R rows from `a` and the 64 columns of one panel starting at `column`.
template <int R>
void tile(const uint8_t* a, long depth, const int8_t* panel, const float* xs, const int32_t* xz, const float* ws,
          const int32_t* sums, const float* bias, int column, int n, float* y) {
  __m512i acc[R][4];
#pragma GCC unroll 8
  for (int r = 0; r < R; r++)
    for (int v = 0; v < 4; v++) acc[r][v] = _mm512_setzero_si512();
  for (long i = 0; i < depth; i += 4) {
    const int8_t* p = panel + i * PANEL;
    const __m512i b0 = _mm512_loadu_si512(p), b1 = _mm512_loadu_si512(p + 64), b2 = _mm512_loadu_si512(p + 128),
                  b3 = _mm512_loadu_si512(p + 192);
#pragma GCC unroll 8
    for (int r = 0; r < R; r++) {
      int32_t quad;
      std::memcpy(&quad, a + r * depth + i, 4);
      const __m512i x = _mm512_set1_epi32(quad);
      acc[r][0] = _mm512_dpbusd_epi32(acc[r][0], x, b0);
      acc[r][1] = _mm512_dpbusd_epi32(acc[r][1], x, b1);
      acc[r][2] = _mm512_dpbusd_epi32(acc[r][2], x, b2);
      acc[r][3] = _mm512_dpbusd_epi32(acc[r][3], x, b3);
    }
  }
#pragma GCC unroll 8
  for (int r = 0; r < R; r++)
    for (int v = 0; v < 4; v++) {
      const int c = column + v * 16;
      if (c >= n) break;
      store_rescaled(acc[r][v], xz[r], xs[r], ws, sums, bias, c, n, y + static_cast<long>(r) * n);
    }
}

using Tile = void (*)(const uint8_t*, long, const int8_t*, const float*, const int32_t*, const float*,
                      const int32_t*, const float*, int, int, float*);
constexpr Tile TILES[ROWS + 1] = {nullptr, tile<1>, tile<2>, tile<3>, tile<4>, tile<5>, tile<6>};

// y (m, n) = x (m, k) @ w.T + bias in oneMKL, w the (n, k) int8 rows embed_int8_pack kept for it; MKL_ROWS rows
// of x at a time, so that the buffers stay small whatever the batch.
int mkl_matmul(const float* x, int m, int k, const int8_t* w, const float* ws, const int32_t* sums,
               const float* bias, int n, float* y) {
  static thread_local std::vector<uint8_t> a;  // kept: faulting fresh pages in on every call costs more
  static thread_local std::vector<int32_t> c;
  a.resize(static_cast<size_t>(MKL_ROWS) * k);
  c.resize(static_cast<size_t>(MKL_ROWS) * n);
  float xs[MKL_ROWS];
  int32_t xz[MKL_ROWS];
  const int32_t no_offset = 0;
  for (long start = 0; start < m; start += MKL_ROWS) {
    const int rows = static_cast<int>(std::min<long>(MKL_ROWS, m - start));
    for (int r = 0; r < rows; r++)
      if (!quantize_row(x + (start + r) * k, k, k, &a[r * k], &xs[r], &xz[r])) return boundary::NOT_FINITE;
    // Column-major, C (n, rows) = W (n, k) times the rows of x as columns: C's memory is y's (rows, n) row-major.
    mkl_gemm(102, 112, 111, 173, n, rows, k, 1.0f, w, k, 0, a.data(), k, 0, 0.0f, c.data(), n, &no_offset);
    for (int r = 0; r < rows; r++)
      for (int j = 0; j < n; j += 16)
        store_rescaled(_mm512_maskz_loadu_epi32(lanes(n - j), &c[static_cast<long>(r) * n + j]), xz[r], xs[r], ws,
                       sums, bias, j, n, y + (start + r) * n);
  }
  return boundary::OK;
}

}  // namespace
#endif

// y (m, n) = x (m, k) @ w.T + bias for a weight packed by embed_int8_pack; bias (n) may be null.
extern "C" int embed_int8_matmul(const float* x, int m, int k, const int8_t* packed, const float* scales,
                                 const int32_t* sums, const float* bias, int n, float* y) {
#ifdef EMBED_INT8
  return boundary::guarded([&]() -> int {
    if (mkl_gemm) return mkl_matmul(x, m, k, packed, scales, sums, bias, n, y);
    const long depth = round_up(k, 4);
    std::vector<uint8_t> a(BLOCK * depth);
    float xs[BLOCK];
    int32_t xz[BLOCK];
    for (long start = 0; start < m; start += BLOCK) {
      const int rows = static_cast<int>(std::min<long>(BLOCK, m - start));
      for (int r = 0; r < rows; r++)
        if (!quantize_row(x + (start + r) * k, k, depth, &a[r * depth], &xs[r], &xz[r])) return boundary::NOT_FINITE;
      for (int column = 0; column < n; column += PANEL) {
        const int8_t* panel = packed + static_cast<long>(column) * depth;
        for (int r = 0; r < rows; r += ROWS) {
          const int count = std::min(ROWS, rows - r);
          TILES[count](&a[r * depth], depth, panel, xs + r, xz + r, scales, sums, bias, column, n,
                       y + (start + r) * static_cast<long>(n));
        }
      }
    }
    return boundary::OK;
  });
#else
  return boundary::NO_KERNEL;
#endif
}
