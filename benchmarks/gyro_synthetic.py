"""GYRO README's synthetic tables, reproduced with this project's optimizers.

Settings are those of the GYRO repository's ``examples/synthetic_benchmark.py``: float32 start
points, gradient-norm clipping at 10 before every step, and the reported "final loss" is the loss
evaluated before the last step (the last entry of its history).

- Rosenbrock (a=1, b=100) from (-1, 1), 5000 steps: SGD(lr=1e-4, momentum=0.9), Adam(lr=1e-3),
  AdamW(lr=1e-3, weight_decay=1e-4), GYRO(lr=1e-3).
- Ravine f = 100·x₀² + x₁² from (2, 2), 3000 steps: SGD(lr=1e-2, momentum=0.9), Adam(lr=1e-2),
  AdamW(lr=1e-2, weight_decay=1e-4), GYRO(lr=1e-2).

One JSON line per (problem, optimizer) with ours beside the README's number, then a summary.

    python benchmarks/gyro_synthetic.py
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable

import torch

import baselines

Loss = Callable[[torch.Tensor], torch.Tensor]


def rosenbrock(x: torch.Tensor) -> torch.Tensor:
    return (1.0 - x[0]) ** 2 + 100.0 * (x[1] - x[0] ** 2) ** 2


def ravine(x: torch.Tensor) -> torch.Tensor:
    return 100.0 * x[0] ** 2 + x[1] ** 2


# problem -> (loss, start, steps, {optimizer: (registry name, hyperparameters, README value)})
PROBLEMS = {
    "rosenbrock": (
        rosenbrock,
        (-1.0, 1.0),
        5000,
        {
            "SGD": ("sgd", dict(lr=1e-4, momentum=0.9), 0.003560),
            "Adam": ("adam", dict(lr=1e-3), 0.000225),
            "AdamW": ("adamw", dict(lr=1e-3, weight_decay=1e-4), 0.000227),
            "GYRO": ("gyro_adam", dict(lr=1e-3), 0.000225),
        },
    ),
    "ravine": (
        ravine,
        (2.0, 2.0),
        3000,
        {
            "SGD": ("sgd", dict(lr=1e-2, momentum=0.9), 1.065446),
            "Adam": ("adam", dict(lr=1e-2), "~0"),
            "AdamW": ("adamw", dict(lr=1e-2, weight_decay=1e-4), "~0"),
            "GYRO": ("gyro_adam", dict(lr=1e-2), "~0"),
        },
    ),
}


def optimize(loss_fn: Loss, start: tuple[float, float], steps: int, name: str, hparams: dict):
    """The GYRO script's loop; returns (loss before the last step, loss after it, steps run)."""
    x = torch.tensor(start, dtype=torch.float32, requires_grad=True)
    optimizer = baselines.create(name, [x], **hparams)
    last = math.nan
    for step in range(steps):
        optimizer.zero_grad()
        loss = loss_fn(x)
        if not torch.isfinite(loss):
            return math.nan, math.nan, step
        loss.backward()
        torch.nn.utils.clip_grad_norm_([x], max_norm=10.0)
        optimizer.step()
        last = loss.item()
    with torch.no_grad():
        return last, loss_fn(x).item(), steps


def main() -> None:
    rows = []
    for problem, (loss_fn, start, steps, optimizers) in PROBLEMS.items():
        for label, (name, hparams, readme) in optimizers.items():
            final, after, ran = optimize(loss_fn, start, steps, name, hparams)
            row = {
                "problem": problem,
                "optimizer": label,
                "registry_name": name,
                "hparams": hparams,
                "steps": ran,
                "final_loss": final,
                "readme_final_loss": readme,
                "loss_after_last_step": after,
            }
            rows.append(row)
            print(json.dumps(row))
    print(json.dumps({"summary": "gyro_synthetic", "runs": len(rows), "torch": torch.__version__}))


if __name__ == "__main__":
    main()
