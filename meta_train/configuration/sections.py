"""The config's sections (``task``, ``data``, ``optimizer``, ``meta_optimizer``, ``schedule``,
``validation``, ``meta_test``, ...): one dataclass each, whose ``__post_init__`` checks its own
ranges, naming the key. ``MetaTrainConfig`` (``meta_train.configuration.schema``) puts them
together; the ``unroll`` section is ``meta_train.inner_loop.unroll.UnrollConfig`` itself."""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from typing import Any, Literal

from l2o.tasks.variation import VARIATION_KEYS, VARIATION_TYPES, TaskVariation, describe
from meta_train.configuration.engine import (
    ConfigError,
    coerce,
    require,
    require_non_negative,
    require_positive,
)
from meta_train.evaluation.contenders import DEFAULT_BASELINES
from meta_train.evaluation.criteria import CRITERIA, VALIDATION_STEPS
from meta_train.inner_loop.families import AugmentationSpec, FamilySpec


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
    steps: int = VALIDATION_STEPS
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
    baselines: list[str] = field(default_factory=lambda: list(DEFAULT_BASELINES))  # 2026's set
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
