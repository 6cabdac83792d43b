"""Antithetic Persistent Evolution Strategies (``unroll.estimator: pes``; Vicol et al. 2021).

Each of the 2·T·pairs particles keeps its OWN inner state across truncations: the positive
particle of pair m is always unrolled at φ + ε, its twin at φ − ε, with a fresh ε drawn every
truncation. Each pair also keeps the sum ξ_m of the perturbations it has seen since its run
began (the current one included), and the estimate weights the loss difference by that sum,

    ∇ ≈ mean_m ξ_m (L⁺_m − L⁻_m) / (2σ²),

which accounts for how the earlier perturbations moved the state this truncation starts from:
summed over a run, the estimates are unbiased for the gradient of the whole run's smoothed
meta-loss (truncated ES is not; ``tests/meta_train/test_pes.py`` shows both). When a task's run
restarts, its particles start from the fresh optimizee and ξ is reset to 0.

Restarts: with the trainer's synchronized runs, all tasks restart when ``inner.step == 0``; with
desynchronized tasks (``meta_train.inner_loop.truncation``), a task restarts when the caller hands
in a
state for it that is not the one this estimator returned (a fresh optimizee).
The particles and accumulators are the estimator's ``state_dict`` (in ``last.pt``; the
perturbations come from the meta-step's seed), so a resumed run continues bit for bit. A
truncation with any non-finite particle is discarded as a whole: no gradient, and the particles
and accumulators stay as they were.
"""

from __future__ import annotations

import torch

from l2o.optimizers.base import LearnedOptimizerNet
from meta_train.estimators import particles as pt
from meta_train.estimators.es import ParticleEstimator
from meta_train.inner_loop.unroll import InnerState, UnrollResult


class PES(ParticleEstimator):
    """Antithetic PES (see the module docstring)."""

    name = "pes"

    def __init__(self, cfg, **settings) -> None:
        super().__init__(cfg, **settings)
        self.population: pt.Population | None = None
        self.accumulated: torch.Tensor | None = None  # ξ [pairs·T, D]
        self._saved: dict | None = None  # a loaded state, placed on the first call

    def _restore(self, lopt: LearnedOptimizerNet, inner: InnerState) -> None:
        state, self._saved = self._saved, None
        device = inner.params.device
        pdims = pt.particle_dims(lopt, inner.params.shape[1], inner.spec, device)
        self.population = pt.Population.from_state_dict(state["population"], pdims, device)
        self.accumulated = state["accumulated"].to(device)

    def _restart(
        self, lopt: LearnedOptimizerNet, inner: InnerState, restart: torch.Tensor | None
    ) -> None:
        """Start the particles of the tasks in ``restart [T]`` (all, if None) from ``inner``."""
        pairs, device = self.options.num_pairs, inner.params.device
        tasks = pt.particle_tasks(inner.batch_size, pairs, device)
        fresh = pt.Population.replicate(lopt, inner.params, inner.buffers, inner.opt_state, tasks)
        if restart is None or self.population is None:
            self.population = fresh
            dim = pt.meta_spec(lopt).numel
            self.accumulated = inner.params.new_zeros(inner.batch_size * pairs, dim)
            return
        restart = restart.to(device)
        self.population.restart(restart.index_select(0, tasks), fresh)
        pair_mask = restart.repeat(pairs).unsqueeze(1)
        self.accumulated = torch.where(pair_mask, 0.0, self.accumulated)

    def estimate(self, lopt, optimizee, inner, samplers, regularizer=None, seed=0):
        """One truncation. ``inner`` holds the tasks' states: all particles start from it when
        a run begins (``inner.step == 0``), and a task's particles restart from its row when
        that row is not the state this estimator last returned (the caller restarted the task,
        e.g. ``meta_train.inner_loop.truncation.TaskRotation``, or went back after a skipped
        step)."""
        self._check(regularizer, inner, samplers)
        if self._saved is not None:
            self._restore(lopt, inner)
        pairs = self.options.num_pairs
        expected = 2 * inner.batch_size * pairs
        pop = self.population
        if pop is None or pop.params.shape[0] != expected or inner.step == 0:
            self._restart(lopt, inner, None)
        else:
            changed = (inner.params != pop.params[: inner.batch_size]).any(1)
            if bool(changed.any()):  # one host read per truncation
                self._restart(lopt, inner, changed)
        pop = self.population
        before = (pop.params, pop.buffers, pop.opt_state)
        dim = self.accumulated.shape[1]
        eps = self.sample_eps(inner.batch_size * pairs, dim, seed, pop.params.device)
        accumulated = self.accumulated + eps
        losses, metas, finite = self._run(lopt, optimizee, inner, pop, eps, samplers)
        ok, meta_value, metrics = self._estimate(lopt, accumulated, metas, finite, losses)
        if ok:
            self.accumulated = accumulated
        else:  # discard the truncation: the particles go back
            pop.params, pop.buffers, pop.opt_state = before
        result = UnrollResult(meta_value, losses, 0.0, ok, metrics=metrics)
        return result, self._task_state(pop, inner)

    def state_dict(self) -> dict:
        if self._saved is not None:
            return dict(self._saved)
        if self.population is None:
            return {}
        return {"population": self.population.state_dict(), "accumulated": self.accumulated.clone()}

    def load_state_dict(self, state: dict) -> None:
        self.population, self.accumulated = None, None
        self._saved = None
        if state:
            self._saved = {"population": state["population"], "accumulated": state["accumulated"]}
