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
sweep (``sweep_process``), a folder still held by another process is waited for, a checkpoint is
continued only by the trial whose config made it (``sweep_folders``; others are moved aside),
and the n-th point of a random or bayes sweep depends on ``--seed`` and n alone
(``sweep_sampler``). ``early_terminate`` needs the W&B server: here it is ignored, with a warning.
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
import fcntl
import json
import math
import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from typing import Any

from meta_train.configuration.schema import ConfigError, MetaTrainConfig
from meta_train.run import EXIT_BUSY
from meta_train.sweeps.folders import new_attempt_log, prepare_trial_folder
from meta_train.sweeps.metrics import check_metric
from meta_train.sweeps.process import (
    Terminated,
    run_trial,
    sigterm_as_interrupt,
    wait_for_run_folder,
)
from meta_train.sweeps.report import (
    DRAWN,
    INTERRUPTED,
    REQUEUE_OF,
    counted_trials,
    plot_metric,
    ranking,
    write_ranking,
)
from meta_train.sweeps.spec import (
    agent_arg,
    check_sweep,
    command_settings,
    command_template,
    early_terminate_ignored,
    grid_size,
    load_sweep,
    make_sampler,
    optuna_module,
    parse_parameter,
    suggest,
    trial_command,
    trial_config,
)

ROOT = Path(__file__).resolve().parent.parent  # where the sweep's program path is relative to
EXIT_CONFIG = 2
EXIT_INTERRUPTED = 130  # Ctrl-C
EXIT_TERMINATED = 143  # SIGTERM
BUSY_RETRIES = 5  # a trial refused its folder (run.py exit 75) waits for it and tries again


class MetricMissing(RuntimeError):
    """A finished run without a finite value of the sweep's metric."""


def read_metric(run_dir: Path, name: str) -> float:
    """What W&B's summary holds for ``name``: the value the run set in its summary
    (``summary.json``, e.g. ``best_val_loss``), else its last logged value in ``metrics.jsonl``."""
    from meta_train.training.tracking import read_metrics, read_summary

    summary = read_summary(run_dir)
    records = read_metrics(run_dir)
    value = summary.get(name)
    if value is None:
        value = next((r[name] for r in reversed(records) if name in r), None)
    if value is None:
        keys = sorted(({k for r in records for k in r} | set(summary)) - {"step", "time"})
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
    """Run one trial (``sweep_process.run_trial``: it dies with the sweep)."""
    return run_trial(command, env, ROOT, log_path)


