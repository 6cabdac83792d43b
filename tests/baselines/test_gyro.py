"""GYRO: the projection rule, its warm-up, the Adam/SGD arithmetic of the source, telemetry."""

from __future__ import annotations

import math

import pytest
import torch
from optim_testing import gradient_stream, make_params, max_relative_error, trajectory

from baselines import GYROSGD, GYROAdam


def _reference_rotation(grad, buf, step, warmup, eps, theta_base, proj_factor):
    """The GYRO README's rule for one tensor, written out plainly (float32)."""
    g, m = grad.float(), buf.float()
    norm_g, norm_m = g.norm(), m.norm()
    if step <= warmup or norm_g <= eps or norm_m <= eps:
        return grad, False
    dot = (g * m).sum()
    if dot / (norm_g * norm_m) >= -theta_base:
        return grad, False
    projected = g - proj_factor * (dot / norm_m**2) * m
    if projected.norm() <= eps:
        return grad, False
    return (projected * (norm_g / projected.norm())).to(grad.dtype), True


def _reference_gyro_adam(params, stream, lr, betas, eps, wd, theta_base, proj_factor, warmup):
    state = [{"m": torch.zeros_like(p), "v": torch.zeros_like(p), "step": 0} for p in params]
    params = [p.detach().clone() for p in params]
    for grads in stream:
        for p, g, s in zip(params, grads, state):
            g = g + 0.1 * p
            s["step"] += 1
            t = s["step"]
            g, _ = _reference_rotation(g, s["m"], t, warmup, eps, theta_base, proj_factor)
            s["m"] = betas[0] * s["m"] + (1 - betas[0]) * g
            s["v"] = betas[1] * s["v"] + (1 - betas[1]) * g * g
            m_hat = s["m"] / (1 - betas[0] ** t)
            v_hat = s["v"] / (1 - betas[1] ** t)
            p.mul_(1 - lr * wd)
            p.sub_(lr * m_hat / (v_hat.sqrt() + eps))
    return params


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(warmup_steps=3),
        dict(warmup_steps=0, theta_base=0.2, proj_factor=0.5, weight_decay=0.05),
        dict(warmup_steps=10, theta_base=0.05, proj_factor=0.8),
    ],
)
def test_gyro_adam_follows_the_readme_rule(kwargs):
    lr, betas, eps = 1e-2, (0.9, 0.999), 1e-8
    params = make_params()
    stream = gradient_stream(params, 40, oscillation=2.0)
    expected = _reference_gyro_adam(
        params,
        stream,
        lr,
        betas,
        eps,
        kwargs.get("weight_decay", 0.0),
        kwargs.get("theta_base", 0.0),
        kwargs.get("proj_factor", 1.0),
        kwargs["warmup_steps"],
    )
    actual, optimizer = trajectory(
        lambda p: GYROAdam(p, lr=lr, telemetry=True, **kwargs), steps=40, oscillation=2.0
    )
    assert max_relative_error(actual, expected) < 1e-5
    assert optimizer.get_telemetry()["projection_rate"] > 0


def test_proj_factor_zero_is_adamw():
    kwargs = dict(lr=1e-2, betas=(0.8, 0.99), eps=1e-8, weight_decay=0.1)
    gyro, _ = trajectory(lambda p: GYROAdam(p, proj_factor=0.0, warmup_steps=0, **kwargs))
    adamw, _ = trajectory(lambda p: torch.optim.AdamW(p, **kwargs))
    assert max_relative_error(gyro, adamw) < 1e-6


def test_before_warmup_it_is_adam():
    gyro, optimizer = trajectory(lambda p: GYROAdam(p, lr=1e-2), oscillation=3.0)
    adam, _ = trajectory(lambda p: torch.optim.Adam(p, lr=1e-2), oscillation=3.0)
    assert optimizer.param_groups[0]["warmup_steps"] == 1000  # round(1 / (1 - 0.999))
    assert max_relative_error(gyro, adam) < 1e-6


def test_default_warmups_follow_beta2_and_momentum():
    param = [torch.nn.Parameter(torch.ones(2))]
    assert GYROAdam(param, betas=(0.9, 0.99)).param_groups[0]["warmup_steps"] == 100
    assert GYROSGD(param).param_groups[0]["warmup_steps"] == 10
    assert GYROSGD(param, momentum=0.5).param_groups[0]["warmup_steps"] == 2


