"""Learned optimizers: coordinatewise networks over one flat vector of all parameters.

``create("lstm", **kwargs)`` / ``create("mlp", ...)`` build one by name; ``LearnedOptimizer`` wraps
a trained one as a ``torch.optim.Optimizer`` (``LearnedOptimizer.from_pretrained("lstm-mnist",
model.parameters())``).
"""

import l2o.optimizers.general  # noqa: F401  (registers the "general" architecture)
from l2o.optimizers.base import (
    LearnedOptimizerNet,
    ParamSpec,
    available_architectures,
    create,
    register,
)
from l2o.optimizers.checkpoint_io import load_learned_optimizer, save_learned_optimizer
from l2o.optimizers.lstm import LSTMOptimizer
from l2o.optimizers.mlp import MLPOptimizer
from l2o.optimizers.wrapper import LearnedOptimizer, available_pretrained

__all__ = [
    "LSTMOptimizer",
    "LearnedOptimizer",
    "LearnedOptimizerNet",
    "MLPOptimizer",
    "ParamSpec",
    "available_architectures",
    "available_pretrained",
    "create",
    "load_learned_optimizer",
    "register",
    "save_learned_optimizer",
]
