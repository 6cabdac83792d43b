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
desynchronized tasks (``meta_train.truncation``), ``restart`` names the tasks whose run begins.
The particles, accumulators and generator are the estimator's ``state_dict`` (in ``last.pt``),
so a resumed run continues bit for bit. A truncation with any non-finite particle is discarded
as a whole: no gradient, and the particles and accumulators stay as they were.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch

from l2o.optimizers.base import LearnedOptimizerNet
from meta_train.estimators import particles as pt
from meta_train.estimators.es import ParticleEstimator

if TYPE_CHECKING:
    from meta_train.unroll import InnerState, UnrollConfig, UnrollResult


class PES(ParticleEstimator):
    """Antithetic PES (see the module docstring)."""

    name = "pes"

    def __init__(self, options) -> None:
        super().__init__(options)
        self.population: pt.Population | None = None
        self.accumulated: torch.Tensor | None = None  # ξ [T·pairs, D]
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
        dim = pt.meta_spec(lopt).numel
        tasks = pt.particle_tasks(inner.batch_size, pairs, device)
        if restart is None or self.population is None:
            self.population = pt.Population.replicate(
                lopt, inner.params, inner.buffers, inner.opt_state, tasks
            )
            self.accumulated = inner.params.new_zeros(inner.batch_size * pairs, dim)
            return
        restart = restart.to(device)
        mask = restart.index_select(0, tasks)
        fresh = pt.Population.replicate(lopt, inner.params, inner.buffers, inner.opt_state, tasks)
        self.population.restart(mask, fresh)
        pair_mask = restart.repeat_interleave(pairs).unsqueeze(1)
        self.accumulated = torch.where(pair_mask, 0.0, self.accumulated)

    def __call__(
        self,
        lopt: LearnedOptimizerNet,
        optimizee,
        inner: InnerState,
        samplers: Sequence,
        cfg: UnrollConfig,
        regularizer=None,
        held_out: Sequence | None = None,
        restart: torch.Tensor | None = None,
    ) -> tuple[UnrollResult, InnerState]:
        """One truncation. ``inner`` holds the tasks' states; a task's particles start from it
        when its run begins (``restart [T]`` bool, or ``inner.step == 0`` for all tasks)."""
        self._check(regularizer, inner, samplers)
        if self._saved is not None:
            self._restore(lopt, inner)
        pairs = self.options.num_pairs
        expected = 2 * inner.batch_size * pairs
        if self.population is None or self.population.params.shape[0] != expected:
            self._restart(lopt, inner, None)
        elif restart is not None:
            if bool(restart.any()):
                self._restart(lopt, inner, restart)
        elif inner.step == 0:
            self._restart(lopt, inner, None)
        pop = self.population
        before = (pop.params, pop.buffers, pop.opt_state)
        eps = self.sample_eps(
            inner.batch_size * pairs, self.accumulated.shape[1], pop.params.device
        )
        accumulated = self.accumulated + eps
        losses, metas, finite = self._run(lopt, optimizee, pop, eps, samplers, cfg.unroll, held_out)
        ok, meta_value, _ = self._estimate(lopt, accumulated, metas, finite, losses)
        if ok:
            self.accumulated = accumulated
        else:  # discard the truncation: the particles go back
            pop.params, pop.buffers, pop.opt_state = before
        new_inner = self._task_state(pop, inner, pairs, cfg.unroll)
        return self._result(meta_value, losses, ok, cfg.unroll), new_inner

    def state_dict(self) -> dict:
        out = super().state_dict()
        if self._saved is not None:
            out.update(population=self._saved["population"], accumulated=self._saved["accumulated"])
        elif self.population is not None:
            out.update(
                population=self.population.state_dict(), accumulated=self.accumulated.clone()
            )
        return out

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.population, self.accumulated = None, None
        self._saved = (
            {"population": state["population"], "accumulated": state["accumulated"]}
            if "population" in state
            else None
        )
