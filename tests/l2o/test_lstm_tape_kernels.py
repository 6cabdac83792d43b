"""The C++ LSTM tape kernels (``lstm_step_forward``, ``lstm_sequence_backward``) against a
float64 PyTorch reference: updates, states and the first-order meta-gradient, for row counts
that fill no whole SIMD vector, tile or backward block, several layer counts, hidden sizes and
input widths, and inputs with a NaN or an infinity (which stay in their row forward and reach
exactly the meta-gradient entries that PyTorch's autograd gives them); and the same results,
bit for bit, at any thread count."""

from __future__ import annotations

import pytest
import torch

from l2o.optimizers.lstm_kernels import gemm_layers, lstm_step
from l2o.optimizers.native import native_kernels

ext = native_kernels()
pytestmark = pytest.mark.skipif(ext is None, reason="the C++ kernels are not built")

STEPS, SCALE, HEAD_B = 4, 0.7, 0.2
# (rows, features, layers, hidden): rows below, between and past the 16-lane vectors, the
# forward's 32-row tiles and the backward's 256-row blocks; hidden sizes below, at and past 16
SHAPES = [
    (1, 2, 2, 20),
    (17, 1, 1, 5),
    (45, 7, 3, 17),
    (300, 2, 2, 20),
    (259, 3, 2, 33),
]


def _problem(rows, features, layers, hidden, seed=0):
    gen = torch.Generator().manual_seed(seed)
    flat = []
    for layer in range(layers):
        f = features if layer == 0 else hidden
        flat += [
            torch.randn(4 * hidden, f, generator=gen) * 0.4,
            torch.randn(4 * hidden, hidden, generator=gen) * 0.4,
            torch.randn(4 * hidden, generator=gen) * 0.2,
            torch.randn(4 * hidden, generator=gen) * 0.2,
        ]
    head_w = torch.randn(hidden, generator=gen)
    xs = torch.randn(STEPS, rows, features, generator=gen) * 2
    h0 = torch.randn(layers, rows, hidden, generator=gen) * 0.5
    c0 = torch.randn(layers, rows, hidden, generator=gen)
    cot = torch.randn(STEPS, rows, generator=gen)
    return flat, head_w, xs, h0, c0, cot


def _kernels(flat, head_w, xs, h0, c0, cot):
    """Updates [T, M], states hs, cs [T + 1, L, M, H] and the meta-gradient from the kernels."""
    steps, rows = xs.shape[:2]
    layers, _, hidden = h0.shape
    wts, biases = gemm_layers(flat)
    hs = torch.empty(steps + 1, layers, rows, hidden)
    cs = torch.empty_like(hs)
    hs[0], cs[0] = h0, c0
    updates = torch.empty(steps, rows)
    for t in range(steps):
        ext.lstm_step_forward(
            xs[t], hs[t], cs[t], hs[t + 1], cs[t + 1], wts, biases,
            head_w * SCALE, HEAD_B * SCALE, updates[t], False,
        )  # fmt: skip
    grads = ext.lstm_sequence_backward(xs, hs, cs, cot, wts, biases, head_w, SCALE)
    return updates, hs, cs, grads


def _reference(flat, head_w, xs, h0, c0, cot):
    """The same in float64 with PyTorch ops and autograd, the gradients in the kernels' layout
    (per layer d[W_ih | W_hh]ᵀ and d b, then d head_w and d head_b)."""
    params = [p.double().requires_grad_(True) for p in flat]
    hw = head_w.double().requires_grad_(True)
    hb = torch.tensor(HEAD_B, dtype=torch.float64, requires_grad=True)
    weights = [tuple(params[i : i + 4]) for i in range(0, len(params), 4)]
    h, c = h0.double(), c0.double()
    updates, hs, cs = [], [h], [c]
    for x in xs.double():
        top, h, c = lstm_step(x, h, c, weights)
        updates.append(SCALE * (top @ hw + hb))
        hs.append(h)
        cs.append(c)
    updates = torch.stack(updates)
    grads = torch.autograd.grad((updates * cot.double()).sum(), [*params, hw, hb])
    out = []
    for layer in range(len(weights)):
        d_ih, d_hh, d_b = grads[4 * layer : 4 * layer + 3]
        out += [torch.cat((d_ih, d_hh), dim=1).t(), d_b]
    out += [grads[-2], grads[-1].reshape(1)]
    return updates.detach(), torch.stack(hs).detach(), torch.stack(cs).detach(), out


def _close(got, want, rtol, same_nans=True):
    """Equal where finite (float32 against float64, tolerance scaled to the values' size) and
    non-finite in exactly the same entries; NaN in the same entries unless ``same_nans`` is
    False (an infinite input: a sum of ``inf * tiny`` terms where PyTorch's exact sigmoid gives
    ``inf * 0``, the kernels' saturated one may give ±inf where PyTorch gives NaN)."""
    got = got.double()
    assert torch.equal(got.isfinite(), want.isfinite())
    if same_nans:
        assert torch.equal(got.isnan(), want.isnan())
    ok = want.isfinite()
    scale = want[ok].abs().max().item() if ok.any() else 1.0
    torch.testing.assert_close(got[ok], want[ok], rtol=rtol, atol=rtol * max(scale, 1.0))


