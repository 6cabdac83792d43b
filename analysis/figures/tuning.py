"""Baselines' learning rates: the paper's grid search, cached in the output folder.

The criterion is the paper's (lowest summed training loss over the first ``steps`` steps, on
seeds ``0, 1, …`` disjoint from the evaluation seeds); ``l2o.training.grid_search_lr`` runs it.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import baselines
from l2o.io import atomic_write
from l2o.tasks import Task
from l2o.training import PAPER_LR_GRID, grid_search_lr


@dataclass(frozen=True)
class Tuning:
    """One grid search: the learning rates tried, steps per run and runs per learning rate."""

    lr_grid: tuple[float, ...]
    steps: int
    seeds: int


#: The grid search of each size (``--tiny``, ``--quick``, the paper's settings).
TUNING = {
    "tiny": Tuning(lr_grid=(1e-2, 1e-1), steps=3, seeds=1),
    "quick": Tuning(lr_grid=PAPER_LR_GRID, steps=50, seeds=2),
    "full": Tuning(lr_grid=PAPER_LR_GRID, steps=50, seeds=3),
}


@dataclass
class LrCache:
    """Best learning rates by (task, dataset, optimizer, hyperparameters, grid), in a JSON file.

    Each entry is ``{"lr": …, "seconds": …}``: the grid search's own run time, so that a figure
    whose tuning was cached by an earlier (interrupted) invocation still reports the total work.
    An entry of an older cache is the bare learning rate (its time unknown, counted as 0).
    """

    path: Path
    entries: dict[str, dict | float] = field(default_factory=dict)
    loaded: bool = False

    def _entry(self, key: str) -> dict | float | None:
        if not self.loaded:
            if self.path.exists():
                self.entries.update(json.loads(self.path.read_text()))
            self.loaded = True
        return self.entries.get(key)

    def get(self, key: str) -> float | None:
        entry = self._entry(key)
        return entry["lr"] if isinstance(entry, dict) else entry

    def seconds(self, key: str) -> float:
        """The grid search's run time (0 for an entry without one)."""
        entry = self._entry(key)
        return float(entry.get("seconds", 0.0)) if isinstance(entry, dict) else 0.0

    def put(self, key: str, lr: float, seconds: float = 0.0) -> None:
        self.entries[key] = {"lr": lr, "seconds": seconds}
        atomic_write(self.path, json.dumps(self.entries, indent=1))


def cache_key(task: Task, name: str, tuning: Tuning, hp: dict) -> str:
    parts = (task.name, task.dataset_name, name, json.dumps(hp, sort_keys=True))
    return "|".join((*parts, str(tuning.lr_grid), str(tuning.steps), str(tuning.seeds)))


def tuned_lr(
    cache: LrCache, task: Task, name: str, tuning: Tuning, device: str = "cpu", **hp
) -> float:
    """Best learning rate of baseline ``name`` (with hyperparameters ``hp``) on ``task``."""
    key = cache_key(task, name, tuning, hp)
    lr = cache.get(key)
    if lr is None:
        start = time.perf_counter()
        lr, _ = grid_search_lr(
            task,
            lambda params, lr: baselines.create(name, params, lr=lr, **hp),
            lrs=tuning.lr_grid,
            steps=tuning.steps,
            seeds=tuple(range(tuning.seeds)),
            device=device,
        )
        cache.put(key, lr, time.perf_counter() - start)
    return float(lr)
