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
    "as_real",
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


def as_real(tensors: Sequence[Tensor]) -> list[Tensor]:
    """``torch.view_as_real`` of the complex tensors (others as they are): torch's convention for
    complex parameters (``torch.optim.Adam`` does the same), so a complex parameter moves exactly
    as the real parameter ``view_as_real(p)`` would, its real and imaginary parts as coordinates."""
    return [torch.view_as_real(t) if t.is_complex() else t for t in tensors]


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

    Copies and pickles: torch's ``Optimizer.__getstate__`` keeps only ``defaults``, ``state`` and
    ``param_groups``. Attributes a subclass creates in ``_init_attributes`` (caches, telemetry)
    are recreated on unpickling, and those named in ``_pickled_attributes`` travel with the copy,
    so ``copy.deepcopy``, ``pickle`` and ``torch.save(optimizer)`` give an optimizer that steps
    and reports like the original.
    """

    # Attributes beyond torch's pickled state that copies keep (the last step's telemetry).
    _pickled_attributes: tuple[str, ...] = ()

    def __init__(self, params: Any, defaults: dict[str, Any]) -> None:
        self._init_attributes()
        super().__init__(params, defaults)

    def _init_attributes(self) -> None:
        """Create the instance attributes that torch's pickled state does not hold."""

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        state.update({name: getattr(self, name) for name in self._pickled_attributes})
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self._init_attributes()
        super().__setstate__(state)

    def _refuse_complex(self, group: dict[str, Any], reason: str) -> None:
        """A clear ``ValueError`` when ``group`` holds a complex parameter this update cannot
        take (raised when the group is added, before any step)."""
        if any(torch.is_complex(p) for p in group["params"]):
            raise ValueError(
                f"{type(self).__name__} does not support complex parameters: {reason}. "
                "Optimize torch.view_as_real(param) (a real tensor) instead"
            )

    def _zero_state(self, params: Sequence[Tensor], key: str) -> list[Tensor]:
        """Each parameter's ``state[key]``, created as zeros like the parameter on first use
        (the momentum buffers of Lion, LARS, ...)."""
        for param in params:
            state = self.state[param]
            if key not in state:
                state[key] = torch.zeros_like(param, memory_format=torch.preserve_format)
        return [self.state[p][key] for p in params]

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
