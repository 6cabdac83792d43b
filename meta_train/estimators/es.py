"""Antithetic truncated evolution strategies (``unroll.estimator: es``).

Per task and pair m, the meta-parameters are perturbed to φ ± ε_m (ε_m ~ N(0, σ²I)); both
particles unroll the truncation from the task's current inner state on the same minibatches, and

    ∇ ≈ mean_m ε_m (L⁺_m − L⁻_m) / (2σ²),

the gradient of the Gaussian-smoothed meta-loss of THIS truncation. Antithetic pairs cancel the
zeroth-order term (L(φ) itself) exactly, so the estimate has no variance from the loss level.
Like truncated BPTT it ignores how φ changed the state the truncation started from (the bias that
``pes`` removes). The task continues from the positive particle of its first pair.

All 2·T·pairs particles step as one batch (``particles``); no autograd graph is built; the only
host read is one small vector of summaries per truncation.

Settings (``unroll.estimator_kwargs``; ``ESOptions``): ``sigma``, ``num_pairs`` per task,
``clip_delta_loss`` (clamp L⁺ − L⁻ to ±c; the fraction of clamped pairs is reported) and
``sign_delta_loss`` (use s·sign(L⁺ − L⁻)), learned_optimization's options, and ``objective``:
``train``, the ``unroll.meta_loss`` of the truncation's training losses, or ``final_val``, the
loss on a held-out batch at the truncation's end (drawn from the test split of
``held_out_data``, which the trainer sets, by a seed of the optimizee and its step: stateless,
so resumes are exact), weighted by where the truncation lies in its run with
``unroll.meta_loss_tail`` < 1 (``run_tail_weights``). The perturbations come from the
meta-step's ``seed`` (the estimator contract). Metrics (``UnrollResult.metrics``): the
estimate's norm, mean |L⁺ − L⁻|, the fraction of clipped pairs, the particle steps taken.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from l2o.optimizers.base import LearnedOptimizerNet
from l2o.seeding import derive_seed
from meta_train.configuration.engine import ConfigError
from meta_train.estimators import particles as pt
from meta_train.estimators.base import Estimator
from meta_train.inner_loop.meta_losses import meta_loss, tail_weights
from meta_train.inner_loop.unroll import InnerState, UnrollConfig, UnrollResult, next_batches

if TYPE_CHECKING:
    from l2o.data import Dataset

OBJECTIVES = ("train", "final_val")


@dataclass(frozen=True)
class ESOptions:
    """Options shared by ``es`` and ``pes``.

    Attributes:
        sigma: σ, the standard deviation of the perturbations.
        num_pairs: antithetic pairs per task (2·pairs particles per task).
        clip_delta_loss: clamp L⁺ − L⁻ to [−c, c] (None: off).
        sign_delta_loss: use s·sign(L⁺ − L⁻) instead of L⁺ − L⁻ (None: off).
        objective: ``train`` (the unroll's meta-loss of the training losses) or ``final_val``.
    """

    sigma: float = 0.01
    num_pairs: int = 1
    clip_delta_loss: float | None = None
    sign_delta_loss: float | None = None
    objective: str = "train"

    def __post_init__(self) -> None:
        key = "unroll.estimator_kwargs."
        if not (self.sigma > 0 and math.isfinite(self.sigma)):
            raise ConfigError(f"{key}sigma must be positive, got {self.sigma}")
        if isinstance(self.num_pairs, bool) or self.num_pairs <= 0:
            raise ConfigError(f"{key}num_pairs must be a positive integer, got {self.num_pairs}")
        for name in ("clip_delta_loss", "sign_delta_loss"):
            value = getattr(self, name)
            if value is not None and not (value > 0 and math.isfinite(value)):
                raise ConfigError(f"{key}{name} must be positive or None, got {value}")
        if self.objective not in OBJECTIVES:
            raise ConfigError(
                f"{key}objective must be one of {list(OBJECTIVES)}, got {self.objective!r}"
            )


def antithetic_estimate(
    directions: torch.Tensor,
    loss_pos: torch.Tensor,
    loss_neg: torch.Tensor,
    sigma: float,
    clip: float | None = None,
    sign: float | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """``mean_m directions_m · Δ_m / (2σ²)`` with Δ = L⁺ − L⁻ (clipped or signed as asked).

    ``directions [M, D]`` are ε_m for ES and the accumulated perturbations for PES. Returns the
    estimate ``[D]`` and device-side statistics (nothing is read back)."""
    delta = loss_pos - loss_neg
    stats = {"delta_loss_abs": delta.abs().mean(), "loss_pair_mean": (loss_pos + loss_neg).mean()}
    if clip is not None:
        stats["clipped_fraction"] = (delta.abs() > clip).float().mean()
        delta = delta.clamp(-clip, clip)
    if sign is not None:
        delta = torch.sign(delta) * sign
    coef = delta / (2.0 * sigma * sigma)
    grad = coef @ directions / directions.shape[0]
    return grad, stats


def accumulate_grad(lopt: LearnedOptimizerNet, spec, grad: torch.Tensor) -> None:
    """Add the flat estimate ``[D]`` to the meta-parameters' ``.grad`` (the estimator contract:
    gradients accumulate; the caller zeroes them)."""
    named = dict(lopt.named_parameters())
    for name, g in spec.unflatten(grad).items():
        param = named[name]
        if param.grad is None:
            param.grad = g.detach().clone().to(param.dtype)
        else:
            param.grad.add_(g)


def held_out_batches(data: Dataset, inner: InnerState, batch_size: int):
    """One held-out (test-split) minibatch per task ``[T, ...]``, drawn by a seed of the task's
    optimizee and its step (the same batch for every particle of the task)."""
    pairs = [
        data.sampler(batch_size, derive_seed(seed, "held-out", inner.step), split="test").next()
        for seed in inner.seeds
    ]
    return torch.stack([x for x, _ in pairs]), torch.stack([y for _, y in pairs])


def truncation_meta_losses(
    optimizee, pop: pt.Population, losses: torch.Tensor, kind: str, held_out
) -> torch.Tensor:
    """Each particle's meta-loss ``[P]``: ``meta_loss(kind)`` of its training losses
    ``[P, K]``, or, given the held-out batches ``(x, y)`` per task, its loss on its task's
    batch at the truncation's end (``final_val``)."""
    if held_out is None:
        return meta_loss(losses, kind)
    x, y = held_out
    x, y = x.index_select(0, pop.task_index), y.index_select(0, pop.task_index)
    optimizee = pt.for_particles(optimizee, pop.task_index)
    with torch.no_grad():
        if pop.params.shape[0] == 1:
            return optimizee.loss_and_grad(pop.params, pop.buffers, x, y)[0]
        return optimizee.loss(pop.params, pop.buffers, x, y)


