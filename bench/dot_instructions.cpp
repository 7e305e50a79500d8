// Multiply-adds per second on one core, by instruction: float32 FMA (what OpenBLAS's sgemm runs), bf16 pairs
// (AVX512-BF16 `vdpbf16ps`, what a bf16 matmul without AMX would run) and int8 quads (AVX512-VNNI `vpdpbusd`,
// what `--dtype int8` runs). Each loop keeps 16 independent accumulators, enough to hide every latency, so the
// figure is the instruction's throughput on this core. It says which reduced precision can pay before writing a
// kernel for it (issue 16).
//
//   g++ -O2 -march=native bench/dot_instructions.cpp -o /tmp/dot && /tmp/dot

#include <immintrin.h>

#include <chrono>
#include <cstdio>

namespace {

constexpr long STEPS = 50'000'000;  // x 16 instructions

template <class Body>
double per_second(Body body) {
  double best = 0;
  for (int run = 0; run < 3; run++) {
    const auto start = std::chrono::steady_clock::now();
    body();
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    best = best > STEPS * 16 / s ? best : STEPS * 16 / s;
  }
  return best;
}

}  // namespace

int main() {
  float sink = 0;
  const double fma = per_second([&] {
    __m512 acc[16];
    for (auto& a : acc) a = _mm512_setzero_ps();
    const __m512 x = _mm512_set1_ps(0.5f), y = _mm512_set1_ps(0.25f);
    for (long i = 0; i < STEPS; i++)
#pragma GCC unroll 16
      for (auto& a : acc) a = _mm512_fmadd_ps(x, y, a);
    for (auto& a : acc) sink += _mm512_reduce_add_ps(a);
  });
  std::printf("vfmadd231ps (16 float32 MACs): %.2f G/s = %.0f GMAC/s\n", fma / 1e9, fma * 16 / 1e9);
#ifdef __AVX512BF16__
  const double bf16 = per_second([&] {
    __m512 acc[16];
    for (auto& a : acc) a = _mm512_setzero_ps();
    const __m512bh x = (__m512bh)_mm512_set1_epi32(0x3f003f00), y = (__m512bh)_mm512_set1_epi32(0x3e803e80);
    for (long i = 0; i < STEPS; i++)
#pragma GCC unroll 16
      for (auto& a : acc) a = _mm512_dpbf16_ps(a, x, y);
    for (auto& a : acc) sink += _mm512_reduce_add_ps(a);
  });
  std::printf("vdpbf16ps   (32 bf16 MACs):    %.2f G/s = %.0f GMAC/s (%.2fx float32)\n", bf16 / 1e9, bf16 * 32 / 1e9,
              bf16 * 32 / (fma * 16));
#endif
#ifdef __AVX512VNNI__
  const double int8 = per_second([&] {
    __m512i acc[16];
    for (auto& a : acc) a = _mm512_setzero_si512();
    const __m512i x = _mm512_set1_epi32(0x01010101), y = _mm512_set1_epi32(0x01010101);
    for (long i = 0; i < STEPS; i++)
#pragma GCC unroll 16
      for (auto& a : acc) a = _mm512_dpbusd_epi32(a, x, y);
    for (auto& a : acc) sink += _mm512_reduce_add_epi32(a);
  });
  std::printf("vpdpbusd    (64 int8 MACs):    %.2f G/s = %.0f GMAC/s (%.2fx float32)\n", int8 / 1e9, int8 * 64 / 1e9,
              int8 * 64 / (fma * 16));
#endif
  return sink == 1234.5f;  // keeps the sums alive
}
