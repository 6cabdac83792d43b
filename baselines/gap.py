"""GAP (Greedy Alignment Principle, Lee & Lee 2025): Adam(W) and SGD+momentum that choose β₁ (or
the momentum) online from a candidate list, by the alignment of each candidate's update with the
current gradient.

Source: the README of ironjr/gap (seed 001; the repository itself could not be fetched here). Its
formulas, with ``g`` the gradient that enters the buffers and the K candidates' buffers all
updated every step:

    Adam:  J_j = (g · update_j) · sqrt((1 - β₁_j²) / W_j),   W_j = mean(1 / (sqrt(v̂_j) + ε))
    SGDM:  J_j = (g · buf_j) · sqrt(1 - m_j²)

and the candidate with the largest J is applied. Modes (``type``):

- ``'default'``: one ``(β₁, β₂)`` pair (one momentum); the step *is* torch's: it calls
  ``torch.optim.adam.adam`` / ``adamw`` / ``torch.optim.sgd.sgd`` with the group's settings, so
  the trajectory equals ``torch.optim.Adam`` / ``AdamW`` / ``SGD`` to the bit (``foreach`` as
  torch chooses it). No J, no hysteresis, ``last_choice`` stays ``None``.
- ``'switch'``: one choice for the whole group from the J summed over its parameters, smoothed
  across steps when ``J_ema > 0``: ``J_s = J_ema * J_s_prev + (1 - J_ema) * J_sum``.
- ``'switch_parameter_wise'``: every parameter tensor picks its own candidate.

Choices made where the README is ambiguous (each is tested in tests/baselines/test_gap.py):

1. ``update_j`` is the step candidate j would take divided by ``-lr``: ``m̂_j / (sqrt(v̂_j) + ε)``
   with both bias corrections (``m̂ = m / (1 - β₁ʲᵗ)``, ``v̂ = v / (1 - β₂ᵗ)``), computed *after*
   this step's gradient entered the buffers (the README's note equates (g·buf) with the
   two-dot-product form ``buf·buf - m·(buf·prev_buf)``, which holds for the updated buffer).
   ``W_j`` averages over the elements of the parameter tensor, with the same ``v̂_j`` and ``ε``.
2. ``g`` is the gradient the buffers see: with coupled weight decay (``decoupled_weight_decay=
   False``) it includes ``weight_decay * p``; with decoupled decay it is the raw gradient.
3. The global ``switch`` sums the per-tensor J of the group's parameters (each with its own
   ``W``). Without ``J_ema`` (or on the first step) the raw sum decides. ``J_s`` is kept in
   ``param_group['J_smoothed']`` (K floats) and restored by ``load_state_dict``.
4. Ties go to the lowest candidate index.
5. Hysteresis: a counter of consecutive steps whose *raw* J of the applied candidate is negative
   (the group's summed J for ``'switch'``, kept in ``param_group['hysteresis_count']``; each
   tensor's own J for ``'switch_parameter_wise'``, in its state). When it reaches
   ``hysteresis_threshold`` the first-moment buffers of *all* candidates (of the group, or of that
   tensor) are multiplied by ``soft_reset`` and the counter restarts. The reset acts *after* this
   step's update, i.e. on the following steps. A non-negative J restarts the counter.
6. ``second_order_momentum_reset_mode`` (Adam): ``'none'`` keeps v, ``'same'`` multiplies it by
   ``soft_reset``, ``'square'`` by ``soft_reset²`` (v is quadratic in the gradient).
7. ``lr_modulation=True`` multiplies the chosen candidate's learning rate by its J scale factor
   without the data-dependent part: ``sqrt(1 - β₁_c²)`` (Adam) or ``sqrt(1 - m_c²)`` (SGDM), so the
   applied update is the unit-norm filter whose alignment J measured.
8. ``param_group['last_choice']``: an int for ``'switch'``; for ``'switch_parameter_wise'`` a list
   aligned with ``param_group['params']`` (a tensor without a gradient this step keeps its previous
   entry, ``None`` before its first step).
9. Candidates in the switch modes are a list of ``(β₁, β₂)`` pairs (of momenta); a single pair (a
   single number) is accepted as a one-candidate list. The state holds lists of K tensors
   (``exp_avg``, ``momentum_buffer``), each allocated on its own so that identical candidates
   compute bit-identical J (a reduction's rounding depends on memory alignment). When all
   candidates share β₂ their K second moments are identical at every step, so ``exp_avg_sq``
   holds one tensor instead of K.
10. Complex parameters: ``'default'`` is torch's step, so it takes them as torch does
    (``view_as_real``); the switch modes refuse them when the group is added (J is a real
    alignment, which the README defines for real gradients only).
11. SGDM switch buffers follow torch's SGD per candidate: the first step copies the gradient, then
    ``buf = m_j * buf + (1 - dampening) * g``; Nesterov applies ``g + m_c * buf_c``. The J always
    uses ``buf_j``.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor
from torch.optim.adam import adam as _torch_adam
from torch.optim.adamw import adamw as _torch_adamw
from torch.optim.sgd import sgd as _torch_sgd

from ._common import (
    BaselineOptimizer,
    check_betas,
    check_choice,
    check_int,
    check_range,
    constructor_defaults,
)

__all__ = ["GAPSGDM", "GAPAdam"]

MODES = ("default", "switch", "switch_parameter_wise")
SECOND_MOMENT_RESET_MODES = ("none", "same", "square")
_ADAM_TAKES_DECOUPLED = "decoupled_weight_decay" in inspect.signature(_torch_adam).parameters

# apply(choice, lr) performs one tensor's update with candidate `choice`.
_Apply = Callable[[int, float], None]


def _argmax(values: list[float]) -> int:
    """Index of the largest value; ties go to the lowest index, NaN never wins."""
    return max(
        range(len(values)), key=lambda j: (-math.inf if math.isnan(values[j]) else values[j], -j)
    )


class _GAPBase(BaselineOptimizer):
    """Candidate selection, hysteresis and bookkeeping shared by GAPAdam and GAPSGDM."""

    def _candidates(self, group: dict[str, Any]) -> list[Any]:
        """The group's candidate list (validated)."""
        raise NotImplementedError

    def _j_scales(self, group: dict[str, Any]) -> list[float]:
        """The data-independent J factor of each candidate (also the lr modulation)."""
        raise NotImplementedError

    def _default_step(
        self, group: dict[str, Any], params: list[Tensor], grads: list[Tensor]
    ) -> None:
        raise NotImplementedError

    def _prepare_candidates(
        self, group: dict[str, Any], param: Tensor, grad: Tensor
    ) -> tuple[Tensor, _Apply]:
        """Update one tensor's K buffer sets; return its raw J (K,) and how to apply a choice."""
        raise NotImplementedError

    def _soft_reset(self, group: dict[str, Any], param: Tensor) -> None:
        raise NotImplementedError

    def _prepare_group(self, group: dict[str, Any]) -> None:
        check_choice("type", group["type"], MODES)
        check_range("learning rate", group["lr"], 0.0)
        check_range("weight_decay", group["weight_decay"], 0.0)
        check_range("soft_reset", group["soft_reset"], 0.0, 1.0)
        check_int("hysteresis_threshold", group["hysteresis_threshold"], 1)
        check_range("J_ema", group["J_ema"], 0.0, 1.0, high_open=True)
        if not isinstance(group["lr_modulation"], bool):
            raise ValueError(f"Invalid lr_modulation: {group['lr_modulation']!r} (must be a bool)")
        self._candidates(group)
        if group["type"] != "default":
            self._refuse_complex(
                group, f"type={group['type']!r} compares real alignments J (type='default' does)"
            )
        group.setdefault("last_choice", None)
        group.setdefault("hysteresis_count", 0)
        group.setdefault("J_smoothed", None)

    def _step_group(self, group: dict[str, Any], params: list[Tensor], grads: list[Tensor]) -> None:
        if not params:
            return
        if group["type"] == "default":
            self._default_step(group, params, grads)
            return
        prepared = [self._prepare_candidates(group, p, g) for p, g in zip(params, grads)]
        host_device = prepared[0][0].device
        raw_j = torch.stack([j.to(host_device) for j, _ in prepared]).tolist()
        if group["type"] == "switch":
            choices, resets = self._choose_global(group, raw_j)
        else:
            choices, resets = self._choose_per_tensor(group, params, raw_j)

        scales = self._j_scales(group)
        for (_, apply), choice in zip(prepared, choices):
            lr = group["lr"] * (scales[choice] if group["lr_modulation"] else 1.0)
            apply(choice, lr)
        for param, reset in zip(params, resets):
            if reset:
                self._soft_reset(group, param)

    def _choose_global(self, group: dict[str, Any], raw_j: list[list[float]]) -> tuple[list, list]:
        total = [math.fsum(column) for column in zip(*raw_j)]
        decisive = total
        ema, previous = group["J_ema"], group["J_smoothed"]
        if ema > 0:
            if previous is not None and len(previous) == len(total):
                decisive = [ema * old + (1 - ema) * new for old, new in zip(previous, total)]
            group["J_smoothed"] = decisive
        choice = _argmax(decisive)
        group["last_choice"] = choice
        count = group["hysteresis_count"] + 1 if total[choice] < 0 else 0
        reset = count >= group["hysteresis_threshold"]
        group["hysteresis_count"] = 0 if reset else count
        return [choice] * len(raw_j), [reset] * len(raw_j)

    def _choose_per_tensor(
        self, group: dict[str, Any], params: list[Tensor], raw_j: list[list[float]]
    ) -> tuple[list, list]:
        choices, resets = [], []
        for param, row in zip(params, raw_j):
            choice = _argmax(row)
            state = self.state[param]
            count = state.get("hysteresis_count", 0) + 1 if row[choice] < 0 else 0
            reset = count >= group["hysteresis_threshold"]
            state["hysteresis_count"] = 0 if reset else count
            choices.append(choice)
            resets.append(reset)
        last = group["last_choice"]
        if not isinstance(last, list) or len(last) != len(group["params"]):
            last = [None] * len(group["params"])
        position = {id(p): i for i, p in enumerate(group["params"])}
        for param, choice in zip(params, choices):
            last[position[id(param)]] = choice
        group["last_choice"] = last
        return choices, resets


