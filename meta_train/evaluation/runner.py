"""Run a suite: every case trains fresh optimizees through ``l2o.training.train_optimizee`` with
each learned optimizer and each tuned contender (the baselines, and the nominal term of each
learned optimizer that has one), the tuned ones at the lr tuned for each criterion on seeds
disjoint from the evaluation seeds."""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING

import torch

from l2o.data import DatasetNotFoundError
from l2o.tasks import get_task
from l2o.training import train_optimizee
from meta_train.evaluation.contenders import (
    DEFAULT_BASELINES,
    Factory,
    Learned,
    baseline_factory,
    check_baselines,
    nominal_contenders,
)
from meta_train.evaluation.criteria import DEFAULT_CRITERIA, check_criteria
from meta_train.evaluation.suites import Case, Suite, load_suite, resolve_cases
from meta_train.evaluation.tuning import DEFAULT_GRID, QUICK_GRID, LogGrid, Tuning, tune

if TYPE_CHECKING:
    from meta_train.evaluation.partial import CaseStore

FIRST_EVAL_SEED = 1000
FIRST_TUNE_SEED = 0
TIMING_REFERENCE = "adam"


@dataclass
class Runs:
    """One optimizer on one case over the evaluation seeds; losses are NaN after a divergence."""

    losses: torch.Tensor  # [seeds, steps]
    test_loss: list[float]
    test_acc: list[float]
    diverged: list[bool]
    step_time: float  # seconds per step, median over the seeds (NaN if none ran 2+ steps)


@dataclass
class BaselineResult:
    tunings: dict[str, Tuning]  # per criterion
    runs: dict[float, Runs]  # per tuned lr

    def for_criterion(self, criterion: str) -> tuple[float, Runs]:
        """The lr tuned for ``criterion`` and its evaluation runs; a tuning that diverged at
        every lr (``Tuning.diverged``) has NaN and no runs (zero seeds), and is reported so."""
        tuning = self.tunings[criterion]
        if tuning.diverged:
            return tuning.lr, Runs(torch.empty(0, 0), [], [], [], math.nan)
        return tuning.lr, self.runs[tuning.lr]


@dataclass
class CaseResult:
    case: Case
    learned: dict[str, Runs]
    baselines: dict[str, BaselineResult]
    reference_step_time: float  # Adam's seconds per step on this case


@dataclass
class Evaluation:
    suite: str
    quick: bool
    criteria: list[str]
    baselines: list[str]
    seeds: list[int]
    tune_seeds: list[int]
    grid: LogGrid
    learned: dict[str, str]  # name -> checkpoint path
    cases: list[CaseResult] = field(default_factory=list)
    skipped: list[dict[str, str]] = field(default_factory=list)
    wall_s: float = 0.0
    #: nominal contender -> the learned optimizers it is the nominal term of (the first builds it)
    nominals: dict[str, list[str]] = field(default_factory=dict)

    def nominal_of(self) -> dict[str, str]:
        """Learned optimizer name -> its nominal contender."""
        return {lrn: name for name, names in self.nominals.items() for lrn in names}


def disjoint_seeds(count: int, tune_count: int, first: int, first_tune: int) -> tuple[list, list]:
    seeds = list(range(first, first + count))
    tune_seeds = list(range(first_tune, first_tune + tune_count))
    overlap = sorted(set(seeds) & set(tune_seeds))
    if overlap:
        raise ValueError(
            f"evaluation and tuning seeds overlap at {overlap}: tuning must not see them"
        )
    return seeds, tune_seeds


def train_runs(task, factory: Factory, steps: int, seeds: Sequence[int], data) -> Runs:
    """``factory``'s optimizer trained on fresh optimizees of ``task``, one per seed."""
    losses, test_loss, test_acc, diverged, times = [], [], [], [], []
    for seed in seeds:
        marks: list[float] = []

        def clock(step, *_ignored, marks=marks):
            if step == 0 or step == steps - 1:
                marks.append(time.perf_counter())

        result = train_optimizee(task, factory, steps, seed, data=data, callback=clock)
        losses.append(result.train_losses)
        test_loss.append(result.test_loss)
        test_acc.append(result.test_acc)
        diverged.append(result.diverged)
        if len(marks) == 2:
            times.append((marks[1] - marks[0]) / (steps - 1))
    step_time = statistics.median(times) if times else float("nan")
    return Runs(torch.stack(losses), test_loss, test_acc, diverged, step_time)


