"""GYRO: Adam and SGD whose gradient is projected against the momentum buffer before it enters it.

Source: sunderflowres-stack/gyro_optimizer (``gyro/gyro_adam.py``, ``gyro/gyro_sgd.py``, the
README's algorithm). Per parameter tensor, once ``step > warmup_steps``, with ``m`` the first-moment
buffer *before* this step's update and all of it computed in float32:

    cos = <g, m> / (|g| |m|)                                   (only when |g| > eps and |m| > eps)
    if cos < -theta_base:
        g_proj = g - proj_factor * (<g, m> / |m|^2) * m
        if |g_proj| > eps:  g <- g_proj * |g| / |g_proj|       (norm preserved)

and the (possibly rotated) gradient replaces ``g`` in the optimizer's update. The numbers follow the
source: ``GYROAdam`` is Adam with the source's bias-correction arrangement (``step_size = lr *
sqrt(bc2) / bc1``, ``denom = sqrt(v) + eps * sqrt(bc2)``) and decoupled weight decay
``p *= 1 - lr * wd`` (so ``proj_factor=0`` is AdamW); ``GYROSGD`` keeps the buffer
``m <- momentum * m + (1 - momentum) * g`` for the detection only and steps ``p -= lr * g`` with the
rotated gradient, exactly as the source does (the buffer never enters the update).

Deliberate differences from the source, none of which changes a number: all tensors of a
(device, dtype) bucket are processed with ``torch._foreach_*`` kernels and the per-tensor
decisions are taken from one host transfer per bucket instead of one per tensor; dot products use
``torch.dot`` (float rounding only); hyperparameters are validated for every parameter group;
sparse gradients raise an error in ``GYROSGD`` too. Complex parameters (which the source does
not handle: its projection drops the imaginary part) follow torch's ``view_as_real`` convention:
real and imaginary parts are coordinates, so ``<g, m>`` is the real inner product. Telemetry is
the source's: ``get_telemetry()`` after a step returns ``step``, ``mean_cos``, ``projection_rate``,
``mean_norm_g``, ``mean_norm_m`` (means over the tensors of groups with ``telemetry=True``;
``mean_cos`` divides by all those tensors, as the source does).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ._common import (
    BaselineOptimizer,
    adam_moments_,
    as_real,
    check_betas,
    check_int,
    check_range,
    constructor_defaults,
    device_dtype_buckets,
)

__all__ = ["GYROSGD", "GYROAdam"]


@dataclass
class _Tally:
    """Telemetry sums over the tensors of one step (the source's accumulators)."""

    cos_sum: float = 0.0
    projected: int = 0
    total: int = 0
    norm_g_sum: float = 0.0
    norm_m_sum: float = 0.0


def _default_warmup(beta: float) -> int:
    return round(1.0 / (1.0 - beta))


def _rotate(
    grads: list[Tensor],
    bufs: list[Tensor],
    warmed_up: list[bool],
    group: dict[str, Any],
    tally: _Tally | None,
) -> list[Tensor]:
    """The gradients after GYRO's projection (tensors not projected are returned as they are)."""
    rotated = list(grads)
    wanted = [i for i, warm in enumerate(warmed_up) if warm or tally is not None]
    if not wanted:
        return rotated
    eps, theta_base, proj_factor = group["eps"], group["theta_base"], group["proj_factor"]
    g32 = [grads[i].float() for i in wanted]
    m32 = [bufs[i].float() for i in wanted]
    norm_g = torch.stack(torch._foreach_norm(g32))
    norm_m = torch.stack(torch._foreach_norm(m32))
    dots = torch.stack([torch.dot(g.reshape(-1), m.reshape(-1)) for g, m in zip(g32, m32)])
    valid = (norm_g > eps) & (norm_m > eps)
    cos = torch.where(valid, dots / (norm_g * norm_m), torch.zeros_like(dots))
    warm = torch.tensor([warmed_up[i] for i in wanted], device=cos.device)
    trigger = valid & warm & (cos < -theta_base)
    # One host transfer decides which tensors are projected (and gives the telemetry numbers).
    flags = torch.stack([trigger.float(), valid.float(), cos, norm_g, norm_m]).tolist()
    candidates = [k for k, hit in enumerate(flags[0]) if hit]
    projected = []
    if candidates:
        g_proj = [
            torch.addcmul(g32[k], m32[k], dots[k] / norm_m[k] ** 2, value=-proj_factor)
            for k in candidates
        ]
        norm_proj = torch.stack(torch._foreach_norm(g_proj))
        keep = (norm_proj > eps).tolist()
        for k, gp, nrm, ok in zip(candidates, g_proj, norm_proj, keep):
            if ok:
                index = wanted[k]
                rotated[index] = gp.mul_(norm_g[k] / nrm).to(grads[index].dtype)
                projected.append(k)
    if tally is not None:
        tally.total += len(wanted)
        tally.cos_sum += sum(c for c, ok in zip(flags[2], flags[1]) if ok)
        tally.norm_g_sum += sum(flags[3])
        tally.norm_m_sum += sum(flags[4])
        tally.projected += len(projected)
    return rotated


class _GYROBase(BaselineOptimizer):
    """Shared GYRO machinery: validation, telemetry, the projection of a bucket's gradients."""

    _pickled_attributes = ("_tally", "_telemetry_step")

    def _init_attributes(self) -> None:
        self._tally = _Tally()
        self._telemetry_step = 0

    def _prepare_group(self, group: dict[str, Any]) -> None:
        check_range("learning rate", group["lr"], 0.0)
        check_range("eps", group["eps"], 0.0)
        check_range("theta_base", group["theta_base"], 0.0, 1.0, high_open=True)
        check_range("proj_factor", group["proj_factor"], 0.0, 1.0)
        if group["warmup_steps"] is None:
            group["warmup_steps"] = _default_warmup(self._warmup_beta(group))
        check_int("warmup_steps", group["warmup_steps"], 0)

    def _warmup_beta(self, group: dict[str, Any]) -> float:
        raise NotImplementedError

    def _begin_step(self) -> None:
        self._tally = _Tally()

    def get_telemetry(self) -> dict[str, float]:
        """Diagnostics of the last step (zeros for groups created with ``telemetry=False``)."""
        tally = self._tally
        count = max(tally.total, 1)
        return {
            "step": self._telemetry_step,
            "mean_cos": tally.cos_sum / count,
            "projection_rate": tally.projected / count,
            "mean_norm_g": tally.norm_g_sum / count,
            "mean_norm_m": tally.norm_m_sum / count,
        }

    def _advance(
        self, group: dict[str, Any], params: list[Tensor]
    ) -> tuple[list[int], list[Tensor]]:
        """Initialise state, count the step; return the step numbers and the momentum buffers."""
        steps, bufs = [], []
        for param in params:
            state = self.state[param]
            if len(state) == 0:
                self._init_state(state, param)
            state["step"] += 1
            steps.append(state["step"])
            bufs.append(state["exp_avg"])
        if steps:
            self._telemetry_step = steps[-1]
        return steps, bufs

    def _init_state(self, state: dict[str, Any], param: Tensor) -> None:
        state["step"] = 0
        state["exp_avg"] = torch.zeros_like(param, memory_format=torch.preserve_format)

    def _rotated(
        self, group: dict[str, Any], grads: list[Tensor], bufs: list[Tensor], steps: list[int]
    ) -> list[Tensor]:
        warmed_up = [step > group["warmup_steps"] for step in steps]
        tally = self._tally if group["telemetry"] else None
        return _rotate(grads, bufs, warmed_up, group, tally)


class GYROAdam(_GYROBase):
    """Adam whose gradient is projected against the first moment when they oppose (GYRO).

    Args:
        params: parameters or parameter groups.
        lr: learning rate (1e-3).
        betas: moment coefficients (0.9, 0.999).
        eps: denominator term, also the norm threshold of the projection (1e-8).
        weight_decay: decoupled weight decay, ``p *= 1 - lr * weight_decay`` (0).
        theta_base: projection when ``cos(g, m) < -theta_base``, in [0, 1) (0).
        proj_factor: share of the opposing component removed, in [0, 1] (1).
        warmup_steps: steps before the projection is active; ``None`` is
            ``round(1 / (1 - beta2))`` of the constructor's ``betas`` (1000 by default).
        telemetry: gather the numbers ``get_telemetry()`` returns (costs one host sync a step).
    """

    def __init__(
        self,
        params: Any,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        theta_base: float = 0.0,
        proj_factor: float = 1.0,
        warmup_steps: int | None = None,
        telemetry: bool = False,
    ) -> None:
        check_betas(betas)
        if warmup_steps is None:
            warmup_steps = _default_warmup(betas[1])
        defaults = constructor_defaults(locals())
        super().__init__(params, defaults)

    def _warmup_beta(self, group: dict[str, Any]) -> float:
        return group["betas"][1]

    def _prepare_group(self, group: dict[str, Any]) -> None:
        check_betas(group["betas"])
        check_range("weight_decay", group["weight_decay"], 0.0)
        super()._prepare_group(group)

    def _init_state(self, state: dict[str, Any], param: Tensor) -> None:
        super()._init_state(state, param)
        state["exp_avg_sq"] = torch.zeros_like(param, memory_format=torch.preserve_format)

    def _step_group(self, group: dict[str, Any], params: list[Tensor], grads: list[Tensor]) -> None:
        if not params:
            return
        steps, exp_avgs = self._advance(group, params)
        exp_avg_sqs = as_real([self.state[p]["exp_avg_sq"] for p in params])
        params, grads, exp_avgs = as_real(params), as_real(grads), as_real(exp_avgs)
        beta1, beta2 = group["betas"]
        lr, eps, weight_decay = group["lr"], group["eps"], group["weight_decay"]
        for bucket in device_dtype_buckets(params):
            b_params = [params[i] for i in bucket]
            b_avgs = [exp_avgs[i] for i in bucket]
            b_sqs = [exp_avg_sqs[i] for i in bucket]
            b_steps = [steps[i] for i in bucket]
            b_grads = self._rotated(group, [grads[i] for i in bucket], b_avgs, b_steps)

            adam_moments_(b_avgs, b_sqs, b_grads, beta1, beta2)
            bc2_sqrt = [math.sqrt(1 - beta2**step) for step in b_steps]
            neg_step_size = [-lr * s / (1 - beta1**step) for s, step in zip(bc2_sqrt, b_steps)]
            denom = torch._foreach_sqrt(b_sqs)
            torch._foreach_add_(denom, [eps * s for s in bc2_sqrt])
            if weight_decay != 0:
                torch._foreach_mul_(b_params, 1.0 - lr * weight_decay)
            torch._foreach_addcdiv_(b_params, b_avgs, denom, neg_step_size)


class GYROSGD(_GYROBase):
    """SGD whose gradient is projected against a momentum buffer when they oppose (GYRO).

    As in the source, the buffer ``m <- momentum * m + (1 - momentum) * g`` only detects the
    oscillation; the step is ``p -= lr * g`` with the (rotated) gradient.

    Args:
        params: parameters or parameter groups.
        lr: learning rate (1e-3).
        momentum: decay of the detection buffer, in [0, 1) (0.9).
        theta_base: projection when ``cos(g, m) < -theta_base``, in [0, 1) (0).
        proj_factor: share of the opposing component removed, in [0, 1] (1).
        warmup_steps: steps before the projection is active; ``None`` is
            ``round(1 / (1 - momentum))`` of the constructor's ``momentum`` (10 by default).
        eps: norm threshold of the projection (1e-8).
        telemetry: gather the numbers ``get_telemetry()`` returns (costs one host sync a step).
    """

    def __init__(
        self,
        params: Any,
        lr: float = 1e-3,
        momentum: float = 0.9,
        theta_base: float = 0.0,
        proj_factor: float = 1.0,
        warmup_steps: int | None = None,
        eps: float = 1e-8,
        telemetry: bool = False,
    ) -> None:
        check_range("momentum", momentum, 0.0, 1.0, high_open=True)
        if warmup_steps is None:
            warmup_steps = _default_warmup(momentum)
        defaults = constructor_defaults(locals())
        super().__init__(params, defaults)

    def _warmup_beta(self, group: dict[str, Any]) -> float:
        return group["momentum"]

    def _prepare_group(self, group: dict[str, Any]) -> None:
        check_range("momentum", group["momentum"], 0.0, 1.0, high_open=True)
        super()._prepare_group(group)

    def _step_group(self, group: dict[str, Any], params: list[Tensor], grads: list[Tensor]) -> None:
        if not params:
            return
        steps, bufs = self._advance(group, params)
        params, grads, bufs = as_real(params), as_real(grads), as_real(bufs)
        momentum, lr = group["momentum"], group["lr"]
        for bucket in device_dtype_buckets(params):
            b_bufs = [bufs[i] for i in bucket]
            b_grads = self._rotated(
                group, [grads[i] for i in bucket], b_bufs, [steps[i] for i in bucket]
            )
            torch._foreach_mul_(b_bufs, momentum)
            torch._foreach_add_(b_bufs, b_grads, alpha=1 - momentum)
            torch._foreach_add_([params[i] for i in bucket], b_grads, alpha=-lr)
