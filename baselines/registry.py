"""One registry of every handcrafted optimizer: ``create(name, params, **hparams)``.

Names are lower-case with underscores; ``create`` also accepts hyphens and any case
(``"GYRO-Adam"`` is ``"gyro_adam"``). An unknown name raises a ``ValueError`` that lists the
nearest registered names.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from .gap import GAPSGDM, GAPAdam
from .gyro import GYROSGD, GYROAdam
from .hysterograd import HIOptimizer
from .lars import LARSMomentum
from .lion import Lion, LionSGD
from .muon import MuonAdamW
from .syre import AdamSyre

__all__ = ["RegisteredOptimizer", "available", "create", "describe", "register"]

OptimizerFactory = Callable[..., torch.optim.Optimizer]


@dataclass(frozen=True)
class RegisteredOptimizer:
    """A registry entry: the factory (usually the class) and a one-line summary."""

    name: str
    factory: OptimizerFactory
    summary: str


_REGISTRY: dict[str, RegisteredOptimizer] = {}


def _normalise(name: str) -> str:
    return name.strip().lower().replace("-", "_")


def register(name: str, factory: OptimizerFactory, summary: str = "") -> None:
    """Add an optimizer under ``name``; refuses to overwrite an existing entry."""
    key = _normalise(name)
    if key in _REGISTRY:
        raise ValueError(f"An optimizer is already registered as {key!r}")
    _REGISTRY[key] = RegisteredOptimizer(key, factory, summary)


def available() -> list[str]:
    """The registered names, sorted."""
    return sorted(_REGISTRY)


def describe(name: str) -> RegisteredOptimizer:
    """The registry entry of ``name`` (``ValueError`` with suggestions if unknown)."""
    key = _normalise(name) if isinstance(name, str) else name
    if key not in _REGISTRY:
        near = difflib.get_close_matches(str(key), _REGISTRY, n=3, cutoff=0.5)
        hint = f" Did you mean {', '.join(map(repr, near))}?" if near else ""
        raise ValueError(f"Unknown optimizer {name!r}.{hint} Available: {', '.join(available())}")
    return _REGISTRY[key]


def create(name: str, params: Any, **hparams: Any) -> torch.optim.Optimizer:
    """Build the optimizer registered as ``name`` over ``params`` with ``hparams``."""
    return describe(name).factory(params, **hparams)


def _schedule_free_adamw(params: Any, **hparams: Any) -> torch.optim.Optimizer:
    """``ScheduleFreeAdamW``, imported on use: only this baseline needs ``schedulefree``."""
    from .schedule_free import ScheduleFreeAdamW

    return ScheduleFreeAdamW(params, **hparams)


for _name, _factory, _summary in [
    ("sgd", torch.optim.SGD, "torch.optim.SGD"),
    ("adam", torch.optim.Adam, "torch.optim.Adam"),
    ("adamw", torch.optim.AdamW, "torch.optim.AdamW"),
    ("gyro_adam", GYROAdam, "Adam with the gradient projected against the momentum (GYRO)"),
    ("gyro_sgd", GYROSGD, "SGD with the gradient projected against a momentum buffer (GYRO)"),
    ("gap_adam", GAPAdam, "Adam(W) choosing beta1 online by greedy alignment (GAP)"),
    ("gap_sgdm", GAPSGDM, "SGD+momentum choosing the momentum online (GAP)"),
    ("adam_syre", AdamSyre, "Adam with syre weight decay towards a fixed random anchor"),
    ("hysterograd", HIOptimizer, "Fisher-preconditioned steps behind a hysteretic barrier"),
    ("lion", Lion, "Lion: sign of interpolated momentum (Chen et al. 2023)"),
    ("lion_sgd", LionSGD, "alpha * Lion + (1 - alpha) * SGD (Sobotka et al.)"),
    ("lars", LARSMomentum, "EMA momentum scaled per tensor: lr is the relative step (LARS)"),
    ("muon", MuonAdamW, "torch.optim.Muon on 2-D weights, AdamW on the rest, one lr"),
    ("sf_adamw", _schedule_free_adamw, "schedule-free AdamW (package schedulefree)"),
]:
    register(_name, _factory, _summary)
