"""The optimizers an evaluation compares: learned ones (by pretrained name, checkpoint or run
folder) and baselines by name, each as a factory for ``l2o.training.train_optimizee``.

Baseline names: ``sgdm`` (SGD, momentum 0.9), any ``baselines`` registry name (``adam``, ``lion``,
``gyro_adam``, ``muon``, ``sf_adamw``, ...), and either with a ``_cosine`` suffix for a cosine decay
of the lr to zero over the horizon (``adamw_cosine`` is AdamW so scheduled, ``muon_cosine`` Muon).

A learned optimizer with a nominal term (``general``) brings one more contender, ``nominal``: its
own nominal term, untrained, with the step size tuned per case and criterion like a baseline's
lr (``Learned.nominal_factory``). It separates what meta-training adds from what the handcrafted
term already does.
"""

from __future__ import annotations

import difflib
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

import baselines
import l2o.optimizers as lo
from l2o.tasks import TaskVariation
from meta_train.evaluation.criteria import VALIDATION_STEPS
from meta_train.inner_loop.truncation import HorizonSchedule

DEFAULT_BASELINES = ("sgdm", "adam", "adamw_cosine", "muon_cosine", "sf_adamw")
COSINE = "_cosine"
NOMINAL = "nominal"
#: the prefix of a learned optimizer spec (and name) evaluated before meta-training
UNTRAINED = "untrained:"
# The config key of each nominal kind's step size (``mix`` scales its SGD step size along).
NOMINAL_LR_KEYS = {
    "adam": "nominal_lr",
    "sgdm": "sgdm_lr",
    "lars": "lars_lr",
    "orthogonal": "lars_lr",
    "mix": "nominal_lr",
}
# Where a contender's reported losses are measured, where that is not simply "the parameters".
MEASURED_AT = {
    "sf_adamw": "training losses (the criteria) at the point where the gradient is taken, y in "
    "train mode; test loss and accuracy at the averaged point x, after optimizer.eval()",
}
_ALIASES: dict[str, tuple[str, dict[str, Any]]] = {"sgdm": ("sgd", {"momentum": 0.9})}

Factory = Callable[[list[nn.Parameter]], torch.optim.Optimizer]


def available_baselines() -> list[str]:
    names = sorted({*baselines.available(), *_ALIASES})
    return names + [n + COSINE for n in names]


def check_baselines(names: list[str] | tuple[str, ...]) -> list[str]:
    """``names`` deduplicated; a ``ValueError`` naming near matches for an unknown one."""
    known = available_baselines()
    for name in names:
        if name not in known:
            near = difflib.get_close_matches(name, known, n=3)
            hint = f" Did you mean {', '.join(near)}?" if near else ""
            raise ValueError(f"unknown baseline {name!r}.{hint} Available: {', '.join(known)}")
    return list(dict.fromkeys(names))


def baseline_factory(name: str, lr: float, steps: int) -> Factory:
    """``name`` at ``lr``; a ``_cosine`` name decays lr by ½(1 + cos(πt/steps)) after step t."""
    stem = name.removesuffix(COSINE)
    registry_name, extra = _ALIASES.get(stem, (stem, {}))

    def make(params: list[nn.Parameter]) -> torch.optim.Optimizer:
        opt = baselines.create(registry_name, params, lr=lr, **extra)
        if name.endswith(COSINE):
            _attach_cosine(opt, steps)
        return opt

    return make


def _attach_cosine(opt: torch.optim.Optimizer, steps: int) -> None:
    """Scale every group's lr by the cosine factor after each ``step()`` (a step post-hook)."""
    base = [g["lr"] for g in opt.param_groups]
    done = [0]

    def hook(optimizer, args, kwargs) -> None:
        done[0] += 1
        factor = 0.5 * (1.0 + math.cos(math.pi * min(done[0], steps) / steps))
        for group, lr in zip(optimizer.param_groups, base):
            group["lr"] = lr * factor

    opt.register_step_post_hook(hook)


@dataclass
class Learned:
    """A learned optimizer to evaluate, with what its checkpoint says about its training."""

    name: str
    net: lo.LearnedOptimizerNet
    source: str
    task: str | None  # the meta-training task, if the checkpoint records it
    dataset: str | None
    horizon: int | None
    batch_size: int | None = None
    #: the meta-training pipeline's variation keys (the checkpoint's task section)
    variation: TaskVariation = field(default_factory=TaskVariation)

    @property
    def pipeline(self) -> TaskVariation:
        """The meta-training task's variation, its batch size included: a ``trained`` case's."""
        return replace(self.variation, batch_size=self.batch_size)

    def factory(self, steps: int | None = None) -> Factory:
        """The optimizer for a run of ``steps``; a network with training-progress inputs is
        told that horizon, as a user of a VeLO-style optimizer tells it the run's length."""
        horizon = steps if steps is not None and lo.wrapper.takes_total_steps(self.net) else None
        return lambda params: lo.LearnedOptimizer(params, self.net, total_steps=horizon)

    @property
    def nominal_lr_key(self) -> str | None:
        """The config key of the nominal term's step size; None without a nominal term."""
        return NOMINAL_LR_KEYS.get(getattr(self.net, "nominal", None))

    @property
    def nominal_lr(self) -> float:
        """The nominal term's own step size (the recipe's), a point of its tuning grid."""
        return float(self.net.config()[self._nominal_key()])

    def _nominal_key(self) -> str:
        """``nominal_lr_key``, or a ``ValueError`` for an optimizer without a nominal term."""
        key = self.nominal_lr_key
        if key is None:
            raise ValueError(f"{self.name!r} has no nominal term")
        return key

    def nominal_factory(self, lr: float, steps: int) -> Factory:
        """This optimizer's nominal term, untrained, at step size ``lr``, for a run of ``steps``.

        ``create`` with the checkpoint's own kwargs (residual gain 0, learned schedule at its
        zero init: the nominal term alone, with the same base schedule, boost and horizon
        scaling) and ``lr`` in place of the step size, told the run's length as the learned
        optimizer is. With ``mix``, ``lr`` is Adam's step size and SGD's scales along."""
        key = self._nominal_key()
        config = self.net.config()
        if self.net.nominal == "mix":
            config["sgdm_lr"] *= lr / config["nominal_lr"]
        config[key] = lr
        return replace(self, net=_fresh_net(self.net.arch, config)).factory(steps)

    def untrained(self) -> Learned:
        """The same optimizer before meta-training: its kwargs, the learned parts at their
        init (with a nominal term: residual gain 0, learned schedule 0, so the nominal term
        alone at the recipe's own step size): an ablation's "untrained" row."""
        net = _fresh_net(self.net.arch, self.net.config())
        return replace(self, name=f"{UNTRAINED}{self.name}", net=net)

    @property
    def nominal_identity(self) -> str | None:
        """What the nominal contender depends on (the architecture and every kwarg, a kwarg of
        the learned parts included: equal identities are identical nominal terms, not the
        reverse), None without a nominal term: learned optimizers with equal ones share one."""
        if self.nominal_lr_key is None:
            return None
        return json.dumps([self.net.arch, self.net.config()], sort_keys=True, default=str)


