// Multiply-adds per second on one core, by instruction: float32 FMA (what OpenBLAS's sgemm runs), bf16 pairs
// (AVX512-BF16 `vdpbf16ps`, what a bf16 matmul without AMX would run), float16 FMA (AVX512-FP16 `vfmadd231ph`,
// what `--dtype float16` runs) and int8 quads (AVX512-VNNI `vpdpbusd`, what `--dtype int8` runs). On a CPU without
// AVX-512 (AVX2): 8-float FMA, and int8 the only way AVX2 has, `vpmaddubsw` (byte pairs to int16) then `vpmaddwd`
// by ones (to int32) then an add, what an int8 matmul without VNNI would run. Each loop keeps 16 independent
// accumulators, enough to hide every latency, so the figure is the instructions' throughput on this core. It says
// which reduced precision can pay before writing a kernel for it (issue 16).
//
//   g++ -O2 -march=native bench/dot_instructions.cpp -o /tmp/dot && /tmp/dot

#include <immintrin.h>

#include <chrono>
#include <cstdio>

namespace {

constexpr long STEPS = 50'000'000;  // x 16 instructions

// Instructions a second: `step` applied to 16 accumulators STEPS times, best of 3 runs.
template <class Acc, class Step, class Reduce>
double per_second(Acc zero, Step step, Reduce reduce, float& sink) {
  double best = 0;
  for (int run = 0; run < 3; run++) {
    const auto start = std::chrono::steady_clock::now();
    Acc acc[16];
    for (auto& a : acc) a = zero;
    for (long i = 0; i < STEPS; i++)
#pragma GCC unroll 16
      for (auto& a : acc) a = step(a);
    for (auto& a : acc) sink += reduce(a);
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    best = best > STEPS * 16 / s ? best : STEPS * 16 / s;
  }
  return best;
}

}  // namespace

int main() {
  float sink = 0;
#ifndef __AVX512F__
  const __m256 half8 = _mm256_set1_ps(0.5f), quarter8 = _mm256_set1_ps(0.25f);
  const auto sum8 = [](__m256 a) {
    float lanes[8], total = 0;
    _mm256_storeu_ps(lanes, a);
    for (float x : lanes) total += x;
    return total;
  };
  const double fma8 = per_second(
      _mm256_setzero_ps(), [&](__m256 a) { return _mm256_fmadd_ps(half8, quarter8, a); }, sum8, sink);
  std::printf("vfmadd231ps ymm (8 float32 MACs): %.2f G/s = %.0f GMAC/s\n", fma8 / 1e9, fma8 * 8 / 1e9);
  const __m256i bytes = _mm256_set1_epi8(1), ones16 = _mm256_set1_epi16(1);
  const double pairs = per_second(
      _mm256_setzero_si256(),
      [&](__m256i a) { return _mm256_add_epi32(a, _mm256_madd_epi16(_mm256_maddubs_epi16(bytes, bytes), ones16)); },
      [&](__m256i a) { return sum8(_mm256_cvtepi32_ps(a)); }, sink);
  std::printf("vpmaddubsw + vpmaddwd + vpaddd ymm (32 int8 MACs): %.2f G/s = %.0f GMAC/s (%.2fx float32)\n",
              pairs / 1e9, pairs * 32 / 1e9, pairs * 32 / (fma8 * 8));
  return sink == 1234.5f;
#else
  const __m512 half = _mm512_set1_ps(0.5f), quarter = _mm512_set1_ps(0.25f);
  const double fma = per_second(
      _mm512_setzero_ps(), [&](__m512 a) { return _mm512_fmadd_ps(half, quarter, a); },
      [](__m512 a) { return _mm512_reduce_add_ps(a); }, sink);
  std::printf("vfmadd231ps (16 float32 MACs): %.2f G/s = %.0f GMAC/s\n", fma / 1e9, fma * 16 / 1e9);
#ifdef __AVX512BF16__
  const __m512bh halves = (__m512bh)_mm512_set1_epi32(0x3f003f00), quarters = (__m512bh)_mm512_set1_epi32(0x3e803e80);
  const double bf16 = per_second(
      _mm512_setzero_ps(), [&](__m512 a) { return _mm512_dpbf16_ps(a, halves, quarters); },
      [](__m512 a) { return _mm512_reduce_add_ps(a); }, sink);
  std::printf("vdpbf16ps   (32 bf16 MACs):    %.2f G/s = %.0f GMAC/s (%.2fx float32)\n", bf16 / 1e9, bf16 * 32 / 1e9,
              bf16 * 32 / (fma * 16));
#endif
#ifdef __AVX512FP16__
  const __m512h halves16 = _mm512_set1_ph(static_cast<_Float16>(0.5f)),
                quarters16 = _mm512_set1_ph(static_cast<_Float16>(0.25f));
  const double f16 = per_second(
      _mm512_setzero_ph(), [&](__m512h a) { return _mm512_fmadd_ph(halves16, quarters16, a); },
      [](__m512h a) { return static_cast<float>(_mm512_reduce_add_ph(a)); }, sink);
  std::printf("vfmadd231ph (32 float16 MACs): %.2f G/s = %.0f GMAC/s (%.2fx float32)\n", f16 / 1e9, f16 * 32 / 1e9,
              f16 * 32 / (fma * 16));
#endif
#ifdef __AVX512VNNI__
  const __m512i ones = _mm512_set1_epi32(0x01010101);
  const double int8 = per_second(
      _mm512_setzero_si512(), [&](__m512i a) { return _mm512_dpbusd_epi32(a, ones, ones); },
      [](__m512i a) { return static_cast<float>(_mm512_reduce_add_epi32(a)); }, sink);
  std::printf("vpdpbusd    (64 int8 MACs):    %.2f G/s = %.0f GMAC/s (%.2fx float32)\n", int8 / 1e9, int8 * 64 / 1e9,
              int8 * 64 / (fma * 16));
#endif
  return sink == 1234.5f;  // keeps the sums alive
#endif
}
