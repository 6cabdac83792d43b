"""The tasks beyond MNIST-class MLPs run in meta-training's inner loop (``torch.func`` over B
optimizees at once), as the classic task does."""

from __future__ import annotations

import pytest
import torch

import l2o.optimizers as lo
from l2o.tasks import get_task
from l2o.training import data_seed
from meta_train.estimators import make_estimator, meta_step_gradient
from meta_train.inner_loop.families import AugmentationSpec, AugmentedOptimizee, draw_run
from meta_train.inner_loop.unroll import UnrollConfig, functional_optimizee, init_inner_state

# (task, dataset, optimizees in lockstep, estimator): B = 2 runs the vmapped path, B = 1 plain
# autograd; second order differentiates through the optimizees' gradients (Hessian terms)
CASES = [
    (name, dataset, batch, estimator)
    for name, dataset, batch in [
        ("stdlib_lm_transformer", None, 2),
        ("digits_mlp_relu", None, 2),
        ("digits_mlp_tanh", None, 2),
        ("mnist_mlp_wide", "mnist5k", 1),
    ]
    for estimator in (["first"] if name == "mnist_mlp_wide" else ["first", "second"])
]


@pytest.mark.parametrize(("name", "dataset", "batch", "estimator"), CASES)
def test_two_inner_steps_of_meta_training(name, dataset, batch, estimator):
    if name == "mnist_mlp_wide" and estimator == "second":
        pytest.skip("second order through a million coordinates: slow, and nothing new")
    task = get_task(name, dataset=dataset)
    data = task.load_data()
    torch.manual_seed(0)
    lopt = lo.create("mlp", hidden_sizes=(8,))  # small: the optimizee is what is tested
    cfg = UnrollConfig(length=2, estimator=estimator)
    seeds = list(range(batch))
    inner = init_inner_state(task, lopt, seeds, "cpu")
    samplers = [data.sampler(task.batch_size, data_seed(s)) for s in seeds]
    result, after = meta_step_gradient(
        lopt, task, inner, samplers, cfg, estimator=make_estimator(cfg)
    )
    assert result.finite and after.step == 2 and result.inner_losses.shape == (batch, 2)
    assert not torch.equal(after.params, inner.params)
    grads = [p.grad for p in lopt.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    assert sum(float(g.abs().sum()) for g in grads) > 0


def test_augmented_language_models_are_vmapped_with_their_own_draws():
    """A family's per-run reparameterization, loss scale and batch mask over [B, T, V] logits:
    the loss is c times the masked mean over examples of each window's mean over positions."""
    task = get_task("stdlib_lm_transformer")
    base = functional_optimizee(task, "cpu")
    aug = AugmentationSpec(param_scale=(0.5, 2.0), loss_scale=(0.5, 2.0), batch_sizes=(8, 32))
    draws = [draw_run(aug, base.spec, 32, 256, 1000, 0, slot, 0) for slot in range(2)]
    optimizee = AugmentedOptimizee(base, draws, "cpu")
    params, buffers = optimizee.init_params([0, 1])
    x, y = task.load_data().sampler(32, 0).next()
    xs, ys = torch.stack([x, x]), torch.stack([y, y])
    loss, grad = optimizee.loss_and_grad(params, buffers, xs, ys)
    assert loss.shape == (2,) and grad.shape == params.shape and torch.isfinite(grad).all()
    model = task.make_model(0)
    for row, d in enumerate(draws):
        named = base.spec.unflatten(params[row] * d.scale)
        logits = torch.func.functional_call(model, named, (x,))
        per_window = torch.nn.functional.cross_entropy(
            logits.transpose(1, 2), y, reduction="none"
        ).mean(1)
        want = d.loss_scale * (per_window * d.mask).sum() / d.mask.sum()
        torch.testing.assert_close(loss[row], want, rtol=1e-5, atol=1e-6)
