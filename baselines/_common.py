"""What every handcrafted optimizer here shares: hyperparameter checks, the closure and
sparse-gradient conventions of ``torch.optim``, and grouping tensors for ``torch._foreach_*``.

The checks raise ``ValueError`` with the offending name and value, as torch's optimizers do,
and run for every parameter group (``add_param_group`` included), not just the constructor's
defaults.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

__all__ = [
    "BaselineOptimizer",
    "adam_moments_",
    "check_betas",
    "check_choice",
    "check_int",
    "check_range",
    "constructor_defaults",
    "device_dtype_buckets",
]


def _interval(low: float | None, high: float | None, low_open: bool, high_open: bool) -> str:
    left = "(" if low_open or low is None else "["
    right = ")" if high_open or high is None else "]"
    lo = "-inf" if low is None else f"{low:g}"
    hi = "inf" if high is None else f"{high:g}"
    return f"{left}{lo}, {hi}{right}"


def check_range(
    name: str,
    value: Any,
    low: float | None = None,
    high: float | None = None,
    *,
    low_open: bool = False,
    high_open: bool = False,
) -> None:
    """Raise ``ValueError`` unless ``value`` is a real number inside the interval (NaN fails)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"Invalid {name}: expected a real number, got {value!r}")
    inside = not math.isnan(value)
    if low is not None:
        inside = inside and (value > low if low_open else value >= low)
    if high is not None:
        inside = inside and (value < high if high_open else value <= high)
    if not inside:
        interval = _interval(low, high, low_open, high_open)
        raise ValueError(f"Invalid {name}: {value!r} (must be in {interval})")


def check_int(name: str, value: Any, low: int | None = None) -> None:
    """Raise ``ValueError`` unless ``value`` is an ``int`` (not a bool) and at least ``low``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"Invalid {name}: expected an integer, got {value!r}")
    if low is not None and value < low:
        raise ValueError(f"Invalid {name}: {value!r} (must be >= {low})")


def check_choice(name: str, value: Any, choices: Sequence[Any]) -> None:
    """Raise ``ValueError`` unless ``value`` is one of ``choices``."""
    if value not in choices:
        raise ValueError(
            f"Invalid {name}: {value!r} (must be one of {', '.join(map(repr, choices))})"
        )


def check_betas(betas: Any, name: str = "betas", *, closed: bool = False) -> tuple[float, float]:
    """Check a ``(beta1, beta2)`` pair, each in [0, 1) (or [0, 1] when ``closed``)."""
    if not isinstance(betas, (tuple, list)) or len(betas) != 2:
        raise ValueError(f"Invalid {name}: expected a pair (beta1, beta2), got {betas!r}")
    for index, beta in enumerate(betas):
        check_range(
            f"beta parameter at index {index} of {name}", beta, 0.0, 1.0, high_open=not closed
        )
    return float(betas[0]), float(betas[1])


def constructor_defaults(arguments: dict[str, Any]) -> dict[str, Any]:
    """An optimizer's ``defaults`` from its constructor's ``locals()``: every argument except
    ``self`` and ``params``, so the signature is the one place that lists the hyperparameters.
    Call it before the constructor binds any other local name."""
    return {k: v for k, v in arguments.items() if k not in ("self", "params", "__class__")}


def device_dtype_buckets(tensors: Sequence[Tensor]) -> list[list[int]]:
    """Indices of ``tensors`` grouped by (device, dtype), in first-seen order.

    ``torch._foreach_*`` kernels take lists on one device; one dtype per list keeps CUDA on its
    fused fast path."""
    buckets: dict[tuple[torch.device, torch.dtype], list[int]] = {}
    for index, tensor in enumerate(tensors):
        buckets.setdefault((tensor.device, tensor.dtype), []).append(index)
    return list(buckets.values())


def adam_moments_(
    exp_avgs: list[Tensor],
    exp_avg_sqs: list[Tensor],
    grads: list[Tensor],
    beta1: float,
    beta2: float,
) -> None:
    """Adam's moment updates in the original paper's (and the GYRO / syre sources') arithmetic:
    ``m = β₁ m + (1 - β₁) g`` and ``v = β₂ v + (1 - β₂) g²`` (torch's Adam uses ``lerp`` for m,
    which rounds differently)."""
    torch._foreach_mul_(exp_avgs, beta1)
    torch._foreach_add_(exp_avgs, grads, alpha=1 - beta1)
    torch._foreach_mul_(exp_avg_sqs, beta2)
    torch._foreach_addcmul_(exp_avg_sqs, grads, grads, value=1 - beta2)


class BaselineOptimizer(torch.optim.Optimizer):
    """``torch.optim.Optimizer`` with the step skeleton every baseline here follows.

    ``step(closure)`` evaluates the closure with gradients enabled, hands each parameter group's
    parameters that have a (dense) gradient to ``_step_group`` and returns the closure's loss.
    Subclasses validate a group's hyperparameters in ``_prepare_group``; it runs for every group
    added, so ``{"params": ..., "lr": -1}`` is refused like a bad constructor argument.
    """

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        super().add_param_group(param_group)
        self._prepare_group(self.param_groups[-1])

    def _prepare_group(self, group: dict[str, Any]) -> None:
        """Validate (and complete) one parameter group's hyperparameters."""

    def _begin_step(self) -> None:
        """Hook run once per ``step`` before the groups (telemetry resets)."""

    def _end_step(self) -> None:
        """Hook run once per ``step`` after the groups (telemetry summaries)."""

    def _step_group(self, group: dict[str, Any], params: list[Tensor], grads: list[Tensor]) -> None:
        raise NotImplementedError

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """Perform one optimization step; return the closure's loss (``None`` without one)."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self._begin_step()
        for group in self.param_groups:
            params, grads = [], []
            for param in group["params"]:
                if param.grad is None:
                    continue
                if param.grad.is_sparse:
                    raise RuntimeError(
                        f"{type(self).__name__} does not support sparse gradients; "
                        "densify them (grad.to_dense()) or use torch.optim.SparseAdam"
                    )
                params.append(param)
                grads.append(param.grad)
            self._step_group(group, params, grads)
        self._end_step()
        return loss