def _fresh_net(arch: str, config: dict[str, Any]) -> lo.LearnedOptimizerNet:
    """``lo.create(arch, **config)`` at a fixed seed, without a draw from the caller's generator
    (the learned parts' init: unused by a nominal term, or the untrained row's)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return lo.create(arch, **config).eval()


def nominal_contenders(learned: Sequence[Learned]) -> dict[str, list[str]]:
    """Nominal contender -> the learned optimizers it is the nominal term of, the first of
    which builds it. Optimizers whose nominal terms are identical (``nominal_identity``: an
    ablation's variants, a checkpoint and its untrained self) share one, tuned once. Named
    ``nominal`` when there is one, else ``nominal:<first name>``."""
    groups: dict[str, list[str]] = {}
    for lrn in learned:
        if lrn.nominal_identity is not None:
            groups.setdefault(lrn.nominal_identity, []).append(lrn.name)
    several = len(groups) > 1
    return {f"{NOMINAL}:{names[0]}" if several else NOMINAL: names for names in groups.values()}


def resolve_learned(spec: str, name: str | None = None) -> Learned:
    """A pretrained name, a ``best.pt``/``last.pt``-style checkpoint or a run folder (its
    ``best.pt``, else ``last.pt``); ``untrained:SPEC``: that optimizer before meta-training."""
    if spec.startswith(UNTRAINED):
        base = resolve_learned(spec[len(UNTRAINED) :]).untrained()
        return base if name is None else replace(base, name=name)
    path = Path(spec)
    if spec in lo.available_pretrained():
        path = lo.wrapper.pretrained_path(spec)
    elif path.is_dir():
        candidates = [path / "best.pt", path / "last.pt"]
        found = [p for p in candidates if p.is_file()]
        if not found:
            raise ValueError(f"run folder {path} holds neither best.pt nor last.pt")
        path = found[0]
    elif not path.is_file():
        raise ValueError(
            f"{spec!r} is neither a pretrained name ({', '.join(lo.available_pretrained())}), "
            "a checkpoint file nor a run folder"
        )
    net, meta = _load(path)
    cfg = meta.get("config", {})
    return Learned(
        name=name or (spec if spec in lo.available_pretrained() else _label(path)),
        net=net.eval(),
        source=str(path),
        task=meta.get("task") or cfg.get("task", {}).get("name"),
        dataset=cfg.get("task", {}).get("dataset"),
        horizon=trained_horizon(cfg),
        batch_size=cfg.get("task", {}).get("batch_size"),
        variation=TaskVariation.from_mapping(cfg.get("task", {})),
    )


def trained_horizon(cfg: dict[str, Any]) -> int | None:
    """The horizon a suite's ``indist``/``long`` multiples refer to: ``schedule.horizon``, or,
    for one sampled from a range (``{min, max}``), the meta-validation horizon
    (``validation.steps``), the horizon on which ``best.pt`` was selected."""
    horizon = cfg.get("schedule", {}).get("horizon")
    if horizon is None:
        return None
    schedule = HorizonSchedule.parse(horizon)
    if schedule.min == schedule.max:
        return schedule.min
    return int(cfg.get("validation", {}).get("steps", VALIDATION_STEPS))


def _label(path: Path) -> str:
    return f"{path.parent.name}/{path.name}" if path.parent.name else path.name


def _load(path: Path) -> tuple[lo.LearnedOptimizerNet, dict]:
    """A learned-optimizer file (``best.pt``, pretrained), or a run checkpoint (``last.pt``)."""
    try:
        return lo.load_learned_optimizer(path)
    except ValueError as first:
        from l2o.optimizers import checkpoint_io
        from meta_train.training import checkpointing as ckpt

        try:
            run = ckpt.load_run_checkpoint(path)
        except ckpt.CheckpointError:
            raise first from None
        metadata = {"task": run["config"]["task"]["name"], "config": run["config"]}
        payload = {**run["lopt"], "metadata": metadata}  # the trainer embeds to_payload(lopt)
        return checkpoint_io.from_payload(payload, source=str(path))
