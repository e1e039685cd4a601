// SS2D's two-direction selective scan over plain float32 buffers: the computation that the
// runtimes' kernels (ss2d_scan.cpp for ExecuTorch, ss2d_scan_onnxruntime.cpp for onnxruntime) wrap.
//
// The exported graph's scan (mmmobilemamba.ops.scan_chunked.ss2d_scan_graph) is ~70 whole-tensor
// ops per SS2D, each a pass over memory; here it is one pass over the operands. Semantics, for
// image b, direction k (0 forwards, 1 backwards), channel c, state n:
//
//   dt_t = softplus(delta[b, k, c, t])
//   h_t  = exp(dt_t A[k*d + c, n]) h_{t-+1} + dt_t u[b, c, t] B[b, k, n, t]
//   y[b, c, t] = sum_k sum_n C[b, k, n, t] h_t + skip[c] u[b, c, t]
//
// 16 channels at a time, in tiles of 128 steps: the step sizes (exp and log written as
// polynomials, so that the compiler vectorises them for the target's SIMD: AVX on x86, NEON on
// ARM) along each channel's row, then the tile turned step-major so that the recurrence is one
// 16-lane vector operation per step, then turned back for the output. A task is one block of
// channels of one image; the runtimes share the tasks out over their thread pools.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <utility>

