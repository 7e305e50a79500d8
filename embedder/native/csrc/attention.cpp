// Fused self-attention for the CPU: softmax(q k^T * scale) v per sequence and head, without ever writing the
// (B, H, L, L) scores to memory. MLX runs attention as a batched matmul, an element-wise pass over the scores and
// another matmul: the scores make two round trips through memory. Here a block of 8 queries' scores stays in L1
// (8 x L floats) between the three steps, and only real (unmasked) keys and queries are computed. q, k, v come
// from the fused projection (B, L, 3, H, D) in one pass per sequence, and the output goes out in (B, L, H * D),
// the layout the next matmul reads. An optional additive bias per head and (query, key) position, (H, L, L), joins
// the scores after scaling: MPNet's and T5's relative position biases. Rotary positions (RoPE: NomicBERT's, GTE's,
// ModernBERT's) turn each query and key as it is gathered, from tables of each position's cosines and sines; a
// window (ModernBERT's local layers) gives no weight to keys further than it from their query.
// Built by embedder.native.build with -march=native.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "boundary.h"
#include "simd.h"

extern "C" {

// RoPE's rotations: cos and sin (L, dims / 2) float32 by position in the sequence, turning the first `dims`
// floats of each query and key head in pairs (i, i + dims / 2), or (2i, 2i + 1) when `interleaved`.
struct EmbedRotary {
  const float* cos;
  const float* sin;
  int dims, interleaved;
};

}  // extern "C"

