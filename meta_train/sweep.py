"""W&B sweeps over meta-training: validate a sweep file offline, create it, launch agents.

    python meta_train/sweep.py configs/sweeps/meta_lr.yaml --check          # offline validation
    python meta_train/sweep.py configs/sweeps/meta_lr.yaml --project l2o    # create; prints the id
    python meta_train/sweep.py configs/sweeps/meta_lr.yaml --project l2o --count 5  # and run 5
    wandb agent ENTITY/PROJECT/SWEEP_ID      # more agents, on any machine, from the repo root

A sweep file is a W&B sweep definition whose ``program`` is ``meta_train/run.py``; every
``parameters`` key is a dotted config key, which the agent passes as ``--key=value`` (the form
``run.py`` accepts). ``--check`` builds the config for every listed value (and both ends of each
range) through the same parser ``run.py`` uses, so a typo or an out-of-range value fails here,
not hours later on an agent. Creating a sweep and running agents need ``wandb login`` and a
network; checking does not.
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
import itertools
import shutil
import subprocess
from typing import Any

import yaml

from meta_train.config import (
    ConfigError,
    MetaTrainConfig,
    load_config,
    validate_names,
)

PROGRAM = "meta_train/run.py"
METHODS = ("grid", "random", "bayes")
RANGE_KEYS = ("min", "max")


def load_sweep(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"sweep file {path} does not exist")
    try:
        sweep = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(sweep, dict):
        raise ConfigError(f"{path}: a sweep definition is a mapping")
    return sweep


def agent_arg(key: str, value: Any) -> str:
    """The argument ``wandb agent`` passes for one parameter (its ``${args}`` form)."""
    return f"--{key}={value}"


def _command_settings(sweep: dict[str, Any]) -> tuple[str, list[str]]:
    """The base config name and the fixed overrides written in the sweep's ``command``."""
    command = [str(c) for c in sweep.get("command", [])]
    base, fixed, i = "default", [], 0
    while i < len(command):
        chunk = command[i]
        if chunk == "--config" and i + 1 < len(command):
            base, i = command[i + 1], i + 2
            continue
        if chunk.startswith("--config="):
            base = chunk.split("=", 1)[1]
        elif "=" in chunk and not chunk.startswith("${"):
            fixed.append(chunk)
        i += 1
    return base, fixed


def _candidate_values(key: str, spec: Any) -> list[Any]:
    if not isinstance(spec, dict):
        raise ConfigError(f"sweep parameter {key!r} must be a mapping (values:, value:, min/max:)")
    if "values" in spec:
        if not isinstance(spec["values"], list) or not spec["values"]:
            raise ConfigError(f"sweep parameter {key!r}: values must be a non-empty list")
        return list(spec["values"])
    if "value" in spec:
        return [spec["value"]]
    if all(k in spec for k in RANGE_KEYS):
        low, high = spec["min"], spec["max"]
        if not low < high:
            raise ConfigError(f"sweep parameter {key!r}: min ({low}) must be below max ({high})")
        return [low, high]
    raise ConfigError(f"sweep parameter {key!r} needs values:, value: or min: and max:")


def check_sweep(sweep: dict[str, Any]) -> list[MetaTrainConfig]:
    """Every config the sweep can produce at its listed values and range ends, validated.

    Grid sweeps are checked on their full product (they are small by nature); other methods one
    parameter at a time on top of the base config.
    """
    if sweep.get("program") != PROGRAM:
        raise ConfigError(f"sweep program must be {PROGRAM!r}, got {sweep.get('program')!r}")
    if sweep.get("method") not in METHODS:
        raise ConfigError(f"sweep method must be one of {METHODS}, got {sweep.get('method')!r}")
    metric = sweep.get("metric")
    if sweep["method"] == "bayes" and not (isinstance(metric, dict) and metric.get("name")):
        raise ConfigError("a bayes sweep needs metric: {name: ..., goal: minimize|maximize}")
    if isinstance(metric, dict) and metric.get("goal", "minimize") not in ("minimize", "maximize"):
        raise ConfigError(f"metric.goal must be minimize or maximize, got {metric.get('goal')!r}")
    params = sweep.get("parameters")
    if not isinstance(params, dict) or not params:
        raise ConfigError("a sweep needs a non-empty parameters: mapping")
    if "${args}" not in [str(c) for c in sweep.get("command", ["${args}"])]:
        raise ConfigError("the sweep's command must end with ${args} (the swept --key=value)")
    base, fixed = _command_settings(sweep)
    candidates = {key: _candidate_values(key, spec) for key, spec in params.items()}
    if sweep["method"] == "grid":
        combos = [
            dict(zip(candidates, values, strict=True))
            for values in itertools.product(*candidates.values())
        ]
    else:
        combos = [{key: value} for key, values in candidates.items() for value in values]
    configs = []
    for combo in combos:
        args = [agent_arg(k, v) for k, v in combo.items()]
        try:
            cfg = load_config(base, fixed + args)
            validate_names(cfg)
        except ConfigError as exc:
            raise ConfigError(f"sweep parameters {combo}: {exc}") from None
        configs.append(cfg)
    return configs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python meta_train/sweep.py", description=__doc__.split("\n")[0]
    )
    parser.add_argument("sweep", help="a sweep YAML file (configs/sweeps/*.yaml)")
    parser.add_argument("--check", action="store_true", help="validate offline and exit")
    parser.add_argument("--project", default=None, help="W&B project (default: the config's)")
    parser.add_argument("--entity", default=None, help="W&B entity (default: your default)")
    parser.add_argument("--count", type=int, default=0, help="then run this many trials here")
    args = parser.parse_args(argv)
    try:
        sweep = load_sweep(args.sweep)
        configs = check_sweep(sweep)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"{args.sweep}: valid; {len(configs)} configurations checked", file=sys.stderr)
    if args.check:
        return 0
    import wandb

    project = args.project or configs[0].wandb.project
    sweep_id = wandb.sweep(sweep=sweep, project=project, entity=args.entity)
    entity = args.entity or wandb.Api().default_entity
    path = f"{entity}/{project}/{sweep_id}"
    print(f"created sweep {path}; run agents from the repository root with:\n  wandb agent {path}")
    if args.count > 0:
        wandb_cli = shutil.which("wandb") or "wandb"
        return subprocess.call([wandb_cli, "agent", "--count", str(args.count), path])
    return 0


if __name__ == "__main__":
    sys.exit(main())
