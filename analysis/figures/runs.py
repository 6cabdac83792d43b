"""What every figure shares: the output folder, the optimizers it compares, recorded runs."""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

import baselines
from analysis.figures.tuning import LrCache, Tuning, tuned_lr
from analysis.recording import Recording, RecordingPlan, load_recording, record_run
from l2o.optimizers import LearnedOptimizer
from l2o.optimizers.checkpoint_io import load_learned_optimizer
from l2o.optimizers.wrapper import available_pretrained, pretrained_path
from l2o.tasks import Task, get_task
from l2o.training import TrainResult

EVAL_SEED0 = 100  # evaluation seeds start here; the LR grid search uses seeds 0, 1, 2, ...

OptimizerFactory = Callable[[list[torch.nn.Parameter]], torch.optim.Optimizer]


@dataclass
class Context:
    """Where a figure writes, which learned optimizer it compares, on which device.

    ``size`` (tiny, quick, full) is recorded in each summary as ``mode``; ``lopt`` is the
    ``--lopt`` value as given and ``lopt_file`` the checkpoint it names (``resolve_lopt``).
    """

    size: str
    out: Path
    lopt: str | None = None
    lopt_file: Path | None = None
    device: str = "cpu"
    lr_cache: LrCache = field(init=False)

    def __post_init__(self) -> None:
        self.lr_cache = LrCache(self.out / "lr_cache.json")

    def path(self, name: str) -> Path:
        """``out/name``, creating the output folder (and ``name``'s folders)."""
        path = self.out / name
        path.parent.mkdir(parents=True, exist_ok=True)
        return path


def resolve_lopt(spec: str) -> Path:
    """The checkpoint ``--lopt`` names (a file, else a pretrained name), loaded once to check it.

    Raises ``ValueError`` with one line naming the problem, so that a typo fails before any
    baseline is tuned or run.
    """
    if os.path.exists(spec):
        path = Path(spec)
    elif spec in available_pretrained():
        path = pretrained_path(spec)
    else:
        raise ValueError(
            f"--lopt {spec}: no such checkpoint file, nor a pretrained learned optimizer "
            f"(available: {', '.join(available_pretrained())})"
        )
    try:
        load_learned_optimizer(path)
    except (OSError, ValueError) as exc:
        raise ValueError(f"--lopt {spec}: {exc}") from exc
    return path


def task_for(name: str, dataset: str | None) -> Task:
    """Task ``name`` on ``dataset`` (None: the task's own dataset)."""
    return get_task(name, dataset=dataset)


def eval_seeds(count: int) -> list[int]:
    return [EVAL_SEED0 + i for i in range(count)]


def baseline_factory(name: str, lr: float, **hp) -> OptimizerFactory:
    return lambda params: baselines.create(name, params, lr=lr, **hp)


def lopt_factory(path: str | os.PathLike) -> OptimizerFactory:
    """A learned optimizer loaded from the checkpoint at ``path`` for each run."""
    return lambda params: LearnedOptimizer(params, path)


DISPLAY = {"sgd": "SGD", "adam": "Adam", "lion": "Lion"}


def optimizers_for(
    ctx: Context, task: Task, tuning: Tuning, names: Sequence[str], optional: Sequence[str] = ()
) -> dict[str, OptimizerFactory]:
    """The L2O (if any) and each baseline at its tuned learning rate. An ``optional`` baseline
    whose every grid learning rate diverges (or that cannot train this task) is left out with a
    warning instead of stopping the figure."""
    out: dict[str, OptimizerFactory] = {}
    if ctx.lopt_file is not None:
        out["L2O"] = lopt_factory(ctx.lopt_file)

    def tuned(name: str) -> OptimizerFactory:
        return baseline_factory(name, tuned_lr(ctx.lr_cache, task, name, tuning, ctx.device))

    for name in names:
        out[DISPLAY.get(name, name)] = tuned(name)
    for name in optional:
        try:
            out[DISPLAY.get(name, name)] = tuned(name)
        except (RuntimeError, ValueError) as exc:
            warnings.warn(f"{name} left out on {task.name}: {exc}", stacklevel=2)
    return out


def recorded_run(
    ctx: Context,
    rel_path: str,
    task: Task,
    factory: OptimizerFactory,
    steps: int,
    plan: RecordingPlan,
    seed: int,
    meta: dict | None = None,
) -> tuple[Recording, TrainResult]:
    """Train and record one run to ``out/recordings/<rel_path>``; returns it read back."""
    path = ctx.path(f"recordings/{rel_path}")
    result, path = record_run(
        task, factory, steps, path, plan, seed=seed, device=ctx.device, meta=meta
    )
    return load_recording(path), result


def symmetry_run(
    ctx: Context, fig: str, task: Task, name: str, factory: OptimizerFactory, seed: int, steps: int
) -> tuple[Recording, TrainResult]:
    """A run recording the symmetry-constraint deviations at every step (figures 4, 5, 7)."""
    return recorded_run(
        ctx,
        f"{fig}/{task.name}/{name}-seed{seed}.rec",
        task,
        factory,
        steps,
        RecordingPlan(symmetry=True),
        seed,
        meta={"opt": name},
    )