def run_suite(
    learned: Sequence[Learned],
    suite: Suite | str,
    *,
    quick: bool = False,
    criteria: Sequence[str] = DEFAULT_CRITERIA,
    baselines: Sequence[str] = DEFAULT_BASELINES,
    grid: LogGrid | None = None,
    seeds: int | None = None,
    tune_seeds: int | None = None,
    first_seed: int = FIRST_EVAL_SEED,
    first_tune_seed: int = FIRST_TUNE_SEED,
    log: Callable[[str], None] = print,
    nominal: bool = True,
    progress: CaseStore | None = None,
    time_budget_s: float | None = None,
    skip_cases: Sequence[int] = (),
) -> Evaluation:
    """Evaluate ``learned`` optimizers on every case of ``suite`` against tuned ``baselines``
    and (``nominal``) against their own nominal terms, tuned the same way.

    ``grid`` is where each tuning starts (default: 1e-4…10, or 1e-3…1 when ``quick``); it widens
    by itself wherever a best lr lands on its edge. ``progress`` (``partial.CaseStore``): each
    finished case is saved there at once, and the cases a previous run with the same inputs
    finished are read from it instead of run. Every input is checked before the first case.
    ``time_budget_s``: no new case starts once that much time has passed; the cases left are
    listed in ``skipped`` (the same command with ``progress`` continues with them).
    ``skip_cases``: 1-based numbers of cases not to run (listed in ``skipped``; a finished one is
    still read back), for a case too costly for the time at hand; the saved cases stay valid."""
    start = time.perf_counter()
    grid = grid if grid is not None else (QUICK_GRID if quick else DEFAULT_GRID)
    suite = load_suite(suite) if isinstance(suite, str) else suite
    criteria = check_criteria(list(criteria))
    baselines = check_baselines(list(baselines))
    if not learned and not baselines:
        raise ValueError("nothing to evaluate: no learned optimizer and no baseline")
    names = [lrn.name for lrn in learned]
    if len(set(names)) != len(names):
        raise ValueError(f"learned optimizers need distinct names, got {names}")
    seed_list, tune_list = suite_seeds(suite, quick, seeds, tune_seeds, first_seed, first_tune_seed)
    trained = {(lrn.task, lrn.dataset, lrn.horizon, lrn.pipeline) for lrn in learned}
    if len(trained) > 1 and any(c.task == "trained" or c.horizon for c in suite.cases):
        raise ValueError(
            f"suite {suite.name!r} refers to the meta-training task and horizon, which differ "
            f"among the learned optimizers: {sorted(map(str, trained))}"
        )
    cases = resolve_cases(suite, quick, *(next(iter(trained)) if trained else (None,) * 4))
    if not cases:
        raise ValueError(
            f"suite {suite.name!r} has no case for --quick: every case is marked quick: false"
        )
    evaluation = Evaluation(
        suite.name,
        quick,
        criteria,
        baselines,
        seed_list,
        tune_list,
        grid,
        {lrn.name: lrn.source for lrn in learned},
        nominals=nominal_contenders(learned) if nominal else {},
    )
    if progress is not None and progress.open(evaluation, cases, learned):
        log(f"continuing: {len(progress.cases)} finished case(s) read from {progress.path}")
    if time_budget_s is not None and not time_budget_s > 0:
        raise ValueError(f"the time budget must be a positive number of seconds: {time_budget_s}")
    outside = sorted(set(skip_cases) - set(range(1, len(cases) + 1)))
    if outside:
        raise ValueError(f"--skip-cases {outside}: the suite has cases 1 to {len(cases)}")
    for i, case in enumerate(cases):
        finished = progress.finished(case) if progress is not None else None
        if finished is not None:
            log(f"[{i + 1}/{len(cases)}] {case.id}: finished before, read back")
            evaluation.cases.append(finished)
            continue
        if i + 1 in skip_cases:
            log(f"[{i + 1}/{len(cases)}] {case.id}: not run (--skip-cases)")
            evaluation.skipped.append({"case": case.id, "reason": "not run: --skip-cases"})
            continue
        if time_budget_s is not None and time.perf_counter() - start > time_budget_s:
            note = f"not run: the time budget of {time_budget_s:.0f}s was spent"
            log(f"[{i + 1}/{len(cases)}] {case.id}: {note}")
            evaluation.skipped.append({"case": case.id, "reason": note})
            continue
        task = get_task(case.task, dataset=case.dataset, variation=case.variation)
        try:
            data = task.load_data("cpu")
        except DatasetNotFoundError as exc:
            note = f"skipped {case.id}: data not present ({str(exc).splitlines()[0]})"
            log(note)
            evaluation.skipped.append({"case": case.id, "reason": str(exc)})
            continue
        log(f"[{i + 1}/{len(cases)}] {case.id}: {len(seed_list)} seeds")
        result = _run_case(case, task, data, learned, evaluation, log)
        evaluation.cases.append(result)
        if progress is not None:
            progress.save(result)
    evaluation.wall_s = time.perf_counter() - start
    return evaluation


