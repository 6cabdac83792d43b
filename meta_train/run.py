"""Meta-train a learned optimizer, then meta-test it against tuned baselines.

    python meta_train/run.py                                   # configs/meta_train/default.yaml
    python meta_train/run.py --config paper schedule.epochs=10 # a named config plus overrides
    python meta_train/run.py --config my.yaml --meta_optimizer.lr=3e-3   # the wandb-agent form
    python meta_train/run.py --resume runs/default-20261124-101500       # continue after a crash
    python meta_train/run.py --print-config --config relu_bn             # show the resolved config

Every setting is a dotted key of ``meta_train.config.MetaTrainConfig``. The run folder receives
``config.yaml``, ``metrics.jsonl``, ``last.pt`` (everything needed to resume exactly), ``best.pt``
(the learned optimizer chosen on held-out meta-validation, loadable with ``LearnedOptimizer``) and
``evaluation/`` (the ``indist`` and ``long`` suites of ``meta_train/evaluate.py``, quick: tables,
CSV, JSON and PNGs against baselines tuned for each reported criterion).
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
import time

from meta_train.config import (
    ConfigError,
    MetaTrainConfig,
    available_configs,
    config_from_dict,
    dump_yaml,
    load_config,
)

EXIT_CONFIG = 2
EXIT_NONFINITE = 3
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


def main(argv: list[str] | None = None) -> int:
    args, overrides = parse_args(argv)
    if args.list_configs:
        print("\n".join(available_configs()))
        return 0
    from meta_train import checkpointing as ckpt

    payload = None
    try:
        if args.resume:
            if args.config is not None:
                raise ConfigError("--resume continues a run with its own config; drop --config")
            run_dir = Path(args.resume)
            if run_dir.is_dir() and not (run_dir / ckpt.LAST).exists():
                raise ConfigError(
                    f"{run_dir} holds no {ckpt.LAST}: the run stopped before its first "
                    "checkpoint; start it again (without --resume)"
                )
            payload = ckpt.load_run_checkpoint(run_dir / ckpt.LAST)
            cfg = config_from_dict(payload["config"], overrides)
        else:
            cfg = load_config(args.config or "default", overrides)
            if args.run_dir is not None:
                cfg.run_dir = args.run_dir
            run_dir = Path(cfg.run_dir) if cfg.run_dir else default_run_dir(cfg)
            if (run_dir / ckpt.LAST).exists():
                raise ConfigError(
                    f"{run_dir} already holds a run (last.pt); continue it with --resume {run_dir} "
                    "or choose another --run-dir"
                )
        if args.print_config:
            print(dump_yaml(cfg), end="")
            return 0
        from meta_train.trainer import preflight

        preflight(cfg)
    except (ConfigError, ckpt.CheckpointError) as exc:
        _error(str(exc))
        return EXIT_CONFIG
    return _run(cfg, run_dir, payload)


def _run(cfg: MetaTrainConfig, run_dir: Path, payload: dict | None) -> int:
    from meta_train import checkpointing as ckpt
    from meta_train.trainer import NonFiniteError, Trainer

    print(f"run folder: {run_dir}", file=sys.stderr)
    try:
        trainer = Trainer(cfg, run_dir, resume=payload)
    except (ckpt.CheckpointError, ValueError) as exc:
        _error(str(exc))
        return EXIT_CONFIG
    (run_dir / "config.yaml").write_text(dump_yaml(cfg))  # once the resume checks have passed
    try:
        outcome = trainer.train()
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


def _meta_test(cfg: MetaTrainConfig, trainer) -> dict[str, Path]:
    """The fair evaluation of the run's checkpoint: ``indist`` + ``long``, quick (evaluate.py)."""
    from meta_train import checkpointing as ckpt
    from meta_train.evaluate import evaluate_run

    best = trainer.run_dir / ckpt.BEST
    use_best = cfg.meta_test.checkpoint == "best" and best.exists()
    checkpoint = best if use_best else trainer.run_dir / ckpt.LAST
    files, scalars = evaluate_run(
        checkpoint,
        trainer.run_dir / "evaluation",
        plot=cfg.meta_test.plot,
        log=trainer.tracker.print,
    )
    trainer.tracker.summary(scalars)
    return files


if __name__ == "__main__":
    sys.exit(main())
