"""LARS momentum: the per-tensor trust-ratio update, its relative step, scale invariance,
decoupled weight decay, validation and non-finite gradients."""

from __future__ import annotations

import math

import pytest
import torch

from baselines import LARSMomentum

STEPS = 20


def _model_params(dtype=torch.float64):
    """A 2-layer MLP's tensors: two weight matrices, a zero bias (the floor acts on it for the
    whole run) and a small random bias."""
    generator = torch.Generator().manual_seed(0)
    shapes = {"w1": (8, 5), "b1": (8,), "w2": (3, 8), "b2": (3,)}
    params = {
        name: torch.randn(shape, generator=generator, dtype=dtype) * 0.5
        for name, shape in shapes.items()
    }
    params["b1"].zero_()
    params["b2"].mul_(0.01)
    return [torch.nn.Parameter(p) for p in params.values()]


def _data(dtype=torch.float64):
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(32, 5, generator=generator, dtype=dtype)
    y = torch.randn(32, 3, generator=generator, dtype=dtype)
    return x, y


def _loss(params, scale=1.0):
    w1, b1, w2, b2 = params
    x, y = _data(w1.dtype)
    out = torch.tanh(x @ w1.T + b1) @ w2.T + b2
    return scale * torch.nn.functional.mse_loss(out, y)


def _rms(t):
    return t.pow(2).mean().sqrt().item()


def _reference(params, steps, lr, momentum, floor, weight_decay, scale=1.0):
    """The update written out tensor by tensor, with the scales as Python floats."""
    params = [p.detach().clone().requires_grad_() for p in params]
    momenta = [torch.zeros_like(p) for p in params]
    for _ in range(steps):
        grads = torch.autograd.grad(_loss(params, scale), params)
        with torch.no_grad():
            for p, g, m in zip(params, grads, momenta):
                p_rms = max(_rms(p), floor)
                m.copy_(momentum * m + (1 - momentum) * g)
                step = lr * p_rms / max(_rms(m), 1e-30) * m
                p.copy_(p * (1 - lr * weight_decay) - step)
    return [p.detach() for p in params]


def _run(optimizer, params, steps, scale=1.0):
    for _ in range(steps):
        optimizer.zero_grad()
        _loss(params, scale).backward()
        optimizer.step()
    return [p.detach().clone() for p in params]


def _max_rel(actual, expected):
    return max(((a - e).abs().max() / e.abs().max()).item() for a, e in zip(actual, expected))


@pytest.mark.parametrize(
    "hparams",
    [
        dict(lr=0.04, momentum=0.9, floor=1e-2, weight_decay=0.0),
        dict(lr=0.1, momentum=0.5, floor=1e-3, weight_decay=0.3),
        dict(lr=0.02, momentum=0.0, floor=0.5, weight_decay=0.0),
    ],
)
def test_matches_a_per_tensor_loop(hparams):
    params = _model_params()
    expected = _reference(params, STEPS, **hparams)
    actual = _run(LARSMomentum(params, **hparams), params, STEPS)
    assert _max_rel(actual, expected) < 1e-12
    # the zero bias stayed below the default floor, so the floor set its steps
    if hparams["floor"] == 1e-2:
        assert 0 < _rms(actual[1]) < hparams["floor"]


def test_defaults():
    group = LARSMomentum([torch.nn.Parameter(torch.ones(1))]).param_groups[0]
    assert {k: group[k] for k in ("lr", "momentum", "floor", "weight_decay")} == dict(
        lr=0.04, momentum=0.9, floor=1e-2, weight_decay=0.0
    )


def test_first_step_changes_each_tensor_by_lr_relative_to_its_scale():
    """From m = 0 the step is -lr · max(RMS(θ), floor) · g / RMS(g), whatever g's scale."""
    lr, floor = 0.07, 1e-2
    generator = torch.Generator().manual_seed(2)
    params = [
        torch.nn.Parameter(torch.randn(6, 4, generator=generator, dtype=torch.float64) * 3.0),
        torch.nn.Parameter(torch.zeros(5, dtype=torch.float64)),  # RMS 0: the floor
        torch.nn.Parameter(torch.full((7,), 1e-4, dtype=torch.float64)),  # below the floor
        torch.nn.Parameter(torch.randn(2, 3, 2, generator=generator, dtype=torch.float64)),
    ]
    before = [p.detach().clone() for p in params]
    optimizer = LARSMomentum(params, lr=lr, floor=floor)
    for index, p in enumerate(params):
        p.grad = torch.randn(p.shape, generator=generator, dtype=p.dtype) * 10.0**index
    optimizer.step()
    for p, p0 in zip(params, before):
        delta = p.detach() - p0
        assert _rms(delta) / max(_rms(p0), floor) == pytest.approx(lr, rel=1e-12)
        cosine = -(delta * p.grad).sum() / (delta.norm() * p.grad.norm())
        assert cosine.item() == pytest.approx(1.0, rel=1e-12)


