"""What the meta-training tests share: a run that crashes after a given meta-step (imported by
the test modules: their folder is on ``sys.path`` under pytest's default import mode)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path


class Crash(Exception):
    """Raised from the trainer's ``on_meta_step`` hook: the process 'dies' after that step's
    work and before its checkpoint."""


def train_until_crash(
    cfg,
    run_dir: Path,
    crash_after: int | None = None,
    resume: dict | None = None,
    on_meta_step: Callable | None = None,
) -> None:
    """Train ``cfg`` in ``run_dir`` (resuming from ``resume``), raising ``Crash`` after global
    meta-step ``crash_after`` (None: to the end); ``on_meta_step(trainer, record)`` sees every
    step first. The trainer is always closed."""
    from meta_train.training.trainer import Trainer

    def hook(trainer, record):
        if on_meta_step is not None:
            on_meta_step(trainer, record)
        if trainer.position.global_step == crash_after:
            raise Crash

    trainer = Trainer(cfg, run_dir, resume=resume, on_meta_step=hook)
    try:
        trainer.train()
    except Crash:
        pass
    finally:
        trainer.close()
