// y = x @ w.T with bfloat16 multiplies and float32 sums (AVX512-BF16 `vdpbf16ps`: 32 products an instruction,
// two depths a lane, added straight into float32). bfloat16 has float32's exponent range, so unlike float16 no
// scaling is needed: weights are rounded once at load, each call rounds x (nearest even), and every product of two
// bfloat16 values is exact in float32. The instruction treats subnormal inputs as zero and flushes subnormal sums
// (products under 1e-38, where float32 would keep them). NaN and infinity pass through as in a float32 matmul.
// AMD Zen 4 has this instruction and no AVX512-FP16; the packed layout, pairs of depths in each 32-bit lane, is
// also what AMX's bf16 tiles read. Built by embedder/native/build.py with -march=native; without AVX512-BF16
// every entry returns NO_KERNEL.
//
// On CPUs with AMX the caller hands over oneMKL's bfloat16 GEMM instead (embed_bf16_use_mkl, before any weight
// is packed: embedder/native/mkl.py), which multiplies in AMX's tiles: weights are then kept as plain (n, k)
// bfloat16 rows, which oneMKL lays out for its tiles on each call, and x is rounded here the same way.

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#include "boundary.h"
#include "packing.h"
#include "pairs.h"

#if defined(__AVX512BF16__) && defined(__AVX512BW__)
#include <immintrin.h>
#define EMBED_BF16 1
#endif

namespace {

using packing::lanes;
using packing::round_up;
using pairs::PANEL;
using pairs::ROWS;

constexpr int VECTORS = PANEL / 16;  // vectors a depth pair of a panel takes: 16 columns x 2 depths each
constexpr int MKL_ROWS = 512;        // rows of x per oneMKL call

// oneMKL's cblas_gemm_bf16bf16f32: layout, trans a, trans b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc.
using MklGemm = void (*)(int, int, int, int, int, int, float, const uint16_t*, int, const uint16_t*, int, float,
                         float*, int);
MklGemm mkl_gemm = nullptr;  // set once, before any weight is packed; null: our kernel

}  // namespace

// From now on, weights are packed for and multiplied by oneMKL's `gemm` (cblas_gemm_bf16bf16f32).
extern "C" int embed_bf16_use_mkl(MklGemm gemm) {
  mkl_gemm = gemm;
  return boundary::OK;
}

extern "C" int embed_bf16_supported() {
#ifdef EMBED_BF16
  return 1;
#else
  return 0;
#endif
}

// The packed size, in bfloat16 values (2 bytes each), of an (n, k) weight.
extern "C" long embed_bf16_packed_halves(int n, int k) {
  return mkl_gemm ? static_cast<long>(n) * k : pairs::packed_halves(n, k);
}

