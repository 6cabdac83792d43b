"""A NaN, ±inf or overflowing gradient coordinate stays confined to that coordinate (issue 15.3):
the per-tensor feature statistics leave it out, and square in float64."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from l2o.optimizers import LearnedOptimizer, ParamSpec, create
from l2o.optimizers.features import finite_square_sums, inverse_rms, normalize_per_segment

BAD = [math.nan, math.inf, -math.inf, 1e20, 3e38]
ARCHS = {
    "mlp": dict(hidden_sizes=[8], init_scale=1.0),
    "general": dict(hidden_sizes=[8]),
    "general_unnormalized": dict(hidden_sizes=[8], normalize_output=False),
    "general_lars": dict(hidden_sizes=[8], nominal="lars", base_schedule="cosine"),
    "general_factored": dict(hidden_sizes=[8], nominal="lars", factored=True),
}


def test_finite_square_sums_skip_bad_entries_and_do_not_overflow():
    x = torch.tensor([[1.0, 2.0], [math.nan, 1e20], [math.inf, 3.0]])
    sums, counts = finite_square_sums(x)
    assert counts.tolist() == [[1.0, 3.0]]
    assert sums[0, 0].item() == 1.0
    big = float(torch.tensor(1e20))  # its float32 value, squared in float64
    assert sums[0, 1].item() == pytest.approx(big * big + 13.0, rel=1e-12)
    scale = inverse_rms(sums, counts, 1e-5, torch.float32)
    assert torch.isfinite(scale).all() and (scale > 0).all()


def test_normalize_per_segment_keeps_other_segments_and_coordinates_finite():
    x = torch.randn(2, 6, 3)
    x[0, 1, 2] = math.nan
    seg = torch.tensor([0, 0, 0, 1, 1, 1])
    out = normalize_per_segment(x, seg, 2, 1e-5)
    assert torch.isnan(out[0, 1, 2])
    mask = torch.ones_like(out, dtype=torch.bool)
    mask[0, 1, 2] = False
    assert torch.isfinite(out[mask]).all()
    clean = x.clone()
    clean[0, 1, 2] = 0.0
    ref = normalize_per_segment(clean, seg, 2, 1e-5)
    torch.testing.assert_close(out[:, 3:], ref[:, 3:])  # the other segment is untouched
    torch.testing.assert_close(out[1], ref[1])  # and so is the other optimizee


def _net(arch: str):
    torch.manual_seed(0)
    net = create(arch.split("_")[0], **ARCHS[arch])
    if arch.startswith("general"):
        with torch.no_grad():
            net.residual_gain.fill_(0.5)  # the learned residual as well as the Adam term
    return net


@pytest.mark.parametrize("arch", list(ARCHS))
@pytest.mark.parametrize("bad", BAD)
def test_flat_step_confines_a_bad_gradient_to_its_coordinate(arch, bad):
    net = _net(arch)
    spec = ParamSpec(("a", "b"), ((4, 5), (7,)))
    params = torch.randn(2, spec.numel)
    grads = [torch.randn(2, spec.numel) * 0.1 for _ in range(3)]
    clean_state = net.init_state(params, spec)
    state = net.init_state(params, spec)
    for k, g in enumerate(grads):
        if k == 1:
            g = g.clone()
            g[0, 3] = bad
        upd, state = net.step(g, params, state)
        ref, clean_state = net.step(grads[k], params, clean_state)
        if k >= 1 and not math.isfinite(bad):
            assert not torch.isfinite(upd[0, 3]), "a NaN/inf must not be hidden"
        others = torch.cat((upd[0, :3], upd[0, 4:]))
        assert torch.isfinite(others).all()
        # the other tensor and the other optimizee are exactly as in the clean run
        torch.testing.assert_close(upd[0, 20:], ref[0, 20:])
        torch.testing.assert_close(upd[1], ref[1])


@pytest.mark.parametrize("arch", list(ARCHS))
@pytest.mark.parametrize("bad", BAD)
@pytest.mark.parametrize("n", [50, 5000])  # the torch path and (if built) the native kernels
def test_deployment_confines_a_bad_gradient_to_its_coordinate(arch, bad, n):
    net = _net(arch)
    torch.manual_seed(1)
    w, b = nn.Parameter(torch.randn(n)), nn.Parameter(torch.randn(3))
    opt = LearnedOptimizer([w, b], net)
    for k in range(3):
        w.grad, b.grad = 0.1 * torch.randn(n), 0.1 * torch.randn(3)
        if k == 1:
            w.grad[7] = bad
        opt.step()
    if not math.isfinite(bad):  # a huge finite gradient may give any update to its coordinate
        assert not torch.isfinite(w[7]), "a NaN/inf must not be hidden"
    assert torch.isfinite(torch.cat((w[:7], w[8:]))).all()
    assert torch.isfinite(b).all()
