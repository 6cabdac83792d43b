"""Schedule-free AdamW (Defazio et al. 2024, "The Road Less Scheduled"; the self-tuning winner of
AlgoPerf 2024), the ``schedulefree`` package's ``AdamWScheduleFree`` with its defaults, made to
keep this package's optimizer contract.

Schedule-free keeps two sequences: ``z``, the AdamW-like iterate, and ``x``, an average of the
``z``s; the gradient is taken at their interpolation ``y = (1 − β₁)·z + β₁·x``. The model's
parameters hold ``y`` in train mode and ``x`` in eval mode, and ``train()`` / ``eval()`` switch
them: train with the optimizer in train mode, evaluate in eval mode. Which point a loss is
measured at: a training loss computed on the parameters in train mode (the loss whose gradient
``step`` takes, the one ``l2o.training.train_optimizee`` records for the criteria) is at ``y``;
a test loss after ``eval()`` is at ``x``, the point schedule-free returns.

What this subclass adds to the package's class (module ``schedulefree``, imported here only, so
``baselines`` imports without it):

* it starts in train mode, so ``step`` works without a first ``train()`` as every other
  optimizer's does; a group added later takes the mode of the others;
* ``step`` in eval mode is a ``RuntimeError`` saying so (the package raises a bare
  ``Exception``), and sparse gradients are refused by name;
* hyperparameters are checked, also for groups added later (a ``ValueError`` naming the field);
* complex parameters are refused: its second moment squares them as complex numbers.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

from ._common import check_betas, check_int, check_range

try:
    from schedulefree import AdamWScheduleFree
except ImportError:
    raise ImportError(
        "the sf_adamw baseline needs the 'schedulefree' package: pip install 'schedulefree>=1.4'"
    ) from None

__all__ = ["ScheduleFreeAdamW"]


class ScheduleFreeAdamW(AdamWScheduleFree):
    """``schedulefree.AdamWScheduleFree`` (same arguments and defaults: lr 0.0025, betas
    (0.9, 0.999), eps 1e-8, weight_decay 0, warmup_steps 0, r 0, weight_lr_power 2), starting in
    train mode. The parameters hold ``y`` (where gradients are taken) in train mode and the
    average ``x`` after ``eval()``."""

    def __init__(self, params: Any, **hparams: Any) -> None:
        super().__init__(params, **hparams)
        self.train()

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        check_range("learning rate", group["lr"], 0.0)
        group["betas"] = check_betas(group["betas"])
        # eval() moves to x = (y - (1 - β₁) z) / β₁: β₁ = 0 has no average to move to
        check_range("beta1 (betas[0])", group["betas"][0], 0.0, 1.0, low_open=True, high_open=True)
        check_range("eps", group["eps"], 0.0)
        check_range("weight_decay", group["weight_decay"], 0.0)
        check_int("warmup_steps", group["warmup_steps"], 0)
        check_range("r", group["r"], 0.0)
        check_range("weight_lr_power", group["weight_lr_power"], 0.0, math.inf)
        if any(torch.is_complex(p) for p in group["params"]):
            raise ValueError(
                "ScheduleFreeAdamW does not support complex parameters: its second moment "
                "squares them as complex numbers. Optimize torch.view_as_real(param) instead"
            )
        if len(self.param_groups) > 1:
            group["train_mode"] = self.param_groups[0]["train_mode"]

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """One step at ``y``; returns the closure's loss (``None`` without one)."""
        if not self.param_groups[0]["train_mode"]:
            raise RuntimeError(
                "ScheduleFreeAdamW.step in eval mode: call optimizer.train() before training "
                "(eval() puts the averaged point x into the parameters)"
            )
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            if any(p.grad is not None and p.grad.is_sparse for p in group["params"]):
                raise RuntimeError(
                    "ScheduleFreeAdamW does not support sparse gradients; densify them "
                    "(grad.to_dense())"
                )
        super().step()
        return loss
