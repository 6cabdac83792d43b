"""Covariance of updates (or gradients) across samples at the same parameters, without d×d.

Given n samples of a d-dimensional vector (updates on n minibatches from the same optimizer state,
n ≪ d typically), the covariance C = X_cᵀX_c/(n−1) of the centered samples has rank < n. Its
trace is ‖X_c‖²_F/(n−1) and its nonzero eigenvalues are those of the n×n Gram matrix
X_cX_cᵀ/(n−1); when both n and d are large, a matrix-free subspace iteration (products with X_c
and X_cᵀ only) gives the top eigenvalues. A d×d matrix is never formed.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

DENSE_LIMIT = 2048  # largest min(n, d) for which the small-side Gram matrix is formed


@dataclass(frozen=True)
class CovarianceStats:
    """Trace and top eigenvalues of the sample covariance of ``n_samples`` vectors in R^dim."""

    trace: float
    top_eigenvalues: Tensor
    n_samples: int
    dim: int

    @property
    def mean_variance(self) -> float:
        """Average per-coordinate variance, trace / d."""
        return self.trace / self.dim

    @property
    def top_fraction(self) -> float:
        """Share of the total variance along the leading direction."""
        return float(self.top_eigenvalues[0]) / self.trace if self.trace > 0 else 0.0


def _centered(samples: Tensor) -> Tensor:
    x = samples.reshape(samples.shape[0], -1).double()
    if x.shape[0] < 2:
        raise ValueError(f"need at least 2 samples for a covariance, got {x.shape[0]}")
    return x - x.mean(0, keepdim=True)


def _dense_top(xc: Tensor, k: int) -> Tensor:
    n, d = xc.shape
    small = xc @ xc.T if n <= d else xc.T @ xc
    eig = torch.linalg.eigvalsh(small / (n - 1)).flip(0)
    return eig[:k].clamp_min(0.0)


def _subspace_top(xc: Tensor, k: int, iters: int, seed: int) -> Tensor:
    """Randomized block subspace iteration on C = X_cᵀX_c/(n−1) through products only."""
    n, d = xc.shape
    block = min(k + 8, n, d)
    gen = torch.Generator(device="cpu").manual_seed(seed)
    q = torch.randn(d, block, generator=gen, dtype=xc.dtype).to(xc.device)
    q, _ = torch.linalg.qr(q)
    for _ in range(iters):
        q, _ = torch.linalg.qr(xc.T @ (xc @ q))
    small = (xc @ q).T @ (xc @ q) / (n - 1)  # Rayleigh-Ritz on the block
    eig = torch.linalg.eigvalsh(small).flip(0)
    return eig[:k].clamp_min(0.0)


def covariance_stats(
    samples: Tensor, k: int = 5, method: str = "auto", iters: int = 30, seed: int = 0
) -> CovarianceStats:
    """Trace and ``k`` largest eigenvalues of the covariance of ``samples`` (n, ...) over n.

    ``method``: ``"gram"`` (exact, forms the min(n, d)-sized Gram matrix), ``"subspace"``
    (matrix-free, for large n and d), or ``"auto"`` (gram when min(n, d) ≤ DENSE_LIMIT).
    """
    if method not in ("auto", "gram", "subspace"):
        raise ValueError(f"unknown method {method!r}")
    if k < 1:
        raise ValueError(f"k must be ≥ 1, got {k}")
    xc = _centered(samples)
    n, d = xc.shape
    k = min(k, n - 1, d)
    trace = float(xc.pow(2).sum() / (n - 1))
    if method == "gram" or (method == "auto" and min(n, d) <= DENSE_LIMIT):
        top = _dense_top(xc, k)
    else:
        top = _subspace_top(xc, k, iters, seed)
    return CovarianceStats(trace, top.float().cpu(), n, d)
