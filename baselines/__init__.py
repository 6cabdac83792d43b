"""Handcrafted optimizers as ``torch.optim.Optimizer``s, faithful to their sources, in one
registry: ``baselines.create("gyro_adam", model.parameters(), lr=1e-3)``; ``baselines.available()``
lists the names. Depends on torch only (triton optionally, for AdamSyre's CUDA kernel;
``schedulefree`` for ``sf_adamw``, imported when one is made: ``baselines.schedule_free``).
"""

from .gap import GAPSGDM, GAPAdam
from .gyro import GYROSGD, GYROAdam
from .hysterograd import HIOptimizer, HysteroGrad, HysteroTelemetry
from .lars import LARSMomentum
from .lion import Lion, LionSGD
from .muon import MuonAdamW
from .registry import RegisteredOptimizer, available, create, describe, register
from .syre import AdamSyre

__all__ = [
    "GAPSGDM",
    "GYROSGD",
    "AdamSyre",
    "GAPAdam",
    "GYROAdam",
    "HIOptimizer",
    "HysteroGrad",
    "HysteroTelemetry",
    "LARSMomentum",
    "Lion",
    "LionSGD",
    "MuonAdamW",
    "RegisteredOptimizer",
    "available",
    "create",
    "describe",
    "register",
]
