"""Meta-train a learned optimizer, then meta-test it against tuned baselines.

    python meta_train/run.py                                   # configs/meta_train/default.yaml
    python meta_train/run.py --config paper schedule.epochs=10 # a named config plus overrides
    python meta_train/run.py --config my.yaml --meta_optimizer.lr=3e-3   # the wandb-agent form
    python meta_train/run.py --resume runs/default-20261124-101500       # continue after a crash
    python meta_train/run.py --print-config --config relu_bn             # show the resolved config

Every setting is a dotted key of ``meta_train.configuration.schema.MetaTrainConfig``. The run
folder receives
``config.yaml``, ``metrics.jsonl``, ``last.pt`` (everything needed to resume exactly), ``best.pt``
(the learned optimizer chosen on held-out meta-validation, loadable with ``LearnedOptimizer``) and
``evaluation/`` (the ``indist`` and ``long`` suites of ``meta_train/evaluate.py``, quick: tables,
CSV, JSON and PNGs against baselines tuned for each reported criterion).

Exit codes: 0 done; 2 bad input or an unusable run folder, found before anything is written; 3
non-finite meta-steps stopped the run (or none succeeded); 74 a write failed mid-run (the last
checkpoint is intact); 75 another process holds the run folder; 130 interrupted.
"""

from __future__ import annotations

import sys
from pathlib import Path

# Run as a script (``python meta_train/run.py``), Python puts this folder first on sys.path, where
# its module names (config, trainer...) could shadow top-level packages: drop it, and fall back
# to the checkout's root when the project is not installed.
if __name__ == "__main__" and Path(sys.path[0]).resolve() == Path(__file__).resolve().parent:
    sys.path.pop(0)
    try:
        import meta_train  # noqa: F401
    except ImportError:
        sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import argparse
import contextlib
import copy
import os
import time

from l2o.data import CorruptDatasetError
from meta_train.configuration.engine import ConfigError
from meta_train.configuration.schema import (
    MetaTrainConfig,
    available_configs,
    config_from_dict,
    dump_yaml,
    load_config,
)
from meta_train.training import checkpointing as ckpt

EXIT_CONFIG = 2  # bad input, or a run folder that cannot be used: nothing was started
EXIT_NONFINITE = 3  # the run stopped on non-finite meta-steps (or none ever succeeded)
EXIT_IO = 74  # a write failed mid-run (disk full, read-only): the last checkpoint is intact
EXIT_BUSY = 75  # another process holds the run folder's lock
EXIT_INTERRUPTED = 130


def parse_args(argv: list[str] | None) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(
        prog="python meta_train/run.py",
        description="Meta-train a learned optimizer, then meta-test it. Extra arguments are config "
        "overrides, key=value or --key=value with dotted keys (e.g. meta_optimizer.lr=3e-3).",
    )
    parser.add_argument(
        "--config",
        default=None,
        help="a config name from configs/meta_train/ (default: 'default') or a YAML path",
    )
    parser.add_argument("--run-dir", default=None, help="the run folder (default: runs/NAME-TIME)")
    parser.add_argument("--resume", metavar="RUN_DIR", default=None, help="continue this run")
    parser.add_argument(
        "--print-config", action="store_true", help="print the resolved config and exit"
    )
    parser.add_argument("--list-configs", action="store_true", help="list named configs and exit")
    args, rest = parser.parse_known_args(argv)
    overrides = []
    for item in rest:
        if "=" not in item:
            parser.error(
                f"unrecognized argument {item!r}: overrides are key=value or --key=value "
                "(e.g. schedule.epochs=2)"
            )
        overrides.append(item)
    return args, overrides


def default_run_dir(cfg: MetaTrainConfig) -> Path:
    return Path("runs") / f"{cfg.name}-{time.strftime('%Y%m%d-%H%M%S')}"


def _error(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)


def _name_max(path: Path) -> int:
    """The longest file name the file system holding ``path`` (or its nearest ancestor) takes."""
    for folder in (path, *path.parents):
        if folder.exists():
            try:
                return os.pathconf(folder, "PC_NAME_MAX")
            except (OSError, ValueError):
                break
    return 255


