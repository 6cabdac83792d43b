"""What a sweep file means: its parameters, its search space and the commands its trials run
(``meta_train/sweep.py`` runs them; ``meta_train/sweeps/report.py`` ranks them).

A sweep file is a W&B sweep definition whose ``program`` is ``meta_train/run.py``; every
``parameters`` key is a dotted config key, passed as ``--key=value``. ``check_sweep`` builds the
config for every listed value (and both ends of each range) through ``run.py``'s parser.
"""

from __future__ import annotations

import itertools
import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from meta_train.configuration.checks import validate_names
from meta_train.configuration.engine import ConfigError
from meta_train.configuration.schema import MetaTrainConfig, load_config
from meta_train.sweeps.metrics import check_metric

PROGRAM = "meta_train/run.py"
METHODS = ("grid", "random", "bayes")
RANGE_KEYS = ("min", "max")
DEFAULT_COMMAND = ["${env}", "${interpreter}", "${program}", "${args}"]  # W&B's default
# The macros of the command that ``wandb agent`` fills with the trial's arguments.
ARG_MACROS = ("args", "args_no_hyphens", "args_no_boolean_flags", "args_json", "args_no_equals")
# W&B distributions that run here; normal-type ones (unbounded) need the W&B server.
RANGE_DISTRIBUTIONS = ("uniform", "int_uniform", "log_uniform_values", "log_uniform", "q_uniform")


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


# --------------------------------------------------------------------------------------------
# The sweep's parameters and command


@dataclass(frozen=True)
class Parameter:
    """One ``parameters`` entry: a fixed ``value``, a list of ``values``, or a range."""

    key: str
    values: list[Any] = field(default_factory=list)  # fixed: one value; choice: the candidates
    low: float | None = None  # range only
    high: float | None = None
    integer: bool = False
    log: bool = False
    step: float | None = None

    @property
    def fixed(self) -> bool:
        return self.low is None and len(self.values) == 1

    @property
    def is_range(self) -> bool:
        return self.low is not None

    def ends(self) -> list[Any]:
        """The values to validate: every candidate, or both ends of the range."""
        return list(self.values) if not self.is_range else [self.low, self.high]


def parse_parameter(key: str, spec: Any) -> Parameter:
    """A sweep parameter as W&B reads it (the distribution defaults included)."""
    if not isinstance(spec, dict):
        raise ConfigError(f"sweep parameter {key!r} must be a mapping (values:, value:, min/max:)")
    if "values" in spec:
        if not isinstance(spec["values"], list) or not spec["values"]:
            raise ConfigError(f"sweep parameter {key!r}: values must be a non-empty list")
        return Parameter(key, list(spec["values"]))
    if "value" in spec:
        return Parameter(key, [spec["value"]])
    if not all(k in spec for k in RANGE_KEYS):
        raise ConfigError(f"sweep parameter {key!r} needs values:, value: or min: and max:")
    low, high = spec["min"], spec["max"]
    for name, value in (("min", low), ("max", high)):
        _require_number(key, name, value)
    if not low < high:
        raise ConfigError(f"sweep parameter {key!r}: min ({low}) must be below max ({high})")
    both_int = isinstance(low, int) and isinstance(high, int)
    distribution = spec.get("distribution", "int_uniform" if both_int else "uniform")
    if distribution not in RANGE_DISTRIBUTIONS:
        raise ConfigError(
            f"sweep parameter {key!r}: distribution {distribution!r} is not one of "
            f"{', '.join(RANGE_DISTRIBUTIONS)} (others need the W&B server: --project)"
        )
    if distribution == "int_uniform" and not both_int:
        raise ConfigError(f"sweep parameter {key!r}: int_uniform needs integer min and max")
    if distribution == "log_uniform_values" and low <= 0:
        raise ConfigError(f"sweep parameter {key!r}: log_uniform_values needs min > 0")
    if distribution == "log_uniform":  # W&B: exp(U(min, max)), i.e. log-uniform in [e^min, e^max]
        return Parameter(key, low=math.exp(low), high=math.exp(high), log=True)
    step = None
    if distribution == "q_uniform":
        step = _quantum(key, spec.get("q", 1.0), high - low)
    return Parameter(
        key,
        low=low,
        high=high,
        integer=distribution == "int_uniform",
        log=distribution == "log_uniform_values",
        step=step,
    )


def _require_number(key: str, name: str, value: Any) -> None:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return
    hint = ""
    if isinstance(value, str):
        try:
            float(value)
            hint = " (YAML reads a number like 1e-3 as text: write 1.0e-3)"
        except ValueError:
            pass
    raise ConfigError(
        f"sweep parameter {key!r}: {name} must be a finite number, got {value!r}{hint}"
    )


def _quantum(key: str, q: Any, span: float) -> float:
    """q_uniform's step: a positive number no larger than the range (else every trial would get
    the minimum)."""
    _require_number(key, "q", q)
    if q <= 0:
        raise ConfigError(f"sweep parameter {key!r}: q must be positive, got {q!r}")
    if q > span:
        raise ConfigError(
            f"sweep parameter {key!r}: q ({q}) is larger than max - min ({span}): every trial "
            "would get min; use a smaller q"
        )
    return float(q)