def _is_legacy_requeue(trial) -> bool:
    return "resume_from" in trial.user_attrs and REQUEUE_OF not in trial.user_attrs


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
        self.template = command_template(self.sweep, self.config, self.overrides)
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
        return grid_size([p for p in self.parameters if not p.fixed])

    def open_study(self):
        """The sweep's Optuna study in ``study.db``, read whole once: a damaged file is a
        one-line error here, before any trial runs."""
        optuna = optuna_module()
        from sqlalchemy.exc import SQLAlchemyError

        optuna.logging.set_verbosity(optuna.logging.ERROR)  # we print each trial
        self.folder.mkdir(parents=True, exist_ok=True)
        database = self.folder / "study.db"
        try:
            study = optuna.create_study(
                storage=f"sqlite:///{database}",
                study_name=self.name,
                direction=self.goal,
                sampler=make_sampler(self.sweep["method"], self.parameters, self.seed),
                load_if_exists=True,
            )
            saved = study.user_attrs.get("definition")
            study.get_trials(deepcopy=False)
        except (SQLAlchemyError, optuna.exceptions.StorageInternalError) as exc:
            detail = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
            raise ConfigError(
                f"{database} is not a readable sweep study ({detail}); move it away "
                f"(mv {database} {database}.damaged) to start the study again: trial folders "
                "whose checkpoint matches their trial are continued, others moved aside"
            ) from None
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
        """The trial's config, through run.py's checks, its metric one the run logs."""
        cfg = trial_config(*command_settings(self.template), values)
        check_metric(cfg, self.metric)
        return cfg

    def objective(self, trial) -> float:
        """Run (or resume) one trial; its metric, or ``MetricMissing`` (a failed trial)."""
        try:
            return self._run_trial(trial)
        except KeyboardInterrupt:
            attrs = trial.user_attrs
            if DRAWN not in attrs and REQUEUE_OF not in attrs:
                self._release_grid_point(trial.study._storage, trial._trial_id)
            trial.set_user_attr(INTERRUPTED, True)
            raise

    def _run_trial(self, trial) -> float:
        self._take_grid_point(trial)
        values = suggest(trial, self.parameters)
        trial.set_user_attr(DRAWN, values)
        resume_from = trial.user_attrs.get("resume_from")
        run_dir = Path(resume_from or self.run_dir(trial.number))
        trial.set_user_attr("run_dir", str(run_dir))
        print(f"trial {trial.number}: {' '.join(agent_arg(k, v) for k, v in values.items())}")
        start = time.monotonic()
        try:
            cfg = self.trial_config(values)  # before its folder is touched
            code, log_path = self._attempt(trial, values, cfg, run_dir, resume_from is not None)
            if code != 0:
                raise MetricMissing(f"exit code {code}: {_last_line(log_path)} (log: {log_path})")
            value = read_metric(run_dir, self.metric)
        except (ConfigError, MetricMissing) as exc:
            trial.set_user_attr("error", str(exc))
            trial.set_user_attr("seconds", round(time.monotonic() - start, 1))
            print(f"  failed: {exc}")
            raise MetricMissing(str(exc)) from None
        seconds = time.monotonic() - start
        trial.set_user_attr("seconds", round(seconds, 1))
        print(f"  {self.metric} = {value:.6g} ({seconds:.0f} s)")
        return value

    def _attempt(self, trial, values, cfg, run_dir: Path, own: bool) -> tuple[int, Path]:
        """Run the trial in ``run_dir`` once no other process holds it (continuing its
        checkpoint when it is this config's); its exit code and log."""
        env = _trial_env(cfg, self.name)
        for _ in range(BUSY_RETRIES):
            wait_for_run_folder(run_dir, print)
            command = trial_command(self.template, self.sweep["program"], values, run_dir)
            if prepare_trial_folder(run_dir, cfg, own, print):
                at = command.index(self.sweep["program"]) + 1
                command = [*command[:at], "--resume", str(run_dir)]
            trial.set_user_attr("command", command)
            log_path = new_attempt_log(run_dir)
            code = _execute(command, env, log_path)
            if code != EXIT_BUSY:
                break
        return code, log_path

    @staticmethod
    def _take_grid_point(trial) -> None:
        """A queued-again grid trial takes its predecessor's grid point, or Optuna's
        GridSampler (which marks points by this system attribute) fails to count it."""
        grid = trial.user_attrs.get("grid")
        storage = trial.study._storage
        if grid and "grid_id" not in storage.get_trial_system_attrs(trial._trial_id):
            for key, value in grid.items():
                storage.set_trial_system_attr(trial._trial_id, key, value)

    @staticmethod
    def _release_grid_point(storage, trial_id: int) -> None:
        """A trial stopped before it drew its grid point gives the point back (GridSampler
        counts the points of finished trials, failed ones too, as visited)."""
        if "grid_id" in storage.get_trial_system_attrs(trial_id):
            storage.set_trial_system_attr(trial_id, "grid_id", -1)

    def requeue_interrupted(self, study) -> None:
        """Queue again, with their point and run folder, the trials a kill or Ctrl-C stopped
        (those still RUNNING: this process holds the sweep's lock)."""
        import optuna

        states = optuna.trial.TrialState
        storage = study._storage
        trials = study.get_trials(deepcopy=False)
        queued = {t.user_attrs.get(REQUEUE_OF) for t in trials}
        # trials queued again by an older version, which named only the run folder
        legacy = {t.user_attrs["resume_from"]: t.number for t in trials if _is_legacy_requeue(t)}
        for trial in trials:
            if trial.state == states.RUNNING:
                if DRAWN not in trial.user_attrs and REQUEUE_OF not in trial.user_attrs:
                    self._release_grid_point(storage, trial._trial_id)
                storage.set_trial_user_attr(trial._trial_id, INTERRUPTED, True)
                storage.set_trial_state_values(trial._trial_id, state=states.FAIL)
            elif not (trial.state == states.FAIL and trial.user_attrs.get(INTERRUPTED)):
                continue
            run_dir = trial.user_attrs.get("run_dir")
            if trial.number in queued or legacy.get(run_dir, -1) > trial.number:
                continue
            continuation = self._continuation(trial)
            if continuation is not None:
                params, attrs = continuation
                where = attrs["resume_from"]
                print(f"trial {trial.number} was interrupted: queued again ({where})")
                study.enqueue_trial(params, user_attrs=attrs)

    def _continuation(self, trial) -> tuple[dict[str, Any], dict[str, Any]] | None:
        """The parameters and attributes of the trial that continues an interrupted one: its
        point and run folder; None when it stopped before drawing a point."""
        attrs, system = trial.user_attrs, trial.system_attrs
        if DRAWN in attrs:
            params = trial.params
        elif REQUEUE_OF in attrs:  # queued again, and stopped again before it started
            params = system.get("fixed_params", {})
        else:
            return None
        run_dir = attrs.get("run_dir") or attrs.get("resume_from")
        run_dir = run_dir or str(self.run_dir(trial.number))
        queued: dict[str, Any] = {"resume_from": run_dir, REQUEUE_OF: trial.number}
        if system.get("grid_id", -1) >= 0:
            queued["grid"] = {k: system[k] for k in ("grid_id", "search_space")}
        elif "grid" in attrs:
            queued["grid"] = attrs["grid"]
        return params, queued

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
            with sigterm_as_interrupt():
                study = local.run(count)
        except KeyboardInterrupt as exc:
            how = "terminated" if isinstance(exc, Terminated) else "interrupted"
            print(
                f"{how}; run the same command to continue the sweep in {local.folder}",
                file=sys.stderr,
            )
            return EXIT_TERMINATED if isinstance(exc, Terminated) else EXIT_INTERRUPTED
    keys = [p.key for p in local.parameters if not p.fixed]
    rows = ranking(study, local.metric, keys)
    print(write_ranking(rows, local.folder / "ranking.csv"))
    print(f"ranking: {local.folder / 'ranking.csv'}")
    if keys and any(r["state"] == "complete" for r in rows):
        plot_metric(rows, local.metric, local.parameters, local.folder / "metric_vs_params.png")
        print(f"plot:    {local.folder / 'metric_vs_params.png'}")
    return 0


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
