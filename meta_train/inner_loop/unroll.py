"""The unrolled inner loop of meta-training: B optimizees trained functionally, in lockstep, by a
learned optimizer, K steps per truncation.

This module owns the inner loop's types and its one configuration; the meta-gradient
estimators (``meta_train.estimators``) build on it, never the other way round. Typical use (the
trainer does this, plus clipping, logging and checkpoints)::

    cfg = UnrollConfig(length=20, meta_loss="log_sum", estimator="first")
    inner = init_inner_state(task, lopt, seeds=[0, 1], device="cpu")
    samplers = [data.sampler(task.batch_size, seed=s) for s in (0, 1)]
    estimator = make_estimator(cfg)                      # meta_train.estimators
    for _ in range(horizon // cfg.length):
        meta_opt.zero_grad()
        result, inner = meta_step_gradient(lopt, task, inner, samplers, cfg, estimator=estimator)
        if result.finite: clip(lopt.parameters()); meta_opt.step()

``meta_train.inner_loop.reference.reference_meta_step`` is the plain specification of one such
meta-step.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.func import functional_call, grad_and_value, vmap

from l2o.optimizers.base import LearnedOptimizerNet, ParamSpec, State
from l2o.training import make_optimizee
from meta_train.configuration.engine import require, require_non_negative, require_positive
from meta_train.inner_loop.meta_losses import META_LOSSES, check_meta_loss_tail, meta_loss

#: the estimators that apply ``unroll.meta_loss_tail`` (the particle estimators)
TAIL_ESTIMATORS = ("es", "pes")

Regularizer = Callable[[dict[str, torch.Tensor], dict[str, torch.Tensor]], torch.Tensor]


@dataclass(frozen=True)
class UnrollConfig:
    """How one meta-step unrolls the inner loop: the ``unroll`` section of the YAML config too
    (field names are the YAML keys; ``unroll.order`` is the old name of ``unroll.estimator``).

    Attributes:
        length: K, inner steps per truncation (one meta-gradient per K steps).
        meta_loss: ``sum`` | ``mean`` | ``log_sum`` | ``mean_log`` (see ``meta_losses``).
        meta_loss_tail: a fraction in (0, 1]: weight each truncation's meta-loss by the
            fraction of its steps in the last ``meta_loss_tail`` of its run
            (``meta_losses.tail_weights``; 1, the default: no weighting). Needs a particle
            estimator (``es``/``pes``) and an optimizer state with each run's step ``t`` and
            ``horizon`` (``general``).
        estimator: the meta-gradient estimator's registered name (``meta_train.estimators``):
            ``first``: the optimizer's inputs (gradients, parameter values) are constants, the
            paper's default; exact and cheap (no optimizee graph).
            ``second``: differentiate through the optimizee's gradients too (Hessian terms).
            The name is checked against the registry when the estimator is made.
        estimator_kwargs: extra settings for estimators that take some (e.g. ES's sigma),
            passed to the estimator's constructor; the truncated-BPTT estimators take none.
        checkpoint_every: activation checkpointing: keep the learned optimizer's activations
            for only this many steps at a time, recomputing them in the backward pass
            (0 = off). Lets long unrolls (K = 200+) fit in little memory.
        chunk_size: first order: replay the optimizer over at most this many coordinates at a
            time (0 = all at once). Bounds the replay's memory and keeps it in cache; the
            gradient is the same. Ignored (one chunk) with a regularizer, which needs whole
            steps, or an optimizer that is not coordinatewise; unused in second order.
    """

    length: int = 20
    meta_loss: str = "log_sum"
    estimator: str = "first"
    estimator_kwargs: dict[str, Any] = field(default_factory=dict)
    checkpoint_every: int = 0
    chunk_size: int = 8192
    meta_loss_tail: float = 1.0  # last: positional construction keeps its old meaning

    def __post_init__(self) -> None:
        require_positive("unroll.length", self.length)
        require(
            self.meta_loss in META_LOSSES,
            "unroll.meta_loss",
            f"must be one of {sorted(META_LOSSES)}",
            self.meta_loss,
        )
        require(
            bool(self.estimator), "unroll.estimator", "must be a non-empty name", self.estimator
        )
        check_meta_loss_tail(self.meta_loss_tail)
        require(
            self.meta_loss_tail == 1 or self.estimator in TAIL_ESTIMATORS,
            "unroll.estimator",
            f"must be one of {list(TAIL_ESTIMATORS)} with unroll.meta_loss_tail < 1",
            self.estimator,
        )
        require_non_negative("unroll.checkpoint_every", self.checkpoint_every)
        require_non_negative("unroll.chunk_size", self.chunk_size)


@dataclass
class UnrollResult:
    """What one truncation did.

    Attributes:
        meta_loss: the meta-loss of the truncation, averaged over the B optimizees (without the
            regularization).
        inner_losses: ``[B, K]`` training losses at the parameters each step's gradient was
            taken at (the loss at step k is that of θ_k before its update).
        reg_loss: the regularization added to the meta-loss (summed over steps, mean over B).
        finite: every inner loss and the meta-loss are finite (otherwise discard the gradient).
        mean_abs_update: mean |Δθ| over steps, coordinates and optimizees (for logging).
        metrics: estimator-specific numbers (logged as ``train/<name>``).
    """

    meta_loss: float
    inner_losses: torch.Tensor
    reg_loss: float
    finite: bool
    mean_abs_update: float = float("nan")
    metrics: dict[str, float] = field(default_factory=dict)


@dataclass
class InnerState:
    """B optimizees trained in lockstep, vectorized.

    Attributes:
        params: ``[B, N]`` flat parameters (``spec`` tells which coordinates are which tensor).
        buffers: ``{name: [B, ...]}`` model buffers (empty for the paper's models).
        opt_state: the learned optimizer's state for all B optimizees (``dict[str, Tensor]``).
        step: inner steps taken since ``init_inner_state`` (the same for all B).
        seeds: the model seeds the optimizees were initialized with.
        spec: flat layout of the parameters (not serialized; rebuilt from the task).
    """

    params: torch.Tensor
    buffers: dict[str, torch.Tensor]
    opt_state: State
    step: int
    seeds: tuple[int, ...]
    spec: ParamSpec = field(repr=False)

    @property
    def batch_size(self) -> int:
        return self.params.shape[0]

    def detach(self) -> InnerState:
        return InnerState(
            params=self.params.detach(),
            buffers={k: v.detach() for k, v in self.buffers.items()},
            opt_state={k: v.detach() for k, v in self.opt_state.items()},
            step=self.step,
            seeds=self.seeds,
            spec=self.spec,
        )

    def named_params(self, index: int) -> dict[str, torch.Tensor]:
        """Optimizee ``index``'s parameters as ``{name: tensor}`` views."""
        return self.spec.unflatten(self.params[index])

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Tensors only (``torch.load(weights_only=True)``-safe), for an exact resume."""
        out = {
            "params": self.params.detach().clone(),
            "step": torch.tensor(self.step, dtype=torch.long),
            "seeds": torch.tensor(self.seeds, dtype=torch.long),
        }
        out.update({f"buffers.{k}": v.detach().clone() for k, v in self.buffers.items()})
        out.update({f"opt_state.{k}": v.detach().clone() for k, v in self.opt_state.items()})
        return out

    @classmethod
    def from_state_dict(
        cls,
        state: Mapping[str, torch.Tensor],
        task,
        device: torch.device | str | None = None,
    ) -> InnerState:
        """Rebuild from ``state_dict()``; ``task`` supplies the (non-tensor) parameter layout."""
        for key in ("params", "step", "seeds"):
            if key not in state:
                raise ValueError(f"inner state dict lacks {key!r}; keys: {sorted(state)}")
        device = torch.device(device) if device is not None else state["params"].device
        optimizee = functional_optimizee(task, device)
        params = state["params"].to(device)
        if params.dim() != 2 or params.shape[1] != optimizee.spec.numel:
            raise ValueError(
                f"inner state params {tuple(params.shape)} do not fit task {task.name!r} "
                f"({optimizee.spec.numel} parameters)"
            )
        buffers = {k[8:]: v.to(device) for k, v in state.items() if k.startswith("buffers.")}
        opt_state = {k[10:]: v.to(device) for k, v in state.items() if k.startswith("opt_state.")}
        return cls(
            params=params,
            buffers=buffers,
            opt_state=opt_state,
            step=int(state["step"]),
            seeds=tuple(int(s) for s in state["seeds"].tolist()),
            spec=optimizee.spec,
        )


class FunctionalOptimizee:
    """A task's model run functionally over B flat parameter vectors at once (``torch.func``)."""

    def __init__(self, task, device: torch.device | str) -> None:
        self.task = task
        self.device = torch.device(device)
        self.model: nn.Module = task.make_model(0, self.device)
        self.model.train()
        self.spec = ParamSpec.from_module(self.model)
        self.buffer_names = tuple(n for n, _ in self.model.named_buffers())

        def loss_fn(flat, buffers, x, y):
            params = self.spec.unflatten(flat)
            logits = functional_call(self.model, (params, buffers), (x,))
            return task.loss(logits, y)

        self._loss_fn = loss_fn
        self._batched_loss = vmap(loss_fn)
        self._batched_grad = vmap(grad_and_value(loss_fn))

    def loss_and_grad(
        self, flat: torch.Tensor, buffers: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(loss [B], grad [B, N])`` at constant parameters ``[B, N]``: no graph is kept."""
        if flat.shape[0] == 1:  # plain autograd is cheaper than the vmap machinery for B = 1
            with torch.enable_grad():
                leaf = flat[0].detach().requires_grad_(True)
                one = {k: v[0] for k, v in buffers.items()}
                loss = self._loss_fn(leaf, one, x[0], y[0])
                (grad,) = torch.autograd.grad(loss, leaf)
            return loss.detach().unsqueeze(0), grad.unsqueeze(0)
        with torch.no_grad():
            grad, loss = self._batched_grad(flat, buffers, x, y)
        return loss, grad

    def loss(
        self, flat: torch.Tensor, buffers: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor
    ) -> torch.Tensor:
        """``loss [B]`` with a graph back to ``flat`` (second-order meta-gradients)."""
        return self._batched_loss(flat, buffers, x, y)

    def init_params(self, seeds: Sequence[int]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        params, buffers = [], []
        for seed in seeds:
            model = make_optimizee(self.task, int(seed), self.device)
            params.append(self.spec.flatten(dict(model.named_parameters())).detach())
            buffers.append({k: v.detach().clone() for k, v in model.named_buffers()})
        stacked = {k: torch.stack([b[k] for b in buffers]) for k in self.buffer_names}
        return torch.stack(params), stacked


@functools.lru_cache(maxsize=16)
def _cached_optimizee(task, device: torch.device) -> FunctionalOptimizee:
    return FunctionalOptimizee(task, device)


def functional_optimizee(task, device: torch.device | str) -> FunctionalOptimizee:
    """The (cached) functional form of ``task``'s model on ``device``."""
    return _cached_optimizee(task, torch.device(device))


def init_inner_state(
    task, lopt: LearnedOptimizerNet, seeds: Sequence[int], device: torch.device | str
) -> InnerState:
    """Fresh optimizees ``l2o.training.make_optimizee(task, seed)``, one per seed (the weights
    ``train_optimizee(seed=seed)`` starts from), and the optimizer state."""
    seeds = tuple(int(s) for s in seeds)
    if not seeds:
        raise ValueError("init_inner_state needs at least one seed")
    optimizee = functional_optimizee(task, device)
    params, buffers = optimizee.init_params(seeds)
    with torch.no_grad():
        opt_state = lopt.init_state(params, optimizee.spec)
    return InnerState(params, buffers, opt_state, 0, seeds, optimizee.spec)


def next_batches(samplers: Sequence, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """One minibatch from each of the B samplers, stacked to ``[B, batch, ...]``."""
    pairs = [s.next() for s in samplers]
    if len(pairs) == 1:
        x, y = pairs[0]
        return x.to(device).unsqueeze(0), y.to(device).unsqueeze(0)
    return (
        torch.stack([x for x, _ in pairs]).to(device),
        torch.stack([y for _, y in pairs]).to(device),
    )


def regularization(
    regularizer: Regularizer, spec: ParamSpec, updates: torch.Tensor, params: torch.Tensor
) -> torch.Tensor:
    """Σ over steps, mean over optimizees, of ``regularizer`` on ``[T, B, N]`` updates/params."""
    total = updates.new_zeros(())
    steps, batch = updates.shape[0], updates.shape[1]
    for t in range(steps):
        for b in range(batch):
            total = total + regularizer(spec.unflatten(updates[t, b]), spec.unflatten(params[t, b]))
    return total / batch


def finish_truncation(
    inner: InnerState,
    params: torch.Tensor,
    buffers: dict[str, torch.Tensor],
    opt_state: State,
    losses: torch.Tensor,
    cfg: UnrollConfig,
    reg_value: torch.Tensor | None,
    abs_update_sum: torch.Tensor,
) -> tuple[UnrollResult, InnerState]:
    """The result of a truncation of ``cfg.length`` steps that ended at ``params``/``opt_state``
    with ``losses [B, K]``, and the new inner state, detached from every graph."""
    with torch.no_grad():
        m = meta_loss(losses, cfg.meta_loss).mean()
        reg = reg_value.detach().to(m) if reg_value is not None else m.new_zeros(())
        losses_finite = torch.isfinite(losses).all().to(m)
        # one host sync for everything the caller reads
        summary = torch.stack([m, reg, abs_update_sum.to(m), losses_finite]).tolist()
    meta_value, reg_float, abs_sum, all_losses_finite = summary
    finite = math.isfinite(meta_value) and math.isfinite(reg_float) and all_losses_finite == 1.0
    new_inner = InnerState(
        params=params.detach(),
        buffers={k: v.detach() for k, v in buffers.items()},
        opt_state={k: v.detach() for k, v in opt_state.items()},
        step=inner.step + cfg.length,
        seeds=inner.seeds,
        spec=inner.spec,
    )
    count = cfg.length * params.numel()
    result = UnrollResult(meta_value, losses.detach(), reg_float, finite, abs_sum / count)
    return result, new_inner
