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

from l2o.seeding import derive_seed


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
        """``200`` or ``{"min": 100, "max": 2000}``: integers (a count of steps is never
        rounded silently)."""
        if isinstance(value, dict):
            unknown = set(value) - {"min", "max"}
            if unknown or not {"min", "max"} <= set(value):
                raise ValueError(f"a horizon range is {{min: int, max: int}}, got {value!r}")
            for key in ("min", "max"):
                if isinstance(value[key], bool) or not isinstance(value[key], int):
                    raise ValueError(
                        f"a horizon range is {{min: int, max: int}}: {key} must be an integer "
                        f"number of steps, got {value[key]!r}"
                    )
            return cls(value["min"], value["max"])
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


def task_seed(seed: int, task: int, run: int) -> int:
    """The optimizee seed of run ``run`` (1-based) of meta-batch slot ``task``."""
    return derive_seed(seed, "meta-train-task", task, run)


class TaskRotation:
    """The trainer's side of desynchronized tasks: the clocks, and replacing the optimizees (and
    their minibatch samplers) of the tasks whose run restarts, in place of the others.

    Task ``b``'s run ``r`` trains the optimizee of ``task_seed(seed, b, r)`` on the samplers of
    ``data_seed`` of it; both follow from the clocks, so ``state_dict`` is the clocks' state.

    ``slots``: the tasks whose optimizees this process holds (under torchrun, its slice of the
    meta-batch; default all). The clocks run for every task, identically on every rank (a few
    integers and one generator whose draws interleave the tasks), so the horizons do not depend
    on the number of ranks."""

    def __init__(self, clocks: TaskClocks, seed: int, slots: list[int] | None = None) -> None:
        self.clocks, self.seed = clocks, seed
        self.slots = list(range(len(clocks.steps))) if slots is None else list(slots)

    def seeds(self) -> list[int]:
        """Every task's optimizee seed (its current run's), held here or not."""
        return [task_seed(self.seed, b, r) for b, r in enumerate(self.clocks.runs)]

    def own(self, values: list) -> list:
        """The entries of ``values`` (one per task) of the tasks held here."""
        return [values[b] for b in self.slots]

    def samplers(self, data, batch_size: int) -> list:
        from l2o.training import data_seed

        return [data.sampler(batch_size, data_seed(s)) for s in self.own(self.seeds())]

    def begin(self, task, lopt, inner, samplers: list, data, batch_size: int):
        """Start the runs that are due (all of them the first time, ``inner`` None); returns
        ``(inner, samplers, restart [T] bool)``."""
        from l2o.training import data_seed
        from meta_train.inner_loop.unroll import init_inner_state

        restart = self.own(self.clocks.begin())
        seeds, horizons = self.own(self.seeds()), self.own(self.clocks.horizons)
        if inner is None:
            fresh = init_inner_state(task, lopt, seeds, inner_device(lopt))
            fresh = with_horizons(fresh, horizons)
            return fresh, self.samplers(data, batch_size), torch.tensor(restart)
        if not any(restart):
            return inner, samplers, torch.tensor(restart)
        rows = [b for b, due in enumerate(restart) if due]
        fresh = init_inner_state(task, lopt, [seeds[b] for b in rows], inner.params.device)
        new_inner = with_horizons(replace_rows(lopt, inner, rows, fresh, seeds), horizons)
        samplers = list(samplers)
        for b in rows:
            samplers[b] = data.sampler(batch_size, data_seed(seeds[b]))
        return new_inner, samplers, torch.tensor(restart)

    def advance(self) -> None:
        self.clocks.advance()

    def state_dict(self) -> dict[str, Any]:
        return self.clocks.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.clocks.load_state_dict(state)


def replace_rows(lopt, inner, rows: list[int], fresh, seeds):
    """``inner`` with the optimizees (and optimizer state) of ``rows`` replaced by the rows of
    ``fresh`` (an ``InnerState`` of ``len(rows)`` optimizees); ``seeds``: every row's seed."""
    from meta_train.estimators.particles import particle_dims
    from meta_train.inner_loop.unroll import InnerState

    index = torch.tensor(rows, device=inner.params.device)
    pdims = particle_dims(lopt, inner.params.shape[1], inner.spec, inner.params.device)
    opt_state = {}
    for key, value in inner.opt_state.items():
        dim = pdims[key]
        opt_state[key] = (
            value if dim is None else value.index_copy(dim, index, fresh.opt_state[key])
        )
    return InnerState(
        inner.params.index_copy(0, index, fresh.params),
        {k: v.index_copy(0, index, fresh.buffers[k]) for k, v in inner.buffers.items()},
        opt_state,
        inner.step,
        tuple(seeds),
        inner.spec,
    )


def with_horizons(inner, horizons: list[int]):
    """``inner`` with its optimizer told each task's run length: the ``horizon`` entry of the
    optimizer state, for optimizers with training-progress inputs (``general``), which would
    otherwise count every run against their configured ``total_steps``. Others: as is."""
    from meta_train.inner_loop.unroll import InnerState

    if "horizon" not in inner.opt_state:
        return inner
    old = inner.opt_state["horizon"]
    told = torch.tensor(horizons, dtype=old.dtype, device=old.device).reshape(old.shape)
    opt_state = {**inner.opt_state, "horizon": told}
    return InnerState(inner.params, inner.buffers, opt_state, inner.step, inner.seeds, inner.spec)


def inner_device(lopt) -> torch.device:
    return next(lopt.parameters()).device


def make_rotation(cfg, slots: list[int] | None = None) -> TaskRotation:
    """The trainer's ``TaskRotation`` for a ``MetaTrainConfig`` with per-task runs (holding the
    optimizees of ``slots``, default all)."""
    s = cfg.schedule
    clocks = TaskClocks(
        s.meta_batch,
        cfg.horizon_schedule,
        cfg.unroll.length,
        derive_seed(cfg.seed, "task-clocks") % 2**63,
        s.desync,
    )
    return TaskRotation(clocks, cfg.seed, slots)
