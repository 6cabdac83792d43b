"""A run's parts, built from its config before the loop starts: the device and the process's
settings (threads, determinism), the task, a task family's runner, the regularizer, and the
training seeds of every run and slot. ``preflight`` checks everything that can fail before the
run folder is written."""

from __future__ import annotations

import os
import random
from collections import Counter
from dataclasses import asdict
from typing import Any

import numpy as np
import torch

import l2o.optimizers as lo
from l2o.data import DatasetNotFoundError
from l2o.seeding import derive_seed
from l2o.tasks import Task, get_task
from meta_train.configuration.checks import member_task, validate_names
from meta_train.configuration.engine import ConfigError
from meta_train.configuration.schema import MetaTrainConfig
from meta_train.configuration.sections import member_label
from meta_train.inner_loop.families import assign_members
from meta_train.inner_loop.family_runner import FamilyRunner
from meta_train.training import distributed as dist
from meta_train.training.memory import check_fits
from meta_train.training.threads import resolve_threads


def resolve_device(name: str) -> torch.device:
    """``auto``: CUDA when available, else CPU. Under torchrun, plain ``cuda`` (or ``auto`` with
    a GPU) means this process's GPU, ``cuda:LOCAL_RANK``."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} was asked for but CUDA is not available (use cpu/auto)")
    if device.type == "cuda" and device.index is None and dist.is_distributed():
        device = torch.device("cuda", dist.local_rank())
    return device


def setup_environment(cfg: MetaTrainConfig) -> torch.device:
    """Seeds, threads and determinism, before anything random happens.

    The CPU kernels a run uses are deterministic for a fixed thread count (the resume tests check
    bit equality); on CUDA ``deterministic`` also selects deterministic kernels.
    """
    device = resolve_device(cfg.device)
    if cfg.deterministic and device.type == "cuda":
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
    torch.set_num_threads(resolve_threads(cfg.threads))
    random.seed(cfg.seed)
    np.random.seed(cfg.seed % 2**32)
    torch.manual_seed(cfg.seed)
    return device


def preflight(cfg: MetaTrainConfig) -> None:
    """Every check that can fail before a run folder exists: names, device, data on disk, and
    whether one meta-step fits in memory (``meta_train.training.memory``)."""
    validate_names(cfg)
    try:
        device = resolve_device(cfg.device)
    except ValueError as exc:
        raise ConfigError(f"device: {exc}") from None
    lopt = lo.create(cfg.optimizer.name, **cfg.optimizer.kwargs).to(device)
    # (task, the key naming its dataset, the slots of the meta-batch it trains in)
    checks = [(make_task(cfg), "task.dataset", cfg.schedule.meta_batch)]
    family = cfg.task.family.spec()
    if family is not None:  # the members train; the target task only validates
        slots = Counter(assign_members(family, cfg.schedule.meta_batch, cfg.seed))
        checks = [(checks[0][0], "task.dataset", 1)] + [
            (member_task(cfg, m), f"task.family.members[{i}].dataset", slots[member_label(m)])
            for i, m in enumerate(cfg.task.family.members)
        ]
    for task, key, slots in checks:
        try:
            data = task.load_data(device, root=cfg.data.root, download=cfg.data.download)
        except DatasetNotFoundError as exc:
            raise ConfigError(f"{key}: {exc}") from None
        except ValueError as exc:  # the variation's train_size, more than the data holds
            raise ConfigError(f"{key.rsplit('.', 1)[0]}.{exc}") from None
        x, y = data.split("train")
        if task.batch_size > x.shape[0]:
            raise ConfigError(
                f"task.batch_size ({task.batch_size}) exceeds the {x.shape[0]} training examples "
                f"of {data.name}"
            )
        refusal = check_fits(
            cfg.unroll, slots, task, lopt, x[: task.batch_size], y[: task.batch_size]
        )
        if refusal is not None:
            raise ConfigError(refusal)


def make_task(cfg: MetaTrainConfig) -> Task:
    return get_task(cfg.task.name, dataset=cfg.task.dataset, variation=cfg.task.variation())


def make_family(
    cfg: MetaTrainConfig,
    device: torch.device,
    target: Task,
    target_data,
    owned: list[int] | None = None,
) -> FamilyRunner | None:
    """The ``task.family`` runner (None without a family): the member tasks, their data (each
    dataset loaded once; the target's reused), one estimator and regularizer per member, for the
    slots ``owned`` by this process (default all)."""
    family = cfg.task.family
    if not family.enabled:
        return None
    tasks, datasets, loaded = {}, {}, {target.data_key: target_data}
    for member in family.members:
        task = member_task(cfg, member)
        if task.data_key not in loaded:
            loaded[task.data_key] = task.load_data(
                device, root=cfg.data.root, download=cfg.data.download
            )
        label = member_label(member)
        tasks[label], datasets[label] = task, loaded[task.data_key]
    return FamilyRunner(
        family.spec(),
        tasks,
        datasets,
        cfg.schedule.meta_batch,
        cfg.seed,
        cfg.unroll,
        device,
        lambda task: make_regularizer(cfg, task, device),
        owned,
    )


def make_regularizer(cfg: MetaTrainConfig, task: Task, device: torch.device) -> Any:
    """The ``regularization`` section as a callable ``(updates, params) -> scalar``, or None."""
    reg = cfg.regularization
    if reg.kind == "none":
        return None
    from l2o.regularization import build_regularizer

    return build_regularizer(
        reg.kind, task.make_model(0, device), reg.reg_mul, weights=asdict(reg.weights)
    )


def run_seeds(cfg: MetaTrainConfig, epoch: int, run: int) -> list[int]:
    """The optimizee seeds of one training run: 63-bit, so never among the small held-out seeds.

    ``schedule.meta_batch`` is the whole meta-batch; under torchrun each rank unrolls an equal
    slice of it (:func:`rank_seeds`), so the optimizees do not depend on the number of ranks."""
    return [
        derive_seed(cfg.seed, "meta-train", epoch, run, b) for b in range(cfg.schedule.meta_batch)
    ]


def rank_seeds(cfg: MetaTrainConfig, epoch: int, run: int) -> list[int]:
    """This rank's slice of :func:`run_seeds` (all of them without a process group)."""
    lo, hi = dist.slice_bounds(cfg.schedule.meta_batch, dist.world_size(), dist.rank())
    return run_seeds(cfg, epoch, run)[lo:hi]
