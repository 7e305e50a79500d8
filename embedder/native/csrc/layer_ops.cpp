// The element-wise steps of an encoder layer after its matmuls, fused and in place: bias + GELU, a gated
// feed-forward's bias + value * act(gate), and bias + residual + LayerNorm. MLX's CPU LayerNorm is a scalar loop
// (~1 ms for 1,024 x 384) and its bias add, GELU and residual add are passes of their own; here each row is read
// and written once. Built by embedder.native.build.

#include <cmath>
#include <utility>

#include "boundary.h"
#include "simd.h"

using namespace simd;

// y[r] = gelu(y[r] + bias), the exact (erf) GELU; bias may be null.
extern "C" int embed_bias_gelu(float* y, const float* bias, int rows, int dim) {
  return boundary::guarded([&] {
    for (long r = 0; r < rows; r++) {
      float* row = y + r * dim;
      for (int j = 0; j < dim; j += W) {
        const int n = dim - j < W ? dim - j : W;
        vec x = load_n(row + j, n);
        if (bias) x += load_n(bias + j, n);
        store_n(row + j, gelu_erf(x), n);
      }
    }
    return boundary::OK;
  });
}

namespace {

// encoder_layer.cpp's FeedForward, less its ungated GELU: value * act(gate), or (ON_FIRST) act(value) * gate
enum Gate { SILU = 1, GELU = 2, SIGMOID = 3, GELU_ON_FIRST = 4 };

// x / (1 + exp(-x)), by way of exp(-|x|) so that nothing overflows.
inline vec sigmoid(vec x) {
  const vec e = exp_nonpositive(x < 0 ? x : -x);
  return (x < 0 ? e : 1.0f) / (1.0f + e);
}

}  // namespace

// A gated feed-forward's inner activations: y (rows, 2 * hidden) holds each row's value then gate (with `bias`,
// 2 * hidden or null, added); y[r, :hidden] becomes value * act(gate) for act by `Gate` (act(value) * gate for
// ModernBERT's GELU_ON_FIRST), so that the result is (rows, hidden) at the start of y. Rows go in order, so a row's
// result never overwrites what is still to read.
extern "C" int embed_bias_glu(float* y, const float* bias, int rows, int hidden, int gate) {
  return boundary::guarded([&]() -> int {
    if (gate < SILU || gate > GELU_ON_FIRST) return boundary::FAILED;
    for (long r = 0; r < rows; r++) {
      const float* row = y + r * 2 * hidden;
      for (int j = 0; j < hidden; j += W) {
        const int n = hidden - j < W ? hidden - j : W;
        vec value = load_n(row + j, n), g = load_n(row + hidden + j, n);
        if (bias) value += load_n(bias + j, n), g += load_n(bias + hidden + j, n);
        if (gate == GELU_ON_FIRST) std::swap(value, g);  // act(value) * gate: the same product, halves swapped
        const vec act = gate == SILU ? g * sigmoid(g) : gate == SIGMOID ? sigmoid(g) : gelu_erf(g);
        store_n(y + r * hidden + j, value * act, n);
      }
    }
    return boundary::OK;
  });
}

// y = act(y) * gate, element by element over rows * dim floats (T5's gated feed-forward, whose two projections
// are apart): act 1 is GELU's tanh approximation, 2 the erf GELU.
extern "C" int embed_act_times(float* y, const float* gate, long count, int act) {
  return boundary::guarded([&]() -> int {
    if (act != 1 && act != 2) return boundary::FAILED;
    for (long i = 0; i < count; i += W) {
      const int n = count - i < W ? count - i : W;
      const vec x = load_n(y + i, n);
      const vec a = act == 1 ? gelu_tanh(x) : gelu_erf(x);
      store_n(y + i, a * load_n(gate + i, n), n);
    }
    return boundary::OK;
  });
}

// y[r] = layer_norm(y[r] + bias + residual[r]) * weight + beta; bias, residual, weight and beta may be null. With
// `rms`, T5's RMS norm instead: no mean taken out.
extern "C" int embed_add_layer_norm(float* y, const float* bias, const float* residual, const float* weight,
                                    const float* beta, int rows, int dim, float eps, int rms) {
  return boundary::guarded([&] {
    for (long r = 0; r < rows; r++) {
      float* row = y + r * dim;
      vec total = {};
      for (int j = 0; j < dim; j += W) {
        const int n = dim - j < W ? dim - j : W;
        vec x = load_n(row + j, n);
        if (residual) x += load_n(residual + r * dim + j, n);
        if (bias) x += load_n(bias + j, n);
        store_n(row + j, x, n);
        total += x;
      }
      const float mean = rms ? 0.0f : sum(total) / dim;
      vec squares = {};
      for (int j = 0; j < dim; j += W) {
        const int n = dim - j < W ? dim - j : W;
        const vec d = first_n(load_n(row + j, n) - mean, n);
        squares += d * d;
      }
      const float inv = 1.0f / std::sqrt(sum(squares) / dim + eps);
      for (int j = 0; j < dim; j += W) {
        const int n = dim - j < W ? dim - j : W;
        vec x = (load_n(row + j, n) - mean) * inv;
        if (weight) x *= load_n(weight + j, n);
        if (beta) x += load_n(beta + j, n);
        store_n(row + j, x, n);
      }
    }
    return boundary::OK;
  });
}
