"""HysteroGrad (``HIOptimizer``): a diagonal-Fisher-preconditioned step that is taken only when its
norm clears a hysteretic barrier that stiffens as training travels through information space.

Source: dingste/HysteroGrad (``hysterograd/optimizer.py``). Per parameter group, every step:

    G <- beta * G + (1 - beta) * metric_scale * g²            (every tensor, frozen or not)
    s  = g / (sqrt(G) + epsilon)                              (the preconditioned step)
    n  = |s| over the group, times min(1, grad_clip / (|s| + 1e-6)) when grad_clip is set
    tau += lr * n ;  T *= cooling_rate ;  E <- beta * E + (1 - beta) * n
    h  = stiffening_factor * sqrt(tau) * (1 - clamp(T, 0, 1)) * hysteresis_scale  (* (E + 1e-8)
         when adaptive_threshold)
    if n > h:  p -= lr * clip * s     ("Liquid")   else the parameters stay ("Frozen")

``tau``, ``T`` and ``E`` live, as in the source, in the state of the group's first parameter
(keys ``group_tau``, ``group_temp``, ``avg_energy``), so ``state_dict`` carries them; they keep
torch's default dtype (float32) whatever the parameters' dtype, ``load_state_dict`` included.
``shock()`` multiplies tau by ``factor`` and raises the temperature to at least 0.2. Complex
parameters follow torch's ``view_as_real`` convention (``G`` accumulates the squares of the real
and imaginary parts).

Interface change (numbers unchanged): the source's ``step()`` returns ``(status, grad_norm,
barrier)``; here ``step()`` follows torch and returns the closure's loss, and that triple (means
over the parameter groups, as the source computes them) is ``optimizer.telemetry`` — a named tuple
``(status, grad_norm, barrier)`` — or ``get_telemetry()`` as a dict. The group norm is summed from
per-tensor ``torch._foreach_norm`` values (float rounding), in float32 like the source's
accumulator; hyperparameters are validated (the source checks none).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
from torch import Tensor

from ._common import (
    BaselineOptimizer,
    as_real,
    check_range,
    constructor_defaults,
    device_dtype_buckets,
)

__all__ = ["HIOptimizer", "HysteroGrad", "HysteroTelemetry"]

# The per-group scalars kept, as in the source, in the state of the group's first parameter.
_GROUP_KEYS = ("group_tau", "group_temp", "avg_energy")


class HysteroTelemetry(NamedTuple):
    """What the source's ``step()`` returned: ``"Liquid"`` if any group moved, else ``"Frozen"``;
    the mean over groups of the (clipped) step norm and of the barrier height."""

    status: str
    grad_norm: float
    barrier: float


class HIOptimizer(BaselineOptimizer):
    """Hysteretic information-geometric optimizer (HysteroGrad); see the module docstring.

    Args:
        params: parameters or parameter groups.
        lr: learning rate (1e-3).
        stiffening_factor: barrier growth with sqrt(tau) (0.01).
        beta: EMA coefficient of the metric G and of the average energy, in [0, 1) (0.99).
        epsilon: added to sqrt(G) (1e-7).
        cooling_rate: temperature factor per step, in [0, 1] (0.99).
        initial_temp: starting temperature (1.0).
        metric_scale: amplification of g² in G (1.0).
        adaptive_threshold: multiply the barrier by the average energy (True).
        grad_clip: clip the group's step norm to this value (None = off).
        hysteresis_scale: overall barrier factor (1.0).
    """

    _pickled_attributes = ("telemetry",)

    def __init__(
        self,
        params: Any,
        lr: float = 1e-3,
        stiffening_factor: float = 0.01,
        beta: float = 0.99,
        epsilon: float = 1e-7,
        cooling_rate: float = 0.99,
        initial_temp: float = 1.0,
        metric_scale: float = 1.0,
        adaptive_threshold: bool = True,
        grad_clip: float | None = None,
        hysteresis_scale: float = 1.0,
    ) -> None:
        defaults = constructor_defaults(locals())
        super().__init__(params, defaults)

    def _init_attributes(self) -> None:
        self.telemetry: HysteroTelemetry | None = None
        self._begin_step()

    def _prepare_group(self, group: dict[str, Any]) -> None:
        check_range("learning rate", group["lr"], 0.0)
        check_range("stiffening_factor", group["stiffening_factor"], 0.0)
        check_range("beta", group["beta"], 0.0, 1.0, high_open=True)
        check_range("epsilon", group["epsilon"], 0.0, low_open=True)
        check_range("cooling_rate", group["cooling_rate"], 0.0, 1.0)
        check_range("initial_temp", group["initial_temp"], 0.0)
        check_range("metric_scale", group["metric_scale"], 0.0, low_open=True)
        check_range("hysteresis_scale", group["hysteresis_scale"], 0.0)
        if group["grad_clip"] is not None:
            check_range("grad_clip", group["grad_clip"], 0.0, low_open=True)

    def get_telemetry(self) -> dict[str, Any] | None:
        """The last step's ``status``, ``grad_norm`` and ``barrier`` (None before a step)."""
        return None if self.telemetry is None else self.telemetry._asdict()

    def _begin_step(self) -> None:
        self._moved = 0
        self._barrier_sum = 0.0
        self._norm_sum = 0.0

    def _end_step(self) -> None:
        count = len(self.param_groups)
        self.telemetry = HysteroTelemetry(
            "Liquid" if self._moved > 0 else "Frozen",
            self._norm_sum / count,
            self._barrier_sum / count,
        )

    def _group_state(self, group: dict[str, Any]) -> dict[str, Tensor]:
        reference = group["params"][0]
        state = self.state[reference]
        if "group_tau" not in state:
            state["group_tau"] = torch.tensor(0.0, device=reference.device)
            state["group_temp"] = torch.tensor(group["initial_temp"], device=reference.device)
            state["avg_energy"] = torch.tensor(0.0, device=reference.device)
        return state

    def _step_group(self, group: dict[str, Any], params: list[Tensor], grads: list[Tensor]) -> None:
        group_state = self._group_state(group)
        if not params:
            return
        lr, beta, eps = group["lr"], group["beta"], group["epsilon"]
        metrics = []
        for param in params:
            state = self.state[param]
            if "G" not in state:
                state["G"] = torch.zeros_like(param)
            metrics.append(state["G"])
        params, grads, metrics = as_real(params), as_real(grads), as_real(metrics)

        steps: list[Tensor | None] = [None] * len(params)
        square_norm = torch.tensor(0.0, device=group_state["group_tau"].device)
        for bucket in device_dtype_buckets(params):
            b_metrics = [metrics[i] for i in bucket]
            b_grads = [grads[i] for i in bucket]
            torch._foreach_mul_(b_metrics, beta)
            torch._foreach_addcmul_(
                b_metrics, b_grads, b_grads, value=(1 - beta) * group["metric_scale"]
            )
            denom = torch._foreach_sqrt(b_metrics)
            torch._foreach_add_(denom, eps)
            b_steps = torch._foreach_div(b_grads, denom)
            norms = torch.stack(torch._foreach_norm(b_steps)).to(square_norm.device)
            square_norm += norms.square().sum()
            for i, step in zip(bucket, b_steps):
                steps[i] = step

        total_norm = square_norm.sqrt()
        # The source clips with min(1.0, ratio): a tensor below 1, the float 1.0 otherwise.
        ratio = group["grad_clip"] / (total_norm + 1e-6) if group["grad_clip"] else None
        norm = total_norm if ratio is None else total_norm * ratio.clamp(max=1.0)
        group_state["group_tau"] += lr * norm
        group_state["group_temp"].mul_(group["cooling_rate"])
        group_state["avg_energy"] = beta * group_state["avg_energy"] + (1 - beta) * norm

        cool = 1.0 - group_state["group_temp"].clamp(0.0, 1.0)
        tau_root = group_state["group_tau"].sqrt()
        barrier = group["stiffening_factor"] * tau_root * cool * group["hysteresis_scale"]
        if group["adaptive_threshold"]:
            barrier *= group_state["avg_energy"] + 1e-8

        clipping = [] if ratio is None else [ratio]
        norm_value, barrier_value, *ratio_value = torch.stack([norm, barrier, *clipping]).tolist()
        self._norm_sum += norm_value
        self._barrier_sum += barrier_value
        if norm_value > barrier_value:
            self._moved += 1
            alpha = -lr
            if ratio_value and ratio_value[0] < 1.0:
                alpha = (-lr * ratio).item()
            for bucket in device_dtype_buckets(params):
                torch._foreach_add_(
                    [params[i] for i in bucket], [steps[i] for i in bucket], alpha=alpha
                )

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """torch's, except that ``group_tau``, ``group_temp`` and ``avg_energy`` keep their saved
        dtype (torch casts every floating state tensor but ``step`` to its parameter's dtype,
        which in bfloat16 / float16 rounds them: a resumed run would drift from an uninterrupted
        one)."""
        super().load_state_dict(state_dict)
        saved = state_dict["state"]
        for group, saved_group in zip(self.param_groups, state_dict["param_groups"]):
            entry = saved.get(saved_group["params"][0], {}) if saved_group["params"] else {}
            state = self.state[group["params"][0]] if group["params"] else {}
            for key in _GROUP_KEYS:
                if key in entry:
                    state[key] = entry[key].to(device=state[key].device)

    def shock(self, factor: float = 0.5) -> None:
        """Liquefy: scale the path length tau by ``factor``, lift the temperature to >= 0.2."""
        check_range("factor", factor, 0.0)
        for group in self.param_groups:
            state = self.state.get(group["params"][0], {})
            if "group_tau" in state:
                state["group_tau"].mul_(factor)
                state["group_temp"].clamp_(min=0.2)


HysteroGrad = HIOptimizer
