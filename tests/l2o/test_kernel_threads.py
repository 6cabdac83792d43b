"""The C++ LSTM kernels hand their row blocks to whichever thread is free (``parallel_claim``):
every block runs once, so the results are bit-identical at any thread count, and a NaN in one
row stays in that row."""

from __future__ import annotations

import pytest
import torch

from l2o.optimizers.lstm_kernels import gemm_layers
from l2o.optimizers.native import native_kernels

ext = native_kernels()
pytestmark = pytest.mark.skipif(ext is None, reason="the C++ kernels are not built")

# several blocks of the forward's 2048 rows and of the backward's 512, the last ones partial
ROWS, FEATURES, LAYERS, HIDDEN, STEPS = 4500, 2, 2, 20, 3


def _weights(gen):
    flat = []
    for layer in range(LAYERS):
        f = FEATURES if layer == 0 else HIDDEN
        flat += [
            torch.randn(4 * HIDDEN, f, generator=gen) * 0.3,
            torch.randn(4 * HIDDEN, HIDDEN, generator=gen) * 0.3,
            torch.randn(4 * HIDDEN, generator=gen) * 0.1,
            torch.randn(4 * HIDDEN, generator=gen) * 0.1,
        ]
    return gemm_layers(flat)


def _truncation(threads: int, nan_row: int | None):
    """A taped forward of STEPS steps and its backward, at ``threads`` threads."""
    gen = torch.Generator().manual_seed(0)
    wts, biases = _weights(gen)
    head_w = torch.randn(HIDDEN, generator=gen)
    xs = torch.randn(STEPS, ROWS, FEATURES, generator=gen)
    if nan_row is not None:
        xs[1, nan_row, 0] = float("nan")
    hs = torch.zeros(STEPS + 1, LAYERS, ROWS, HIDDEN)
    cs = torch.zeros(STEPS + 1, LAYERS, ROWS, HIDDEN)
    updates = torch.empty(STEPS, ROWS)
    cot = torch.randn(STEPS, ROWS, generator=gen)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for t in range(STEPS):
            ext.lstm_step_forward(
                xs[t], hs[t], cs[t], hs[t + 1], cs[t + 1], wts, biases, head_w, 0.1,
                updates[t], False,
            )  # fmt: skip
        grads = ext.lstm_sequence_backward(xs, hs, cs, cot, wts, biases, head_w, 0.5)
    finally:
        torch.set_num_threads(before)
    return updates, hs, grads


def test_results_do_not_depend_on_the_thread_count():
    one = _truncation(1, None)
    two = _truncation(2, None)
    assert torch.equal(one[0], two[0]) and torch.equal(one[1], two[1])
    assert all(torch.equal(a, b) for a, b in zip(one[2], two[2], strict=True))


def test_a_nan_row_stays_in_its_row_at_two_threads():
    updates, hs, grads = _truncation(2, nan_row=2100)
    assert torch.isnan(updates[1:, 2100]).all() and torch.isfinite(updates[0]).all()
    others = torch.cat((updates[:, :2100], updates[:, 2101:]), dim=1)
    assert torch.isfinite(others).all()
    assert torch.isnan(hs[2:, :, 2100]).all()
    # the NaN reaches every weight's meta-gradient; the head's bias sees only the cotangents
    assert all(torch.isnan(g).any() for g in grads[:-1]) and torch.isfinite(grads[-1]).all()
