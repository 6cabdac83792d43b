"""What every figure shares: the output folder, the optimizers it compares, recorded runs."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

import baselines
from analysis.figures.tuning import LrCache, Tuning, cache_key, tuned_lr
from analysis.recording import (
    FORMAT_VERSION,
    Recording,
    RecordingPlan,
    load_recording,
    record_run,
    recorded_result,
    reusable_recording,
)
from l2o.optimizers import LearnedOptimizer
from l2o.optimizers.checkpoint_io import load_learned_optimizer
from l2o.optimizers.wrapper import available_pretrained, pretrained_path, takes_total_steps
from l2o.tasks import Task, get_task
from l2o.training import TrainResult

EVAL_SEED0 = 100  # evaluation seeds start here; the LR grid search uses seeds 0, 1, 2, ...
LOPT = "L2O"  # the first --lopt's display name: the paper's learned optimizer, in the verdicts


class SettingsMismatch(ValueError):
    """An existing result was made with other settings than the ones asked for."""


@dataclass(frozen=True)
class OptimizerFactory:
    """Makes the optimizer of one run; ``identity`` (JSON-able) is what determines it, stored in
    each recording so that a finished one is reused only for the same optimizer."""

    make: Callable[[list[torch.nn.Parameter]], torch.optim.Optimizer]
    identity: dict

    def __call__(self, params: list[torch.nn.Parameter]) -> torch.optim.Optimizer:
        return self.make(params)


@dataclass
class Context:
    """Where a figure writes, which learned optimizers it compares, on which device.

    ``size`` (tiny, quick, full) is recorded in each summary as ``mode``; ``lopt`` is the
    ``--lopt`` value as given and ``lopt_files`` the checkpoints it names by display name
    (``resolve_lopts``; the first is ``"L2O"``). ``compute_seconds`` adds up the work the
    current figure's numbers rest on (runs, tuning, meta-training), reused results included;
    ``start_figure`` resets it and ``data_used``, the data each task's runs trained on (what
    the summary and the title report: a task's own ``mnist`` may have fallen back to ``mnist5k``).
    """

    size: str
    out: Path
    lopt: str | None = None
    lopt_files: dict[str, Path] = field(default_factory=dict)
    device: str = "cpu"
    lr_cache: LrCache = field(init=False)
    compute_seconds: float = field(init=False, default=0.0)
    #: task name → the dataset its runs actually trained on (full MNIST may fall back to mnist5k)
    data_used: dict[str, str] = field(init=False, default_factory=dict)
    _tunings_counted: set = field(init=False, default_factory=set)

    def __post_init__(self) -> None:
        self.lr_cache = LrCache(self.out / "lr_cache.json")

    def path(self, name: str) -> Path:
        """``out/name``, creating the output folder (and ``name``'s folders)."""
        path = self.out / name
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    def start_figure(self) -> None:
        self.compute_seconds = 0.0
        self.data_used = {}
        self._tunings_counted = set()

    def tuned_lr(self, task: Task, name: str, tuning: Tuning, **hp) -> float:
        """``tuning.tuned_lr`` through the cache, its grid search's time counted once per
        figure (a search shared by two figures counts in both)."""
        lr = tuned_lr(self.lr_cache, task, name, tuning, self.device, **hp)
        key = cache_key(task, name, tuning, hp)
        if key not in self._tunings_counted:
            self._tunings_counted.add(key)
            self.compute_seconds += self.lr_cache.seconds(key)
        return lr


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


def lopt_display_name(spec: str) -> str:
    """A further ``--lopt``'s name in the figures: the pretrained name, else the file's stem, or
    its run folder's name for a run's ``best.pt`` / ``last.pt``."""
    if not os.path.exists(spec) and spec in available_pretrained():
        return spec
    path = Path(spec)
    return path.parent.name if path.stem in ("best", "last") and path.parent.name else path.stem


def resolve_lopts(specs: str) -> dict[str, Path]:
    """``--lopt``'s comma-separated learned optimizers by display name: the first is ``"L2O"``
    (the paper's, which the verdicts test), the others ``lopt_display_name``; each checked by
    ``resolve_lopt``."""
    parts = [p.strip() for p in specs.split(",")]
    if any(not p for p in parts):
        raise ValueError(f"--lopt {specs}: an empty name in the comma-separated list")
    out: dict[str, Path] = {}
    for i, spec in enumerate(parts):
        name = LOPT if i == 0 else lopt_display_name(spec)
        if name in out or name in DISPLAY.values():
            raise ValueError(f"--lopt {specs}: two optimizers would be shown as {name!r}")
        out[name] = resolve_lopt(spec)
    return out


def task_for(name: str, dataset: str | None) -> Task:
    """Task ``name`` on ``dataset`` (None: the task's own dataset)."""
    return get_task(name, dataset=dataset)


def eval_seeds(count: int) -> list[int]:
    return [EVAL_SEED0 + i for i in range(count)]


def baseline_factory(name: str, lr: float, **hp) -> OptimizerFactory:
    return OptimizerFactory(
        lambda params: baselines.create(name, params, lr=lr, **hp),
        {"baseline": name, "lr": lr, **hp},
    )


def file_sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def lopt_factory(path: str | os.PathLike, total_steps: int) -> OptimizerFactory:
    """A learned optimizer loaded from the checkpoint at ``path`` for each run of
    ``total_steps`` steps (identified by the checkpoint's SHA-256, so a retrained one is recorded
    again). A network with training-progress inputs (``general``) is told the run's length, as
    the evaluation does: left at its default it would decay its step to zero at step 200."""
    net, _ = load_learned_optimizer(path)
    horizon = total_steps if takes_total_steps(net) else None  # None: recorded for any length
    identity = {"learned_optimizer_sha256": file_sha256(path)}
    if horizon is not None:
        identity["total_steps"] = horizon
    return OptimizerFactory(
        lambda params: LearnedOptimizer(params, net, total_steps=horizon), identity
    )


DISPLAY = {"sgd": "SGD", "adam": "Adam", "lion": "Lion"}


def optimizers_for(
    ctx: Context,
    task: Task,
    steps: int,
    tuning: Tuning,
    names: Sequence[str],
    optional: Sequence[str] = (),
) -> dict[str, OptimizerFactory]:
    """The learned optimizers (if any, told the runs' ``steps``) and each baseline at its tuned
    learning rate. An
    ``optional`` baseline whose every grid learning rate diverges (or that cannot train this
    task) is left out with a warning instead of stopping the figure."""
    out: dict[str, OptimizerFactory] = {
        n: lopt_factory(p, steps) for n, p in ctx.lopt_files.items()
    }

    def tuned(name: str) -> OptimizerFactory:
        return baseline_factory(name, ctx.tuned_lr(task, name, tuning))

    for name in names:
        out[DISPLAY.get(name, name)] = tuned(name)
    for name in optional:
        try:
            out[DISPLAY.get(name, name)] = tuned(name)
        except (RuntimeError, ValueError) as exc:
            warnings.warn(f"{name} left out on {task.name}: {exc}", stacklevel=2)
    return out


def run_settings(
    task: Task, factory: OptimizerFactory, steps: int, plan: RecordingPlan, seed: int
) -> str:
    """What determines a recorded run, as canonical JSON (stored in its meta, compared on
    reuse); the plan's ``chunk_mb`` only changes how the file is framed."""
    plan_fields = {k: v for k, v in dataclasses.asdict(plan).items() if k != "chunk_mb"}
    settings = {
        "format_version": FORMAT_VERSION,
        "optimizer": factory.identity,
        "task": task.name,
        "dataset": task.dataset_name,
        "steps": int(steps),
        "seed": int(seed),
        "plan": plan_fields,
    }
    return json.dumps(settings, sort_keys=True, default=repr)


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
    """Train and record one run to ``out/recordings/<rel_path>``; returns it read back. A
    finished recording made with the same settings (``run_settings``) is reused instead."""
    path = ctx.path(f"recordings/{rel_path}")
    settings = run_settings(task, factory, steps, plan, seed)
    rec = reusable_recording(path, settings)
    if rec is None:
        meta = {**(meta or {}), "settings": settings}
        result, path = record_run(
            task, factory, steps, path, plan, seed=seed, device=ctx.device, meta=meta
        )
        rec = load_recording(path)
    else:
        result = recorded_result(rec)
    ctx.compute_seconds += float(rec.summary["run_seconds"])
    if task.name not in ctx.data_used:  # once per task and figure, not once per run
        ctx.data_used[task.name] = task.load_data(ctx.device).name
    return rec, result


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
