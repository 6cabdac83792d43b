"""Small reductions over runs shared by the figures (torch only, no plotting)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from analysis.figures.bands import t_quantile_975


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


def t_interval(values: Sequence[float]) -> dict:
    """Mean over seeds and its 95% Student-t interval ``[mean ± t₀.₉₇₅(n−1)·s/√n]`` (the runs of
    different seeds are independent). One seed has no interval: NaN bounds. A NaN value (a
    diverged run) makes every number NaN rather than being left out."""
    x = torch.tensor([float(v) for v in values], dtype=torch.float64)
    n = int(x.numel())
    if n == 0:
        raise ValueError("t_interval needs at least one value")
    mean = float(x.mean())
    if n < 2 or not math.isfinite(mean):
        return {"mean": mean, "ci95": [math.nan, math.nan], "n": n}
    half = t_quantile_975(n - 1) * float(x.std(unbiased=True)) / math.sqrt(n)
    return {"mean": mean, "ci95": [mean - half, mean + half], "n": n}


def ratio_interval(
    numerator: Sequence[float], denominator: Sequence[float], resamples: int = 4000, seed: int = 0
) -> dict:
    """``mean(numerator) / mean(denominator)`` and its 95% percentile-bootstrap interval, seeds
    resampled in pairs (the i-th values of both come from the same seed: same initial weights
    and minibatches). Fewer than 2 pairs, or a NaN, gives NaN bounds."""
    num = torch.tensor([float(v) for v in numerator], dtype=torch.float64)
    den = torch.tensor([float(v) for v in denominator], dtype=torch.float64)
    if num.numel() != den.numel() or num.numel() == 0:
        raise ValueError(f"ratio_interval needs paired values, got {num.numel()} and {den.numel()}")
    n = int(num.numel())
    ratio = float(num.mean() / den.mean())
    if n < 2 or not math.isfinite(ratio):
        return {"mean": ratio, "ci95": [math.nan, math.nan], "n": n}
    gen = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, n, (resamples, n), generator=gen)
    ratios = num[idx].mean(1) / den[idx].mean(1)
    low, high = torch.quantile(ratios, torch.tensor([0.025, 0.975], dtype=torch.float64))
    return {"mean": ratio, "ci95": [float(low), float(high)], "n": n}


def entirely_below(a: dict, b: dict) -> bool | None:
    """Is interval ``a`` entirely below interval ``b``? None when either has no interval."""
    if not all(math.isfinite(v) for v in (*a["ci95"], *b["ci95"])):
        return None
    return a["ci95"][1] < b["ci95"][0]


def side_of_one(ratio: dict) -> str:
    """Where a ratio's interval lies relative to 1: "more" (above), "less" (below), "unclear"
    (it contains 1, or there is no interval)."""
    low, high = ratio["ci95"]
    if math.isfinite(low) and low > 1:
        return "more"
    if math.isfinite(high) and high < 1:
        return "less"
    return "unclear"
