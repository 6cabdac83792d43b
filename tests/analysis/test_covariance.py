"""Update covariance statistics against a dense d×d reference on small problems."""

from __future__ import annotations

import pytest
import torch

from analysis.covariance import covariance_stats


def _reference(x: torch.Tensor, k: int):
    cov = torch.cov(x.double().T)  # d×d, only affordable because d is small here
    eig = torch.linalg.eigvalsh(cov).flip(0)
    return float(cov.trace()), eig[:k]


def _samples(n, d, seed=0):
    g = torch.Generator().manual_seed(seed)
    # anisotropic, so that the top eigenvalues are well separated
    scales = torch.linspace(3.0, 0.1, d, dtype=torch.float64)
    return torch.randn(n, d, generator=g, dtype=torch.float64) * scales + 5.0


@pytest.mark.parametrize(("n", "d"), [(8, 50), (60, 20)])
@pytest.mark.parametrize("method", ["gram", "subspace"])
def test_matches_dense_covariance(n, d, method):
    x = _samples(n, d)
    stats = covariance_stats(x, k=4, method=method, iters=40)
    trace, top = _reference(x, 4)
    assert stats.trace == pytest.approx(trace, rel=1e-10)
    torch.testing.assert_close(stats.top_eigenvalues.double(), top, rtol=1e-4, atol=1e-6)
    assert stats.n_samples == n and stats.dim == d
    assert stats.mean_variance == pytest.approx(trace / d)
    assert 0 < stats.top_fraction <= 1


def test_multidimensional_samples_are_flattened_and_k_is_capped():
    x = _samples(5, 24).reshape(5, 2, 3, 4)
    stats = covariance_stats(x, k=10)
    assert stats.top_eigenvalues.shape == (4,)  # rank ≤ n − 1
    trace, _ = _reference(x.reshape(5, -1), 4)
    assert stats.trace == pytest.approx(trace)


def test_bad_input():
    with pytest.raises(ValueError, match="at least 2"):
        covariance_stats(torch.randn(1, 5))
    with pytest.raises(ValueError, match="method"):
        covariance_stats(torch.randn(3, 5), method="svd")