namespace {

using namespace simd;

constexpr int QB = 8;  // queries per block: their scores (QB x L) stay in L1

// s[r][0 : NC * W] = q[r] . k[j] for 4 queries; k is a block of NC * W keys packed by dimension, (D, NC * W).
template <int NC>
inline void scores_tile(const float* q, int D, const float* k, float* s, int npad) {
  vec acc[4][NC] = {};
  for (int d = 0; d < D; d++) {
    vec kd[NC];
    for (int c = 0; c < NC; c++) kd[c] = load(k + (d * NC + c) * W);
    for (int r = 0; r < 4; r++) {
      const float qd = q[r * D + d];
      for (int c = 0; c < NC; c++) acc[r][c] += qd * kd[c];
    }
  }
  for (int r = 0; r < 4; r++)
    for (int c = 0; c < NC; c++) store(s + r * npad + c * W, acc[r][c]);
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
  vec top_lanes = load(s);  // s is padded to whole vectors: mask the lanes of the last one past n
  int j = W;
  for (; j + W <= n; j += W) {
    const vec x = load(s + j);
    top_lanes = x > top_lanes ? x : top_lanes;
  }
  float top = s[0];
  for (int c = 0; c < W; c++)
    if (c < n) top = top_lanes[c] > top ? top_lanes[c] : top;
  for (; j < n; j++) top = s[j] > top ? s[j] : top;
  vec total = {};
  j = 0;
  for (; j + W <= n; j += W) {
    const vec e = exp_nonpositive(load(s + j) - top);
    store(s + j, e);
    total += e;
  }
  if (j < n) {
    const vec e = exp_nonpositive(load_part(s + j, n - j) - top);
    store_part(s + j, e, n - j);
    total += load_part(s + j, n - j);
  }
  return 1.0f / sum(total);
}

constexpr int KB = ACCUMULATORS / 4;  // vectors of keys per block of packed keys: a scores tile's 4 x KB sums

// One sequence's q, k, v gathered head by head, and its output, so that the projections are read and the output
// written in one pass each, row after row: per head, a row's few strided floats would miss the cache every time.
struct Scratch {
  int n, npad, nq, D, dv;
  int nk = 0;                   // the sequence's first nk rows are keys; the rest only query (ColBERT's expansion)
  const int* idx = nullptr;     // the sequence's real tokens' positions (n of them)
  const float* bias = nullptr;  // (H, L, L) additive scores bias, or null
  int window = 0;               // keys further than this from their query get no weight; 0: none
  int L;
  std::vector<float> q, k, v, packed, s, o, out;
  Scratch(int L, int H, int D, int NV)
      : npad((L + W - 1) / W * W), nq((L + QB - 1) / QB * QB), D(D), dv(NV * W), L(L), q((size_t)H * nq * D),
        k((size_t)H * npad * D), v((size_t)H * npad * NV * W), packed((size_t)D * npad), s(QB * npad),
        o(QB * NV * W), out((size_t)L * H * D) {}
  float* head_q(int h) { return q.data() + (size_t)h * nq * D; }
  float* head_k(int h) { return k.data() + (size_t)h * npad * D; }
  float* head_v(int h) { return v.data() + (size_t)h * npad * dv; }
};

// x (a head's query or key) turned by position `pos`'s rotations.
inline void rotate(float* x, const EmbedRotary& r, int pos) {
  const int half = r.dims / 2;
  const float *c = r.cos + (size_t)pos * half, *s = r.sin + (size_t)pos * half;
  const int step = r.interleaved ? 2 : 1, other = r.interleaved ? 1 : half;
  for (int i = 0; i < half; i++) {
    float &a = x[i * step], &b = x[i * step + other];
    const float a0 = a;
    a = a0 * c[i] - b * s[i];
    b = b * c[i] + a0 * s[i];
  }
}

// The n real tokens idx[0 : n] of one sequence into the scratch, head by head: q scaled, v padded to whole vectors,
// q and k turned by their positions when `rotary` is given.
void gather(const float* seq, const int* idx, int n, int H, int D, float scale, const EmbedRotary* rotary,
            Scratch& m) {
  m.n = n, m.nk = n, m.npad = (n + W - 1) / W * W, m.nq = (n + QB - 1) / QB * QB;
  const int stride = 3 * H * D;
  for (int h = 0; h < H; h++) {
    std::memset(m.head_q(h) + n * D, 0, (m.nq - n) * D * sizeof(float));
    std::memset(m.head_k(h) + n * D, 0, (m.npad - n) * D * sizeof(float));
  }
  for (int j = 0; j < n; j++) {
    const float* row = seq + (size_t)idx[j] * stride;
    for (int h = 0; h < H; h++) {
      float *hq = m.head_q(h) + j * D, *hv = m.head_v(h) + j * m.dv;
      for (int d = 0; d < D; d++) hq[d] = row[h * D + d] * scale;
      std::memcpy(m.head_k(h) + j * D, row + (H + h) * D, D * sizeof(float));
      if (rotary) {
        rotate(hq, *rotary, idx[j]);
        rotate(m.head_k(h) + j * D, *rotary, idx[j]);
      }
      std::memcpy(hv, row + (2 * H + h) * D, D * sizeof(float));
      std::memset(hv + D, 0, (m.dv - D) * sizeof(float));
    }
  }
}

// One head's keys (npad, D) into blocks of KB vectors of keys, each block (D, keys): a block's keys for one
// dimension are contiguous, as the scores tile reads them.
void pack_keys(const float* k, int npad, int D, float* packed) {
  for (int j0 = 0; j0 < npad; j0 += KB * W) {
    const int width = std::min(KB * W, npad - j0);
    float* block = packed + (size_t)j0 * D;
    for (int d = 0; d < D; d++)
      for (int c = 0; c < width; c++) block[d * width + c] = k[(j0 + c) * D + d];
  }
}

// Attention of one head over the gathered sequence, into the sequence's output rows (n, H * D).
template <int NV>
void head(Scratch& m, int H, int h) {
  const int n = m.n, nk = m.nk, npad = (nk + W - 1) / W * W, D = m.D, dv = m.dv;
  // Queries a values tile takes: the most of 8, 4, 2 whose NV sums each fit ACCUMULATORS (one at least)
  constexpr int R = 8 * NV <= ACCUMULATORS ? 8 : 4 * NV <= ACCUMULATORS ? 4 : 2 * NV <= ACCUMULATORS ? 2 : 1;
  const float *q = m.head_q(h), *k = m.packed.data(), *v = m.head_v(h);
  float *s = m.s.data(), *o = m.o.data();
  pack_keys(m.head_k(h), npad, D, m.packed.data());
  for (int i0 = 0; i0 < n; i0 += QB) {
    // The keys this block of queries scores, [first, first + count): all of them, or with a window those that may
    // fall in some query's window, in whole blocks of packed keys (idx is ascending).
    int first = 0, end = npad;
    if (m.window) {
      const int* idx = m.idx;
      const int lo = std::lower_bound(idx, idx + n, idx[i0] - m.window) - idx;
      const int hi = std::upper_bound(idx, idx + n, idx[std::min(i0 + QB, n) - 1] + m.window) - idx;
      first = lo / (KB * W) * (KB * W);
      end = std::min(npad, (hi + KB * W - 1) / (KB * W) * (KB * W));
    }
    const int count = std::min(end, nk) - first;
    for (int r0 = 0; r0 < QB; r0 += 4) {
      const float* qr = q + (i0 + r0) * D;
      float* sr = s + r0 * npad;
      int j0 = first;
      for (; j0 + KB * W <= end; j0 += KB * W) scores_tile<KB>(qr, D, k + j0 * D, sr + j0, npad);
      switch ((end - j0) / W) {
        case 1: scores_tile<1>(qr, D, k + j0 * D, sr + j0, npad); break;
        case 2: scores_tile<2>(qr, D, k + j0 * D, sr + j0, npad); break;
        case 3: scores_tile<3>(qr, D, k + j0 * D, sr + j0, npad); break;
      }
    }
    if (m.bias)
      for (int r = 0; r < QB && i0 + r < n; r++) {
        const float* row = m.bias + ((size_t)h * m.L + m.idx[i0 + r]) * m.L;
        float* sr = s + r * npad;
        for (int j = first; j < first + count; j++) sr[j] += row[m.idx[j]];
      }
    auto outside = [&](int r, int j) { return std::abs(m.idx[j] - m.idx[i0 + r]) > m.window; };
    if (m.window)  // the query itself is always in its window, so every row keeps a finite top
      for (int r = 0; r < QB && i0 + r < n; r++)
        for (int j = first; j < first + count; j++)
          if (outside(r, j)) s[r * npad + j] = -INFINITY;
    float norm[QB];
    for (int r = 0; r < QB; r++) norm[r] = exp_row(s + r * npad + first, count);
    if (m.window)  // exactly no weight: exp's floor (~1e-38) times a value would be a subnormal, ~100x slower
      for (int r = 0; r < QB && i0 + r < n; r++)
        for (int j = first; j < first + count; j++)
          if (outside(r, j)) s[r * npad + j] = 0.0f;
    for (int r0 = 0; r0 < QB; r0 += R)
      values_tile<NV, R>(s + r0 * npad + first, npad, count, v + (size_t)first * dv, o + r0 * dv);
    for (int r = 0; r < QB && i0 + r < n; r++) {
      float* dst = m.out.data() + (size_t)(i0 + r) * H * D + h * D;
      for (int d = 0; d < D; d++) dst[d] = o[r * dv + d] * norm[r];
    }
  }
}

template <int NV>
void attention(const float* qkv, const uint8_t* keep, const int* starts, const int* keys, const float* bias,
               const EmbedRotary* rotary, int window, float* out, int B, int L, int H, int D, float scale) {
  Scratch scratch(L, H, D, NV);
  std::vector<int> idx(L);
  scratch.idx = idx.data(), scratch.bias = bias, scratch.window = window;
  const size_t row = (size_t)H * D;
  for (int b = 0; b < B; b++) {
    const size_t first = starts ? starts[b] : (size_t)b * L;  // the sequence's first row in qkv and out
    float* seq_out = out + first * row;
    int n = 0;
    if (starts) {
      for (n = 0; n < starts[b + 1] - starts[b]; n++) idx[n] = n;
    } else {
      for (int j = 0; j < L; j++) {
        if (!keep || keep[(size_t)b * L + j]) idx[n++] = j;
        else std::memset(seq_out + j * row, 0, row * sizeof(float));  // padding queries: zeros
      }
    }
    if (n == 0) continue;
    gather(qkv + first * 3 * row, idx.data(), n, H, D, scale, rotary, scratch);
    if (keys) scratch.nk = std::min(std::max(keys[b], 1), n);
    for (int h = 0; h < H; h++) head<NV>(scratch, H, h);
    for (int j = 0; j < n; j++) std::memcpy(seq_out + idx[j] * row, scratch.out.data() + j * row, row * sizeof(float));
  }
}

constexpr int MAX_HEAD_DIM = 128;

// attention<NV> for a head of `vectors` vectors, NV counting up to it.
template <int NV>
int dispatch(int vectors, const float* qkv, const uint8_t* keep, const int* starts, const int* keys,
             const float* bias, const EmbedRotary* rotary, int window, float* out, int B, int L, int H, int D,
             float scale) {
  if constexpr (NV * W > MAX_HEAD_DIM) {
    return boundary::NO_KERNEL;
  } else {
    if (vectors != NV)
      return dispatch<NV + 1>(vectors, qkv, keep, starts, keys, bias, rotary, window, out, B, L, H, D, scale);
    attention<NV>(qkv, keep, starts, keys, bias, rotary, window, out, B, L, H, D, scale);
    return boundary::OK;
  }
}

}  // namespace

