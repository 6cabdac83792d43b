"""Tasks by name: the paper's optimizees and a few more."""

from __future__ import annotations

import difflib

from l2o.tasks.models import MLP, ConvNet
from l2o.tasks.task import Task

_TASKS: dict[str, Task] = {}


def register_task(task: Task, *, overwrite: bool = False) -> Task:
    if task.name in _TASKS and not overwrite:
        raise ValueError(f"task {task.name!r} is already registered")
    _TASKS[task.name] = task
    return task


def available_tasks() -> list[str]:
    return sorted(_TASKS)


def get_task(name: str, *, dataset: str | None = None, batch_size: int | None = None) -> Task:
    """The registered task ``name``, optionally on another same-shaped dataset or batch size."""
    if name not in _TASKS:
        near = difflib.get_close_matches(name, _TASKS, n=3, cutoff=0.5)
        hint = f" Did you mean {', '.join(map(repr, near))}?" if near else ""
        raise ValueError(f"unknown task {name!r}.{hint} Available tasks: {available_tasks()}")
    return _TASKS[name].with_options(dataset=dataset, batch_size=batch_size)


def _mlp(hidden, activation="sigmoid", batch_norm=False):
    def factory(input_shape, num_classes):
        c, h, w = input_shape
        return MLP(c * h * w, hidden, num_classes, activation=activation, batch_norm=batch_norm)

    return factory


def _conv(input_shape, num_classes):
    c, h, _ = input_shape
    return ConvNet(in_channels=c, image_size=h, num_classes=num_classes)


MIXED_ACTIVATIONS = ("sigmoid", "relu", "tanh", "leaky_relu")

_BUILTIN = [
    ("mnist_mlp_sigmoid", "mnist", _mlp((20,)), "the classic L2O task: 784-20-10, sigmoid"),
    ("mnist_mlp_relu", "mnist", _mlp((20,), "relu"), "784-20-10, ReLU"),
    ("mnist_mlp_leakyrelu", "mnist", _mlp((20,), "leaky_relu"), "784-20-10, LeakyReLU"),
    ("mnist_mlp_softplus", "mnist", _mlp((20,), "softplus"), "784-20-10, softplus"),
    ("mnist_mlp_sigmoid_h40", "mnist", _mlp((40,)), "784-40-10, sigmoid"),
    ("mnist_mlp_sigmoid_2layer", "mnist", _mlp((20, 20)), "784-20-20-10, sigmoid"),
    ("mnist_mlp_relu_2layer", "mnist", _mlp((20, 20), "relu"), "784-20-20-10, ReLU"),
    (
        "mnist_mlp_relu_bn",
        "mnist",
        _mlp((20,), "relu", batch_norm=True),
        "784-20-10, Linear → BatchNorm1d (affine, no running stats) → ReLU",
    ),
    (
        "mnist_mlp_mixed",
        "mnist",
        _mlp((20,), MIXED_ACTIVATIONS),
        "784-20-10, hidden units split among sigmoid, ReLU, tanh and LeakyReLU",
    ),
    ("mnist_conv", "mnist", _conv, "conv(8, 3×3, s2)-ReLU-conv(16, 3×3, s2)-ReLU-Linear"),
    ("cifar10_mlp_sigmoid", "cifar10", _mlp((40, 40)), "3072-40-40-10, sigmoid"),
    ("fashion_mnist_mlp_sigmoid", "fashion_mnist", _mlp((20,)), "784-20-10, sigmoid"),
    ("fashion_mnist_mlp_relu", "fashion_mnist", _mlp((20,), "relu"), "784-20-10, ReLU"),
    (
        "fashion_mnist_mlp_relu_bn",
        "fashion_mnist",
        _mlp((20,), "relu", batch_norm=True),
        "784-20-10, Linear → BatchNorm1d → ReLU",
    ),
    ("fashion_mnist_conv", "fashion_mnist", _conv, "the small convnet on Fashion-MNIST"),
]

for _name, _dataset, _factory, _description in _BUILTIN:
    register_task(Task(_name, _dataset, _factory, description=_description))

__all__ = ["MIXED_ACTIVATIONS", "available_tasks", "get_task", "register_task"]