def check_run_folder(run_dir: Path) -> None:
    """A run folder that cannot be used is refused before anything is written."""
    if run_dir.exists() and not run_dir.is_dir():
        raise ConfigError(f"run folder {run_dir} is a file, not a folder; choose another --run-dir")
    limit = _name_max(run_dir.absolute())
    for part in run_dir.parts:
        if len(os.fsencode(part)) > limit:
            raise ConfigError(
                f"run folder name {part[:32]!r}... is {len(os.fsencode(part))} bytes, over the "
                f"file system's limit of {limit}: shorten `name` or pass a shorter --run-dir"
            )
    if run_dir.is_dir():
        for name in ("config.yaml", "metrics.jsonl", ckpt.LAST, ckpt.BEST, ckpt.LOCK):
            if (run_dir / name).is_dir():
                raise ConfigError(
                    f"{run_dir / name} is a folder where the run writes a file; move it away"
                )
        if (run_dir / "meta_test").exists() and not (run_dir / "meta_test").is_dir():
            raise ConfigError(f"{run_dir / 'meta_test'} is a file where the run writes a folder")


def lock_run_folder(run_dir: Path, stack: contextlib.ExitStack) -> ckpt.RunLock | None:
    """Create ``run_dir`` if needed and hold its lock until ``stack`` closes (under torchrun
    rank 0 alone, the run folder's one writer: the other ranks get None)."""
    from meta_train.training.distributed import launch_rank

    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        if launch_rank() != 0:
            return None
        return stack.enter_context(ckpt.RunLock(run_dir))
    except OSError as exc:
        raise ConfigError(
            f"cannot write in run folder {run_dir}: {exc.strerror or exc} "
            f"({exc.filename or run_dir}); a run folder must be a writable folder"
        ) from None


def prepare(
    args: argparse.Namespace, overrides: list[str], stack: contextlib.ExitStack
) -> tuple[MetaTrainConfig, Path, dict | None, ckpt.RunLock | None]:
    """The validated config, the run folder, the resume payload and the run folder's lock
    (held until ``stack`` closes; None when only printing the config)."""
    payload, lock = None, None
    if args.resume:
        if args.config is not None:
            raise ConfigError("--resume continues a run with its own config; drop --config")
        run_dir = Path(args.resume)
        if not run_dir.exists():
            raise ConfigError(f"run folder {run_dir} does not exist")
        check_run_folder(run_dir)
        if not args.print_config:  # locked before reading: no other writer can change last.pt
            lock = lock_run_folder(run_dir, stack)
        if not (run_dir / ckpt.LAST).exists():
            raise ConfigError(
                f"{run_dir} holds no {ckpt.LAST}: the run stopped before its first "
                "checkpoint; start it again (without --resume)"
            )
        payload = ckpt.load_run_checkpoint(run_dir / ckpt.LAST)
        try:  # the saved config in today's schema, and the same plus the overrides
            saved = config_from_dict(copy.deepcopy(payload["config"]), saved=True).to_dict()
            cfg = config_from_dict(copy.deepcopy(payload["config"]), overrides, saved=True)
        except ConfigError as exc:
            raise ConfigError(f"{exc} (config of {run_dir / ckpt.LAST})") from None
        changes = ckpt.check_resume_config(saved, cfg.to_dict(), payload["position"])
        payload["config"] = saved
        for line in changes:
            print(f"resuming with a changed setting: {line}", file=sys.stderr)
    else:
        cfg = load_config(args.config or "default", overrides)
        if args.run_dir is not None:
            cfg.run_dir = args.run_dir
        run_dir = Path(cfg.run_dir) if cfg.run_dir else default_run_dir(cfg)
        check_run_folder(run_dir)
        _refuse_existing_run(run_dir)
    if args.print_config:
        return cfg, run_dir, payload, None
    from meta_train.training.parts import preflight

    preflight(cfg)
    if not args.resume:
        lock = lock_run_folder(run_dir, stack)
        _refuse_existing_run(run_dir)  # again, under the lock
    return cfg, run_dir, payload, lock


def _refuse_existing_run(run_dir: Path) -> None:
    if (run_dir / ckpt.LAST).exists():
        raise ConfigError(
            f"{run_dir} already holds a run (last.pt); continue it with --resume {run_dir} "
            "or choose another --run-dir"
        )


def main(argv: list[str] | None = None) -> int:
    args, overrides = parse_args(argv)
    if args.list_configs:
        print("\n".join(available_configs()))
        return 0
    with contextlib.ExitStack() as stack:
        try:
            cfg, run_dir, payload, lock = prepare(args, overrides, stack)
        except (ConfigError, ckpt.CheckpointError, CorruptDatasetError) as exc:
            _error(str(exc))
            return EXIT_CONFIG
        except ckpt.RunLockedError as exc:
            _error(str(exc))
            return EXIT_BUSY
        if args.print_config:
            print(dump_yaml(cfg), end="")
            return 0
        from meta_train.training import distributed

        with distributed.session(cfg.device):  # under torchrun; nothing in a plain run
            return _run(cfg, distributed.from_main(run_dir), payload, lock)


