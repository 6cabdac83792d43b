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

Options (learned_optimization's): ``clip_delta_loss`` clamps L⁺ − L⁻ to ±c (the fraction of
clamped pairs is reported), ``sign_delta_loss`` replaces it by s·sign(L⁺ − L⁻). The meta-loss is
one of ``meta_losses`` over the truncation's training losses, or ``final_val``: the loss on a
held-out batch at the truncation's end.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from l2o.optimizers.base import LearnedOptimizerNet
from meta_train.estimators import particles as pt
from meta_train.meta_losses import META_LOSSES, meta_loss

if TYPE_CHECKING:
    from meta_train.unroll import InnerState, UnrollConfig, UnrollResult

FINAL_VAL = "final_val"


@dataclass(frozen=True)
class ESOptions:
    """Options shared by ``es`` and ``pes``.

    Attributes:
        sigma: σ, the standard deviation of the perturbations.
        num_pairs: antithetic pairs per task (2·pairs particles per task).
        clip_delta_loss: clamp L⁺ − L⁻ to [−c, c] (None: off).
        sign_delta_loss: use s·sign(L⁺ − L⁻) instead of L⁺ − L⁻ (None: off).
        meta_loss: a ``meta_losses`` name or ``final_val``.
        seed: seed of the perturbations' generator (saved and restored with the estimator).
    """

    sigma: float = 0.01
    num_pairs: int = 1
    clip_delta_loss: float | None = None
    sign_delta_loss: float | None = None
    meta_loss: str = "log_sum"
    seed: int = 0

    def __post_init__(self) -> None:
        if not (self.sigma > 0 and math.isfinite(self.sigma)):
            raise ValueError(f"sigma must be positive, got {self.sigma}")
        if self.num_pairs <= 0:
            raise ValueError(f"num_pairs must be positive, got {self.num_pairs}")
        for key in ("clip_delta_loss", "sign_delta_loss"):
            value = getattr(self, key)
            if value is not None and not (value > 0 and math.isfinite(value)):
                raise ValueError(f"{key} must be positive or None, got {value}")
        if self.meta_loss not in (*META_LOSSES, FINAL_VAL):
            raise ValueError(
                f"meta_loss must be one of {[*sorted(META_LOSSES), FINAL_VAL]}, "
                f"got {self.meta_loss!r}"
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


def truncation_meta_losses(
    optimizee,
    pop: pt.Population,
    losses: torch.Tensor,
    kind: str,
    held_out: Sequence | None,
) -> torch.Tensor:
    """Each particle's meta-loss ``[P]``: of its training losses ``[P, K]``, or (``final_val``)
    its loss on its task's held-out batch at the truncation's end."""
    if kind != FINAL_VAL:
        return meta_loss(losses, kind)
    if held_out is None:
        raise ValueError("meta_loss final_val needs held-out samplers (one per task)")
    from meta_train.unroll import next_batches

    x, y = next_batches(held_out, pop.params.device)
    x, y = x.index_select(0, pop.task_index), y.index_select(0, pop.task_index)
    optimizee = pt.for_particles(optimizee, pop.task_index)
    with torch.no_grad():
        if pop.params.shape[0] == 1:
            return optimizee.loss_and_grad(pop.params, pop.buffers, x, y)[0]
        return optimizee.loss(pop.params, pop.buffers, x, y)


class ParticleEstimator:
    """What ``es`` and ``pes`` share: options, the perturbations' generator, one truncation of all
    particles, the estimate and its summaries. Subclasses decide where particles start from and
    which directions weigh the loss differences."""

    name = ""

    def __init__(self, options: ESOptions) -> None:
        self.options = options
        self.generator = torch.Generator(device="cpu").manual_seed(options.seed)
        #: summaries of the last truncation (floats), merged into the trainer's metrics
        self.last_metrics: dict[str, float] = {}

    def sample_eps(self, pairs: int, dim: int, device) -> torch.Tensor:
        """ε ``[pairs, D]`` from the estimator's own CPU generator (the same on every device)."""
        eps = torch.randn(pairs, dim, generator=self.generator) * self.options.sigma
        return eps.to(device)

    def _check(self, regularizer, inner: InnerState, samplers: Sequence) -> None:
        if regularizer is not None:
            raise ValueError(
                f"the {self.name!r} estimator does not support regularization "
                "(set regularization.kind: none, or use unroll.estimator: first)"
            )
        if len(samplers) != inner.batch_size:
            raise ValueError(f"got {len(samplers)} samplers for {inner.batch_size} optimizees")

    def _run(
        self,
        lopt: LearnedOptimizerNet,
        optimizee,
        pop: pt.Population,
        eps: torch.Tensor,
        samplers: Sequence,
        steps: int,
        held_out: Sequence | None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Unroll every particle ``steps`` steps at φ ± ε; returns ``(losses [P, K],
        meta-losses [P], finite [P])``."""
        from meta_train.unroll import next_batches

        spec = pt.meta_spec(lopt)
        phi = pt.flat_meta_params(lopt)
        weights = pt.particle_weights(spec, pt.antithetic_weights(phi, eps))
        device = pop.params.device
        losses, finite = pt.unroll_particles(
            lopt, optimizee, weights, pop, lambda: next_batches(samplers, device), steps
        )
        metas = truncation_meta_losses(optimizee, pop, losses, self.options.meta_loss, held_out)
        finite = finite & torch.isfinite(losses).all(1) & torch.isfinite(metas)
        return losses, metas, finite

    def _estimate(
        self,
        lopt: LearnedOptimizerNet,
        directions: torch.Tensor,
        metas: torch.Tensor,
        finite: torch.Tensor,
        losses: torch.Tensor,
    ) -> tuple[bool, float, torch.Tensor]:
        """The estimate (accumulated into ``.grad`` only when every particle is finite), the
        metrics; returns ``(finite, mean meta-loss, grad)``."""
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
        self.last_metrics = {f"{self.name}/{k}": v for k, v in summary.items()}
        self.last_metrics[f"{self.name}/particle_steps"] = float(losses.numel())
        if is_finite:
            accumulate_grad(lopt, pt.meta_spec(lopt), grad)
        return is_finite, meta_value, grad

    @staticmethod
    def _result(meta_value: float, losses: torch.Tensor, finite: bool, steps: int) -> UnrollResult:
        from meta_train.unroll import UnrollResult

        return UnrollResult(meta_value, losses.detach(), 0.0, finite)

    @staticmethod
    def _task_state(pop: pt.Population, inner: InnerState, pairs: int, steps: int) -> InnerState:
        """The tasks' inner state: that of the positive particle of each task's first pair."""
        from meta_train.unroll import InnerState

        first = torch.arange(inner.batch_size, device=pop.params.device) * pairs
        params, buffers, opt_state = pop.select(first)
        return InnerState(params, buffers, opt_state, inner.step + steps, inner.seeds, inner.spec)

    # the estimator's persistent state (the trainer saves it in last.pt)
    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])


class AntitheticES(ParticleEstimator):
    """Antithetic truncated ES (see the module docstring)."""

    name = "es"

    def __call__(
        self,
        lopt: LearnedOptimizerNet,
        optimizee,
        inner: InnerState,
        samplers: Sequence,
        cfg: UnrollConfig,
        regularizer=None,
        held_out: Sequence | None = None,
    ) -> tuple[UnrollResult, InnerState]:
        self._check(regularizer, inner, samplers)
        pairs = self.options.num_pairs
        device = inner.params.device
        tasks = pt.particle_tasks(inner.batch_size, pairs, device)
        pop = pt.Population.replicate(lopt, inner.params, inner.buffers, inner.opt_state, tasks)
        eps = self.sample_eps(inner.batch_size * pairs, pt.meta_spec(lopt).numel, device)
        losses, metas, finite = self._run(lopt, optimizee, pop, eps, samplers, cfg.unroll, held_out)
        ok, meta_value, _ = self._estimate(lopt, eps, metas, finite, losses)
        new_inner = self._task_state(pop, inner, pairs, cfg.unroll)
        return self._result(meta_value, losses, ok, cfg.unroll), new_inner