def command_template(
    sweep: dict[str, Any], config: str | None = None, overrides: list[str] | tuple = ()
) -> list[str]:
    """The sweep's ``command`` (W&B's default when absent), its ``--config`` replaced by
    ``config`` and ``overrides`` inserted before the swept arguments (a smaller budget)."""
    command = [str(c) for c in (sweep.get("command") or DEFAULT_COMMAND)]
    if config is not None:
        kept, i = [], 0
        while i < len(command):
            if command[i] == "--config" and i + 1 < len(command):
                i += 2
                continue
            if not command[i].startswith("--config="):
                kept.append(command[i])
            i += 1
        at = kept.index("${program}") + 1 if "${program}" in kept else 0
        command = [*kept[:at], "--config", config, *kept[at:]]
    if overrides:
        at = next((i for i, c in enumerate(command) if c[2:-1] in ARG_MACROS), len(command))
        command = [*command[:at], *overrides, *command[at:]]
    return command


def command_settings(command: list[str]) -> tuple[str, list[str]]:
    """The base config name and the fixed overrides written in a sweep command."""
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


FULL_CHECK_LIMIT = 64  # up to this many combinations of candidates, all are validated (~10 ms each)
HYPERBAND_KEYS = ("type", "min_iter", "max_iter", "s", "eta", "strict")


def check_sweep(
    sweep: dict[str, Any], config: str | None = None, overrides: list[str] | tuple = ()
) -> list[MetaTrainConfig]:
    """Every config the sweep can produce at its listed values and range ends, validated as
    ``run.py`` validates it, its metric among those the run logs.

    The candidates are every listed value and both ends of each range (every integer of a small
    int_uniform grid range). Up to :data:`FULL_CHECK_LIMIT` combinations of them are checked all;
    a larger space one parameter at a time on top of the base config (it is counted, never
    enumerated). ``config`` and ``overrides`` change the command as a local run would (see
    ``--config`` of the CLI).
    """
    if sweep.get("program") != PROGRAM:
        raise ConfigError(f"sweep program must be {PROGRAM!r}, got {sweep.get('program')!r}")
    if sweep.get("method") not in METHODS:
        raise ConfigError(f"sweep method must be one of {METHODS}, got {sweep.get('method')!r}")
    metric = sweep.get("metric")
    named = isinstance(metric, dict) and isinstance(metric.get("name"), str)
    if metric is not None and not named:
        raise ConfigError("metric must be a mapping {name: ..., goal: minimize|maximize}")
    if sweep["method"] == "bayes" and metric is None:
        raise ConfigError("a bayes sweep needs metric: {name: ..., goal: minimize|maximize}")
    if metric is not None and metric.get("goal", "minimize") not in ("minimize", "maximize"):
        raise ConfigError(f"metric.goal must be minimize or maximize, got {metric.get('goal')!r}")
    check_early_terminate(sweep)
    params = sweep.get("parameters")
    if not isinstance(params, dict) or not params:
        raise ConfigError("a sweep needs a non-empty parameters: mapping")
    if "${args}" not in [str(c) for c in sweep.get("command", ["${args}"])]:
        raise ConfigError("the sweep's command must end with ${args} (the swept --key=value)")
    parsed = [parse_parameter(key, spec) for key, spec in params.items()]
    grid = sweep["method"] == "grid"
    if grid:
        for p in parsed:
            if p.is_range and not p.integer:
                raise ConfigError(
                    f"sweep parameter {p.key!r}: a grid needs values: (or an int_uniform range)"
                )
    command = command_template(sweep, config, overrides)
    base, fixed = command_settings(command)
    for text in overrides:
        if text.split("=", 1)[0].lstrip("-") in params:
            raise ConfigError(f"override {text!r} sets a swept parameter")
    candidates = {p.key: _candidates(p, grid) for p in parsed}
    if math.prod(len(values) for values in candidates.values()) <= FULL_CHECK_LIMIT:
        combos = (
            dict(zip(candidates, values, strict=True))
            for values in itertools.product(*candidates.values())
        )
    else:
        combos = ({key: value} for key, values in candidates.items() for value in values)
    configs = []
    for combo in combos:
        try:
            cfg = trial_config(base, fixed, combo)
            if metric is not None:
                check_metric(cfg, metric["name"])
        except ConfigError as exc:
            raise ConfigError(f"sweep parameters {combo}: {exc}") from None
        configs.append(cfg)
    return configs


def trial_config(base: str, fixed: list[str], values: dict[str, Any]) -> MetaTrainConfig:
    """The config ``run.py`` builds for a trial, through run.py's own checks (the config's
    construction and ``validate_names``, which ``run.py`` runs before its run folder exists)."""
    cfg = load_config(base, fixed + [agent_arg(k, v) for k, v in values.items()])
    validate_names(cfg)
    return cfg


