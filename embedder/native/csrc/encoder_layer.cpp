// One post-LN encoder layer (BERT's: attention, then GELU feed-forward, each added to its input and
// LayerNorm-ed) on packed rows, in one call. The steps are the other kernels and the BLAS's sgemm, reached
// through function pointers the caller passes: called one by one from Python, each gave up the GIL and had to
// take it back, and under a server's load a lane waited ~25% of its time for it.

#include <cstddef>
#include <cstdint>
#include <vector>

#include "boundary.h"

namespace {

using Sgemm = void (*)(int, int, int, int, int, int, float, const float*, int, const float*, int, float, float*, int);
using Int8Matmul = int (*)(const float*, int, int, const int8_t*, const float*, const int32_t*, const float*, int,
                           float*);
using Attention = int (*)(const float*, const uint8_t*, const int*, const float*, float*, int, int, int, int, float);
using BiasGelu = int (*)(float*, const float*, int, int);
using AddLayerNorm = int (*)(float*, const float*, const float*, const float*, const float*, int, int, float);

}  // namespace

extern "C" {

struct EmbedKernels {
  Sgemm sgemm;
  Int8Matmul int8_matmul;  // null where the int8 kernel did not build
  Attention attention;
  BiasGelu bias_gelu;
  AddLayerNorm add_layer_norm;
};

// y (m, n) = x (m, k) @ W.T + bias: `weight` float32 (n, k) row-major, or int8 `packed` with its scales and sums.
struct EmbedProjection {
  const float* weight;
  const int8_t* packed;
  const float* scales;
  const int32_t* sums;
  const float* bias;  // may be null
  int n, k;
};

struct EmbedNorm {
  const float* weight;
  const float* bias;
  float eps;
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
  if (bias)
    for (long r = 0; r < m; r++)
      for (int j = 0; j < p.n; j++) y[r * p.n + j] = bias[j];
  f.sgemm(101, 111, 112, m, p.n, p.k, 1.0f, x, p.k, p.weight, p.k, bias ? 1.0f : 0.0f, y, p.n);  // row-major, x W^T
  return boundary::OK;
}

}  // namespace

// out (T, D) = the layer applied to x (T, D): sequence b in rows starts[b] to starts[b + 1], T = starts[B], none
// longer than L; `bias` (heads, L, L) is added to the scaled scores by position in the sequence (MPNet's relative
// position bias), or null. `out` must not overlap x.
extern "C" int embed_encoder_layer(const EmbedKernels* f, const EmbedProjection* qkv,
                                   const EmbedProjection* attention_out, const EmbedNorm* norm1,
                                   const EmbedProjection* up, const EmbedProjection* down, const EmbedNorm* norm2,
                                   const float* x, const int* starts, const float* bias, int B, int L, int heads,
                                   float scale, float* out) {
  return boundary::guarded([&] {
    const long T = starts[B];
    const int D = qkv->k, width = qkv->n / 3;
    if (qkv->n % (3 * heads) || attention_out->k != width || attention_out->n != D || up->k != D ||
        down->k != up->n || down->n != D)
      return static_cast<int>(boundary::FAILED);
    // Scratch kept by each thread (an engine's lanes live as long as it does): fresh allocations of these sizes
    // come from the OS, and faulting their pages in cost ~8% of a passage batch's time.
    static thread_local std::vector<float> scratch;
    const size_t need = T * (qkv->n + width + D + up->n);
    if (scratch.size() < need) scratch.resize(need);
    float* const fused = scratch.data();
    float* const context = fused + T * qkv->n;
    float* const hidden = context + T * width;
    float* const inner = hidden + T * D;
    int status = project(*f, *qkv, x, T, true, fused);
    if (!status) status = f->attention(fused, nullptr, starts, bias, context, B, L, heads, width / heads, scale);
    if (!status) status = project(*f, *attention_out, context, T, false, hidden);
    if (!status)
      status = f->add_layer_norm(hidden, attention_out->bias, x, norm1->weight, norm1->bias, T, D, norm1->eps);
    if (!status) status = project(*f, *up, hidden, T, false, inner);
    if (!status) status = f->bias_gelu(inner, up->bias, T, up->n);
    if (!status) status = project(*f, *down, inner, T, false, out);
    if (!status) status = f->add_layer_norm(out, down->bias, hidden, norm2->weight, norm2->bias, T, D, norm2->eps);
    return status;
  });
}
