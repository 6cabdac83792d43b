// Elementwise parts of an LSTM cell over many independent rows (float32, CPU), forward and
// backward, each one pass over memory. Built on first use by l2o/optimizers/lstm_kernels.py
// (torch.utils.cpp_extension); when no compiler is available the same math runs as PyTorch ops.
//
// Layout: pre-activations [M, 4H] in gate order i, f, g, o (as torch.nn.LSTM); states [M, H].
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <vector>

namespace {

// Built with -ffast-math (so that std::exp vectorizes through glibc's libmvec): arguments are
// clamped so that no infinity ever arises; the results equal the unclamped ones in float32.
inline float sigmoid(float x) {
  x = std::fmin(std::fmax(x, -80.0f), 80.0f);
  return 1.0f / (1.0f + std::exp(-x));
}

// tanh(x) = 2 sigmoid(2x) - 1: one exp, vectorizes like the sigmoid.
inline float tanh_fast(float x) {
  x = std::fmin(std::fmax(x, -40.0f), 40.0f);
  return 2.0f / (1.0f + std::exp(-2.0f * x)) - 1.0f;
}

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

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("cell_forward", &cell_forward, "LSTM cell elementwise forward");
  m.def("cell_forward_into", &cell_forward_into, "LSTM cell elementwise forward, into outputs");
  m.def("cell_backward", &cell_backward, "LSTM cell elementwise backward");
}