def _two_step_sgd(second_grad, **kwargs):
    """GYROSGD (lr 1) after g1 = e0, then ``second_grad``: the second step and the optimizer."""
    param = torch.nn.Parameter(torch.zeros(3))
    optimizer = GYROSGD([param], lr=1.0, momentum=0.5, warmup_steps=1, telemetry=True, **kwargs)
    param.grad = torch.tensor([1.0, 0.0, 0.0])
    optimizer.step()
    before = param.detach().clone()
    param.grad = second_grad
    optimizer.step()
    return before - param.detach(), optimizer


def test_opposing_gradient_loses_its_momentum_component_and_keeps_its_norm():
    grad = torch.tensor([-3.0, 4.0, 0.0])  # cos with m = e0 is -0.6
    applied, optimizer = _two_step_sgd(grad)
    torch.testing.assert_close(applied, torch.tensor([0.0, 5.0, 0.0]))  # |g| = 5 kept
    buffer = optimizer.state[optimizer.param_groups[0]["params"][0]]["exp_avg"]
    torch.testing.assert_close(buffer, torch.tensor([0.25, 2.5, 0.0]))  # 0.5 * 0.5 e0 + 0.5 * 5 e1
    telemetry = optimizer.get_telemetry()
    assert telemetry["projection_rate"] == 1.0
    assert telemetry["mean_cos"] == pytest.approx(-0.6)
    assert telemetry["mean_norm_g"] == pytest.approx(5.0)
    assert telemetry["mean_norm_m"] == pytest.approx(0.5)
    assert telemetry["step"] == 2


def test_partial_projection_and_threshold():
    grad = torch.tensor([-3.0, 4.0, 0.0])
    applied, _ = _two_step_sgd(grad, proj_factor=0.5)
    expected = torch.tensor([-1.5, 4.0, 0.0])
    torch.testing.assert_close(applied, expected * 5.0 / expected.norm())
    untouched, optimizer = _two_step_sgd(grad, theta_base=0.7)  # cos = -0.6 is not below -0.7
    torch.testing.assert_close(untouched, grad)
    assert optimizer.get_telemetry()["projection_rate"] == 0.0


def test_gyro_sgd_steps_with_the_gradient_not_the_buffer():
    expected, _ = trajectory(lambda p: torch.optim.SGD(p, lr=1e-2))
    actual, _ = trajectory(lambda p: GYROSGD(p, lr=1e-2, warmup_steps=10_000))
    assert max_relative_error(actual, expected) == 0.0


def test_telemetry_is_zero_when_disabled():
    _, optimizer = trajectory(lambda p: GYROAdam(p, warmup_steps=0), steps=5, oscillation=3.0)
    telemetry = optimizer.get_telemetry()
    assert telemetry["step"] == 5
    assert telemetry["projection_rate"] == telemetry["mean_norm_g"] == 0.0


def test_low_precision_parameters_are_projected_in_float32():
    params = [torch.nn.Parameter(torch.randn(8, 4, dtype=torch.bfloat16))]
    optimizer = GYROAdam(params, lr=1e-2, warmup_steps=0, telemetry=True)
    for t in range(6):
        params[0].grad = ((-1) ** t * torch.ones(8, 4) + 0.1 * torch.randn(8, 4)).bfloat16()
        optimizer.step()
    assert params[0].dtype == torch.bfloat16
    assert optimizer.state[params[0]]["exp_avg"].dtype == torch.bfloat16
    assert math.isfinite(params[0].float().sum().item())
    assert optimizer.get_telemetry()["projection_rate"] == 1.0


@pytest.mark.parametrize(
    "cls, kwargs",
    [
        (GYROAdam, dict(theta_base=1.0)),
        (GYROAdam, dict(proj_factor=1.5)),
        (GYROAdam, dict(betas=(1.0, 0.9))),
        (GYROAdam, dict(warmup_steps=-1)),
        (GYROAdam, dict(weight_decay=-0.1)),
        (GYROSGD, dict(momentum=1.0)),
        (GYROSGD, dict(eps=-1.0)),
    ],
)
def test_bad_hyperparameters_are_refused(cls, kwargs):
    with pytest.raises(ValueError):
        cls([torch.nn.Parameter(torch.ones(2))], **kwargs)
