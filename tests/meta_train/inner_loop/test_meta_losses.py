"""``unroll.meta_loss_tail``: a truncation's weight is the fraction of its steps in the last part of
its run (hand-computed cases), and values outside (0, 1] are refused with the field's name."""

from __future__ import annotations

import pytest
import torch

from meta_train.configuration.engine import ConfigError
from meta_train.inner_loop.meta_losses import check_meta_loss_tail, tail_weights
from meta_train.inner_loop.unroll import UnrollConfig


def test_tail_weights_count_the_steps_in_the_last_fraction_of_the_run():
    # horizon 200, tail 0.25: the tail is steps 150..199; truncations of 20 steps
    start = torch.tensor([0.0, 120.0, 140.0, 150.0, 180.0, 200.0])
    horizon = torch.full_like(start, 200.0)
    w = tail_weights(start, horizon, length=20, tail=0.25)
    # 0..19 and 120..139: none; 140..159: 150..159 = 10 of 20; 150..169, 180..199: all; past
    # the run's end: none
    assert w.tolist() == [0.0, 0.0, 0.5, 1.0, 1.0, 0.0]


def test_tail_weights_per_task_horizons_and_the_rounding_of_the_tail_start():
    # tail 0.1 of 200 starts at step 180, of 100 at step 90 (the truncation 80..99 has 10 of its
    # 20 steps there)
    start = torch.tensor([160.0, 80.0, 60.0])
    horizon = torch.tensor([200.0, 100.0, 100.0])
    assert tail_weights(start, horizon, length=20, tail=0.1).tolist() == [0.0, 0.5, 0.0]
    assert tail_weights(start + 20, horizon, length=20, tail=0.1).tolist() == [1.0, 0.0, 0.5]
    # (1 - 0.7) · 100 is 30.000000000000004 in floating point: the tail still starts at step 30,
    # so the truncation 20..39 has 10 steps there, not 9
    w = tail_weights(torch.tensor([20.0]), torch.tensor([100.0]), length=20, tail=0.7)
    assert w.tolist() == [0.5]


def test_a_tail_of_one_weighs_every_truncation_of_the_run_fully():
    start = torch.arange(0, 200, 20, dtype=torch.float64)
    w = tail_weights(start, torch.full_like(start, 200.0), length=20, tail=1.0)
    assert w.tolist() == [1.0] * 10


@pytest.mark.parametrize("bad", [0, 0.0, -0.5, 1.5, float("nan"), float("inf"), True, "0.5"])
def test_invalid_tails_are_refused_with_the_field_name(bad):
    with pytest.raises(ConfigError, match=r"unroll\.meta_loss_tail must be a fraction in \(0, 1\]"):
        check_meta_loss_tail(bad)
    with pytest.raises(ConfigError, match="meta_loss_tail"):
        UnrollConfig(meta_loss_tail=bad, estimator="pes")


def test_a_tail_needs_a_particle_estimator():
    with pytest.raises(ConfigError, match=r"unroll\.estimator must be one of \['es', 'pes'\]"):
        UnrollConfig(meta_loss_tail=0.5, estimator="first")
    assert UnrollConfig(meta_loss_tail=0.5, estimator="pes").meta_loss_tail == 0.5
    assert UnrollConfig(estimator="first").meta_loss_tail == 1.0  # the default: no weighting