@pytest.mark.parametrize(("rows", "features", "layers", "hidden"), SHAPES)
def test_forward_states_and_meta_gradient_match_pytorch(rows, features, layers, hidden):
    problem = _problem(rows, features, layers, hidden)
    got_u, got_h, got_c, got_g = _kernels(*problem)
    want_u, want_h, want_c, want_g = _reference(*problem)
    _close(got_u, want_u, 1e-5)
    _close(got_h, want_h, 1e-5)
    _close(got_c, want_c, 1e-5)
    assert len(got_g) == len(want_g) == 2 * layers + 2
    for got, want in zip(got_g, want_g, strict=True):
        assert got.shape == want.shape
        _close(got, want, 1e-4)


def test_the_step_runs_in_place_on_its_states():
    flat, head_w, xs, h0, c0, _ = _problem(45, 3, 2, 17)
    wts, biases = gemm_layers(flat)
    want_h, want_c, want_u = torch.empty_like(h0), torch.empty_like(c0), torch.empty(45)
    ext.lstm_step_forward(xs[0], h0, c0, want_h, want_c, wts, biases, head_w, 0.1, want_u, False)
    h, c, u = h0.clone(), c0.clone(), torch.ones(45)
    ext.lstm_step_forward(xs[0], h, c, h, c, wts, biases, head_w, 0.1, u, True)  # accumulate
    assert torch.equal(h, want_h) and torch.equal(c, want_c)
    torch.testing.assert_close(u, want_u + 1)


@pytest.mark.parametrize("bad", ["nan", "inf", "-inf"])
@pytest.mark.parametrize(("rows", "bad_row"), [(45, 33), (300, 260)])
def test_a_bad_input_stays_in_its_row_and_reaches_its_gradients(bad, rows, bad_row):
    flat, head_w, xs, h0, c0, cot = _problem(rows, 2, 2, 20)
    xs[1, bad_row, 0] = float(bad)
    problem = (flat, head_w, xs, h0, c0, cot)
    got_u, got_h, got_c, got_g = _kernels(*problem)
    want_u, want_h, want_c, want_g = _reference(*problem)
    others = torch.ones(rows, dtype=torch.bool)
    others[bad_row] = False
    assert got_u[:, others].isfinite().all() and got_h[:, :, others].isfinite().all()
    assert got_u[0].isfinite().all()
    if bad == "nan":
        assert got_u[1:, bad_row].isnan().all() and got_h[2:, :, bad_row].isnan().all()
        assert any(g.isnan().any() for g in got_g)
    _close(got_u, want_u, 1e-5)
    _close(got_h, want_h, 1e-5)
    _close(got_c, want_c, 1e-5)
    for got, want in zip(got_g, want_g, strict=True):
        _close(got, want, 1e-4, same_nans=bad == "nan")


def test_a_nan_cotangent_reaches_the_gradients_of_its_row_only_through_its_sums():
    flat, head_w, xs, h0, c0, cot = _problem(300, 2, 2, 20)
    cot[2, 290] = float("nan")
    problem = (flat, head_w, xs, h0, c0, cot)
    _, _, _, got_g = _kernels(*problem)
    _, _, _, want_g = _reference(*problem)
    assert got_g[-1].isnan().all()  # d head_b sums the cotangents
    for got, want in zip(got_g, want_g, strict=True):
        _close(got, want, 1e-4)


def _at_threads(threads, problem):
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return _kernels(*problem)
    finally:
        torch.set_num_threads(before)


# several of the forward's claims (16 tiles of 32 rows) and of the backward's 256-row blocks
THREADED_ROWS = 4500


def test_results_do_not_depend_on_the_thread_count():
    """Each block of rows runs once, whichever thread claims it, and the blocks' sums are added
    in block order: bit-identical results at any thread count."""
    problem = _problem(THREADED_ROWS, 2, 2, 20)
    one, two = _at_threads(1, problem), _at_threads(2, problem)
    for a, b in zip(one[:3], two[:3], strict=True):
        assert torch.equal(a, b)
    assert all(torch.equal(a, b) for a, b in zip(one[3], two[3], strict=True))


def test_a_nan_row_stays_in_its_row_at_two_threads():
    flat, head_w, xs, h0, c0, cot = _problem(THREADED_ROWS, 2, 2, 20)
    xs[1, 2100, 0] = float("nan")
    updates, hs, _, grads = _at_threads(2, (flat, head_w, xs, h0, c0, cot))
    assert torch.isnan(updates[1:, 2100]).all() and torch.isfinite(updates[0]).all()
    others = torch.cat((updates[:, :2100], updates[:, 2101:]), dim=1)
    assert torch.isfinite(others).all()
    assert torch.isnan(hs[2:, :, 2100]).all()
    # the NaN reaches every weight's meta-gradient; the head's bias sees only the cotangents
    assert all(torch.isnan(g).any() for g in grads[:-1]) and torch.isfinite(grads[-1]).all()
