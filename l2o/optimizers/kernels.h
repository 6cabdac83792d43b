// What the learned optimizers' C++ files (kernels.cpp, lstm_tape.cpp) share: argument checks,
// the row-block scheduler and the LSTM tape kernels' declarations (bound in kernels.cpp).
#pragma once

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <vector>

namespace l2o_kernels {

inline void check(const at::Tensor& t, const char* name, int64_t rows, int64_t cols) {
  TORCH_CHECK(t.device().is_cpu(), name, " must be on the CPU");
  TORCH_CHECK(t.scalar_type() == at::kFloat, name, " must be float32");
  TORCH_CHECK(t.dim() == 2 && t.size(0) == rows && t.size(1) == cols, name, " has shape ",
              t.sizes(), ", expected [", rows, ", ", cols, "]");
  TORCH_CHECK(t.is_contiguous(), name, " must be contiguous");
}

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

}  // namespace l2o_kernels

// lstm_tape.cpp: one step of a multi-layer LSTM over independent rows, and the first-order
// meta-gradient of a whole truncation from its tape.
void lstm_step_forward(const at::Tensor& x, const at::Tensor& h_in, const at::Tensor& c_in,
                       at::Tensor& h_out, at::Tensor& c_out, const std::vector<at::Tensor>& wt,
                       const std::vector<at::Tensor>& b, const at::Tensor& head_w, double head_b,
                       at::Tensor& out, bool accumulate);
std::vector<at::Tensor> lstm_sequence_backward(const at::Tensor& xs, const at::Tensor& hs,
                                               const at::Tensor& cs, const at::Tensor& cot,
                                               const std::vector<at::Tensor>& wt,
                                               const std::vector<at::Tensor>& b,
                                               const at::Tensor& head_w, double scale);
