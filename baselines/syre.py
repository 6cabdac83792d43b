"""AdamSyre: Adam with syre weight decay (Ziyin et al. 2024, "Remove Symmetries to Control Model
Expressivity and Improve Optimization"), after Katherine Crowson's gist (seed 002).

Each step, before Adam's update, every parameter with a gradient is pulled towards a fixed random
anchor instead of towards zero:

    θ <- θ − γ · d ⊙ (θ − θ₀),   γ = weight_decay · lr,
    θ₀ ~ N(0, syre_std²),   d ~ U[1 − syre_eps, 1 + syre_eps]   (elementwise, fixed per parameter)

θ₀ and d come from two seeds per parameter, drawn as the gist draws them (a CPU
``torch.Generator`` seeded with ``syre_seed``, two int64 per entry of ``param_group['params']``, in
order, whether or not the entry has a gradient). The Adam part is the gist's arithmetic
(``m = β₁m + (1−β₁)g``, ``denom = sqrt(v)/sqrt(bc2) + eps``, ``p -= lr/bc1 · m/denom``; ``maximize``
flips the step), run with ``torch._foreach_*`` kernels.

Two paths produce θ₀ and d:

- **Triton** (CUDA parameters when triton imports; ``backend="triton"`` forces it): the gist's
  kernel regenerates them every step from ``tl.randn(seed1, offsets)`` and
  ``tl.rand(seed2, offsets)``; nothing is stored.
- **torch** (everything else): :func:`triton_rand` / :func:`triton_randn` re-implement Triton's
  generator — Philox-4x32-10 keyed by the 64-bit seed and counted by the element offset, then
  Triton's uint→float and Box–Muller steps — in int64 torch arithmetic. The values are computed
  once per parameter and cached on the optimizer (two parameter-sized float32 tensors, not in
  ``state_dict``; they are a pure function of the seeds), so θ₀ is the same at every step and in
  every run with the same seed.

Where the two paths agree, and where not:

- seeds: identical (the same CPU generator draws on both paths);
- Philox integers: identical bit for bit (checked against the Random123 known-answer vectors and,
  under ``TRITON_INTERPRET=1``, against the kernel itself);
- uniforms and d: the uint→float conversion is exact arithmetic, so u is identical; d = u·2ε + (1−ε)
  is identical except where the GPU compiler fuses it into one FMA (≤ 1 ulp);
- θ₀: Box–Muller goes through float32 ``log``, ``sqrt`` and ``cos``, whose last-bit rounding
  differs between CUDA's implementations and the CPU's, so θ₀ agrees to a few ulp (relative
  ~1e-6 of its scale), not bit for bit. A ``torch.Generator`` could not do better: its streams
  (mt19937 on CPU, Philox with another counter layout on CUDA) are not Triton's;
- the decay: the kernel computes ``θ − (γ·d)·(θ − θ₀)``; the torch path ``θ − γ·d·θ + γ·d·θ₀``
  (two in-place passes, no temporaries), the same value up to rounding.

Offsets are int32 in the kernel, so tensors must stay below 2³¹ elements (as in the gist).
Complex parameters follow torch's ``view_as_real`` convention on both paths: the anchor, the
decay and Adam act on the real view (real and imaginary parts as coordinates), as they would on the
real parameter ``view_as_real(p)``.
"""

from __future__ import annotations

import math
from functools import lru_cache
from types import ModuleType
from typing import Any, NamedTuple

import torch
from torch import Tensor

from ._common import (
    BaselineOptimizer,
    adam_moments_,
    as_real,
    check_betas,
    check_choice,
    check_int,
    check_range,
    constructor_defaults,
    device_dtype_buckets,
)

__all__ = [
    "AdamSyre",
    "parameter_seeds",
    "philox4x32",
    "syre_anchor",
    "triton_rand",
    "triton_randn",
]

BACKENDS = ("auto", "torch", "triton")
DEFAULT_SYRE_STD = 0.01 / math.sqrt(768)

