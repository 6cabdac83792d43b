"""Distributions of update magnitudes |Δθ| over training (the paper's figure 9).

Update sizes span many decades (an Adam step is ≈ lr on every coordinate with a gradient, an SGD
step is lr·|g|), so histograms use log-spaced bins; exact zeros (coordinates that received no
gradient, e.g. weights of always-black pixels) are counted apart, since they have no logarithm.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


def log_bins(low: float = 1e-9, high: float = 1e1, count: int = 60) -> Tensor:
    """``count + 1`` log-spaced bin edges from ``low`` to ``high``."""
    if not (0 < low < high) or count < 1:
        raise ValueError(f"need 0 < low < high and count ≥ 1, got {low}, {high}, {count}")
    return torch.logspace(
        torch.log10(torch.tensor(low)), torch.log10(torch.tensor(high)), count + 1
    )


@dataclass(frozen=True)
class UpdateHistogram:
    """Normalized counts of |Δθ| per bin at one step, and what fell outside the bins."""

    step: int
    edges: Tensor
    density: Tensor  # fraction of all coordinates in each bin (sums with the rest to 1)
    zeros: float  # fraction exactly zero
    below: float  # fraction in (0, edges[0])
    above: float  # fraction ≥ edges[-1]
    median: float  # median of the nonzero |Δθ|


def abs_update_histogram(update: Tensor, step: int, edges: Tensor | None = None) -> UpdateHistogram:
    """Histogram of the magnitudes of one update vector (any shape, flattened)."""
    edges = log_bins() if edges is None else edges
    a = update.detach().reshape(-1).abs().double().cpu()
    total = a.numel()
    if total == 0:
        raise ValueError("empty update")
    nonzero = a[a > 0]
    e = edges.double()
    counts = torch.histogram(nonzero.clamp(e[0], e[-1]), bins=e).hist
    below = float((nonzero < e[0]).sum()) / total
    above = float((nonzero >= e[-1]).sum()) / total
    density = counts / total
    # clamping put the outliers into the first / last bins: take them back out
    density[0] -= below
    density[-1] -= above
    median = float(nonzero.median()) if nonzero.numel() else 0.0
    return UpdateHistogram(
        int(step), edges, density.float(), (total - nonzero.numel()) / total, below, above, median
    )


def histograms_over_training(
    steps: Tensor, updates: Tensor, edges: Tensor | None = None
) -> list[UpdateHistogram]:
    """One histogram per recorded step: ``updates`` is (T, d) with ``steps`` (T,)."""
    if updates.shape[0] != steps.shape[0]:
        raise ValueError(f"{updates.shape[0]} updates for {steps.shape[0]} steps")
    return [abs_update_histogram(u, int(s), edges) for s, u in zip(steps, updates, strict=True)]


def quantiles(update: Tensor, qs: tuple[float, ...] = (0.1, 0.5, 0.9, 0.99)) -> dict[float, float]:
    """Quantiles of |Δθ| over all coordinates (zeros included)."""
    a = update.detach().reshape(-1).abs().double().cpu()
    values = torch.quantile(a, torch.tensor(qs, dtype=torch.float64))
    return {q: float(v) for q, v in zip(qs, values, strict=True)}
