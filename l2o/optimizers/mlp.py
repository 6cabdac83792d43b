"""A per-coordinate MLP optimizer over optimizer features, in the style of Metz et al. (2022)
``small_fc_lopt``.

Features per coordinate: gradient, parameter value, momenta at several decays, the second-moment
accumulator, momenta divided by its root, and its inverse root; each normalized by its second
moment over the coordinates of the same tensor, then ``tanh`` time features (not normalized).
The MLP outputs a direction ``d`` and a log-magnitude ``m``; the update is
``Δ = step_mult · d · exp(exp_mult · m)``. The last layer starts small (``init_scale``), so an
untrained optimizer takes tiny, stable steps.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn

from l2o.optimizers.base import LearnedOptimizerNet, ParamSpec, State, register
from l2o.optimizers.features import (
    TIME_SCALES,
    finite_square_sums,
    inverse_rms,
    normalize_per_segment,
    time_features,
)
from l2o.optimizers.lstm_kernels import NATIVE_MIN_ROWS, native_kernels

#: ``ε`` of the per-tensor feature normalization ``x · rsqrt(mean x² + ε)``.
NORM_EPS = 1e-5


@register
class MLPOptimizer(LearnedOptimizerNet):
    """Args:
    hidden_sizes: widths of the hidden layers (ReLU).
    momentum_decays: decays of the gradient EMAs fed as features.
    rms_decay: decay of the squared-gradient EMA.
    step_mult, exp_mult: λ₁ and λ₂ of ``Δ = λ₁ · d · exp(λ₂ · m)``.
    init_scale: factor on the output layer's initial weights (small → small first updates).
    per_tensor_norm: normalize features per tensor (True) or over the whole vector.
    """

    arch: ClassVar[str] = "mlp"
    core_state_keys: ClassVar[tuple[str, ...]] = ()
    state_coord_dims: ClassVar[dict[str, int]] = {"m": -2, "v": -1}
    coordinatewise: ClassVar[bool] = True  # the normalization lives in observe (a constant)
    deploy_chunk_size: ClassVar[int] = 65536

    def __init__(
        self,
        hidden_sizes: tuple[int, ...] | list[int] = (32, 32),
        momentum_decays: tuple[float, ...] | list[float] = (0.5, 0.9, 0.99, 0.999),
        rms_decay: float = 0.999,
        step_mult: float = 0.01,
        exp_mult: float = 0.1,
        init_scale: float = 0.1,
        per_tensor_norm: bool = True,
    ) -> None:
        super().__init__()
        self.hidden_sizes = tuple(int(h) for h in hidden_sizes)
        self.momentum_decays = tuple(float(d) for d in momentum_decays)
        if any(h <= 0 for h in self.hidden_sizes):
            raise ValueError(f"hidden_sizes must be positive, got {self.hidden_sizes}")
        if not all(0.0 <= d < 1.0 for d in (*self.momentum_decays, rms_decay)):
            raise ValueError("decays must lie in [0, 1)")
        self.rms_decay = float(rms_decay)
        self.step_mult, self.exp_mult = float(step_mult), float(exp_mult)
        self.init_scale = float(init_scale)
        self.per_tensor_norm = bool(per_tensor_norm)
        self.register_buffer(
            "_decays", torch.tensor(self.momentum_decays, dtype=torch.float32), persistent=False
        )
        layers: list[nn.Module] = []
        width = self.num_net_inputs
        for h in self.hidden_sizes:
            layers += [nn.Linear(width, h), nn.ReLU()]
            width = h
        out = nn.Linear(width, 2)
        with torch.no_grad():
            out.weight.mul_(self.init_scale)
            out.bias.zero_()
        layers.append(out)
        self.net = nn.Sequential(*layers)

    def config(self) -> dict[str, Any]:
        return {
            "hidden_sizes": list(self.hidden_sizes),
            "momentum_decays": list(self.momentum_decays),
            "rms_decay": self.rms_decay,
            "step_mult": self.step_mult,
            "exp_mult": self.exp_mult,
            "init_scale": self.init_scale,
            "per_tensor_norm": self.per_tensor_norm,
        }

    @property
    def num_normalized_features(self) -> int:
        d = len(self.momentum_decays)
        return 2 + d + 1 + d + 1  # g, p, m_i, v, m_i/√v, 1/√v

    @property
    def num_features(self) -> int:
        return self.num_normalized_features + len(TIME_SCALES)

    @property
    def num_net_inputs(self) -> int:
        """The width of the network's first layer (subclasses may feed ``core`` more)."""
        return self.num_features

    def init_state(self, flat_params: torch.Tensor, spec: ParamSpec | None = None) -> State:
        lead, n = flat_params.shape[:-1], flat_params.shape[-1]
        device = flat_params.device
        if spec is not None and self.per_tensor_norm:
            if spec.numel != n:
                raise ValueError(f"spec has {spec.numel} coordinates, params have {n}")
            seg = spec.segment_ids(device)
            counts = torch.tensor(spec.numels, device=device)
        else:
            seg = torch.zeros(n, dtype=torch.long, device=device)
            counts = torch.tensor([n], device=device)
        return {
            "m": flat_params.new_zeros(*lead, n, len(self.momentum_decays)),
            "v": flat_params.new_zeros(*lead, n),
            "t": torch.zeros(lead, dtype=torch.long, device=device),
            "segment_ids": seg,  # [N], constant
            "segment_counts": counts,  # [S], constant
        }

    def normalized_features(
        self, grads: torch.Tensor, params: torch.Tensor, m: torch.Tensor, v: torch.Tensor
    ) -> torch.Tensor:
        """The raw ``[..., N, F₀]`` features before normalization (for chunked deployment)."""
        rs = torch.rsqrt(v + 1e-8).unsqueeze(-1)
        return torch.cat(
            (grads.unsqueeze(-1), params.unsqueeze(-1), m, v.unsqueeze(-1), m * rs, rs), dim=-1
        )

    def observe(
        self, grads: torch.Tensor, params: torch.Tensor, state: State
    ) -> tuple[torch.Tensor, State]:
        m = torch.lerp(grads.unsqueeze(-1), state["m"], self._decays)
        v = torch.lerp(grads * grads, state["v"], self.rms_decay)
        t = state["t"] + 1
        raw = self.normalized_features(grads, params, m, v)
        seg = state["segment_ids"]
        normed = normalize_per_segment(raw, seg, state["segment_counts"].shape[0], NORM_EPS)
        tf = time_features(t, dtype=raw.dtype).unsqueeze(-2).expand(*grads.shape, len(TIME_SCALES))
        new = dict(state)
        new.update(m=m, v=v, t=t)
        return torch.cat((normed, tf), dim=-1), new

    def core(self, features: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        if features.shape[-1] != self.num_features:
            raise ValueError(
                f"MLPOptimizer expects {self.num_features} features, got {features.shape[-1]}"
            )
        out = self.net(features)
        direction, magnitude = out[..., 0], out[..., 1]
        return self.step_mult * direction * torch.exp(self.exp_mult * magnitude), state

    def _feature_second_moments(self, grad, param, m, v) -> torch.Tensor:
        """Σ over coordinates of each raw feature squared (``[F₀]``), without building them
        (float32: a non-finite result sends the caller to ``_finite_square_sums``)."""
        inv = torch.reciprocal(v + 1e-8)
        return torch.cat(
            (
                grad.dot(grad).view(1),
                param.dot(param).view(1),
                torch.linalg.vector_norm(m, dim=0).square(),
                v.dot(v).view(1),
                (m * m).t().mv(inv),
                inv.sum().view(1),
            )
        )

    def _finite_square_sums(self, grad, param, m, v, chunk_size) -> tuple[torch.Tensor, ...]:
        """``(Σ x², count)`` ``[F₀]`` of the raw features over one tensor's finite entries."""
        sums = counts = 0
        for lo in range(0, param.shape[-1], chunk_size):
            hi = min(lo + chunk_size, param.shape[-1])
            raw = self.normalized_features(grad[lo:hi], param[lo:hi], m[lo:hi], v[lo:hi])
            s, c = finite_square_sums(raw)
            sums, counts = sums + s[0], counts + c[0]
        return sums, counts

    def advance_and_scale_(
        self, tensors: list[tuple[torch.Tensor, torch.Tensor, State]], chunk_size: int
    ) -> tuple[list[torch.Tensor], Any]:
        """Deployment, part one: advance every tensor's accumulators in place and return the
        per-tensor normalization scales ``[F₀]`` of the raw features (and the native kernels, or
        None). Non-finite coordinates are left out of the statistics."""
        counts = [param.shape[-1] for param, _, _ in tensors]
        native = native_kernels() if max(counts) >= NATIVE_MIN_ROWS else None
        if native is not None and (tensors[0][0].dtype, tensors[0][0].device.type) != (
            torch.float32,
            "cpu",
        ):
            native = None
        moments = []
        for (param, grad, state), n in zip(tensors, counts):
            state["t"].add_(1)
            if native is not None:
                sums = native.mlp_accumulate_(
                    param,
                    grad.contiguous(),
                    state["m"],
                    state["v"],
                    list(self.momentum_decays),
                    self.rms_decay,
                )
            else:
                state["m"].lerp_(grad.unsqueeze(-1).expand_as(state["m"]), 1 - self._decays)
                state["v"].lerp_(grad * grad, 1 - self.rms_decay)
                sums = self._feature_second_moments(grad, param, state["m"], state["v"])
            if bool(torch.isfinite(sums).all()):
                moments.append((sums.double(), torch.full_like(sums, n, dtype=torch.float64)))
                continue
            # a NaN/inf or overflowing coordinate: statistics over the finite entries only
            moments.append(
                self._finite_square_sums(grad, param, state["m"], state["v"], chunk_size)
            )
        dtype = tensors[0][0].dtype
        if self.per_tensor_norm:
            return [inverse_rms(s, c, NORM_EPS, dtype) for s, c in moments], native
        total = inverse_rms(*(sum(parts) for parts in zip(*moments)), NORM_EPS, dtype)
        return [total] * len(tensors), native

    @torch.no_grad()
    def apply_updates_(
        self, tensors: list[tuple[torch.Tensor, torch.Tensor, State]], chunk_size: int
    ) -> None:
        """Deployment: accumulators and the features' second moments over whole tensors, then
        per chunk one feature build and one GEMM per layer. The per-tensor normalization is
        folded into the first layer's weights and the time features into its bias."""
        f0 = self.num_normalized_features
        linears = [m for m in self.net if isinstance(m, nn.Linear)]
        scales, native = self.advance_and_scale_(tensors, chunk_size)
        first = linears[0]
        ext = native
        for (param, grad, state), scale in zip(tensors, scales):
            w1 = first.weight[:, :f0] * scale
            b1 = first.bias + first.weight[:, f0:] @ time_features(state["t"])
            if ext is not None and param.dtype == torch.float32 and param.device.type == "cpu":
                ext.mlp_update_(
                    param,
                    grad.contiguous(),
                    state["m"],
                    state["v"],
                    [w1, *(lin.weight for lin in linears[1:])],
                    [b1, *(lin.bias for lin in linears[1:])],
                    self.step_mult,
                    self.exp_mult,
                )
                continue
            layers = [(w1.t(), b1)] + [(lin.weight.t(), lin.bias) for lin in linears[1:]]
            for lo in range(0, param.shape[-1], chunk_size):
                hi = min(lo + chunk_size, param.shape[-1])
                x = self.normalized_features(
                    grad[lo:hi], param[lo:hi], state["m"][lo:hi], state["v"][lo:hi]
                )
                for k, (w_t, b) in enumerate(layers):
                    x = torch.addmm(b, x, w_t)
                    if k < len(layers) - 1:
                        x.relu_()
                upd = x[:, 1].mul_(self.exp_mult).exp_().mul_(x[:, 0]).mul_(self.step_mult)
                param[lo:hi] += upd