def suite_seeds(
    suite: Suite,
    quick: bool,
    seeds: int | None = None,
    tune_seeds: int | None = None,
    first_seed: int = FIRST_EVAL_SEED,
    first_tune_seed: int = FIRST_TUNE_SEED,
) -> tuple[list[int], list[int]]:
    """The evaluation and tuning seeds of a run of ``suite``: the given counts, else the suite's
    (quick) defaults; disjoint."""
    return disjoint_seeds(
        _seed_count("seeds", seeds, suite.quick_seeds if quick else suite.seeds),
        _seed_count(
            "tune_seeds", tune_seeds, suite.quick_tune_seeds if quick else suite.tune_seeds
        ),
        first_seed,
        first_tune_seed,
    )


def _seed_count(key: str, count: int | None, default: int) -> int:
    """``count``, or the suite's ``default`` where it is None (0 is an error, not "unset")."""
    if count is None:
        return default
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise ValueError(f"{key} must be a positive number of seeds, got {count!r}")
    return count


def _run_case(case, task, data, learned, ev: Evaluation, log) -> CaseResult:
    steps = case.steps
    learned_runs = {}
    for lrn in learned:
        t0 = time.perf_counter()
        with torch.random.fork_rng(devices=[]):
            learned_runs[lrn.name] = train_runs(task, lrn.factory(steps), steps, ev.seeds, data)
        log(f"  {lrn.name}: {time.perf_counter() - t0:.1f}s")
    results = {}
    by_name = {lrn.name: lrn for lrn in learned}
    tuned = [(name, partial(baseline_factory, name), ()) for name in ev.baselines]
    tuned += [
        (name, by_name[of[0]].nominal_factory, (by_name[of[0]].nominal_lr,))
        for name, of in ev.nominals.items()
    ]
    for name, make, extra in tuned:
        t0 = time.perf_counter()

        def run(lr: float, seed: int, make=make) -> torch.Tensor:
            return train_optimizee(
                task, make(lr, steps), steps, seed, data=data, evaluate_test=False
            ).train_losses

        tunings = tune(run, ev.criteria, ev.tune_seeds, ev.grid, extra)
        runs = {
            lr: train_runs(task, make(lr, steps), steps, ev.seeds, data)
            for lr in dict.fromkeys(t.lr for t in tunings.values() if not t.diverged)
        }
        results[name] = BaselineResult(tunings, runs)
        chosen = ", ".join(
            f"{c} {'diverged' if t.diverged else f'{t.lr:g}'}" for c, t in tunings.items()
        )
        log(f"  {name}: lr {chosen} ({time.perf_counter() - t0:.1f}s)")
        for c, t in tunings.items():
            for note in t.notes:
                log(f"    {name} [{c}]: {note}")
    return CaseResult(case, learned_runs, results, _reference_time(task, data, steps, results))


def _reference_time(task, data, steps: int, results: dict[str, BaselineResult]) -> float:
    """Adam's seconds per step: from its evaluation runs, else from one timing run."""
    if TIMING_REFERENCE in results and results[TIMING_REFERENCE].runs:  # unless it diverged
        return statistics.median(r.step_time for r in results[TIMING_REFERENCE].runs.values())
    factory = baseline_factory(TIMING_REFERENCE, 1e-3, steps)
    return train_runs(task, factory, min(steps, 200), [FIRST_TUNE_SEED], data).step_time
