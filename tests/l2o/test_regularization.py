"""The symmetry / norm regularizers: the paper's formula, weights, batching, and gradient flow."""

from __future__ import annotations

import pytest
import torch

from l2o.optimizers import LSTMOptimizer, ParamSpec
from l2o.regularization import (
    NormRegularizer,
    SymmetryRegularizer,
    build_regularizer,
    normalized_weights,
)
from l2o.symmetry import find_structures
from l2o.tasks import get_task


def _model_and_params(name="mnist_mlp_relu_bn"):
    model = get_task(name).make_model(seed=0)
    return model, {n: p.detach().clone() for n, p in model.named_parameters()}


def test_paper_formula_on_the_relu_batchnorm_mlp():
    model, p = _model_and_params()
    delta = {n: 1e-2 * torch.randn_like(v) for n, v in p.items()}
    reg = build_regularizer("symmetry", model, reg_mul=0.5)
    u = {n: -v for n, v in delta.items()}
    rescale = (
        (u["bn1.weight"] * p["bn1.weight"]).sum()
        + (u["bn1.bias"] * p["bn1.bias"]).sum()
        - (u["fc2.weight"] * p["fc2.weight"]).sum()
    ).abs()
    scale = (
        (u["fc1.weight"] * p["fc1.weight"]).sum() + (u["fc1.bias"] * p["fc1.bias"]).sum()
    ).abs()
    translation = u["fc2.weight"].sum().abs() + u["fc2.bias"].sum().abs()
    want = (0.5 * (rescale + scale + translation) / 3).abs()
    torch.testing.assert_close(reg(delta, p), want)
    # the sign convention does not change the value (linear constraints, absolute values)
    torch.testing.assert_close(reg({n: -v for n, v in delta.items()}, p), want)


def test_missing_kinds_are_skipped_and_weights_renormalized():
    model, p = _model_and_params("mnist_mlp_sigmoid")  # only the softmax translation
    reg = build_regularizer("symmetry", model, reg_mul=2.0)
    assert reg.weights == {"translation": pytest.approx(1.0)}
    delta = {n: torch.randn_like(v) for n, v in p.items()}
    want = 2.0 * (delta["fc2.weight"].sum().abs() + delta["fc2.bias"].sum().abs())
    torch.testing.assert_close(reg(delta, p), want)
    assert normalized_weights({"rescale": 1.0, "translation": 3.0}, ["translation"]) == {
        "translation": 4.0
    }
    with pytest.raises(ValueError, match="no positive weight"):
        normalized_weights({"rescale": 1.0, "translation": 0.0}, ["translation"])
    with pytest.raises(ValueError, match="unknown symmetry kinds"):
        normalized_weights({"rotation": 1.0}, ["translation"])


def test_sgd_updates_are_not_penalized():
    model, p = _model_and_params("mnist_mlp_relu")
    model = model.double()
    p = {n: v.double() for n, v in p.items()}
    x, y = torch.randn(16, 784, dtype=torch.float64), torch.randint(0, 10, (16,))
    torch.nn.functional.cross_entropy(model(x), y).backward()
    delta = {n: -0.1 * q.grad for n, q in model.named_parameters()}
    reg = build_regularizer("symmetry", model, reg_mul=1.0)
    assert reg(delta, p).item() < 1e-12
    sign = {n: -0.1 * q.grad.sign() for n, q in model.named_parameters()}
    assert reg(sign, p).item() > 1e-3


def test_batched_updates_are_averaged():
    model, p = _model_and_params()
    reg = build_regularizer("symmetry", model, reg_mul=1.0)
    batch = {n: torch.randn(4, *v.shape) for n, v in p.items()}
    each = torch.stack([reg({n: v[i] for n, v in batch.items()}, p) for i in range(4)])
    torch.testing.assert_close(reg(batch, p), each.mean())
    norm = build_regularizer("norm", model, reg_mul=3.0)
    each = torch.stack([norm({n: v[i] for n, v in batch.items()}, p) for i in range(4)])
    torch.testing.assert_close(norm(batch, p), each.mean())
    want = 3.0 * sum(v[0].norm() for v in batch.values())
    torch.testing.assert_close(NormRegularizer(3.0)({n: v[0] for n, v in batch.items()}, p), want)


def test_gradient_reaches_every_weight_of_the_lstm_optimizer_and_not_the_params(monkeypatch):
    monkeypatch.setenv("L2O_COMPILE", "0")  # eager kernels: same values, no compile wait
    model, _ = _model_and_params()
    spec = ParamSpec.from_module(model)
    params = {n: q.detach().clone().requires_grad_(True) for n, q in model.named_parameters()}
    flat = spec.flatten(params)
    lopt = LSTMOptimizer(hidden_size=8, output_scale=0.1)
    state = lopt.init_state(flat.detach(), spec)
    reg = build_regularizer("symmetry", model, reg_mul=1.0)
    total = flat.new_zeros(())
    grads = torch.randn_like(flat) * 1e-2
    theta = flat
    for _ in range(2):  # two steps so the recurrent weights (W_hh) matter too
        updates, state = lopt.step(grads, theta.detach(), state)
        total = total + reg(spec.unflatten(updates), spec.unflatten(theta))
        theta = theta + updates
    total.backward()
    for name, w in lopt.named_parameters():
        assert w.grad is not None and w.grad.abs().sum() > 0, name
    assert all(q.grad is None for q in params.values())  # params are detached inside


def test_build_regularizer_choices_and_errors():
    model, _ = _model_and_params()
    assert build_regularizer("none", model, reg_mul=1.0) is None
    assert build_regularizer("symmetry", model, reg_mul=0.0) is None
    assert isinstance(build_regularizer("norm", model, 0.1), NormRegularizer)
    assert isinstance(build_regularizer("symmetry", model, 0.1), SymmetryRegularizer)
    with pytest.raises(ValueError, match="unknown regularization kind"):
        build_regularizer("l2", model, 0.1)
    with pytest.raises(ValueError, match="reg_mul"):
        build_regularizer("symmetry", model, -1.0)
    sigmoid, _ = _model_and_params("mnist_mlp_sigmoid")
    with pytest.raises(ValueError, match="no symmetric structure"):
        build_regularizer("symmetry", sigmoid, 0.1, loss_kind="mse")
    only_scale = build_regularizer(
        "symmetry", model, 1.0, structures=[s for s in find_structures(model) if s.kind == "scale"]
    )
    assert list(only_scale.weights) == ["scale"]
