// Vectors of floats for the kernels in this folder, one machine register wide: 16 floats with AVX-512, 8 otherwise
// (AVX2; SSE and plain code take two or more instructions a vector). GCC vector types compile to whatever
// -march=native offers; no intrinsics, so any g++ builds them. Tiles are sized by ACCUMULATORS: a 16-float vector
// on AVX2 would take two of its 16 registers, and tiles sized for AVX-512's 32 spill to memory on every step.
#pragma once

#include <cstdint>
#include <cstring>

namespace simd {

#ifdef __AVX512F__
constexpr int W = 16;             // floats per vector
constexpr int ACCUMULATORS = 16;  // vectors of sums a tile may keep in registers (of 32), leaving room for operands
#else
constexpr int W = 8;
constexpr int ACCUMULATORS = 8;  // of 16 registers
#endif

typedef float vec __attribute__((vector_size(W * 4)));
typedef float vec_unaligned __attribute__((vector_size(W * 4), aligned(4)));
typedef int32_t ivec __attribute__((vector_size(W * 4)));

inline vec load(const float* p) { return *reinterpret_cast<const vec_unaligned*>(p); }
inline void store(float* p, vec v) { *reinterpret_cast<vec_unaligned*>(p) = v; }
inline vec splat(float x) { return vec{} + x; }

// The first n < W floats of p, zeros after; and the way back.
inline vec load_part(const float* p, int n) {
  vec v = {};
  std::memcpy(&v, p, n * sizeof(float));
  return v;
}
inline void store_part(float* p, vec v, int n) { std::memcpy(p, &v, n * sizeof(float)); }

// n <= W floats: a whole vector when n == W. Lanes from n on are zero.
inline vec load_n(const float* p, int n) { return n == W ? load(p) : load_part(p, n); }
inline void store_n(float* p, vec v, int n) { n == W ? store(p, v) : store_part(p, v, n); }
inline vec first_n(vec v, int n) {
  ivec lane;
  for (int c = 0; c < W; c++) lane[c] = c;
  return lane < n ? v : vec{};
}

inline float sum(vec v) {
  float total = 0;
  for (int c = 0; c < W; c++) total += v[c];
  return total;
}

// exp for x <= 0: Cephes' expf polynomial, ~1 ulp; below -87.3 it returns exp(-87.3) ~ 1e-38 rather than 0.
inline vec exp_nonpositive(vec x) {
  x = x < -87.33654f ? splat(-87.33654f) : x;
  vec n = x * 1.44269504088896341f;
  n = (n + 12582912.0f) - 12582912.0f;  // round to nearest: 1.5 * 2^23 pushes the fraction out
  x = x - n * 0.693359375f;
  x = x - n * -2.12194440e-4f;
  vec p = ((((1.9875691500e-4f * x + 1.3981999507e-3f) * x + 8.3334519073e-3f) * x + 4.1665795894e-2f) * x +
           1.6666665459e-1f) * x + 5.0000001201e-1f;
  p = p * (x * x) + x + 1.0f;
  ivec two_n = (__builtin_convertvector(n, ivec) + 127) << 23;
  return p * (vec)two_n;  // a vector cast keeps the bits
}

// erf by Abramowitz & Stegun 7.1.26 (absolute error < 1.5e-7), the approximation PyTorch's and MLX's CPU
// kernels use, so GELU matches what BERT-family models were run with.
inline vec erf(vec x) {
  const vec a = x < 0 ? -x : x;
  const vec t = 1.0f / (0.3275911f * a + 1.0f);
  const vec r = (((1.061405429f * t - 1.453152027f) * t + 1.421413741f) * t - 0.284496736f) * t + 0.254829592f;
  const vec y = 1.0f - r * t * exp_nonpositive(-(a * a));
  return x < 0 ? -y : y;
}

// The erf GELU BERT-family models were trained with: x (1 + erf(x / sqrt(2))) / 2.
inline vec gelu_erf(vec x) { return x * (1.0f + simd::erf(x * 0.70710678118654752f)) * 0.5f; }

// GELU's tanh approximation (transformers' gelu_new, MLX's gelu_approx): x (1 + tanh(sqrt(2 / pi) (x + 0.044715
// x^3))) / 2, tanh by way of exp(-2|z|) so that nothing overflows.
inline vec gelu_tanh(vec x) {
  const vec z = 0.7978845608028654f * (x + 0.044715f * x * x * x);
  const vec a = z < 0 ? -z : z;
  const vec e = exp_nonpositive(-2.0f * a);
  const vec t = (1.0f - e) / (1.0f + e);
  return 0.5f * x * (1.0f + (z < 0 ? -t : t));
}

}  // namespace simd
