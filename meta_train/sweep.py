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
``sweeps`` package, requires numpy < 2): ``grid`` enumerates the values with Optuna's
GridSampler, ``random`` samples with its RandomSampler and ``bayes`` with its Gaussian-process
GPSampler (W&B's bayes is a GP too). Each trial runs the sweep's ``command`` with the macros
filled in as ``wandb agent`` fills them (the same ``--key=value`` arguments, W&B's own
formatter), plus ``--run-dir`` into the sweep folder; its score is the metric's last value in the
run's ``metrics.jsonl`` (what W&B's summary holds for a logged key). A trial whose
config asks for W&B ``online`` logs ``offline`` into its run folder instead (``wandb sync``
later); ``$WANDB_MODE``, when set, wins. The study lives in ``study.db`` (SQLite) in the sweep
folder: the same command continues an interrupted sweep (``--count`` is the sweep's total), an
interrupted trial resuming from its last checkpoint. The sweep ends with ``ranking.csv`` (also
printed) and ``metric_vs_params.png`` in the folder.
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
import csv
import fcntl
import itertools
import json
import math
import os
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from typing import Any

import yaml

from l2o.io import atomic_write
from meta_train.config import (
    ConfigError,
    MetaTrainConfig,
    load_config,
    validate_names,
)

PROGRAM = "meta_train/run.py"
METHODS = ("grid", "random", "bayes")
RANGE_KEYS = ("min", "max")
ROOT = Path(__file__).resolve().parent.parent  # where the sweep's program path is relative to
DEFAULT_COMMAND = ["${env}", "${interpreter}", "${program}", "${args}"]  # W&B's default
# The macros of the command that ``wandb agent`` fills with the trial's arguments.
ARG_MACROS = ("args", "args_no_hyphens", "args_no_boolean_flags", "args_json", "args_no_equals")
# W&B distributions that run here; normal-type ones (unbounded) need the W&B server.
RANGE_DISTRIBUTIONS = ("uniform", "int_uniform", "log_uniform_values", "log_uniform", "q_uniform")
EXIT_CONFIG = 2
EXIT_INTERRUPTED = 130


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
    numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (low, high))
    if not numbers:
        raise ConfigError(f"sweep parameter {key!r}: min and max must be numbers")
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
        step = float(spec.get("q", 1.0))
    return Parameter(
        key,
        low=low,
        high=high,
        integer=distribution == "int_uniform",
        log=distribution == "log_uniform_values",
        step=step,
    )


