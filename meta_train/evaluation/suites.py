"""Evaluation suites: YAML lists of (task, dataset, steps) cases in ``configs/eval/``.

A case names a registry task, or ``trained`` for the task the learned optimizer was meta-trained
on (from its checkpoint); its length is ``steps`` or ``horizon`` (a multiple of that optimizer's
meta-training horizon). ``quick`` overrides seeds for ``--quick``, and a case with
``quick: false`` is left out of a quick run. A case may vary its task's pipeline with the
``l2o.tasks.TaskVariation`` keys (``input``, ``input_scale``, ``init_scale``, ``train_size``,
``batch_size``, ``replacement``, ``width``, ``depth``), e.g. ``{task: mnist_mlp_sigmoid,
dataset: mnist5k, steps: 1000, input: raw, init_scale: 2, batch_size: 32}``.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from l2o.data import available_datasets
from l2o.tasks import (
    VARIATION_KEYS,
    VARIATION_TYPES,
    TaskVariation,
    available_tasks,
    get_task,
)
from meta_train.configuration.engine import coerce, load_yaml

TRAINED = "trained"
_CASE_KEYS = {"task", "dataset", "steps", "horizon", "quick", *VARIATION_KEYS}
_SUITE_KEYS = {"name", "description", "role", "seeds", "tune_seeds", "quick", "cases"}
#: ``design``: anything may be chosen on it; ``heldout``: run once per shipped recipe to report,
#: never to choose, every run logged (``heldout_log``); ``history``: kept to compare with earlier
#: reports (suites written before the split: their cases were looked at while designing)
ROLES = ("design", "heldout", "history")
_QUICK_KEYS = {"seeds", "tune_seeds"}


def suites_dir() -> Path:
    """``configs/eval`` of the checkout, or the copy shipped inside the wheel."""
    here = Path(__file__).resolve().parents[1]
    for candidate in (here.parent / "configs" / "eval", here / "_configs" / "eval"):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"no configs/eval folder next to {here}")


def available_suites() -> list[str]:
    return sorted(p.stem for p in suites_dir().glob("*.yaml"))


@dataclass(frozen=True)
class CaseSpec:
    task: str  # a registry name or TRAINED
    dataset: str | None
    steps: int | None
    horizon: float | None
    quick: bool = True
    variation: TaskVariation = field(default_factory=TaskVariation)  # the case's pipeline
    variation_keys: tuple[str, ...] = ()  # the keys of it the case gives


@dataclass(frozen=True)
class Suite:
    name: str
    description: str
    seeds: int
    tune_seeds: int
    quick_seeds: int
    quick_tune_seeds: int
    cases: tuple[CaseSpec, ...]
    role: str = "history"
    source: str | None = None  # the YAML file it was read from (a held-out run's log sits beside)

    @property
    def heldout(self) -> bool:
        return self.role == "heldout"


@dataclass(frozen=True)
class Case:
    """A concrete case: a registry task on a dataset for a number of steps, with its pipeline's
    variation (a mapping, as ``dataclasses.asdict`` writes it, is read back into one)."""

    task: str
    dataset: str
    steps: int
    variation: TaskVariation = field(default_factory=TaskVariation)

    def __post_init__(self) -> None:
        if not isinstance(self.variation, TaskVariation):
            object.__setattr__(self, "variation", TaskVariation(**self.variation))

    @property
    def batch_size(self) -> int | None:
        """None: the task's own."""
        return self.variation.batch_size

    @property
    def id(self) -> str:
        """``task@dataset:steps`` and the variation's changes (``,b32,input=raw,...``)."""
        return f"{self.task}@{self.dataset}:{self.steps}{self.variation.id}"


def load_suite(name_or_path: str) -> Suite:
    """A suite by name (``configs/eval/NAME.yaml``) or path, validated against the registries;
    read as configs are (``config_engine.load_yaml``: a key given twice, malformed YAML or a
    folder is a one-line error)."""
    path = Path(name_or_path)
    if path.is_dir():
        raise ValueError(f"suite {name_or_path!r} is a folder; give a YAML file or a suite name")
    if not path.suffix:
        path = suites_dir() / f"{name_or_path}.yaml"
        if not path.is_file():
            near = difflib.get_close_matches(name_or_path, available_suites(), n=3)
            hint = f" Did you mean {', '.join(near)}?" if near else ""
            raise ValueError(
                f"unknown suite {name_or_path!r}.{hint} Available: {available_suites()}"
            )
    if not path.is_file():
        raise ValueError(f"suite file {path} does not exist")
    return parse_suite(load_yaml(path), source=str(path))


