"""Truncation schedules and desynchronized tasks.

A task's *run* trains one optimizee from initialization for ``horizon`` inner steps, in
truncations of ``unroll`` steps. ``HorizonSchedule`` draws each run's horizon: a fixed number or
log-uniform in ``[min, max]``, rounded up to whole truncations (restarts then fall on truncation
boundaries, where the estimators can reset a task's particles and accumulators cleanly).

``TaskClocks`` keeps, for each task of a meta-batch, its own step counter, horizon and run
count. With ``desync``, each task's FIRST run is cut short by a random offset (a random number
of whole truncations below its horizon), so that from then on the tasks restart at different
times and a meta-batch mixes early- and late-training states instead of moving in lockstep. The
counter always counts the steps since the task's optimizee was initialized, which is what the
optimizer's time features see (its state's ``t``, per optimizee). Every draw comes from the
clocks' own seeded generator, saved in ``state_dict``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch


@dataclass(frozen=True)
class HorizonSchedule:
    """Run horizons in ``[min, max]`` inner steps, log-uniform (``min == max``: fixed)."""

    min: int
    max: int

    def __post_init__(self) -> None:
        if not (0 < self.min <= self.max):
            raise ValueError(f"horizon range must have 0 < min <= max, got {self.min}..{self.max}")

    @classmethod
    def parse(cls, value: Any) -> HorizonSchedule:
        """``200`` or ``{"min": 100, "max": 2000}``."""
        if isinstance(value, dict):
            unknown = set(value) - {"min", "max"}
            if unknown or not {"min", "max"} <= set(value):
                raise ValueError(f"a horizon range is {{min: int, max: int}}, got {value!r}")
            return cls(int(value["min"]), int(value["max"]))
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"horizon must be an int or {{min, max}}, got {value!r}")
        return cls(value, value)

    def sample(self, generator: torch.Generator, unroll: int) -> int:
        """One run's horizon, a multiple of ``unroll`` (at least one truncation)."""
        if self.min == self.max:
            h = float(self.min)
        else:
            u = float(torch.rand((), generator=generator, dtype=torch.float64))
            h = math.exp(math.log(self.min) + u * (math.log(self.max) - math.log(self.min)))
        return max(unroll, math.ceil(round(h, 6) / unroll) * unroll)


class TaskClocks:
    """Per-task step counters, horizons and run counts (see the module docstring).

    Use: ``restart = clocks.begin()`` before a truncation (the tasks whose run starts now:
    re-initialize those optimizees and reset their estimator state), then
    ``clocks.advance()`` after it."""

    def __init__(
        self, num_tasks: int, schedule: HorizonSchedule, unroll: int, seed: int, desync: bool
    ) -> None:
        if num_tasks <= 0 or unroll <= 0:
            raise ValueError("num_tasks and unroll must be positive")
        self.schedule, self.unroll, self.desync = schedule, unroll, desync
        self.generator = torch.Generator().manual_seed(int(seed))
        self.steps = [0] * num_tasks
        self.horizons = [0] * num_tasks  # 0: not started
        self.runs = [0] * num_tasks  # runs started so far (the current one included)

    def begin(self) -> list[bool]:
        """Start a new run for every task whose run ended (or that never started)."""
        restart = []
        for i in range(len(self.steps)):
            due = self.horizons[i] == 0 or self.steps[i] >= self.horizons[i]
            if due:
                horizon = self.schedule.sample(self.generator, self.unroll)
                if self.desync and self.runs[i] == 0:
                    whole = horizon // self.unroll
                    cut = int(torch.randint(0, whole, (), generator=self.generator))
                    horizon -= cut * self.unroll
                self.horizons[i], self.steps[i] = horizon, 0
                self.runs[i] += 1
            restart.append(due)
        return restart

    def advance(self) -> None:
        """One truncation done by every task."""
        self.steps = [s + self.unroll for s in self.steps]

    def state_dict(self) -> dict[str, Any]:
        return {
            "generator": self.generator.get_state(),
            "steps": torch.tensor(self.steps, dtype=torch.long),
            "horizons": torch.tensor(self.horizons, dtype=torch.long),
            "runs": torch.tensor(self.runs, dtype=torch.long),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if len(state["steps"]) != len(self.steps):
            raise ValueError(
                f"clock state has {len(state['steps'])} tasks, these clocks {len(self.steps)}"
            )
        self.generator.set_state(state["generator"])
        self.steps = [int(s) for s in state["steps"]]
        self.horizons = [int(h) for h in state["horizons"]]
        self.runs = [int(r) for r in state["runs"]]
