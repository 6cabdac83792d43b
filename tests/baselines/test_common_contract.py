"""The contract every registered optimizer keeps: torch's Optimizer conventions (closures, param
groups, state_dict, errors, complex parameters, copies and pickles), device-agnostic code, and
actually training small problems."""

from __future__ import annotations

import copy
import io
import pickle

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


@pytest.mark.parametrize("name", NAMES)
def test_the_closure_runs_once_per_step_with_gradients_enabled(name):
    param = torch.nn.Parameter(torch.ones(3))
    optimizer = make_optimizer(name, [param])
    calls = []

    def closure():
        calls.append(torch.is_grad_enabled())
        optimizer.zero_grad()
        loss = (param**2).sum()
        loss.backward()
        return loss

    with torch.no_grad():
        for _ in range(3):
            optimizer.step(closure)
    assert calls == [True, True, True]
    assert not torch.equal(param.detach(), torch.ones(3))


def _run(optimizer, params, steps, seed):
    generator = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        for param in params:
            noise = torch.randn(param.shape, generator=generator)
            param.grad = (noise + 0.1 * param.detach().float()).to(param.dtype)
        optimizer.step()


def assert_bitwise_equal(actual, expected, where="state"):
    """Nested state (dicts, lists, tensors, numbers) equal to the bit, dtypes included."""
    if isinstance(expected, torch.Tensor):
        assert isinstance(actual, torch.Tensor), where
        assert actual.dtype == expected.dtype, (where, actual.dtype, expected.dtype)
        assert torch.equal(actual, expected), where
    elif isinstance(expected, dict):
        assert actual.keys() == expected.keys(), where
        for key in expected:
            assert_bitwise_equal(actual[key], expected[key], f"{where}[{key!r}]")
    elif isinstance(expected, (list, tuple)):
        assert len(actual) == len(expected), where
        for index, (a, e) in enumerate(zip(actual, expected)):
            assert_bitwise_equal(a, e, f"{where}[{index}]")
    else:
        assert actual == expected, (where, actual, expected)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("name", NAMES)
def test_state_dict_round_trip_mid_run_continues_identically(name, dtype):
    """Save mid-run, continue; a fresh optimizer loading the save continues to the same bits
    (parameters and every state value, whose dtypes torch's load_state_dict may cast)."""
    torch.manual_seed(0)
    params = [
        torch.nn.Parameter(torch.randn(5, 4).to(dtype)),
        torch.nn.Parameter(torch.randn(4).to(dtype)),
    ]
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
    assert_bitwise_equal(resumed.state_dict(), optimizer.state_dict())


def _real(tensor):
    return torch.view_as_real(tensor) if tensor.is_complex() else tensor


# Optimizers (and settings) that refuse complex parameters, with the reason in the docstrings.
REFUSES_COMPLEX = {"lion", "lion_sgd", "gap_adam", "gap_sgdm", "sf_adamw"}
# torch's SGD (also GAP-SGDM's 'default' step) steps complex tensors in complex arithmetic: the
# same values as on the real view, up to rounding. Every other step here is bitwise the real one.
COMPLEX_ARITHMETIC = {"sgd", "gap_sgdm"}
# GAP's 'default' type is torch's step, so it takes complex parameters as torch does.
COMPLEX_CASES = [(name, {}) for name in NAMES] + [
    ("gap_adam", {"type": "default", "betas": (0.9, 0.999)}),
    ("gap_sgdm", {"type": "default", "momentum": 0.9}),
]


@pytest.mark.parametrize(
    ("name", "overrides"),
    COMPLEX_CASES,
    ids=[f"{n}{'-default' * bool(o)}" for n, o in COMPLEX_CASES],
)
def test_complex_parameters_move_as_their_real_view_or_are_refused(name, overrides):
    """torch's convention (torch.optim.Adam's): a complex parameter moves exactly as the real
    parameter ``view_as_real(p)`` would; an optimizer that cannot says so when given one."""
    generator = torch.Generator().manual_seed(0)
    complex_params = [
        torch.nn.Parameter(torch.randn(4, 3, generator=generator, dtype=torch.complex64)),
        torch.nn.Parameter(torch.randn(5, generator=generator)),
    ]
    start = [p.detach().clone() for p in complex_params]
    real_params = [torch.nn.Parameter(_real(p.detach()).clone()) for p in complex_params]
    if name in REFUSES_COMPLEX and not overrides:
        refusal = r"does not support complex parameters: .*view_as_real"
        with pytest.raises(ValueError, match=refusal):
            make_optimizer(name, complex_params)
        with pytest.raises(ValueError, match=refusal):  # nor in a group added later
            make_optimizer(name, real_params).add_param_group({"params": complex_params[:1]})
        return
    on_complex = make_optimizer(name, complex_params, **overrides)
    on_real = make_optimizer(name, real_params, **overrides)
    for _ in range(15):  # past GYRO's warmup, so projections happen
        for z, r in zip(complex_params, real_params):
            z.grad = torch.randn(z.shape, generator=generator, dtype=z.dtype) + 0.1 * z.detach()
            r.grad = _real(z.grad).clone()
        on_complex.step()
        on_real.step()
    for z, r, z0 in zip(complex_params, real_params, start):
        assert z.is_complex() == z0.is_complex()
        assert not torch.equal(z.detach(), z0)
        if name in COMPLEX_ARITHMETIC:
            torch.testing.assert_close(_real(z.detach()), r.detach(), rtol=1e-6, atol=1e-7)
        else:
            assert torch.equal(_real(z.detach()), r.detach())


def _copy_pickle(obj):
    return pickle.loads(pickle.dumps(obj))


def _copy_torch_save(obj):
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=False)


TELEMETRY = {"gyro_adam": {"telemetry": True}, "gyro_sgd": {"telemetry": True}}


@pytest.mark.parametrize(
    "copier",
    [copy.deepcopy, _copy_pickle, _copy_torch_save],
    ids=["deepcopy", "pickle", "torch.save"],
)
@pytest.mark.parametrize("name", NAMES)
def test_a_copy_steps_and_reports_like_the_original(name, copier):
    """torch's Optimizer pickles only defaults, state and param_groups; whatever else an
    optimizer keeps (caches, telemetry) must survive copy.deepcopy, pickle and torch.save."""
    torch.manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(5, 4)), torch.nn.Parameter(torch.randn(4))]
    optimizer = make_optimizer(name, params, **TELEMETRY.get(name, {}))
    _run(optimizer, params, steps=12, seed=1)
    copied_params, copied = copier((params, optimizer))
    if hasattr(optimizer, "get_telemetry"):
        assert copied.get_telemetry() == optimizer.get_telemetry()
    _run(optimizer, params, steps=4, seed=2)
    _run(copied, copied_params, steps=4, seed=2)
    for original, again in zip(params, copied_params):
        assert torch.equal(original.detach(), again.detach())
    assert_bitwise_equal(copied.state_dict(), optimizer.state_dict())
    if hasattr(optimizer, "get_telemetry"):
        assert copied.get_telemetry() == optimizer.get_telemetry()


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
