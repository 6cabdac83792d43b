"""Triton kernel of syre weight decay, the CUDA path of ``AdamSyre``.

Imported lazily by ``baselines.syre`` (only when a CUDA parameter needs it, or for
``backend="triton"``), so the package imports on machines without triton. Under
``TRITON_INTERPRET=1`` (set before triton is imported) the same kernel runs on CPU tensors, which
is how the tests check it.

Per element i of the flattened (contiguous) tensor, with Triton's Philox streams keyed by the two
per-parameter seeds and counted by the element's offset:

    θ₀ᵢ = randn(seed1, i) · std,   dᵢ = rand(seed2, i) · 2ε + (1 − ε),
    θᵢ <- θᵢ − γ · dᵢ · (θᵢ − θ₀ᵢ)

so θ₀ and d are the same at every step (a fixed random anchor) without being stored.
"""

from __future__ import annotations

import triton
import triton.language as tl
from torch import Tensor

__all__ = ["BLOCK_SIZE", "syre_weight_decay_"]

BLOCK_SIZE = 1024


@triton.jit
def _syre_decay_kernel(
    theta_ptr, n_elements, gamma, std, eps, seed_anchor, seed_scale, BLOCK: tl.constexpr
):
    offsets = tl.program_id(axis=0) * BLOCK + tl.arange(0, BLOCK)
    inside = offsets < n_elements
    theta = tl.load(theta_ptr + offsets, mask=inside)
    anchor = tl.randn(seed_anchor, offsets) * std
    scale = tl.rand(seed_scale, offsets) * (eps * 2) + (1 - eps)
    tl.store(theta_ptr + offsets, theta - gamma * scale * (theta - anchor), mask=inside)


def syre_weight_decay_(
    theta: Tensor, gamma: float, std: float, eps: float, seed_anchor: int, seed_scale: int
) -> Tensor:
    """Apply ``θ <- θ − γ·d·(θ − θ₀)`` in place (``γ = weight_decay · lr``) and return ``theta``.

    A non-contiguous ``theta`` is processed through a contiguous copy, the offsets being its
    row-major element indices either way. Offsets are int32: tensors below 2³¹ elements."""
    work = theta if theta.is_contiguous() else theta.contiguous()
    n_elements = work.numel()
    if n_elements:
        grid = (triton.cdiv(n_elements, BLOCK_SIZE),)
        _syre_decay_kernel[grid](
            work, n_elements, gamma, std, eps, seed_anchor, seed_scale, BLOCK=BLOCK_SIZE
        )
    if work is not theta:
        theta.copy_(work)
    return theta
