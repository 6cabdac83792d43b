"""Antithetic truncated ES: exact on a meta-loss that is quadratic in φ, zeroth-order term
cancelled, options checked. ``quadratic_problem`` is shared with ``test_pes``."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from torch import nn

import l2o.optimizers as lo
from l2o.tasks.task import Task
from meta_train.configuration.engine import ConfigError
from meta_train.estimators import particles as pt
from meta_train.estimators.es import AntitheticES, ESOptions, antithetic_estimate
from meta_train.estimators.truncated_bptt import second_order
from meta_train.inner_loop.unroll import UnrollConfig, functional_optimizee, init_inner_state


class _Linear(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.randn(dim))

    def forward(self, x):
        return x @ self.w


@dataclasses.dataclass(frozen=True)
class QuadraticTask(Task):
    """Least squares ½·mean((x·w − y)²): the optimizee loss is quadratic in its parameters."""

    @staticmethod
    def loss(pred, y):
        return 0.5 * ((pred - y) ** 2).mean()


class FixedBatch:
    """The same minibatch at every step: the unrolled losses are deterministic in φ."""

    def __init__(self, x, y) -> None:
        self.x, self.y = x, y

    def next(self):
        return self.x, self.y


DIM = 4


def quadratic_problem(tasks: int = 2, seed: int = 0):
    """``(lopt, optimizee, inner, samplers)``: a linear learned optimizer (MLP with no hidden
    layer and ``exp_mult = 0``, so its update is linear in φ) on least-squares optimizees."""
    torch.manual_seed(seed)
    task = QuadraticTask(f"quad{seed}", "mnist", lambda shape, classes: _Linear(DIM), 16)
    lopt = lo.create("mlp", hidden_sizes=(), exp_mult=0.0, step_mult=0.1, init_scale=1.0)
    inner = init_inner_state(task, lopt, list(range(tasks)), "cpu")
    gen = torch.Generator().manual_seed(seed)
    samplers = []
    for _ in range(tasks):
        x = torch.randn(16, DIM, generator=gen)
        samplers.append(FixedBatch(x, x @ torch.randn(DIM, generator=gen)))
    return lopt, functional_optimizee(task, "cpu"), inner, samplers


def flat_grad(lopt) -> torch.Tensor:
    spec = pt.meta_spec(lopt)
    named = dict(lopt.named_parameters())
    grads = {n: named[n].grad if named[n].grad is not None else torch.zeros_like(named[n])
             for n in spec.names}  # fmt: skip
    return spec.flatten(grads)


def exact_gradient(lopt, optimizee, inner, samplers, steps: int) -> torch.Tensor:
    """d(mean over tasks of the summed losses)/dφ through the whole unroll (second order)."""
    lopt.zero_grad(set_to_none=True)
    cfg = UnrollConfig(length=steps, meta_loss="sum", estimator="second")
    second_order(lopt, optimizee, inner, samplers, cfg)
    out = flat_grad(lopt)
    lopt.zero_grad(set_to_none=True)
    return out


def test_es_loss_differences_are_exact_directional_derivatives_on_a_quadratic():
    """K = 2: L(φ) = l(θ₀) + l(θ₀ + u(φ)) with u linear in φ is quadratic, so every antithetic
    pair's L⁺ − L⁻ equals 2 εᵀ∇L exactly: the pair cancels L(φ) and the curvature."""
    lopt, optimizee, inner, samplers = quadratic_problem(tasks=1)
    g = exact_gradient(lopt, optimizee, inner, samplers, steps=2)
    est = AntitheticES(UnrollConfig(length=2, meta_loss="sum"), sigma=0.1, num_pairs=128)
    eps_gen = torch.Generator().manual_seed(3)
    eps = torch.randn(128, g.numel(), generator=eps_gen) * 0.1
    tasks = pt.particle_tasks(1, 128, "cpu")
    pop = pt.Population.replicate(lopt, inner.params, inner.buffers, inner.opt_state, tasks)
    _, metas, finite = est._run(lopt, optimizee, inner, pop, eps, samplers)
    assert bool(finite.all())
    delta = metas[:128] - metas[128:]
    torch.testing.assert_close(delta, 2 * eps @ g, rtol=1e-3, atol=1e-5)


