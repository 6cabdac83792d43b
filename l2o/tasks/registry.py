"""Tasks by name: the paper's optimizees and a few more.

Every task's loss is the mean cross-entropy over its predicted positions (one per image; every
byte of a window for the language model) and its test metric the top-1 accuracy over them
(``TrainResult.test_acc``: next-byte accuracy for the language model).
"""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass

from l2o.tasks.models import MLP, ConvNet
from l2o.tasks.task import Task
from l2o.tasks.transformer import TransformerLM
from l2o.tasks.variation import TaskVariation

_TASKS: dict[str, Task] = {}


def register_task(task: Task, *, overwrite: bool = False) -> Task:
    if task.name in _TASKS and not overwrite:
        raise ValueError(f"task {task.name!r} is already registered")
    _TASKS[task.name] = task
    return task


def available_tasks() -> list[str]:
    return sorted(_TASKS)


def get_task(
    name: str,
    *,
    dataset: str | None = None,
    batch_size: int | None = None,
    variation: TaskVariation | None = None,
) -> Task:
    """The registered task ``name``, optionally on another same-shaped dataset, with another
    batch size or pipeline (``Task.with_options``)."""
    if name not in _TASKS:
        near = difflib.get_close_matches(name, _TASKS, n=3, cutoff=0.5)
        hint = f" Did you mean {', '.join(map(repr, near))}?" if near else ""
        raise ValueError(f"unknown task {name!r}.{hint} Available tasks: {available_tasks()}")
    return _TASKS[name].with_options(dataset=dataset, batch_size=batch_size, variation=variation)


def _resized_layers(layers: tuple[int, ...], width: int | None, depth: int | None, name: str):
    """``layers`` with every width set to ``width`` and/or their number to ``depth``."""
    if width is None and depth is not None and len(set(layers)) > 1:
        raise ValueError(
            f"depth: {name}'s hidden widths {layers} differ; give width too to choose one"
        )
    return (width or layers[0],) * (depth or len(layers))


@dataclass(frozen=True)
class MLPFactory:
    """An MLP on flattened inputs; ``resized`` gives the same MLP with other hidden layers."""

    hidden: tuple[int, ...]
    activation: str | tuple[str, ...] = "sigmoid"
    batch_norm: bool = False

    def __call__(self, input_shape, num_classes):
        c, h, w = input_shape
        return MLP(c * h * w, self.hidden, num_classes, self.activation, self.batch_norm)

    def resized(self, width: int | None, depth: int | None) -> MLPFactory:
        hidden = _resized_layers(self.hidden, width, depth, "the MLP")
        return dataclasses.replace(self, hidden=hidden)


@dataclass(frozen=True)
class TransformerFactory:
    """The byte-level ``TransformerLM``; ``resized``: model width and number of blocks."""

    width: int = 64
    depth: int = 2
    heads: int = 4

    def __call__(self, input_shape, num_classes):
        (context,) = input_shape
        return TransformerLM(num_classes, context, self.width, self.depth, self.heads)

    def resized(self, width: int | None, depth: int | None) -> TransformerFactory:
        if width is not None and width % self.heads:
            raise ValueError(f"width must be a multiple of the {self.heads} attention heads")
        return dataclasses.replace(self, width=width or self.width, depth=depth or self.depth)


def _mlp(hidden, activation="sigmoid", batch_norm=False) -> MLPFactory:
    activation = activation if isinstance(activation, str) else tuple(activation)
    return MLPFactory(tuple(hidden), activation, batch_norm)


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
    ("fashion_mnist_mlp_tanh", "fashion_mnist", _mlp((32,), "tanh"), "784-32-10, tanh"),
    (
        "fashion_mnist_mlp_relu_bn",
        "fashion_mnist",
        _mlp((20,), "relu", batch_norm=True),
        "784-20-10, Linear → BatchNorm1d → ReLU",
    ),
    ("fashion_mnist_conv", "fashion_mnist", _conv, "the small convnet on Fashion-MNIST"),
    (
        "mnist_mlp_wide",
        "mnist",
        _mlp((1024, 256), "relu"),
        "784-1024-256-10, ReLU: 1,068,810 parameters",
    ),
    ("digits_mlp_relu", "digits", _mlp((32,), "relu"), "scikit-learn's 8×8 digits, 64-32-10, ReLU"),
    ("digits_mlp_tanh", "digits", _mlp((32,), "tanh"), "scikit-learn's 8×8 digits, 64-32-10, tanh"),
]

for _name, _dataset, _factory, _description in _BUILTIN:
    register_task(Task(_name, _dataset, _factory, description=_description))

register_task(
    Task(
        "stdlib_lm_transformer",
        "stdlib_bytes",
        TransformerFactory(),
        batch_size=32,
        description="byte-level causal transformer LM on the standard library's sources: 2 "
        "pre-LayerNorm blocks, width 64, 4 heads, context 64; metric: next-byte accuracy",
    )
)

__all__ = [
    "MIXED_ACTIVATIONS",
    "MLPFactory",
    "TransformerFactory",
    "available_tasks",
    "get_task",
    "register_task",
]
