"""Per-coordinate input features shared by the learned optimizers (pure tensor functions)."""

from __future__ import annotations

import functools
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


@functools.lru_cache(maxsize=64)
def constant_vector(values: tuple[float, ...], dtype: torch.dtype, device: torch.device):
    """``values`` as a tensor on ``device``, made once (treat as read-only): made from Python
    numbers at every call, it would be a host-to-device copy that waits for the GPU, a host
    sync per inner step."""
    with torch.inference_mode(False):  # usable outside inference mode too
        return torch.tensor(values, dtype=dtype, device=device)


def time_features(
    t: torch.Tensor, scales: tuple[float, ...] = TIME_SCALES, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """``[..., len(scales)]`` features ``tanh(t / s - 1)`` of the integer step counter ``t [...]``,
    computed in ``dtype`` (the run's: float64 runs keep float64 features)."""
    s = constant_vector(tuple(scales), dtype, t.device)
    return torch.tanh(t.to(dtype).unsqueeze(-1) / s - 1.0)


def ema(avg: torch.Tensor, x: torch.Tensor, decays: torch.Tensor) -> torch.Tensor:
    """Exponential moving averages ``[..., N, D]`` of ``x [..., N]`` at ``D`` decays at once."""
    return torch.lerp(x.unsqueeze(-1), avg, decays)


def segment_sums(
    x: torch.Tensor, segment_ids: torch.Tensor | None, num_segments: int
) -> torch.Tensor:
    """``x [..., N, F]`` summed over the coordinates of each segment, ``[..., S, F]``
    (``segment_ids [N]``; None: all N coordinates are one segment)."""
    coord_dim = x.dim() - 2
    if segment_ids is None:
        return x.sum(coord_dim, keepdim=True)
    shape = (*x.shape[:coord_dim], num_segments, x.shape[-1])
    return x.new_zeros(shape).index_add(coord_dim, segment_ids, x)


def finite_square_sums(
    x: torch.Tensor, segment_ids: torch.Tensor | None = None, num_segments: int = 1
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(Σ x², count)`` over the FINITE entries of ``x [..., N, F]``, per segment: ``[..., S, F]``.

    Squares are taken in float64, where any float32 value squares without overflow, and NaN or
    ±inf entries are left out, so one bad coordinate cannot poison the statistics (and through
    them, every other coordinate) of its tensor. ``segment_ids [N]`` (None: one segment).
    """
    finite = torch.isfinite(x)
    sq = torch.where(finite, x.to(torch.float64), 0.0).square()
    both = torch.cat((sq, finite.to(torch.float64)), dim=-1)
    sums = segment_sums(both, segment_ids, num_segments)
    f = x.shape[-1]
    return sums[..., :f], sums[..., f:]


def inverse_rms(
    square_sums: torch.Tensor, counts: torch.Tensor, eps: float, dtype: torch.dtype
) -> torch.Tensor:
    """``rsqrt(Σx² / count + eps)`` from ``finite_square_sums`` (computed in float64, then cast:
    a huge but finite mean gives a tiny scale, not 0 or NaN)."""
    return torch.rsqrt(square_sums / counts.clamp_min(1.0) + eps).to(dtype)


def normalize_per_segment(
    x: torch.Tensor, segment_ids: torch.Tensor | None, num_segments: int, eps: float
) -> torch.Tensor:
    """``x [..., N, F]`` divided by each feature's RMS over the finite entries of its segment
    (``segment_ids`` None: all N coordinates are one segment)."""
    sums, counts = finite_square_sums(x, segment_ids, num_segments)
    scale = inverse_rms(sums, counts, eps, x.dtype)
    return x * (scale if segment_ids is None else scale.index_select(x.dim() - 2, segment_ids))


#: Centres of the ``tanh`` training-progress features (fractions of the horizon).
PROGRESS_CENTERS = (0.25, 0.5, 0.75)


def progress_features(t: torch.Tensor, horizon: torch.Tensor) -> torch.Tensor:
    """``[..., 1 + len(PROGRESS_CENTERS)]`` features of the fraction ``f = t / horizon`` of
    training completed (VeLO's input; it lets an optimizer learn warm-up and decay): ``f`` and
    ``tanh(8 (f - c))``. ``f`` is clamped to [0, 1]: past its horizon an optimizer sees the end."""
    frac = (t.to(torch.float32) / horizon.to(torch.float32)).clamp(0.0, 1.0).unsqueeze(-1)
    c = constant_vector(PROGRESS_CENTERS, torch.float32, t.device)
    return torch.cat((frac, torch.tanh(8.0 * (frac - c))), dim=-1)
