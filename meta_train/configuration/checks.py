"""The checks of a config that involve more than one section (``MetaTrainConfig`` runs them on
construction) and those that need the registries (``validate_names``: task, dataset, learned
optimizer, baselines, suites), each naming the keys."""

from __future__ import annotations

import dataclasses
import difflib
import inspect
import math
import os
import re
from typing import TYPE_CHECKING, Any

from l2o.tasks.variation import VARIATION_KEYS
from meta_train.configuration.engine import ConfigError, coerce, require, require_positive
from meta_train.estimators import available_estimators, get_estimator

if TYPE_CHECKING:  # annotations only: the schema imports this module
    from meta_train.configuration.schema import MetaTrainConfig
    from meta_train.configuration.sections import OptimizerConfig

SEED_SPACE = 2**20  # validation and meta-test seeds live below this; training seeds are 63-bit


def check_across_sections(cfg: MetaTrainConfig) -> None:
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
