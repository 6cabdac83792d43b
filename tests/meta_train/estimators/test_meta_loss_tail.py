"""``unroll.meta_loss_tail`` in the particle estimators: each particle's meta-loss is its task's
tail weight (the run's step ``t`` and ``horizon`` from the optimizer state) times the plain one;
a truncation outside every task's tail gives no gradient; optimizers without a horizon are
refused."""

from __future__ import annotations

import pytest
import torch
from test_es import FixedBatch, QuadraticTask, _Linear, flat_grad, quadratic_problem

import l2o.optimizers as lo
from meta_train.configuration.engine import ConfigError
from meta_train.estimators import particles as pt
from meta_train.estimators.es import AntitheticES
from meta_train.estimators.pes import PES
from meta_train.inner_loop.truncation import with_horizons
from meta_train.inner_loop.unroll import UnrollConfig, functional_optimizee, init_inner_state


def general_problem(horizons: list[int]):
    """Two least-squares tasks trained by ``general``, told the run lengths ``horizons``."""
    torch.manual_seed(0)
    task = QuadraticTask("quad-tail", "mnist", lambda shape, classes: _Linear(4), 16)
    lopt = lo.create("general", hidden_sizes=(4,), total_steps=8)
    inner = with_horizons(init_inner_state(task, lopt, [0, 1], "cpu"), horizons)
    gen = torch.Generator().manual_seed(0)
    samplers = []
    for _ in horizons:
        x = torch.randn(16, 4, generator=gen)
        samplers.append(FixedBatch(x, x @ torch.randn(4, generator=gen)))
    return lopt, functional_optimizee(task, "cpu"), inner, samplers


def particle_meta_losses(lopt, optimizee, inner, samplers, tail: float) -> torch.Tensor:
    cfg = UnrollConfig(length=2, meta_loss="mean", meta_loss_tail=tail, estimator="es")
    est = AntitheticES(cfg, sigma=0.01, num_pairs=2)
    tasks = pt.particle_tasks(inner.batch_size, 2, "cpu")
    pop = pt.Population.replicate(lopt, inner.params, inner.buffers, inner.opt_state, tasks)
    eps = est.sample_eps(inner.batch_size * 2, pt.meta_spec(lopt).numel, 7, "cpu")
    _, metas, finite = est._run(lopt, optimizee, inner, pop, eps, samplers)
    assert bool(finite.all())
    return metas


def test_each_particle_is_weighted_by_its_tasks_place_in_its_run():
    # truncation of steps 0..1; tail 0.5: task 0 (horizon 8) has its tail at 4..7, weight 0;
    # task 1 (horizon 2) at 1..1, weight 1/2
    lopt, optimizee, inner, samplers = general_problem([8, 2])
    plain = particle_meta_losses(lopt, optimizee, inner, samplers, tail=1.0)
    tailed = particle_meta_losses(lopt, optimizee, inner, samplers, tail=0.5)
    task_weight = torch.tensor([0.0, 0.5])
    tasks = pt.particle_tasks(2, 2, "cpu")
    torch.testing.assert_close(tailed, plain * task_weight[tasks])
    assert float(plain.abs().min()) > 0


def test_a_truncation_outside_every_tail_gives_no_gradient():
    lopt, optimizee, inner, samplers = general_problem([8, 8])
    for tail, expect_zero in ((0.5, True), (1.0, False)):
        lopt.zero_grad(set_to_none=True)
        cfg = UnrollConfig(length=2, meta_loss="mean", meta_loss_tail=tail, estimator="pes")
        result, _ = PES(cfg, sigma=0.01, num_pairs=2).estimate(
            lopt, optimizee, inner, samplers, seed=3
        )
        assert result.finite
        norm = float(flat_grad(lopt).norm())
        assert (norm == 0.0) is expect_zero, (tail, norm)


def test_an_optimizer_without_a_run_horizon_is_refused():
    lopt, optimizee, inner, samplers = quadratic_problem(tasks=1)  # mlp: a step "t", no horizon
    cfg = UnrollConfig(length=2, meta_loss="sum", meta_loss_tail=0.5, estimator="es")
    est = AntitheticES(cfg, sigma=0.01)
    with pytest.raises(ConfigError, match=r"unroll\.meta_loss_tail < 1 needs .*'horizon'"):
        est.estimate(lopt, optimizee, inner, samplers, seed=0)
