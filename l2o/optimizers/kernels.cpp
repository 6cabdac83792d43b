// CPU kernels of the learned optimizers (float32): the elementwise parts of an LSTM cell over
// many independent rows, forward and backward, each one pass over memory; and the MLP
// optimizer's whole deployment step. Built and loaded by l2o/optimizers/native.py (on first use,
// or `python -m l2o.optimizers.native build`); without a compiler the same math runs as PyTorch
// ops. Compiled WITHOUT -ffast-math: a NaN or infinity in the inputs reaches the outputs as it
// does in PyTorch, so every clamp below is written to let a NaN through.
//
// Layout: pre-activations [M, 4H] in gate order i, f, g, o (as torch.nn.LSTM); states [M, H].
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <initializer_list>
#include <vector>

namespace {

// Clamps x to [lo, hi] and keeps a NaN a NaN (std::fmin/fmax would return the bound).
inline float clamp_keep_nan(float x, float lo, float hi) {
  x = x < lo ? lo : x;
  return x > hi ? hi : x;
}

// exp(x) for x in [-87, 88] (Cody-Waite reduction and Cephes' degree-6 polynomial, ~2 ulp):
// plain arithmetic and a bit shift, so loops over it vectorize into a few FMAs per value
// (libm's expf is several times slower here). Arguments are clamped, so exp(±inf) is finite and
// the sigmoid/tanh below saturate as PyTorch's do; a NaN argument gives NaN.
inline float fast_exp(float x) {
  x = clamp_keep_nan(x, -87.0f, 88.0f);
  const float k = std::floor(x * 1.44269504088896341f + 0.5f);
  const float r = (x - k * 0.693359375f) + k * 2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const float kk = k == k ? k : 0.0f;  // NaN: p is NaN already; keep the int conversion defined
  const int32_t bits = (static_cast<int32_t>(kk) + 127) << 23;
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

// The layers of a multi-layer LSTM as one GEMM each on [input | h]: wt[l] is [(F_l + H), 4H]
// (= cat(W_ih, W_hh, dim=1).t(), contiguous), b[l] = b_ih + b_hh.
struct Layers {
  std::vector<at::Tensor> wt, b;
  int64_t hidden = 0;
  int64_t in_features(size_t l) const { return wt[l].size(0) - hidden; }
};

Layers check_layers(const std::vector<at::Tensor>& wt, const std::vector<at::Tensor>& b,
                    int64_t hidden) {
  TORCH_CHECK(!wt.empty() && wt.size() == b.size(), "one weight and one bias per layer");
  Layers layers{wt, b, hidden};
  for (size_t l = 0; l < wt.size(); ++l) {
    check(wt[l], "wt", wt[l].size(0), 4 * hidden);
    TORCH_CHECK(b[l].numel() == 4 * hidden && b[l].is_contiguous(), "bias must be [4H]");
    if (l > 0) TORCH_CHECK(layers.in_features(l) == hidden, "layer ", l, " must take h");
  }
  return layers;
}

// rows x [n, F] and h [n, H] side by side into z [n, F + H].
inline void concat_rows(const float* x, int64_t f, const float* h, int64_t hidden, float* z,
                        int64_t n) {
  for (int64_t r = 0; r < n; ++r) {
    std::memcpy(z + r * (f + hidden), x + r * f, f * sizeof(float));
    std::memcpy(z + r * (f + hidden) + f, h + r * hidden, hidden * sizeof(float));
  }
}

constexpr int64_t kRows = 512;  // rows per GEMM block: the block's gates stay in L2
// Rows per block of the forward step: its GEMMs reduce over features, not rows, so larger blocks
// change no result and spare ATen calls (measured: the classic task's forward ~16% faster).
constexpr int64_t kFwdRows = 2048;

// Runs work(i) for every i in [0, count) on the ATen threads, each thread claiming the next index
// from a shared counter (make_work() is called once per thread: its closure holds that thread's
// scratch memory). Unlike a static split, a thread the OS deschedules on a busy machine holds up
// only the block it is in: the others take the rest instead of waiting at the region's end.
// Every index runs exactly once, so per-block results do not depend on the thread count.
template <typename MakeWork>
void parallel_claim(int64_t count, const MakeWork& make_work) {
  std::atomic<int64_t> next{0};
  const int64_t threads = std::min<int64_t>(count, at::get_num_threads());
  at::parallel_for(0, threads, 1, [&](int64_t, int64_t) {
    auto work = make_work();
    for (int64_t i = next.fetch_add(1); i < count; i = next.fetch_add(1)) work(i);
  });
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

// One time step of all layers for M independent rows, without a graph: x [M, F]; h_in, c_in,
// h_out, c_out [L, M, H] with contiguous rows (the outputs may be the inputs: in place). Writes (or, with accumulate,
// adds) head_b + head_w . h_top into out [M]. Runs in cache-sized blocks of rows (kFwdRows), each
// claimed by whichever thread is free (parallel_claim), each GEMM on one block.
void lstm_step_forward(const at::Tensor& x, const at::Tensor& h_in, const at::Tensor& c_in,
                       at::Tensor& h_out, at::Tensor& c_out, const std::vector<at::Tensor>& wt,
                       const std::vector<at::Tensor>& b, const at::Tensor& head_w, double head_b,
                       at::Tensor& out, bool accumulate) {
  const int64_t num_layers = h_in.size(0), rows = x.size(0), hidden = h_in.size(2);
  const Layers layers = check_layers(wt, b, hidden);
  TORCH_CHECK(static_cast<int64_t>(wt.size()) == num_layers, "one weight per layer");
  const int64_t f0 = layers.in_features(0);
  check(x, "x", rows, f0);
  for (const at::Tensor* t : std::initializer_list<const at::Tensor*>{&h_in, &c_in, &h_out, &c_out}) {
    TORCH_CHECK(t->dim() == 3 && t->size(0) == num_layers && t->size(1) == rows &&
                    t->size(2) == hidden && t->stride(2) == 1 && t->stride(1) == hidden &&
                    t->scalar_type() == at::kFloat,
                "states must be float32 [L, M, H] with contiguous rows (e.g. a slice of rows)");
  }
  TORCH_CHECK(head_w.numel() == hidden && head_w.is_contiguous(), "head_w must be [H]");
  TORCH_CHECK(out.numel() == rows && out.is_contiguous() && out.scalar_type() == at::kFloat,
              "out must be contiguous float32 [M]");
  const float* X = x.data_ptr<float>();
  const float* HW = head_w.data_ptr<float>();
  float* O = out.data_ptr<float>();
  const float hb = static_cast<float>(head_b);
  const int64_t sh_in = h_in.stride(0), sc_in = c_in.stride(0);  // layer strides
  const int64_t sh_out = h_out.stride(0), sc_out = c_out.stride(0);
  const float* Hin = h_in.data_ptr<float>();
  const float* Cin = c_in.data_ptr<float>();
  float* Hout = h_out.data_ptr<float>();
  float* Cout = c_out.data_ptr<float>();
  const int64_t blocks = (rows + kFwdRows - 1) / kFwdRows;
  parallel_claim(blocks, [&] {
    auto opts = at::TensorOptions().dtype(at::kFloat);
    return [&, scratch = std::vector<float>(4 * kBlock * hidden),
            z = at::empty({kFwdRows * (std::max(f0, hidden) + hidden)}, opts),
            pre = at::empty({kFwdRows, 4 * hidden}, opts)](int64_t blk) mutable {
      const int64_t r0 = blk * kFwdRows, n = std::min(kFwdRows, rows - r0);
      for (int64_t l = 0; l < num_layers; ++l) {
        const int64_t f = layers.in_features(l);
        const float* inp = l == 0 ? X + r0 * f0 : Hout + (l - 1) * sh_out + r0 * hidden;
        auto zl = z.narrow(0, 0, n * (f + hidden)).view({n, f + hidden});
        concat_rows(inp, f, Hin + l * sh_in + r0 * hidden, hidden, zl.data_ptr<float>(), n);
        auto p = pre.narrow(0, 0, n);
        at::addmm_out(p, layers.b[l], zl, layers.wt[l]);
        cell_forward_rows(p.data_ptr<float>(), Cin + l * sc_in + r0 * hidden,
                          Hout + l * sh_out + r0 * hidden, Cout + l * sc_out + r0 * hidden, n,
                          hidden, scratch.data());
      }
      const float* ht = Hout + (num_layers - 1) * sh_out + r0 * hidden;
      for (int64_t r = 0; r < n; ++r) {
        float s = hb;
#pragma omp simd reduction(+ : s)
        for (int64_t u = 0; u < hidden; ++u) s += HW[u] * ht[r * hidden + u];
        O[r0 + r] = accumulate ? O[r0 + r] + s : s;
      }
    };
  });
}

// The exact first-order meta-gradient of a truncation through the LSTM, from its tape: xs
// [T, M, F] inputs, hs, cs [T + 1, L, M, H] states (hs[t] before step t), cot [T, M] the
// cotangents of the updates u_t = scale * (head_w . h_top + head_b). Back-propagates through
// time block by block of rows (each block's carries and gates stay in cache), recomputing the
// pre-activations with one GEMM per layer and step. Returns per layer d wt [(F_l + H), 4H] and
// d b [4H], then d head_w [H] and d head_b [1]. Each block accumulates its own partial sums,
// added up in block order: the result does not depend on the thread count.
std::vector<at::Tensor> lstm_sequence_backward(const at::Tensor& xs, const at::Tensor& hs,
                                               const at::Tensor& cs, const at::Tensor& cot,
                                               const std::vector<at::Tensor>& wt,
                                               const std::vector<at::Tensor>& b,
                                               const at::Tensor& head_w, double scale) {
  const int64_t steps = xs.size(0), rows = xs.size(1), f0 = xs.size(2);
  const int64_t num_layers = hs.size(1), hidden = hs.size(3);
  const Layers layers = check_layers(wt, b, hidden);
  TORCH_CHECK(static_cast<int64_t>(wt.size()) == num_layers && layers.in_features(0) == f0,
              "weights do not match the tape");
  for (const at::Tensor* t : std::initializer_list<const at::Tensor*>{&xs, &hs, &cs, &cot}) {
    TORCH_CHECK(t->is_contiguous() && t->scalar_type() == at::kFloat && t->is_cpu(),
                "tape tensors must be contiguous float32 on the CPU");
  }
  TORCH_CHECK(hs.sizes() == cs.sizes() && hs.size(0) == steps + 1 && hs.size(2) == rows,
              "hs, cs must be [T + 1, L, M, H]");
  TORCH_CHECK(cot.dim() == 2 && cot.size(0) == steps && cot.size(1) == rows, "cot: [T, M]");
  TORCH_CHECK(head_w.numel() == hidden, "head_w must be [H]");
  const int64_t blocks = (rows + kRows - 1) / kRows;
  auto opts = at::TensorOptions().dtype(at::kFloat);
  std::vector<at::Tensor> w, dwt, db;  // w[l]: [4H, F_l + H]; partial sums per block
  for (int64_t l = 0; l < num_layers; ++l) {
    w.push_back(layers.wt[l].t().contiguous());
    dwt.push_back(at::zeros({blocks, layers.wt[l].size(0), 4 * hidden}, opts));
    db.push_back(at::zeros({blocks, 4 * hidden}, opts));
  }
  const auto w_hh0 = layers.wt[0].narrow(0, f0, hidden).t().contiguous();  // [4H, H]
  auto dhead = at::zeros({blocks, hidden + 1}, at::TensorOptions().dtype(at::kDouble));
  const float* X = xs.data_ptr<float>();
  const float* HS = hs.data_ptr<float>();
  const float* CS = cs.data_ptr<float>();
  const float* COT = cot.data_ptr<float>();
  auto hw_scaled = (head_w.reshape({hidden}).to(at::kFloat) * scale).contiguous();
  const float* HW = hw_scaled.data_ptr<float>();
  const int64_t layer_rows = rows * hidden, step_rows = num_layers * layer_rows;
  const int64_t widest = std::max(f0, hidden) + hidden;
  parallel_claim(blocks, [&] {
    return [&, scratch = std::vector<float>(8 * kBlock * hidden),
            head_step = std::vector<float>(hidden + 1), z = at::empty({kRows * widest}, opts),
            dz = at::empty({kRows * widest}, opts), pre = at::empty({kRows, 4 * hidden}, opts),
            dpre = at::empty({kRows, 4 * hidden}, opts),
            dh = at::empty({num_layers, kRows, hidden}, opts),
            dc = at::empty({num_layers, kRows, hidden}, opts)](int64_t blk) mutable {
      const int64_t r0 = blk * kRows, n = std::min(kRows, rows - r0);
      dh.zero_();
      dc.zero_();
      float* DH = dh.data_ptr<float>();
      float* DC = dc.data_ptr<float>();
      double* dhd = dhead.data_ptr<double>() + blk * (hidden + 1);
      auto p = pre.narrow(0, 0, n);
      auto dp = dpre.narrow(0, 0, n);
      auto dh0 = dh[0].narrow(0, 0, n);
      std::vector<at::Tensor> zs, zts, dws, dzs;  // per layer, the block's views (made once)
      for (int64_t l = 0; l < num_layers; ++l) {
        const int64_t width = layers.in_features(l) + hidden;
        zs.push_back(z.narrow(0, 0, n * width).view({n, width}));
        zts.push_back(zs.back().t());
        dws.push_back(dwt[l][blk]);
        dzs.push_back(dz.narrow(0, 0, n * width).view({n, width}));
      }
      for (int64_t t = steps - 1; t >= 0; --t) {
        // the head: u = scale * (head_w . h_top + head_b), h_top = hs[t + 1][L - 1]
        const float* ct = COT + t * rows + r0;
        const float* htop = HS + (t + 1) * step_rows + (num_layers - 1) * layer_rows + r0 * hidden;
        float* dtop = DH + (num_layers - 1) * kRows * hidden;
        std::fill(head_step.begin(), head_step.end(), 0.0f);
        float* hsum = head_step.data();
        for (int64_t r = 0; r < n; ++r) {
          const float cr = ct[r];
          hsum[hidden] += cr;
#pragma omp simd
          for (int64_t u = 0; u < hidden; ++u) {
            dtop[r * hidden + u] += cr * HW[u];
            hsum[u] += cr * htop[r * hidden + u];
          }
        }
        for (int64_t u = 0; u <= hidden; ++u) dhd[u] += hsum[u];
        for (int64_t l = num_layers - 1; l >= 0; --l) {
          const int64_t f = layers.in_features(l), width = f + hidden;
          const float* inp = l == 0 ? X + (t * rows + r0) * f0
                                    : HS + (t + 1) * step_rows + (l - 1) * layer_rows + r0 * hidden;
          const float* h_prev = HS + t * step_rows + l * layer_rows + r0 * hidden;
          const float* c_prev = CS + t * step_rows + l * layer_rows + r0 * hidden;
          const auto& zl = zs[l];
          concat_rows(inp, f, h_prev, hidden, zl.data_ptr<float>(), n);
          at::addmm_out(p, layers.b[l], zl, layers.wt[l]);
          float* dhl = DH + l * kRows * hidden;
          float* dcl = DC + l * kRows * hidden;
          cell_backward_rows(p.data_ptr<float>(), c_prev, dhl, dcl, dp.data_ptr<float>(), dcl, n,
                             hidden, scratch.data());
          dws[l].addmm_(zts[l], dp);
          float* dbl = db[l].data_ptr<float>() + blk * 4 * hidden;  // += dp.sum(0), no temporary
          const float* DPB = dp.data_ptr<float>();
          for (int64_t r = 0; r < n; ++r) {
#pragma omp simd
            for (int64_t j = 0; j < 4 * hidden; ++j) dbl[j] += DPB[r * 4 * hidden + j];
          }
          if (l == 0) {  // the input needs no gradient: only the recurrent part
            at::mm_out(dh0, dp, w_hh0);
            continue;
          }
          auto& dzl = dzs[l];
          at::mm_out(dzl, dp, w[l]);
          const float* DZ = dzl.data_ptr<float>();
          float* below = DH + (l - 1) * kRows * hidden;
          for (int64_t r = 0; r < n; ++r) {
#pragma omp simd
            for (int64_t u = 0; u < hidden; ++u) {
              dhl[r * hidden + u] = DZ[r * width + f + u];
              below[r * hidden + u] += DZ[r * width + u];
            }
          }
        }
      }
    };
  });
  std::vector<at::Tensor> out;
  for (int64_t l = 0; l < num_layers; ++l) {
    out.push_back(dwt[l].sum(0));
    out.push_back(db[l].sum(0));
  }
  auto head = dhead.sum(0) * scale;
  out.push_back(head.narrow(0, 0, hidden).to(at::kFloat));
  out.push_back(head.narrow(0, hidden, 1).to(at::kFloat));
  return out;
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