def test_scaling_the_loss_leaves_the_trajectory_unchanged():
    params = _model_params()
    scaled = [torch.nn.Parameter(p.detach().clone()) for p in params]
    plain = _run(LARSMomentum(params), params, STEPS)
    loud = _run(LARSMomentum(scaled), scaled, STEPS, scale=1000.0)
    assert _max_rel(loud, plain) < 1e-12


def test_weight_decay_is_decoupled_and_measured_on_the_old_parameter():
    """With decay the step is the undecayed step minus lr · wd · θ_old, and the momentum never
    sees the decay."""
    lr, wd = 0.05, 0.4
    params = _model_params()
    decayed = [torch.nn.Parameter(p.detach().clone()) for p in params]
    plain_opt, decayed_opt = LARSMomentum(params, lr=lr), LARSMomentum(decayed, lr=lr)
    decayed_opt_wd = LARSMomentum(decayed, lr=lr, weight_decay=wd)
    _run(plain_opt, params, 3)
    _run(decayed_opt, decayed, 3)
    decayed_opt_wd.load_state_dict(decayed_opt.state_dict())
    decayed_opt_wd.param_groups[0]["weight_decay"] = wd
    for p, q in zip(params, decayed):
        assert torch.equal(p.detach(), q.detach())
    before = [p.detach().clone() for p in params]
    _run(plain_opt, params, 1)
    _run(decayed_opt_wd, decayed, 1)
    for p, q, p0 in zip(params, decayed, before):
        torch.testing.assert_close(q.detach(), p.detach() - lr * wd * p0, rtol=0, atol=1e-14)
        assert torch.equal(plain_opt.state[p]["exp_avg"], decayed_opt_wd.state[q]["exp_avg"])


def test_zero_gradient_gives_a_zero_step():
    param = torch.nn.Parameter(torch.ones(4))
    optimizer = LARSMomentum([param])
    param.grad = torch.zeros(4)
    optimizer.step()
    assert torch.equal(param.detach(), torch.ones(4))


@pytest.mark.parametrize(
    "name, value",
    [
        ("lr", -1e-3),
        ("lr", math.nan),
        ("momentum", 1.0),
        ("momentum", -0.1),
        ("floor", 0.0),
        ("floor", -1e-2),
        ("floor", math.inf),
        ("weight_decay", -0.1),
        ("momentum", "0.9"),
        ("floor", True),
    ],
)
def test_bad_hyperparameters_raise(name, value):
    key = "learning rate" if name == "lr" else name
    with pytest.raises(ValueError, match=f"Invalid {key}"):
        LARSMomentum([torch.nn.Parameter(torch.ones(2))], **{name: value})
    optimizer = LARSMomentum([torch.nn.Parameter(torch.ones(2))])
    with pytest.raises(ValueError, match=f"Invalid {key}"):
        optimizer.add_param_group({"params": [torch.nn.Parameter(torch.ones(2))], name: value})


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_a_non_finite_gradient_gives_nan_not_numbers(bad):
    params = [torch.nn.Parameter(torch.ones(3, 2)), torch.nn.Parameter(torch.ones(4))]
    optimizer = LARSMomentum(params)
    params[0].grad = torch.ones(3, 2)
    params[0].grad[1, 1] = bad
    params[1].grad = torch.ones(4)
    optimizer.step()
    assert torch.isnan(params[0].detach()).all()
    assert torch.isfinite(params[1].detach()).all()  # the other tensor's step is its own
    assert not torch.equal(params[1].detach(), torch.ones(4))


def test_half_precision_norms_do_not_overflow():
    """A half tensor whose norm (9e4) exceeds float16's range still steps by lr: norms
    accumulate and are kept in float32; the parameter and its momentum stay float16."""
    param = torch.nn.Parameter(torch.full((300, 300), 300.0, dtype=torch.float16))
    optimizer = LARSMomentum([param], lr=0.01)
    param.grad = torch.full_like(param, 1.0)
    optimizer.step()
    assert param.dtype == optimizer.state[param]["exp_avg"].dtype == torch.float16
    torch.testing.assert_close(param.detach().float(), torch.full((300, 300), 297.0))
