"""``general``: a per-coordinate MLP optimizer built to generalize past its meta-training task and
horizon, from design elements of the field (each an option):

* **nominal term** (Harrison et al. 2022, "A closer look at learned optimization", STAR): the
  update is a handcrafted direction times a step size, plus a learned residual whose gain starts
  at zero, so the untrained optimizer IS that handcrafted optimizer and meta-training only has to
  learn a correction. ``nominal``:

  - ``adam``: Adam's bias-corrected direction (``nominal_lr``, β₁ = ``adam_beta1``,
    β₂ = ``rms_decay``);
  - ``sgdm``: heavy-ball momentum. The momentum accumulator is an EMA
    ``m_t = β m_{t-1} + (1-β) g_t`` (decay ``sgdm_beta``), and torch's SGD buffer (momentum β,
    no dampening) is ``b_t = m_t / (1-β)`` exactly, so the step ``sgdm_lr · m_t / (1-β)`` IS
    ``torch.optim.SGD(lr=sgdm_lr, momentum=β)``; ``sgdm_lr`` 0.3 is the tuned SGD + momentum
    lr of the ``indist`` task (MNIST sigmoid MLP);
  - ``mix``: ``σ(z) e^{a} adam + (1-σ(z)) e^{b} sgdm`` with one global learned logit ``z``
    (``σ(z)`` starts at ``mix_init``) and a learned log step size per direction (``a``, ``b``
    start at ``log nominal_lr``, ``log sgdm_lr``), so meta-training can pick the baseline;
  - ``lars``: layer-wise trust-ratio momentum (LARS, You et al. 2017, on the momentum as in
    LAMB without Adam's per-coordinate scaling): the momentum normalized to RMS 1 over each
    tensor, times the tensor's parameter RMS (at least ``lars_floor``), so that ``lars_lr`` is
    the relative change of a tensor per step. Its step does not depend on the gradient's scale,
    which is what lets one lr transfer across activations, widths and architectures where
    SGD's lr does not (``lars_lr`` 0.04 with a cosine ``base_schedule`` is near the tuned
    baselines' final loss on every ``generalization`` case; README);
  - ``orthogonal``: ``lars`` with Muon's direction on matrices (Jordan et al. 2024; Celo2's
    orthogonalized updates, Moudgil et al. 2025): for each tensor of ≥ 2 dims, viewed as
    ``[shape[0], prod(rest)]``, the Nesterov momentum ``β m_t + (1-β) g_t`` is orthogonalized by
    five Newton–Schulz iterations (all its singular values near 1: every direction of the
    matrix moves at the same rate, whatever the conditioning of the gradient), then scaled as
    ``lars`` scales the momentum, to RMS ``max(RMS(p), lars_floor)``; 1-D tensors keep ``lars``.
    So ``lars_lr`` keeps its meaning (the relative change of a tensor per step) and the whole
    schedule of ``lars`` carries over; the tensors' shapes come from ``init_state``'s ``spec``;
  - ``none``: no nominal term (the residual gain then starts at 1).

  With ``sgdm``, ``lars``, ``orthogonal`` and ``mix`` the residual is scaled by the nominal
  step's RMS over each tensor (SGD's direction has the gradient's units, not Adam's O(1)), so
  a residual of gain 1 moves a tensor as far as the nominal step does;
* **training-progress inputs** (VeLO, Metz et al. 2022): the fraction of the horizon completed
  (``features.progress_features``), next to the ``tanh`` step-count features; the horizon is
  ``total_steps``, or ``init_state(..., total_steps=N)`` for a run of another length;
* **learned step-size schedule** (Celo, Moudgil et al. 2025): the step size is
  ``nominal_lr · exp(w · time features + b)``, one global scalar per step, zero at start
  (a linear map instead of Celo's LSTM: the inputs already carry the time), on top of a fixed
  ``base_schedule``: ``constant``, or ``cosine`` decay to zero over the run's horizon
  (``½(1 + cos(π (t−1) / T))``, the schedule the tuned ``adamw_cosine`` baseline uses), times
  ``(T / total_steps)^(−horizon_power)``: a run longer than the meta-training horizon takes
  smaller steps (the relative steps of ``lars`` add up over the run: the best ``lars_lr`` at
  1,000 steps is about half the best at 200, README), times an **early boost**
  ``1 + early_boost · exp(−(t−1) / early_boost_steps)`` (0: none): ``lars``'s relative steps
  grow a small initialization only geometrically, while tuned SGD + momentum moves the tensors
  of the ``indist`` MLP by 7–17 % per step over its first 10 steps (``lars_lr`` 0.04: 4 %); a
  boost needs the momentum of ``lars`` low (``sgdm_beta`` 0.5: with 0.9 the large early steps
  overshoot, README);
* **adaptive step size** (``adaptive_step``; hypergradient descent on the log step size,
  Baydin et al. 2018, with a learned gain): per tensor a log factor ``s`` on the step size,
  ``s_t = clamp(s_{t-1} + κ (c_t − b), −S, S)``, with ``c_t`` the cosine between the
  tensor's gradient and its momentum before the step (the sign of the loss's derivative in the
  step size: a gradient that still points along the last steps says the steps were short, one
  that turns back says they overshot), ``κ`` (its sign too: greedy hypergradient descent is
  ``κ > 0``) and ``b`` learned (starting at 0: the untrained optimizer is unchanged) and ``S``
  = ``adaptive_bound`` (an integrator: where the run's alignment settles at ``b``, the factor
  holds where it got). A negative result, kept to reproduce it: meta-trained by the shipped
  recipe it learned ``κ < 0``, won short runs and ran away on long ones (a positive feedback;
  docs/general-experiments-2026-12-07.md, "A step size set per run");
* **output normalization** (Celo2): the learned direction is divided by its RMS over the tensor,
  so the residual has the units of Adam's direction and cannot blow up the step;
* the small_fc_lopt / adafac_mlp_lopt per-coordinate features of ``MLPOptimizer`` (gradient,
  parameter, momenta at several decays, RMS, m·rsqrt(RMS), rsqrt(RMS)), normalized per tensor
  over finite entries only (a bad coordinate stays a bad coordinate);
* **factored second moments** (``factored``; Adafactor, Shazeer & Stern 2018, as features in
  Metz et al.'s ``adafac_mlp_lopt``): per matrix (a tensor of ≥ 2 dims as ``[shape[0],
  prod(rest)]``) row and column EMAs of the mean ``g²`` (decay ``factored_decay``) give
  ``v̂_ij = r_i c_j / mean_i(r)``, and ``g·rsqrt(v̂)``, ``m_k·rsqrt(v̂)`` and ``rsqrt(v̂)`` are
  appended to the normalized features (``l2o.optimizers.factored``; 1-D tensors use ``v``).
  Its deployment step takes the Python chunked path, not the fused C++ kernels.

Update (added to the parameters), with ``r`` the (normalized) network output and ``n`` the
nominal direction: ``Δ = lr_t · (gain · r − n)`` with ``adam``, ``lr_t · (gain · ρ · r − n)``
with ``sgdm`` / ``mix`` (``ρ`` = RMS of ``n`` over the tensor), ``lr_t · gain · r`` with
``none``; ``lr_t = exp(base + schedule)``, base ``log nominal_lr`` (``adam``, ``none``),
``log sgdm_lr`` (``sgdm``) or 0 (``mix``: the step sizes are inside ``n``).
"""

