"""Which code runs a ``LearnedOptimizer`` step: the fused Triton kernels
(``l2o.optimizers.triton_kernels``) or the network's own ``apply_updates_`` (PyTorch ops, and the
C++ kernels on the CPU).

``backend``:

* ``"auto"`` (the default): Triton for CUDA parameters when triton imports and the kernels
  cover the network (``uncovered``), the PyTorch path otherwise;
* ``"torch"``: always the network's ``apply_updates_``;
* ``"triton"``: the kernels on any device (CPU tensors only under ``TRITON_INTERPRET=1``, as the
  tests run them); refused at construction where triton does not import or the network is not
  covered.

Not covered, so ``auto`` runs the PyTorch path for them: the ``lstm`` architecture, ``general``
with ``factored: true`` (the factored second-moment features) or ``nominal: orthogonal`` (a
Newton–Schulz iteration per matrix, which the kernels do not run: on the GPU the PyTorch path
does it with cuBLAS products, as ``torch.optim.Muon`` does), networks of more than two hidden
layers, and subclasses of ``MLPOptimizer`` / ``GeneralOptimizer`` (they may change the step).
"""

from __future__ import annotations

import functools
from types import ModuleType

import torch
from torch import nn

from l2o.optimizers.base import LearnedOptimizerNet, State
from l2o.optimizers.general import GeneralOptimizer
from l2o.optimizers.mlp import MLPOptimizer

BACKENDS = ("auto", "torch", "triton")


@functools.cache
def triton_kernels() -> ModuleType | None:
    """``l2o.optimizers.triton_kernels`` if triton imports here, else None (asked once)."""
    try:
        from l2o.optimizers import triton_kernels as kernels
    except Exception:  # ImportError, or triton failing to initialise on this platform
        return None
    return kernels


def uncovered(net: LearnedOptimizerNet) -> str | None:
    """What in ``net`` the Triton kernels do not run (None: they run all of it)."""
    if type(net) not in (MLPOptimizer, GeneralOptimizer):
        return f"the {net.arch!r} architecture ({type(net).__name__})"
    if getattr(net, "factored", False):
        return "general with factored=True"
    if getattr(net, "nominal", None) == "orthogonal":
        return "general with nominal='orthogonal' (a Newton-Schulz iteration per matrix)"
    if getattr(net, "adaptive_step", False):
        return "general with adaptive_step=True (a per-tensor step size from its alignment)"
    if not 1 <= len(net.hidden_sizes) <= 2:
        return f"hidden_sizes={list(net.hidden_sizes)} (one or two hidden layers only)"
    if not all(isinstance(m, nn.Linear | nn.ReLU) for m in net.net):
        return "a network of other layers than Linear and ReLU"
    return None


def check_backend(backend: str, net: LearnedOptimizerNet) -> str:
    """``backend`` if it can run ``net`` here, else a ValueError saying why."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "triton":
        if triton_kernels() is None:
            raise ValueError("backend='triton' needs triton, which does not import here")
        reason = uncovered(net)
        if reason is not None:
            raise ValueError(
                f"backend='triton': the Triton kernels do not cover {reason}; "
                "use backend='auto' or 'torch'"
            )
    return backend


def uses_triton(backend: str, net: LearnedOptimizerNet, device: torch.device) -> bool:
    """Whether a step of ``net`` on ``device`` runs the Triton kernels."""
    if backend == "torch" or (backend == "auto" and device.type != "cuda"):
        return False
    return uncovered(net) is None and triton_kernels() is not None


def _kernel_ready(tensors: list[tuple[torch.Tensor, torch.Tensor, State]]) -> bool:
    """The layouts the kernels read: contiguous float32 parameters, gradients and accumulators
    (what ``LearnedOptimizer`` hands over, unless a loaded state came strided)."""
    return all(
        t.dtype == torch.float32 and t.is_contiguous()
        for param, grad, state in tensors
        for t in (param, grad, state["m"], state["v"])
    )


def apply_updates_(
    net: LearnedOptimizerNet,
    tensors: list[tuple[torch.Tensor, torch.Tensor, State]],
    chunk_size: int,
    backend: str = "auto",
) -> None:
    """One deployment step of ``net`` on ``(param, grad, state)`` triples of one device, by the
    Triton kernels or ``net.apply_updates_`` (see the module docstring)."""
    if tensors and uses_triton(backend, net, tensors[0][0].device) and _kernel_ready(tensors):
        triton_kernels().apply_updates_(net, tensors)
    else:
        net.apply_updates_(tensors, chunk_size)
