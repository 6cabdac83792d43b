"""Lion (Chen et al. 2023) and the Lion–SGD interpolation."""

from __future__ import annotations

import pytest
import torch
from optim_testing import gradient_stream, make_params, max_relative_error, trajectory

from baselines import Lion, LionSGD


def _reference_lion(params, stream, lr, betas, weight_decay):
    """Chen et al.'s update, written out: sign of the interpolation, decoupled decay."""
    params = [p.detach().clone() for p in params]
    momenta = [torch.zeros_like(p) for p in params]
    for grads in stream:
        for p, g, m in zip(params, grads, momenta):
            g = g + 0.1 * p
            c = betas[0] * m + (1 - betas[0]) * g
            p.mul_(1 - lr * weight_decay).sub_(lr * torch.sign(c))
            m.mul_(betas[1]).add_((1 - betas[1]) * g)
    return params


def test_lion_follows_the_paper():
    kwargs = dict(lr=1e-2, betas=(0.9, 0.99), weight_decay=0.1)
    params = make_params()
    expected = _reference_lion(params, gradient_stream(params, 50), **kwargs)
    actual, _ = trajectory(lambda p: Lion(p, **kwargs))
    assert max_relative_error(actual, expected) < 1e-6


def test_every_coordinate_moves_by_exactly_lr():
    param = torch.nn.Parameter(torch.zeros(100))
    optimizer = Lion([param], lr=0.01)
    param.grad = torch.randn(100)
    optimizer.step()
    torch.testing.assert_close(param.detach().abs(), torch.full((100,), 0.01))
    assert torch.equal(param.detach().sign(), -param.grad.sign())


def test_defaults_are_the_papers():
    group = Lion([torch.nn.Parameter(torch.ones(1))]).param_groups[0]
    assert (group["lr"], group["betas"], group["weight_decay"]) == (1e-4, (0.9, 0.99), 0.0)


def test_alpha_one_is_lion_to_the_bit():
    kwargs = dict(lr=1e-2, betas=(0.8, 0.95), weight_decay=0.2)
    lion, _ = trajectory(lambda p: Lion(p, **kwargs))
    mixed, _ = trajectory(lambda p: LionSGD(p, alpha=1.0, sgd_lr=0.3, momentum=0.9, **kwargs))
    for a, b in zip(lion, mixed):
        assert torch.equal(a, b)


@pytest.mark.parametrize(
    "sgd_kwargs",
    [
        dict(),
        dict(momentum=0.9),
        dict(momentum=0.9, nesterov=True),
        dict(momentum=0.5, dampening=0.3),
    ],
)
def test_alpha_zero_is_torch_sgd_to_the_bit(sgd_kwargs):
    sgd, _ = trajectory(lambda p: torch.optim.SGD(p, lr=0.05, **sgd_kwargs))
    mixed, _ = trajectory(lambda p: LionSGD(p, alpha=0.0, lr=1e-3, sgd_lr=0.05, **sgd_kwargs))
    for a, b in zip(sgd, mixed):
        assert torch.equal(a, b)


def test_interpolation_adds_the_weighted_updates_of_both_parts():
    alpha = 0.3
    params = make_params()
    lion_params = [torch.nn.Parameter(p.detach().clone()) for p in params]
    sgd_params = [torch.nn.Parameter(p.detach().clone()) for p in params]
    mixed = LionSGD(params, alpha=alpha, lr=1e-2, weight_decay=0.1, sgd_lr=0.1, momentum=0.9)
    lion = Lion(lion_params, lr=1e-2, weight_decay=0.1)
    sgd = torch.optim.SGD(sgd_params, lr=0.1, momentum=0.9)
    for grads in gradient_stream(params, 10):
        start = [p.detach().clone() for p in params]
        for group in (params, lion_params, sgd_params):
            for p, s, g in zip(group, start, grads):
                p.data.copy_(s)
                p.grad = g.clone()
        mixed.step()
        lion.step()
        sgd.step()
        for p, s, pl, ps in zip(params, start, lion_params, sgd_params):
            expected = s + alpha * (pl.detach() - s) + (1 - alpha) * (ps.detach() - s)
            torch.testing.assert_close(p.detach(), expected, rtol=1e-6, atol=1e-7)


def test_sgd_lr_defaults_to_lr():
    sgd, _ = trajectory(lambda p: torch.optim.SGD(p, lr=0.05))
    mixed, _ = trajectory(lambda p: LionSGD(p, alpha=0.0, lr=0.05))
    assert max_relative_error(mixed, sgd) == 0.0


@pytest.mark.parametrize(
    "cls, kwargs",
    [
        (Lion, dict(betas=(1.1, 0.9))),
        (Lion, dict(weight_decay=-1.0)),
        (LionSGD, dict(alpha=1.5)),
        (LionSGD, dict(alpha=-0.1)),
        (LionSGD, dict(sgd_lr=-1.0)),
        (LionSGD, dict(momentum=1.0)),
        (LionSGD, dict(nesterov=True)),
    ],
)
def test_bad_hyperparameters_are_refused(cls, kwargs):
    with pytest.raises(ValueError):
        cls([torch.nn.Parameter(torch.ones(2))], **kwargs)
