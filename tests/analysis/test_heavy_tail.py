"""The tail-index estimator recovers known α, and its block-size / pooling choices are pinned."""

from __future__ import annotations

import math

import pytest
import torch
from scipy.stats import levy_stable

from analysis.heavy_tail import alpha_estimator, prepare_noise, tail_index


@pytest.mark.parametrize("alpha", [1.2, 1.5, 1.8, 2.0])
def test_recovers_alpha_of_symmetric_stable_samples(alpha):
    x = torch.from_numpy(levy_stable.rvs(alpha, 0.0, size=100_000, random_state=7))
    est = tail_index(x, center=False)
    assert abs(est.alpha - alpha) < 0.15, est
    assert set(est.per_m) == {2, 5, 10, 20}


def test_vector_samples_recover_alpha():
    # i.i.d. coordinates: the norm of a d-vector of SαS coordinates is not SαS, but its block
    # sums scale as m^(1/α) all the same
    x = torch.from_numpy(levy_stable.rvs(1.5, 0.0, size=(40_000, 4), random_state=3))
    est = tail_index(x, center=False, pool="vector")
    assert abs(est.alpha - 1.5) < 0.15, est


def test_block_size_does_not_need_a_divisor_of_n():
    """Pitfall 6: N prime (the paper's 'largest divisor below √N' rule gives m = 1)."""
    n = 100_003
    assert all(n % d for d in range(2, math.isqrt(n) + 1))
    x = torch.from_numpy(levy_stable.rvs(1.5, 0.0, size=n, random_state=1))
    for m in (2, 5, 10, 20):
        assert abs(alpha_estimator(x.unsqueeze(1), m) - 1.5) < 0.2
    assert abs(tail_index(x, center=False).alpha - 1.5) < 0.15
    with pytest.raises(ValueError, match="m must be"):
        alpha_estimator(x.unsqueeze(1), 1)


def test_standardizing_removes_the_scale_mixture_bias():
    g = torch.Generator().manual_seed(0)
    scales = 10 ** (2 * torch.rand(2_000, generator=g, dtype=torch.float64))
    gaussian = torch.randn(100, 2_000, generator=g, dtype=torch.float64) * scales
    pooled = tail_index(gaussian).alpha
    standardized = tail_index(gaussian, standardize=True).alpha
    assert pooled < 1.5  # heterogeneous scales read as heavy tails
    assert abs(standardized - 2.0) < 0.15


def test_exact_zeros_are_dropped_not_log_zero():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(50, 1_000, generator=g, dtype=torch.float64)
    x[:, :300] = 0.0  # dead coordinates (e.g. always-black pixels)
    est = tail_index(x)
    assert est.n_dropped_zeros == 50 * 300
    assert abs(est.alpha - 2.0) < 0.15
    with_eps = tail_index(x, drop_zeros=False)  # the paper's log(‖·‖ + eps)
    assert with_eps.alpha < 1.0
    flat, dropped = prepare_noise(x, center=True)
    assert flat.shape == (50 * 700, 1) and dropped == 50 * 300


def test_too_few_samples_is_a_clear_error():
    with pytest.raises(ValueError, match="too few"):
        tail_index(torch.randn(3), center=False)


def test_all_zero_noise_has_no_alpha_estimate():
    """An update of exactly zero on every minibatch (a schedule decayed to zero at the end of
    its run) has no noise: NaN, not an error; too few samples stay an error."""
    est = tail_index(torch.zeros(128, 50))
    assert math.isnan(est.alpha) and est.n_dropped_zeros == 128 * 50
    assert math.isnan(tail_index(torch.zeros(128, 50), standardize=True).alpha)
    with pytest.raises(ValueError, match="too few"):
        tail_index(torch.zeros(3), center=False)


def test_discrete_noise_has_no_alpha_estimate():
    """Sign-based updates (Lion) take few distinct values: block sums hit exactly 0."""
    g = torch.Generator().manual_seed(2)
    signs = torch.randint(0, 2, (8, 5_000), generator=g).double() * 2 - 1
    assert math.isnan(tail_index(signs * 1e-3).alpha)