namespace mmmobilemamba {
namespace scan_core {

constexpr int64_t kRows = 16;      // rows scanned side by side: the lanes of one vector op
constexpr int64_t kTile = 128;     // steps per tile (the scratch stays in the L1 cache)
constexpr int64_t kMaxStates = 16; // the largest d_state the kernel takes

inline float bits_to_float(int32_t bits) {
  float out;
  std::memcpy(&out, &bits, sizeof(out));
  return out;
}

inline int32_t float_to_bits(float value) {
  int32_t out;
  std::memcpy(&out, &value, sizeof(out));
  return out;
}

// e^x to float32 rounding for x in [-87, 88] (clamped there: e^-87 is float32's smallest normal
// range, far below any state a decay leaves): 2^n e^r with |r| <= ln(2)/2, e^r by its Taylor
// polynomial to r^7 (remainder < 6e-9 relative).
inline float exp_f32(float x) {
  x = std::min(std::max(x, -87.0f), 88.0f);
  const float n = std::floor(x * 1.44269504088896341f + 0.5f);
  const float r = (x - n * 0.693145751953125f) - n * 1.42860682030941723e-6f;
  float p = 1.0f / 5040.0f;
  p = p * r + 1.0f / 720.0f;
  p = p * r + 1.0f / 120.0f;
  p = p * r + 1.0f / 24.0f;
  p = p * r + 1.0f / 6.0f;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  return p * bits_to_float((static_cast<int32_t>(n) + 127) << 23);
}

// log(1 + z) for z in [0, 1]: y = 1 + z = 2^e m with m in [sqrt(1/2), sqrt(2)), log m by the
// series of 2 atanh(s), s = (m - 1) / (m + 1), |s| <= 0.172 (five terms: < 1e-9), plus the
// rounding of 1 + z, (z - (y - 1)) / y.
inline float log1p_f32(float z) {
  const float y = 1.0f + z;
  // what rounding 1 + z lost, over y: (3 - y) / 2 stands in for 1 / y on [1, 2] (within 12%
  // of a term below 6e-8: no division)
  const float lost = (z - (y - 1.0f)) * (1.5f - 0.5f * y);
  const int32_t bits = float_to_bits(y);
  // exponent against 1.0 after moving m into [sqrt(1/2), sqrt(2)): 0x3f3504f3 is sqrt(1/2)
  const int32_t shifted = bits - 0x3f3504f3;
  const int32_t e = shifted >> 23;
  const float m = bits_to_float(bits - (e << 23));
  const float s = (m - 1.0f) / (m + 1.0f);
  const float s2 = s * s;
  float p = 1.0f / 9.0f;
  p = p * s2 + 1.0f / 7.0f;
  p = p * s2 + 1.0f / 5.0f;
  p = p * s2 + 1.0f / 3.0f;
  p = p * s2 + 1.0f;
  return static_cast<float>(e) * 0.693147180559945309f + 2.0f * s * p + lost;
}

// log(1 + e^x) = max(x, 0) + log1p(e^-|x|): no overflow, full accuracy at both ends.
inline float softplus_f32(float x) {
  return std::max(x, 0.0f) + log1p_f32(exp_f32(-std::fabs(x)));
}

typedef float Lanes __attribute__((vector_size(kRows * sizeof(float))));

inline Lanes load_lanes(const float* p) {
  Lanes v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}

inline void store_lanes(float* p, Lanes v) { std::memcpy(p, &v, sizeof(v)); }

// One butterfly of a 16 x 16 transpose: rows i and i + H swap their off-diagonal blocks of H
// columns (after H = 8, 4, 2, 1 the matrix is transposed): one two-source permute each.
template <int H, int... C>
inline void swap_blocks(Lanes& upper, Lanes& lower, std::integer_sequence<int, C...>) {
  // indices from kRows on pick from ``lower``
  const Lanes first = __builtin_shufflevector(upper, lower, ((C & H) ? kRows + C - H : C)...);
  const Lanes second = __builtin_shufflevector(upper, lower, ((C & H) ? kRows + C : C + H)...);
  upper = first;
  lower = second;
}

template <int H>
inline void butterfly(Lanes (&m)[kRows]) {
  for (int i = 0; i < kRows; ++i) {
    if ((i & H) == 0) swap_blocks<H>(m[i], m[i + H], std::make_integer_sequence<int, kRows>());
  }
}

// dst (16 rows of stride dst_stride) = the transpose of src (16 rows of stride src_stride).
inline void transpose_16x16(const float* src, int64_t src_stride, float* dst,
                            int64_t dst_stride) {
  Lanes m[kRows];
  for (int i = 0; i < kRows; ++i) m[i] = load_lanes(src + i * src_stride);
  butterfly<8>(m);
  butterfly<4>(m);
  butterfly<2>(m);
  butterfly<1>(m);
  for (int i = 0; i < kRows; ++i) store_lanes(dst + i * dst_stride, m[i]);
}

// dst (cols x rows, row stride dst_stride) = the transpose of src (rows x cols, row stride
// src_stride): whole 16 x 16 blocks in registers, the rest element by element.
inline void transpose(const float* src, int64_t src_stride, float* dst, int64_t dst_stride,
                      int64_t rows, int64_t cols) {
  for (int64_t i = 0; i < rows; i += kRows) {
    for (int64_t j = 0; j < cols; j += kRows) {
      if (i + kRows <= rows && j + kRows <= cols) {
        transpose_16x16(src + i * src_stride + j, src_stride, dst + j * dst_stride + i,
                        dst_stride);
        continue;
      }
      for (int64_t r = i; r < std::min(i + kRows, rows); ++r) {
        for (int64_t c = j; c < std::min(j + kRows, cols); ++c) {
          dst[c * dst_stride + r] = src[r * src_stride + c];
        }
      }
    }
  }
}

struct Shapes {
  int64_t batch, directions, channels, length, states;
};

// Scratch of one task: a tile of kTile steps of kRows rows, in both layouts.
struct Scratch {
  float rows[2][kRows * kTile];  // step sizes and dt * u, row-major (t fastest)
  float dt[kTile * kRows];       // step-major (rows fastest): the recurrence's layout
  float dt_u[kTile * kRows];
  float decay[kTile * kRows];
  float y[kTile * kRows];
};

// Direction k of rows c0 .. c0 + rows - 1 of image b: written into y with the skip term
// (k = 0), added to it (k = 1). The rows are the lanes
// of the recurrence (step-major tiles, rows fastest: one vector op per step for all rows);
// the tiles run in scan order, carrying the states from one to the next.
inline void scan_block(const Shapes& s, const float* u, const float* delta, const float* A,
                       const float* B, const float* C, const float* skip, float* y, int64_t b,
                       int64_t k, int64_t c0, int64_t rows, Scratch& w) {
  const int64_t L = s.length, N = s.states, d = s.channels;
  const bool reverse = k == 1;
  const float* u_b = u + b * d * L;
  const float* delta_bk = delta + (b * s.directions + k) * d * L;
  const float* B_bk = B + (b * s.directions + k) * N * L;
  const float* C_bk = C + (b * s.directions + k) * N * L;
  float* y_b = y + b * d * L;
  float h[kMaxStates][kRows] = {};
  float a[kMaxStates][kRows] = {};  // A per lane (0 for the padding lanes)
  for (int64_t n = 0; n < N; ++n) {
    for (int64_t r = 0; r < rows; ++r) a[n][r] = A[(k * d + c0 + r) * N + n];
  }
  const int64_t tiles = (L + kTile - 1) / kTile;
  for (int64_t i = 0; i < tiles; ++i) {
    const int64_t tile = reverse ? tiles - 1 - i : i;
    const int64_t t0 = tile * kTile, len = std::min(kTile, L - t0);
    // step sizes, row by row (vectorised along the steps), then turned step-major
    for (int64_t r = 0; r < kRows; ++r) {
      float* dt_row = w.rows[0] + r * kTile;
      float* dtu_row = w.rows[1] + r * kTile;
      if (r >= rows) {  // padding lanes: no step, no input
        std::fill(dt_row, dt_row + len, 0.0f);
        std::fill(dtu_row, dtu_row + len, 0.0f);
        continue;
      }
      const float* delta_row = delta_bk + (c0 + r) * L + t0;
      const float* u_row = u_b + (c0 + r) * L + t0;
      for (int64_t t = 0; t < len; ++t) {
        const float step = softplus_f32(delta_row[t]);
        dt_row[t] = step;
        dtu_row[t] = step * u_row[t];
      }
    }
    transpose(w.rows[0], kTile, w.dt, kRows, kRows, len);
    transpose(w.rows[1], kTile, w.dt_u, kRows, kRows, len);
    std::fill(w.y, w.y + len * kRows, 0.0f);
    for (int64_t n = 0; n < N; ++n) {
      const float* B_n = B_bk + n * L + t0;
      const float* C_n = C_bk + n * L + t0;
      for (int64_t t = 0; t < len; ++t) {
        for (int64_t r = 0; r < kRows; ++r) {
          w.decay[t * kRows + r] = exp_f32(w.dt[t * kRows + r] * a[n][r]);
        }
      }
      // the recurrence: one vector of kRows lanes per step (GCC/Clang vector extensions,
      // lowered to the target's SIMD registers: one AVX-512 or four NEON registers)
      Lanes state = load_lanes(h[n]);
      for (int64_t j = 0; j < len; ++j) {
        const int64_t t = reverse ? len - 1 - j : j;
        state = load_lanes(w.decay + t * kRows) * state + load_lanes(w.dt_u + t * kRows) * B_n[t];
        store_lanes(w.y + t * kRows, load_lanes(w.y + t * kRows) + C_n[t] * state);
      }
      store_lanes(h[n], state);
    }
    // back to rows (the transpose of the tile into w.rows[0]), written with the skip term
    // (k = 0) or added
    transpose(w.y, kRows, w.rows[0], kTile, len, kRows);
    for (int64_t r = 0; r < rows; ++r) {
      float* y_row = y_b + (c0 + r) * L + t0;
      const float* out_row = w.rows[0] + r * kTile;
      if (k == 0) {
        const float* u_row = u_b + (c0 + r) * L + t0;
        const float weight = skip[c0 + r];
        for (int64_t t = 0; t < len; ++t) y_row[t] = weight * u_row[t] + out_row[t];
      } else {
        for (int64_t t = 0; t < len; ++t) y_row[t] += out_row[t];
      }
    }
  }
}

// The shapes of the operands, as the wrappers read them from their runtime's tensors.
struct Dims {
  int64_t size[4];
  int64_t rank;  // > 4: a tensor of too many dimensions (no sizes kept)
};

// nullptr when u (b, d, L), delta (b, K, d, L), A (K*d, N), B and C (b, K, N, L), skip (d,)
// agree (K 1 or 2, N 1 to 16), and then ``s`` holds the sizes; otherwise what is wrong.
inline const char* check_shapes(const Dims& u, const Dims& delta, const Dims& A, const Dims& B,
                                const Dims& C, const Dims& skip, Shapes* s) {
  if (u.rank != 3 || delta.rank != 4 || A.rank != 2 || B.rank != 4 || C.rank != 4 ||
      skip.rank != 1) {
    return "expected u (b, d, L), delta (b, K, d, L), A (K*d, N), B and C (b, K, N, L), "
           "skip (d,)";
  }
  *s = Shapes{delta.size[0], delta.size[1], delta.size[2], delta.size[3], A.size[1]};
  bool ok = u.size[0] == s->batch && u.size[1] == s->channels && u.size[2] == s->length &&
            (s->directions == 1 || s->directions == 2) &&
            A.size[0] == s->directions * s->channels && B.size[0] == s->batch &&
            B.size[1] == s->directions && B.size[2] == s->states && B.size[3] == s->length &&
            skip.size[0] == s->channels;
  for (int i = 0; i < 4; ++i) ok = ok && C.size[i] == B.size[i];
  if (!ok) return "shapes do not agree (see the op's schema)";
  if (s->states < 1 || s->states > kMaxStates) return "d_state must be 1 to 16";
  return nullptr;
}

struct Operands {
  const float *u, *delta, *A, *B, *C, *skip;
};

inline int64_t blocks_per_image(const Shapes& s) { return (s.channels + kRows - 1) / kRows; }

// Tasks of one scan: blocks of kRows channels of one image. Both directions of a block add
// into the same rows, so they run in the same task (no two tasks write one row).
inline int64_t scan_tasks(const Shapes& s) { return s.batch * blocks_per_image(s); }

inline void run_scan_task(const Shapes& s, const Operands& in, float* y, int64_t task) {
  const int64_t b = task / blocks_per_image(s);
  const int64_t c0 = (task % blocks_per_image(s)) * kRows;
  const int64_t rows = std::min(kRows, s.channels - c0);
  Scratch scratch;
  for (int64_t k = 0; k < s.directions; ++k) {
    scan_block(s, in.u, in.delta, in.A, in.B, in.C, in.skip, y, b, k, c0, rows, scratch);
  }
}

}  // namespace scan_core
}  // namespace mmmobilemamba
