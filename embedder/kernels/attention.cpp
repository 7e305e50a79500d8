// Fused self-attention for the CPU: softmax(q k^T * scale) v per sequence and head, without ever writing the
// (B, H, L, L) scores to memory. MLX runs attention as a batched matmul, an element-wise pass over the scores and
// another matmul: the scores make two round trips through memory. Here a block of 8 queries' scores stays in L1
// (8 x L floats) between the three steps, only real (unmasked) keys and queries are computed, and q, k, v are
// read straight from the fused projection (B, L, 3, H, D), so no copy makes them per-head contiguous.
// Built by embedder.cpu_compile with -march=native; GCC vector types compile to AVX-512, AVX2 or SSE.

#include <cstdint>
#include <cstring>
#include <vector>

namespace {

constexpr int W = 16;   // floats per vector
constexpr int QB = 8;   // queries per block: their scores (QB x L) stay in L1

typedef float vec __attribute__((vector_size(64)));
typedef float vec_unaligned __attribute__((vector_size(64), aligned(4)));
typedef int32_t ivec __attribute__((vector_size(64)));

inline vec load(const float* p) { return *reinterpret_cast<const vec_unaligned*>(p); }
inline void store(float* p, vec v) { *reinterpret_cast<vec_unaligned*>(p) = v; }

// exp for x <= 0 (scores minus their row max): Cephes' expf polynomial, ~1 ulp; below -87.3 it returns
// exp(-87.3) ~ 1e-38, which is 0 next to the row's largest term, 1.
inline vec exp_nonpositive(vec x) {
  x = x < -87.33654f ? vec{} - 87.33654f : x;
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

// s[r][j0 : j0 + NC * W] = q[r] . k[j] for 4 queries; kt is k transposed, (D, npad).
template <int NC>
inline void scores_tile(const float* q, int D, const float* kt, int npad, float* s, int j0) {
  vec acc[4][NC] = {};
  for (int d = 0; d < D; d++) {
    vec k[NC];
    for (int c = 0; c < NC; c++) k[c] = load(kt + d * npad + j0 + c * W);
    for (int r = 0; r < 4; r++) {
      const float qd = q[r * D + d];
      for (int c = 0; c < NC; c++) acc[r][c] += qd * k[c];
    }
  }
  for (int r = 0; r < 4; r++)
    for (int c = 0; c < NC; c++) store(s + r * npad + j0 + c * W, acc[r][c]);
}

// o[r] = sum_j p[r][j] v[j] for R queries; v is (n, NV * W), zero past D.
template <int NV, int R>
inline void values_tile(const float* p, int npad, int n, const float* v, float* o) {
  vec acc[R][NV] = {};
  for (int j = 0; j < n; j++) {
    vec vj[NV];
    for (int c = 0; c < NV; c++) vj[c] = load(v + (j * NV + c) * W);
    for (int r = 0; r < R; r++) {
      const float prj = p[r * npad + j];
      for (int c = 0; c < NV; c++) acc[r][c] += prj * vj[c];
    }
  }
  for (int r = 0; r < R; r++)
    for (int c = 0; c < NV; c++) store(o + (r * NV + c) * W, acc[r][c]);
}

// Softmax of s[0 : n] in place, unnormalized; returns 1 / sum.
inline float exp_row(float* s, int n) {
  float top = s[0];
  for (int j = 1; j < n; j++) top = s[j] > top ? s[j] : top;
  vec sum = {};
  int j = 0;
  for (; j + W <= n; j += W) {
    const vec e = exp_nonpositive(load(s + j) - top);
    store(s + j, e);
    sum += e;
  }
  float total = 0;
  for (int c = 0; c < W; c++) total += sum[c];
  if (j < n) {
    const vec e = exp_nonpositive(load(s + j) - top);  // s is padded to a whole vector
    for (int c = 0; j + c < n; c++) {
      s[j + c] = e[c];
      total += e[c];
    }
  }
  return 1.0f / total;
}

struct Scratch {
  std::vector<float> q, kt, v, s, o;
  Scratch(int L, int D, int NV) {
    const int npad = (L + W - 1) / W * W, nq = (L + QB - 1) / QB * QB;
    q.resize(nq * D), kt.resize(D * npad), v.resize(npad * NV * W), s.resize(QB * npad), o.resize(QB * NV * W);
  }
};

// One sequence, one head; keys and queries are the n real tokens idx[0 : n].
template <int NV>
void head(const float* qkv, const int* idx, int n, int H, int D, int h, float scale, float* out, Scratch& m) {
  const int stride = 3 * H * D, npad = (n + W - 1) / W * W, nq = (n + QB - 1) / QB * QB, dv = NV * W;
  constexpr int R = NV <= 2 ? 8 : NV <= 4 ? 4 : 2;  // at most 16 accumulators
  float *q = m.q.data(), *kt = m.kt.data(), *v = m.v.data(), *s = m.s.data(), *o = m.o.data();
  for (int j = 0; j < n; j++) {
    const float* row = qkv + (size_t)idx[j] * stride + h * D;
    for (int d = 0; d < D; d++) {
      q[j * D + d] = row[d] * scale;
      kt[d * npad + j] = row[H * D + d];
    }
    std::memcpy(v + j * dv, row + 2 * H * D, D * sizeof(float));
    std::memset(v + j * dv + D, 0, (dv - D) * sizeof(float));
  }
  for (int d = 0; d < D; d++) std::memset(kt + d * npad + n, 0, (npad - n) * sizeof(float));
  std::memset(q + n * D, 0, (nq - n) * D * sizeof(float));
  for (int i0 = 0; i0 < n; i0 += QB) {
    for (int r0 = 0; r0 < QB; r0 += 4) {
      int j0 = 0;
      for (; j0 + 4 * W <= npad; j0 += 4 * W) scores_tile<4>(q + (i0 + r0) * D, D, kt, npad, s + r0 * npad, j0);
      for (; j0 < npad; j0 += W) scores_tile<1>(q + (i0 + r0) * D, D, kt, npad, s + r0 * npad, j0);
    }
    float norm[QB];
    for (int r = 0; r < QB; r++) norm[r] = exp_row(s + r * npad, n);
    for (int r0 = 0; r0 < QB; r0 += R) values_tile<NV, R>(s + r0 * npad, npad, n, v, o + r0 * dv);
    for (int r = 0; r < QB && i0 + r < n; r++) {
      float* dst = out + (size_t)idx[i0 + r] * H * D + h * D;
      for (int d = 0; d < D; d++) dst[d] = o[r * dv + d] * norm[r];
    }
  }
}

template <int NV>
void attention(const float* qkv, const uint8_t* keep, float* out, int B, int L, int H, int D, float scale) {
  Scratch scratch(L, D, NV);
  std::vector<int> idx(L);
  for (int b = 0; b < B; b++) {
    const float* seq = qkv + (size_t)b * L * 3 * H * D;
    float* seq_out = out + (size_t)b * L * H * D;
    int n = 0;
    for (int j = 0; j < L; j++) {
      if (!keep || keep[(size_t)b * L + j]) idx[n++] = j;
      else std::memset(seq_out + (size_t)j * H * D, 0, H * D * sizeof(float));  // padding queries: zeros
    }
    if (n > 0)
      for (int h = 0; h < H; h++) head<NV>(seq, idx.data(), n, H, D, h, scale, seq_out, scratch);
  }
}

}  // namespace

// qkv: (B, L, 3, H, D) float32, C order; keep: (B, L) bytes, nonzero at real tokens, or null; out: (B, L, H, D).
// Returns 0, or -1 for a head size this file has no kernel for (D > 128).
extern "C" int embed_self_attention(const float* qkv, const uint8_t* keep, float* out, int B, int L, int H, int D,
                                    float scale) {
  switch ((D + W - 1) / W) {
    case 1: attention<1>(qkv, keep, out, B, L, H, D, scale); return 0;
    case 2: attention<2>(qkv, keep, out, B, L, H, D, scale); return 0;
    case 3: attention<3>(qkv, keep, out, B, L, H, D, scale); return 0;
    case 4: attention<4>(qkv, keep, out, B, L, H, D, scale); return 0;
    case 5: attention<5>(qkv, keep, out, B, L, H, D, scale); return 0;
    case 6: attention<6>(qkv, keep, out, B, L, H, D, scale); return 0;
    case 7: attention<7>(qkv, keep, out, B, L, H, D, scale); return 0;
    case 8: attention<8>(qkv, keep, out, B, L, H, D, scale); return 0;
    default: return -1;
  }
}
