"""Muon on the weight matrices and AdamW on every other tensor, with one learning rate: the way
Muon is used in practice (Jordan et al. 2024, "Muon: An optimizer for hidden layers in neural
networks"; Liu et al. 2025, "Muon is Scalable for LLM Training"), as one ``torch.optim.Optimizer``.

The steps are torch's own: ``torch.optim.Muon``'s functional step (momentum, Newton–Schulz
orthogonalization in bfloat16, decoupled decay ``θ *= 1 − lr·wd``) with
``adjust_lr_fn="match_rms_adamw"`` by default, so a matrix of shape A×B moves by
``0.2·√max(A, B)·lr`` times its orthogonalized momentum, an update of about AdamW's RMS, which
is what lets ONE ``lr`` serve both halves; and ``torch.optim.AdamW``'s functional step for the
rest. Every other hyperparameter is that component's torch default (Muon: momentum 0.95,
Nesterov, weight decay 0.1; AdamW: betas (0.9, 0.999), eps 1e-8, weight decay 0.01).

Which tensors take Muon. The optimizer sees tensors, not the model, so the rule is by shape: a
real 2-D tensor takes Muon, anything else AdamW (biases and norms are 1-D; conv kernels are 4-D
and stay on AdamW, as ``torch.optim.Muon`` takes only matrices; a complex tensor moves as its
real view, torch's convention, and that view is never 2-D). Keller Jordan's Muon and Moonlight
keep the embeddings and the output head on AdamW although they are matrices: pass those in a
parameter group with ``use_muon=False`` to do the same (``use_muon=True`` asks for Muon and
refuses a tensor that is not a real matrix; the default ``None`` applies the shape rule).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torch.optim.adamw import adamw

from ._common import (
    BaselineOptimizer,
    check_betas,
    check_choice,
    check_int,
    check_range,
    constructor_defaults,
)

__all__ = ["MuonAdamW"]

ADJUST_LR_FNS = (None, "original", "match_rms_adamw", "spectral_unclamped")
# torch.optim.Muon's defaults (Keller Jordan's quintic Newton–Schulz coefficients).
NS_COEFFICIENTS = (3.4445, -4.775, 2.0315)
MAX_NS_STEPS = 99  # torch refuses 100 and more


def _torch_muon_step():
    """``torch.optim.Muon``'s functional step (torch >= 2.9)."""
    try:
        from torch.optim._muon import muon
    except ImportError:
        raise ImportError(
            f"the muon baseline needs torch.optim.Muon (torch >= 2.9), found torch "
            f"{torch.__version__}"
        ) from None
    return muon


def _scalar_dtype() -> torch.dtype:
    """The dtype of AdamW's step counter, as ``torch.optim.AdamW`` makes it."""
    return torch.float64 if torch.get_default_dtype() == torch.float64 else torch.float32


def is_muon_matrix(param: Tensor) -> bool:
    """The shape rule: a real 2-D tensor."""
    return param.dim() == 2 and not param.is_complex()