from __future__ import annotations

import math
import weakref
from typing import Any, ClassVar

import torch
from torch import nn

from l2o.optimizers.base import ParamSpec, State, register
from l2o.optimizers.factored import (
    advance_accumulators,
    factored_estimate,
    factored_features,
    factored_layout,
    init_accumulators,
)
from l2o.optimizers.features import (
    PROGRESS_CENTERS,
    TIME_SCALES,
    finite_square_sums,
    inverse_rms,
    normalize_per_segment,
    progress_features,
    segment_sums,
    time_features,
)
from l2o.optimizers.mlp import NORM_EPS, MLPOptimizer

#: ``ε`` of the output normalization ``d · rsqrt(mean d² + ε)``.
OUTPUT_EPS = 1e-12

#: The smallest momentum RMS that ``lars`` divides by (an all-zero momentum gives a zero step).
LARS_TINY = 1e-30

#: The smallest product of squared norms the alignment cosine divides by (float64; a zero
#: gradient or momentum gives a cosine of 0).
ALIGN_TINY = 1e-300

#: Muon's quintic Newton–Schulz coefficients (Jordan et al. 2024): five iterations take every
#: singular value of a Frobenius-normalized matrix into roughly [0.7, 1.2].
NEWTON_SCHULZ = (3.4445, -4.7750, 2.0315)
NEWTON_SCHULZ_STEPS = 5

BASE_SCHEDULES = ("constant", "cosine")

#: The nominal directions and the handcrafted directions each one needs (features, in order).
NOMINALS: dict[str, tuple[str, ...]] = {
    "adam": ("adam",),
    "sgdm": ("sgdm",),
    "mix": ("adam", "sgdm"),
    "lars": ("lars",),
    "orthogonal": ("orthogonal",),
    "none": ("adam",),  # the layout of ``adam``: the direction is a feature, left unused
}


def nominal_kind(nominal: str | bool) -> str:
    """The ``nominal`` option's name; ``True`` / ``False`` (configs written before ``sgdm`` and
    ``mix`` existed) are ``adam`` / ``none``."""
    if isinstance(nominal, bool):
        return "adam" if nominal else "none"
    if nominal not in NOMINALS:
        raise ValueError(f"nominal must be one of {sorted(NOMINALS)}, got {nominal!r}")
    return nominal


def tensor_rms(x: torch.Tensor, segment_ids: torch.Tensor | None, n_seg: int) -> torch.Tensor:
    """``x [..., N]``'s RMS over the finite entries of each coordinate's segment, ``[..., N]``
    (``segment_ids`` None: one segment)."""
    sums, counts = finite_square_sums(x.unsqueeze(-1), segment_ids, n_seg)
    rms = (sums / counts.clamp_min(1.0)).sqrt().to(x.dtype)[..., 0]
    return rms if segment_ids is None else rms.index_select(x.dim() - 1, segment_ids)


def tensor_alignment(
    a: torch.Tensor, b: torch.Tensor, segment_ids: torch.Tensor | None, n_seg: int
) -> torch.Tensor:
    """The cosine between ``a`` and ``b [..., N]`` over each coordinate's segment, ``[..., N]``
    (``segment_ids`` None: one segment), from the pairs where both are finite (a bad
    coordinate stays bad in its own update, not in its tensor's step size), in float64 (no
    overflow); 0 where either is zero."""
    finite = torch.isfinite(a) & torch.isfinite(b)
    a64 = torch.where(finite, a.to(torch.float64), 0.0)
    b64 = torch.where(finite, b.to(torch.float64), 0.0)
    terms = torch.stack((a64 * b64, a64.square(), b64.square()), dim=-1)
    cos = _cosine(segment_sums(terms, segment_ids, n_seg)).to(a.dtype)
    if segment_ids is None:
        return cos.expand(a.shape)
    return cos.index_select(a.dim() - 1, segment_ids)


def _cosine(sums: torch.Tensor) -> torch.Tensor:
    """``Σab / √(Σa² Σb²)`` from float64 sums ``[..., 3]``."""
    return sums[..., 0] * torch.rsqrt((sums[..., 1] * sums[..., 2]).clamp_min(ALIGN_TINY))