#ifdef EMBED_BF16
namespace {

// `count` floats as bfloat16 (round to nearest even), into out.
void to_bf16(const float* x, long count, uint16_t* out) {
  for (long i = 0; i < count; i += 16) {
    const __mmask16 m = lanes(count - i);
    const __m256bh h = _mm512_cvtneps_pbh(_mm512_maskz_loadu_ps(m, x + i));
    _mm256_mask_storeu_epi16(out + i, m, reinterpret_cast<const __m256i&>(h));
  }
}

// y[r][column + c] for r < R rows of `a` (bfloat16, `depth_pairs` pairs each) and the 64 columns of one panel.
template <int R>
void tile(const uint16_t* a, long depth_pairs, const uint16_t* panel, const float* bias, int column, int n, float* y) {
  __m512 acc[R][VECTORS];
#pragma GCC unroll 8
  for (int r = 0; r < R; r++)
    for (int v = 0; v < VECTORS; v++) acc[r][v] = _mm512_setzero_ps();
  for (long p = 0; p < depth_pairs; p++) {
    const uint16_t* w = panel + p * 2 * PANEL;
    __m512bh b[VECTORS];
#pragma GCC unroll 8
    for (int v = 0; v < VECTORS; v++) b[v] = (__m512bh)_mm512_loadu_si512(w + 32 * v);
#pragma GCC unroll 8
    for (int r = 0; r < R; r++) {
      int32_t pair;
      std::memcpy(&pair, a + r * 2 * depth_pairs + 2 * p, 4);
      const __m512bh x = (__m512bh)_mm512_set1_epi32(pair);
#pragma GCC unroll 8
      for (int v = 0; v < VECTORS; v++) acc[r][v] = _mm512_dpbf16_ps(acc[r][v], x, b[v]);
    }
  }
#pragma GCC unroll 8
  for (int r = 0; r < R; r++)
    for (int v = 0; v < VECTORS; v++) {
      const int c = column + v * 16;
      if (c >= n) break;
      const __mmask16 m = lanes(n - c);
      const __m512 add = bias ? _mm512_maskz_loadu_ps(m, bias + c) : _mm512_setzero_ps();
      _mm512_mask_storeu_ps(y + static_cast<long>(r) * n + c, m, _mm512_add_ps(acc[r][v], add));
    }
}

using Tile = void (*)(const uint16_t*, long, const uint16_t*, const float*, int, int, float*);
constexpr Tile TILES[ROWS + 1] = {nullptr, tile<1>, tile<2>, tile<3>, tile<4>, tile<5>, tile<6>};

// y (m, n) = x (m, k) @ w.T + bias in oneMKL, w the (n, k) bfloat16 rows embed_bf16_pack kept for it; MKL_ROWS
// rows of x at a time, so that the buffer stays small whatever the batch.
int mkl_matmul(const float* x, int m, int k, const uint16_t* w, const float* bias, int n, float* y) {
  return boundary::guarded([&] {
    static thread_local std::vector<uint16_t> a;  // kept: faulting fresh pages in on every call costs more
    a.resize(static_cast<size_t>(MKL_ROWS) * k);
    for (long start = 0; start < m; start += MKL_ROWS) {
      const int rows = static_cast<int>(std::min<long>(MKL_ROWS, m - start));
      to_bf16(x + start * k, static_cast<long>(rows) * k, a.data());
      float* out = y + start * n;
      if (bias)
        for (long r = 0; r < rows; r++) std::memcpy(out + r * n, bias, n * sizeof(float));
      mkl_gemm(101, 111, 112, rows, n, k, 1.0f, a.data(), k, w, k, bias ? 1.0f : 0.0f, out, n);  // row-major, x w^T
    }
    return boundary::OK;
  });
}

}  // namespace
#endif

// w (n, k) float32, row-major (a Linear's weight) -> bfloat16 packed as pairs.h lays out; padding columns and
// depth are zeros. For oneMKL: the same rows in bfloat16.
extern "C" int embed_bf16_pack(const float* w, int n, int k, uint16_t* packed) {
#ifdef EMBED_BF16
  if (mkl_gemm) {
    to_bf16(w, static_cast<long>(n) * k, packed);
    return boundary::OK;
  }
  return boundary::guarded([&] {
    return pairs::pack(n, k, packed, [&](long j, uint16_t* row) {
      to_bf16(w + j * k, k, row);
      return boundary::OK;
    });
  });
#else
  return boundary::NO_KERNEL;
#endif
}

// y (m, n) = x (m, k) @ w.T + bias for a weight packed by embed_bf16_pack; bias (n) may be null.
extern "C" int embed_bf16_matmul(const float* x, int m, int k, const uint16_t* packed, const float* bias, int n,
                                 float* y) {
#ifdef EMBED_BF16
  if (mkl_gemm) return mkl_matmul(x, m, k, packed, bias, n, y);
  return boundary::guarded([&] {
    const long depth = round_up(k, 2);
    return pairs::matmul(
        m, k, n,
        [&](long row, int, uint16_t* out) {
          to_bf16(x + row * k, k, out);
          return boundary::OK;
        },
        [&](const uint16_t* a, int, int rows, int column, long y_row) {
          TILES[rows](a, depth / 2, packed + column * depth, bias, column, n, y + y_row * n);
        });
  });
#else
  return boundary::NO_KERNEL;
#endif
}
