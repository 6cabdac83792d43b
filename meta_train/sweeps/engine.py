"""The local sweep engine: a sweep run here, without a W&B server, with Optuna keeping the study
(``LocalSweep``, ``run_local``). Every trial runs the sweep's command as a ``run.py`` process
(``meta_train.sweeps.process``) into its own folder (``meta_train.sweeps.folders``); its score is
what W&B's summary would hold (``read_metric``). ``meta_train/sweep.py`` is its command line,
whose docstring says what a sweep guarantees when it is killed and continued."""

from __future__ import annotations

import fcntl
import json
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from meta_train.configuration.engine import ConfigError
from meta_train.configuration.schema import MetaTrainConfig
from meta_train.run import EXIT_BUSY
from meta_train.sweeps.folders import new_attempt_log, prepare_trial_folder
from meta_train.sweeps.metrics import check_metric
from meta_train.sweeps.process import (
    Terminated,
    run_trial,
    sigterm_as_interrupt,
    wait_for_run_folder,
)
from meta_train.sweeps.report import plot_metric, ranking, write_ranking
from meta_train.sweeps.spec import (
    agent_arg,
    command_settings,
    command_template,
    grid_size,
    make_sampler,
    optuna_module,
    parse_parameter,
    suggest,
    trial_command,
    trial_config,
)
from meta_train.sweeps.trials import DRAWN, INTERRUPTED, REQUEUE_OF, counted_trials

# the repository, which a sweep's program path (meta_train/run.py) is relative to
ROOT = Path(__file__).resolve().parents[2]
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
    """Run one trial (``meta_train.sweeps.process.run_trial``: it dies with the sweep)."""
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