class GAPAdam(_GAPBase):
    """Adam / AdamW choosing β₁ online by the Greedy Alignment Principle (see the module doc).

    Args:
        params: parameters or parameter groups.
        lr: learning rate (1e-3).
        betas: ``(β₁, β₂)`` for ``'default'``; the candidates, a list of pairs, for the switches.
        eps: denominator term (1e-8).
        weight_decay: L2 penalty (Adam) or decoupled decay (AdamW) (0).
        decoupled_weight_decay: AdamW's ``p *= 1 - lr * weight_decay`` instead of the L2 gradient.
        type: ``'default'`` | ``'switch'`` | ``'switch_parameter_wise'``.
        lr_modulation: scale the chosen candidate's lr by ``sqrt(1 - β₁_c²)``.
        soft_reset: factor applied to the first moments by the hysteresis, in [0, 1] (0.9).
        hysteresis_threshold: consecutive negative-J steps that trigger it (10).
        second_order_momentum_reset_mode: ``'none'`` | ``'same'`` | ``'square'``.
        J_ema: smoothing of the global switch's J across steps, in [0, 1) (0 = off).
        foreach: torch's ``foreach`` flag, used by the ``'default'`` type.
    """

    def __init__(
        self,
        params: Any,
        lr: float = 1e-3,
        betas: Any = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        decoupled_weight_decay: bool = False,
        type: str = "default",
        lr_modulation: bool = False,
        soft_reset: float = 0.9,
        hysteresis_threshold: int = 10,
        second_order_momentum_reset_mode: str = "none",
        J_ema: float = 0.0,
        foreach: bool | None = None,
    ) -> None:
        defaults = constructor_defaults(locals())
        super().__init__(params, defaults)

    def _prepare_group(self, group: dict[str, Any]) -> None:
        check_range("epsilon value", group["eps"], 0.0)
        check_choice(
            "second_order_momentum_reset_mode",
            group["second_order_momentum_reset_mode"],
            SECOND_MOMENT_RESET_MODES,
        )
        super()._prepare_group(group)

    def _candidates(self, group: dict[str, Any]) -> list[tuple[float, float]]:
        betas = group["betas"]
        is_pair = isinstance(betas, (tuple, list)) and len(betas) == 2
        is_pair = is_pair and all(isinstance(b, (int, float)) for b in betas)
        if group["type"] == "default":
            if not is_pair:
                raise ValueError(
                    f"Invalid betas for type='default': expected one pair, got {betas!r}"
                )
            return [check_betas(betas)]
        if is_pair:
            return [check_betas(betas)]
        if not isinstance(betas, (tuple, list)) or not betas:
            raise ValueError(f"Invalid betas for type={group['type']!r}: expected a list of pairs")
        return [check_betas(pair, f"betas[{k}]") for k, pair in enumerate(betas)]

    def _j_scales(self, group: dict[str, Any]) -> list[float]:
        return [math.sqrt(1 - beta1**2) for beta1, _ in self._candidates(group)]

    def _default_step(
        self, group: dict[str, Any], params: list[Tensor], grads: list[Tensor]
    ) -> None:
        exp_avgs, exp_avg_sqs, steps = [], [], []
        for param in params:
            state = self.state[param]
            if len(state) == 0:
                state["step"] = torch.tensor(0.0, dtype=torch.get_default_dtype())
                state["exp_avg"] = torch.zeros_like(param, memory_format=torch.preserve_format)
                state["exp_avg_sq"] = torch.zeros_like(param, memory_format=torch.preserve_format)
            exp_avgs.append(state["exp_avg"])
            exp_avg_sqs.append(state["exp_avg_sq"])
            steps.append(state["step"])
        beta1, beta2 = group["betas"]
        kwargs = dict(
            foreach=group["foreach"],
            has_complex=any(torch.is_complex(p) for p in params),
            amsgrad=False,
            beta1=beta1,
            beta2=beta2,
            lr=group["lr"],
            weight_decay=group["weight_decay"],
            eps=group["eps"],
            maximize=False,
        )
        if _ADAM_TAKES_DECOUPLED:
            kwargs["decoupled_weight_decay"] = group["decoupled_weight_decay"]
            _torch_adam(params, grads, exp_avgs, exp_avg_sqs, [], steps, **kwargs)
        elif group["decoupled_weight_decay"]:
            _torch_adamw(params, grads, exp_avgs, exp_avg_sqs, [], steps, **kwargs)
        else:
            _torch_adam(params, grads, exp_avgs, exp_avg_sqs, [], steps, **kwargs)

    def _prepare_candidates(
        self, group: dict[str, Any], param: Tensor, grad: Tensor
    ) -> tuple[Tensor, _Apply]:
        candidates = self._candidates(group)
        beta1s = [b1 for b1, _ in candidates]
        beta2s = [b2 for _, b2 in candidates]
        if len(set(beta2s)) == 1:
            beta2s = beta2s[:1]
        shared = len(beta2s) == 1
        state = self.state[param]
        if len(state) == 0:
            state["step"] = torch.tensor(0.0, dtype=torch.get_default_dtype())
            state["exp_avg"] = [torch.zeros_like(param) for _ in beta1s]
            state["exp_avg_sq"] = [torch.zeros_like(param) for _ in beta2s]
        state["step"] += 1
        step = state["step"].item()
        lr, weight_decay = group["lr"], group["weight_decay"]
        if weight_decay != 0:
            if group["decoupled_weight_decay"]:
                param.mul_(1 - lr * weight_decay)
            else:
                grad = grad.add(param, alpha=weight_decay)

        exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
        for buffer, beta1 in zip(exp_avg, beta1s):
            buffer.lerp_(grad, 1 - beta1)
        inv_denoms, weighted_grads, mean_inv_denoms = [], [], []
        for buffer, beta2 in zip(exp_avg_sq, beta2s):
            buffer.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
            inv_denom = buffer.sqrt().div_(math.sqrt(1 - beta2**step))
            inv_denom.add_(group["eps"]).reciprocal_()  # 1 / (sqrt(v̂) + eps)
            inv_denoms.append(inv_denom)
            mean_inv_denoms.append(inv_denom.mean())
            # g · (m_j / (sqrt(v̂_j) + eps)) as m_j · (g / (sqrt(v̂_j) + eps)): no extra temporary.
            weighted_grads.append((grad * inv_denom).reshape(-1))
        second = [0 if shared else j for j in range(len(beta1s))]
        alignment = torch.stack(
            [torch.dot(m.reshape(-1), weighted_grads[k]) for m, k in zip(exp_avg, second)]
        )
        bc1 = [1 - beta1**step for beta1 in beta1s]
        scale = torch.tensor(
            [math.sqrt(1 - b**2) / c for b, c in zip(beta1s, bc1)],
            dtype=alignment.dtype,
            device=alignment.device,
        )
        raw_j = alignment * scale / torch.stack([mean_inv_denoms[k] for k in second]).sqrt()

        def apply(choice: int, choice_lr: float) -> None:
            param.addcmul_(
                exp_avg[choice], inv_denoms[second[choice]], value=-choice_lr / bc1[choice]
            )

        return raw_j, apply

    def _soft_reset(self, group: dict[str, Any], param: Tensor) -> None:
        state, factor = self.state[param], group["soft_reset"]
        torch._foreach_mul_(state["exp_avg"], factor)
        mode = group["second_order_momentum_reset_mode"]
        if mode != "none":
            torch._foreach_mul_(state["exp_avg_sq"], factor if mode == "same" else factor**2)


