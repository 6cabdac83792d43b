"""The typed meta-training config: YAML file + ``key=value`` overrides → validated dataclasses.

Every value a run needs is a field here, so that a misspelt key, a wrong type or an out-of-range
value fails in milliseconds, naming the key, before data is loaded or a network is built. The
YAML files in ``configs/meta_train/`` mirror these dataclasses section by section; overrides use
dotted keys (``meta_optimizer.lr=3e-3``) in either the ``key=value`` or the ``--key=value`` form
(the one ``wandb agent`` passes).

This module is the schema: the sections, their range checks (each ``__post_init__``), the
checks across sections and the name checks. Turning YAML and overrides into these dataclasses
is ``meta_train.configuration.engine``'s generic job; the ``unroll`` section is
``meta_train.inner_loop.unroll.UnrollConfig`` itself.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import inspect
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from l2o.tasks.variation import VARIATION_KEYS, VARIATION_TYPES, TaskVariation, describe
from meta_train.configuration.engine import (
    ConfigError,
    build,
    coerce,
    load_yaml,
    parse_override,
    plain,
    require,
    require_non_negative,
    require_positive,
    set_dotted,
)
from meta_train.configuration.engine import all_keys as _all_keys
from meta_train.estimators import available_estimators, get_estimator
from meta_train.evaluation.criteria import CRITERIA
from meta_train.inner_loop.families import AugmentationSpec, FamilySpec
from meta_train.inner_loop.unroll import UnrollConfig

# Keys renamed since older configs and checkpoints were written: old dotted key → new one.
RENAMED_KEYS = {"unroll.order": "unroll.estimator"}
#: Keys of the paper-criterion meta-test that the fair evaluation replaced: an error in a config
#: or an override (naming what to use instead), dropped from a checkpoint's saved config.
RETIRED_KEYS = {
    f"meta_test.{key}": "the run ends with meta_train/evaluate.py's suites (meta_test.suites, "
    "meta_test.seeds, meta_test.baselines), which tune every baseline on their own grid"
    for key in ("steps", "first_seed", "lr_grid", "grid_steps", "grid_seeds", "report_steps")
}


# --------------------------------------------------------------------------------------------
# Sections


@dataclass
class AugmentConfig:
    """``task.family.augment``: per-run augmentations
    (``meta_train.inner_loop.families.AugmentationSpec``,
    which checks the ranges); each unset one is off."""

    param_scale: tuple[float, float] | None = None  # (lo, hi): per-tensor θ = s ⊙ θ′
    loss_scale: tuple[float, float] | None = None  # (lo, hi): the loss times c
    batch_sizes: list[int] = field(default_factory=list)  # drawn per run (each <= batch size)
    data_fraction: float | None = None  # a random subset of the training examples per run
    permute_labels: bool = False  # a random class permutation per run
    input_scale: tuple[float, float] | None = None  # (lo, hi): the inputs times c (images)
    init_scale: tuple[float, float] | None = None  # (lo, hi): the fresh parameters times s

    def __post_init__(self) -> None:
        self.spec()

    def spec(self) -> AugmentationSpec:
        try:
            return AugmentationSpec(
                param_scale=self.param_scale,
                loss_scale=self.loss_scale,
                batch_sizes=tuple(self.batch_sizes),
                data_fraction=self.data_fraction,
                permute_labels=self.permute_labels,
                input_scale=self.input_scale,
                init_scale=self.init_scale,
            )
        except ValueError as exc:  # its messages start with the field's name
            raise ConfigError(f"task.family.augment.{exc}") from None


#: a member's keys: its task, weight and dataset, and any variation key (``TaskVariation``) that
#: replaces the task section's for this member
MEMBER_KEYS = {
    "name": str,
    "weight": float,
    "dataset": str | None,
    **VARIATION_TYPES,
}


@dataclass
class FamilyConfig:
    """``task.family``: meta-train on a distribution of tasks (``meta_train.inner_loop.families``).

    ``members``: ``{name, weight (1), dataset (task.dataset)}`` per registry task, plus any
    variation key (``input``, ``init_scale``, ...: ``l2o.tasks.TaskVariation``) that the
    member sets for itself (else the ``task`` section's); no members (the default) means no
    family: the run trains ``task.name`` alone. A member is known by its ``member_label``
    (its name, then the variation it sets), so one task may be a member twice, varied."""

    members: list[dict[str, Any]] = field(default_factory=list)
    augment: AugmentConfig = field(default_factory=AugmentConfig)

    def __post_init__(self) -> None:
        self.members = [_member(i, m) for i, m in enumerate(self.members)]
        seen: dict[str, int] = {}
        for i, member in enumerate(self.members):
            label = member_label(member)
            if label in seen:
                raise ConfigError(
                    f"task.family.members[{i}].name: {label!r} is already members[{seen[label]}] "
                    "(give one member a larger weight instead)"
                )
            seen[label] = i
        if not self.members and self.augment.spec() != AugmentationSpec():
            raise ConfigError("task.family.augment needs task.family.members")
        self.spec()

    @property
    def enabled(self) -> bool:
        return bool(self.members)

    def spec(self) -> FamilySpec | None:
        """The family as a ``FamilySpec`` (None without members)."""
        if not self.members:
            return None
        try:
            return FamilySpec(
                tuple((member_label(m), m["weight"]) for m in self.members), self.augment.spec()
            )
        except ValueError as exc:  # its messages start with ``members[i]...``
            raise ConfigError(f"task.family.{exc}") from None


def _member(index: int, member: Any) -> dict[str, Any]:
    """One ``task.family.members`` entry, type-checked, with its defaults filled in."""
    key = f"task.family.members[{index}]"
    if not isinstance(member, dict):
        raise ConfigError(f"{key} must be a mapping {{name, weight, dataset}}, got {member!r}")
    for name in member:
        if name not in MEMBER_KEYS:
            near = difflib.get_close_matches(str(name), list(MEMBER_KEYS), n=1)
            hint = f" Did you mean {key}.{near[0]}?" if near else ""
            raise ConfigError(f"unknown config key '{key}.{name}'.{hint}")
    if "name" not in member:
        raise ConfigError(f"{key}.name is missing (a registry task name)")
    out = {"name": member["name"], "weight": member.get("weight", 1.0)}
    out["dataset"] = member.get("dataset")
    out.update({k: member[k] for k in VARIATION_KEYS if k in member})
    out = {k: coerce(f"{key}.{k}", v, MEMBER_KEYS[k]) for k, v in out.items()}
    try:
        TaskVariation.from_mapping(out)
    except ValueError as exc:  # its messages start with the field's name
        raise ConfigError(f"{key}.{exc}") from None
    return out


def member_label(member: dict[str, Any]) -> str:
    """A member's name in the family (slots, metrics, checkpoints): its task's name, then the
    variation keys it sets (``mnist_mlp_sigmoid,input=raw``); the bare name when it sets none."""
    return member["name"] + describe({k: member[k] for k in VARIATION_KEYS if k in member})


@dataclass
class TaskConfig:
    """The optimizee: a registered task, optionally on another same-shaped dataset. With a
    ``family``, meta-training draws its optimizees from the family and ``name`` is the target
    task of validation and the meta-test."""

    name: str = "mnist_mlp_sigmoid"
    dataset: str | None = "mnist5k"  # None: the task's own dataset
    batch_size: int | None = None  # None: the task's own (128)
    # the pipeline's variation (l2o.tasks.TaskVariation documents each key; defaults: none)
    input: str = "standardized"  # standardized | raw (pixels in [0, 1])
    input_scale: float = 1.0  # multiplies the preprocessed inputs
    init_scale: float = 1.0  # multiplies every parameter of a freshly initialized optimizee
    train_size: int | None = None  # only this many training examples (None: all)
    replacement: bool = False  # minibatches drawn with replacement (False: epoch-shuffled)
    width: int | None = None  # hidden width of every layer (MLP and transformer tasks)
    depth: int | None = None  # number of hidden layers (MLP and transformer tasks)
    family: FamilyConfig = field(default_factory=FamilyConfig)

    def __post_init__(self) -> None:
        require_positive("task.batch_size", self.batch_size)
        self.variation()

    def variation(self) -> TaskVariation:
        """The variation these keys describe (every family member's, but for its own keys)."""
        try:
            return TaskVariation.from_mapping({k: getattr(self, k) for k in VARIATION_KEYS})
        except ValueError as exc:  # its messages start with the field's name
            raise ConfigError(f"task.{exc}") from None


@dataclass
class DataConfig:
    """Where datasets live; ``root`` None means ``$L2O_DATA`` or ``~/.cache/l2o/data``."""

    root: str | None = None
    download: bool = False


@dataclass
class OptimizerConfig:
    """The learned optimizer: an ``l2o.optimizers`` architecture name and its constructor kwargs."""

    name: str = "lstm"
    kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass
class MetaOptimizerConfig:
    """Adam on the learned optimizer's weights, with meta-gradient norm clipping."""

    lr: float = 0.01
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    weight_decay: float = 0.0
    grad_clip_norm: float | None = 1.0  # None: no clipping

    def __post_init__(self) -> None:
        require_positive("meta_optimizer.lr", self.lr)
        for i, beta in enumerate(self.betas):
            require(0.0 <= beta < 1.0, f"meta_optimizer.betas[{i}]", "must be in [0, 1)", beta)
        require_positive("meta_optimizer.eps", self.eps)
        require_non_negative("meta_optimizer.weight_decay", self.weight_decay)
        require_positive("meta_optimizer.grad_clip_norm", self.grad_clip_norm)


@dataclass
class ScheduleConfig:
    """epochs × runs_per_epoch runs; each run trains ``meta_batch`` fresh optimizees for
    ``horizon`` inner steps (T), i.e. ``horizon / unroll.length`` meta-steps.

    ``horizon`` may be a log-uniform range ``{min: 100, max: 2000}``, drawn per task and run
    (rounded up to whole truncations); with a range or ``desync``, every task of the meta-batch
    keeps its own step counter and restarts on its own (``meta_train.inner_loop.truncation``):
    ``desync``
    also cuts each task's first run short by a random number of truncations, so that the tasks
    restart at different times. A "run" of the loop (validation, run summaries) is then a window
    of ``min // unroll.length`` meta-steps, and the optimizees carry over between windows."""

    epochs: int = 5
    runs_per_epoch: int = 20
    horizon: int | dict[str, int] = 200
    meta_batch: int = 1
    desync: bool = False

    def __post_init__(self) -> None:
        for key in ("epochs", "runs_per_epoch", "meta_batch"):
            require_positive(f"schedule.{key}", getattr(self, key))
        from meta_train.inner_loop.truncation import HorizonSchedule

        try:
            HorizonSchedule.parse(self.horizon)
        except ValueError as exc:
            raise ConfigError(f"schedule.horizon: {exc}") from None


@dataclass
class ValidationConfig:
    """Held-out meta-validation that picks ``best.pt``: fresh optimizees (seeds disjoint from
    training and meta-testing) trained by the frozen optimizer through ``l2o.training``."""

    enabled: bool = True
    every_runs: int = 0  # 0: at the end of every epoch
    steps: int = 200
    seeds: int = 2
    first_seed: int = 500
    #: what a validation run is scored by (``meta_train.evaluation.criteria``): ``mean`` loss
    #: over the horizon, ``final`` (the last 10 % of steps: what the evaluation reports first)
    criterion: str = "mean"

    def __post_init__(self) -> None:
        require(
            self.criterion in CRITERIA,
            "validation.criterion",
            f"must be one of {sorted(CRITERIA)}",
            self.criterion,
        )
        require_non_negative("validation.every_runs", self.every_runs)
        require_positive("validation.steps", self.steps)
        require_positive("validation.seeds", self.seeds)
        require_non_negative("validation.first_seed", self.first_seed)


@dataclass
class MetaTestConfig:
    """What a run ends with: the fair evaluation (``meta_train/evaluate.py``) of its checkpoint,
    against baselines tuned for each reported criterion on seeds disjoint from the evaluation's."""

    enabled: bool = True
    checkpoint: Literal["best", "last"] = "best"
    suites: list[str] = field(default_factory=lambda: ["indist", "long"])  # configs/eval/*.yaml
    quick: bool = True  # the suites' quick mode (fewer seeds and cases)
    seeds: int | None = None  # evaluation seeds per case; None: the suite's (quick) default
    baselines: list[str] = field(default_factory=lambda: ["sgdm", "adam", "adamw_cosine"])
    plot: bool = True

    def __post_init__(self) -> None:
        if self.seeds is not None:
            require_positive("meta_test.seeds", self.seeds)
        for key in ("suites", "baselines"):
            values = getattr(self, key)
            require(len(values) > 0, f"meta_test.{key}", "must not be empty", values)
            unique = len(set(values)) == len(values)
            require(unique, f"meta_test.{key}", "has duplicates", values)


@dataclass
class RegularizationWeights:
    rescale: float = 1.0 / 3.0
    scale: float = 1.0 / 3.0
    translation: float = 1.0 / 3.0

    def __post_init__(self) -> None:
        for key in ("rescale", "scale", "translation"):
            require_non_negative(f"regularization.weights.{key}", getattr(self, key))


@dataclass
class RegularizationConfig:
    """A penalty on the updates added to the meta-loss (the paper's symmetry regularizer)."""

    kind: Literal["none", "symmetry", "norm"] = "none"
    reg_mul: float = 0.0
    weights: RegularizationWeights = field(default_factory=RegularizationWeights)

    def __post_init__(self) -> None:
        require_non_negative("regularization.reg_mul", self.reg_mul)
        if self.kind != "none" and self.reg_mul == 0:
            raise ConfigError(
                f"regularization.kind is {self.kind!r} but regularization.reg_mul is 0"
            )


@dataclass
class WandbConfig:
    """W&B logging. ``offline`` and ``disabled`` never touch the network; ``$WANDB_MODE``, when
    set, overrides ``mode`` (tests and CI set it to ``disabled``)."""

    mode: Literal["online", "offline", "disabled"] = "disabled"
    project: str = "l2o"
    entity: str | None = None
    tags: list[str] = field(default_factory=list)
    name: str | None = None
    group: str | None = None


@dataclass
class ReliabilityConfig:
    """Non-finite handling: a bad meta-step is skipped; this many in a row stop the run."""

    max_consecutive_nonfinite: int = 5

    def __post_init__(self) -> None:
        require_positive("reliability.max_consecutive_nonfinite", self.max_consecutive_nonfinite)


@dataclass
class LoggingConfig:
    every: int = 1  # meta-steps between console/JSONL/W&B records
    progress: bool = True  # tqdm bar

    def __post_init__(self) -> None:
        require_positive("logging.every", self.every)


@dataclass
class CheckpointConfig:
    every: int = 10  # meta-steps between ``last.pt`` writes (and always at the end of a run)

    def __post_init__(self) -> None:
        require_positive("checkpoint.every", self.every)


@dataclass
class MetaTrainConfig:
    task: TaskConfig = field(default_factory=TaskConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    unroll: UnrollConfig = field(default_factory=UnrollConfig)  # meta_train.inner_loop.unroll
    meta_optimizer: MetaOptimizerConfig = field(default_factory=MetaOptimizerConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    validation: ValidationConfig = field(default_factory=ValidationConfig)
    meta_test: MetaTestConfig = field(default_factory=MetaTestConfig)
    regularization: RegularizationConfig = field(default_factory=RegularizationConfig)
    wandb: WandbConfig = field(default_factory=WandbConfig)
    reliability: ReliabilityConfig = field(default_factory=ReliabilityConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    name: str = "meta_train"  # used in the default run folder name and as the W&B run name
    run_dir: str | None = None  # None: runs/<name>-<timestamp> under the current folder
    seed: int = 0
    device: str = "cpu"  # cpu, cuda, cuda:N or auto
    deterministic: bool = True  # torch.use_deterministic_algorithms: bit-reproducible CPU runs
    threads: int | None = None  # torch.set_num_threads; None: meta_train.training.threads' default

    def __post_init__(self) -> None:
        _check_across_sections(self)

    @property
    def meta_steps_per_run(self) -> int:
        return self.horizon_schedule.min // self.unroll.length

    @property
    def horizon_schedule(self):
        """``schedule.horizon`` as a ``meta_train.inner_loop.truncation.HorizonSchedule``."""
        from meta_train.inner_loop.truncation import HorizonSchedule

        try:
            return HorizonSchedule.parse(self.schedule.horizon)
        except ValueError as exc:
            raise ConfigError(f"schedule.horizon: {exc}") from None

    @property
    def per_task_runs(self) -> bool:
        """Tasks restart on their own clocks (a horizon range, or ``schedule.desync``)."""
        h = self.horizon_schedule
        return self.schedule.desync or h.min != h.max

    def to_dict(self) -> dict[str, Any]:
        """Plain YAML/JSON/``weights_only``-safe containers (tuples become lists)."""
        return plain(dataclasses.asdict(self))


def all_keys() -> list[str]:
    """Every dotted key of the config (``optimizer.kwargs`` stands for its free-form dict)."""
    return _all_keys(MetaTrainConfig)


def _rename_old_keys(data: dict[str, Any], saved: bool = False) -> dict[str, Any]:
    """``data`` with the :data:`RENAMED_KEYS` moved to their new names (old configs and
    checkpoints keep working); giving both names is an error. :data:`RETIRED_KEYS` are dropped
    from a ``saved`` (checkpoint) config and refused elsewhere."""
    out = copy.deepcopy(data)  # never edit the caller's mapping (a checkpoint's saved config)
    for key, instead in RETIRED_KEYS.items():
        section, leaf = key.split(".")
        node = out.get(section)
        if isinstance(node, dict) and leaf in node:
            if not saved:
                raise ConfigError(f"{key} was retired: {instead}")
            del node[leaf]
    for old, new in RENAMED_KEYS.items():
        (section, old_leaf), (_, new_leaf) = old.split("."), new.split(".")
        node = out.get(section)
        if isinstance(node, dict) and old_leaf in node:
            if new_leaf in node:
                raise ConfigError(f"{old} is the old name of {new}: give only {new}")
            node[new_leaf] = node.pop(old_leaf)
    return out


def config_from_dict(
    data: dict[str, Any], overrides: list[str] | None = None, *, saved: bool = False
) -> MetaTrainConfig:
    """Build and validate a config from a (YAML) mapping plus ``key=value`` overrides;
    ``saved``: ``data`` is a checkpoint's config (retired keys are dropped, not refused)."""
    data = _rename_old_keys(data or {}, saved=saved)
    for text in overrides or []:
        key, value = parse_override(text)
        if key in RETIRED_KEYS:
            raise ConfigError(f"{key} was retired: {RETIRED_KEYS[key]}")
        set_dotted(MetaTrainConfig, data, RENAMED_KEYS.get(key, key), value)
    return build(MetaTrainConfig, data)


def load_config(source: str | Path, overrides: list[str] | None = None) -> MetaTrainConfig:
    """A config from a name (``default``, ``paper``...) or a YAML path, plus overrides."""
    path = resolve_config_path(source)
    try:
        return config_from_dict(load_yaml(path), overrides)
    except ConfigError as exc:
        raise ConfigError(f"{exc} (config: {path})") from None


# --------------------------------------------------------------------------------------------
# Finding named configs: the repository's configs/meta_train/, else a copy inside the package


def config_dirs() -> list[Path]:
    """Folders searched for named configs, in order."""
    package_dir = Path(__file__).resolve().parents[1]  # meta_train/, above configuration/
    dirs = [
        package_dir.parent / "configs" / "meta_train",  # a checkout or an editable install
        package_dir
        / "_configs"
        / "meta_train",  # the copy inside a wheel (pyproject force-include)
    ]
    return [d for d in dirs if d.is_dir()]


def available_configs() -> list[str]:
    return sorted({p.stem for d in config_dirs() for p in d.glob("*.yaml")})


def resolve_config_path(source: str | Path) -> Path:
    """A YAML path as given, or a config name looked up in :func:`config_dirs`."""
    path = Path(source).expanduser()
    if path.is_file():
        return path
    if path.is_dir():
        raise ConfigError(f"--config {path} is a folder; give a YAML file or a config name")
    name = str(source)
    if name.endswith((".yaml", ".yml")) or "/" in name:
        raise ConfigError(f"config file {str(path)!r} does not exist")
    for folder in config_dirs():
        candidate = folder / f"{name}.yaml"
        if candidate.is_file():
            return candidate
    names = available_configs()
    near = difflib.get_close_matches(name, names, n=3)
    hint = f" Did you mean {', '.join(near)}?" if near else ""
    searched = ", ".join(str(d) for d in config_dirs()) or "(no config folder found)"
    raise ConfigError(f"unknown config {name!r}.{hint} Available: {names}; searched {searched}")


# --------------------------------------------------------------------------------------------
# Validation: ranges next to the fields (``__post_init__``); names (task, optimizer,
# baselines) in validate_names


SEED_SPACE = 2**20  # validation and meta-test seeds live below this; training seeds are 63-bit


def _check_across_sections(cfg: MetaTrainConfig) -> None:
    """The checks that involve more than one section (each section checks its own ranges);
    every message names the keys."""
    u, s, v, t = cfg.unroll, cfg.schedule, cfg.validation, cfg.meta_test
    estimators = available_estimators()
    require(
        u.estimator in estimators, "unroll.estimator", f"must be one of {estimators}", u.estimator
    )
    horizon = cfg.horizon_schedule  # a ConfigError for a malformed value or range
    if u.length > horizon.min:
        raise ConfigError(
            f"unroll.length ({u.length}) must not exceed schedule.horizon ({s.horizon})"
        )
    if horizon.min == horizon.max and s.horizon % u.length:
        raise ConfigError(
            f"schedule.horizon ({s.horizon}) must be a multiple of unroll.length "
            f"({u.length}) so that every run has whole truncations"
        )
    val_seeds = set(range(v.first_seed, v.first_seed + v.seeds))
    require(
        max(val_seeds) < SEED_SPACE,
        "validation.first_seed",
        f"+ seeds must be < {SEED_SPACE}",
        max(val_seeds),
    )
    if t.enabled:  # evaluate.py tunes on seeds 0, 1, ... and evaluates on 1000, 1001, ...
        held_out = {
            "tuning seeds [0, 100)": range(100),
            f"evaluation seeds [1000, {1000 + (t.seeds or 100)})": range(
                1000, 1000 + (t.seeds or 100)
            ),
        }
        for what, seeds in held_out.items():
            if val_seeds & set(seeds):
                raise ConfigError(
                    f"validation seeds [{v.first_seed}, {v.first_seed + v.seeds}) overlap the "
                    f"final evaluation's {what}: held-out means held out"
                )
    _check_estimator(cfg)
    if cfg.task.family.enabled:
        _check_family(cfg)
    _check_processes(cfg)
    require_positive("threads", cfg.threads)
    require(
        0 <= cfg.seed < 2**63, "seed", "must be in [0, 2**63) (torch seeds are 64-bit)", cfg.seed
    )
    require(
        bool(cfg.name) and "/" not in cfg.name, "name", "must be a non-empty file name", cfg.name
    )
    device = cfg.device
    require(
        device in ("cpu", "cuda", "auto", "mps") or re.fullmatch(r"cuda:\d+", device) is not None,
        "device",
        "must be cpu, cuda, cuda:N, mps or auto",
        device,
    )


def _check_estimator(cfg: MetaTrainConfig) -> None:
    """The estimator built as a run builds it (its settings against its constructor and their
    ranges: ``{sigma: -1}``, ``{bogus: 1}``), and its support for the regularization: both
    failed at the first meta-step, after the run folder was made."""
    u = cfg.unroll
    try:
        estimator = get_estimator(u.estimator)(u, **u.estimator_kwargs)
    except ConfigError:
        raise
    except (TypeError, ValueError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ConfigError(f"unroll.estimator_kwargs {u.estimator_kwargs}: {first}") from None
    if cfg.regularization.kind != "none" and not estimator.supports_regularization:
        raise ConfigError(
            f"regularization.kind {cfg.regularization.kind!r}: unroll.estimator "
            f"{u.estimator!r} does not support regularization (set regularization.kind: none, "
            "or use unroll.estimator: first)"
        )


def launched_world_size() -> int:
    """The number of processes torchrun launched (1 without torchrun), known before the
    process group exists."""
    from meta_train.training import distributed

    return int(os.environ["WORLD_SIZE"]) if distributed.launched_by_torchrun() else 1


def _check_processes(cfg: MetaTrainConfig) -> None:
    """Under torchrun every rank runs an equal slice of the meta-batch (a family's slots too):
    refused here, before the run folder exists, not when the trainer slices it."""
    from meta_train.training import distributed

    try:
        distributed.slice_bounds(cfg.schedule.meta_batch, launched_world_size(), 0)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def _check_family(cfg: MetaTrainConfig) -> None:
    """What a task family does not support (yet), naming the keys."""
    slots, members = cfg.schedule.meta_batch, len(cfg.task.family.members)
    if slots < members:
        raise ConfigError(
            f"task.family has {members} members but schedule.meta_batch is {slots}: "
            "every member needs at least one slot of the meta-batch"
        )
    objective = cfg.unroll.estimator_kwargs.get("objective")
    if objective == "final_val" and cfg.task.family.augment.permute_labels:
        raise ConfigError(
            "task.family.augment.permute_labels cannot be combined with "
            "unroll.estimator_kwargs.objective: final_val (its held-out batches are not permuted)"
        )


def validate_names(cfg: MetaTrainConfig) -> None:
    """Names that need the registries: task, dataset, learned optimizer and its kwargs, baselines.

    Imports the libraries but builds nothing heavy; the data's presence is checked by loading it
    (see ``trainer.prepare``), still before meta-training starts.
    """
    from l2o.data import available_datasets
    from l2o.tasks import available_tasks, get_task

    if cfg.task.name not in available_tasks():
        near = difflib.get_close_matches(cfg.task.name, available_tasks(), n=3, cutoff=0.5)
        hint = f" Did you mean {', '.join(near)}?" if near else ""
        raise ConfigError(
            f"task.name: unknown task {cfg.task.name!r}.{hint} Available: {available_tasks()}"
        )
    if cfg.task.dataset is not None and cfg.task.dataset not in available_datasets():
        raise ConfigError(
            f"task.dataset: unknown dataset {cfg.task.dataset!r}; available: {available_datasets()}"
        )
    try:
        get_task(cfg.task.name, dataset=cfg.task.dataset, variation=cfg.task.variation())
    except ValueError as exc:
        raise ConfigError(f"task: {exc}") from None
    _validate_family(cfg)
    validate_optimizer(cfg.optimizer)
    if cfg.meta_test.enabled:
        from meta_train.evaluation.contenders import check_baselines
        from meta_train.evaluation.suites import available_suites

        try:
            check_baselines(list(cfg.meta_test.baselines))
        except ValueError as exc:
            raise ConfigError(f"meta_test.baselines: {exc}") from None
        for name in cfg.meta_test.suites:
            if name not in available_suites():
                raise ConfigError(
                    f"meta_test.suites: unknown suite {name!r}; available: {available_suites()}"
                )


def member_task(cfg: MetaTrainConfig, member: dict[str, Any]):
    """The registry task of one ``task.family.members`` entry (its dataset, else
    ``task.dataset``; the task section's variation, ``task.batch_size`` included, with the
    member's own variation keys in place of those)."""
    from l2o.tasks import get_task

    dataset = member["dataset"] if member["dataset"] is not None else cfg.task.dataset
    own = {k: member[k] for k in VARIATION_KEYS if k in member}
    variation = dataclasses.replace(cfg.task.variation(), **own)
    return get_task(member["name"], dataset=dataset, variation=variation)


def _validate_family(cfg: MetaTrainConfig) -> None:
    """Every member is a registry task on a fitting dataset, and fits the augmentations."""
    from l2o.tasks import available_tasks

    family = cfg.task.family
    if not family.enabled:
        return
    for i, member in enumerate(family.members):
        key = f"task.family.members[{i}]"
        if member["name"] not in available_tasks():
            near = difflib.get_close_matches(member["name"], available_tasks(), n=3, cutoff=0.5)
            hint = f" Did you mean {', '.join(near)}?" if near else ""
            raise ConfigError(
                f"{key}.name: unknown task {member['name']!r}.{hint} Available: {available_tasks()}"
            )
        try:
            task = member_task(cfg, member)
        except ValueError as exc:
            raise ConfigError(
                f"{key}: {exc} (set {key}.dataset to a dataset of its shape)"
            ) from None
        if family.augment.input_scale is not None and task.reads_tokens:
            raise ConfigError(
                f"task.family.augment.input_scale applies to image inputs, but {key} "
                f"({member['name']}) reads byte tokens"
            )
        sizes = family.augment.batch_sizes
        if sizes and max(sizes) > task.batch_size:
            raise ConfigError(
                f"task.family.augment.batch_sizes: {max(sizes)} exceeds the batch size "
                f"{task.batch_size} of {key} ({member['name']}; task.batch_size)"
            )


def validate_optimizer(opt: OptimizerConfig) -> None:
    """The learned optimizer's name is registered and every kwarg is a constructor parameter."""
    import torch

    import l2o.optimizers as lo

    known = list(lo.available_architectures())
    if opt.name not in known:
        near = difflib.get_close_matches(opt.name, known, n=3)
        hint = f" Did you mean {', '.join(near)}?" if near else ""
        raise ConfigError(
            f"optimizer.name: unknown learned optimizer {opt.name!r}.{hint} Available: {known}"
        )
    signature = inspect.signature(type(lo.create(opt.name)))  # a default network is tiny
    params = {
        n: p
        for n, p in signature.parameters.items()
        if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and n != "self"
    }
    accepts_any = any(p.kind is p.VAR_KEYWORD for p in signature.parameters.values())
    for key, value in opt.kwargs.items():
        if key not in params:
            if accepts_any:
                continue
            near = difflib.get_close_matches(key, list(params), n=3, cutoff=0.5)
            hint = f" Did you mean {', '.join(near)}?" if near else ""
            raise ConfigError(
                f"optimizer.kwargs.{key}: {opt.name!r} takes no argument {key!r}.{hint} "
                f"It takes: {sorted(params)}"
            )
        default = params[key].default
        if default is not inspect.Parameter.empty and default is not None and value is not None:
            expected = type(default)
            if expected is float and isinstance(value, int) and not isinstance(value, bool):
                opt.kwargs[key] = float(value)
            elif expected in (int, float, bool, str) and not isinstance(value, expected):
                opt.kwargs[key] = coerce(f"optimizer.kwargs.{key}", value, expected)
            value = opt.kwargs[key]
            if expected is float and not math.isfinite(value):
                raise ConfigError(f"optimizer.kwargs.{key} must be finite, got {value!r}")
            if expected is int and default > 0 and value <= 0:  # sizes and counts
                raise ConfigError(f"optimizer.kwargs.{key} must be positive, got {value!r}")
    for key, value in opt.kwargs.items():
        if isinstance(value, list | tuple) and not all(
            isinstance(v, str | int | float) for v in value
        ):
            raise ConfigError(f"optimizer.kwargs.{key} must be a flat list of names, got {value!r}")
    try:  # every other constructor check, on the meta device: nothing is allocated
        with torch.device("meta"):
            lo.create(opt.name, **opt.kwargs)
    except (TypeError, ValueError, RuntimeError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ConfigError(f"optimizer.kwargs {opt.kwargs}: {first}") from None


def dump_yaml(cfg: MetaTrainConfig) -> str:
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)