def check_early_terminate(sweep: dict[str, Any]) -> None:
    """W&B's early termination: hyperband, with its own keys (the W&B server applies it)."""
    rule = sweep.get("early_terminate")
    if rule is None:
        return
    if not isinstance(rule, dict) or rule.get("type") != "hyperband":
        raise ConfigError(f"early_terminate must be {{type: hyperband, ...}}, got {rule!r}")
    unknown = sorted(set(rule) - set(HYPERBAND_KEYS))
    if unknown:
        raise ConfigError(f"early_terminate: unknown keys {unknown}; W&B takes {HYPERBAND_KEYS}")


def early_terminate_ignored(sweep: dict[str, Any]) -> str | None:
    """The warning a sweep run here prints when its file asks for early termination."""
    if sweep.get("early_terminate") is None:
        return None
    return (
        "warning: early_terminate (hyperband) is applied by the W&B server only (--project); "
        "the local engine ignores it and runs every trial to its end"
    )


def _candidates(parameter: Parameter, grid: bool) -> list[Any]:
    """The values :func:`check_sweep` validates for one parameter."""
    if grid and value_count(parameter) <= FULL_CHECK_LIMIT:
        return grid_values(parameter)
    return parameter.ends()


def value_count(parameter: Parameter) -> int:
    """How many values a grid takes of ``parameter``, counted (not enumerated)."""
    if parameter.is_range:
        return int(parameter.high) - int(parameter.low) + 1
    return len(parameter.values)


def grid_size(parameters: list[Parameter]) -> int:
    return math.prod(value_count(p) for p in parameters)


def grid_values(parameter: Parameter) -> list[Any]:
    if parameter.is_range:  # an int_uniform range: every integer (W&B enumerates it too)
        return list(range(int(parameter.low), int(parameter.high) + 1))
    return list(parameter.values)


# --------------------------------------------------------------------------------------------
# Running a sweep here: Optuna samples, run.py trains, the metric comes from the run folder

_SCALARS = (type(None), bool, int, float, str)


def _choices(parameter: Parameter) -> tuple[list[Any], bool]:
    """Optuna's categorical choices for ``parameter`` and whether they are JSON-encoded
    (Optuna takes None, bool, int, float and str; lists such as extra_inputs are encoded)."""
    values = grid_values(parameter)
    if all(isinstance(v, _SCALARS) for v in values):
        return values, False
    return [json.dumps(v) for v in values], True


def optuna_module():
    """Optuna, the engine of local sweeps (an optional dependency, named when missing)."""
    try:
        import optuna
    except ImportError:
        raise ConfigError(
            "a sweep run here needs optuna: pip install 'l2o[sweeps]' (or pip install optuna), "
            "or run it on W&B with --project"
        ) from None
    return optuna


def make_sampler(method: str, parameters: list[Parameter], seed: int):
    optuna = optuna_module()

    if method == "grid":
        space = {p.key: _choices(p)[0] for p in parameters if not p.fixed}
        return optuna.samplers.GridSampler(space, seed=seed)
    from meta_train.sweeps.sampler import PerPointSampler

    if method == "random":
        return PerPointSampler(lambda s: optuna.samplers.RandomSampler(seed=s), seed)
    return PerPointSampler(lambda s: optuna.samplers.GPSampler(seed=s), seed)


def suggest(trial, parameters: list[Parameter]) -> dict[str, Any]:
    """The trial's value of every parameter, in the sweep's order (fixed ones included)."""
    values = {}
    for p in parameters:
        if p.fixed:
            values[p.key] = p.values[0]
        elif p.is_range and not p.integer:
            values[p.key] = trial.suggest_float(p.key, p.low, p.high, log=p.log, step=p.step)
        elif p.is_range:
            values[p.key] = trial.suggest_int(p.key, int(p.low), int(p.high), log=p.log)
        else:
            choices, encoded = _choices(p)
            value = trial.suggest_categorical(p.key, choices)
            values[p.key] = json.loads(value) if encoded else value
    return values


def trial_command(
    template: list[str], program: str, values: dict[str, Any], run_dir: Path
) -> list[str]:
    """The command ``wandb agent`` would run for ``values`` (its macros, its argument formats),
    with this interpreter and ``--run-dir`` appended."""
    from wandb.sdk.launch.sweeps.utils import create_sweep_command, create_sweep_command_args

    formats = create_sweep_command_args({"args": {k: {"value": v} for k, v in values.items()}})
    macros = {
        **{name: formats[name] for name in ARG_MACROS},
        "env": ["/usr/bin/env"],
        "interpreter": [sys.executable],
        "program": [program],
    }
    command: list[str] = []
    for chunk in create_sweep_command(list(template)):  # fills ${envvar:NAME} as W&B does
        chunk = str(chunk)
        if chunk.startswith("${") and chunk.endswith("}"):
            if chunk[2:-1] not in macros:
                raise ConfigError(f"the sweep's command uses {chunk}, which runs only on W&B")
            command += macros[chunk[2:-1]]
        else:
            command.append(chunk)
    return [*command, "--run-dir", str(run_dir)]
