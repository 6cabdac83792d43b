"""The contract every registered optimizer keeps: torch's Optimizer conventions (closures, param
groups, state_dict, errors), device-agnostic code, and actually training small problems."""

from __future__ import annotations

import io

import pytest
import torch
from optim_testing import WORKING_HPARAMS, make_optimizer, problem_closure, train

import baselines

NAMES = baselines.available()


def test_every_registered_optimizer_has_a_working_configuration():
    assert sorted(WORKING_HPARAMS) == NAMES


@pytest.mark.parametrize("name", NAMES)
def test_param_groups_keep_their_own_hyperparameters(name):
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 2))
    frozen_before = [p.detach().clone() for p in model[1].parameters()]
    moving_before = [p.detach().clone() for p in model[0].parameters()]
    hparams = {k: v for k, v in WORKING_HPARAMS[name].items() if k not in ("lr", "sgd_lr")}
    groups = [
        {"params": model[0].parameters(), "lr": 1e-2},
        {"params": model[1].parameters(), "lr": 0.0},
    ]
    optimizer = baselines.create(name, groups, **hparams)
    x, y = torch.randn(8, 4), torch.randn(8, 2)

    def closure():
        optimizer.zero_grad()
        loss = torch.nn.functional.mse_loss(model(x), y)
        loss.backward()
        return loss

    with torch.no_grad():
        initial = torch.nn.functional.mse_loss(model(x), y)
    assert torch.equal(optimizer.step(closure), initial)
    for _ in range(2):
        optimizer.step(closure)
    for before, param in zip(frozen_before, model[1].parameters()):
        assert torch.equal(before, param.detach()), "a group with lr=0 moved"
    assert any(not torch.equal(b, p.detach()) for b, p in zip(moving_before, model[0].parameters()))


@pytest.mark.parametrize("name", NAMES)
def test_closure_value_is_returned_unchanged(name):
    param = torch.nn.Parameter(torch.ones(3))
    optimizer = make_optimizer(name, [param])
    sentinel = torch.tensor(1.2345)

    def closure():
        param.grad = torch.full_like(param, 0.5)
        return sentinel

    assert optimizer.step(closure) is sentinel
    param.grad = torch.full_like(param, 0.5)
    assert optimizer.step() is None


def _run(optimizer, params, steps, seed):
    generator = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        for param in params:
            param.grad = torch.randn(param.shape, generator=generator) + 0.1 * param.detach()
        optimizer.step()


@pytest.mark.parametrize("name", NAMES)
def test_state_dict_round_trip_mid_run_continues_identically(name):
    torch.manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(5, 4)), torch.nn.Parameter(torch.randn(4))]
    optimizer = make_optimizer(name, params)
    _run(optimizer, params, steps=7, seed=1)

    buffer = io.BytesIO()
    torch.save(
        {"optimizer": optimizer.state_dict(), "params": [p.detach() for p in params]}, buffer
    )
    _run(optimizer, params, steps=6, seed=2)

    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    resumed_params = [torch.nn.Parameter(p.clone()) for p in saved["params"]]
    resumed = make_optimizer(name, resumed_params)
    resumed.load_state_dict(saved["optimizer"])
    _run(resumed, resumed_params, steps=6, seed=2)
    for original, again in zip(params, resumed_params):
        assert torch.equal(original.detach(), again.detach())


@pytest.mark.parametrize("name", [n for n in NAMES if n != "sgd"])
def test_sparse_gradients_are_refused(name):
    embedding = torch.nn.Embedding(10, 3, sparse=True)
    optimizer = make_optimizer(name, embedding.parameters())
    embedding(torch.tensor([1, 2])).sum().backward()
    with pytest.raises(RuntimeError, match="sparse"):
        optimizer.step()


@pytest.mark.parametrize("name", NAMES)
def test_bad_learning_rate_is_a_value_error(name):
    param = torch.nn.Parameter(torch.ones(2))
    with pytest.raises(ValueError):
        make_optimizer(name, [param], lr=-1.0)
    optimizer = make_optimizer(name, [param])
    if name not in ("sgd", "adam", "adamw"):  # ours validate groups added later, too
        with pytest.raises(ValueError):
            optimizer.add_param_group({"params": [torch.nn.Parameter(torch.ones(2))], "lr": -1.0})


@pytest.mark.parametrize("problem, steps", [("rosenbrock", 120), ("ravine", 80), ("mlp", 30)])
@pytest.mark.parametrize("name", NAMES)
def test_lowers_the_loss(name, problem, steps):
    params, loss_fn = problem_closure(problem)
    optimizer = make_optimizer(name, params, problem)
    losses = train(optimizer, loss_fn, steps)
    with torch.no_grad():
        final = loss_fn().item()
    assert final < 0.5 * losses[0], (losses[0], final)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("name", NAMES)
def test_cuda_matches_cpu(name):
    torch.manual_seed(0)
    cpu = [torch.nn.Parameter(torch.randn(64, 33)), torch.nn.Parameter(torch.randn(33))]
    cuda = [torch.nn.Parameter(p.detach().cuda()) for p in cpu]
    opt_cpu, opt_cuda = make_optimizer(name, cpu), make_optimizer(name, cuda)
    generator = torch.Generator().manual_seed(3)
    for _ in range(5):
        for a, b in zip(cpu, cuda):
            grad = torch.randn(a.shape, generator=generator)
            a.grad, b.grad = grad, grad.cuda()
        opt_cpu.step()
        opt_cuda.step()
    for a, b in zip(cpu, cuda):
        torch.testing.assert_close(b.detach().cpu(), a.detach(), rtol=1e-4, atol=1e-5)
