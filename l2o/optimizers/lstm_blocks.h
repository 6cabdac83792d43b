// The LSTM tape kernels' block math (lstm_tape.cpp), plain C++ without ATen: SIMD vectors of
// kLanes rows, the activations, and the register-tiled products of a block of rows held
// feature-major. Compiled WITHOUT -ffast-math: every clamp lets a NaN through.
#pragma once

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "fast_exp.h"

namespace l2o_lstm {

#if defined(__AVX512F__)
constexpr int kLanes = 16;  // rows per vector
// register tiles, sized to the 32 vector registers: the gates' accumulators (4 gates x units x
// vectors), the weight gradient's (rows x columns of dW), the input gradient's (outputs x vectors)
constexpr int kGateUnits = 2, kTileVecs = 2, kOuterK = 4, kOuterJ = 4, kDzK = 4, kDzVecs = 4;
#else
constexpr int kLanes = 8;
constexpr int kGateUnits = 1, kTileVecs = 2, kOuterK = 2, kOuterJ = 4, kDzK = 2, kDzVecs = 4;
#endif
constexpr int64_t kTile = kTileVecs * kLanes;  // rows per register tile of the gates
constexpr int64_t kColUnit = 4 * kLanes;       // a block's columns come in multiples of this
static_assert(4 % kTileVecs == 0 && 4 % kDzVecs == 0, "tiles must divide kColUnit");
constexpr int64_t kClaimTiles = 16;      // forward: tiles per claimed unit of work
constexpr int64_t kBlockRows = 256;      // backward: rows per block (its state stays in L2)
static_assert(kBlockRows % kColUnit == 0, "blocks hold whole column units");

typedef float vf __attribute__((vector_size(kLanes * sizeof(float))));
typedef int32_t vi __attribute__((vector_size(kLanes * sizeof(int32_t))));

inline vf vload(const float* p) {
  vf v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}
inline void vstore(float* p, vf v) { std::memcpy(p, &v, sizeof(v)); }
inline vf splat(float x) { return vf{} + x; }

inline vf vfloor(vf x) {
#if defined(__AVX512F__)
  return (vf)_mm512_roundscale_ps((__m512)x, _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC);
#else
  for (int l = 0; l < kLanes; ++l) x[l] = std::floor(x[l]);
  return x;
#endif
}

// p * 2^k for integral k in [-126, 127] (k NaN: NaN)
inline vf vscale2(vf p, vf k) {
#if defined(__AVX512F__)
  return (vf)_mm512_scalef_ps((__m512)p, (__m512)k);
#else
  const vf kk = k == k ? k : vf{};  // NaN: p is NaN already; keep the conversion defined
  const vi bits = (__builtin_convertvector(kk, vi) + 127) << 23;
  vf scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  return p * scale;
#endif
}

// exp(x) as kernels.cpp's fast_exp, lane by lane: the argument clamped to [-87, 88] (NaN kept),
// then fast_exp.h's polynomial.
inline vf vexp(vf x) {
#if defined(__AVX512F__)
  // max/min return their second operand where either is NaN: one instruction per bound
  x = (vf)_mm512_min_ps(_mm512_set1_ps(88.0f), _mm512_max_ps(_mm512_set1_ps(-87.0f), (__m512)x));
#else
  const vf lo = splat(-87.0f), hi = splat(88.0f);
  x = x < lo ? lo : x;
  x = x > hi ? hi : x;
#endif
  const vf k = vfloor(x * 1.44269504088896341f + 0.5f);
  return vscale2(l2o_exp::exp_mantissa(x, k), k);
}

// 1 / d for d in [1, 2e38] (a NaN stays NaN): with AVX-512 the 14-bit estimate and one Newton
// step (~1 ulp, a few FMAs instead of a division that takes ~10 cycles per vector).
inline vf vrecip(vf d) {
#if defined(__AVX512F__)
  const vf r = (vf)_mm512_rcp14_ps((__m512)d);
  return r + r * (1.0f - d * r);
#else
  return 1.0f / d;
#endif
}

inline vf vsigmoid(vf x) { return vrecip(1.0f + vexp(-x)); }
inline vf vtanh(vf x) { return 2.0f * vrecip(1.0f + vexp(-2.0f * x)) - 1.0f; }

// A layer's weights as the register tiles read them: units in groups of kGateUnits, per group
// w [width][4][kGateUnits] and b [4][kGateUnits] (units past H padded with zeros); wt keeps the
// caller's [(in + H), 4H] layout (row k: the pre-activations' weights on input k) for dz.
struct PackedLayer {
  int64_t in = 0, width = 0, groups = 0;
  std::vector<float> w, b;
  const float* wt = nullptr;
};

#if defined(__AVX512F__)
// The 4 x 4 transposes inside each 128-bit block of v[0..3]: element j of v[k]'s block b <->
// element k of v[j]'s block b (8 shuffles).
inline void transpose4_blocks(__m512* v) {
  const __m512 lo01 = _mm512_unpacklo_ps(v[0], v[1]), lo23 = _mm512_unpacklo_ps(v[2], v[3]);
  const __m512 hi01 = _mm512_unpackhi_ps(v[0], v[1]), hi23 = _mm512_unpackhi_ps(v[2], v[3]);
  v[0] = _mm512_shuffle_ps(lo01, lo23, 0x44);
  v[1] = _mm512_shuffle_ps(lo01, lo23, 0xEE);
  v[2] = _mm512_shuffle_ps(hi01, hi23, 0x44);
  v[3] = _mm512_shuffle_ps(hi01, hi23, 0xEE);
}

// v[i][j] <-> v[j][i] for 16 vectors of 16 floats, in registers (64 shuffles).
inline void transpose16(__m512 (&v)[16]) {
  // v[4q + j], 128-bit block k: rows 4q..4q+3 of column 4k + j
  for (int q = 0; q < 4; ++q) transpose4_blocks(v + 4 * q);
  __m512 t[16];
#pragma GCC unroll 4
  for (int j = 0; j < 4; ++j) {
    t[j] = _mm512_shuffle_f32x4(v[j], v[4 + j], 0x88);
    t[4 + j] = _mm512_shuffle_f32x4(v[j], v[4 + j], 0xDD);
    t[8 + j] = _mm512_shuffle_f32x4(v[8 + j], v[12 + j], 0x88);
    t[12 + j] = _mm512_shuffle_f32x4(v[8 + j], v[12 + j], 0xDD);
  }
#pragma GCC unroll 4
  for (int j = 0; j < 4; ++j) {
    v[j] = _mm512_shuffle_f32x4(t[j], t[8 + j], 0x88);
    v[4 + j] = _mm512_shuffle_f32x4(t[4 + j], t[12 + j], 0x88);
    v[8 + j] = _mm512_shuffle_f32x4(t[j], t[8 + j], 0xDD);
    v[12 + j] = _mm512_shuffle_f32x4(t[4 + j], t[12 + j], 0xDD);
  }
}
inline __mmask16 first_lanes(int64_t n) {
  return static_cast<__mmask16>(n >= kLanes ? 0xFFFF : (1u << n) - 1u);
}
#endif

#if defined(__AVX512VL__)
// move_rows for m <= 16 rows of w <= 4 columns: row 4b + k is block b of vector k, the 4 x 4
// transposes inside the blocks make vector j column j (20 shuffles instead of a square's 64).
template <bool ToLanes>
inline void move_strip(float* rows, int64_t stride, int64_t m, int64_t w, float* lanes,
                       int64_t ld) {
  const __mmask8 cm = static_cast<__mmask8>((1u << w) - 1u);
  __m512 v[4];
  if (ToLanes) {
    for (int k = 0; k < 4; ++k) {
      __m128 b[4];
      for (int blk = 0; blk < 4; ++blk) {
        const int64_t i = 4 * blk + k;
        b[blk] = i < m ? _mm_maskz_loadu_ps(cm, rows + i * stride) : _mm_setzero_ps();
      }
      v[k] = _mm512_insertf32x4(
          _mm512_insertf32x4(_mm512_insertf32x4(_mm512_castps128_ps512(b[0]), b[1], 1), b[2], 2),
          b[3], 3);
    }
    transpose4_blocks(v);
    for (int64_t j = 0; j < w; ++j) _mm512_storeu_ps(lanes + j * ld, v[j]);
  } else {
    for (int j = 0; j < 4; ++j) v[j] = j < w ? _mm512_loadu_ps(lanes + j * ld) : _mm512_setzero_ps();
    transpose4_blocks(v);
    alignas(64) float block_rows[4][16];  // [k][4b + j]: row 4b + k, column j
    for (int k = 0; k < 4; ++k) _mm512_store_ps(block_rows[k], v[k]);
    for (int64_t i = 0; i < m; ++i)
      _mm_mask_storeu_ps(rows + i * stride, cm, _mm_load_ps(&block_rows[i % 4][4 * (i / 4)]));
  }
}
#endif

// Rows [n, cols] (row stride `stride`) to lanes 0..n of the feature-major lanes [cols][ld]
// (ToLanes), or back. With AVX-512, 16 x 16 squares are transposed in registers; a partial square
// reads zeros for its missing rows (ToLanes then writes zeros into the padded lanes, never
// another row's data) and writes back only its rows.
template <bool ToLanes>
inline void move_rows(float* rows, int64_t stride, int64_t n, int64_t cols, float* lanes,
                      int64_t ld) {
#if defined(__AVX512F__)
  for (int64_t r0 = 0; r0 < n; r0 += kLanes) {
    const int64_t m = std::min<int64_t>(kLanes, n - r0);
    for (int64_t c0 = 0; c0 < cols; c0 += kLanes) {
      const int64_t w = std::min<int64_t>(kLanes, cols - c0);
#if defined(__AVX512VL__)
      if (w <= 4) {  // a narrow strip (H = 20's last 4 columns, 2 input features): 4 vectors
        move_strip<ToLanes>(rows + r0 * stride + c0, stride, m, w, lanes + c0 * ld + r0, ld);
        continue;
      }
#endif
      const __mmask16 cm = first_lanes(w);
      __m512 v[16];
      for (int i = 0; i < 16; ++i) {
        if (ToLanes)
          v[i] = i < m ? _mm512_maskz_loadu_ps(cm, rows + (r0 + i) * stride + c0) : _mm512_setzero_ps();
        else
          v[i] = i < w ? _mm512_loadu_ps(lanes + (c0 + i) * ld + r0) : _mm512_setzero_ps();
      }
      transpose16(v);
      for (int64_t i = 0; i < (ToLanes ? w : m); ++i) {
        if (ToLanes)
          _mm512_storeu_ps(lanes + (c0 + i) * ld + r0, v[i]);
        else
          _mm512_mask_storeu_ps(rows + (r0 + i) * stride + c0, cm, v[i]);
      }
    }
  }
#else
  for (int64_t r = 0; r < n; ++r)
    for (int64_t c = 0; c < cols; ++c) {
      if (ToLanes)
        lanes[c * ld + r] = rows[r * stride + c];
      else
        rows[r * stride + c] = lanes[c * ld + r];
    }
#endif
}
inline void rows_to_lanes(const float* src, int64_t stride, int64_t n, int64_t cols, float* dst,
                          int64_t ld) {
  move_rows<true>(const_cast<float*>(src), stride, n, cols, dst, ld);
}
inline void lanes_to_rows(const float* src, int64_t ld, int64_t n, int64_t cols, float* dst,
                          int64_t stride) {
  move_rows<false>(dst, stride, n, cols, const_cast<float*>(src), ld);
}

// Gate pre-activations of one unit group over one tile: bias + W . z, z feature-major [width][ld]
// from the tile's first row.
inline void gate_sums(const PackedLayer& p, int64_t grp, const float* z, int64_t ld,
                      vf (&acc)[4][kGateUnits][kTileVecs]) {
  const float* w = p.w.data() + grp * p.width * 4 * kGateUnits;
  const float* b = p.b.data() + grp * 4 * kGateUnits;
  for (int g = 0; g < 4; ++g)
    for (int u = 0; u < kGateUnits; ++u)
      for (int r = 0; r < kTileVecs; ++r) acc[g][u][r] = splat(b[g * kGateUnits + u]);
  for (int64_t k = 0; k < p.width; ++k) {
    vf zk[kTileVecs];
    for (int r = 0; r < kTileVecs; ++r) zk[r] = vload(z + k * ld + r * kLanes);
    const float* wk = w + k * 4 * kGateUnits;
    for (int g = 0; g < 4; ++g)
      for (int u = 0; u < kGateUnits; ++u)
        for (int r = 0; r < kTileVecs; ++r) acc[g][u][r] += wk[g * kGateUnits + u] * zk[r];
  }
}

// Calls cell(at, i, f, g, o) for every unit and vector of one tile with that unit's activated
// gates, computed from z (feature-major, leading dimension ld); `at`: the vector's offset in a
// feature-major [H][ld] buffer.
template <typename Cell>
inline void each_gate_vector(const PackedLayer& p, int64_t hidden, const float* z, int64_t ld,
                             Cell&& cell) {
  for (int64_t grp = 0; grp < p.groups; ++grp) {
    vf acc[4][kGateUnits][kTileVecs];
    gate_sums(p, grp, z, ld, acc);
    for (int u = 0; u < kGateUnits && grp * kGateUnits + u < hidden; ++u) {
      const int64_t unit = grp * kGateUnits + u;
      for (int r = 0; r < kTileVecs; ++r)
        cell(unit * ld + r * kLanes, vsigmoid(acc[0][u][r]), vsigmoid(acc[1][u][r]),
             vtanh(acc[2][u][r]), vsigmoid(acc[3][u][r]));
    }
  }
}

// One layer's cell over one tile (buffers feature-major, leading dimension ld): c [H] holds the
// previous cell state and receives the new one, h [H] receives the output.
inline void layer_tile_forward(const PackedLayer& p, int64_t hidden, const float* z, float* c,
                               float* h, int64_t ld) {
  each_gate_vector(p, hidden, z, ld, [&](int64_t at, vf i, vf f, vf g, vf o) {
    const vf cn = f * vload(c + at) + i * g;
    vstore(c + at, cn);
    vstore(h + at, o * vtanh(cn));
  });
}

// One layer's cell backward over one tile, the gates recomputed from z: reads the carries dh, dc
// [H] (dc receives d c_prev) and c_prev [H]; writes d pre-activations dp [4H] (gate-major).
inline void layer_tile_backward(const PackedLayer& p, int64_t hidden, const float* z,
                                const float* cp, const float* dh, float* dc, float* dp,
                                int64_t ld) {
  each_gate_vector(p, hidden, z, ld, [&](int64_t at, vf i, vf f, vf g, vf o) {
    const vf c_prev = vload(cp + at);
    const vf tc = vtanh(f * c_prev + i * g);
    const vf dhk = vload(dh + at);
    const vf dck = dhk * o * (1.0f - tc * tc) + vload(dc + at);
    vstore(dp + at, dck * g * i * (1.0f - i));
    vstore(dp + hidden * ld + at, dck * c_prev * f * (1.0f - f));
    vstore(dp + 2 * hidden * ld + at, dck * i * (1.0f - g * g));
    vstore(dp + 3 * hidden * ld + at, dhk * tc * o * (1.0f - o));
    vstore(dc + at, dck * f);
  });
}

// acc[k][j] += sum over vectors v of a[k][v] * b[j][v] for rows k0..k0+TK of a [K][ld] and all
// of b [J][ld] (J a multiple of kOuterJ), acc [K][J][kLanes]: the weight gradient, lane by lane.
template <int TK>
inline void outer_rows(const float* a, const float* b, int64_t k0, int64_t J, int64_t vecs,
                       int64_t ld, float* acc) {
  for (int64_t j0 = 0; j0 < J; j0 += kOuterJ) {
    vf s[TK][kOuterJ];
    for (int k = 0; k < TK; ++k)
      for (int j = 0; j < kOuterJ; ++j) s[k][j] = vload(acc + ((k0 + k) * J + j0 + j) * kLanes);
    for (int64_t v = 0; v < vecs; ++v) {
      vf av[TK], bv[kOuterJ];
      for (int k = 0; k < TK; ++k) av[k] = vload(a + (k0 + k) * ld + v * kLanes);
      for (int j = 0; j < kOuterJ; ++j) bv[j] = vload(b + (j0 + j) * ld + v * kLanes);
      for (int k = 0; k < TK; ++k)
        for (int j = 0; j < kOuterJ; ++j) s[k][j] += av[k] * bv[j];
    }
    for (int k = 0; k < TK; ++k)
      for (int j = 0; j < kOuterJ; ++j) vstore(acc + ((k0 + k) * J + j0 + j) * kLanes, s[k][j]);
  }
}

inline void outer_accumulate(const float* a, int64_t K, const float* b, int64_t J, int64_t vecs,
                      int64_t ld, float* acc) {
  int64_t k = 0;
  for (; k + kOuterK <= K; k += kOuterK) outer_rows<kOuterK>(a, b, k, J, vecs, ld, acc);
  for (; k < K; ++k) outer_rows<1>(a, b, k, J, vecs, ld, acc);
}

// out[k][v] (Add: +=, else =) sum over j of w[k][j] * dp[j][v] for rows k0..k0+TK of w (row
// stride J) and vectors v0..v0+kDzVecs: the gradient of a layer's inputs, feature-major.
template <int TK, bool Add>
inline void dz_rows(const float* w, int64_t J, const float* dp, int64_t k0, int64_t vecs,
                    int64_t ld, float* out) {
  for (int64_t v0 = 0; v0 < vecs; v0 += kDzVecs) {
    vf s[TK][kDzVecs];
    for (int k = 0; k < TK; ++k)
      for (int v = 0; v < kDzVecs; ++v) s[k][v] = vf{};
    for (int64_t j = 0; j < J; ++j) {
      vf d[kDzVecs];
      for (int v = 0; v < kDzVecs; ++v) d[v] = vload(dp + j * ld + (v0 + v) * kLanes);
      for (int k = 0; k < TK; ++k) {
        const float wk = w[(k0 + k) * J + j];
        for (int v = 0; v < kDzVecs; ++v) s[k][v] += wk * d[v];
      }
    }
    for (int k = 0; k < TK; ++k)
      for (int v = 0; v < kDzVecs; ++v) {
        float* o = out + (k0 + k) * ld + (v0 + v) * kLanes;
        vstore(o, Add ? vload(o) + s[k][v] : s[k][v]);
      }
  }
}

template <bool Add>
inline void input_gradient(const float* w, int64_t J, const float* dp, int64_t K, int64_t vecs,
                    int64_t ld, float* out) {
  int64_t k = 0;
  for (; k + kDzK <= K; k += kDzK) dz_rows<kDzK, Add>(w, J, dp, k, vecs, ld, out);
  for (; k < K; ++k) dz_rows<1, Add>(w, J, dp, k, vecs, ld, out);
}


// One forward step over all rows: row-major states [L][rows][H] (layer strides in floats; the
// outputs may be the inputs), x [rows][F], out [rows] (= or += head_b + head_w . h_top).
struct StepRows {
  const float* x;
  const float *h_in, *c_in;
  float *h_out, *c_out;
  int64_t sh_in, sc_in, sh_out, sc_out;
  const float* head_w;
  float head_b;
  float* out;
  bool accumulate;
  int64_t rows, hidden;
};

// Where a forward tile keeps, feature-major with leading dimension kTile, each layer's input
// z = [x or the h below | h_prev], each layer's cell state and the top layer's output.
struct TileLayout {
  std::vector<int64_t> z_at;
  int64_t c_at = 0, top_at = 0, size = 0;
  TileLayout(const std::vector<PackedLayer>& layers, int64_t hidden) {
    for (const PackedLayer& p : layers) {
      z_at.push_back(size);
      size += p.width * kTile;
    }
    c_at = size;
    top_at = c_at + static_cast<int64_t>(layers.size()) * hidden * kTile;
    size = top_at + hidden * kTile;
  }
};

// Rows tile * kTile .. + kTile of one forward step; S: the tile's scratch (TileLayout).
inline void forward_tile(const std::vector<PackedLayer>& layers, const StepRows& a,
                         const TileLayout& at, int64_t tile, float* S) {
  const int64_t num_layers = static_cast<int64_t>(layers.size()), hidden = a.hidden;
  const int64_t f0 = layers[0].in, r0 = tile * kTile, n = std::min(kTile, a.rows - r0);
  if (n < kTile) std::fill(S, S + at.size, 0.0f);  // padded lanes: zeros
  rows_to_lanes(a.x + r0 * f0, f0, n, f0, S + at.z_at[0], kTile);
  for (int64_t l = 0; l < num_layers; ++l) {
    rows_to_lanes(a.h_in + l * a.sh_in + r0 * hidden, hidden, n, hidden,
                  S + at.z_at[l] + layers[l].in * kTile, kTile);
    rows_to_lanes(a.c_in + l * a.sc_in + r0 * hidden, hidden, n, hidden,
                  S + at.c_at + l * hidden * kTile, kTile);
  }
  for (int64_t l = 0; l < num_layers; ++l) {
    float* h = l + 1 < num_layers ? S + at.z_at[l + 1] : S + at.top_at;
    float* c = S + at.c_at + l * hidden * kTile;
    layer_tile_forward(layers[l], hidden, S + at.z_at[l], c, h, kTile);
    lanes_to_rows(h, kTile, n, hidden, a.h_out + l * a.sh_out + r0 * hidden, hidden);
    lanes_to_rows(c, kTile, n, hidden, a.c_out + l * a.sc_out + r0 * hidden, hidden);
  }
  for (int r = 0; r < kTileVecs; ++r) {
    vf s = splat(a.head_b);
    for (int64_t u = 0; u < hidden; ++u)
      s += a.head_w[u] * vload(S + at.top_at + u * kTile + r * kLanes);
    for (int64_t l = 0; l < kLanes && r * kLanes + l < n; ++l) {
      float& o = a.out[r0 + r * kLanes + l];
      o = a.accumulate ? o + s[l] : s[l];
    }
  }
}

// A truncation's tape: xs [T][rows][F], hs, cs [T + 1][L][rows][H] (hs[t] before step t), cot
// [T][rows] the cotangents of the updates; head_w already multiplied by the updates' scale.
struct TapeRows {
  const float *xs, *hs, *cs, *cot, *head_w;
  int64_t steps, rows, hidden;
};

// A backward block's scratch, feature-major with leading dimension kBlockRows: each layer's
// z = [input | h_prev], c_prev, the carries dh and dc; the top layer's output at t + 1, the
// cotangents, the gates' gradient; then its sums lane by lane ([part_size + H + 1][kLanes]:
// each layer's dW, each layer's db, d head_w, d head_b).
struct BlockLayout {
  std::vector<int64_t> z_at, dw_at;
  int64_t cp_at = 0, dh_at = 0, dc_at = 0, top_at = 0, cot_at = 0, dp_at = 0, lanes_at = 0;
  int64_t dw_size = 0, part_size = 0, size = 0;
  BlockLayout(const std::vector<PackedLayer>& layers, int64_t hidden) {
    const int64_t num_layers = static_cast<int64_t>(layers.size());
    const int64_t ld = kBlockRows, state = hidden * ld, gates = 4 * hidden;
    for (const PackedLayer& p : layers) {
      z_at.push_back(size);
      size += p.width * ld;
      dw_at.push_back(dw_size);
      dw_size += p.width * gates;
    }
    part_size = dw_size + num_layers * gates;
    cp_at = size;
    dh_at = cp_at + num_layers * state;
    dc_at = dh_at + num_layers * state;
    top_at = dc_at + num_layers * state;
    cot_at = top_at + state;
    dp_at = cot_at + ld;
    lanes_at = dp_at + gates * ld;
    size = lanes_at + (part_size + hidden + 1) * kLanes;
  }
};

// Back-propagates rows blk * kBlockRows .. + kBlockRows through the whole truncation; writes
// the block's sums into part [part_size] and head [H + 1]. S: the block's scratch (BlockLayout).
inline void backward_block(const std::vector<PackedLayer>& layers, const TapeRows& a,
                           const BlockLayout& at, int64_t blk, float* S, float* part,
                           double* head) {
  const int64_t num_layers = static_cast<int64_t>(layers.size()), hidden = a.hidden;
  const int64_t f0 = layers[0].in, gates = 4 * hidden, ld = kBlockRows, state = hidden * ld;
  const int64_t layer_rows = a.rows * hidden, step_rows = num_layers * layer_rows;
  std::fill(S, S + at.size, 0.0f);  // padded lanes: zeros; sums: from zero
  float* dp = S + at.dp_at;
  float* top = S + at.top_at;
  float* lanes = S + at.lanes_at;
  float* head_lanes = lanes + at.part_size * kLanes;
  const int64_t r0 = blk * kBlockRows, n = std::min(kBlockRows, a.rows - r0);
  const int64_t cols = (n + kColUnit - 1) / kColUnit * kColUnit, vecs = cols / kLanes;
  auto h_slot = [&](int64_t l) { return S + at.z_at[l] + layers[l].in * ld; };
  for (int64_t l = 0; l < num_layers; ++l)  // as if step T had just been processed
    rows_to_lanes(a.hs + a.steps * step_rows + l * layer_rows + r0 * hidden, hidden, n, hidden,
                  h_slot(l), ld);
  for (int64_t t = a.steps - 1; t >= 0; --t) {
    // the slots hold hs[t + 1]: each layer's moves to the input slot above (the top's to
    // `top`), then hs[t] fills them
    for (int64_t l = 0; l < num_layers; ++l) {
      float* above = l + 1 < num_layers ? S + at.z_at[l + 1] : top;
      std::memcpy(above, h_slot(l), state * sizeof(float));
      rows_to_lanes(a.hs + t * step_rows + l * layer_rows + r0 * hidden, hidden, n, hidden,
                    h_slot(l), ld);
      rows_to_lanes(a.cs + t * step_rows + l * layer_rows + r0 * hidden, hidden, n, hidden,
                    S + at.cp_at + l * state, ld);
    }
    rows_to_lanes(a.xs + (t * a.rows + r0) * f0, f0, n, f0, S + at.z_at[0], ld);
    std::memcpy(S + at.cot_at, a.cot + t * a.rows + r0, n * sizeof(float));
    // the head: u = scale * (head_w . h_top + head_b), h_top = hs[t + 1][L - 1]
    float* dtop = S + at.dh_at + (num_layers - 1) * state;
    for (int64_t v = 0; v < vecs; ++v) {
      const vf cv = vload(S + at.cot_at + v * kLanes);
      vstore(head_lanes + hidden * kLanes, vload(head_lanes + hidden * kLanes) + cv);
      for (int64_t u = 0; u < hidden; ++u) {
        const int64_t o = u * ld + v * kLanes;
        vstore(dtop + o, vload(dtop + o) + cv * a.head_w[u]);
        vstore(head_lanes + u * kLanes, vload(head_lanes + u * kLanes) + cv * vload(top + o));
      }
    }
    for (int64_t l = num_layers - 1; l >= 0; --l) {
      const PackedLayer& p = layers[l];
      const float* z = S + at.z_at[l];
      float* dh = S + at.dh_at + l * state;
      for (int64_t j0 = 0; j0 < cols; j0 += kTile)
        layer_tile_backward(p, hidden, z + j0, S + at.cp_at + l * state + j0, dh + j0,
                            S + at.dc_at + l * state + j0, dp + j0, ld);
      float* db = lanes + (at.dw_size + l * gates) * kLanes;
      for (int64_t j = 0; j < gates; ++j) {
        vf s = vload(db + j * kLanes);
        for (int64_t v = 0; v < vecs; ++v) s += vload(dp + j * ld + v * kLanes);
        vstore(db + j * kLanes, s);
      }
      outer_accumulate(z, p.width, dp, gates, vecs, ld, lanes + at.dw_at[l] * kLanes);
      if (l > 0)  // the layer below's output: its carry for this step
        input_gradient<true>(p.wt, gates, dp, p.in, vecs, ld, dh - state);
      // the recurrent input: this layer's carry for the step before
      input_gradient<false>(p.wt + p.in * gates, gates, dp, hidden, vecs, ld, dh);
    }
  }
  for (int64_t k = 0; k < at.part_size; ++k) {
    float s = 0.0f;
    for (int64_t l = 0; l < kLanes; ++l) s += lanes[k * kLanes + l];
    part[k] = s;
  }
  for (int64_t k = 0; k <= hidden; ++k)
    for (int64_t l = 0; l < kLanes; ++l) head[k] += head_lanes[k * kLanes + l];
}

}  // namespace l2o_lstm
