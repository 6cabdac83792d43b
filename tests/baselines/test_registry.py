"""The registry: names, creation, suggestions for typos, extension."""

from __future__ import annotations

import pytest
import torch

import baselines
from baselines import registry
from baselines.schedule_free import ScheduleFreeAdamW

EXPECTED = {
    "sgd": torch.optim.SGD,
    "adam": torch.optim.Adam,
    "adamw": torch.optim.AdamW,
    "gyro_adam": baselines.GYROAdam,
    "gyro_sgd": baselines.GYROSGD,
    "gap_adam": baselines.GAPAdam,
    "gap_sgdm": baselines.GAPSGDM,
    "adam_syre": baselines.AdamSyre,
    "hysterograd": baselines.HIOptimizer,
    "lion": baselines.Lion,
    "lion_sgd": baselines.LionSGD,
    "lars": baselines.LARSMomentum,
    "muon": baselines.MuonAdamW,
    "sf_adamw": ScheduleFreeAdamW,
}


def test_available_lists_every_optimizer_sorted():
    assert baselines.available() == sorted(EXPECTED)


@pytest.mark.parametrize("name, cls", sorted(EXPECTED.items()))
def test_create_builds_the_registered_class_with_the_given_hyperparameters(name, cls):
    optimizer = baselines.create(name, [torch.nn.Parameter(torch.ones(2))], lr=0.123)
    assert type(optimizer) is cls
    assert isinstance(optimizer, torch.optim.Optimizer)
    assert optimizer.param_groups[0]["lr"] == 0.123
    assert baselines.describe(name).summary


def test_names_are_normalised():
    optimizer = baselines.create(" GYRO-Adam ", [torch.nn.Parameter(torch.ones(2))])
    assert isinstance(optimizer, baselines.GYROAdam)


def test_unknown_name_suggests_near_matches():
    with pytest.raises(ValueError, match="gyro_adam") as error:
        baselines.create("gyro_adm", [torch.nn.Parameter(torch.ones(2))])
    assert "Did you mean" in str(error.value)
    with pytest.raises(ValueError, match="Available: adam"):
        baselines.create("zzz", [torch.nn.Parameter(torch.ones(2))])


def test_register_adds_and_refuses_duplicates(monkeypatch):
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    baselines.register("rmsprop", torch.optim.RMSprop, "torch.optim.RMSprop")
    assert "rmsprop" in baselines.available()
    assert isinstance(
        baselines.create("rmsprop", [torch.nn.Parameter(torch.ones(2))]), torch.optim.RMSprop
    )
    with pytest.raises(ValueError, match="already registered"):
        baselines.register("RMSprop", torch.optim.RMSprop)


def test_hysterograd_alias():
    assert baselines.HysteroGrad is baselines.HIOptimizer