def test_es_average_matches_the_exact_gradient_on_a_quadratic():
    """The mean of M per-pair estimates ε εᵀg/σ² has relative error ≈ √((D+1)/M); we allow
    3× that (the seed is fixed, so the test is deterministic)."""
    lopt, optimizee, inner, samplers = quadratic_problem()
    g = exact_gradient(lopt, optimizee, inner, samplers, steps=2)
    pairs = 4096
    est = AntitheticES(UnrollConfig(length=2, meta_loss="sum"), sigma=0.1, num_pairs=pairs)
    result, new_inner = est.estimate(lopt, optimizee, inner, samplers, seed=1)
    assert result.finite and new_inner.step == 2
    estimate = flat_grad(lopt)
    tol = 3 * math.sqrt((g.numel() + 1) / (2 * pairs))
    rel = float((estimate - g).norm() / g.norm())
    assert rel < tol, (rel, tol)
    assert result.metrics["es/estimate_norm"] == pytest.approx(float(estimate.norm()), rel=1e-5)
    assert result.metrics["es/particle_steps"] == 2 * pairs * 2 * 2


def test_antithetic_pairs_cancel_the_zeroth_order_term():
    """Adding a constant to every loss leaves the antithetic estimate unchanged; a one-sided
    estimate ε·L⁺/σ² would move by ε·c/σ²."""
    gen = torch.Generator().manual_seed(0)
    eps = torch.randn(256, 10, generator=gen)
    lp, ln = torch.rand(256, generator=gen), torch.rand(256, generator=gen)
    base, _ = antithetic_estimate(eps, lp, ln, sigma=0.5)
    shifted, _ = antithetic_estimate(eps, lp + 1000.0, ln + 1000.0, sigma=0.5)
    torch.testing.assert_close(shifted, base, rtol=0, atol=1e-3)
    one_sided = eps.t() @ (lp + 1000.0) / 256 / 0.25
    assert float((one_sided - base).norm()) > 100.0


def test_clip_and_sign_options():
    eps = torch.ones(4, 1)
    lp = torch.tensor([3.0, 0.1, -2.0, 0.0])
    ln = torch.zeros(4)
    grad, stats = antithetic_estimate(eps, lp, ln, sigma=1.0, clip=1.0)
    assert float(stats["clipped_fraction"]) == 0.5
    assert float(grad) == pytest.approx((1.0 + 0.1 - 1.0 + 0.0) / 2 / 4)
    grad, _ = antithetic_estimate(eps, lp, ln, sigma=1.0, sign=2.0)
    assert float(grad) == pytest.approx((2.0 + 2.0 - 2.0 + 0.0) / 2 / 4)


@pytest.mark.parametrize(
    "kwargs",
    [{"sigma": 0.0}, {"num_pairs": 0}, {"clip_delta_loss": -1.0}, {"objective": "nope"}],
)
def test_options_are_validated(kwargs):
    with pytest.raises(ConfigError, match=f"unroll.estimator_kwargs.{next(iter(kwargs))}"):
        ESOptions(**kwargs)
    with pytest.raises(ConfigError, match="takes"):
        AntitheticES(UnrollConfig(), sigmaa=0.1)


def test_non_finite_truncation_gives_no_gradient():
    lopt, optimizee, inner, samplers = quadratic_problem()
    samplers[1] = FixedBatch(samplers[1].x * float("nan"), samplers[1].y)
    est = AntitheticES(UnrollConfig(length=2, meta_loss="sum"), sigma=0.1)
    result, _ = est.estimate(lopt, optimizee, inner, samplers)
    assert not result.finite
    assert all(p.grad is None for p in lopt.parameters())


def test_es_rejects_a_regularizer():
    lopt, optimizee, inner, samplers = quadratic_problem()
    est = AntitheticES(UnrollConfig(length=2))
    with pytest.raises(ConfigError, match="regularization"):
        est.estimate(lopt, optimizee, inner, samplers, lambda u, p: u)
