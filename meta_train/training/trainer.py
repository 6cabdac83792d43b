"""The meta-training loop: epochs × runs × meta-steps, with validation, checkpoints and resume.

One *run* trains ``schedule.meta_batch`` fresh optimizees for ``schedule.horizon`` inner steps;
every ``unroll.length`` of them make one *meta-step* (a truncated-BPTT meta-gradient, clipped,
then one Adam step on the learned optimizer). The loop is written so that its whole state lives in
a few objects that the checkpoint captures (learned-optimizer weights, meta-Adam, inner state,
data samplers, RNGs, position, counters): a run killed at any moment and resumed from ``last.pt``
computes bit for bit what an uninterrupted run computes.

With ``task.family`` the meta-batch's slots train the family's member tasks instead of
``task.name`` (which validation and the meta-test keep using):
``meta_train.inner_loop.family_runner`` holds
the members' optimizees, samplers and estimators and combines their estimates.

Under torchrun each rank runs its slots of the meta-batch (``meta_train.training.rank_slots``),
with per-task
runs and task families too, and every rank's slice goes into ``last.pt``.

Non-finite values never reach the learned optimizer: a meta-step whose inner losses, updates
(new optimizee state) or meta-gradient are not finite is skipped, the optimizees go back to the
state before it, and the event is counted; ``reliability.max_consecutive_nonfinite`` in a row
stop the run with :class:`NonFiniteError` after saving the last good state.
"""

from __future__ import annotations

import copy
import math
import os
import random
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

import l2o.optimizers as lo
from l2o.data import DatasetNotFoundError
from l2o.optimizers import checkpoint_io
from l2o.seeding import derive_seed
from l2o.tasks import Task, get_task
from l2o.training import data_seed, train_optimizee
from meta_train.configuration.checks import member_task, validate_names
from meta_train.configuration.engine import ConfigError
from meta_train.configuration.schema import MetaTrainConfig, config_from_dict
from meta_train.configuration.sections import member_label
from meta_train.estimators import make_estimator, meta_step_gradient
from meta_train.evaluation.criteria import score
from meta_train.inner_loop.families import assign_members
from meta_train.inner_loop.family_runner import FamilyRunner
from meta_train.inner_loop.truncation import make_rotation
from meta_train.inner_loop.unroll import InnerState, init_inner_state
from meta_train.training import checkpointing as ckpt
from meta_train.training import distributed as dist
from meta_train.training.memory import check_fits
from meta_train.training.rank_slots import RankSlots, own_slice, pack, place_estimator
from meta_train.training.threads import resolve_threads
from meta_train.training.tracking import Tracker


class NonFiniteError(RuntimeError):
    """Too many consecutive non-finite meta-steps; the last good state is in ``last.pt``."""


@dataclass
class Position:
    """Where the loop is: the next meta-step to run is ``meta_step`` of run ``run`` of ``epoch``."""

    epoch: int = 0
    run: int = 0
    meta_step: int = 0
    global_step: int = 0  # meta-steps done so far, skipped ones included


@dataclass
class TrainOutcome:
    run_dir: Path
    last_checkpoint: Path
    best_checkpoint: Path | None
    best_val_loss: float
    counters: dict[str, int] = field(default_factory=dict)


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


def _all_finite(tensors) -> bool:
    return all(
        bool(torch.isfinite(t).all())
        for t in tensors
        if torch.is_tensor(t) and t.is_floating_point()
    )


def _state_tensors(state: Any):
    if torch.is_tensor(state):
        yield state
    elif isinstance(state, dict):
        for value in state.values():
            yield from _state_tensors(value)
    elif isinstance(state, list | tuple):
        for value in state:
            yield from _state_tensors(value)


def _to_cpu(obj: Any) -> Any:
    """``obj`` with every tensor on the CPU (to gather it through pickling)."""
    if torch.is_tensor(obj):
        return obj.cpu()
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(_to_cpu(v) for v in obj)
    return obj


