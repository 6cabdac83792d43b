"""Optimizee tasks: a model factory, a dataset, a batch size, a pipeline variation and a loss, in
a registry by name."""

from l2o.tasks.models import ACTIVATIONS, MLP, ConvNet, MixedActivation, make_activation
from l2o.tasks.registry import available_tasks, get_task, register_task
from l2o.tasks.task import Task
from l2o.tasks.variation import VARIATION_KEYS, VARIATION_TYPES, TaskVariation

__all__ = [
    "ACTIVATIONS",
    "MLP",
    "VARIATION_KEYS",
    "VARIATION_TYPES",
    "ConvNet",
    "MixedActivation",
    "Task",
    "TaskVariation",
    "available_tasks",
    "get_task",
    "make_activation",
    "register_task",
]
