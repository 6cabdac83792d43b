"""The meta-training loop: epochs × runs × meta-steps, with validation, checkpoints and resume.

One *run* trains ``schedule.meta_batch`` fresh optimizees for ``schedule.horizon`` inner steps;
every ``unroll.length`` of them make one *meta-step* (a truncated-BPTT meta-gradient, clipped,
then one Adam step on the learned optimizer). The loop is written so that its whole state lives in
a few objects that the checkpoint captures (learned-optimizer weights, meta-Adam, inner state,
data samplers, RNGs, position, counters): a run killed at any moment and resumed from ``last.pt``
computes bit for bit what an uninterrupted run computes.

With ``task.family`` the meta-batch's slots train the family's member tasks instead of
``task.name`` (which validation and the meta-test keep using):
``meta_train.inner_loop.family_runner`` holds the members' optimizees, samplers and estimators
and combines their estimates.

Under torchrun each rank runs its slots of the meta-batch (``meta_train.training.rank_slots``), with
per-task runs and task families too, and every rank's slice goes into ``last.pt``. What the
checkpoint holds and how a run resumes from it is ``meta_train.training.run_state`` (``RunState``,
this class's base); how the run's parts are built from the config, ``meta_train.training.parts``.

Non-finite values never reach the learned optimizer: a meta-step whose inner losses, updates
(new optimizee state) or meta-gradient are not finite is skipped, the optimizees go back to the
state before it, and the event is counted; ``reliability.max_consecutive_nonfinite`` in a row
stop the run with :class:`NonFiniteError` after saving the last good state
(``meta_train.training.step_checks``). Held-out validation is ``meta_train.training.validation``.

At about 440 lines this module is over the project's ~400: what remains is the loop itself
(``train``, a run's start and end, ``meta_step`` with its skip and rollback), one sequence of
state changes that reads best in one place; every part that stands alone is in its own module.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

import l2o.optimizers as lo
from l2o.seeding import derive_seed
from l2o.tasks import Task
from l2o.training import data_seed
from meta_train.configuration.schema import MetaTrainConfig
from meta_train.estimators import make_estimator, meta_step_gradient
from meta_train.inner_loop.truncation import make_rotation
from meta_train.inner_loop.unroll import InnerState, init_inner_state
from meta_train.training import checkpointing as ckpt
from meta_train.training import distributed as dist
from meta_train.training.parts import (
    make_family,
    make_regularizer,
    make_task,
    rank_seeds,
    run_seeds,
    setup_environment,
)
from meta_train.training.rank_slots import RankSlots, place_estimator
from meta_train.training.run_state import Position, RunState
from meta_train.training.step_checks import agree_across_ranks, nonfinite_reason, result_scalars
from meta_train.training.tracking import Tracker
from meta_train.training.validation import validation_due, validation_score


class NonFiniteError(RuntimeError):
    """Too many consecutive non-finite meta-steps; the last good state is in ``last.pt``."""


@dataclass
class TrainOutcome:
    run_dir: Path
    last_checkpoint: Path
    best_checkpoint: Path | None
    best_val_loss: float
    counters: dict[str, int] = field(default_factory=dict)


StepFn = Callable[..., tuple[Any, InnerState]]
SYNC_CHECK_EVERY = 100  # meta-steps between two weight checks under torchrun (and every run's end)


class Trainer(RunState):
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
        """Why this meta-step must be skipped (``step_checks.nonfinite_reason``), or None; a
        method, so that a test can make every step fail."""
        return nonfinite_reason(result, new_inner)

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
        reduced = None  # the ranks' averaged numbers (torchrun)
        if dist.is_distributed():
            reason, reduced = self._reduce_across_ranks(reason, result)
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
            record.update(reduced or result_scalars(result))
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

    def _reduce_across_ranks(
        self, reason: str | None, result: Any
    ) -> tuple[str | None, dict[str, float] | None]:
        """Under torchrun: ``step_checks.agree_across_ranks``, its time kept for the log."""
        params = [p for p in self.lopt.parameters() if p.requires_grad]
        agreed, sums, self._sync_time = agree_across_ranks(reason, result, params, self.world_size)
        return agreed, sums

    def _validation_due(self) -> bool:
        return validation_due(self.cfg.validation, self.cfg.schedule, self.position)

    def validate(self) -> float:
        """The held-out validation score of the learned optimizer as it is now
        (``meta_train.training.validation``); every rank gets the same value."""
        return validation_score(self.lopt, self.task, self.data, self.cfg.validation, self.device)

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
