"""The one path that trains an optimizee with a ``torch.optim.Optimizer``.

Meta-testing, the baselines' learning-rate grid search, held-out meta-validation and the
analysis recordings all call :func:`train_optimizee`, so a learned optimizer and Adam are compared
by the very same code, with the same initial weights and the same minibatches for a given seed.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from l2o.data import Dataset
from l2o.seeding import derive_seed
from l2o.tasks import Task

# The paper's learning-rate grid for the handcrafted baselines.
PAPER_LR_GRID: tuple[float, ...] = (1e-4, 5e-4, 1e-3, 5e-3, 1e-2, 5e-2, 1e-1, 5e-1, 1.0, 3.0)

OptimizerFactory = Callable[[list[nn.Parameter]], torch.optim.Optimizer]
StepCallback = Callable[
    [int, nn.Module, torch.optim.Optimizer, torch.Tensor, torch.Tensor, torch.Tensor], None
]


@dataclass
class TrainResult:
    """Per-step training losses (NaN after a divergence) and the final test metrics."""

    train_losses: torch.Tensor
    test_loss: float
    test_acc: float
    diverged: bool

    @property
    def mean_train_loss(self) -> float:
        return float(self.train_losses.mean())


def model_seed(seed: int) -> int:
    return derive_seed(seed, "optimizee-init")


def make_optimizee(task: Task, seed: int, device: torch.device | str = "cpu") -> nn.Module:
    """Optimizee ``seed`` of ``task``, freshly initialized: THE convention for initial weights,
    used by ``train_optimizee`` and by meta-training's inner loop
    (``meta_train.inner_loop.unroll``), so
    that seed s starts from the same weights in both."""
    return task.make_model(model_seed(seed), device)


def data_seed(seed: int) -> int:
    return derive_seed(seed, "optimizee-data")


@torch.no_grad()
def evaluate(
    model: nn.Module, task: Task, data: Dataset, split: str = "test", chunk: int = 4096
) -> tuple[float, float]:
    """Mean loss and accuracy of ``model`` over every predicted position of a whole split (one
    per image, every byte of a language model's windows), in chunks of about ``chunk`` positions
    to bound memory.

    BatchNorm without running statistics normalizes with each chunk's own statistics.
    """
    x, y = data.split(split)
    rows = max(1, chunk // max(1, y[0].numel()))
    total_loss, correct = 0.0, 0
    for start in range(0, x.shape[0], rows):
        logits = model(x[start : start + rows])
        target = y[start : start + rows]
        total_loss += float(task.loss(logits, target)) * target.numel()
        correct += int(task.correct(logits, target))
    return total_loss / y.numel(), correct / y.numel()


def train_optimizee(
    task: Task,
    make_optimizer: OptimizerFactory,
    steps: int,
    seed: int = 0,
    device: torch.device | str = "cpu",
    callback: StepCallback | None = None,
    data: Dataset | None = None,
    evaluate_test: bool = True,
) -> TrainResult:
    """Train a fresh optimizee of ``task`` for ``steps`` steps; ``seed`` fixes weights and batches.

    ``callback(step, model, optimizer, loss, x, y)`` runs after every ``optimizer.step()`` (the
    analysis records trajectories through it). A non-finite loss stops training: the remaining
    losses are NaN and ``diverged`` is set, so a divergent learning rate loses a grid search
    instead of crashing it. An optimizer with ``train()`` / ``eval()`` (schedule-free) is put in
    train mode before the first step and in eval mode before the test metrics.
    """
    if steps <= 0:
        raise ValueError(f"steps must be positive, got {steps}")
    data = data if data is not None else task.load_data(device)
    model = make_optimizee(task, seed, device)
    model.train()
    optimizer = make_optimizer(list(model.parameters()))
    _set_mode(optimizer, "train")
    sampler = data.sampler(task.batch_size, data_seed(seed))
    losses = torch.full((steps,), float("nan"))
    diverged = False
    for step in range(steps):
        x, y = sampler.next()

        def closure(x=x, y=y):
            optimizer.zero_grad(set_to_none=True)
            loss = task.loss(model(x), y)
            loss.backward()
            return loss

        loss = closure()
        value = float(loss.detach())
        losses[step] = value
        if not math.isfinite(value):
            diverged = True
            break
        optimizer.step(closure) if _needs_closure(optimizer) else optimizer.step()
        if callback is not None:
            callback(step, model, optimizer, loss.detach(), x, y)
    test_loss, test_acc = float("nan"), float("nan")
    if evaluate_test and not diverged:
        model.eval()
        _set_mode(optimizer, "eval")
        test_loss, test_acc = evaluate(model, task, data)
    return TrainResult(losses, test_loss, test_acc, diverged)


def _set_mode(optimizer: torch.optim.Optimizer, mode: str) -> None:
    """``optimizer.train()`` / ``.eval()`` where it has them: schedule-free optimizers keep the
    point where gradients are taken (``y``) in the parameters in train mode, and the point they
    return (the average ``x``) in eval mode. Training losses are measured at ``y``, the test
    metrics at ``x``."""
    switch = getattr(optimizer, mode, None)
    if callable(switch):
        switch()


def _needs_closure(optimizer: torch.optim.Optimizer) -> bool:
    """LBFGS-style optimizers re-evaluate the loss and must be given the closure."""
    return isinstance(optimizer, torch.optim.LBFGS)


@dataclass
class GridPoint:
    lr: float
    score_mean: float
    score_std: float
    diverged_runs: int


def grid_search_lr(
    task: Task,
    make_optimizer: Callable[[list[nn.Parameter], float], torch.optim.Optimizer],
    lrs: Iterable[float] = PAPER_LR_GRID,
    steps: int = 50,
    seeds: Sequence[int] = (0, 1, 2),
    device: torch.device | str = "cpu",
    data: Dataset | None = None,
) -> tuple[float, list[GridPoint]]:
    """The learning rate with the lowest mean summed training loss over ``steps`` (the paper's
    criterion: the sum over the first 50 steps, 3 runs each). Divergent runs score +inf.

    Use seeds disjoint from the ones you evaluate on, so that tuning does not see the test runs.
    """
    data = data if data is not None else task.load_data(device)
    table: list[GridPoint] = []
    for lr in lrs:
        scores = []
        for seed in seeds:
            result = train_optimizee(
                task,
                lambda params, lr=lr: make_optimizer(params, lr),
                steps,
                seed,
                device,
                data=data,
                evaluate_test=False,
            )
            scores.append(math.inf if result.diverged else float(result.train_losses.sum()))
        finite = [s for s in scores if math.isfinite(s)]
        diverged = len(scores) - len(finite)
        mean = sum(scores) / len(scores) if not diverged else math.inf
        std = float(torch.tensor(finite).std()) if len(finite) > 1 else 0.0
        table.append(GridPoint(float(lr), mean, std, diverged))
    best = min(table, key=lambda p: p.score_mean)
    if not math.isfinite(best.score_mean):
        raise RuntimeError(f"every learning rate diverged on task {task.name!r}")
    return best.lr, table