class GAPSGDM(_GAPBase):
    """SGD with momentum choosing the momentum online by the Greedy Alignment Principle.

    Args:
        params: parameters or parameter groups.
        lr: learning rate (1e-3).
        momentum: a number for ``'default'``; a list (the candidates) for the switch types (0).
        dampening: torch's dampening (0).
        weight_decay: L2 penalty added to the gradient (0).
        nesterov: Nesterov momentum (needs momentum > 0 and no dampening, as in torch).
        type: ``'default'`` | ``'switch'`` | ``'switch_parameter_wise'``.
        lr_modulation: scale the chosen candidate's lr by ``sqrt(1 - m_c²)``.
        soft_reset: factor applied to the buffers by the hysteresis, in [0, 1] (0.5).
        hysteresis_threshold: consecutive negative-J steps that trigger it (5).
        J_ema: smoothing of the global switch's J across steps, in [0, 1) (0 = off).
        foreach: torch's ``foreach`` flag, used by the ``'default'`` type.
    """

    def __init__(
        self,
        params: Any,
        lr: float = 1e-3,
        momentum: Any = 0.0,
        dampening: float = 0.0,
        weight_decay: float = 0.0,
        nesterov: bool = False,
        type: str = "default",
        lr_modulation: bool = False,
        soft_reset: float = 0.5,
        hysteresis_threshold: int = 5,
        J_ema: float = 0.0,
        foreach: bool | None = None,
    ) -> None:
        defaults = constructor_defaults(locals())
        super().__init__(params, defaults)

    def _prepare_group(self, group: dict[str, Any]) -> None:
        check_range("dampening", group["dampening"], 0.0, 1.0)
        super()._prepare_group(group)
        if group["nesterov"] and (min(self._candidates(group)) <= 0 or group["dampening"] != 0):
            raise ValueError("Nesterov momentum requires a momentum and zero dampening")

    def _candidates(self, group: dict[str, Any]) -> list[float]:
        momentum = group["momentum"]
        if group["type"] == "default" or isinstance(momentum, (int, float)):
            values = [momentum]
        elif isinstance(momentum, (tuple, list)) and momentum:
            values = list(momentum)
        else:
            raise ValueError(f"Invalid momentum for type={group['type']!r}: expected a list")
        for k, value in enumerate(values):
            check_range(f"momentum value (candidate {k})", value, 0.0, 1.0, high_open=True)
        return [float(v) for v in values]

    def _j_scales(self, group: dict[str, Any]) -> list[float]:
        return [math.sqrt(1 - m**2) for m in self._candidates(group)]

    def _default_step(
        self, group: dict[str, Any], params: list[Tensor], grads: list[Tensor]
    ) -> None:
        momentum = group["momentum"]
        buffers = [self.state[p].get("momentum_buffer") for p in params] if momentum != 0 else []
        _torch_sgd(
            params,
            grads,
            buffers,
            has_sparse_grad=False,
            foreach=group["foreach"],
            weight_decay=group["weight_decay"],
            momentum=momentum,
            lr=group["lr"],
            dampening=group["dampening"],
            nesterov=group["nesterov"],
            maximize=False,
        )
        for param, buffer in zip(params, buffers):
            self.state[param]["momentum_buffer"] = buffer

    def _prepare_candidates(
        self, group: dict[str, Any], param: Tensor, grad: Tensor
    ) -> tuple[Tensor, _Apply]:
        momenta = self._candidates(group)
        if group["weight_decay"] != 0:
            grad = grad.add(param, alpha=group["weight_decay"])
        state = self.state[param]
        if "momentum_buffer" not in state:
            state["momentum_buffer"] = [grad.detach().clone() for _ in momenta]
        else:
            for buffer, momentum in zip(state["momentum_buffer"], momenta):
                buffer.mul_(momentum).add_(grad, alpha=1 - group["dampening"])
        buffers = state["momentum_buffer"]
        flat_grad = grad.reshape(-1)
        alignment = torch.stack([torch.dot(buffer.reshape(-1), flat_grad) for buffer in buffers])
        scale = torch.tensor(self._j_scales(group), dtype=alignment.dtype, device=alignment.device)
        raw_j = alignment * scale

        def apply(choice: int, choice_lr: float) -> None:
            direction = buffers[choice]
            if group["nesterov"]:
                direction = grad.add(direction, alpha=momenta[choice])
            param.add_(direction, alpha=-choice_lr)

        return raw_j, apply

    def _soft_reset(self, group: dict[str, Any], param: Tensor) -> None:
        torch._foreach_mul_(self.state[param]["momentum_buffer"], group["soft_reset"])
