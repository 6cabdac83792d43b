"""HysteroGrad: the metric, the path length, the cooling and the barrier, and that a step is taken
exactly when the preconditioned norm clears the barrier."""

from __future__ import annotations

import math

import pytest
import torch
from optim_testing import gradient_stream, make_params, max_relative_error

from baselines import HIOptimizer, HysteroGrad, HysteroTelemetry

DEFAULTS = dict(
    lr=1e-3,
    stiffening_factor=0.01,
    beta=0.99,
    epsilon=1e-7,
    cooling_rate=0.99,
    initial_temp=1.0,
    metric_scale=1.0,
    adaptive_threshold=True,
    grad_clip=None,
    hysteresis_scale=1.0,
)


def _reference(params, stream, **kwargs):
    """The algorithm of the module docstring, one group, written out in float64 scalars."""
    h = {**DEFAULTS, **kwargs}
    params = [p.detach().clone() for p in params]
    metrics = [torch.zeros_like(p) for p in params]
    tau, temp, energy = 0.0, h["initial_temp"], 0.0
    statuses = []
    for grads in stream:
        steps = []
        for p, g, metric in zip(params, grads, metrics):
            g = g + 0.1 * p
            metric.mul_(h["beta"]).add_(h["metric_scale"] * (1 - h["beta"]) * g * g)
            steps.append(g / (metric.sqrt() + h["epsilon"]))
        norm = math.sqrt(sum(float((s * s).sum()) for s in steps))
        clip = min(1.0, h["grad_clip"] / (norm + 1e-6)) if h["grad_clip"] else 1.0
        norm *= clip
        tau += h["lr"] * norm
        temp *= h["cooling_rate"]
        energy = h["beta"] * energy + (1 - h["beta"]) * norm
        barrier = h["stiffening_factor"] * math.sqrt(tau) * (1 - min(max(temp, 0.0), 1.0))
        barrier *= h["hysteresis_scale"] * ((energy + 1e-8) if h["adaptive_threshold"] else 1.0)
        liquid = norm > barrier
        statuses.append("Liquid" if liquid else "Frozen")
        if liquid:
            for p, s in zip(params, steps):
                p.sub_(h["lr"] * clip * s)
    return params, statuses


def _run(params, stream, **kwargs):
    optimizer = HIOptimizer(params, **kwargs)
    statuses = []
    for grads in stream:
        for p, g in zip(params, grads):
            p.grad = g + 0.1 * p.detach()
        optimizer.step()
        statuses.append(optimizer.telemetry.status)
    return [p.detach().clone() for p in params], statuses, optimizer


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(lr=0.05),
        dict(lr=0.05, metric_scale=300.0, stiffening_factor=0.5),
        dict(lr=0.05, grad_clip=1.0, stiffening_factor=2.0, adaptive_threshold=False),
        dict(lr=0.02, grad_clip=100.0, cooling_rate=0.9, hysteresis_scale=3.0),
    ],
)
def test_follows_the_algorithm(kwargs):
    params = make_params(dtype=torch.float64)
    stream = gradient_stream(params, 60, oscillation=1.0)
    expected, expected_statuses = _reference(params, stream, **kwargs)
    actual, statuses, _ = _run(params, stream, **kwargs)
    assert statuses == expected_statuses
    assert max_relative_error(actual, expected) < 1e-5


def test_a_step_is_skipped_exactly_when_the_barrier_says_so():
    params = make_params()
    optimizer = HysteroGrad(params, lr=0.05, stiffening_factor=5.0, adaptive_threshold=False)
    statuses = ""
    for t, grads in enumerate(gradient_stream(params, 70)):
        if t == 60:
            optimizer.shock(0.1)
        before = [p.detach().clone() for p in params]
        tau_before = optimizer.state[params[0]].get("group_tau", torch.tensor(0.0)).item()
        for p, g in zip(params, grads):
            p.grad = g
        optimizer.step()
        moved = any(not torch.equal(b, p.detach()) for b, p in zip(before, params))
        status, norm, barrier = optimizer.telemetry
        assert moved == (norm > barrier) == (status == "Liquid")
        assert optimizer.state[params[0]]["group_tau"].item() > tau_before  # tau always grows
        statuses += status[0]
    assert statuses[:30] == "L" * 30  # the barrier grows with the path length
    assert statuses[50:60] == "F" * 10  # until it freezes the parameters
    assert statuses[60] == "L"  # and a shock liquefies them


def test_shock_shortens_the_path_and_warms_up():
    param = torch.nn.Parameter(torch.ones(4))
    optimizer = HIOptimizer([param], lr=0.1, cooling_rate=0.5)
    for _ in range(5):
        param.grad = torch.ones(4)
        optimizer.step()
    state = optimizer.state[param]
    tau = state["group_tau"].item()
    assert state["group_temp"].item() == pytest.approx(0.5**5)
    optimizer.shock(0.25)
    assert state["group_tau"].item() == pytest.approx(0.25 * tau)
    assert state["group_temp"].item() == pytest.approx(0.2)


def test_metric_is_updated_while_frozen():
    param = torch.nn.Parameter(torch.zeros(3))
    optimizer = HIOptimizer([param], stiffening_factor=1e9, adaptive_threshold=False)
    for _ in range(3):
        param.grad = torch.full((3,), 2.0)
        optimizer.step()
    assert optimizer.telemetry.status == "Frozen"
    assert torch.equal(param.detach(), torch.zeros(3))
    expected = (1 - 0.99**3) * 4.0
    torch.testing.assert_close(optimizer.state[param]["G"], torch.full((3,), expected))


def test_step_returns_the_loss_and_telemetry_is_exposed():
    param = torch.nn.Parameter(torch.tensor([1.0, -2.0]))
    optimizer = HIOptimizer([param], lr=0.1)
    assert optimizer.telemetry is None and optimizer.get_telemetry() is None

    def closure():
        optimizer.zero_grad()
        loss = (param**2).sum()
        loss.backward()
        return loss

    loss = optimizer.step(closure)
    assert loss.item() == pytest.approx(5.0)
    assert isinstance(optimizer.telemetry, HysteroTelemetry)
    assert set(optimizer.get_telemetry()) == {"status", "grad_norm", "barrier"}


def test_telemetry_averages_over_all_groups():
    moving, idle = torch.nn.Parameter(torch.ones(2)), torch.nn.Parameter(torch.ones(2))
    optimizer = HIOptimizer([{"params": [moving]}, {"params": [idle]}], lr=0.1)
    moving.grad = torch.ones(2)
    optimizer.step()
    # first step: G = 0.01 g², s = g / (0.1|g| + eps) = ±10 per coordinate, |s| = sqrt(200)
    assert optimizer.telemetry.grad_norm == pytest.approx(math.sqrt(200) / 2, rel=1e-5)
    assert optimizer.telemetry.status == "Liquid"
    assert torch.equal(idle.detach(), torch.ones(2))


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(beta=1.0),
        dict(epsilon=0.0),
        dict(cooling_rate=1.5),
        dict(metric_scale=0.0),
        dict(grad_clip=-1.0),
        dict(stiffening_factor=-0.1),
        dict(initial_temp=-1.0),
    ],
)
def test_bad_hyperparameters_are_refused(kwargs):
    with pytest.raises(ValueError):
        HIOptimizer([torch.nn.Parameter(torch.ones(2))], **kwargs)
    with pytest.raises(ValueError):
        HIOptimizer([torch.nn.Parameter(torch.ones(2))]).shock(-1.0)
