"""Statistics of the evaluation table: Student-t intervals, a paired bootstrap for ratios."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

BOOTSTRAP_SAMPLES = 4000
BOOTSTRAP_SEED = 20261201


def ci95(values: Sequence[float]) -> tuple[float, float]:
    """Mean and the half-width of its 95% confidence interval (Student t); NaN where undefined."""
    n = len(values)
    if n == 0:
        return math.nan, math.nan
    t = torch.tensor(list(values), dtype=torch.float64)
    mean = float(t.mean())
    if n == 1:
        return mean, math.nan
    from scipy.stats import t as student_t

    return mean, float(student_t.ppf(0.975, n - 1) * t.std(unbiased=True) / math.sqrt(n))


def ratio_ci(
    numerator: Sequence[float],
    denominator: Sequence[float],
    samples: int = BOOTSTRAP_SAMPLES,
    seed: int = BOOTSTRAP_SEED,
) -> tuple[float, float, float]:
    """``mean(numerator) / mean(denominator)`` and its 95% percentile-bootstrap interval.

    The two samples are paired by seed (same initial weights and minibatches), so seeds are
    resampled jointly; that removes the seed-to-seed variation both optimizers share. Pairs where
    either value is not finite (a diverged run) are dropped; with fewer than two pairs left the
    interval is NaN.
    """
    a = torch.tensor(list(numerator), dtype=torch.float64)
    b = torch.tensor(list(denominator), dtype=torch.float64)
    if a.shape != b.shape:
        raise ValueError(f"paired samples differ in length: {a.numel()} vs {b.numel()}")
    keep = torch.isfinite(a) & torch.isfinite(b)
    a, b = a[keep], b[keep]
    if a.numel() == 0:
        return math.nan, math.nan, math.nan
    ratio = float(a.mean() / b.mean())
    if a.numel() < 2:
        return ratio, math.nan, math.nan
    gen = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, a.numel(), (samples, a.numel()), generator=gen)
    boot = a[idx].mean(1) / b[idx].mean(1)
    lo, hi = torch.quantile(boot, torch.tensor([0.025, 0.975], dtype=torch.float64)).tolist()
    return ratio, lo, hi


def geometric_mean(values: Sequence[float]) -> float:
    """Geometric mean of positive finite values; NaN if there are none or any is not positive."""
    vals = [v for v in values if math.isfinite(v)]
    if not vals or any(v <= 0 for v in vals):
        return math.nan
    return math.exp(sum(math.log(v) for v in vals) / len(vals))