def _command_template(
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


def _command_settings(command: list[str]) -> tuple[str, list[str]]:
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


def check_sweep(
    sweep: dict[str, Any], config: str | None = None, overrides: list[str] | tuple = ()
) -> list[MetaTrainConfig]:
    """Every config the sweep can produce at its listed values and range ends, validated.

    Grid sweeps are checked on their full product (they are small by nature); other methods one
    parameter at a time on top of the base config. ``config`` and ``overrides`` change the
    command as a local run would (see ``--config`` of the CLI).
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
    parsed = [parse_parameter(key, spec) for key, spec in params.items()]
    if sweep["method"] == "grid":
        for p in parsed:
            if p.is_range and not p.integer:
                raise ConfigError(
                    f"sweep parameter {p.key!r}: a grid needs values: (or an int_uniform range)"
                )
    command = _command_template(sweep, config, overrides)
    base, fixed = _command_settings(command)
    for text in overrides:
        if text.split("=", 1)[0].lstrip("-") in params:
            raise ConfigError(f"override {text!r} sets a swept parameter")
    candidates = {p.key: _grid_values(p) if sweep["method"] == "grid" else p.ends() for p in parsed}
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


def _grid_values(parameter: Parameter) -> list[Any]:
    if parameter.is_range:  # an int_uniform range: every integer (W&B enumerates it too)
        return list(range(int(parameter.low), int(parameter.high) + 1))
    return list(parameter.values)


# --------------------------------------------------------------------------------------------
# Running a sweep here: Optuna samples, run.py trains, the metric comes from the run folder

_SCALARS = (type(None), bool, int, float, str)


def _choices(parameter: Parameter) -> tuple[list[Any], bool]:
    """Optuna's categorical choices for ``parameter`` and whether they are JSON-encoded
    (Optuna takes None, bool, int, float and str; lists such as extra_inputs are encoded)."""
    values = _grid_values(parameter)
    if all(isinstance(v, _SCALARS) for v in values):
        return values, False
    return [json.dumps(v) for v in values], True


def _optuna():
    """Optuna, the engine of local sweeps (an optional dependency, named when missing)."""
    try:
        import optuna
    except ImportError:
        raise ConfigError(
            "a sweep run here needs optuna: pip install 'l2o[sweeps]' (or pip install optuna), "
            "or run it on W&B with --project"
        ) from None
    return optuna


def _sampler(method: str, parameters: list[Parameter], seed: int):
    optuna = _optuna()

    if method == "grid":
        space = {p.key: _choices(p)[0] for p in parameters if not p.fixed}
        return optuna.samplers.GridSampler(space, seed=seed)
    if method == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.GPSampler(seed=seed)


def _suggest(trial, parameters: list[Parameter]) -> dict[str, Any]:
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


class MetricMissing(RuntimeError):
    """A finished run without a finite value of the sweep's metric."""


def read_metric(run_dir: Path, name: str) -> float:
    """What W&B's summary holds for ``name`` by default: its last logged value, read from the
    run's ``metrics.jsonl``. (Values the run only sets in the W&B summary, such as
    ``best_val_loss`` or ``meta_test/*``, are not on disk: sweep on a logged key.)"""
    from meta_train.tracking import read_metrics

    records = read_metrics(run_dir)
    value = next((r[name] for r in reversed(records) if name in r), None)
    if value is None:
        keys = sorted({k for r in records for k in r} - {"step", "time"})
        raise MetricMissing(f"the run logged no {name!r} (its metrics: {', '.join(keys)})")
    number = float(value)  # non-finite values are logged as the strings 'nan', 'inf'
    if not math.isfinite(number):
        raise MetricMissing(f"{name} is {value}")
    return number


def _trial_env(cfg: MetaTrainConfig, sweep_name: str) -> dict[str, str]:
    env = dict(os.environ)
    if "WANDB_MODE" not in env and cfg.wandb.mode == "online":
        env["WANDB_MODE"] = "offline"  # no server here: log into the run folder
    env.setdefault("WANDB_RUN_GROUP", f"sweep-{sweep_name}")
    return env


def _execute(command: list[str], env: dict[str, str], log_path: Path) -> int:
    """Run one trial, its output into ``log_path``; on Ctrl-C let it write its checkpoint."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=log)
        try:
            return process.wait()
        except KeyboardInterrupt:
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
            raise


def _last_line(path: Path) -> str:
    lines = path.read_text(errors="replace").strip().splitlines() if path.exists() else []
    return lines[-1] if lines else "(no output)"


@dataclass
class LocalSweep:
    """One sweep run here: its definition, folder, Optuna study and trial commands."""

    sweep: dict[str, Any]
    name: str
    folder: Path
    config: str | None = None
    overrides: tuple[str, ...] = ()
    seed: int = 0

    def __post_init__(self) -> None:
        metric = self.sweep.get("metric")
        if not (isinstance(metric, dict) and metric.get("name")):
            raise ConfigError("a sweep run here needs metric: {name: ..., goal: ...} to rank")
        self.metric = str(metric["name"])
        self.goal = metric.get("goal", "minimize")
        self.parameters = [parse_parameter(k, s) for k, s in self.sweep["parameters"].items()]
        self.template = _command_template(self.sweep, self.config, self.overrides)
        self.folder = self.folder.resolve()

    @property
    def definition(self) -> str:
        """What must not change between a sweep and its continuation."""
        return json.dumps(
            {"sweep": self.sweep, "config": self.config, "overrides": list(self.overrides)},
            sort_keys=True,
            default=str,
        )

    def grid_size(self) -> int:
        return math.prod(len(_grid_values(p)) for p in self.parameters if not p.fixed)

    def open_study(self):
        optuna = _optuna()

        optuna.logging.set_verbosity(optuna.logging.ERROR)  # we print each trial
        self.folder.mkdir(parents=True, exist_ok=True)
        study = optuna.create_study(
            storage=f"sqlite:///{self.folder / 'study.db'}",
            study_name=self.name,
            direction=self.goal,
            sampler=_sampler(self.sweep["method"], self.parameters, self.seed),
            load_if_exists=True,
        )
        saved = study.user_attrs.get("definition")
        if saved is None:
            study.set_user_attr("definition", self.definition)
        elif saved != self.definition:
            raise ConfigError(
                f"{self.folder} holds a sweep of another definition (sweep file, --config or "
                "overrides changed); choose another --sweep-dir"
            )
        return study

    def run_dir(self, number: int) -> Path:
        return self.folder / "trials" / f"{number:04d}"

    def trial_config(self, values: dict[str, Any]) -> MetaTrainConfig:
        base, fixed = _command_settings(self.template)
        return load_config(base, fixed + [agent_arg(k, v) for k, v in values.items()])

    def objective(self, trial) -> float:
        """Run (or resume) one trial; its metric, or ``MetricMissing`` (a failed trial)."""
        grid = trial.user_attrs.get("grid")
        storage = trial.study._storage
        if grid and "grid_id" not in storage.get_trial_system_attrs(trial._trial_id):
            # A queued-again grid trial takes its predecessor's grid point, or Optuna's
            # GridSampler (which marks points by this system attribute) fails to count it.
            for key, value in grid.items():
                storage.set_trial_system_attr(trial._trial_id, key, value)
        values = _suggest(trial, self.parameters)
        trial.set_user_attr("values", values)
        run_dir = Path(trial.user_attrs.get("resume_from") or self.run_dir(trial.number))
        command = trial_command(self.template, self.sweep["program"], values, run_dir)
        if (run_dir / "last.pt").exists():  # an interrupted trial: continue its run exactly
            command = [*command[: command.index(self.sweep["program"]) + 1], "--resume"]
            command.append(str(run_dir))
        elif run_dir.exists():
            shutil.rmtree(run_dir)  # stopped before its first checkpoint: start it again
        trial.set_user_attr("command", command)
        trial.set_user_attr("run_dir", str(run_dir))
        log_path = run_dir.parent / f"{run_dir.name}.log"
        print(f"trial {trial.number}: {' '.join(agent_arg(k, v) for k, v in values.items())}")
        start = time.monotonic()
        try:
            env = _trial_env(self.trial_config(values), self.name)
            code = _execute(command, env, log_path)
            if code != 0:
                raise MetricMissing(f"exit code {code}: {_last_line(log_path)}")
            value = read_metric(run_dir, self.metric)
        except KeyboardInterrupt:
            trial.set_user_attr("interrupted", True)
            raise
        except (ConfigError, MetricMissing) as exc:
            trial.set_user_attr("error", str(exc))
            trial.set_user_attr("seconds", round(time.monotonic() - start, 1))
            print(f"  failed: {exc} (log: {log_path})")
            raise MetricMissing(str(exc)) from None
        seconds = time.monotonic() - start
        trial.set_user_attr("seconds", round(seconds, 1))
        print(f"  {self.metric} = {value:.6g} ({seconds:.0f} s)")
        return value

    def requeue_interrupted(self, study) -> None:
        """Queue again, with their parameters and run folder, the trials a crash or Ctrl-C
        stopped (those still RUNNING: this process holds the sweep's lock)."""
        import optuna

        states = optuna.trial.TrialState
        trials = study.get_trials(deepcopy=False)
        queued = {t.user_attrs.get("resume_from") for t in trials}
        for trial in trials:
            if trial.state == states.RUNNING:
                study._storage.set_trial_user_attr(trial._trial_id, "interrupted", True)
                study._storage.set_trial_state_values(trial._trial_id, state=states.FAIL)
            elif not (trial.state == states.FAIL and trial.user_attrs.get("interrupted")):
                continue
            if "values" not in trial.user_attrs:
                continue  # stopped before it ran anything
            run_dir = trial.user_attrs.get("run_dir", str(self.run_dir(trial.number)))
            if run_dir not in queued:
                print(f"trial {trial.number} was interrupted: queued again ({run_dir})")
                attrs: dict[str, Any] = {"resume_from": run_dir}
                if "grid_id" in trial.system_attrs:
                    keys = ("grid_id", "search_space")
                    attrs["grid"] = {k: trial.system_attrs[k] for k in keys}
                study.enqueue_trial(trial.params, user_attrs=attrs)
                queued.add(run_dir)

    def run(self, count: int | None) -> Any:
        """Run trials until the study holds ``count`` finished ones (the grid's size at most)."""
        if self.sweep["method"] == "grid":
            count = min(count or self.grid_size(), self.grid_size())
        elif not count:
            raise ConfigError("--count is needed for a random or bayes sweep run here")
        study = self.open_study()
        self.requeue_interrupted(study)
        remaining = count - len(counted_trials(study))
        if remaining > 0:
            study.optimize(self.objective, n_trials=remaining, catch=(MetricMissing,))
        return study


def counted_trials(study) -> list:
    """The trials that ran to an end (complete or failed, not interrupted), by number."""
    import optuna

    states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.FAIL)
    trials = study.get_trials(deepcopy=False, states=states)
    return [t for t in trials if "values" in t.user_attrs and not t.user_attrs.get("interrupted")]


def ranking(study, metric: str, keys: list[str]) -> list[dict[str, Any]]:
    """Every trial that ran, best first (failed ones last, with their error)."""
    import optuna

    trials = counted_trials(study)
    done = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    sign = -1.0 if study.direction == optuna.study.StudyDirection.MAXIMIZE else 1.0
    done.sort(key=lambda t: (sign * t.value, t.number))
    rest = sorted((t for t in trials if t not in done), key=lambda t: t.number)
    rows = []
    for rank, trial in enumerate(done + rest, start=1):
        ok = trial.state == optuna.trial.TrialState.COMPLETE
        row = {
            "rank": rank if ok else "",
            "trial": trial.number,
            metric: trial.value if ok else "",
            "state": trial.state.name.lower(),
        }
        row.update({key: trial.user_attrs["values"].get(key) for key in keys})
        row["seconds"] = trial.user_attrs.get("seconds", "")
        row["run_dir"] = trial.user_attrs.get("run_dir", "")
        row["error"] = trial.user_attrs.get("error", "")
        rows.append(row)
    return rows


def _cell(value: Any, short: bool = True) -> str:
    if isinstance(value, float):
        return f"{value:.6g}" if short else repr(value)
    if isinstance(value, (list, dict)):
        return json.dumps(value)
    return "" if value is None else str(value)


def write_ranking(rows: list[dict[str, Any]], path: Path) -> str:
    """Write the CSV (full precision); return the table as text (6 digits, without run folders
    and errors)."""
    columns = list(rows[0]) if rows else []

    def write(f) -> None:
        writer = csv.writer(f)
        writer.writerow(columns)
        writer.writerows([[_cell(row[c], short=False) for c in columns] for row in rows])

    atomic_write(path, write, text=True)
    shown = [c for c in columns if c not in ("run_dir", "error")]
    table = [shown] + [[_cell(row[c]) for c in shown] for row in rows]
    widths = [max(len(line[i]) for line in table) for i in range(len(shown))]
    return "\n".join("  ".join(v.rjust(w) for v, w in zip(line, widths)) for line in table)


def plot_metric(rows: list[dict[str, Any]], metric: str, parameters: list[Parameter], path: Path):
    """The metric against each swept parameter (finished trials), one panel each."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    swept = [p for p in parameters if not p.fixed]
    done = [r for r in rows if r["state"] == "complete"]
    fig, axes = plt.subplots(1, len(swept), figsize=(4 * len(swept), 3.4), squeeze=False)
    for ax, p in zip(axes[0], swept):
        xs = [r[p.key] for r in done]
        numeric = all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in xs)
        if not numeric:
            labels = [_cell(v) for v in _grid_values(p)]
            xs = [labels.index(_cell(x)) for x in xs]
            ax.set_xticks(range(len(labels)), labels, rotation=30, ha="right", fontsize=7)
        elif p.log or (p.values and min(xs, default=1) > 0 and _spread(xs) >= 100):
            ax.set_xscale("log")
        ax.scatter(xs, [r[metric] for r in done], s=18)
        ax.set_xlabel(p.key)
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=120))
    plt.close(fig)


def _spread(values: list[float]) -> float:
    return max(values) / min(values) if values else 1.0


def run_local(
    sweep: dict[str, Any],
    name: str,
    folder: Path,
    count: int | None,
    config: str | None = None,
    overrides: tuple[str, ...] = (),
    seed: int = 0,
) -> int:
    """Run (or continue) the sweep here; print and write the ranking and the plot."""
    local = LocalSweep(sweep, name, folder, config, tuple(overrides), seed)
    local.folder.mkdir(parents=True, exist_ok=True)
    with open(local.folder / "sweep.lock", "a+") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.seek(0)
            holder = lock.read().strip() or "?"
            message = f"{local.folder} is being swept by another process (PID {holder})"
            raise ConfigError(message) from None
        lock.seek(0)
        lock.truncate()
        lock.write(str(os.getpid()))
        lock.flush()
        try:
            study = local.run(count)
        except KeyboardInterrupt:
            print(
                f"interrupted; run the same command to continue the sweep in {local.folder}",
                file=sys.stderr,
            )
            return EXIT_INTERRUPTED
    keys = [p.key for p in local.parameters if not p.fixed]
    rows = ranking(study, local.metric, keys)
    print(write_ranking(rows, local.folder / "ranking.csv"))
    print(f"ranking: {local.folder / 'ranking.csv'}")
    if keys and any(r["state"] == "complete" for r in rows):
        plot_metric(rows, local.metric, local.parameters, local.folder / "metric_vs_params.png")
        print(f"plot:    {local.folder / 'metric_vs_params.png'}")
    return 0


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
    print(f"{args.sweep}: valid; {len(configs)} configurations checked", file=sys.stderr)
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