def _alignment_of_one_tensor(grad: torch.Tensor, momentum: torch.Tensor) -> torch.Tensor:
    """``tensor_alignment`` of one deployed tensor (0-dim): three float32 dots, or the
    finite-only float64 statistic where they overflow or meet a non-finite entry."""
    sums = torch.stack((grad.dot(momentum), grad.dot(grad), momentum.dot(momentum)))
    if bool(torch.isfinite(sums).all()):
        return _cosine(sums.double()).to(grad.dtype)
    return tensor_alignment(grad, momentum, None, 1)[0]


def _rms(x: torch.Tensor) -> float:
    """The RMS of a 1-D tensor: one float32 dot, or the finite-only statistic of
    ``tensor_rms`` (NaN if none is finite) when that overflows or meets a non-finite entry."""
    square_sum = float(torch.dot(x, x))
    if math.isfinite(square_sum):
        return math.sqrt(square_sum / max(x.numel(), 1))
    return float(tensor_rms(x, None, 1)[0])


def matrix_layout(spec: ParamSpec | None, n: int) -> torch.Tensor:
    """``[K, 3]`` int64 on the CPU: ``(offset, rows, cols)`` of each tensor of ≥ 2 dims in the
    flat vector (``[shape[0], prod(rest)]``, as Muon views a convolution), in order; none
    without a ``spec``. Kept on the CPU so that reading it is no device sync."""
    if spec is None:
        return torch.zeros(0, 3, dtype=torch.long)
    if spec.numel != n:
        raise ValueError(f"spec has {spec.numel} coordinates, params have {n}")
    rows = [
        (offset, shape[0], math.prod(shape[1:]))
        for offset, shape in zip(spec.offsets, spec.shapes)
        if len(shape) >= 2 and math.prod(shape) > 0
    ]
    return torch.tensor(rows, dtype=torch.long).reshape(-1, 3)


#: ``id(matrix_layout tensor)`` → (a weak reference to it, its rows): a truncation reads its
#: layout once, not per step (tensors compare elementwise, so no WeakKeyDictionary)
_LAYOUT_ROWS: dict[int, tuple[weakref.ref, tuple[tuple[int, int, int], ...]]] = {}


def layout_rows(layout: torch.Tensor) -> tuple[tuple[int, int, int], ...]:
    """``matrix_layout``'s rows as Python ints: read once per layout tensor (a constant of the
    state; the read is no device sync while it stays on the CPU, as ``init_state`` makes it)."""
    key = id(layout)
    cached = _LAYOUT_ROWS.get(key)
    if cached is not None and cached[0]() is layout:
        return cached[1]
    rows = tuple(tuple(r) for r in layout.tolist())
    _LAYOUT_ROWS[key] = (weakref.ref(layout, lambda _: _LAYOUT_ROWS.pop(key, None)), rows)
    return rows


def newton_schulz(matrix: torch.Tensor) -> torch.Tensor:
    """Muon's orthogonalization of ``matrix [..., R, C]``: ``U Vᵀ`` of its SVD, approximately,
    in ``NEWTON_SCHULZ_STEPS`` quintic iterations of matrix products, in bfloat16 as Muon runs
    them (the iteration only needs the singular values near 1; bfloat16 products are 4.5×
    float32's speed on this project's CPUs and the GPUs' native format); a non-finite entry
    makes the whole matrix non-finite, never a number."""
    a, b, c = NEWTON_SCHULZ
    x = matrix.to(torch.bfloat16)
    tall = x.shape[-2] > x.shape[-1]
    if tall:
        x = x.transpose(-2, -1)
    x = x / (torch.linalg.vector_norm(x, dim=(-2, -1), keepdim=True) + 1e-7)
    for _ in range(NEWTON_SCHULZ_STEPS):
        gram = x @ x.transpose(-2, -1)
        x = a * x + (b * gram + c * (gram @ gram)) @ x
    if tall:
        x = x.transpose(-2, -1)
    return x.to(matrix.dtype)


def _network_direction(native, param, grad, m, v, weights, biases) -> torch.Tensor:
    """The network's direction ``d [n]`` for one tensor through the fused kernel, in one copy
    of the parameters: the kernel ADDS d to its input, so d = (param + d) - param, exact up to
    rounding of param + d (|d| is O(1), far above param's ulp)."""
    direction = param.clone()
    native.mlp_update_(direction, grad, m, v, weights, biases, 1.0, 0.0)
    return direction.sub_(param)


