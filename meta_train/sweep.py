"""W&B sweeps over meta-training, run by a W&B server or locally without one.

    python meta_train/sweep.py configs/sweeps/meta_lr.yaml --check          # offline validation
    python meta_train/sweep.py configs/sweeps/meta_lr.yaml --count 12       # run here, no server
    python meta_train/sweep.py configs/sweeps/meta_lr.yaml --count 12 --config tiny \\
        schedule.horizon=40                                   # the same sweep on a smaller budget
    python meta_train/sweep.py configs/sweeps/meta_lr.yaml --project l2o    # create on W&B
    python meta_train/sweep.py configs/sweeps/meta_lr.yaml --project l2o --count 5  # and run 5
    wandb agent ENTITY/PROJECT/SWEEP_ID      # more agents, on any machine, from the repo root

A sweep file is a W&B sweep definition whose ``program`` is ``meta_train/run.py``; every
``parameters`` key is a dotted config key, which the agent passes as ``--key=value`` (the form
``run.py`` accepts). ``--check`` builds the config for every listed value (and both ends of each
range) through the same parser ``run.py`` uses, so a typo or an out-of-range value fails here,
not hours later on an agent.

Without ``--project`` the sweep runs here, with Optuna as the engine (W&B's own engine, the
``sweeps`` package, requires numpy < 2): ``grid`` enumerates the values with Optuna's GridSampler,
``random`` samples with its RandomSampler and ``bayes`` with its Gaussian-process GPSampler (W&B's
bayes is a GP too). Each trial runs the sweep's ``command`` with the macros filled in as ``wandb
agent`` fills them (the same ``--key=value`` arguments, W&B's own formatter), plus ``--run-dir``
into the sweep folder; its score is what W&B's summary holds: the run's ``summary.json`` value
(``best_val_loss``), else the metric's last value in ``metrics.jsonl``. A trial whose config asks
for W&B ``online`` logs ``offline`` into its run folder instead (``wandb sync`` later);
``$WANDB_MODE``, when set, wins. The study lives in ``study.db`` (SQLite) in the sweep folder: the
same command continues an interrupted sweep (``--count`` is the sweep's total), an interrupted
trial resuming from its last checkpoint. The sweep ends with ``ranking.csv`` (also printed) and
``metric_vs_params.png`` in the folder.

Killed anywhere, the same command ends as an uninterrupted sweep would: trials die with the
sweep (``meta_train.sweeps.process``), a folder still held by another process is waited for, a
checkpoint is continued only by the trial whose config made it (``meta_train.sweeps.folders``;
others are moved aside), and the n-th point of a random or bayes sweep depends on ``--seed`` and
n alone (``meta_train.sweeps.sampler``). ``early_terminate`` needs the W&B server: here it is
ignored, with a warning. The engine is ``meta_train.sweeps``; this file is its command line.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __name__ == "__main__" and Path(sys.path[0]).resolve() == Path(__file__).resolve().parent:
    sys.path.pop(0)  # see run.py: this folder's module names must not shadow packages
    try:
        import meta_train  # noqa: F401
    except ImportError:
        sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import argparse
import shutil
import subprocess
from typing import Any

from meta_train.configuration.engine import ConfigError
from meta_train.sweeps.engine import run_local
from meta_train.sweeps.spec import (
    check_sweep,
    early_terminate_ignored,
    grid_size,
    load_sweep,
    parse_parameter,
)

EXIT_CONFIG = 2


def _checked(sweep: dict[str, Any], configs: list) -> str:
    """What --check validated, in words (a grid's size counted, never enumerated)."""
    text = f"{len(configs)} configurations checked"
    if sweep["method"] == "grid":
        parameters = [parse_parameter(k, v) for k, v in sweep["parameters"].items()]
        text += f" (a grid of {grid_size(parameters):,} points)"
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python meta_train/sweep.py",
        description=__doc__.split("\n")[0]
        + " Extra key=value arguments are config overrides added to every trial's command.",
    )
    parser.add_argument("sweep", help="a sweep YAML file (configs/sweeps/*.yaml)")
    parser.add_argument("--check", action="store_true", help="validate offline and exit")
    parser.add_argument("--project", default=None, help="create the sweep on W&B in this project")
    parser.add_argument("--entity", default=None, help="W&B entity (default: your default)")
    parser.add_argument("--count", type=int, default=0, help="trials to run (here: in total)")
    parser.add_argument(
        "--sweep-dir", default=None, help="local: the sweep folder (default: runs/sweeps/NAME)"
    )
    parser.add_argument("--config", default=None, help="local: replace the command's --config")
    parser.add_argument("--seed", type=int, default=0, help="local: the sampler's seed (0)")
    args, overrides = parser.parse_known_args(argv)
    bad = [item for item in overrides if "=" not in item]
    if bad:
        parser.error(f"unrecognized arguments {bad}: overrides are key=value")
    if args.count < 0:
        parser.error("--count must be >= 0")
    try:
        sweep = load_sweep(args.sweep)
        configs = check_sweep(sweep, args.config, overrides)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    print(f"{args.sweep}: valid; {_checked(sweep, configs)}", file=sys.stderr)
    warning = early_terminate_ignored(sweep) if args.project is None else None
    if warning:
        print(warning, file=sys.stderr)
    if args.check:
        return 0
    if args.project is None:
        name = Path(args.sweep).stem
        folder = Path(args.sweep_dir) if args.sweep_dir else Path("runs") / "sweeps" / name
        try:
            return run_local(sweep, name, folder, args.count, args.config, overrides, args.seed)
        except ConfigError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return EXIT_CONFIG
    if args.config is not None or overrides:
        print("error: --config and overrides apply to local sweeps only", file=sys.stderr)
        return EXIT_CONFIG
    import wandb

    sweep_id = wandb.sweep(sweep=sweep, project=args.project, entity=args.entity)
    entity = args.entity or wandb.Api().default_entity
    path = f"{entity}/{args.project}/{sweep_id}"
    print(f"created sweep {path}; run agents from the repository root with:\n  wandb agent {path}")
    if args.count > 0:
        wandb_cli = shutil.which("wandb") or "wandb"
        return subprocess.call([wandb_cli, "agent", "--count", str(args.count), path])
    return 0


if __name__ == "__main__":
    sys.exit(main())