_MASK32 = 0xFFFFFFFF
_PHILOX_ROUND_A = 0xD2511F53
_PHILOX_ROUND_B = 0xCD9E8D57
_PHILOX_KEY_A = 0x9E3779B9
_PHILOX_KEY_B = 0xBB67AE85
# Triton's scale for uint32 -> [0, 1): the largest float with MAX_INT32 * scale < 1.
_UNIFORM_SCALE = 4.6566127342e-10
_TWO_PI = 6.283185307179586
_CHUNK = 1 << 20


def _mulhilo32(multiplier: int, values: Tensor) -> tuple[Tensor, Tensor]:
    """High and low 32 bits of ``multiplier * values`` (uint32 values held in int64).

    The product is split on 16 bits so every intermediate stays below 2⁴⁹: no int64 overflow."""
    low_half = multiplier * (values & 0xFFFF)
    high_half = multiplier * (values >> 16)
    high = (high_half + (low_half >> 16)) >> 16
    low = (((high_half & 0xFFFF) << 16) + low_half) & _MASK32
    return high, low


def philox4x32(
    key: int, counter: tuple[Tensor, Tensor, Tensor, Tensor], rounds: int = 10
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Philox-4x32 (Salmon et al. 2011) as ``triton.language.random`` runs it.

    ``key`` is the 64-bit seed (low word k0, high word k1); the counter words and the results are
    int64 tensors holding uint32 values."""
    c0, c1, c2, c3 = counter
    k0, k1 = key & _MASK32, (key >> 32) & _MASK32
    for _ in range(rounds):
        high_b, low_b = _mulhilo32(_PHILOX_ROUND_B, c2)
        high_a, low_a = _mulhilo32(_PHILOX_ROUND_A, c0)
        c0, c1, c2, c3 = high_b ^ c1 ^ k0, low_b, high_a ^ c3 ^ k1, low_a
        k0 = (k0 + _PHILOX_KEY_A) & _MASK32
        k1 = (k1 + _PHILOX_KEY_B) & _MASK32
    return c0, c1, c2, c3


def _philox_words(seed: int, offsets: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``tl.randint4x(seed, offsets)`` for non-negative int32 offsets."""
    if not 0 <= seed < 1 << 64:
        raise ValueError(f"Invalid seed: {seed!r} (must be in [0, 2**64))")
    zero = torch.zeros_like(offsets)
    return philox4x32(seed, (offsets, zero, zero, zero))


def _uint32_to_uniform(words: Tensor) -> Tensor:
    """Triton's ``uint_to_uniform_float``: as int32, negatives flipped (~x), times the scale."""
    folded = torch.where(words >= 1 << 31, words ^ _MASK32, words)
    return folded.to(torch.float32) * torch.tensor(_UNIFORM_SCALE, dtype=torch.float32)


def triton_rand(seed: int, offsets: Tensor) -> Tensor:
    """``tl.rand(seed, offsets)`` in torch: float32 uniforms in [0, 1)."""
    return _uint32_to_uniform(_philox_words(seed, offsets)[0])


def triton_randn(seed: int, offsets: Tensor) -> Tensor:
    """``tl.randn(seed, offsets)`` in torch: float32 normals (Box–Muller on the first two words)."""
    words = _philox_words(seed, offsets)
    u1 = _uint32_to_uniform(words[0]).clamp_(min=1.0e-7)
    angle = _uint32_to_uniform(words[1]) * torch.tensor(_TWO_PI, dtype=torch.float32)
    radius = torch.sqrt(-2.0 * torch.log(u1))
    return radius * torch.cos(angle)


def syre_anchor(
    numel: int,
    std: float,
    eps: float,
    seed_anchor: int,
    seed_scale: int,
    device: torch.device | str | None = None,
) -> tuple[Tensor, Tensor]:
    """θ₀ and d of one flattened parameter, as the Triton kernel generates them (float32).

    Generated on the CPU in chunks of 2²⁰ elements (bounded int64 temporaries), then moved."""
    std32 = torch.tensor(std, dtype=torch.float32)
    eps32 = torch.tensor(eps, dtype=torch.float32)
    anchor = torch.empty(numel, dtype=torch.float32)
    scale = torch.empty(numel, dtype=torch.float32)
    for start in range(0, numel, _CHUNK):
        offsets = torch.arange(start, min(start + _CHUNK, numel), dtype=torch.int64)
        anchor[start : start + len(offsets)] = triton_randn(seed_anchor, offsets) * std32
        uniform = triton_rand(seed_scale, offsets)
        scale[start : start + len(offsets)] = uniform * (eps32 * 2) + (1 - eps32)
    return anchor.to(device), scale.to(device)


@lru_cache(maxsize=256)
def parameter_seeds(syre_seed: int, count: int) -> tuple[tuple[int, int], ...]:
    """The two seeds (θ₀, d) of each of ``count`` parameters, drawn as the gist draws them."""
    generator = torch.Generator()
    generator.manual_seed(syre_seed)
    draws = []
    for _ in range(count):
        seed_anchor, seed_scale = torch.empty(2, dtype=torch.int64).random_(generator=generator)
        draws.append((int(seed_anchor), int(seed_scale)))
    return tuple(draws)


@lru_cache(maxsize=1)
def _triton_kernels() -> ModuleType | None:
    """``baselines._syre_triton`` if triton imports here, else None."""
    try:
        from . import _syre_triton
    except Exception:  # ImportError, or triton failing to initialise on this platform
        return None
    return _syre_triton


def _decay_towards_(
    params: list[Tensor], anchors: list[Tensor], scales: list[Tensor], gamma: float
) -> None:
    """θ <- θ − γ·d·θ + γ·d·θ₀ = θ − γ·d·(θ − θ₀), in two in-place passes without temporaries."""
    torch._foreach_addcmul_(params, scales, params, value=-gamma)
    torch._foreach_addcmul_(params, scales, anchors, value=gamma)


class _Anchor(NamedTuple):
    key: tuple
    anchor: Tensor  # θ₀, shaped and typed like the parameter's compute dtype
    scale: Tensor  # d


class AdamSyre(BaselineOptimizer):
    """Adam with decoupled syre weight decay (see the module docstring for the two paths).

    Args:
        params: parameters or parameter groups.
        lr: learning rate (1e-3).
        betas: ``(β₁, β₂)`` (0.9, 0.999).
        eps: denominator term (1e-8).
        weight_decay: syre decay coefficient, γ = weight_decay · lr (1e-2).
        syre_std: standard deviation of θ₀, about 0.01 / sqrt(fan_in) (0.01 / sqrt(768)).
        syre_eps: half-width of d's interval around 1 (0.01).
        syre_seed: seed of the per-parameter seeds (0).
        maximize: ascend instead of descend (False).
        backend: ``"auto"`` (Triton for CUDA parameters when it imports, torch otherwise),
            ``"torch"`` or ``"triton"``.
    """

    def __init__(
        self,
        params: Any,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
        syre_std: float = DEFAULT_SYRE_STD,
        syre_eps: float = 0.01,
        syre_seed: int = 0,
        *,
        maximize: bool = False,
        backend: str = "auto",
    ) -> None:
        defaults = constructor_defaults(locals())
        super().__init__(params, defaults)

    def _init_attributes(self) -> None:
        # θ₀ and d per parameter of the torch path: a cache, recomputed after copies and pickles.
        self._anchors: dict[Tensor, _Anchor] = {}

    def _prepare_group(self, group: dict[str, Any]) -> None:
        check_range("learning rate", group["lr"], 0.0)
        check_range("epsilon value", group["eps"], 0.0)
        check_betas(group["betas"])
        check_range("weight_decay value", group["weight_decay"], 0.0)
        check_range("syre_std value", group["syre_std"], 0.0)
        check_range("syre_eps value", group["syre_eps"], 0.0)
        check_int("syre_seed", group["syre_seed"])
        check_choice("backend", group["backend"], BACKENDS)
        if group["backend"] == "triton" and _triton_kernels() is None:
            raise ValueError("backend='triton' needs triton, which does not import here")

    def anchor(self, param: Tensor) -> tuple[Tensor, Tensor]:
        """θ₀ and d of ``param`` (shaped like it, or like ``view_as_real(param)`` when complex),
        as both paths use them."""
        for group in self.param_groups:
            for position, candidate in enumerate(group["params"]):
                if candidate is param:
                    return self._anchor(group, param, position)[1:]
        raise ValueError("the tensor is not a parameter of this optimizer")

    def _anchor(self, group: dict[str, Any], param: Tensor, position: int) -> _Anchor:
        seeds = parameter_seeds(group["syre_seed"], len(group["params"]))
        seed_anchor, seed_scale = seeds[position]
        real = as_real([param])[0]
        dtype = torch.float64 if real.dtype == torch.float64 else torch.float32
        key = (seed_anchor, seed_scale, real.shape, group["syre_std"], group["syre_eps"], dtype)
        cached = self._anchors.get(param)
        if cached is None or cached.key != key or cached.anchor.device != param.device:
            anchor, scale = syre_anchor(
                real.numel(), group["syre_std"], group["syre_eps"], seed_anchor, seed_scale
            )
            cached = _Anchor(
                key,
                anchor.to(device=param.device, dtype=dtype).view(real.shape),
                scale.to(device=param.device, dtype=dtype).view(real.shape),
            )
            self._anchors[param] = cached
        return cached

    def _uses_triton(self, group: dict[str, Any], param: Tensor) -> bool:
        backend = group["backend"]
        if backend == "auto":
            return param.is_cuda and _triton_kernels() is not None
        return backend == "triton"

    def _syre_decay(self, group: dict[str, Any], params: list[Tensor], gamma: float) -> None:
        position = {id(p): i for i, p in enumerate(group["params"])}
        seeds = parameter_seeds(group["syre_seed"], len(group["params"]))
        on_torch = []
        for param, real in zip(params, as_real(params)):
            if self._uses_triton(group, param):
                seed_anchor, seed_scale = seeds[position[id(param)]]
                _triton_kernels().syre_weight_decay_(
                    real, gamma, group["syre_std"], group["syre_eps"], seed_anchor, seed_scale
                )
            else:
                on_torch.append((real, self._anchor(group, param, position[id(param)])))
        for bucket in device_dtype_buckets([param for param, _ in on_torch]):
            b_params = [on_torch[i][0] for i in bucket]
            anchors = [on_torch[i][1].anchor for i in bucket]
            scales = [on_torch[i][1].scale for i in bucket]
            if b_params[0].dtype == anchors[0].dtype:
                _decay_towards_(b_params, anchors, scales, gamma)
            else:  # half precision: decay in float32, like the kernel's arithmetic
                for param, anchor, scale in zip(b_params, anchors, scales):
                    work = [param.float()]
                    _decay_towards_(work, [anchor], [scale], gamma)
                    param.copy_(work[0])

    def _step_group(self, group: dict[str, Any], params: list[Tensor], grads: list[Tensor]) -> None:
        if not params:
            return
        gamma = group["weight_decay"] * group["lr"]
        if gamma != 0:
            self._syre_decay(group, params, gamma)

        beta1, beta2 = group["betas"]
        lr, eps = group["lr"], group["eps"]
        for param in params:
            state = self.state[param]
            if len(state) == 0:
                state["step"] = 0
                state["exp_avg"] = torch.zeros_like(param, memory_format=torch.preserve_format)
                state["exp_avg_sq"] = torch.zeros_like(param, memory_format=torch.preserve_format)
            state["step"] += 1
        states = [self.state[p] for p in params]
        params, grads = as_real(params), as_real(grads)
        for bucket in device_dtype_buckets(params):
            b_params = [params[i] for i in bucket]
            b_states = [states[i] for i in bucket]
            exp_avgs = as_real([s["exp_avg"] for s in b_states])
            exp_avg_sqs = as_real([s["exp_avg_sq"] for s in b_states])
            adam_moments_(exp_avgs, exp_avg_sqs, [grads[i] for i in bucket], beta1, beta2)
            denom = torch._foreach_sqrt(exp_avg_sqs)
            torch._foreach_div_(denom, [math.sqrt(1 - beta2 ** s["step"]) for s in b_states])
            torch._foreach_add_(denom, eps)
            sign = 1.0 if group["maximize"] else -1.0
            step_sizes = [sign * lr / (1 - beta1 ** s["step"]) for s in b_states]
            torch._foreach_addcdiv_(b_params, exp_avgs, denom, step_sizes)
