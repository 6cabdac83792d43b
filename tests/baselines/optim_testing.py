"""Shared test material for the baselines: small problems, gradient streams, trajectories, and a
working configuration of every registered optimizer. torch only (no l2o), like the package."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

import baselines

# A configuration of every registered optimizer that trains the small problems below.
WORKING_HPARAMS: dict[str, dict[str, Any]] = {
    "sgd": dict(lr=1e-3, momentum=0.9),
    "adam": dict(lr=3e-2),
    "adamw": dict(lr=3e-2, weight_decay=1e-2),
    "gyro_adam": dict(lr=3e-2, warmup_steps=5),
    "gyro_sgd": dict(lr=1e-3, warmup_steps=5),
    "gap_adam": dict(
        lr=3e-2, type="switch_parameter_wise", betas=[(0.5, 0.999), (0.9, 0.999)], J_ema=0.0
    ),
    "gap_sgdm": dict(lr=1e-3, type="switch", momentum=[0.5, 0.9], J_ema=0.5),
    "adam_syre": dict(lr=3e-2, weight_decay=1e-2),
    "hysterograd": dict(lr=3e-2),
    "lion": dict(lr=1e-2),
    "lion_sgd": dict(alpha=0.5, lr=1e-2, sgd_lr=1e-3, momentum=0.9),
    "lars": dict(lr=0.04),
    "muon": dict(lr=3e-2),
    "sf_adamw": dict(lr=3e-2),
}

# Learning rates per problem where the working one does not fit (steep ravine: small SGD steps).
PROBLEM_LR = {
    "ravine": {"sgd": 2e-3, "gyro_sgd": 2e-3, "gap_sgdm": 2e-3, "lion_sgd": 1e-2},
    "mlp": {"sgd": 0.1, "gyro_sgd": 0.3, "gap_sgdm": 0.1},
}


def make_optimizer(name: str, params: Any, problem: str | None = None, **overrides: Any):
    hparams = dict(WORKING_HPARAMS[name])
    if problem is not None and name in PROBLEM_LR.get(problem, {}):
        hparams["lr" if name != "lion_sgd" else "sgd_lr"] = PROBLEM_LR[problem][name]
    hparams.update(overrides)
    return baselines.create(name, params, **hparams)


def rosenbrock(x: torch.Tensor) -> torch.Tensor:
    return (1.0 - x[0]) ** 2 + 100.0 * (x[1] - x[0] ** 2) ** 2


def ravine(x: torch.Tensor) -> torch.Tensor:
    return 100.0 * x[0] ** 2 + x[1] ** 2


class TinyClassifier(torch.nn.Module):
    """An MNIST-shaped problem in miniature: a 2-layer MLP on synthetic teacher labels."""

    def __init__(self, seed: int = 0, features: int = 20, hidden: int = 32, classes: int = 4):
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        self.fc1 = torch.nn.Linear(features, hidden)
        self.fc2 = torch.nn.Linear(hidden, classes)
        with torch.no_grad():
            for param in self.parameters():
                param.copy_(torch.randn(param.shape, generator=generator) * 0.3)
        self.x = torch.randn(256, features, generator=generator)
        teacher = torch.randn(features, classes, generator=generator)
        self.y = (self.x @ teacher).argmax(dim=1)

    def loss(self) -> torch.Tensor:
        logits = self.fc2(torch.relu(self.fc1(self.x)))
        return torch.nn.functional.cross_entropy(logits, self.y)


def problem_closure(problem: str) -> tuple[list[torch.nn.Parameter], Callable[[], torch.Tensor]]:
    """Fresh parameters and a loss function of one of the three small problems."""
    if problem == "mlp":
        model = TinyClassifier()
        return list(model.parameters()), model.loss
    start = {"rosenbrock": [-1.2, 1.0], "ravine": [1.0, 1.0]}[problem]
    x = torch.nn.Parameter(torch.tensor(start))
    function = rosenbrock if problem == "rosenbrock" else ravine
    return [x], lambda: function(x)


def train(optimizer: torch.optim.Optimizer, loss_fn: Callable[[], torch.Tensor], steps: int):
    """Full-batch training; returns the losses before every step."""
    losses = []
    for _ in range(steps):
        optimizer.zero_grad()
        loss = loss_fn()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


def make_params(seed: int = 0, dtype: torch.dtype = torch.float32) -> list[torch.nn.Parameter]:
    """Three tensors of different shapes (a matrix, a vector, a 3-d block)."""
    generator = torch.Generator().manual_seed(seed)
    shapes = [(6, 5), (5,), (3, 2, 2)]
    return [torch.nn.Parameter(torch.randn(s, generator=generator, dtype=dtype)) for s in shapes]


def gradient_stream(
    params: list[torch.Tensor], steps: int, seed: int = 1, oscillation: float = 0.0
) -> list[list[torch.Tensor]]:
    """Noisy gradients with a drift; ``oscillation`` adds a term whose sign flips every step."""
    generator = torch.Generator().manual_seed(seed)
    drift = [torch.randn(p.shape, generator=generator, dtype=p.dtype) for p in params]
    return [
        [
            0.5 * d
            + oscillation * (-1) ** t * d.abs()
            + torch.randn(d.shape, generator=generator, dtype=d.dtype)
            for d in drift
        ]
        for t in range(steps)
    ]


def trajectory(
    factory: Callable[[list[torch.nn.Parameter]], torch.optim.Optimizer],
    steps: int = 50,
    dtype: torch.dtype = torch.float32,
    oscillation: float = 0.0,
    params: list[torch.nn.Parameter] | None = None,
) -> tuple[list[torch.Tensor], torch.optim.Optimizer]:
    """Parameters after ``steps`` steps on a fixed gradient stream (plus 0.1·p, a curvature)."""
    params = make_params(dtype=dtype) if params is None else params
    optimizer = factory(params)
    for grads in gradient_stream(params, steps, oscillation=oscillation):
        for param, grad in zip(params, grads):
            param.grad = grad + 0.1 * param.detach()
        optimizer.step()
    return [p.detach().clone() for p in params], optimizer


def max_relative_error(actual: list[torch.Tensor], expected: list[torch.Tensor]) -> float:
    return max(
        ((a - e).abs().max() / e.abs().max().clamp_min(1e-30)).item()
        for a, e in zip(actual, expected)
    )