StepFn = Callable[..., tuple[Any, InnerState]]
SYNC_CHECK_EVERY = 100  # meta-steps between two weight checks under torchrun (and every run's end)
SKIP_REASONS = ("inner_loss", "update", "meta_loss")  # checked before the meta-gradient's norm
COUNT_SUFFIX = "particle_steps"  # logged numbers that add up over the ranks (not averaged)


class Trainer:
    """Owns a run's state; :meth:`train` runs (or continues) it to the end.

    ``task`` defaults to the config's task; ``step_fn`` (same signature as
    ``meta_step_gradient``) to the run's estimator (``self.estimator``, made from
    ``unroll.estimator``); tests pass others to inject faults. ``on_meta_step(trainer, record)``
    is called after every meta-step (the soak benchmark samples memory through it).
    """

    def __init__(
        self,
        cfg: MetaTrainConfig,
        run_dir: str | Path,
        *,
        resume: dict | None = None,
        task: Task | None = None,
        step_fn: StepFn | None = None,
        on_meta_step: Callable[[Trainer, dict], None] | None = None,
        console: Callable[[str], None] | None = None,
        lock: ckpt.RunLock | None = None,
    ) -> None:
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.is_main = dist.is_main()  # rank 0 (or no process group): logs and checkpoints
        self.world_size = dist.world_size()
        self.slots = RankSlots.of_this_process(cfg.schedule.meta_batch)  # divisible?
        self.device = setup_environment(cfg)
        self.task = task if task is not None else make_task(cfg)
        # Loading the data first: a missing dataset fails here, before any meta-training work.
        self.data = self.task.load_data(self.device, root=cfg.data.root, download=cfg.data.download)
        self.lopt = lo.create(cfg.optimizer.name, **cfg.optimizer.kwargs).to(self.device)
        m = cfg.meta_optimizer
        self.meta_opt = torch.optim.Adam(
            self.lopt.parameters(), lr=m.lr, betas=m.betas, eps=m.eps, weight_decay=m.weight_decay
        )
        self.regularizer = make_regularizer(cfg, self.task, self.device)
        self.unroll_cfg = cfg.unroll
        self.estimator = make_estimator(cfg.unroll)
        # an estimator that cannot draw its noise by global slot draws it per rank instead
        self._noise_per_rank = not place_estimator(
            self.estimator, self.slots.owned, self.slots.total
        )
        if hasattr(self.estimator, "held_out_data"):  # es/pes with objective final_val
            self.estimator.held_out_data = self.data
        self.rotation = make_rotation(cfg, self.slots.owned) if cfg.per_task_runs else None
        self.family = make_family(cfg, self.device, self.task, self.data, self.slots.owned)
        if self.family is not None and step_fn is not None:
            raise ValueError("a task family runs its members' estimators: step_fn must be None")
        self.step_fn = step_fn or self._estimate
        self.on_meta_step = on_meta_step
        self.position = Position()
        self.inner: InnerState | None = None
        self.samplers: list | None = None
        self.counters: dict[str, int] = {}
        self.consecutive_nonfinite = 0
        self.best_val_loss = math.inf
        self.best_position: dict | None = None
        self._run_records: list[dict] = []  # this run's meta-step records, for the console
        metrics_bytes: int | None = 0  # a fresh run starts an empty metrics file
        wandb_id = None
        if resume is not None:
            metrics_bytes, wandb_id = self._restore(resume)
        rng = resume["rng"] if resume is not None else ckpt.rng_state()
        # One writer per run folder, from the first write (run.py passes the lock it holds).
        # Under torchrun rank 0 alone writes, so it alone locks; the other ranks take no lock.
        self._owns_lock = lock is None and self.is_main
        self.lock = lock if lock is not None or not self.is_main else ckpt.RunLock(self.run_dir)
        if self.is_main:
            if self._owns_lock:
                self.lock.acquire()
            if not self.lock.held or self.lock.folder.resolve() != self.run_dir.resolve():
                raise ValueError(f"the lock passed to Trainer is not held for {self.run_dir}")
            ckpt.remove_stale_temporaries(self.lock)
        self.tracker = Tracker(  # W&B may draw from the global RNGs: they are put back below
            self.run_dir,
            cfg.wandb,
            cfg.to_dict(),
            resume_bytes=metrics_bytes,
            wandb_id=wandb_id,
            console=console,
            active=self.is_main,
        )
        ckpt.set_rng_state(rng)
        self._sync_time = 0.0  # seconds in the meta-step's all-reduce (distributed runs)
        dist.check_in_sync(list(self.lopt.parameters()), "at the start")

    @property
    def run_active(self) -> bool:
        """Whether the optimizees of a run exist (else the next meta-step starts a run)."""
        return self.family.active if self.family is not None else self.inner is not None

    # -- checkpoint state -----------------------------------------------------------------------
    def _rank_state(self) -> dict[str, Any]:
        """What only this rank knows: its slots' optimizees, samplers, estimator state and task
        family members (``meta_train.training.rank_slots.SLICE_KEYS``)."""
        return {
            "inner": None if self.inner is None else self.inner.state_dict(),
            "samplers": None if self.samplers is None else [s.state_dict() for s in self.samplers],
            "estimator": self.estimator.state_dict(),
            "family": None if self.family is None else self.family.state_dict(),
        }

    def state_payload(self, ranks: list[dict] | None = None) -> dict[str, Any]:
        """The checkpoint; ``ranks``: every rank's :meth:`_rank_state` (rank 0's goes in the
        top-level keys as in a single-process run, the others' in ``ranks``)."""
        return {
            **pack(ranks if ranks is not None else [self._rank_state()]),
            "format": ckpt.FORMAT,
            "version": ckpt.VERSION,
            "config": self.cfg.to_dict(),
            "lopt": checkpoint_io.to_payload(self.lopt),
            "meta_optimizer": self.meta_opt.state_dict(),
            "rotation": None if self.rotation is None else self.rotation.state_dict(),
            "rng": ckpt.rng_state(),
            "world_size": self.world_size,
            "position": asdict(self.position),
            "counters": dict(self.counters),
            "consecutive_nonfinite": self.consecutive_nonfinite,
            "best": {"val_loss": self.best_val_loss, "position": self.best_position},
            "metrics_bytes": self.tracker.sync_point(),
            "wandb_id": self.tracker.wandb_id,
            "torch_version": str(torch.__version__),
        }

    def save_last(self) -> Path:
        """Write ``last.pt`` (rank 0; under torchrun every rank must call this together: it
        gathers the ranks' slices)."""
        path = self.run_dir / ckpt.LAST
        if not dist.is_distributed():
            return ckpt.atomic_save(self.state_payload(), path)
        ranks = dist.gather_to_main(_to_cpu(self._rank_state()))
        if ranks is not None:
            ckpt.atomic_save(self.state_payload(ranks), path)
        return path

    def _restore(self, payload: dict) -> tuple[int | None, str | None]:
        # the saved config in today's schema (new defaults, retired keys dropped)
        saved_cfg = config_from_dict(copy.deepcopy(payload["config"]), saved=True).to_dict()
        ckpt.check_resume_config(saved_cfg, self.cfg.to_dict(), payload["position"])
        self._restore_lopt(payload["lopt"])
        self.meta_opt.load_state_dict(payload["meta_optimizer"])
        m = self.cfg.meta_optimizer  # settings that may change on resume (e.g. a lower lr)
        for group in self.meta_opt.param_groups:
            group.update(lr=m.lr, betas=m.betas, eps=m.eps, weight_decay=m.weight_decay)
        self.position = Position(**payload["position"])
        self.counters = dict(payload["counters"])
        self.consecutive_nonfinite = int(payload["consecutive_nonfinite"])
        self.best_val_loss = float(payload["best"]["val_loss"])
        self.best_position = payload["best"]["position"]
        own, restart_run = own_slice(
            payload,
            self.slots,
            per_task_runs=self.rotation is not None,
            estimator=self.cfg.unroll.estimator,
        )
        if restart_run:
            self.position.meta_step = 0
        self.estimator.load_state_dict(own["estimator"])
        if self.family is not None and own["family"] is not None:
            self.family.load_state_dict(own["family"])
            if self.rotation is not None and self.family.active:
                self.rotation.load_state_dict(payload["rotation"])
        if own["inner"] is not None:
            self.inner = InnerState.from_state_dict(own["inner"], self.task, self.device)
            if self.rotation is not None:
                self.rotation.load_state_dict(payload["rotation"])
                self.samplers = self.rotation.samplers(self.data, self.task.batch_size)
            else:
                self.samplers = self._make_samplers(self.position.epoch, self.position.run)
            for sampler, state in zip(self.samplers, own["samplers"], strict=True):
                sampler.load_state_dict(state)
        return int(payload["metrics_bytes"]), payload.get("wandb_id")

    def _restore_lopt(self, saved: dict) -> None:
        """The checkpoint's learned-optimizer weights into ``self.lopt`` (which the meta-optimizer
        holds), checked by ``checkpoint_io.from_payload``: architecture, config and shapes."""
        if "format" not in saved:  # written before the payload came from checkpoint_io
            saved = {"format": checkpoint_io.FORMAT, "version": 1, "metadata": {}, **saved}
        source = "the checkpoint's learned optimizer"
        try:
            restored, _ = checkpoint_io.from_payload(saved, self.cfg.optimizer.name, source)
        except ValueError as exc:
            raise ckpt.CheckpointError(str(exc)) from None
        if restored.config() != self.lopt.config():
            raise ckpt.CheckpointError(
                f"{source} has config {restored.config()}, the run's optimizer "
                f"{self.lopt.config()} (optimizer.kwargs)"
            )
        self.lopt.load_state_dict(restored.state_dict())

    # -- the loop -------------------------------------------------------------------------------
    def _make_samplers(self, epoch: int, run: int) -> list:
        return [
            self.data.sampler(self.task.batch_size, data_seed(seed))
            for seed in rank_seeds(self.cfg, epoch, run)
        ]

    def _start_run(self) -> None:
        if self.rotation is not None:  # per-task runs: every task starts its first run
            self._rotate()
            return
        p = self.position
        if self.family is not None:  # run r of every slot draws its augmentation of run r
            slots = self.cfg.schedule.meta_batch
            index = p.epoch * self.cfg.schedule.runs_per_epoch + p.run
            seeds = run_seeds(self.cfg, p.epoch, p.run)
            self.family.restart(self.lopt, [True] * slots, seeds, [index] * slots)
            return
        seeds = rank_seeds(self.cfg, p.epoch, p.run)
        self.samplers = self._make_samplers(p.epoch, p.run)
        self.inner = init_inner_state(self.task, self.lopt, seeds, self.device)

    def _nonfinite_reason(self, result: Any, new_inner: InnerState) -> str | None:
        """The first failing check: ``inner_loss`` (some inner loss of the truncation, from a bad
        minibatch or an earlier bad update), ``update`` (losses finite but the new optimizee or
        optimizer state is not), ``meta_loss``; ``meta_grad`` is checked after clipping."""
        if not _all_finite([torch.as_tensor(result.inner_losses)]):
            return "inner_loss"
        if not _all_finite(_state_tensors(new_inner.state_dict())):
            return "update"
        finite = result.finite
        if torch.is_tensor(finite):
            finite = bool(finite.all())
        if not finite or not _all_finite([torch.as_tensor(result.meta_loss)]):
            return "meta_loss"
        return None

    def _estimator_seed(self) -> int:
        """This meta-step's estimator seed (see ``meta_train.estimators.Estimator``)."""
        seed = derive_seed(self.cfg.seed, "estimator", self.position.global_step)
        if self.world_size > 1 and self._noise_per_rank:  # else ES/PES rows by global slot
            seed = derive_seed(seed, "rank", dist.rank())
        return seed

    def _estimate(self, lopt, task, inner, samplers, cfg, regularizer):
        """The default ``step_fn``: the run's estimator, with this meta-step's seed."""
        return meta_step_gradient(
            lopt,
            task,
            inner,
            samplers,
            cfg,
            regularizer,
            estimator=self.estimator,
            seed=self._estimator_seed(),
        )

    def _rotate(self) -> None:
        """Per-task runs: restart the tasks whose run ended
        (``meta_train.inner_loop.truncation``)."""
        if self.family is not None:  # a restarted slot draws the augmentation of its new run
            clocks = self.rotation.clocks
            due = clocks.begin()
            self.family.restart(
                self.lopt, due, self.rotation.seeds(), list(clocks.runs), list(clocks.horizons)
            )
            return
        self.inner, self.samplers, _ = self.rotation.begin(
            self.task, self.lopt, self.inner, self.samplers, self.data, self.task.batch_size
        )

    def meta_step(self) -> dict[str, Any]:
        """One meta-step; returns its metric record. Skips (and counts) non-finite ones."""
        if self.rotation is not None:
            self._rotate()
        self.lopt.train()
        self.meta_opt.zero_grad(set_to_none=True)
        # a family: every member's estimate, weighted (meta_train.inner_loop.family_runner)
        if self.family is not None:
            result, reason = self.family.estimate(
                self.lopt, self._estimator_seed(), self._nonfinite_reason
            )
        else:
            assert self.inner is not None and self.samplers is not None
            backup = self.inner.state_dict()  # a copy, in case the step mutates the state in place
            result, new_inner = self.step_fn(
                self.lopt, self.task, self.inner, self.samplers, self.unroll_cfg, self.regularizer
            )
            reason = self._nonfinite_reason(result, new_inner)
        result_scalars = None
        if dist.is_distributed():
            reason, result_scalars = self._reduce_across_ranks(reason, result)
        grad_norm = math.nan
        if reason is None:
            params = [p for p in self.lopt.parameters() if p.grad is not None]
            clip = self.cfg.meta_optimizer.grad_clip_norm
            norm = torch.nn.utils.clip_grad_norm_(params, clip if clip is not None else math.inf)
            grad_norm = float(norm)
            if not math.isfinite(grad_norm):
                reason = "meta_grad"
        record: dict[str, Any] = {
            "epoch": self.position.epoch,
            "run": self.position.run,
            "meta_step": self.position.meta_step,
        }
        if reason is None:
            self.meta_opt.step()
            if self.family is not None:
                self.family.commit()
            else:
                self.inner = new_inner
            if self.rotation is not None:
                self.rotation.advance()
            self.consecutive_nonfinite = 0
            record.update(result_scalars or self._result_scalars(result))
            record["train/meta_grad_norm"] = grad_norm
            if dist.is_distributed():
                record["train/allreduce_s"] = self._sync_time
        else:
            self.meta_opt.zero_grad(set_to_none=True)
            if self.family is not None:
                self.family.rollback()
            else:
                self.inner = InnerState.from_state_dict(backup, self.task, self.device)
            self.consecutive_nonfinite += 1
            self.counters["nonfinite"] = self.counters.get("nonfinite", 0) + 1
            key = f"nonfinite_{reason}"
            self.counters[key] = self.counters.get(key, 0) + 1
            record["train/skipped"] = reason
        record["train/nonfinite_total"] = self.counters.get("nonfinite", 0)
        return record

    @staticmethod
    def _result_scalars(result: Any) -> dict[str, float]:
        """The logged numbers of one (finite) meta-step's result, this rank's slice."""
        losses = torch.as_tensor(result.inner_losses).detach().float()
        scalars = {
            "train/meta_loss": float(result.meta_loss),
            "train/inner_loss": float(losses.mean()),
            "train/inner_loss_last": float(losses[..., -1].mean()),
            "train/reg_loss": float(result.reg_loss) if result.reg_loss is not None else 0.0,
        }
        scalars.update({f"train/{k}": v for k, v in getattr(result, "metrics", {}).items()})
        return scalars

    def _reduce_across_ranks(
        self, reason: str | None, result: Any
    ) -> tuple[str | None, dict[str, float] | None]:
        """Under torchrun: one all-reduce averages the meta-gradient (before clipping) and the
        logged numbers over the ranks and tells every rank whether any rank's step was
        non-finite, so all skip together, with the first reason in :data:`SKIP_REASONS` order;
        counts (:data:`COUNT_SUFFIX`) are summed."""
        votes = [1.0 if reason == r else 0.0 for r in SKIP_REASONS]
        # Every rank sends the same keys (the estimator's metrics have fixed names); a skipping
        # rank's numbers may be NaN: the step is then skipped everywhere and nothing is logged.
        scalars = self._result_scalars(result)
        names = sorted(scalars)
        params = [p for p in self.lopt.parameters() if p.requires_grad]
        tic = time.perf_counter()
        votes, values = dist.reduce_meta_step(params, votes, [scalars[k] for k in names])
        self._sync_time = time.perf_counter() - tic
        agreed = next((r for r, v in zip(SKIP_REASONS, votes, strict=True) if v > 0.5), None)
        world = self.world_size
        return agreed, {
            k: v * world if k.endswith(COUNT_SUFFIX) else v
            for k, v in zip(names, values, strict=True)
        }

    def _validation_due(self) -> bool:
        v, s, p = self.cfg.validation, self.cfg.schedule, self.position
        if not v.enabled:
            return False
        runs_done = p.epoch * s.runs_per_epoch + p.run + 1
        last_run = runs_done == s.epochs * s.runs_per_epoch
        if v.every_runs:
            return runs_done % v.every_runs == 0 or last_run
        return p.run + 1 == s.runs_per_epoch

    def validate(self) -> float:
        """The ``validation.criterion`` (mean training loss, by default) of fresh held-out
        optimizees trained by the frozen optimizer, averaged over them (+inf if one diverged).

        Under torchrun the seeds are split over the ranks (seed i on rank i mod world) and the
        scores summed with one all-reduce: every rank gets the same value."""
        v = self.cfg.validation
        net = copy.deepcopy(self.lopt).eval()
        for param in net.parameters():
            param.requires_grad_(False)
        scores = []
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            for i in range(dist.rank(), v.seeds, self.world_size):
                result = train_optimizee(
                    self.task,
                    lambda params, net=net: lo.LearnedOptimizer(params, net),
                    v.steps,
                    seed=v.first_seed + i,
                    device=self.device,
                    data=self.data,
                    evaluate_test=False,
                )
                scores.append(float(score(v.criterion, result.train_losses.unsqueeze(0))[0]))
        total, count = dist.sum_across([sum(scores), len(scores)])
        return total / count

    def save_best(self, val_loss: float) -> Path:
        path = self.run_dir / ckpt.BEST
        if not self.is_main:
            return path
        meta = {
            "val_loss": val_loss,
            "position": asdict(self.position),
            "task": self.cfg.task.name,
            "config": self.cfg.to_dict(),
        }
        return lo.save_learned_optimizer(path, self.lopt, metadata=meta)

    def train(self) -> TrainOutcome:
        cfg, s = self.cfg, self.cfg.schedule
        steps_per_run = cfg.meta_steps_per_run
        total = s.epochs * s.runs_per_epoch * steps_per_run
        bar = tqdm(
            total=total,
            initial=self.position.global_step,
            disable=not (cfg.logging.progress and self.is_main),
            desc="meta-train",
            dynamic_ncols=True,
        )
        try:
            while self.position.epoch < s.epochs:
                if not self.run_active:
                    self._start_run()
                tic = time.perf_counter()
                record = self.meta_step()
                record["train/inner_steps_per_s"] = (
                    cfg.unroll.length * s.meta_batch / (time.perf_counter() - tic)
                )
                self._run_records.append(record)
                self.position.meta_step += 1
                self.position.global_step += 1
                bar.update(1)
                if "train/meta_loss" in record:
                    bar.set_postfix(meta_loss=f"{record['train/meta_loss']:.4g}")
                step = self.position.global_step
                if step % cfg.logging.every == 0 or "train/skipped" in record:
                    self.tracker.log(record, step)
                if self.on_meta_step is not None:
                    self.on_meta_step(self, record)
                if self.position.meta_step == steps_per_run or step % SYNC_CHECK_EVERY == 0:
                    dist.check_in_sync(list(self.lopt.parameters()), f"after meta-step {step}")
                if self.position.meta_step == steps_per_run:
                    self._finish_run(step)
                    self.save_last()
                elif step % cfg.checkpoint.every == 0:
                    self.save_last()
                if self.consecutive_nonfinite >= cfg.reliability.max_consecutive_nonfinite:
                    self._stop_nonfinite(record)
        finally:
            bar.close()
        last = self.save_last()
        self.tracker.summary({"best_val_loss": self.best_val_loss, **self.counters})
        best = self.run_dir / ckpt.BEST
        return TrainOutcome(
            self.run_dir,
            last,
            best if best.exists() else None,
            self.best_val_loss,
            dict(self.counters),
        )

    def _finish_run(self, step: int) -> None:
        self._print_run_summary()
        if self._validation_due():
            val_loss = self.validate()
            improved = val_loss < self.best_val_loss
            if improved:
                self.best_val_loss = val_loss
                self.best_position = asdict(self.position)
                self.save_best(val_loss)
            self.tracker.log(
                {
                    "epoch": self.position.epoch,
                    "run": self.position.run,
                    "val/loss": val_loss,
                    "val/best_loss": self.best_val_loss,
                    "val/improved": improved,
                },
                step,
                console=True,
            )
        p = self.position
        if self.rotation is None:  # per-task runs carry their optimizees over
            self.inner, self.samplers = None, None
            if self.family is not None:
                self.family.end_run()
        p.meta_step = 0
        p.run += 1
        if p.run == self.cfg.schedule.runs_per_epoch:
            p.run = 0
            p.epoch += 1

    def _print_run_summary(self) -> None:
        """One console line per run (the tqdm bar shows the live meta-loss)."""
        records, self._run_records = self._run_records, []
        done = [r for r in records if "train/meta_loss" in r]
        p, s = self.position, self.cfg.schedule
        text = f"epoch {p.epoch + 1}/{s.epochs} run {p.run + 1}/{s.runs_per_epoch}:"
        if done:
            mean = sum(r["train/meta_loss"] for r in done) / len(done)
            text += (
                f" meta-loss {mean:.4g}, last inner loss {done[-1]['train/inner_loss_last']:.4g}"
            )
        skipped = len(records) - len(done)
        if skipped:
            text += f", {skipped} non-finite meta-step(s) skipped"
        self.tracker.print(text)

    def _stop_nonfinite(self, record: dict) -> None:
        path = self.save_last()  # the optimizees are back at their last good state
        n = self.consecutive_nonfinite
        raise NonFiniteError(
            f"{n} consecutive meta-steps were non-finite (last: {record.get('train/skipped')} at "
            f"epoch {record['epoch']}, run {record['run']}, meta-step {record['meta_step']}); "
            f"stopped. The last good state is in {path} (resume with --resume {self.run_dir}, "
            "e.g. with a lower meta_optimizer.lr; other changes need a new run); counts: "
            f"{self.counters}"
        )

    def close(self) -> None:
        try:
            self.tracker.close()
        finally:
            if self._owns_lock:
                self.lock.release()
