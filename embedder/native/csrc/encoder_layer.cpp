// A stack of encoder layers (attention, then a feed-forward, each added to its input) on packed rows, in one
// call: post-LN (each sum LayerNorm-ed: BERT's and MPNet's with a GELU feed-forward, NomicBERT's and GTE's gated
// and rotary) or pre-LN (each block's input LayerNorm-ed: ModernBERT's, gated, rotary, some layers windowed).
// The steps are the other kernels and the BLAS's sgemm, reached through function pointers the caller passes:
// called one by one from Python, each gave up the GIL and had to take it back, and under a server's load a lane
// waited ~25% of its time for it.

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <vector>

#include "boundary.h"

namespace {

using Sgemm = void (*)(int, int, int, int, int, int, float, const float*, int, const float*, int, float, float*, int);
using Int8Matmul = int (*)(const float*, int, int, const int8_t*, const float*, const int32_t*, const float*, int,
                           float*);
using F16Matmul = int (*)(const float*, int, int, const uint16_t*, const float*, const float*, int, float*);
using BF16Matmul = int (*)(const float*, int, int, const uint16_t*, const float*, int, float*);
using F32Matmul = int (*)(const float*, int, int, const float*, const float*, int, float*);
struct EmbedRotary;  // attention.cpp's
using Attention = int (*)(const float*, const uint8_t*, const int*, const int*, const float*, const EmbedRotary*, int,
                          float*, int, int, int, int, float);
using BiasGelu = int (*)(float*, const float*, int, int);
using BiasGlu = int (*)(float*, const float*, int, int, int);
using ActTimes = int (*)(float*, const float*, long, int);
using AddLayerNorm = int (*)(float*, const float*, const float*, const float*, const float*, int, int, float, int);

}  // namespace

extern "C" {

struct EmbedKernels {
  Sgemm sgemm;
  Int8Matmul int8_matmul;  // null where the int8 kernel did not build
  F16Matmul f16_matmul;    // null where the float16 kernel did not build
  BF16Matmul bf16_matmul;  // null where the bfloat16 kernel did not build
  F32Matmul f32_matmul;    // null where the packed float32 kernel did not build
  Attention attention;
  BiasGelu bias_gelu;
  BiasGlu bias_glu;
  ActTimes act_times;
  AddLayerNorm add_layer_norm;
};

// y (m, n) = x (m, k) @ W.T + bias: `weight` float32 (n, k) row-major, run in the BLAS, or `f32_packed` (a small
// batch's, f32_matmul.cpp), or int8 `packed` with its scales and sums, or float16 `f16_packed` with its scales,
// or bfloat16 `bf16_packed`.
struct EmbedProjection {
  const float* weight;
  const float* f32_packed;  // may be null
  const int8_t* packed;
  const uint16_t* f16_packed;
  const uint16_t* bf16_packed;
  const float* scales;
  const int32_t* sums;
  const float* bias;  // may be null
  int n, k;
};

struct EmbedNorm {
  const float* weight;
  const float* bias;
  float eps;
  int present;  // 0: the identity (ModernBERT's first layer has no attention norm)
  int rms;      // T5's RMS norm: no mean taken out, no bias
};

// The feed-forward: GELU(up(x)); value * act(gate) with value and gate the halves of up(x), or act(value) * gate;
// ReLU(up(x)); or act(up(x)) * gate(x) from two projections (T5's), act GELU's tanh approximation or the erf GELU.
enum FeedForward {
  GELU = 0, GATED_SILU = 1, GATED_GELU = 2, GATED_SIGMOID = 3, GELU_GATED = 4, RELU = 5, TANH_GELU_TIMES = 6,
  GELU_TIMES = 7
};

struct EmbedLayer {
  EmbedProjection qkv, attention_out;
  EmbedNorm norm1;  // post-LN: after attention's sum; pre-LN: before attention
  EmbedProjection up, down;
  EmbedProjection gate;  // T5's second feed-forward projection (TANH_GELU_TIMES, GELU_TIMES); unused otherwise
  EmbedNorm norm2;  // post-LN: after the feed-forward's sum; pre-LN: before the feed-forward
  int feed_forward;  // a FeedForward
  int pre_norm;
  const EmbedRotary* rotary;  // RoPE's tables, or null
  int window;                 // attention's window (0: none)
};

}  // extern "C"