def _run(
    cfg: MetaTrainConfig, run_dir: Path, payload: dict | None, lock: ckpt.RunLock | None
) -> int:
    from l2o.io import atomic_write
    from meta_train.training.distributed import is_main
    from meta_train.training.trainer import NonFiniteError, Trainer

    if is_main():
        print(f"run folder: {run_dir}", file=sys.stderr)
    try:
        trainer = Trainer(cfg, run_dir, resume=payload, lock=lock)
    except (ckpt.CheckpointError, ValueError) as exc:
        _error(str(exc))
        return EXIT_CONFIG
    except OSError as exc:
        return _write_failed(exc, run_dir)
    try:
        if is_main():
            atomic_write(run_dir / "config.yaml", dump_yaml(cfg))  # once the resume checks passed
        outcome = trainer.train()
        if not is_main():
            return 0  # rank 0 reports and meta-tests
        if outcome.counters.get("nonfinite", 0) >= trainer.position.global_step:
            _error(
                f"every one of the run's {trainer.position.global_step} meta-steps was "
                f"non-finite and skipped, so the learned optimizer was never updated "
                f"(counts: {outcome.counters}); try a lower meta_optimizer.lr or see "
                f"{run_dir / 'metrics.jsonl'}"
            )
            return EXIT_NONFINITE
        validated = (
            f"best held-out validation loss {outcome.best_val_loss:.4g}"
            if cfg.validation.enabled
            else "no validation (validation.enabled=false)"
        )
        trainer.tracker.print(
            f"meta-training done: {validated}; "
            f"non-finite meta-steps skipped: {outcome.counters.get('nonfinite', 0)}"
        )
        results = None
        if cfg.meta_test.enabled:
            results = _meta_test(cfg, trainer)
    except NonFiniteError as exc:
        _error(str(exc))
        return EXIT_NONFINITE
    except OSError as exc:
        return _write_failed(exc, run_dir)
    except KeyboardInterrupt:
        _error(f"interrupted; continue from the last checkpoint with --resume {run_dir}")
        return EXIT_INTERRUPTED
    finally:
        trainer.close()
    print(f"results in {run_dir}:")
    print(f"  config          {run_dir / 'config.yaml'}")
    print(f"  metrics         {run_dir / 'metrics.jsonl'}")
    print(f"  last (resume)   {outcome.last_checkpoint}")
    if outcome.best_checkpoint is not None:
        print(f"  best            {outcome.best_checkpoint}")
    for kind, path in (results or {}).items():
        print(f"  evaluation {kind:<22}  {path}")
    return 0


def _write_failed(exc: OSError, run_dir: Path) -> int:
    """One line for a failed read or write; atomic writes left the previous files whole."""
    last = run_dir / ckpt.LAST
    kept = f"the last checkpoint {last} is intact" if last.exists() else "no checkpoint was written"
    _error(
        f"{exc.strerror or exc} ({exc.filename or run_dir}); {kept}: fix the cause, then "
        f"continue with --resume {run_dir}"
    )
    return EXIT_IO


def _meta_test(cfg: MetaTrainConfig, trainer) -> dict[str, Path]:
    """The fair evaluation of the run's checkpoint (evaluate.py; ``meta_test`` says which suites,
    by default ``indist`` + ``long`` in quick mode)."""
    from meta_train.evaluate import evaluate_run

    best = trainer.run_dir / ckpt.BEST
    use_best = cfg.meta_test.checkpoint == "best" and best.exists()
    checkpoint = best if use_best else trainer.run_dir / ckpt.LAST
    files, scalars = evaluate_run(
        checkpoint,
        trainer.run_dir / "evaluation",
        tuple(cfg.meta_test.suites),
        plot=cfg.meta_test.plot,
        log=trainer.tracker.print,
        quick=cfg.meta_test.quick,
        seeds=cfg.meta_test.seeds,
        baselines=tuple(cfg.meta_test.baselines),
    )
    trainer.tracker.summary(scalars)
    return files


if __name__ == "__main__":
    sys.exit(main())