@register
class GeneralOptimizer(MLPOptimizer):
    """Args (the rest as ``MLPOptimizer``):
    total_steps: the horizon that the progress features count against, unless ``init_state``
        is given another.
    nominal: ``adam`` | ``sgdm`` | ``mix`` | ``lars`` | ``orthogonal`` | ``none`` (see the
        module docstring; a bool is read as ``adam`` / ``none``). The residual gain starts at
        0, at 1 with ``none``.
    nominal_lr: Adam's step size at the start of meta-training (``adam``, ``mix``; with
        ``none`` the residual's).
    adam_beta1: the momentum decay used as Adam's β₁ (one of ``momentum_decays``).
    adam_eps: Adam's ε.
    sgdm_lr: SGD + momentum's step size at the start of meta-training (``sgdm``, ``mix``).
    sgdm_beta: its momentum, and that of ``lars`` and ``orthogonal`` (one of ``momentum_decays``).
    mix_init: ``mix``'s initial weight of Adam's direction, in (0, 1).
    lars_lr: the relative step size per step of ``lars`` and ``orthogonal`` at the start of
        meta-training.
    lars_floor: the smallest parameter RMS ``lars`` scales by (zero-initialized biases move).
    base_schedule: ``constant`` | ``cosine`` (to zero over the run's horizon).
    horizon_power: the step size scales as ``(horizon / total_steps)^(−horizon_power)``.
    early_boost: the step size at step t is multiplied by ``1 + early_boost ·
        exp(−(t−1) / early_boost_steps)`` (0: no boost).
    early_boost_steps: the boost's decay time, in steps.
    learned_schedule: learn ``log lr_t`` as a linear function of the time features.
    learned_step_size: learn one constant factor on the nominal step size (``log_lr_offset``,
        starting at 0): the learned schedule's bias alone, for a recipe without the schedule.
    adaptive_step: learn a per-tensor log factor on the step size driven by the alignment of
        each tensor's gradient with its momentum (module docstring; ``step_gain``,
        ``step_target`` start at 0).
    adaptive_bound: the largest ``|log factor|`` of ``adaptive_step``.
    normalize_output: divide the network's direction by its RMS over the tensor (Celo2); else
        ``r = d · exp(exp_mult · m)``.
    progress: feed the training-progress features (else only step-count features).
    factored: append the factored second-moment features (module docstring).
    factored_decay: the decay of their row and column EMAs (None: ``rms_decay``).
    """

    arch: ClassVar[str] = "general"

    def __init__(
        self,
        hidden_sizes: tuple[int, ...] | list[int] = (16,),
        momentum_decays: tuple[float, ...] | list[float] = (0.5, 0.9, 0.99, 0.999),
        rms_decay: float = 0.999,
        exp_mult: float = 0.1,
        init_scale: float = 0.1,
        total_steps: int = 200,
        nominal: str | bool = "adam",
        nominal_lr: float = 1e-3,
        adam_beta1: float = 0.9,
        adam_eps: float = 1e-8,
        sgdm_lr: float = 0.3,
        sgdm_beta: float = 0.9,
        mix_init: float = 0.5,
        lars_lr: float = 0.04,
        lars_floor: float = 1e-2,
        base_schedule: str = "constant",
        horizon_power: float = 0.0,
        early_boost: float = 0.0,
        early_boost_steps: float = 20.0,
        learned_schedule: bool = True,
        learned_step_size: bool = False,
        adaptive_step: bool = False,
        adaptive_bound: float = 2.0,
        normalize_output: bool = True,
        progress: bool = True,
        factored: bool = False,
        factored_decay: float | None = None,
    ) -> None:
        self.total_steps = int(total_steps)
        self.progress = bool(progress)
        self.factored = bool(factored)
        self.factored_decay = float(rms_decay if factored_decay is None else factored_decay)
        if not 0.0 <= self.factored_decay < 1.0:
            raise ValueError(f"factored_decay must lie in [0, 1), got {factored_decay}")
        super().__init__(
            hidden_sizes=hidden_sizes,
            momentum_decays=momentum_decays,
            rms_decay=rms_decay,
            step_mult=1.0,
            exp_mult=exp_mult,
            init_scale=init_scale,
            per_tensor_norm=True,
        )
        if self.total_steps <= 0:
            raise ValueError(f"total_steps must be positive, got {total_steps}")
        for name, beta in (("adam_beta1", adam_beta1), ("sgdm_beta", sgdm_beta)):
            if float(beta) not in self.momentum_decays:
                raise ValueError(
                    f"{name}={beta} must be one of momentum_decays {self.momentum_decays}"
                )
        for name, value in (
            ("nominal_lr", nominal_lr),
            ("sgdm_lr", sgdm_lr),
            ("adam_eps", adam_eps),
            ("lars_lr", lars_lr),
            ("lars_floor", lars_floor),
            ("early_boost_steps", early_boost_steps),
            ("adaptive_bound", adaptive_bound),
        ):
            if not (value > 0 and math.isfinite(value)):
                raise ValueError(f"{name} must be positive and finite, got {value}")
        if not 0 < mix_init < 1:
            raise ValueError(f"mix_init must be in (0, 1), got {mix_init}")
        if base_schedule not in BASE_SCHEDULES:
            raise ValueError(
                f"base_schedule must be one of {BASE_SCHEDULES}, got {base_schedule!r}"
            )
        if not math.isfinite(horizon_power):
            raise ValueError(f"horizon_power must be finite, got {horizon_power}")
        if not (early_boost >= 0 and math.isfinite(early_boost)):
            raise ValueError(f"early_boost must be finite and >= 0, got {early_boost}")
        self.nominal = nominal_kind(nominal)
        self.nominal_lr = float(nominal_lr)
        self.adam_beta1 = float(adam_beta1)
        self.adam_index = self.momentum_decays.index(self.adam_beta1)
        self.adam_eps = float(adam_eps)
        self.sgdm_lr = float(sgdm_lr)
        self.sgdm_beta = float(sgdm_beta)
        self.sgdm_index = self.momentum_decays.index(self.sgdm_beta)
        self.mix_init = float(mix_init)
        self.lars_lr = float(lars_lr)
        self.lars_floor = float(lars_floor)
        self.base_schedule = base_schedule
        self.horizon_power = float(horizon_power)
        self.early_boost = float(early_boost)
        self.early_boost_steps = float(early_boost_steps)
        #: ``log`` of the nominal step size (``mix``: 0, its step sizes are inside the direction)
        self.base_log_lr = {
            "sgdm": math.log(self.sgdm_lr),
            "lars": math.log(self.lars_lr),
            "orthogonal": math.log(self.lars_lr),
            "mix": 0.0,
        }.get(self.nominal, math.log(self.nominal_lr))
        self.learned_schedule = bool(learned_schedule)
        self.normalize_output = bool(normalize_output)
        # the output normalization and the residual's scale with ``sgdm`` / ``mix`` mix the
        # coordinates of a tensor: no replay by coordinate
        self.coordinatewise = not self.normalize_output and self.nominal in ("adam", "none")
        self.residual_gain = nn.Parameter(torch.tensor(1.0 if self.nominal == "none" else 0.0))
        if self.nominal == "mix":
            self.mix_logit = nn.Parameter(torch.tensor(math.log(mix_init / (1 - mix_init))))
            self.nominal_log_lrs = nn.Parameter(
                torch.tensor([math.log(self.nominal_lr), math.log(self.sgdm_lr)])
            )
        self.schedule = nn.Linear(self.num_global_features, 1) if self.learned_schedule else None
        if self.schedule is not None:
            with torch.no_grad():
                self.schedule.weight.zero_()
                self.schedule.bias.zero_()
        self.learned_step_size = bool(learned_step_size)
        self.log_lr_offset = nn.Parameter(torch.zeros(())) if self.learned_step_size else None
        self.adaptive_step = bool(adaptive_step)
        self.adaptive_bound = float(adaptive_bound)
        if self.adaptive_step:
            self.step_gain = nn.Parameter(torch.zeros(()))
            self.step_target = nn.Parameter(torch.zeros(()))
            # the per-tensor log factor is state that ``core`` carries from step to step
            self.core_state_keys = ("log_step",)
            self.state_coord_dims = {**MLPOptimizer.state_coord_dims, "log_step": -1}

    def config(self) -> dict[str, Any]:
        return {
            "hidden_sizes": list(self.hidden_sizes),
            "momentum_decays": list(self.momentum_decays),
            "rms_decay": self.rms_decay,
            "exp_mult": self.exp_mult,
            "init_scale": self.init_scale,
            "total_steps": self.total_steps,
            "nominal": self.nominal,
            "nominal_lr": self.nominal_lr,
            "adam_beta1": self.adam_beta1,
            "adam_eps": self.adam_eps,
            "sgdm_lr": self.sgdm_lr,
            "sgdm_beta": self.sgdm_beta,
            "mix_init": self.mix_init,
            "lars_lr": self.lars_lr,
            "lars_floor": self.lars_floor,
            "base_schedule": self.base_schedule,
            "horizon_power": self.horizon_power,
            "early_boost": self.early_boost,
            "early_boost_steps": self.early_boost_steps,
            "learned_schedule": self.learned_schedule,
            "learned_step_size": self.learned_step_size,
            "adaptive_step": self.adaptive_step,
            "adaptive_bound": self.adaptive_bound,
            "normalize_output": self.normalize_output,
            "progress": self.progress,
            "factored": self.factored,
            "factored_decay": self.factored_decay,
        }

    @property
    def stops_at_horizon(self) -> bool:
        """True if the step size reaches zero at the horizon (the cosine base schedule)."""
        return self.base_schedule == "cosine"

    @property
    def num_global_features(self) -> int:
        """Time features shared by all coordinates: step count (and training progress)."""
        return len(TIME_SCALES) + (1 + len(PROGRESS_CENTERS) if self.progress else 0)

    @property
    def num_normalized_features(self) -> int:
        """``MLPOptimizer``'s, then (``factored``) ``g``, each ``m_k`` and 1 times ``rsqrt(v̂)``."""
        extra = 2 + len(self.momentum_decays) if self.factored else 0
        return super().num_normalized_features + extra

    @property
    def num_net_inputs(self) -> int:
        return self.num_normalized_features + self.num_global_features

    @property
    def num_features(self) -> int:
        # the network's inputs, the handcrafted directions, (``adaptive_step``) the alignment of
        # the coordinate's tensor, and the log base schedule (one column, the same for every
        # coordinate: ``core`` reads the time from its features only, so that it runs per step
        # under vmap and over a sequence of steps)
        return self.num_net_inputs + len(NOMINALS[self.nominal]) + self.adaptive_step + 1

    def init_state(
        self,
        flat_params: torch.Tensor,
        spec: ParamSpec | None = None,
        total_steps: int | None = None,
    ) -> State:
        """As ``MLPOptimizer``'s, plus ``"horizon" [...]``: ``total_steps`` (default: the
        constructor's) for the progress features; with ``factored`` the layout of
        ``factored.factored_layout`` (from ``spec``: the tensors' shapes) and the accumulators
        ``"row" [..., R+1]``, ``"col" [..., C+1]``; with ``orthogonal`` the matrices of
        ``matrix_layout(spec)``; with ``adaptive_step`` the per-coordinate log factor
        ``"log_step" [..., N]`` (the same for every coordinate of a tensor), 0."""
        horizon = self.total_steps if total_steps is None else int(total_steps)
        if horizon <= 0:
            raise ValueError(f"total_steps must be positive, got {total_steps}")
        state = super().init_state(flat_params, spec)
        state["horizon"] = torch.full_like(state["t"], float(horizon))
        if self.factored:
            layout = factored_layout(spec, flat_params.shape[-1], flat_params.device)
            state.update(layout, **init_accumulators(flat_params.shape[:-1], layout))
        if self.nominal == "orthogonal":
            state["matrix_layout"] = matrix_layout(spec, flat_params.shape[-1])
        if self.adaptive_step:
            state["log_step"] = torch.zeros_like(flat_params)
        return state

    def factored_v(self, state: State) -> torch.Tensor:
        """The factored estimate ``v̂ [..., N]`` of the state's accumulators (``factored``)."""
        return factored_estimate(state["row"], state["col"], state["v"], state)

    def global_features(self, state: State) -> torch.Tensor:
        """``[..., G]`` time features of the (already advanced) step counter."""
        tf = time_features(state["t"])
        if not self.progress:
            return tf
        return torch.cat((tf, progress_features(state["t"], state["horizon"])), dim=-1)

    def adam_direction(self, m: torch.Tensor, v: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Adam's bias-corrected ``m̂ / (√v̂ + ε)`` (``t [...]`` broadcast over ``[..., N]``)."""
        t = t.to(m.dtype).unsqueeze(-1)
        m_hat = m / (1 - self.adam_beta1**t)
        v_hat = v / (1 - self.rms_decay**t)
        return m_hat / (v_hat.sqrt() + self.adam_eps)

    def lars_direction(
        self,
        momentum: torch.Tensor,
        params: torch.Tensor,
        segment_ids: torch.Tensor | None,
        n_seg: int,
    ) -> torch.Tensor:
        """``momentum / RMS(momentum) · max(RMS(params), lars_floor)`` per tensor, ``[..., N]``."""
        m_rms = tensor_rms(momentum, segment_ids, n_seg).clamp_min(LARS_TINY)
        p_rms = tensor_rms(params, segment_ids, n_seg).clamp_min(self.lars_floor)
        return momentum * (p_rms / m_rms)

    def orthogonal_direction(
        self,
        momentum: torch.Tensor,
        grads: torch.Tensor,
        params: torch.Tensor,
        segment_ids: torch.Tensor | None,
        n_seg: int,
        layout: torch.Tensor,
    ) -> torch.Tensor:
        """``lars_direction`` with each matrix of ``layout`` (``matrix_layout``) replaced by its
        orthogonalized Nesterov momentum at the RMS ``max(RMS(p), lars_floor)``, ``[..., N]``."""
        lars = self.lars_direction(momentum, params, segment_ids, n_seg)
        nesterov = self.sgdm_beta * momentum + (1 - self.sgdm_beta) * grads
        pieces, end = [], 0
        for offset, rows, cols in layout_rows(layout):
            size = rows * cols
            pieces.append(lars[..., end:offset])
            matrix = nesterov[..., offset : offset + size].unflatten(-1, (rows, cols))
            ortho = newton_schulz(matrix).flatten(-2)
            o_rms = ortho.square().mean(-1, keepdim=True).sqrt().clamp_min(LARS_TINY)
            p = params[..., offset : offset + size]
            p_rms = p.square().mean(-1, keepdim=True).sqrt().clamp_min(self.lars_floor)
            pieces.append(ortho * (p_rms / o_rms))
            end = offset + size
        pieces.append(lars[..., end:])
        return torch.cat(pieces, dim=-1)

    def handcrafted_directions(
        self,
        m: torch.Tensor,
        v: torch.Tensor,
        t: torch.Tensor,
        params: torch.Tensor | None = None,
        segment_ids: torch.Tensor | None = None,
        n_seg: int = 1,
        grads: torch.Tensor | None = None,
        layout: torch.Tensor | None = None,
    ):
        """``[..., N, D]``: the directions ``NOMINALS[nominal]`` from the accumulators ``m
        [..., N, M]``, ``v [..., N]`` (SGD + momentum's: ``m / (1-β)``, torch's buffer;
        ``lars`` also needs the parameters and their tensors' ``segment_ids``, ``orthogonal``
        also the gradients and the state's ``matrix_layout``)."""
        dirs = {
            "adam": lambda: self.adam_direction(m[..., self.adam_index], v, t),
            "sgdm": lambda: m[..., self.sgdm_index] / (1 - self.sgdm_beta),
            "lars": lambda: self.lars_direction(
                m[..., self.sgdm_index], params, segment_ids, n_seg
            ),
            "orthogonal": lambda: self.orthogonal_direction(
                m[..., self.sgdm_index], grads, params, segment_ids, n_seg, layout
            ),
        }
        return torch.stack([dirs[k]() for k in NOMINALS[self.nominal]], dim=-1)

    def nominal_direction(self, dirs: torch.Tensor) -> torch.Tensor:
        """The nominal direction ``[..., N]`` (before ``lr_t``) from ``handcrafted_directions``."""
        if self.nominal != "mix":
            return dirs[..., 0]
        w = torch.sigmoid(self.mix_logit)
        lrs = torch.exp(self.nominal_log_lrs)
        return w * lrs[0] * dirs[..., 0] + (1 - w) * lrs[1] * dirs[..., 1]

    def observe(
        self, grads: torch.Tensor, params: torch.Tensor, state: State
    ) -> tuple[torch.Tensor, State]:
        features, new = super().observe(grads, params, state)
        normed = features[..., : super().num_normalized_features]
        glob = self.global_features(new).unsqueeze(-2).expand(*grads.shape, -1)
        n_seg = new["segment_counts"].shape[0]
        if self.factored:
            new["row"], new["col"] = advance_accumulators(
                grads, state["row"], state["col"], new, self.factored_decay
            )
            raw = factored_features(grads, new["m"], self.factored_v(new))
            extra = normalize_per_segment(raw, new["segment_ids"], n_seg, NORM_EPS)
            normed = torch.cat((normed, extra), dim=-1)
        dirs = self.handcrafted_directions(
            new["m"],
            new["v"],
            new["t"],
            params,
            new["segment_ids"],
            n_seg,
            grads,
            new.get("matrix_layout"),
        )
        base = self.log_base_schedule(new["t"], new["horizon"]).to(dirs.dtype)
        columns = [normed, glob, dirs]
        if self.adaptive_step:
            momentum = state["m"][..., self.sgdm_index]  # before this step's gradient
            align = tensor_alignment(grads, momentum, new["segment_ids"], n_seg)
            columns.append(align.unsqueeze(-1))
        columns.append(base[..., None, None].expand(*grads.shape, 1))
        return torch.cat(columns, dim=-1), new

    def log_lr(self, glob: torch.Tensor, log_base: torch.Tensor) -> torch.Tensor:
        """``log lr_t [...]`` from the global features ``[..., G]`` and the log base schedule
        ``[...]`` (``log_base_schedule``)."""
        log_lr = self.base_log_lr + log_base.to(glob.dtype)
        if self.log_lr_offset is not None:
            log_lr = log_lr + self.log_lr_offset.to(glob.dtype)
        if self.schedule is None:
            return log_lr
        return log_lr + self.schedule(glob).squeeze(-1)

    def log_base_schedule(self, t: torch.Tensor, horizon: torch.Tensor) -> torch.Tensor:
        """``log`` of the fixed factor on the step size at step ``t`` (1 for the first) of a
        run of ``horizon`` steps: ``(horizon / total_steps)^(−horizon_power)``, times the
        cosine decay with ``base_schedule: cosine`` (zero, ``log`` → −69, past the horizon),
        times the early boost."""
        horizon = horizon.to(torch.float32)
        out = -self.horizon_power * torch.log(horizon / self.total_steps)
        if self.early_boost:
            decay = torch.exp(-(t.to(torch.float32) - 1) / self.early_boost_steps)
            out = out + torch.log1p(self.early_boost * decay)
        if self.base_schedule == "cosine":
            frac = ((t.to(torch.float32) - 1) / horizon).clamp(0.0, 1.0)
            cosine = 0.5 * (1 + torch.cos(math.pi * frac))
            out = out + torch.log(cosine.clamp_min(1e-30))
        return out

    def advance_log_step(self, log_step: torch.Tensor, align: torch.Tensor) -> torch.Tensor:
        """``s_t = clamp(s_{t-1} + κ (c_t − b), −S, S)`` (``adaptive_step``; a NaN stays NaN)."""
        drive = self.step_gain * (align - self.step_target)
        return (log_step + drive).clamp(-self.adaptive_bound, self.adaptive_bound)

    def residual(
        self, out: torch.Tensor, segment_ids: torch.Tensor | None, n_seg: int
    ) -> torch.Tensor:
        """The learned direction ``[..., N]`` from the network's output ``[..., N, 2]`` (only
        ``d`` is needed with output normalization); ``segment_ids`` None: one tensor."""
        if self.normalize_output:
            return normalize_per_segment(out[..., :1], segment_ids, n_seg, OUTPUT_EPS)[..., 0]
        return out[..., 0] * torch.exp(self.exp_mult * out[..., 1])

    def residual_scale(
        self, nominal: torch.Tensor, segment_ids: torch.Tensor | None, n_seg: int
    ) -> torch.Tensor | None:
        """``ρ [..., N]``: the RMS of the nominal direction over each tensor (``sgdm``, ``lars``,
        ``orthogonal``, ``mix``);
        None (1) for ``adam``, whose direction is already O(1), and ``none``."""
        if self.nominal in ("adam", "none"):
            return None
        return tensor_rms(nominal, segment_ids, n_seg)

    def combine(
        self,
        residual: torch.Tensor,
        nominal: torch.Tensor,
        log_lr: torch.Tensor,
        scale: torch.Tensor | None,
    ) -> torch.Tensor:
        """``Δ = lr_t · (gain · ρ · r − n)`` (no ``ρ`` when None, no ``− n`` with ``none``)."""
        if scale is not None:
            residual = scale * residual
        step = self.residual_gain * residual
        if self.nominal != "none":
            step = step - nominal
        return torch.exp(log_lr).unsqueeze(-1) * step

    def core(self, features: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        if features.shape[-1] != self.num_features:
            raise ValueError(
                f"GeneralOptimizer expects {self.num_features} features, got {features.shape[-1]}"
            )
        x = features[..., : self.num_net_inputs]
        n_dirs = len(NOMINALS[self.nominal])
        nominal = self.nominal_direction(
            features[..., self.num_net_inputs : self.num_net_inputs + n_dirs]
        )
        out = self.net(x)
        seg, n_seg = state["segment_ids"], state["segment_counts"].shape[0]
        r = self.residual(out, seg, n_seg)
        glob = x[..., 0, self.num_normalized_features :]  # the same for every coordinate
        scale = self.residual_scale(nominal, seg, n_seg)
        log_lr = self.log_lr(glob, features[..., 0, -1])
        update = self.combine(r, nominal, log_lr, scale)
        if not self.adaptive_step:
            return update, state
        log_steps, log_step = [], state["log_step"]
        for align in features[..., -2].unbind(0):  # a recurrence: step by step
            log_step = self.advance_log_step(log_step, align)
            log_steps.append(log_step)
        return update * torch.exp(torch.stack(log_steps)), {**state, "log_step": log_step}

    @torch.no_grad()
    def apply_updates_(
        self, tensors: list[tuple[torch.Tensor, torch.Tensor, State]], chunk_size: int
    ) -> None:
        """Deployment: the accumulators and feature scales as ``MLPOptimizer``'s (normalization
        folded into the first layer, time features into its bias), then the network over each
        tensor: through the fused C++ kernel of ``MLPOptimizer`` where it runs, else per chunk
        one feature build and one GEMM per layer. With output normalization the directions of
        a tensor are kept until their RMS is known. With ``factored`` always the chunked path
        (the kernels build only ``MLPOptimizer``'s features), over each tensor's own ``v̂``."""
        f0 = self.num_normalized_features
        linears = [m for m in self.net if isinstance(m, nn.Linear)]
        aligns = [None] * len(tensors)
        if self.adaptive_step:  # with the momentum before this step's gradient
            aligns = [
                _alignment_of_one_tensor(grad, state["m"][:, self.sgdm_index])
                for _, grad, state in tensors
            ]
        scales, native = self.advance_and_scale_(tensors, chunk_size)
        vhats = [None] * len(tensors)
        if self.factored:
            native = None
            vhats, scales = self._advance_factored_(tensors, scales, chunk_size)
        first = linears[0]
        for (param, grad, state), scale, vhat, align in zip(tensors, scales, vhats, aligns):
            glob = self.global_features(state)
            weights = [first.weight[:, :f0] * scale, *(lin.weight for lin in linears[1:])]
            biases = [first.bias + first.weight[:, f0:] @ glob, *(lin.bias for lin in linears[1:])]
            log_lr = self.log_lr(glob, self.log_base_schedule(state["t"], state["horizon"]))
            if align is not None:
                log_step = self.advance_log_step(state["log_step"][:1], align)
                state["log_step"].copy_(log_step.expand_as(state["log_step"]))
                log_lr = log_lr + log_step[0]
            m, v = state["m"], state["v"]
            fused = native is not None and param.dtype == torch.float32
            fused = fused and param.device.type == "cpu"
            if fused and self.nominal in ("sgdm", "lars", "orthogonal"):
                grad = grad.contiguous()
                column = self._nominal_column(m, grad, state)
                self._momentum_update_(native, param, grad, m, v, weights, biases, log_lr, column)
                continue
            dirs = self.handcrafted_directions(
                m, v, state["t"], param, grads=grad, layout=state.get("matrix_layout")
            )
            nominal = self.nominal_direction(dirs)
            scale = self.residual_scale(nominal, None, 1)
            if fused:
                grad = grad.contiguous()
                if not self.normalize_output:  # Δ = lr·gain·ρ·d·exp(λ m) in the kernel, − lr·n
                    gain = self.residual_gain if scale is None else self.residual_gain * scale[0]
                    step = float(torch.exp(log_lr) * gain)
                    native.mlp_update_(param, grad, m, v, weights, biases, step, self.exp_mult)
                    if self.nominal != "none":
                        param.sub_(torch.exp(log_lr) * nominal)
                    continue
                out = _network_direction(native, param, grad, m, v, weights, biases).unsqueeze(-1)
            else:
                out = self._chunked_network(param, grad, m, v, vhat, weights, biases, chunk_size)
            param.add_(self.combine(self.residual(out, None, 1), nominal, log_lr, scale))

    def _nominal_column(self, m: torch.Tensor, grad: torch.Tensor, state: State) -> torch.Tensor:
        """The unscaled nominal direction of one tensor in deployment: the momentum column
        ``m_β``, or for a matrix with ``orthogonal`` its orthogonalized Nesterov momentum."""
        column = m[:, self.sgdm_index]
        rows = layout_rows(state["matrix_layout"]) if self.nominal == "orthogonal" else ()
        if not rows:
            return column
        ((_, n_rows, n_cols),) = rows
        nesterov = torch.lerp(grad, column, self.sgdm_beta)  # β m + (1-β) g
        return newton_schulz(nesterov.view(n_rows, n_cols)).view(-1)

    def _momentum_update_(
        self, native, param, grad, m, v, weights, biases, log_lr, col: torch.Tensor
    ) -> None:
        """The deployment step of ``sgdm``, ``lars`` and ``orthogonal``: the nominal direction
        is ``col`` (``_nominal_column``) times a per-tensor coefficient ``c`` (``1/(1-β)``;
        ``lars``, ``orthogonal``: ``max(RMS(p), floor) / RMS(col)``), the RMSs one float32 dot
        each (the finite-only float64 statistic where that overflows or meets a NaN), measured
        before the step; one ``add_`` subtracts ``lr·c·col``. Without output normalization the
        fused kernel adds ``lr·gain·ρ·r`` (``ρ = c·RMS(col)``) in place, with no temporary the
        size of the tensor; with it, the kernel writes the network's direction ``d`` into one
        copy of the parameters, and ``lr·gain·ρ·d/RMS(d)`` is added once its RMS is known."""
        col_rms = _rms(col)
        if self.nominal in ("lars", "orthogonal"):
            coef = max(_rms(param), self.lars_floor) / max(col_rms, LARS_TINY)
        else:
            coef = 1.0 / (1.0 - self.sgdm_beta)
        lr = float(torch.exp(log_lr))
        gain = float(self.residual_gain) * coef * col_rms
        if self.normalize_output:
            direction = _network_direction(native, param, grad, m, v, weights, biases)
            inv_rms = 1.0 / math.sqrt(_rms(direction) ** 2 + OUTPUT_EPS)
            param.add_(direction, alpha=lr * gain * inv_rms)
        else:
            native.mlp_update_(param, grad, m, v, weights, biases, lr * gain, self.exp_mult)
        largest = torch.finfo(param.dtype).max
        if not lr * coef > largest:  # (a NaN c steps as NaN)
            param.add_(col, alpha=-lr * coef)
        else:  # huge parameters, a vanishing momentum: c·m, then lr, as the flat step
            # computes them (a c beyond the dtype is infinite there), not an overflow error
            param.add_(col * (coef if coef <= largest else math.inf), alpha=-lr)

    def _advance_factored_(self, tensors, scales, chunk_size):
        """Deployment with ``factored``: each tensor's row and column EMAs advanced in place,
        its ``v̂ [n]``, and its feature scales with those of the factored features appended
        (over the finite entries, per chunk)."""
        vhats, out = [], []
        for (param, grad, state), scale in zip(tensors, scales):
            row, col = advance_accumulators(
                grad, state["row"], state["col"], state, self.factored_decay
            )
            state["row"].copy_(row)
            state["col"].copy_(col)
            vhat = self.factored_v(state)
            sums = counts = 0
            for lo in range(0, param.shape[-1], chunk_size):
                hi = min(lo + chunk_size, param.shape[-1])
                raw = factored_features(grad[lo:hi], state["m"][lo:hi], vhat[lo:hi])
                s, c = finite_square_sums(raw)
                sums, counts = sums + s[0], counts + c[0]
            vhats.append(vhat)
            out.append(torch.cat((scale, inverse_rms(sums, counts, NORM_EPS, param.dtype))))
        return vhats, out

    def _chunked_network(
        self, param, grad, m, v, vhat, weights, biases, chunk_size
    ) -> torch.Tensor:
        """The network's output ``[n, 2]`` (``[n, 1]`` with output normalization: only ``d``)
        per chunk of coordinates, with the folded first layer (``vhat`` not None: with the
        factored features)."""
        n = param.shape[-1]
        out = param.new_empty(n, 1 if self.normalize_output else 2)
        layers = [(w.t(), b) for w, b in zip(weights, biases)]
        for lo in range(0, n, chunk_size):
            hi = min(lo + chunk_size, n)
            x = self.normalized_features(grad[lo:hi], param[lo:hi], m[lo:hi], v[lo:hi])
            if vhat is not None:
                x = torch.cat((x, factored_features(grad[lo:hi], m[lo:hi], vhat[lo:hi])), -1)
            for k, (w_t, b) in enumerate(layers):
                x = torch.addmm(b, x, w_t)
                if k < len(layers) - 1:
                    x.relu_()
            out[lo:hi] = x[:, : out.shape[1]]
        return out
