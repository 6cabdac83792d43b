"""Optimizee tasks: a model factory, a dataset, a batch size and a loss, in a registry by name."""

from l2o.tasks.models import ACTIVATIONS, MLP, ConvNet, MixedActivation, make_activation
from l2o.tasks.registry import available_tasks, get_task, register_task
from l2o.tasks.task import Task

__all__ = [
    "ACTIVATIONS",
    "MLP",
    "ConvNet",
    "MixedActivation",
    "Task",
    "available_tasks",
    "get_task",
    "make_activation",
    "register_task",
]
