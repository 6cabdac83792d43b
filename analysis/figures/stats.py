"""Small reductions over runs shared by the figures (torch only, no plotting)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch


def mean_std(curves: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and standard deviation over runs (std 0 for a single run), in float64."""
    stacked = torch.stack(curves).double()
    std = stacked.std(0) if stacked.shape[0] > 1 else torch.zeros_like(stacked[0])
    return stacked.mean(0), std


def window_mean(x: torch.Tensor, lo: int, hi: int) -> float:
    """Mean of ``x[lo:hi]``; NaN for an empty window (a short run has no "rest")."""
    seg = x[lo:hi]
    return float(seg.double().mean()) if seg.numel() else float("nan")


def smooth(v: torch.Tensor, k: int = 5) -> torch.Tensor:
    """Moving average over ``k`` steps (valid part only: ``k - 1`` shorter)."""
    kernel = torch.ones(1, 1, k, dtype=torch.float64) / k
    return torch.conv1d(v.double().view(1, 1, -1), kernel).view(-1)


def finite_mean(values: Sequence[float]) -> float:
    """Mean of the finite values (α is NaN for discrete noise); NaN when none is finite."""
    finite = [v for v in values if math.isfinite(v)]
    return sum(finite) / len(finite) if finite else math.nan


def spearman(a: Sequence[float], b: Sequence[float]) -> float:
    """Spearman rank correlation (ties broken by position)."""
    ra = torch.tensor(a, dtype=torch.float64).argsort().argsort().double()
    rb = torch.tensor(b, dtype=torch.float64).argsort().argsort().double()
    return float(torch.corrcoef(torch.stack([ra, rb]))[0, 1])
