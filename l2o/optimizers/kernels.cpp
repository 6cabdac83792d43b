// CPU kernels of the learned optimizers (float32): the elementwise parts of an LSTM cell over
// many independent rows, forward and backward, each one pass over memory; and the MLP
// optimizer's whole deployment step. Built on first use by l2o/optimizers/lstm_kernels.py
// (torch.utils.cpp_extension); when no compiler is available the same math runs as PyTorch ops.
//
// Layout: pre-activations [M, 4H] in gate order i, f, g, o (as torch.nn.LSTM); states [M, H].
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

namespace {

// exp(x) for x in [-87, 88] (Cody-Waite reduction and Cephes' degree-6 polynomial, ~2 ulp):
// plain arithmetic and a bit shift, so loops over it vectorize into a few FMAs per value
// (libm's expf is several times slower here). Arguments are clamped, so no infinity arises.
inline float fast_exp(float x) {
  x = std::fmin(std::fmax(x, -87.0f), 88.0f);
  const float k = std::floor(x * 1.44269504088896341f + 0.5f);
  const float r = (x - k * 0.693359375f) + k * 2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const int32_t bits = (static_cast<int32_t>(k) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  return p * scale;
}

inline float sigmoid(float x) { return 1.0f / (1.0f + fast_exp(-x)); }

// tanh(x) = 2 sigmoid(2x) - 1: one exp, vectorizes like the sigmoid.
inline float tanh_fast(float x) { return 2.0f / (1.0f + fast_exp(-2.0f * x)) - 1.0f; }

void check(const at::Tensor& t, const char* name, int64_t rows, int64_t cols) {
  TORCH_CHECK(t.device().is_cpu(), name, " must be on the CPU");
  TORCH_CHECK(t.scalar_type() == at::kFloat, name, " must be float32");
  TORCH_CHECK(t.dim() == 2 && t.size(0) == rows && t.size(1) == cols, name, " has shape ",
              t.sizes(), ", expected [", rows, ", ", cols, "]");
  TORCH_CHECK(t.is_contiguous(), name, " must be contiguous");
}

constexpr int64_t kGrain = 512;  // rows per parallel task
constexpr int64_t kBlock = 16;   // rows per vector block: the gates are gathered to be contiguous

// Copies gate `gate` of rows [r0, r0 + n) into dst (n * hidden contiguous floats).
inline void gather_gate(const float* P, int64_t r0, int64_t n, int64_t hidden, int64_t gate,
                        float* dst) {
  for (int64_t r = 0; r < n; ++r) {
    const float* src = P + (r0 + r) * 4 * hidden + gate * hidden;
    for (int64_t u = 0; u < hidden; ++u) dst[r * hidden + u] = src[u];
  }
}

inline void scatter_gate(float* P, int64_t r0, int64_t n, int64_t hidden, int64_t gate,
                         const float* src) {
  for (int64_t r = 0; r < n; ++r) {
    float* dst = P + (r0 + r) * 4 * hidden + gate * hidden;
    for (int64_t u = 0; u < hidden; ++u) dst[u] = src[r * hidden + u];
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
    std::vector<float> buf(4 * kBlock * hidden);
    float *bi = buf.data(), *bf = bi + kBlock * hidden, *bg = bf + kBlock * hidden,
          *bo = bg + kBlock * hidden;
    for (int64_t r0 = begin; r0 < end; r0 += kBlock) {
      const int64_t n = std::min(kBlock, end - r0);
      gather_gate(P, r0, n, hidden, 0, bi);
      gather_gate(P, r0, n, hidden, 1, bf);
      gather_gate(P, r0, n, hidden, 2, bg);
      gather_gate(P, r0, n, hidden, 3, bo);
      const float* cp = CP + r0 * hidden;
      float* hr = Hout + r0 * hidden;
      float* cr = Cout + r0 * hidden;
      const int64_t len = n * hidden;
#pragma omp simd
      for (int64_t k = 0; k < len; ++k) {
        const float cn = sigmoid(bf[k]) * cp[k] + sigmoid(bi[k]) * tanh_fast(bg[k]);
        cr[k] = cn;
        hr[k] = sigmoid(bo[k]) * tanh_fast(cn);
      }
    }
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
    const int64_t stride = kBlock * hidden;
    std::vector<float> buf(8 * stride);
    float *bi = buf.data(), *bf = bi + stride, *bg = bf + stride, *bo = bg + stride;
    float *di = bo + stride, *df = di + stride, *dg = df + stride, *dO = dg + stride;
    for (int64_t r0 = begin; r0 < end; r0 += kBlock) {
      const int64_t n = std::min(kBlock, end - r0);
      gather_gate(P, r0, n, hidden, 0, bi);
      gather_gate(P, r0, n, hidden, 1, bf);
      gather_gate(P, r0, n, hidden, 2, bg);
      gather_gate(P, r0, n, hidden, 3, bo);
      const float* cp = CP + r0 * hidden;
      const float* dhr = DH + r0 * hidden;
      const float* dcr = DC + r0 * hidden;
      float* dcp = DCP + r0 * hidden;
      const int64_t len = n * hidden;
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
      scatter_gate(DP, r0, n, hidden, 0, di);
      scatter_gate(DP, r0, n, hidden, 1, df);
      scatter_gate(DP, r0, n, hidden, 2, dg);
      scatter_gate(DP, r0, n, hidden, 3, dO);
    }
  });
  return {dpre, dc_prev};
}

// Deployment step of the MLP optimizer for one tensor, in place on param: per coordinate the raw
// features (g, p, m_1..m_D, v, m_i / sqrt(v + 1e-8), 1 / sqrt(v + 1e-8)), the MLP (ReLU between
// layers; the first layer's weights already carry the feature normalization and its bias the time
// features), and p += step_mult * d * exp(exp_mult * mag). Vectorized over 16 coordinates.
void mlp_update_(at::Tensor& param, const at::Tensor& grad, const at::Tensor& m,
                 const at::Tensor& v, const std::vector<at::Tensor>& weights,
                 const std::vector<at::Tensor>& biases, double step_mult, double exp_mult) {
  constexpr int64_t L = 16;
  const int64_t n = param.numel(), d = m.size(1), f0 = 2 * d + 4;
  check(m, "m", n, d);
  TORCH_CHECK(param.is_contiguous() && grad.is_contiguous() && v.is_contiguous(),
              "param, grad, v must be contiguous");
  TORCH_CHECK(weights.size() == biases.size() && !weights.empty(), "bad layers");
  TORCH_CHECK(weights[0].size(1) == f0, "first layer expects ", f0, " features");
  TORCH_CHECK(weights.back().size(0) == 2, "last layer must have 2 outputs");
  int64_t widest = f0;
  std::vector<at::Tensor> ws, bs;
  std::vector<const float*> wp, bp;
  std::vector<int64_t> outs, ins;
  for (size_t k = 0; k < weights.size(); ++k) {
    ws.push_back(weights[k].contiguous());
    bs.push_back(biases[k].contiguous());
    wp.push_back(ws.back().data_ptr<float>());
    bp.push_back(bs.back().data_ptr<float>());
    outs.push_back(ws.back().size(0));
    ins.push_back(ws.back().size(1));
    widest = std::max(widest, outs.back());
  }
  const size_t num_layers = ws.size();
  float* P = param.data_ptr<float>();
  const float* G = grad.data_ptr<float>();
  const float* M = m.data_ptr<float>();
  const float* V = v.data_ptr<float>();
  const float sm = static_cast<float>(step_mult), em = static_cast<float>(exp_mult);
  at::parallel_for(0, (n + L - 1) / L, 64, [&](int64_t begin, int64_t end) {
    std::vector<float> a(widest * L), b(widest * L);
    for (int64_t blk = begin; blk < end; ++blk) {
      const int64_t c0 = blk * L, cnt = std::min(L, n - c0);
      float* x = a.data();
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
      float* in = a.data();
      float* out = b.data();
      for (size_t k = 0; k < num_layers; ++k) {
        const int64_t n_out = outs[k], n_in = ins[k];
        const float* W = wp[k];
        const float* B = bp[k];
        const float floor = k + 1 < num_layers ? 0.0f : -INFINITY;  // ReLU between layers
        for (int64_t j = 0; j < n_out; ++j) {
          float* o = out + j * L;
          const float bj = B[j];
#pragma omp simd
          for (int64_t l = 0; l < L; ++l) o[l] = bj;
          const float* wj = W + j * n_in;
          for (int64_t i = 0; i < n_in; ++i) {
            const float w = wj[i];
            const float* xi = in + i * L;
#pragma omp simd
            for (int64_t l = 0; l < L; ++l) o[l] += w * xi[l];
          }
          if (k + 1 < num_layers) {
#pragma omp simd
            for (int64_t l = 0; l < L; ++l) o[l] = std::fmax(o[l], floor);
          }
        }
        std::swap(in, out);
      }
      float upd[L];
#pragma omp simd
      for (int64_t l = 0; l < L; ++l) {
        const float mag = std::fmin(std::fmax(em * in[L + l], -80.0f), 80.0f);
        upd[l] = sm * in[l] * fast_exp(mag);
      }
      for (int64_t l = 0; l < cnt; ++l) P[c0 + l] += upd[l];
    }
  });
}

// First pass of the MLP optimizer's deployment step for one tensor: advances the accumulators
// in place (m_i <- b_i m_i + (1 - b_i) g, v <- b v + (1 - b) g^2) and returns the sum over the
// tensor of each raw feature squared ([2D + 4], accumulated in double).
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
  at::parallel_for(0, chunks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t ch = begin; ch < end; ++ch) {
      const int64_t lo = n * ch / chunks, hi = n * (ch + 1) / chunks;
      double* acc = partial.data() + ch * f0;
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
  });
  auto out = at::zeros({f0}, at::kDouble);
  double* O = out.data_ptr<double>();
  for (int64_t ch = 0; ch < chunks; ++ch)
    for (int64_t k = 0; k < f0; ++k) O[k] += partial[ch * f0 + k];
  return out.to(at::kFloat);
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("mlp_accumulate_", &mlp_accumulate_, "MLP optimizer accumulators and feature moments");
  m.def("mlp_update_", &mlp_update_, "MLP optimizer deployment step (in place)");
  m.def("cell_forward", &cell_forward, "LSTM cell elementwise forward");
  m.def("cell_forward_into", &cell_forward_into, "LSTM cell elementwise forward, into outputs");
  m.def("cell_backward", &cell_backward, "LSTM cell elementwise backward");
}