namespace {

// y = x @ W.T, plus the bias when `with_bias` (otherwise a later fused step adds it).
int project(const EmbedKernels& f, const EmbedProjection& p, const float* x, int m, bool with_bias, float* y) {
  const float* bias = with_bias ? p.bias : nullptr;
  if (p.packed) {
    if (!f.int8_matmul) return boundary::NO_KERNEL;
    return f.int8_matmul(x, m, p.k, p.packed, p.scales, p.sums, bias, p.n, y);
  }
  if (p.f16_packed) {
    if (!f.f16_matmul) return boundary::NO_KERNEL;
    return f.f16_matmul(x, m, p.k, p.f16_packed, p.scales, bias, p.n, y);
  }
  if (p.bf16_packed) {
    if (!f.bf16_matmul) return boundary::NO_KERNEL;
    return f.bf16_matmul(x, m, p.k, p.bf16_packed, bias, p.n, y);
  }
  if (p.f32_packed && f.f32_matmul) return f.f32_matmul(x, m, p.k, p.f32_packed, bias, p.n, y);
  if (bias)
    for (long r = 0; r < m; r++)
      for (int j = 0; j < p.n; j++) y[r * p.n + j] = bias[j];
  f.sgemm(101, 111, 112, m, p.n, p.k, 1.0f, x, p.k, p.weight, p.k, bias ? 1.0f : 0.0f, y, p.n);  // row-major, x W^T
  return boundary::OK;
}

// y = x, LayerNorm-ed by `n` where it is present (x and y may be the same rows).
int norm(const EmbedKernels& f, const EmbedNorm& n, const float* x, long T, int D, float* y) {
  if (y != x) std::memcpy(y, x, T * D * sizeof(float));
  return n.present ? f.add_layer_norm(y, nullptr, nullptr, n.weight, n.bias, T, D, n.eps, n.rms) : boundary::OK;
}

// y (T, up.n) = the feed-forward's inner activations of `in`, before `down`; `spare` holds T * gate.n floats.
int feed_forward(const EmbedKernels& f, const EmbedLayer& l, const float* in, long T, float* y, float* spare) {
  int status = project(f, l.up, in, T, true, y);
  if (status) return status;
  switch (l.feed_forward) {
    case GELU:
      return f.bias_gelu(y, nullptr, T, l.up.n);
    case RELU:
      for (long i = 0; i < T * l.up.n; i++) y[i] = y[i] > 0 ? y[i] : 0.0f;
      return boundary::OK;
    case TANH_GELU_TIMES:
    case GELU_TIMES:
      status = project(f, l.gate, in, T, true, spare);
      return status ? status : f.act_times(y, spare, T * l.up.n, l.feed_forward == TANH_GELU_TIMES ? 1 : 2);
    default:
      return f.bias_glu(y, nullptr, T, l.up.n / 2, l.feed_forward);
  }
}

// y += x, T * D floats.
void add(float* y, const float* x, long n) {
  for (long i = 0; i < n; i++) y[i] += x[i];
}

// out (T, D) = one layer applied to x (T, D); the arguments as embed_encoder_layers'.
int layer(const EmbedKernels& f, const EmbedLayer& l, const float* x, const int* starts, const int* keys,
          const float* bias, int B, int L, int heads, float scale, float* out) {
  const long T = starts[B];
  const int D = l.qkv.k, width = l.qkv.n / 3, kind = l.feed_forward;
  const bool halves = kind >= GATED_SILU && kind <= GELU_GATED, apart = kind == TANH_GELU_TIMES || kind == GELU_TIMES;
  const int inner_width = halves ? l.up.n / 2 : l.up.n;
  if (l.qkv.n % (3 * heads) || l.attention_out.k != width || l.attention_out.n != D || l.up.k != D ||
      (halves && l.up.n % 2) || l.down.k != inner_width || l.down.n != D || kind < GELU || kind > GELU_TIMES ||
      (apart && (l.gate.n != l.up.n || l.gate.k != D)) || (!l.pre_norm && kind > GELU_GATED))
    return boundary::FAILED;
  // Scratch kept by each thread (an engine's lanes live as long as it does): fresh allocations of these sizes
  // come from the OS, and faulting their pages in cost ~8% of a passage batch's time. The feed-forward's inner
  // activations reuse the fused q/k/v's space, dead after attention.
  static thread_local std::vector<float> scratch;
  const long wide = std::max(l.qkv.n, l.up.n + (apart ? l.gate.n : 0));
  const size_t need = T * (wide + width + D);
  if (scratch.size() < need) scratch.resize(need);
  float* const fused = scratch.data();
  float* const inner = fused;
  float* const context = fused + T * wide;
  float* const hidden = context + T * width;
  if (l.pre_norm) {  // x + attention(norm1(x)), then that + feed_forward(norm2(that))
    int status = norm(f, l.norm1, x, T, D, hidden);
    if (!status) status = project(f, l.qkv, hidden, T, true, fused);
    if (!status)
      status = f.attention(fused, nullptr, starts, keys, bias, l.rotary, l.window, context, B, L, heads,
                           width / heads, scale);
    if (!status) status = project(f, l.attention_out, context, T, true, out);
    if (status) return status;
    add(out, x, T * D);
    status = norm(f, l.norm2, out, T, D, hidden);
    if (!status) status = feed_forward(f, l, hidden, T, inner, inner + T * l.up.n);
    if (!status) status = project(f, l.down, inner, T, true, hidden);
    if (!status) add(out, hidden, T * D);
    return status;
  }
  int status = project(f, l.qkv, x, T, true, fused);
  if (!status)
    status = f.attention(fused, nullptr, starts, keys, bias, l.rotary, l.window, context, B, L, heads, width / heads,
                         scale);
  if (!status) status = project(f, l.attention_out, context, T, false, hidden);
  if (!status)
    status = f.add_layer_norm(hidden, l.attention_out.bias, x, l.norm1.weight, l.norm1.bias, T, D, l.norm1.eps,
                              l.norm1.rms);
  if (!status) status = project(f, l.up, hidden, T, false, inner);
  if (!status)
    status = halves ? f.bias_glu(inner, l.up.bias, T, inner_width, kind) : f.bias_gelu(inner, l.up.bias, T, l.up.n);
  if (!status) status = project(f, l.down, inner, T, false, out);
  if (!status)
    status = f.add_layer_norm(out, l.down.bias, hidden, l.norm2.weight, l.norm2.bias, T, D, l.norm2.eps, l.norm2.rms);
  return status;
}

}  // namespace

// out (T, D) = `count` layers applied in turn to x (T, D): sequence b in rows starts[b] to starts[b + 1],
// T = starts[B], none longer than L, of which the first keys[b] are keys (`keys` null: all; attention.cpp's);
// `bias` (heads, L, L), the same for every layer, is added to the scaled scores by position in the sequence
// (MPNet's relative position bias), or null. `out` must not overlap x.
extern "C" int embed_encoder_layers(const EmbedKernels* f, const EmbedLayer* layers, int count, const float* x,
                                    const int* starts, const int* keys, const float* bias, int B, int L, int heads,
                                    float scale, float* out) {
  return boundary::guarded([&] {
    static thread_local std::vector<float> between;  // the other of the two buffers the layers alternate between
    const size_t size = static_cast<size_t>(starts[B]) * (count ? layers[0].qkv.k : 0);
    if (count > 1 && between.size() < size) between.resize(size);
    int status = boundary::OK;
    for (int i = 0; i < count && !status; i++) {
      float* const target = (count - 1 - i) % 2 == 0 ? out : between.data();  // the last layer writes `out`
      status = layer(*f, layers[i], x, starts, keys, bias, B, L, heads, scale, target);
      x = target;
    }
    return status;
  });
}
