"""``general``'s fused deployment step of ``lars`` when the step factor lr · max(RMS(θ), floor) /
RMS(m) is beyond float32 (parameters grown huge under a too-large step size while the momentum
vanishes, as saturated sigmoids do): it steps as the flat step does, instead of raising
"value cannot be converted to type float without overflow" (an evaluation tuning the nominal
term's step size crashed there at lr ≥ 1)."""

from __future__ import annotations

import pytest
import torch
from flat_step_check import assert_deployment_equals_flat_step

import l2o.optimizers as lo
from l2o.optimizers.native import NATIVE_MIN_ROWS, native_kernels


@pytest.mark.parametrize(
    "input_scale", [1e-19, 1e-20], ids=["lr·c beyond float32", "c beyond float32"]
)
def test_lars_step_beyond_float32_is_the_flat_steps(input_scale):
    """Weights of RMS ~1e28 and inputs of 1e-19 (1e-20) give c ~2e37 (1e39): lr · c is beyond
    float32 with lr 40 (c itself with 1e-20: the flat step's c is infinite, so is the step)."""
    if native_kernels() is None:
        pytest.skip("the fused step needs the C++ kernels")
    torch.manual_seed(0)
    net = lo.create("general", nominal="lars", lars_lr=40.0, total_steps=10).eval()
    model = torch.nn.Linear(NATIVE_MIN_ROWS, 1, bias=False)
    with torch.no_grad():
        model.weight.mul_(1e30)
    x = input_scale * torch.randn(4, NATIVE_MIN_ROWS)
    assert_deployment_equals_flat_step(
        net, model, x, torch.zeros(4, 1), chunk_size=4096, steps=1, rtol=1e-5, atol=0
    )
