"""LARS momentum: an EMA momentum rescaled per tensor so that ``lr`` is each tensor's relative
change per step (layer-wise trust ratio; You, Gitman & Ginsburg 2017, "Large Batch Training of
Convolutional Networks", applied to the momentum rather than the gradient; LAMB without Adam's
per-coordinate scaling).

Per parameter tensor θ with gradient g, RMS taken over all of the tensor's entries:

    m ← β · m + (1 − β) · g                                  (m = 0 before the first step)
    θ ← θ · (1 − lr · wd) − lr · max(RMS(θ), floor) · m / max(RMS(m), 1e-30)

``RMS(θ)`` is the parameter before this step (before the decay), so the decay and the step are
two independent terms of the old θ; the decay is decoupled as in AdamW and Lion here (it never
enters m). ``floor`` lets a zero-initialized tensor (a bias) move: its step has RMS ``lr·floor``.
The update is invariant to rescaling the loss. Defaults: lr = 0.04, β = 0.9, floor = 1e-2, wd = 0.

A non-finite gradient (or a momentum whose norm overflows) makes that whole tensor NaN, never a
silently finite step; the other tensors step as usual. Complex parameters move as their real
view (``torch.view_as_real``), the RMS counting real and imaginary parts as coordinates. Norms
accumulate in at least float32, so a large half-precision tensor's norm does not overflow.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from ._common import (
    BaselineOptimizer,
    as_real,
    check_range,
    constructor_defaults,
    device_dtype_buckets,
)

__all__ = ["LARSMomentum"]

# The smallest momentum RMS divided by: a zero momentum gives a zero step, not 0/0.
_TINY = 1e-30


def _lars_update(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    *,
    lr: float,
    momentum: float,
    floor: float,
    weight_decay: float,
) -> None:
    """One step on tensors of one device and dtype; the per-tensor scales stay on the device."""
    norm_dtype = torch.promote_types(params[0].dtype, torch.float32)
    sqrt_numel = [math.sqrt(max(p.numel(), 1)) for p in params]

    scales = torch._foreach_norm(params, 2, dtype=norm_dtype)
    torch._foreach_div_(scales, sqrt_numel)
    torch._foreach_clamp_min_(scales, floor)

    if weight_decay != 0:
        torch._foreach_mul_(params, 1 - lr * weight_decay)
    torch._foreach_mul_(exp_avgs, momentum)
    torch._foreach_add_(exp_avgs, grads, alpha=1 - momentum)

    momentum_rms = torch._foreach_norm(exp_avgs, 2, dtype=norm_dtype)
    torch._foreach_div_(momentum_rms, sqrt_numel)
    torch._foreach_clamp_min_(momentum_rms, _TINY)  # keeps NaN
    # A non-finite RMS makes the whole tensor's scale NaN (rms - rms is 0 or NaN); dividing
    # alone would turn an infinite RMS into a zero step for the finite coordinates.
    poison = torch._foreach_sub(momentum_rms, momentum_rms)
    torch._foreach_div_(scales, momentum_rms)
    torch._foreach_add_(scales, poison)
    torch._foreach_mul_(scales, -lr)
    torch._foreach_add_(params, torch._foreach_mul(exp_avgs, scales))


class LARSMomentum(BaselineOptimizer):
    """Momentum normalized per tensor to the tensor's own scale: ``lr`` is a relative step.

    Args:
        params: parameters or parameter groups.
        lr: relative change of each tensor per step, RMS(Δθ) / max(RMS(θ), floor) (0.04).
        momentum: the EMA decay β in [0, 1) (0.9).
        floor: smallest parameter RMS a step is scaled by, finite and > 0 (1e-2).
        weight_decay: decoupled decay ``θ *= 1 - lr * weight_decay`` (0).
    """

    def __init__(
        self,
        params: Any,
        lr: float = 0.04,
        momentum: float = 0.9,
        floor: float = 1e-2,
        weight_decay: float = 0.0,
    ) -> None:
        super().__init__(params, constructor_defaults(locals()))

    def _prepare_group(self, group: dict[str, Any]) -> None:
        check_range("learning rate", group["lr"], 0.0)
        check_range("momentum", group["momentum"], 0.0, 1.0, high_open=True)
        check_range("floor", group["floor"], 0.0, math.inf, low_open=True, high_open=True)
        check_range("weight_decay", group["weight_decay"], 0.0)

    def _step_group(self, group: dict[str, Any], params: list[Tensor], grads: list[Tensor]) -> None:
        exp_avgs = as_real(self._zero_state(params, "exp_avg"))
        params, grads = as_real(params), as_real(grads)
        for bucket in device_dtype_buckets(params):
            _lars_update(
                [params[i] for i in bucket],
                [grads[i] for i in bucket],
                [exp_avgs[i] for i in bucket],
                lr=group["lr"],
                momentum=group["momentum"],
                floor=group["floor"],
                weight_decay=group["weight_decay"],
            )
