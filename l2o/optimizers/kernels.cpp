// CPU kernels of the learned optimizers (float32): the elementwise parts of an LSTM cell over
// many independent rows, forward and backward, each one pass over memory; and the MLP
// optimizer's whole deployment step (the LSTM's tape kernels: lstm_tape.cpp). Built and loaded
// by l2o/optimizers/native (on first use, or `python -m l2o.optimizers.native build`); without a
// compiler the same math runs as PyTorch ops. Compiled WITHOUT -ffast-math: a NaN or infinity in
// the inputs reaches the outputs as it does in PyTorch, so every clamp below lets a NaN through.
//
// Layout: pre-activations [M, 4H] in gate order i, f, g, o (as torch.nn.LSTM); states [M, H].
#include <torch/extension.h>

#include <cmath>
#include <cstring>

#include "fast_exp.h"
#include "kernels.h"

using l2o_kernels::check;
using l2o_kernels::parallel_claim;

namespace {

// Clamps x to [lo, hi] and keeps a NaN a NaN (std::fmin/fmax would return the bound).
inline float clamp_keep_nan(float x, float lo, float hi) {
  x = x < lo ? lo : x;
  return x > hi ? hi : x;
}

// exp(x) for x in [-87, 88] (fast_exp.h) and a bit shift, so loops over it vectorize. Arguments are clamped, so exp(±inf) is finite and
// the sigmoid/tanh below saturate as PyTorch's do; a NaN argument gives NaN.
inline float fast_exp(float x) {
  x = clamp_keep_nan(x, -87.0f, 88.0f);
  const float k = std::floor(x * 1.44269504088896341f + 0.5f);
  const float p = l2o_exp::exp_mantissa(x, k);
  const float kk = k == k ? k : 0.0f;  // NaN: p is NaN already; keep the int conversion defined
  const int32_t bits = (static_cast<int32_t>(kk) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  return p * scale;
}

inline float sigmoid(float x) { return 1.0f / (1.0f + fast_exp(-x)); }

// tanh(x) = 2 sigmoid(2x) - 1: one exp, vectorizes like the sigmoid.
inline float tanh_fast(float x) { return 2.0f / (1.0f + fast_exp(-2.0f * x)) - 1.0f; }

constexpr int64_t kGrain = 512;  // rows per parallel task
constexpr int64_t kBlock = 16;   // rows per vector block: the gates are gathered to be contiguous

// Copies gate `gate` of rows [0, n) of P ([n, 4H]) into dst (n * hidden contiguous floats), or
// back (Scatter).
template <bool Scatter>
inline void move_gate(float* P, int64_t n, int64_t hidden, int64_t gate, float* buf) {
  for (int64_t r = 0; r < n; ++r) {
    float* row = P + r * 4 * hidden + gate * hidden;
    float* b = buf + r * hidden;
    for (int64_t u = 0; u < hidden; ++u) {
      if (Scatter) row[u] = b[u]; else b[u] = row[u];
    }
  }
}

// Forward cell over n rows: P [n, 4H] pre-activations, CP [n, H] previous cell state; writes
// H_out, C_out [n, H] (C_out may be CP itself). scratch: 4 * kBlock * H floats.
void cell_forward_rows(const float* P, const float* CP, float* H_out, float* C_out, int64_t n,
                       int64_t hidden, float* scratch) {
  const int64_t stride = kBlock * hidden;
  float *bi = scratch, *bf = bi + stride, *bg = bf + stride, *bo = bg + stride;
  for (int64_t r0 = 0; r0 < n; r0 += kBlock) {
    const int64_t m = std::min(kBlock, n - r0);
    float* p = const_cast<float*>(P) + r0 * 4 * hidden;
    float* gates[4] = {bi, bf, bg, bo};
    for (int64_t gate = 0; gate < 4; ++gate) move_gate<false>(p, m, hidden, gate, gates[gate]);
    const float* cp = CP + r0 * hidden;
    float* hr = H_out + r0 * hidden;
    float* cr = C_out + r0 * hidden;
    const int64_t len = m * hidden;
#pragma omp simd
    for (int64_t k = 0; k < len; ++k) {
      const float cn = sigmoid(bf[k]) * cp[k] + sigmoid(bi[k]) * tanh_fast(bg[k]);
      cr[k] = cn;
      hr[k] = sigmoid(bo[k]) * tanh_fast(cn);
    }
  }
}

// Backward cell over n rows, recomputing the gates from P: writes DP [n, 4H] (gradient of the
// pre-activations) and DCP [n, H] (of the previous cell state; may alias DC). scratch: 8 * kBlock
// * H floats.
void cell_backward_rows(const float* P, const float* CP, const float* DH, const float* DC,
                        float* DP, float* DCP, int64_t n, int64_t hidden, float* scratch) {
  const int64_t stride = kBlock * hidden;
  float *bi = scratch, *bf = bi + stride, *bg = bf + stride, *bo = bg + stride;
  float *di = bo + stride, *df = di + stride, *dg = df + stride, *dO = dg + stride;
  for (int64_t r0 = 0; r0 < n; r0 += kBlock) {
    const int64_t m = std::min(kBlock, n - r0);
    float* p = const_cast<float*>(P) + r0 * 4 * hidden;
    float* gates[4] = {bi, bf, bg, bo};
    for (int64_t gate = 0; gate < 4; ++gate) move_gate<false>(p, m, hidden, gate, gates[gate]);
    const float* cp = CP + r0 * hidden;
    const float* dhr = DH + r0 * hidden;
    const float* dcr = DC + r0 * hidden;
    float* dcp = DCP + r0 * hidden;
    const int64_t len = m * hidden;
#pragma omp simd
    for (int64_t k = 0; k < len; ++k) {
      const float i = sigmoid(bi[k]);
      const float f = sigmoid(bf[k]);
      const float g = tanh_fast(bg[k]);
      const float o = sigmoid(bo[k]);
      const float tc = tanh_fast(f * cp[k] + i * g);
      const float dhk = dhr[k];
      const float dck = dhk * o * (1.0f - tc * tc) + dcr[k];
      di[k] = dck * g * i * (1.0f - i);
      df[k] = dck * cp[k] * f * (1.0f - f);
      dg[k] = dck * i * (1.0f - g * g);
      dO[k] = dhk * tc * o * (1.0f - o);
      dcp[k] = dck * f;
    }
    float* dp = DP + r0 * 4 * hidden;
    float* dgates[4] = {di, df, dg, dO};
    for (int64_t gate = 0; gate < 4; ++gate) move_gate<true>(dp, m, hidden, gate, dgates[gate]);
  }
}

}  // namespace

// Writes h and c of one cell into h_out, c_out (c_out may be c_prev itself: in place).
void cell_forward_into(const at::Tensor& pre, const at::Tensor& c_prev, at::Tensor& h,
                       at::Tensor& c) {
  const int64_t rows = pre.size(0), hidden = c_prev.size(1);
  check(pre, "pre", rows, 4 * hidden);
  check(c_prev, "c_prev", rows, hidden);
  check(h, "h_out", rows, hidden);
  check(c, "c_out", rows, hidden);
  const float* P = pre.data_ptr<float>();
  const float* CP = c_prev.data_ptr<float>();
  float* Hout = h.data_ptr<float>();
  float* Cout = c.data_ptr<float>();
  at::parallel_for(0, rows, kGrain, [&](int64_t begin, int64_t end) {
    std::vector<float> scratch(4 * kBlock * hidden);
    cell_forward_rows(P + begin * 4 * hidden, CP + begin * hidden, Hout + begin * hidden,
                      Cout + begin * hidden, end - begin, hidden, scratch.data());
  });
}

// (h, c) of one cell from its pre-activations and the previous cell state.
std::vector<at::Tensor> cell_forward(const at::Tensor& pre, const at::Tensor& c_prev) {
  auto h = at::empty_like(c_prev);
  auto c = at::empty_like(c_prev);
  cell_forward_into(pre, c_prev, h, c);
  return {h, c};
}

// Gradients of the pre-activations and of c_prev, recomputing the gates from pre.
std::vector<at::Tensor> cell_backward(const at::Tensor& pre, const at::Tensor& c_prev,
                                      const at::Tensor& dh, const at::Tensor& dc) {
  const int64_t rows = pre.size(0), hidden = c_prev.size(1);
  check(pre, "pre", rows, 4 * hidden);
  check(c_prev, "c_prev", rows, hidden);
  check(dh, "dh", rows, hidden);
  check(dc, "dc", rows, hidden);
  auto dpre = at::empty_like(pre);
  auto dc_prev = at::empty_like(c_prev);
  const float* P = pre.data_ptr<float>();
  const float* CP = c_prev.data_ptr<float>();
  const float* DH = dh.data_ptr<float>();
  const float* DC = dc.data_ptr<float>();
  float* DP = dpre.data_ptr<float>();
  float* DCP = dc_prev.data_ptr<float>();
  at::parallel_for(0, rows, kGrain, [&](int64_t begin, int64_t end) {
    std::vector<float> scratch(8 * kBlock * hidden);
    cell_backward_rows(P + begin * 4 * hidden, CP + begin * hidden, DH + begin * hidden,
                       DC + begin * hidden, DP + begin * 4 * hidden, DCP + begin * hidden,
                       end - begin, hidden, scratch.data());
  });
  return {dpre, dc_prev};
}

// The layers of an MLP optimizer as raw pointers: weights [out, in] row-major, biases [out].
struct MlpLayers {
  std::vector<const float*> w, b;
  std::vector<int64_t> outs, ins;
  int64_t widest = 0;
};

// Checks the host tensors of the layers and collects their shapes (the pointers are set by the
// caller: per tensor, or per particle and segment).
MlpLayers mlp_layer_shapes(const std::vector<at::Tensor>& weights,
                           const std::vector<at::Tensor>& biases, int64_t f0, int64_t lead) {
  TORCH_CHECK(weights.size() == biases.size() && !weights.empty(), "bad layers");
  MlpLayers layers;
  layers.widest = f0;
  for (size_t k = 0; k < weights.size(); ++k) {
    TORCH_CHECK(weights[k].is_contiguous() && biases[k].is_contiguous(),
                "layer tensors must be contiguous");
    TORCH_CHECK(weights[k].dim() == 2 + lead && biases[k].dim() == 1 + lead, "bad layer rank");
    layers.outs.push_back(weights[k].size(lead));
    layers.ins.push_back(weights[k].size(lead + 1));
    TORCH_CHECK(biases[k].size(lead) == layers.outs.back(), "bias and weight disagree");
    TORCH_CHECK(k == 0 || layers.ins[k] == layers.outs[k - 1], "layer widths do not chain");
    layers.widest = std::max(layers.widest, layers.outs.back());
  }
  TORCH_CHECK(layers.ins[0] == f0, "first layer expects ", f0, " features");
  TORCH_CHECK(layers.outs.back() == 2, "last layer must have 2 outputs");
  layers.w.resize(weights.size());
  layers.b.resize(weights.size());
  return layers;
}

constexpr int64_t MLP_BLOCK = 16;  // coordinates per vectorized block

// Outputs j..j+R-1 of a dense layer (weights W [out, in], bias B) over one block of MLP_BLOCK
// coordinates, inputs feature-major (x[i * MLP_BLOCK + l]); R outputs at once keep their sums in
// registers while each input row is loaded once. ReLU(NaN) stays NaN.
template <int R>
inline void dense_outputs(const float* W, const float* B, int64_t j, int64_t n_in,
                          const float* x, float* out, bool relu) {
  constexpr int64_t L = MLP_BLOCK;
  float o[R][L];
  for (int r = 0; r < R; ++r) {
#pragma omp simd
    for (int64_t l = 0; l < L; ++l) o[r][l] = B[j + r];
  }
  for (int64_t i = 0; i < n_in; ++i) {
    const float* xi = x + i * L;
    for (int r = 0; r < R; ++r) {
      const float w = W[(j + r) * n_in + i];
#pragma omp simd
      for (int64_t l = 0; l < L; ++l) o[r][l] += w * xi[l];
    }
  }
  for (int r = 0; r < R; ++r) {
    float* dst = out + (j + r) * L;
    if (relu) {
#pragma omp simd
      for (int64_t l = 0; l < L; ++l) dst[l] = o[r][l] < 0.0f ? 0.0f : o[r][l];
    } else {
#pragma omp simd
      for (int64_t l = 0; l < L; ++l) dst[l] = o[r][l];
    }
  }
}

// One block of up to MLP_BLOCK coordinates c0..c0+cnt of a flat tensor (P, G, V [n], M [n, d]):
// the raw features (g, p, m_1..m_D, v, m_i / sqrt(v + 1e-8), 1 / sqrt(v + 1e-8)), the MLP (ReLU
// between layers; the first layer's weights already carry the feature normalization and its
// bias the time features), and p += step_mult * d * exp(exp_mult * mag). a, b: scratch of
// widest * MLP_BLOCK floats.
inline void mlp_block(float* P, const float* G, const float* M, const float* V, int64_t c0,
                      int64_t cnt, int64_t d, const MlpLayers& layers, float sm, float em,
                      float* a, float* b) {
  constexpr int64_t L = MLP_BLOCK;
  float* x = a;
  if (cnt == L) {
#pragma omp simd
    for (int64_t l = 0; l < L; ++l) {
      const float vv = V[c0 + l];
      x[0 * L + l] = G[c0 + l];
      x[1 * L + l] = P[c0 + l];
      x[(2 + d) * L + l] = vv;
      x[(3 + 2 * d) * L + l] = 1.0f / std::sqrt(vv + 1e-8f);
    }
    for (int64_t i = 0; i < d; ++i) {
#pragma omp simd
      for (int64_t l = 0; l < L; ++l) {
        const float mi = M[(c0 + l) * d + i];
        x[(2 + i) * L + l] = mi;
        x[(3 + d + i) * L + l] = mi * x[(3 + 2 * d) * L + l];
      }
    }
  } else {
    for (int64_t l = 0; l < L; ++l) {
      const int64_t c = c0 + std::min(l, cnt - 1);  // the tail repeats the last coordinate
      const float vv = V[c], rs = 1.0f / std::sqrt(vv + 1e-8f);
      x[0 * L + l] = G[c];
      x[1 * L + l] = P[c];
      for (int64_t i = 0; i < d; ++i) {
        x[(2 + i) * L + l] = M[c * d + i];
        x[(3 + d + i) * L + l] = M[c * d + i] * rs;
      }
      x[(2 + d) * L + l] = vv;
      x[(3 + 2 * d) * L + l] = rs;
    }
  }
  float* in = a;
  float* out = b;
  const size_t num_layers = layers.w.size();
  for (size_t k = 0; k < num_layers; ++k) {
    const int64_t n_out = layers.outs[k], n_in = layers.ins[k];
    const bool relu = k + 1 < num_layers;
    int64_t j = 0;
    for (; j + 4 <= n_out; j += 4) dense_outputs<4>(layers.w[k], layers.b[k], j, n_in, in, out, relu);
    for (; j < n_out; ++j) dense_outputs<1>(layers.w[k], layers.b[k], j, n_in, in, out, relu);
    std::swap(in, out);
  }
  float upd[L];
#pragma omp simd
  for (int64_t l = 0; l < L; ++l) {
    const float mag = clamp_keep_nan(em * in[L + l], -80.0f, 80.0f);
    upd[l] = sm * in[l] * fast_exp(mag);
  }
  for (int64_t l = 0; l < cnt; ++l) P[c0 + l] += upd[l];
}

// Deployment step of the MLP optimizer for one tensor, in place on param (see mlp_block).
void mlp_update_(at::Tensor& param, const at::Tensor& grad, const at::Tensor& m,
                 const at::Tensor& v, const std::vector<at::Tensor>& weights,
                 const std::vector<at::Tensor>& biases, double step_mult, double exp_mult) {
  constexpr int64_t L = MLP_BLOCK;
  const int64_t n = param.numel(), d = m.size(1), f0 = 2 * d + 4;
  check(m, "m", n, d);
  TORCH_CHECK(param.is_contiguous() && grad.is_contiguous() && v.is_contiguous(),
              "param, grad, v must be contiguous");
  std::vector<at::Tensor> ws, bs;
  for (size_t k = 0; k < weights.size(); ++k) {
    ws.push_back(weights[k].contiguous());
    bs.push_back(biases[k].contiguous());
  }
  MlpLayers layers = mlp_layer_shapes(ws, bs, f0, 0);
  for (size_t k = 0; k < ws.size(); ++k) {
    layers.w[k] = ws[k].data_ptr<float>();
    layers.b[k] = bs[k].data_ptr<float>();
  }
  float* P = param.data_ptr<float>();
  const float* G = grad.data_ptr<float>();
  const float* M = m.data_ptr<float>();
  const float* V = v.data_ptr<float>();
  const float sm = static_cast<float>(step_mult), em = static_cast<float>(exp_mult);
  at::parallel_for(0, (n + L - 1) / L, 64, [&](int64_t begin, int64_t end) {
    std::vector<float> a(layers.widest * L), b(layers.widest * L);
    for (int64_t blk = begin; blk < end; ++blk) {
      const int64_t c0 = blk * L;
      mlp_block(P, G, M, V, c0, std::min(L, n - c0), d, layers, sm, em, a.data(), b.data());
    }
  });
}

// Advances the accumulators of rows lo..hi in place (m_i <- b_i m_i + (1 - b_i) g,
// v <- b v + (1 - b) g^2) and adds each raw feature squared, summed over the rows, to acc [2D + 4].
inline void accumulate_rows(const float* P, const float* G, float* M, float* V, int64_t lo,
                            int64_t hi, int64_t d, const std::vector<float>& bd, float rb,
                            double* acc) {
  float sg = 0, sp = 0, sv = 0, srs = 0;
  std::vector<float> sm(d, 0.0f), smr(d, 0.0f);
  for (int64_t c = lo; c < hi; ++c) {
    const float g = G[c], p = P[c];
    const float vv = rb * V[c] + (1.0f - rb) * g * g;
    V[c] = vv;
    const float inv = 1.0f / (vv + 1e-8f);
    sg += g * g;
    sp += p * p;
    sv += vv * vv;
    srs += inv;
    for (int64_t i = 0; i < d; ++i) {
      const float mi = bd[i] * M[c * d + i] + (1.0f - bd[i]) * g;
      M[c * d + i] = mi;
      sm[i] += mi * mi;
      smr[i] += mi * mi * inv;
    }
  }
  acc[0] += sg;
  acc[1] += sp;
  for (int64_t i = 0; i < d; ++i) {
    acc[2 + i] += sm[i];
    acc[3 + d + i] += smr[i];
  }
  acc[2 + d] += sv;
  acc[3 + 2 * d] += srs;
}

// First pass of the MLP optimizer's deployment step for one tensor: advances the accumulators
// in place and returns the sum over the tensor of each raw feature squared ([2D + 4], accumulated
// in double).
at::Tensor mlp_accumulate_(const at::Tensor& param, const at::Tensor& grad, at::Tensor& m,
                           at::Tensor& v, const std::vector<double>& decays, double rms_decay) {
  const int64_t n = param.numel(), d = m.size(1), f0 = 2 * d + 4;
  check(m, "m", n, d);
  TORCH_CHECK(static_cast<int64_t>(decays.size()) == d, "one decay per momentum");
  TORCH_CHECK(param.is_contiguous() && grad.is_contiguous() && v.is_contiguous(),
              "param, grad, v must be contiguous");
  const float* P = param.data_ptr<float>();
  const float* G = grad.data_ptr<float>();
  float* M = m.data_ptr<float>();
  float* V = v.data_ptr<float>();
  std::vector<float> bd(decays.begin(), decays.end());
  const float rb = static_cast<float>(rms_decay);
  const int64_t chunks = std::max<int64_t>(1, std::min<int64_t>(64, n / 4096));
  std::vector<double> partial(chunks * f0, 0.0);
  parallel_claim(chunks, [&] {
    return [&](int64_t ch) {
      const int64_t lo = n * ch / chunks, hi = n * (ch + 1) / chunks;
      accumulate_rows(P, G, M, V, lo, hi, d, bd, rb, partial.data() + ch * f0);
    };
  });
  auto out = at::zeros({f0}, at::kDouble);
  double* O = out.data_ptr<double>();
  for (int64_t ch = 0; ch < chunks; ++ch)
    for (int64_t k = 0; k < f0; ++k) O[k] += partial[ch * f0 + k];
  return out.to(at::kFloat);
}

// A span of rows of one particle inside one segment (a tensor of the optimizee).
struct ParticleSpan {
  int64_t particle, segment, lo, hi;
};

// Spans of at most `rows` rows covering every segment (offsets [S + 1]) of every particle.
std::vector<ParticleSpan> particle_spans(int64_t particles, const std::vector<int64_t>& offsets,
                                         int64_t rows) {
  std::vector<ParticleSpan> spans;
  for (int64_t p = 0; p < particles; ++p)
    for (size_t s = 0; s + 1 < offsets.size(); ++s)
      for (int64_t lo = offsets[s]; lo < offsets[s + 1]; lo += rows)
        spans.push_back({p, static_cast<int64_t>(s), lo, std::min(lo + rows, offsets[s + 1])});
  return spans;
}

void check_particles(const at::Tensor& params, const at::Tensor& grads, const at::Tensor& m,
                     const at::Tensor& v, const std::vector<int64_t>& offsets) {
  TORCH_CHECK(params.dim() == 2 && grads.sizes() == params.sizes() && v.sizes() == params.sizes(),
              "params, grads, v must be [P, N]");
  TORCH_CHECK(m.dim() == 3 && m.size(0) == params.size(0) && m.size(1) == params.size(1),
              "m must be [P, N, D]");
  TORCH_CHECK(params.is_contiguous() && grads.is_contiguous() && v.is_contiguous() &&
                  m.is_contiguous(),
              "params, grads, m, v must be contiguous");
  TORCH_CHECK(params.scalar_type() == at::kFloat && m.scalar_type() == at::kFloat &&
                  v.scalar_type() == at::kFloat && grads.scalar_type() == at::kFloat,
              "float32 only");
  TORCH_CHECK(offsets.size() >= 2 && offsets.front() == 0 && offsets.back() == params.size(1),
              "offsets must run from 0 to N");
  for (size_t s = 0; s + 1 < offsets.size(); ++s)
    TORCH_CHECK(offsets[s] < offsets[s + 1], "segments must be non-empty and ordered");
}

// mlp_accumulate_ for P particles at once (params [P, N], m [P, N, D]), per segment: returns
// [P, S, 2D + 4] sums of the raw features squared (double).
at::Tensor mlp_particles_accumulate_(const at::Tensor& params, const at::Tensor& grads,
                                     at::Tensor& m, at::Tensor& v,
                                     const std::vector<double>& decays, double rms_decay,
                                     const std::vector<int64_t>& offsets) {
  check_particles(params, grads, m, v, offsets);
  const int64_t P = params.size(0), n = params.size(1), d = m.size(2), f0 = 2 * d + 4;
  const int64_t S = static_cast<int64_t>(offsets.size()) - 1;
  TORCH_CHECK(static_cast<int64_t>(decays.size()) == d, "one decay per momentum");
  std::vector<float> bd(decays.begin(), decays.end());
  const float rb = static_cast<float>(rms_decay);
  const auto spans = particle_spans(P, offsets, 4096);
  std::vector<double> partial(spans.size() * f0, 0.0);
  const float* PP = params.data_ptr<float>();
  const float* GG = grads.data_ptr<float>();
  float* MM = m.data_ptr<float>();
  float* VV = v.data_ptr<float>();
  parallel_claim(static_cast<int64_t>(spans.size()), [&] {
    return [&](int64_t u) {
      const auto& sp = spans[u];
      const int64_t row = sp.particle * n;
      accumulate_rows(PP + row, GG + row, MM + row * d, VV + row, sp.lo, sp.hi, d, bd, rb,
                      partial.data() + u * f0);
    };
  });
  auto out = at::zeros({P, S, f0}, at::kDouble);
  double* O = out.data_ptr<double>();
  for (size_t u = 0; u < spans.size(); ++u) {
    double* o = O + (spans[u].particle * S + spans[u].segment) * f0;
    for (int64_t k = 0; k < f0; ++k) o[k] += partial[u * f0 + k];
  }
  return out;
}

// mlp_update_ for P particles at once, each with its own weights: first layer w1 [P, S, H, F0]
// (the normalization of particle p's segment s folded in) and b1 [P, H] (its time features
// folded in), then the other layers [P, out, in] and [P, out].
void mlp_particles_update_(at::Tensor& params, const at::Tensor& grads, const at::Tensor& m,
                           const at::Tensor& v, const at::Tensor& w1, const at::Tensor& b1,
                           const std::vector<at::Tensor>& weights,
                           const std::vector<at::Tensor>& biases,
                           const std::vector<int64_t>& offsets, double step_mult,
                           double exp_mult) {
  constexpr int64_t L = MLP_BLOCK;
  check_particles(params, grads, m, v, offsets);
  const int64_t P = params.size(0), n = params.size(1), d = m.size(2), f0 = 2 * d + 4;
  const int64_t S = static_cast<int64_t>(offsets.size()) - 1;
  TORCH_CHECK(w1.dim() == 4 && w1.size(0) == P && w1.size(1) == S && w1.is_contiguous(),
              "w1 must be a contiguous [P, S, H, F0]");
  std::vector<at::Tensor> ws{w1.select(1, 0).contiguous()}, bs{b1};
  ws.insert(ws.end(), weights.begin(), weights.end());
  bs.insert(bs.end(), biases.begin(), biases.end());
  const MlpLayers shapes = mlp_layer_shapes(ws, bs, f0, 1);
  for (size_t k = 1; k < ws.size(); ++k)
    TORCH_CHECK(ws[k].size(0) == P && bs[k].size(0) == P, "one set of weights per particle");
  TORCH_CHECK(b1.size(0) == P, "one set of weights per particle");
  const auto spans = particle_spans(P, offsets, 64 * L);
  const float sm = static_cast<float>(step_mult), em = static_cast<float>(exp_mult);
  float* PP = params.data_ptr<float>();
  const float* GG = grads.data_ptr<float>();
  const float* MM = m.data_ptr<float>();
  const float* VV = v.data_ptr<float>();
  const float* W1 = w1.data_ptr<float>();
  const int64_t w1_size = shapes.outs[0] * f0;
  parallel_claim(static_cast<int64_t>(spans.size()), [&] {
    return [&, a = std::vector<float>(shapes.widest * L), b = std::vector<float>(shapes.widest * L),
            layers = shapes](int64_t u) mutable {
      const auto& sp = spans[u];
      const int64_t p = sp.particle, row = p * n;
      layers.w[0] = W1 + (p * S + sp.segment) * w1_size;
      for (size_t k = 0; k < ws.size(); ++k) {
        if (k > 0) layers.w[k] = ws[k].data_ptr<float>() + p * shapes.outs[k] * shapes.ins[k];
        layers.b[k] = bs[k].data_ptr<float>() + p * shapes.outs[k];
      }
      for (int64_t c0 = sp.lo; c0 < sp.hi; c0 += L)
        mlp_block(PP + row, GG + row, MM + row * d, VV + row, c0, std::min(L, sp.hi - c0), d,
                  layers, sm, em, a.data(), b.data());
    };
  });
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("mlp_accumulate_", &mlp_accumulate_, "MLP optimizer accumulators and feature moments");
  m.def("mlp_update_", &mlp_update_, "MLP optimizer deployment step (in place)");
  m.def("mlp_particles_accumulate_", &mlp_particles_accumulate_,
        "MLP optimizer accumulators and per-segment feature moments of P particles");
  m.def("mlp_particles_update_", &mlp_particles_update_,
        "MLP optimizer step of P particles, each with its own weights (in place)");
  m.def("cell_forward", &cell_forward, "LSTM cell elementwise forward");
  m.def("cell_forward_into", &cell_forward_into, "LSTM cell elementwise forward, into outputs");
  m.def("cell_backward", &cell_backward, "LSTM cell elementwise backward");
  m.def("lstm_step_forward", &lstm_step_forward, "LSTM step over rows, no graph");
  m.def("lstm_sequence_backward", &lstm_sequence_backward,
        "first-order meta-gradient of an LSTM truncation from its tape");
}
