// The coordinatewise LSTM over many independent rows (float32): one time step of all layers
// (lstm_step_forward: meta-training's tape and deployment) and the first-order meta-gradient of
// a whole truncation from its tape (lstm_sequence_backward).
//
// Rows go into SIMD lanes: a block of rows is held feature-major (one vector of kLanes rows per
// input feature, hidden unit or gate), so each gate of each unit is a vector and a layer's matrix
// product runs in registers, its bias and the cell fused in (no pre-activation tensor, no gather
// of the gates, no ATen call per block). The backward recomputes each step's gates the same way
// instead of keeping them (the tape holds only inputs and states) and accumulates the weight
// gradient per lane, so a block's sums never leave the cache until its end.
//
// Compiled WITHOUT -ffast-math: a NaN or infinity reaches the outputs as it does in PyTorch.
// Every clamp lets a NaN through, and a block's padded lanes hold zeros, never another row's data,
// so a NaN stays in its row (forward) and in the sums it belongs to (backward).
#include "kernels.h"
#include "lstm_blocks.h"

#include <cstring>
#include <initializer_list>

using l2o_kernels::parallel_claim;

namespace {

using namespace l2o_lstm;

// Checks the layers (wt[l] = cat(W_ih, W_hh, dim=1).t() contiguous [(F_l + H), 4H]; b[l] [4H])
// and packs them.
std::vector<PackedLayer> pack_layers(const std::vector<at::Tensor>& wt,
                                     const std::vector<at::Tensor>& b, int64_t hidden) {
  TORCH_CHECK(!wt.empty() && wt.size() == b.size(), "one weight and one bias per layer");
  std::vector<PackedLayer> layers(wt.size());
  for (size_t l = 0; l < wt.size(); ++l) {
    l2o_kernels::check(wt[l], "wt", wt[l].size(0), 4 * hidden);
    TORCH_CHECK(b[l].numel() == 4 * hidden && b[l].is_contiguous() &&
                    b[l].scalar_type() == at::kFloat,
                "bias must be float32 [4H]");
    PackedLayer& p = layers[l];
    p.width = wt[l].size(0);
    p.in = p.width - hidden;
    TORCH_CHECK(p.in > 0, "wt must have more rows than H");
    TORCH_CHECK(l == 0 || p.in == hidden, "layer ", l, " must take h");
    p.groups = (hidden + kGateUnits - 1) / kGateUnits;
    p.w.assign(p.groups * p.width * 4 * kGateUnits, 0.0f);
    p.b.assign(p.groups * 4 * kGateUnits, 0.0f);
    p.wt = wt[l].data_ptr<float>();
    const float* B = b[l].data_ptr<float>();
    for (int64_t unit = 0; unit < hidden; ++unit) {
      const int64_t grp = unit / kGateUnits, u = unit % kGateUnits;
      for (int64_t g = 0; g < 4; ++g) {
        p.b[(grp * 4 + g) * kGateUnits + u] = B[g * hidden + unit];
        for (int64_t k = 0; k < p.width; ++k)
          p.w[((grp * p.width + k) * 4 + g) * kGateUnits + u] = p.wt[k * 4 * hidden + g * hidden + unit];
      }
    }
  }
  return layers;
}

void check_states(std::initializer_list<const at::Tensor*> states, int64_t layers, int64_t rows,
                  int64_t hidden) {
  for (const at::Tensor* t : states) {
    TORCH_CHECK(t->dim() == 3 && t->size(0) == layers && t->size(1) == rows &&
                    t->size(2) == hidden && t->stride(2) == 1 && t->stride(1) == hidden &&
                    t->scalar_type() == at::kFloat && t->device().is_cpu(),
                "states must be float32 [L, M, H] with contiguous rows (e.g. a slice of rows)");
  }
}

}  // namespace

// One time step of all layers for M independent rows, without a graph: x [M, F]; h_in, c_in,
// h_out, c_out [L, M, H] with contiguous rows (the outputs may be the inputs: in place). Writes
// (or, with accumulate, adds) head_b + head_w . h_top into out [M]. Tiles of kTile rows, claimed
// kClaimTiles at a time by whichever thread is free.
void lstm_step_forward(const at::Tensor& x, const at::Tensor& h_in, const at::Tensor& c_in,
                       at::Tensor& h_out, at::Tensor& c_out, const std::vector<at::Tensor>& wt,
                       const std::vector<at::Tensor>& b, const at::Tensor& head_w, double head_b,
                       at::Tensor& out, bool accumulate) {
  const int64_t num_layers = h_in.size(0), rows = x.size(0), hidden = h_in.size(2);
  const auto layers = pack_layers(wt, b, hidden);
  TORCH_CHECK(static_cast<int64_t>(layers.size()) == num_layers, "one weight per layer");
  const int64_t f0 = layers[0].in;
  l2o_kernels::check(x, "x", rows, f0);
  check_states({&h_in, &c_in, &h_out, &c_out}, num_layers, rows, hidden);
  TORCH_CHECK(head_w.numel() == hidden && head_w.is_contiguous() &&
                  head_w.scalar_type() == at::kFloat,
              "head_w must be float32 [H]");
  TORCH_CHECK(out.numel() == rows && out.is_contiguous() && out.scalar_type() == at::kFloat,
              "out must be contiguous float32 [M]");
  const StepRows rows_args{x.data_ptr<float>(), h_in.data_ptr<float>(), c_in.data_ptr<float>(),
                           h_out.data_ptr<float>(), c_out.data_ptr<float>(), h_in.stride(0),
                           c_in.stride(0), h_out.stride(0), c_out.stride(0),
                           head_w.data_ptr<float>(), static_cast<float>(head_b),
                           out.data_ptr<float>(), accumulate, rows, hidden};
  const TileLayout layout(layers, hidden);
  const int64_t tiles = (rows + kTile - 1) / kTile;
  parallel_claim((tiles + kClaimTiles - 1) / kClaimTiles, [&] {
    return [&, scratch = std::vector<float>(layout.size)](int64_t claim) mutable {
      const int64_t end = std::min(tiles, (claim + 1) * kClaimTiles);
      for (int64_t tile = claim * kClaimTiles; tile < end; ++tile)
        forward_tile(layers, rows_args, layout, tile, scratch.data());
    };
  });
}

