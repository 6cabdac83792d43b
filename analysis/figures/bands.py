"""Mean curves over seeds with their 95% confidence bands, and when a log axis fits the data.

Numbers only (torch and math): the plots draw them, the tests check them without matplotlib.
The band is the Student-t interval of the mean over seeds (the same as the summaries'
``stats.t_interval``). On a log axis the mean and its interval
are taken of the logarithms (a geometric mean): an arithmetic interval over a few seeds of a
quantity spanning decades reaches below zero, which a log axis cannot show.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch

#: Positive values spanning more than this ratio (two decades) are drawn on a log axis.
LOG_SPAN = 100.0


def t_quantile_975(df: int) -> float:
    """The 97.5% quantile of Student's t (the 95% interval's multiplier)."""
    if df < 1:
        raise ValueError(f"degrees of freedom: {df}, must be ≥ 1")
    from scipy.stats import t as student_t

    return float(student_t.ppf(0.975, df))


@dataclass
class Band:
    """A mean over ``runs`` runs and its 95% interval (``lo``/``hi`` None for a single run)."""

    mean: torch.Tensor
    lo: torch.Tensor | None
    hi: torch.Tensor | None
    runs: int


def mean_band(runs: torch.Tensor) -> Band:
    """Mean over the first dimension (runs) and the Student-t 95% interval of that mean. A NaN
    in any run stays NaN at its position (a missing or diverged value is not averaged away)."""
    runs = runs.double()
    n = runs.shape[0]
    mean = runs.mean(0)
    if n < 2:
        return Band(mean, None, None, n)
    half = t_quantile_975(n - 1) * runs.std(0) / math.sqrt(n)
    return Band(mean, mean - half, mean + half, n)


def geometric_band(runs: torch.Tensor) -> Band:
    """``mean_band`` of the logarithms, mapped back: the geometric mean and its interval, for a
    log axis. A zero makes the mean 0 there (not drawn on a log axis); a NaN stays NaN."""
    band = mean_band(runs.double().log())
    lo = None if band.lo is None else band.lo.exp()
    hi = None if band.hi is None else band.hi.exp()
    return Band(band.mean.exp(), lo, hi, band.runs)


def band(runs: torch.Tensor, log: bool) -> Band:
    """The band a linear (arithmetic mean) or log (geometric mean) axis shows."""
    return geometric_band(runs) if log else mean_band(runs)


def finite_band(values: Sequence[float], log: bool = False) -> Band:
    """``band`` of the finite values only (a tail index is NaN where it is undefined, e.g. for
    discrete noise); a mean of NaN when none is finite."""
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        nan = torch.tensor(math.nan, dtype=torch.float64)
        return Band(nan, None, None, 0)
    return band(torch.tensor(finite, dtype=torch.float64), log)


def wants_log(values: Iterable[float]) -> bool:
    """True when the values are non-negative and their positive ones span more than two
    decades (``LOG_SPAN``); a negative value keeps the axis linear."""
    positive = []
    for v in values:
        if math.isfinite(v):
            if v < 0:
                return False
            if v > 0:
                positive.append(v)
    return bool(positive) and max(positive) / min(positive) > LOG_SPAN