class MuonAdamW(BaselineOptimizer):
    """Muon on the matrices, AdamW on the rest, one ``lr`` (module docstring for the split).

    Args:
        params: parameters or parameter groups (a group may set ``use_muon``).
        lr: the learning rate of both halves (Muon's is adjusted per shape by ``adjust_lr_fn``).
        weight_decay: Muon's decoupled weight decay (0.1).
        momentum: Muon's momentum, in [0, 1) (0.95).
        nesterov: Muon's Nesterov momentum (True).
        ns_coefficients: the Newton–Schulz polynomial's (a, b, c).
        eps: Muon's floor on the norm it divides by before Newton–Schulz (1e-7).
        ns_steps: Newton–Schulz iterations, 1 to 99 (5).
        adjust_lr_fn: Muon's per-shape lr scaling, one of torch's (``match_rms_adamw``).
        adamw_betas: AdamW's (β₁, β₂) ((0.9, 0.999)).
        adamw_eps: AdamW's ε (1e-8).
        adamw_weight_decay: AdamW's decoupled weight decay (0.01).
        use_muon: None (the shape rule), True (Muon for the whole group) or False (AdamW).
    """

    def __init__(
        self,
        params: Any,
        lr: float = 1e-3,
        weight_decay: float = 0.1,
        momentum: float = 0.95,
        nesterov: bool = True,
        ns_coefficients: tuple[float, float, float] = NS_COEFFICIENTS,
        eps: float = 1e-7,
        ns_steps: int = 5,
        adjust_lr_fn: str | None = "match_rms_adamw",
        adamw_betas: tuple[float, float] = (0.9, 0.999),
        adamw_eps: float = 1e-8,
        adamw_weight_decay: float = 0.01,
        use_muon: bool | None = None,
    ) -> None:
        super().__init__(params, constructor_defaults(locals()))

    def _prepare_group(self, group: dict[str, Any]) -> None:
        check_range("learning rate", group["lr"], 0.0)
        check_range("weight_decay", group["weight_decay"], 0.0)
        check_range("momentum", group["momentum"], 0.0, 1.0, high_open=True)
        check_choice("nesterov", group["nesterov"], (True, False))
        coefficients = group["ns_coefficients"]
        if not isinstance(coefficients, (tuple, list)) or len(coefficients) != 3:
            raise ValueError(f"Invalid ns_coefficients: expected (a, b, c), got {coefficients!r}")
        for name, value in zip("abc", coefficients):
            check_range(f"ns_coefficients {name}", value)
        check_range("eps", group["eps"], 0.0, low_open=True)
        check_int("ns_steps", group["ns_steps"], 1)
        if group["ns_steps"] > MAX_NS_STEPS:
            raise ValueError(f"Invalid ns_steps: {group['ns_steps']} (must be <= {MAX_NS_STEPS})")
        check_choice("adjust_lr_fn", group["adjust_lr_fn"], ADJUST_LR_FNS)
        group["adamw_betas"] = check_betas(group["adamw_betas"], "adamw_betas")
        check_range("adamw_eps", group["adamw_eps"], 0.0)
        check_range("adamw_weight_decay", group["adamw_weight_decay"], 0.0)
        check_choice("use_muon", group["use_muon"], (None, True, False))
        if group["use_muon"] and not all(is_muon_matrix(p) for p in group["params"]):
            shapes = [tuple(p.shape) for p in group["params"] if not is_muon_matrix(p)]
            raise ValueError(
                f"Invalid use_muon=True: Muon takes only real 2-D tensors, got shapes {shapes}"
            )
        if group["use_muon"] is not False:
            _torch_muon_step()  # a torch without Muon fails here, not at the first step

    def _takes_muon(self, group: dict[str, Any], param: Tensor) -> bool:
        return group["use_muon"] is not False and is_muon_matrix(param)

    def _step_group(self, group: dict[str, Any], params: list[Tensor], grads: list[Tensor]) -> None:
        on_muon = [self._takes_muon(group, p) for p in params]
        matrices = [p for p, m in zip(params, on_muon) if m]
        if matrices:
            _torch_muon_step()(
                matrices,
                [g for g, m in zip(grads, on_muon) if m],
                self._zero_state(matrices, "momentum_buffer"),
                lr=group["lr"],
                weight_decay=group["weight_decay"],
                momentum=group["momentum"],
                nesterov=group["nesterov"],
                ns_coefficients=tuple(group["ns_coefficients"]),
                eps=group["eps"],
                ns_steps=group["ns_steps"],
                adjust_lr_fn=group["adjust_lr_fn"],
                has_complex=False,
            )
        others = [p for p, m in zip(params, on_muon) if not m]
        if others:
            self._adamw_step(group, others, [g for g, m in zip(grads, on_muon) if not m])

    def _adamw_step(self, group: dict[str, Any], params: list[Tensor], grads: list[Tensor]) -> None:
        """``torch.optim.AdamW``'s step, its state made as ``torch.optim.AdamW`` makes it."""
        for param in params:
            state = self.state[param]
            if "step" not in state:
                state["step"] = torch.tensor(0.0, dtype=_scalar_dtype())
        beta1, beta2 = group["adamw_betas"]
        adamw(
            params,
            grads,
            self._zero_state(params, "exp_avg"),
            self._zero_state(params, "exp_avg_sq"),
            [],
            [self.state[p]["step"] for p in params],
            has_complex=any(p.is_complex() for p in params),
            amsgrad=False,
            beta1=beta1,
            beta2=beta2,
            lr=group["lr"],
            weight_decay=group["adamw_weight_decay"],
            eps=group["adamw_eps"],
            maximize=False,
        )
