"""Lion (Chen et al. 2023, "Symbolic Discovery of Optimization Algorithms") and the Lion–SGD
interpolation of Sobotka et al. (the paper this project reproduces).

Lion, with the reference implementation's order of operations (lucidrains/lion-pytorch, the one the
paper's code vendors):

    θ <- θ · (1 - lr · wd)
    θ <- θ - lr · sign(β₁ · m + (1 - β₁) · g)
    m <- β₂ · m + (1 - β₂) · g                       defaults lr = 1e-4, betas = (0.9, 0.99)

Lion–SGD: θ <- θ + α · Δθ_Lion + (1 - α) · Δθ_SGD, both parts stepping on the same gradient and
keeping their own state (Lion's ``exp_avg``; SGD's ``momentum_buffer``, torch's SGD exactly). It is
applied as ``θ · (1 - α·lr·wd) - α·lr·sign(c) - (1 - α)·sgd_lr·d``, the same sum, arranged so that
α = 1 reproduces ``Lion`` and α = 0 reproduces ``torch.optim.SGD`` to the bit. The paper's
interpolation experiment used SGD(lr=0.5, momentum=0.9) and Lion(lr=0.005) with weights 0.9 and 0.1:
``LionSGD(params, alpha=0.1, lr=0.005, sgd_lr=0.5, momentum=0.9)``.

Both refuse complex parameters when a group is added (the reference's ``sign`` is defined for
real tensors only).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ._common import (
    BaselineOptimizer,
    check_betas,
    check_range,
    constructor_defaults,
    device_dtype_buckets,
)

__all__ = ["Lion", "LionSGD"]


def _lion_update(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    *,
    lr: float,
    betas: tuple[float, float],
    weight_decay: float,
    weight: float = 1.0,
) -> None:
    """Add ``weight`` × Lion's step to ``params`` and advance its momentum (always)."""
    beta1, beta2 = betas
    if weight != 0:
        if weight_decay != 0:
            torch._foreach_mul_(params, 1 - weight * lr * weight_decay)
        direction = torch._foreach_mul(exp_avgs, beta1)
        torch._foreach_add_(direction, grads, alpha=1 - beta1)
        torch._foreach_sign_(direction)
        torch._foreach_add_(params, direction, alpha=-weight * lr)
    torch._foreach_mul_(exp_avgs, beta2)
    torch._foreach_add_(exp_avgs, grads, alpha=1 - beta2)


def _sgd_update(
    params: list[Tensor],
    grads: list[Tensor],
    states: list[dict[str, Any]],
    *,
    lr: float,
    momentum: float,
    dampening: float,
    nesterov: bool,
    weight: float = 1.0,
) -> None:
    """Add ``weight`` × torch-SGD's step to ``params`` and advance its buffers (always)."""
    directions = grads
    if momentum != 0:
        old = [i for i, state in enumerate(states) if "momentum_buffer" in state]
        for i, state in enumerate(states):
            if "momentum_buffer" not in state:
                state["momentum_buffer"] = grads[i].detach().clone()
        if old:
            buffers = [states[i]["momentum_buffer"] for i in old]
            torch._foreach_mul_(buffers, momentum)
            torch._foreach_add_(buffers, [grads[i] for i in old], alpha=1 - dampening)
        buffers = [state["momentum_buffer"] for state in states]
        directions = torch._foreach_add(grads, buffers, alpha=momentum) if nesterov else buffers
    if weight != 0:
        torch._foreach_add_(params, directions, alpha=-weight * lr)


