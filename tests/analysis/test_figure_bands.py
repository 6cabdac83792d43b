"""The plots' numbers: Student-t bands over seeds (arithmetic and geometric) and the log-axis
rule, checked without matplotlib."""

from __future__ import annotations

import math

import pytest
import torch

from analysis.figures.bands import (
    finite_band,
    geometric_band,
    mean_band,
    t_quantile_975,
    wants_log,
)


@pytest.mark.parametrize(
    ("df", "quantile"),  # tables of Student's t, two-sided 95%
    [(1, 12.7062), (2, 4.3027), (3, 3.1824), (4, 2.7764), (9, 2.2622), (29, 2.0452), (100, 1.984)],
)
def test_t_quantile_matches_the_tables(df, quantile):
    assert t_quantile_975(df) == pytest.approx(quantile, abs=1e-4)


def test_t_quantile_needs_a_degree_of_freedom():
    with pytest.raises(ValueError, match="degrees of freedom: 0"):
        t_quantile_975(0)


def test_mean_band_is_the_t_interval_of_the_mean_per_step():
    runs = torch.tensor([[1.0, 10.0], [3.0, 10.0]])
    band = mean_band(runs)
    assert band.mean.tolist() == [2.0, 10.0]
    half = 12.7062 * math.sqrt(2.0) / math.sqrt(2)  # t(1) · s / √n, s = √2
    assert band.lo.tolist() == pytest.approx([2.0 - half, 10.0], abs=1e-3)
    assert band.hi.tolist() == pytest.approx([2.0 + half, 10.0], abs=1e-3)
    single = mean_band(runs[:1])
    assert single.lo is None and single.hi is None and single.runs == 1


def test_a_nan_run_keeps_its_step_nan():
    band = mean_band(torch.tensor([[1.0, math.nan], [2.0, 3.0]]))
    assert band.mean[0] == 1.5 and math.isnan(band.mean[1]) and math.isnan(band.hi[1])


def test_geometric_band_stays_positive_where_the_arithmetic_one_does_not():
    runs = torch.tensor([[1e-6], [1.0]])
    assert float(mean_band(runs).lo) < 0
    band = geometric_band(runs)
    assert float(band.mean) == pytest.approx(1e-3)
    assert 0 < float(band.lo) < float(band.mean) < float(band.hi)


def test_finite_band_leaves_out_undefined_values():
    assert float(finite_band([1.0, math.nan, 3.0]).mean) == 2.0
    assert math.isnan(float(finite_band([math.nan]).mean))


def test_log_axis_only_for_non_negative_values_spanning_two_decades():
    assert wants_log([1e-3, 0.5, 0.0])
    assert not wants_log([0.01, 0.99])  # 99×: two decades not exceeded
    assert not wants_log([-1e-3, 10.0])
    assert not wants_log([0.0, math.nan])
