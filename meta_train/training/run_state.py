"""A run's state in its checkpoint, and exact resume: what ``last.pt`` holds (learned-optimizer
weights, meta-Adam, every rank's slice of optimizees, samplers, estimator and family state, RNGs,
position, counters), how it is written (under torchrun rank 0 gathers the ranks' slices,
``meta_train.training.rank_slots``) and how a resumed run takes it back, its config checked
against the saved one first (``meta_train.training.checkpointing.check_resume_config``).

``RunState`` is the part of ``Trainer`` that owns this; the loop itself is
``meta_train.training.trainer``."""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from l2o.optimizers import checkpoint_io
from meta_train.configuration.schema import config_from_dict
from meta_train.inner_loop.unroll import InnerState
from meta_train.training import checkpointing as ckpt
from meta_train.training import distributed as dist
from meta_train.training.rank_slots import own_slice, pack


@dataclass
class Position:
    """Where the loop is: the next meta-step to run is ``meta_step`` of run ``run`` of ``epoch``."""

    epoch: int = 0
    run: int = 0
    meta_step: int = 0
    global_step: int = 0  # meta-steps done so far, skipped ones included


def to_cpu(obj: Any) -> Any:
    """``obj`` with every tensor on the CPU (to gather it through pickling)."""
    if torch.is_tensor(obj):
        return obj.cpu()
    if isinstance(obj, dict):
        return {k: to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(to_cpu(v) for v in obj)
    return obj


class RunState:
    """The checkpoint side of :class:`meta_train.training.trainer.Trainer`, which sets the
    attributes these methods read (``cfg``, ``run_dir``, ``lopt``, ``meta_opt``, ``inner``,
    ``samplers``, ``estimator``, ``family``, ``rotation``, ``position``, ``tracker``...)."""

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
        ranks = dist.gather_to_main(to_cpu(self._rank_state()))
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