class Lion(BaselineOptimizer):
    """Lion: the sign of an interpolated momentum (Chen et al. 2023).

    Args:
        params: parameters or parameter groups.
        lr: learning rate (1e-4; Lion wants 3-10× less than Adam).
        betas: ``(β₁, β₂)``: interpolation for the update and momentum decay, each in [0, 1].
        weight_decay: decoupled decay ``θ *= 1 - lr * weight_decay`` (0).
    """

    def __init__(
        self,
        params: Any,
        lr: float = 1e-4,
        betas: tuple[float, float] = (0.9, 0.99),
        weight_decay: float = 0.0,
    ) -> None:
        super().__init__(params, dict(lr=lr, betas=betas, weight_decay=weight_decay))

    def _prepare_group(self, group: dict[str, Any]) -> None:
        check_range("learning rate", group["lr"], 0.0)
        check_betas(group["betas"], closed=True)
        check_range("weight_decay", group["weight_decay"], 0.0)
        self._refuse_complex(group, "Lion's update is the sign of a real momentum")

    def _step_group(self, group: dict[str, Any], params: list[Tensor], grads: list[Tensor]) -> None:
        exp_avgs = self._zero_state(params, "exp_avg")
        for bucket in device_dtype_buckets(params):
            _lion_update(
                [params[i] for i in bucket],
                [grads[i] for i in bucket],
                [exp_avgs[i] for i in bucket],
                lr=group["lr"],
                betas=group["betas"],
                weight_decay=group["weight_decay"],
            )


class LionSGD(Lion):
    """α · Lion + (1 − α) · SGD, each part with its own state (Sobotka et al.'s interpolation).

    Args:
        params: parameters or parameter groups.
        alpha: Lion's share in [0, 1] (α = 1 is Lion, α = 0 is SGD) (0.5).
        lr: Lion's learning rate (1e-4).
        betas: Lion's ``(β₁, β₂)`` (0.9, 0.99).
        weight_decay: Lion's decoupled weight decay (0).
        sgd_lr: SGD's learning rate; ``None`` uses ``lr`` (read each step, so schedulers on
            ``lr`` move both parts).
        momentum, dampening, nesterov: SGD's, as in ``torch.optim.SGD`` (0, 0, False).
    """

    def __init__(
        self,
        params: Any,
        alpha: float = 0.5,
        lr: float = 1e-4,
        betas: tuple[float, float] = (0.9, 0.99),
        weight_decay: float = 0.0,
        sgd_lr: float | None = None,
        momentum: float = 0.0,
        dampening: float = 0.0,
        nesterov: bool = False,
    ) -> None:
        defaults = constructor_defaults(locals())
        BaselineOptimizer.__init__(self, params, defaults)

    def _prepare_group(self, group: dict[str, Any]) -> None:
        super()._prepare_group(group)
        check_range("alpha", group["alpha"], 0.0, 1.0)
        if group["sgd_lr"] is not None:
            check_range("sgd_lr", group["sgd_lr"], 0.0)
        check_range("momentum", group["momentum"], 0.0, 1.0, high_open=True)
        check_range("dampening", group["dampening"], 0.0, 1.0)
        if group["nesterov"] and (group["momentum"] <= 0 or group["dampening"] != 0):
            raise ValueError("Nesterov momentum requires a momentum and zero dampening")

    def _step_group(self, group: dict[str, Any], params: list[Tensor], grads: list[Tensor]) -> None:
        exp_avgs = self._zero_state(params, "exp_avg")
        alpha = group["alpha"]
        sgd_lr = group["lr"] if group["sgd_lr"] is None else group["sgd_lr"]
        for bucket in device_dtype_buckets(params):
            b_params = [params[i] for i in bucket]
            b_grads = [grads[i] for i in bucket]
            _lion_update(
                b_params,
                b_grads,
                [exp_avgs[i] for i in bucket],
                lr=group["lr"],
                betas=group["betas"],
                weight_decay=group["weight_decay"],
                weight=alpha,
            )
            _sgd_update(
                b_params,
                b_grads,
                [self.state[params[i]] for i in bucket],
                lr=sgd_lr,
                momentum=group["momentum"],
                dampening=group["dampening"],
                nesterov=group["nesterov"],
                weight=1 - alpha,
            )