def run_tail_weights(inner: InnerState, cfg: UnrollConfig) -> torch.Tensor:
    """Each task's ``tail_weights`` ``[T]`` for the truncation that starts at ``inner``: its
    run's step and length are the optimizer state's ``t`` and ``horizon`` (per task)."""
    state = inner.opt_state
    if "t" not in state or "horizon" not in state:
        raise ConfigError(
            "unroll.meta_loss_tail < 1 needs an optimizer whose state has each run's step 't' "
            f"and 'horizon' (e.g. general); this one's state has {sorted(state)}"
        )
    return tail_weights(state["t"], state["horizon"], cfg.length, cfg.meta_loss_tail)


class ParticleEstimator(Estimator):
    """What ``es`` and ``pes`` share: settings, the perturbations, one truncation of all
    particles, the estimate and its metrics. Subclasses decide where particles start from and
    which directions weigh the loss differences."""

    supports_regularization = False  # the perturbed particles carry no regularizer

    def __init__(self, cfg: UnrollConfig, **settings) -> None:
        super().__init__(cfg)
        try:
            self.options = ESOptions(**settings)
        except TypeError as exc:
            raise ConfigError(
                f"unroll.estimator_kwargs: {exc}; {self.name!r} takes "
                f"{[f.name for f in dataclasses.fields(ESOptions)]}"
            ) from None
        #: the dataset whose test split gives the ``final_val`` batches (set by the trainer)
        self.held_out_data: Dataset | None = None
        #: ``(tasks, total)``: this estimator's tasks are rows ``tasks`` of the ``total`` tasks
        #: whose perturbations one meta-step draws together (set by the trainer for a torchrun
        #: slice or a family member; None: its own tasks are all of them). The perturbations of
        #: all ``total`` are drawn and these tasks' rows kept, so a slice unrolls what the whole
        #: meta-batch in one process unrolls.
        self.global_tasks: tuple[tuple[int, ...], int] | None = None

    def sample_eps(self, pairs: int, dim: int, seed: int, device) -> torch.Tensor:
        """ε ``[pairs, D]`` (rows ``[pair, task]``) from the meta-step's seed, drawn on the CPU
        (the same on every device); with ``global_tasks``, these tasks' rows of all tasks' ε."""
        gen = torch.Generator(device="cpu").manual_seed(seed % 2**63)
        if self.global_tasks is None:
            eps = torch.randn(pairs, dim, generator=gen)
        else:
            tasks, total = self.global_tasks
            per_task, rest = divmod(pairs, len(tasks))
            if rest:
                raise ValueError(f"{pairs} perturbations for {len(tasks)} tasks (global_tasks)")
            every = torch.randn(per_task * total, dim, generator=gen)
            rows = torch.arange(per_task).unsqueeze(1) * total + torch.tensor(tasks)
            eps = every.index_select(0, rows.reshape(-1))
        return (eps * self.options.sigma).to(device)

    def _check(self, regularizer, inner: InnerState, samplers: Sequence) -> None:
        if regularizer is not None:
            raise ConfigError(
                f"unroll.estimator {self.name!r} does not support regularization "
                "(set regularization.kind: none, or use unroll.estimator: first)"
            )
        if len(samplers) != inner.batch_size:
            raise ValueError(f"got {len(samplers)} samplers for {inner.batch_size} optimizees")
        if self.options.objective == "final_val" and self.held_out_data is None:
            raise ValueError("objective final_val needs held_out_data (a dataset, test split)")

    def _run(
        self,
        lopt: LearnedOptimizerNet,
        optimizee,
        inner: InnerState,
        pop: pt.Population,
        eps: torch.Tensor,
        samplers: Sequence,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Unroll every particle one truncation at φ ± ε; returns ``(losses [P, K],
        meta-losses [P], finite [P])``."""
        spec = pt.meta_spec(lopt)
        phi = pt.flat_meta_params(lopt)
        weights = pt.particle_weights(spec, pt.antithetic_weights(phi, eps))
        device = pop.params.device
        losses, finite = pt.unroll_particles(
            lopt, optimizee, weights, pop, lambda: next_batches(samplers, device), self.cfg.length
        )
        held_out = None
        if self.options.objective == "final_val":
            end = dataclasses.replace(inner, step=inner.step + self.cfg.length)
            x, y = held_out_batches(self.held_out_data, end, samplers[0].batch_size)
            held_out = (x.to(device), y.to(device))
        metas = truncation_meta_losses(optimizee, pop, losses, self.cfg.meta_loss, held_out)
        finite = finite & torch.isfinite(losses).all(1) & torch.isfinite(metas)
        if self.cfg.meta_loss_tail < 1:
            metas = metas * run_tail_weights(inner, self.cfg).to(metas).index_select(
                0, pop.task_index
            )
        return losses, metas, finite

    def _estimate(
        self,
        lopt: LearnedOptimizerNet,
        directions: torch.Tensor,
        metas: torch.Tensor,
        finite: torch.Tensor,
        losses: torch.Tensor,
    ) -> tuple[bool, float, dict[str, float]]:
        """Accumulate the estimate into ``.grad`` when every particle is finite; returns
        ``(finite, mean meta-loss, metrics)`` (one host read)."""
        half = directions.shape[0]
        opts = self.options
        grad, stats = antithetic_estimate(
            directions,
            metas[:half],
            metas[half:],
            opts.sigma,
            opts.clip_delta_loss,
            opts.sign_delta_loss,
        )
        ok = finite.all() & torch.isfinite(grad).all()
        keys = ["finite", "meta_loss", "estimate_norm", *stats]
        values = torch.stack(
            [ok.float(), metas.mean(), torch.linalg.vector_norm(grad), *stats.values()]
        ).tolist()  # the one host read of the truncation
        summary = dict(zip(keys, values, strict=True))
        is_finite = summary.pop("finite") == 1.0
        meta_value = summary.pop("meta_loss")
        metrics = {f"{self.name}/{k}": v for k, v in summary.items()}
        metrics[f"{self.name}/particle_steps"] = float(losses.numel())
        if is_finite:
            accumulate_grad(lopt, pt.meta_spec(lopt), grad)
        return is_finite, meta_value, metrics

    def _task_state(self, pop: pt.Population, inner: InnerState) -> InnerState:
        """The tasks' inner state: that of the positive particle of each task's first pair."""
        first = torch.arange(inner.batch_size, device=pop.params.device)
        params, buffers, opt_state = pop.select(first)
        step = inner.step + self.cfg.length
        return InnerState(params, buffers, opt_state, step, inner.seeds, inner.spec)


class AntitheticES(ParticleEstimator):
    """Antithetic truncated ES (see the module docstring). Stateless between meta-steps."""

    name = "es"

    def estimate(self, lopt, optimizee, inner, samplers, regularizer=None, seed=0):
        self._check(regularizer, inner, samplers)
        pairs = self.options.num_pairs
        device = inner.params.device
        tasks = pt.particle_tasks(inner.batch_size, pairs, device)
        pop = pt.Population.replicate(lopt, inner.params, inner.buffers, inner.opt_state, tasks)
        eps = self.sample_eps(inner.batch_size * pairs, pt.meta_spec(lopt).numel, seed, device)
        losses, metas, finite = self._run(lopt, optimizee, inner, pop, eps, samplers)
        ok, meta_value, metrics = self._estimate(lopt, eps, metas, finite, losses)
        result = UnrollResult(meta_value, losses, 0.0, ok, metrics=metrics)
        return result, self._task_state(pop, inner)
