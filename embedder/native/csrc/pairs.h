// What the 16-bit matmul kernels (f16_matmul, bf16_matmul) share: weights packed two depths to a 32-bit lane,
// packed[n / 64][k / 2][4][16][2] (lane c of a depth pair's vector v holds column 16 v + c's two depths: what
// `vfmadd231ph` on a broadcast pair, `vdpbf16ps`, and AMX's bf16 tiles read), and the pass over x that converts
// CHUNK rows at a time and multiplies them by each panel in tiles of up to ROWS rows.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#include "boundary.h"
#include "packing.h"

namespace pairs {

constexpr int PANEL = 64;   // output columns a packed panel holds: 4 vectors of 16 columns x 2 depths
constexpr int ROWS = 6;     // rows of x one tile multiplies: 6 x 4 sums, 4 weight vectors
constexpr int CHUNK = 192;  // rows of x converted per pass, their 16-bit copy small enough to stay in L2

// The packed size, in 16-bit values, of an (n, k) weight.
inline long packed_halves(int n, int k) { return packing::round_up(n, PANEL) * packing::round_up(k, 2); }

// `packed` (packed_halves(n, k) values) from an (n, k) weight: `convert(j, row)` writes its row j as k 16-bit values
// and returns a status. Padding columns and depth are zeros.
template <class Convert>
int pack(int n, int k, uint16_t* packed, Convert convert) {
  const long depth = packing::round_up(k, 2);
  std::memset(packed, 0, sizeof(uint16_t) * packed_halves(n, k));
  std::vector<uint16_t> row(k);
  for (long j = 0; j < n; j++) {
    const int status = convert(j, row.data());
    if (status) return status;
    uint16_t* panel = packed + (j / PANEL) * PANEL * depth;
    const long lane = (j % PANEL) / 16 * 32 + (j % 16) * 2;  // within a depth pair's 64 values
    for (int i = 0; i < k; i++) panel[(i / 2) * 2 * PANEL + lane + i % 2] = row[i];
  }
  return boundary::OK;
}

// y (m, n) from x (m, k): `convert(row, r, out)` writes row `row` of x as k 16-bit values into `out` (r: its place
// in the chunk) and returns a status; `tile(a, r, rows, column, y_rows)` multiplies `rows` (<= ROWS) converted rows
// from `a`, chunk row r on, by the panel at `column`, into y from `y_rows` on.
template <class Convert, class Tile>
int matmul(long m, int k, int n, Convert convert, Tile tile) {
  const long depth = packing::round_up(k, 2);
  static thread_local std::vector<uint16_t> a;  // faulting fresh pages in on every call costs more than the copy
  if (a.size() < static_cast<size_t>(CHUNK * depth)) a.resize(CHUNK * depth);
  for (long start = 0; start < m; start += CHUNK) {
    const int rows = static_cast<int>(std::min<long>(CHUNK, m - start));
    for (int r = 0; r < rows; r++) {
      const int status = convert(start + r, r, &a[r * depth]);
      if (status) return status;
      if (depth > k) a[r * depth + k] = 0;
    }
    for (int column = 0; column < n; column += PANEL)
      for (int r = 0; r < rows; r += ROWS) tile(&a[r * depth], r, std::min(ROWS, rows - r), column, start + r);
  }
  return boundary::OK;
}

}  // namespace pairs