// The largest head size with a kernel.
extern "C" int embed_max_head_dim() { return MAX_HEAD_DIM; }

// qkv: (B, L, 3, H, D) float32, C order; keep: (B, L) bytes, nonzero at real tokens, or null; bias: (H, L, L)
// float32 added to the scaled scores, or null; rotary: RoPE's tables for positions 0 to L - 1, or null; window:
// the furthest a key may be from its query to count (0: any); out: (B, L, H, D). Or packed, with `starts` (B + 1
// row numbers, the last the total T): sequence b is rows starts[b] to starts[b + 1] of qkv (T, 3, H, D) and out
// (T, H, D), no padding anywhere; keep is then null, and L the longest sequence. With `keys` (packed only, B
// counts), only sequence b's first keys[b] rows are keys; its other rows query them without being queried (a
// ColBERT query's expansion tokens), which no window may then bound.
// Returns a boundary::Status: NO_KERNEL for a head size over embed_max_head_dim(), FAILED for rotations that do not
// fit the heads, a negative window, or keys with a window or without `starts`.
extern "C" int embed_self_attention(const float* qkv, const uint8_t* keep, const int* starts, const int* keys,
                                    const float* bias, const EmbedRotary* rotary, int window, float* out, int B, int L,
                                    int H, int D, float scale) {
  return boundary::guarded([&]() -> int {
    if ((rotary && (rotary->dims <= 0 || rotary->dims % 2 || rotary->dims > D)) || window < 0) return boundary::FAILED;
    if (keys && (window || !starts)) return boundary::FAILED;
    return dispatch<1>((D + W - 1) / W, qkv, keep, starts, keys, bias, rotary, window, out, B, L, H, D, scale);
  });
}
