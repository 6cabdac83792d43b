"""|Δθ| histograms: every coordinate is counted once, zeros and out-of-range values apart."""

from __future__ import annotations

import pytest
import torch

from analysis.distributions import abs_update_histogram, histograms_over_training, log_bins


def test_fractions_add_up_and_bins_are_right():
    update = torch.tensor([0.0, 0.0, -1e-3, 2e-3, 5e-2, -0.5, 1e-12, 20.0])
    edges = log_bins(1e-6, 1.0, 6)  # decades 1e-6 … 1
    h = abs_update_histogram(update, step=3, edges=edges)
    assert h.step == 3
    assert h.zeros == pytest.approx(2 / 8)
    assert h.below == pytest.approx(1 / 8) and h.above == pytest.approx(1 / 8)
    total = float(h.density.sum()) + h.zeros + h.below + h.above
    assert total == pytest.approx(1.0)
    # 1e-3 and 2e-3 in [1e-3, 1e-2); 5e-2 in [1e-2, 1e-1); 0.5 in [1e-1, 1)
    assert h.density.tolist() == pytest.approx([0, 0, 0, 2 / 8, 1 / 8, 1 / 8])
    assert h.median == pytest.approx(torch.tensor([1e-12, 1e-3, 2e-3, 5e-2, 0.5, 20.0]).median())


def test_over_training_and_errors():
    steps = torch.tensor([0, 10])
    updates = torch.randn(2, 100)
    hs = histograms_over_training(steps, updates)
    assert [h.step for h in hs] == [0, 10]
    with pytest.raises(ValueError, match="updates for"):
        histograms_over_training(torch.tensor([0]), updates)
    with pytest.raises(ValueError, match="low < high"):
        log_bins(1.0, 0.1)
