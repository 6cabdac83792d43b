"""What the sweep tests share: a stand-in for run.py that trains nothing (imported by the test
modules: their folder is on ``sys.path`` under pytest's default import mode)."""

from __future__ import annotations

import json
import math
from pathlib import Path

from meta_train.configuration.schema import load_config
from meta_train.run import EXIT_BUSY, parse_args
from meta_train.sweeps.spec import PROGRAM
from meta_train.training import checkpointing as ckpt


def command_config(command: list[str]):
    """The config and run folder ``run.py`` would use for ``command`` (fresh or --resume)."""
    args, overrides = parse_args(command[command.index(PROGRAM) + 1 :])
    if args.resume:
        run_dir = Path(args.resume)
        return ckpt.load_run_checkpoint(run_dir / ckpt.LAST)["config"], run_dir
    cfg = load_config(args.config or "default", overrides)
    cfg.run_dir = args.run_dir
    return cfg.to_dict(), Path(args.run_dir)


def write_checkpoint(run_dir: Path, config: dict) -> None:
    """A ``last.pt`` of ``config`` (the entries ``load_run_checkpoint`` requires)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    payload = {"format": ckpt.FORMAT, "version": ckpt.VERSION, "config": config}
    payload.update({key: {} for key in ("lopt", "meta_optimizer", "rng", "position")})
    ckpt.atomic_save(payload, run_dir / ckpt.LAST)


def fake_metric(lr: float) -> float:
    return abs(math.log10(lr) + 2.0)


def fake_run(run_dir: Path, config: dict) -> None:
    """What a finished run of ``config`` leaves: its checkpoint and a metric of its lr."""
    write_checkpoint(run_dir, config)
    record = {"step": 1, "val/best_loss": fake_metric(config["meta_optimizer"]["lr"])}
    (run_dir / "metrics.jsonl").write_text(json.dumps(record) + "\n")


def fake_execute(calls: list, interrupt_at: int | None = None):
    """Stands in for run.py: checkpoints its config and logs a metric of its lr (no training);
    a resumed run keeps its checkpoint's config, as run.py does."""

    def execute(command, env, log_path):
        calls.append(command)
        if interrupt_at is not None and len(calls) == interrupt_at:
            raise KeyboardInterrupt
        Path(log_path).parent.mkdir(parents=True, exist_ok=True)
        with open(log_path, "a") as log:
            config, run_dir = command_config(command)
            run_dir.mkdir(parents=True, exist_ok=True)
            try:
                with ckpt.RunLock(run_dir):
                    fake_run(run_dir, config)
            except ckpt.RunLockedError as exc:
                log.write(f"error: {exc}\n")
                return EXIT_BUSY
            log.write(f"fake run of {run_dir}\n")
        return 0

    return execute
