"""Meta-losses: how the inner training losses of one truncation combine into one number.

``losses`` is ``[B, K]`` (B optimizees, K inner steps); each function returns ``[B]``.

* ``sum``: Σ_k l_k (Andrychowicz et al.).
* ``mean``: Σ_k l_k / K (same direction as ``sum``, a K-independent scale).
* ``log_sum``: log Σ_k l_k (the paper's config, ``log_unroll_losses``): scale-free across tasks
  and across the horizon, so late truncations (small losses) weigh as much as early ones.
* ``mean_log``: Σ_k log l_k / K (Metz et al.): every step's *relative* progress counts, which
  weighs the low-loss steps near the end of a truncation more than ``log_sum`` does.

``tail_weights`` puts the meta-loss on the end of each run (``unroll.meta_loss_tail``): a
truncation's meta-loss is weighted by the fraction of its steps that lie in the last ``tail``
fraction of its run, so the early truncations (weight 0), whose losses the evaluation's final loss
never sees, stop pulling the optimizer towards a fast start. With PES the late truncations' loss
differences still credit the perturbations of the whole run.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from meta_train.configuration.engine import require

_EPS = 1e-12


def _sum(losses: torch.Tensor) -> torch.Tensor:
    return losses.sum(-1)


def _mean(losses: torch.Tensor) -> torch.Tensor:
    return losses.mean(-1)


def _log_sum(losses: torch.Tensor) -> torch.Tensor:
    return torch.log(losses.sum(-1).clamp_min(_EPS))


def _mean_log(losses: torch.Tensor) -> torch.Tensor:
    return torch.log(losses.clamp_min(_EPS)).mean(-1)


META_LOSSES: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "sum": _sum,
    "mean": _mean,
    "log_sum": _log_sum,
    "mean_log": _mean_log,
}


def check_meta_loss(kind: str) -> None:
    if kind not in META_LOSSES:
        raise ValueError(f"unknown meta_loss {kind!r}; available: {sorted(META_LOSSES)}")


def check_meta_loss_tail(tail: float) -> None:
    """``tail`` is a fraction of a run in (0, 1] (1: every step counts, no weighting)."""
    ok = isinstance(tail, int | float) and not isinstance(tail, bool) and 0 < tail <= 1
    require(ok, "unroll.meta_loss_tail", "must be a fraction in (0, 1]", tail)


def tail_weights(
    start: torch.Tensor, horizon: torch.Tensor, length: int, tail: float
) -> torch.Tensor:
    """Each truncation's weight: the fraction of its ``length`` steps ``start .. start +
    length - 1`` that lie in the last ``tail`` of its run, steps ``ceil((1 - tail) · horizon)
    .. horizon - 1``. ``start``, ``horizon``: any shape, one entry per truncation (float64
    out; the tail's first step is rounded to 1e-6 first, so 0.9 · 200 is step 180, not 181)."""
    check_meta_loss_tail(tail)
    start = start.to(torch.float64)
    horizon = horizon.to(torch.float64)
    first = torch.maximum(start, torch.ceil(torch.round((1.0 - tail) * horizon, decimals=6)))
    end = torch.minimum(start + length, horizon)
    return (end - first).clamp_min(0.0) / length


def meta_loss(losses: torch.Tensor, kind: str) -> torch.Tensor:
    """Per-optimizee meta-loss ``[B]`` of inner losses ``[B, K]`` (differentiable)."""
    check_meta_loss(kind)
    if losses.dim() != 2:
        raise ValueError(f"losses must be [B, K], got shape {tuple(losses.shape)}")
    return META_LOSSES[kind](losses)


def meta_loss_weights(losses: torch.Tensor, kind: str) -> torch.Tensor:
    """``∂ mean_b(meta_loss_b) / ∂ l_{b,k}`` as ``[B, K]`` at the given (detached) losses.

    The first-order estimator turns these into the cotangents of the updates.
    """
    x = losses.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        (w,) = torch.autograd.grad(meta_loss(x, kind).mean(), x)
    return w
