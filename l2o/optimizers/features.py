"""Per-coordinate input features shared by the learned optimizers (pure tensor functions)."""

from __future__ import annotations

import math

import torch

#: Timescales (in inner steps) of the ``tanh`` time features; they cover horizons of 1 to 10^4.
TIME_SCALES = (1.0, 3.0, 10.0, 30.0, 100.0, 300.0, 1000.0, 3000.0, 10000.0)


def log_sign_preprocess(x: torch.Tensor, p: float = 10.0) -> torch.Tensor:
    """Andrychowicz et al. (2016, appendix A): ``[..., 2]`` features of a signed scalar.

    ``(log|x| / p, sign x)`` where ``|x| ≥ e^-p``, else ``(-1, e^p · x)``: magnitudes over many
    orders become O(1) inputs while tiny values stay distinguishable.
    """
    big = x.abs() >= math.exp(-p)
    log_part = torch.where(big, torch.log(x.abs().clamp_min(math.exp(-p))) / p, -1.0)
    sign_part = torch.where(big, torch.sign(x), math.exp(p) * x)
    return torch.stack((log_part, sign_part), dim=-1)


def time_features(
    t: torch.Tensor, scales: tuple[float, ...] = TIME_SCALES, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """``[..., len(scales)]`` features ``tanh(t / s - 1)`` of the integer step counter ``t [...]``,
    computed in ``dtype`` (the run's: float64 runs keep float64 features)."""
    s = torch.tensor(scales, dtype=dtype, device=t.device)
    return torch.tanh(t.to(dtype).unsqueeze(-1) / s - 1.0)


def ema(avg: torch.Tensor, x: torch.Tensor, decays: torch.Tensor) -> torch.Tensor:
    """Exponential moving averages ``[..., N, D]`` of ``x [..., N]`` at ``D`` decays at once."""
    return torch.lerp(x.unsqueeze(-1), avg, decays)
