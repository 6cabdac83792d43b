"""analysis.figures.stats: the 95% intervals over seeds, on data whose answer is known."""

from __future__ import annotations

import math

import pytest
import torch

from analysis.figures.stats import entirely_below, ratio_interval, side_of_one, t_interval


def test_t_interval_matches_the_textbook_value():
    # mean 2, s = 1, n = 4: half width t(0.975, 3) · 1/2 = 3.182446 / 2
    out = t_interval([1.0, 2.0, 2.0, 3.0])
    s = math.sqrt(2 / 3)
    assert out["mean"] == 2.0 and out["n"] == 4
    assert out["ci95"] == pytest.approx([2 - 3.182446 * s / 2, 2 + 3.182446 * s / 2], rel=1e-6)


def test_t_interval_covers_the_mean_about_95_percent_of_the_time():
    gen = torch.Generator().manual_seed(0)
    hits = 0
    for _ in range(2000):
        x = torch.randn(5, generator=gen) + 3.0
        low, high = t_interval(x.tolist())["ci95"]
        hits += low < 3.0 < high
    assert 0.93 < hits / 2000 < 0.97


def test_one_seed_or_a_nan_has_no_interval():
    assert all(math.isnan(v) for v in t_interval([1.5])["ci95"])
    out = t_interval([1.0, float("nan"), 2.0])
    assert math.isnan(out["mean"]) and all(math.isnan(v) for v in out["ci95"])
    with pytest.raises(ValueError, match="at least one"):
        t_interval([])


def test_ratio_interval_of_paired_seeds():
    adam = [1.0, 2.0, 3.0, 4.0, 5.0]
    # exactly twice Adam on every seed: the seed-to-seed spread cancels in the ratio
    out = ratio_interval([2 * a for a in adam], adam)
    assert out["mean"] == pytest.approx(2.0) and out["ci95"] == pytest.approx([2.0, 2.0])
    noisy = ratio_interval([2.1, 3.8, 6.3, 7.7, 10.4], adam)
    assert noisy["ci95"][0] < 2.0 < noisy["ci95"][1] and noisy["ci95"][0] > 1.0
    assert noisy == ratio_interval([2.1, 3.8, 6.3, 7.7, 10.4], adam)  # fixed resampling seed
    with pytest.raises(ValueError, match="paired"):
        ratio_interval([1.0, 2.0], [1.0])


def test_interval_comparisons():
    low, high = {"ci95": [0.1, 0.2]}, {"ci95": [0.3, 0.4]}
    assert entirely_below(low, high) is True and entirely_below(high, low) is False
    assert entirely_below({"ci95": [math.nan, math.nan]}, high) is None
    assert side_of_one({"ci95": [1.1, 2.0]}) == "more"
    assert side_of_one({"ci95": [0.2, 0.9]}) == "less"
    assert side_of_one({"ci95": [0.9, 1.1]}) == "unclear"
    assert side_of_one({"ci95": [math.nan, math.nan]}) == "unclear"
