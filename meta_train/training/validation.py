"""Held-out meta-validation, which picks ``best.pt``: fresh optimizees (seeds disjoint from
training's and the final evaluation's) trained by the frozen learned optimizer through
``l2o.training``, scored by ``validation.criterion``; and when in the schedule it runs."""

from __future__ import annotations

import copy
from typing import Any

import torch

import l2o.optimizers as lo
from l2o.tasks import Task
from l2o.training import train_optimizee
from meta_train.configuration.sections import ScheduleConfig, ValidationConfig
from meta_train.evaluation.criteria import score
from meta_train.training import distributed as dist


def validation_due(v: ValidationConfig, s: ScheduleConfig, p: Any) -> bool:
    """Whether validation runs at the end of the run at position ``p`` (a ``Position``): every
    ``validation.every_runs`` runs and after the last, else at the end of every epoch."""
    if not v.enabled:
        return False
    runs_done = p.epoch * s.runs_per_epoch + p.run + 1
    last_run = runs_done == s.epochs * s.runs_per_epoch
    if v.every_runs:
        return runs_done % v.every_runs == 0 or last_run
    return p.run + 1 == s.runs_per_epoch


def validation_score(
    lopt: torch.nn.Module, task: Task, data: Any, v: ValidationConfig, device: torch.device
) -> float:
    """The ``validation.criterion`` (mean training loss, by default) of fresh held-out
    optimizees trained by a frozen copy of ``lopt``, averaged over them (+inf if one diverged).

    Under torchrun the seeds are split over the ranks (seed i on rank i mod world) and the
    scores summed with one all-reduce: every rank gets the same value. The global RNGs are left
    as they were (the run's own draws must not depend on validation)."""
    net = copy.deepcopy(lopt).eval()
    for param in net.parameters():
        param.requires_grad_(False)
    scores = []
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        for i in range(dist.rank(), v.seeds, dist.world_size()):
            result = train_optimizee(
                task,
                lambda params, net=net: lo.LearnedOptimizer(params, net),
                v.steps,
                seed=v.first_seed + i,
                device=device,
                data=data,
                evaluate_test=False,
            )
            scores.append(float(score(v.criterion, result.train_losses.unsqueeze(0))[0]))
    total, count = dist.sum_across([sum(scores), len(scores)])
    return total / count