// The exact first-order meta-gradient of a truncation through the LSTM, from its tape: xs
// [T, M, F] inputs, hs, cs [T + 1, L, M, H] states (hs[t] before step t), cot [T, M] the
// cotangents of the updates u_t = scale * (head_w . h_top + head_b). Back-propagates through
// time block by block of kBlockRows rows, the block's carries, states and gradient sums
// feature-major in cache, the gates recomputed per step and layer. Returns per layer d wt
// [(F_l + H), 4H] and d b [4H], then d head_w [H] and d head_b [1]. Each block keeps its own
// partial sums, added up in block order: the result does not depend on the thread count.
std::vector<at::Tensor> lstm_sequence_backward(const at::Tensor& xs, const at::Tensor& hs,
                                               const at::Tensor& cs, const at::Tensor& cot,
                                               const std::vector<at::Tensor>& wt,
                                               const std::vector<at::Tensor>& b,
                                               const at::Tensor& head_w, double scale) {
  const int64_t steps = xs.size(0), rows = xs.size(1), f0 = xs.size(2);
  const int64_t num_layers = hs.size(1), hidden = hs.size(3);
  const auto layers = pack_layers(wt, b, hidden);
  TORCH_CHECK(static_cast<int64_t>(layers.size()) == num_layers && layers[0].in == f0,
              "weights do not match the tape");
  for (const at::Tensor* t : std::initializer_list<const at::Tensor*>{&xs, &hs, &cs, &cot}) {
    TORCH_CHECK(t->is_contiguous() && t->scalar_type() == at::kFloat && t->is_cpu(),
                "tape tensors must be contiguous float32 on the CPU");
  }
  TORCH_CHECK(hs.sizes() == cs.sizes() && hs.size(0) == steps + 1 && hs.size(2) == rows,
              "hs, cs must be [T + 1, L, M, H]");
  TORCH_CHECK(cot.dim() == 2 && cot.size(0) == steps && cot.size(1) == rows, "cot: [T, M]");
  TORCH_CHECK(head_w.numel() == hidden, "head_w must be [H]");
  const int64_t gates = 4 * hidden, blocks = (rows + kBlockRows - 1) / kBlockRows;
  const BlockLayout layout(layers, hidden);
  const int64_t part_size = layout.part_size;
  std::vector<float> parts(blocks * part_size, 0.0f);
  std::vector<double> head_parts(blocks * (hidden + 1), 0.0);
  auto hw_scaled = (head_w.reshape({hidden}).to(at::kFloat) * scale).contiguous();
  const TapeRows tape{xs.data_ptr<float>(), hs.data_ptr<float>(), cs.data_ptr<float>(),
                      cot.data_ptr<float>(), hw_scaled.data_ptr<float>(), steps, rows, hidden};
  parallel_claim(blocks, [&] {
    return [&, scratch = std::vector<float>(layout.size)](int64_t blk) mutable {
      backward_block(layers, tape, layout, blk, scratch.data(), parts.data() + blk * part_size,
                     head_parts.data() + blk * (hidden + 1));
    };
  });
  // the blocks' partial sums in block order
  std::vector<float> total(part_size, 0.0f);
  std::vector<double> head_total(hidden + 1, 0.0);
  for (int64_t blk = 0; blk < blocks; ++blk) {
    for (int64_t k = 0; k < part_size; ++k) total[k] += parts[blk * part_size + k];
    for (int64_t k = 0; k <= hidden; ++k) head_total[k] += head_parts[blk * (hidden + 1) + k];
  }
  auto opts = at::TensorOptions().dtype(at::kFloat);
  std::vector<at::Tensor> grads;
  for (int64_t l = 0; l < num_layers; ++l) {
    auto dw = at::empty({layers[l].width, gates}, opts);
    std::memcpy(dw.data_ptr<float>(), total.data() + layout.dw_at[l], dw.numel() * sizeof(float));
    auto db = at::empty({gates}, opts);
    std::memcpy(db.data_ptr<float>(), total.data() + layout.dw_size + l * gates, gates * sizeof(float));
    grads.push_back(dw);
    grads.push_back(db);
  }
  auto dhead_w = at::empty({hidden}, opts), dhead_b = at::empty({1}, opts);
  for (int64_t u = 0; u < hidden; ++u)
    dhead_w.data_ptr<float>()[u] = static_cast<float>(head_total[u] * scale);
  dhead_b.data_ptr<float>()[0] = static_cast<float>(head_total[hidden] * scale);
  grads.push_back(dhead_w);
  grads.push_back(dhead_b);
  return grads;
}