def parse_suite(raw: Any, source: str = "suite") -> Suite:
    if not isinstance(raw, dict):
        raise ValueError(f"{source}: a suite is a mapping, got {type(raw).__name__}")
    _keys(raw, _SUITE_KEYS, source)
    quick = raw.get("quick") or {}
    _keys(quick, _QUICK_KEYS, f"{source}: quick")
    cases = raw.get("cases")
    if not isinstance(cases, list) or not cases:
        raise ValueError(f"{source}: 'cases' must be a non-empty list")
    seeds = _positive_int(raw.get("seeds", 10), f"{source}: seeds")
    tune_seeds = _positive_int(raw.get("tune_seeds", 3), f"{source}: tune_seeds")
    role = raw.get("role", "history")
    if role not in ROLES:
        raise ValueError(f"{source}: role must be one of {list(ROLES)}, got {role!r}")
    return Suite(
        name=str(raw.get("name", Path(source).stem)),
        description=str(raw.get("description", "")),
        seeds=seeds,
        tune_seeds=tune_seeds,
        quick_seeds=_positive_int(quick.get("seeds", seeds), f"{source}: quick.seeds"),
        quick_tune_seeds=_positive_int(
            quick.get("tune_seeds", tune_seeds), f"{source}: quick.tune_seeds"
        ),
        cases=tuple(_case(c, f"{source}: cases[{i}]") for i, c in enumerate(cases)),
        role=role,
        source=source if Path(source).is_file() else None,
    )


def _case(raw: Any, where: str) -> CaseSpec:
    if not isinstance(raw, dict):
        raise ValueError(f"{where}: a case is a mapping, got {raw!r}")
    _keys(raw, _CASE_KEYS, where)
    task = raw.get("task")
    if task != TRAINED and task not in available_tasks():
        near = difflib.get_close_matches(str(task), available_tasks(), n=3)
        hint = f" Did you mean {', '.join(near)}?" if near else ""
        raise ValueError(
            f"{where}: unknown task {task!r}.{hint} Use {TRAINED!r} or one of {available_tasks()}"
        )
    dataset = raw.get("dataset")
    if dataset is not None and dataset not in available_datasets():
        raise ValueError(f"{where}: unknown dataset {dataset!r}; available: {available_datasets()}")
    try:
        given = {k: coerce(k, raw[k], VARIATION_TYPES[k]) for k in VARIATION_KEYS if k in raw}
        variation = TaskVariation(**given)
        if task != TRAINED:
            get_task(task, dataset=dataset, variation=variation)
    except ValueError as exc:
        raise ValueError(f"{where}: {exc}") from None
    steps, horizon = raw.get("steps"), raw.get("horizon")
    if (steps is None) == (horizon is None):
        raise ValueError(f"{where}: give exactly one of 'steps' and 'horizon' (got {raw})")
    if steps is not None:
        _positive_int(steps, f"{where}: steps")
    if horizon is not None and not (
        isinstance(horizon, int | float)
        and not isinstance(horizon, bool)
        and 0 < horizon < math.inf
    ):
        raise ValueError(f"{where}: horizon must be a positive finite multiple, got {horizon!r}")
    quick = raw.get("quick", True)
    if not isinstance(quick, bool):
        raise ValueError(f"{where}: quick must be true or false, got {quick!r}")
    return CaseSpec(task, dataset, steps, horizon, quick, variation, tuple(given))


def resolve_cases(
    suite: Suite,
    quick: bool,
    trained_task: str | None,
    trained_dataset: str | None,
    trained_horizon: int | None,
    trained_variation: TaskVariation | None = None,
) -> list[Case]:
    """Concrete cases; ``trained`` cases need the learned optimizer's task and horizon, and run
    with its meta-training pipeline (``trained_variation``) but for the keys the case gives."""
    cases = []
    for spec in suite.cases:
        if quick and not spec.quick:
            continue
        task, dataset, variation = spec.task, spec.dataset, spec.variation
        if task == TRAINED:
            if trained_task is None:
                raise ValueError(
                    f"suite {suite.name!r} evaluates on the meta-training task, but the learned "
                    "optimizer's checkpoint does not record it"
                )
            task, dataset = trained_task, dataset or trained_dataset
            given = {k: getattr(variation, k) for k in spec.variation_keys}
            variation = dataclasses.replace(trained_variation or TaskVariation(), **given)
        if spec.horizon is not None and trained_horizon is None:
            raise ValueError(
                f"suite {suite.name!r} gives lengths as multiples of the meta-training horizon, "
                "which the learned optimizer's checkpoint does not record"
            )
        steps = spec.steps if spec.steps is not None else round(spec.horizon * trained_horizon)
        if steps < 1:
            raise ValueError(
                f"suite {suite.name!r}: horizon {spec.horizon} × the meta-training horizon "
                f"{trained_horizon} rounds to {steps} steps; give a larger multiple"
            )
        try:
            dataset = get_task(task, dataset=dataset, variation=variation).dataset_name
        except ValueError as exc:
            raise ValueError(f"suite {suite.name!r}: case {spec.task!r}: {exc}") from None
        cases.append(Case(task, dataset, int(steps), variation))
    return list(dict.fromkeys(cases))


def _keys(raw: dict, allowed: set[str], where: str) -> None:
    unknown = sorted(set(raw) - allowed)
    if unknown:
        raise ValueError(f"{where}: unknown keys {unknown}; allowed: {sorted(allowed)}")


def _positive_int(value: Any, where: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ValueError(f"{where} must be a positive integer, got {value!r}")
    return value
