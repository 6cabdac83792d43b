"""W&B sweep definitions: valid offline, every parameter a real config key, and run here without a
W&B server (grid, random, bayes; resume; ranking and plot). No network is used."""

from __future__ import annotations

import csv
import fcntl
import json
import math
import sys
from pathlib import Path

import pytest
import yaml
from sweep_fakes import command_config, fake_execute, write_checkpoint

from meta_train.configuration.engine import ConfigError
from meta_train.configuration.schema import load_config
from meta_train.sweep import main
from meta_train.sweeps import engine as sweep_module
from meta_train.sweeps import spec as sweep_spec
from meta_train.sweeps.engine import LocalSweep, MetricMissing, read_metric, run_local
from meta_train.sweeps.spec import (
    PROGRAM,
    agent_arg,
    check_sweep,
    load_sweep,
    parse_parameter,
    trial_command,
)
from meta_train.training.tracking import read_metrics

SWEEPS = sorted((Path(__file__).resolve().parents[3] / "configs" / "sweeps").glob("*.yaml"))
SWEEPS_BY_NAME = {path.stem: path for path in SWEEPS}


def test_there_are_sweeps():
    assert len(SWEEPS) >= 2


@pytest.mark.parametrize("path", SWEEPS, ids=lambda p: p.stem)
def test_shipped_sweeps_are_valid(path):
    sweep = load_sweep(path)
    assert sweep["program"] == PROGRAM
    configs = check_sweep(sweep)
    assert configs
    for key in sweep["parameters"]:  # each swept key really changes the config it lands in
        assert len({repr(_get(c.to_dict(), key)) for c in configs}) > 1, key


def _get(data: dict, key: str):
    for part in key.split("."):
        data = data[part]
    return data


def test_agent_arguments_as_wandb_writes_them_parse():
    from wandb.sdk.launch.sweeps.utils import create_sweep_command_args

    values = {
        "meta_optimizer.lr": 0.0012,
        "meta_optimizer.grad_clip_norm": None,
        "optimizer.kwargs.extra_inputs": ["momentum", "adam"],
        "logging.progress": False,
        "unroll.length": 10,
    }
    args = create_sweep_command_args({"args": {k: {"value": v} for k, v in values.items()}})
    assert args["args"] == [agent_arg(k, v) for k, v in values.items()]
    cfg = load_config("default", args["args"])
    assert cfg.meta_optimizer.lr == 0.0012 and cfg.meta_optimizer.grad_clip_norm is None
    assert cfg.optimizer.kwargs["extra_inputs"] == ["momentum", "adam"]
    assert cfg.logging.progress is False and cfg.unroll.length == 10
    assert load_config("default", args["args_no_hyphens"]) == cfg


def _sweep(**parameters):
    return {
        "program": PROGRAM,
        "method": "random",
        "metric": {"name": "val/best_loss", "goal": "minimize"},
        "parameters": parameters,
        "command": ["${env}", "${interpreter}", "${program}", "--config", "tiny", "${args}"],
    }


@pytest.mark.parametrize(
    ("parameters", "fragment"),
    [
        ({"meta_optimizer.lrr": {"values": [0.1]}}, r"meta_optimizer\.lr\b"),
        ({"meta_optimizer.lr": {"min": -1.0, "max": 0.1}}, r"meta_optimizer\.lr must be positive"),
        ({"unroll.length": {"values": [4]}}, r"multiple of unroll\.length"),
        ({"optimizer.kwargs.hidden": {"values": [4]}}, r"hidden_size"),
        ({"unroll.length": {"distribution": "int_uniform"}}, r"needs values"),
        ({"meta_optimizer.lr": {"min": 0.1, "max": 0.01}}, r"must be below max"),
    ],
)
def test_bad_sweeps_fail_offline_with_the_key(parameters, fragment):
    with pytest.raises(ConfigError, match=fragment):
        check_sweep(_sweep(**parameters))


def test_sweep_structure_errors():
    with pytest.raises(ConfigError, match="program"):
        check_sweep({**_sweep(seed={"values": [1]}), "program": "train.py"})
    with pytest.raises(ConfigError, match="method"):
        check_sweep({**_sweep(seed={"values": [1]}), "method": "hyperband"})
    with pytest.raises(ConfigError, match=r"\$\{args\}"):
        check_sweep({**_sweep(seed={"values": [1]}), "command": ["python", "x"]})


def test_check_cli(tmp_path, capsys):
    assert main([str(SWEEPS[0]), "--check"]) == 0
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(_sweep(**{"schedule.epoch": {"values": [1]}})))
    assert main([str(bad), "--check"]) == 2
    assert "schedule.epochs" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------
# Sweeps run here, without a W&B server


def _grid_file(tmp_path, values=(0.001, 0.01, 0.1), extra=()):
    sweep = {
        **_sweep(**{"meta_optimizer.lr": {"values": list(values)}}),
        "method": "grid",
        "command": [
            "${env}",
            "${interpreter}",
            "${program}",
            "--config",
            "tiny",
            "meta_test.enabled=false",
            *extra,
            "${args}",
        ],
    }
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump(sweep))
    return path


def _ranking(folder):
    with open(folder / "ranking.csv") as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
def test_local_grid_sweep_of_tiny_end_to_end(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("L2O_NATIVE", "0")  # no C++ build in the trials (shared build folder)
    path, folder = _grid_file(tmp_path), tmp_path / "sweep"
    assert main([str(path), "--sweep-dir", str(folder)]) == 0
    rows = _ranking(folder)
    assert [r["rank"] for r in rows] == ["1", "2", "3"]
    assert sorted(r["meta_optimizer.lr"] for r in rows) == ["0.001", "0.01", "0.1"]
    losses = [float(r["val/best_loss"]) for r in rows]
    assert losses == sorted(losses)
    for row in rows:  # the score is the run's own last val/best_loss, its args W&B's
        records = read_metrics(row["run_dir"])
        assert (
            float(row["val/best_loss"])
            == [r for r in records if "val/best_loss" in r][-1]["val/best_loss"]
        )
        config = yaml.safe_load((Path(row["run_dir"]) / "config.yaml").read_text())
        assert repr(config["meta_optimizer"]["lr"]) == row["meta_optimizer.lr"]
        assert config["meta_test"]["enabled"] is False and config["name"] == "tiny"
    png = (folder / "metric_vs_params.png").read_bytes()
    assert png.startswith(b"\x89PNG")
    printed = capsys.readouterr().out
    assert "rank" in printed and "val/best_loss" in printed
    # the same command again: the sweep is complete, nothing runs
    monkeypatch.setattr(sweep_module, "_execute", fake_execute(calls := []))
    assert main([str(path), "--sweep-dir", str(folder)]) == 0
    assert calls == [] and len(_ranking(folder)) == 3


def test_trial_commands_are_the_agents(tmp_path, monkeypatch):
    from wandb.sdk.launch.sweeps.utils import create_sweep_command_args

    calls = []
    monkeypatch.setattr(sweep_module, "_execute", fake_execute(calls))
    path, folder = _grid_file(tmp_path, values=(0.01,)), tmp_path / "sweep"
    assert main([str(path), "--sweep-dir", str(folder)]) == 0
    (command,) = calls
    expected = create_sweep_command_args({"args": {"meta_optimizer.lr": {"value": 0.01}}})
    assert command == [
        "/usr/bin/env",
        sys.executable,
        PROGRAM,
        "--config",
        "tiny",
        "meta_test.enabled=false",
        *expected["args"],
        "--run-dir",
        str(folder.resolve() / "trials" / "0000"),
    ]
    template = ["${interpreter}", "${program}", "${args_no_hyphens}", "${args_json}"]
    values = {"a.b": [1, 2], "c": False}
    formats = create_sweep_command_args({"args": {k: {"value": v} for k, v in values.items()}})
    assert trial_command(template, PROGRAM, values, tmp_path) == [
        sys.executable,
        PROGRAM,
        *formats["args_no_hyphens"],
        *formats["args_json"],
        "--run-dir",
        str(tmp_path),
    ]
    with pytest.raises(ConfigError, match=r"\$\{args_json_file\}"):
        trial_command(["${args_json_file}"], PROGRAM, values, tmp_path)


def test_an_interrupted_sweep_continues_where_it_stopped(tmp_path, monkeypatch):
    path, folder = _grid_file(tmp_path), tmp_path / "sweep"
    calls = []
    monkeypatch.setattr(sweep_module, "_execute", fake_execute(calls, interrupt_at=2))
    assert main([str(path), "--sweep-dir", str(folder)]) == 130  # Ctrl-C during trial 1
    assert len(calls) == 2 and not (folder / "ranking.csv").exists()
    interrupted_dir = calls[1][calls[1].index("--run-dir") + 1]
    write_checkpoint(Path(interrupted_dir), command_config(calls[1])[0])  # it had checkpointed

    again = []
    monkeypatch.setattr(sweep_module, "_execute", fake_execute(again))
    assert main([str(path), "--sweep-dir", str(folder)]) == 0
    # trial 0 is not run again; trial 1 resumes its own run folder with --resume; then trial 2
    assert len(again) == 2
    assert again[0][-2:] == ["--resume", interrupted_dir] and again[0][2] == PROGRAM
    rows = _ranking(folder)
    assert sorted(r["meta_optimizer.lr"] for r in rows) == ["0.001", "0.01", "0.1"]
    assert interrupted_dir in {r["run_dir"] for r in rows}


def test_a_killed_sweep_continues_its_running_trial(tmp_path, monkeypatch):
    """kill -9 leaves the trial RUNNING in the study: the next run queues it again."""
    import optuna

    path, folder = _grid_file(tmp_path), tmp_path / "sweep"
    local = LocalSweep(load_sweep(path), "grid", folder)
    study = local.open_study()
    trial = study.ask()
    values = sweep_spec.suggest(trial, local.parameters)
    trial.set_user_attr("values", values)
    trial.set_user_attr("run_dir", str(local.run_dir(trial.number)))
    calls = []
    monkeypatch.setattr(sweep_module, "_execute", fake_execute(calls))
    assert main([str(path), "--sweep-dir", str(folder)]) == 0
    assert f"--meta_optimizer.lr={values['meta_optimizer.lr']}" in calls[0]
    assert calls[0][-1] == str(local.run_dir(trial.number))
    assert len(calls) == 3 and len(_ranking(folder)) == 3
    killed = optuna.load_study(study_name="grid", storage=f"sqlite:///{folder / 'study.db'}")
    assert killed.trials[0].state == optuna.trial.TrialState.FAIL


@pytest.mark.parametrize("method", ["random", "bayes"])
def test_random_and_bayes_sweeps_run_the_shipped_space(tmp_path, monkeypatch, method):
    sweep = load_sweep(SWEEPS_BY_NAME["meta_lr"])
    sweep["method"] = method
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(sweep))
    calls = []
    monkeypatch.setattr(sweep_module, "_execute", fake_execute(calls))
    folder = tmp_path / "sweep"
    assert main([str(path), "--count", "4", "--sweep-dir", str(folder)]) == 0
    rows = _ranking(folder)
    assert len(calls) == 4 and len(rows) == 4
    for row in rows:
        assert 3e-4 <= float(row["meta_optimizer.lr"]) <= 3e-2
        assert row["unroll.meta_loss"] in ("mean", "log_sum", "mean_log")
    assert main([str(path), "--count", "5", "--sweep-dir", str(folder)]) == 0  # one more
    assert len(calls) == 5
    assert main([str(path), "--sweep-dir", str(folder)]) == 2  # --count is needed


def test_sweep_folder_is_locked_and_tied_to_its_definition(tmp_path, monkeypatch):
    monkeypatch.setattr(sweep_module, "_execute", fake_execute([]))
    path, folder = _grid_file(tmp_path, values=(0.01,)), tmp_path / "sweep"
    folder.mkdir()
    with open(folder / "sweep.lock", "w") as lock:
        lock.write("4242")
        lock.flush()
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(ConfigError, match=r"another process \(PID 4242\)"):
            run_local(load_sweep(path), "grid", folder, None)
    assert main([str(path), "--sweep-dir", str(folder)]) == 0
    changed = _grid_file(tmp_path, values=(0.02,))
    assert main([str(changed), "--sweep-dir", str(folder)]) == 2


def test_metric_is_the_runs_last_value(tmp_path):
    records = [{"step": 1, "val/best_loss": 3.0}, {"step": 2, "x": 1}, {"val/best_loss": 2.5}]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    assert read_metric(tmp_path, "val/best_loss") == 2.5
    with pytest.raises(MetricMissing, match=r"no 'best_val_loss' .*val/best_loss, x"):
        read_metric(tmp_path, "best_val_loss")
    (tmp_path / "metrics.jsonl").write_text(json.dumps({"val/best_loss": "nan"}) + "\n")
    with pytest.raises(MetricMissing, match="nan"):
        read_metric(tmp_path, "val/best_loss")


def test_metric_set_only_in_the_summary_is_read_from_summary_json(tmp_path):
    """``best_val_loss`` goes to W&B's run summary, never to ``metrics.jsonl``: the run's
    ``summary.json`` (``Tracker.summary``) holds it, and a summary value wins as on W&B."""
    from meta_train.training.tracking import Tracker

    (tmp_path / "metrics.jsonl").write_text(json.dumps({"step": 1, "x": 4.0}) + "\n")
    tracker = Tracker(tmp_path, console=lambda _: None)  # appends to the existing file
    tracker.summary({"best_val_loss": 0.75, "x": 3.0})
    tracker.close()
    assert read_metric(tmp_path, "best_val_loss") == 0.75
    assert read_metric(tmp_path, "x") == 3.0


def test_online_configs_log_offline_here(monkeypatch):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    online = load_config("tiny", ["wandb.mode=online"])
    assert sweep_module._trial_env(online, "s")["WANDB_MODE"] == "offline"
    assert "WANDB_MODE" not in sweep_module._trial_env(load_config("tiny"), "s")
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert sweep_module._trial_env(online, "s")["WANDB_MODE"] == "disabled"


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ({"min": 1, "max": 4}, dict(low=1, high=4, integer=True)),
        ({"min": 0.1, "max": 1.0}, dict(low=0.1, high=1.0, integer=False, log=False)),
        ({"distribution": "log_uniform_values", "min": 1e-4, "max": 1e-2}, dict(log=True)),
        ({"distribution": "log_uniform", "min": 0.0, "max": 1.0}, dict(low=1.0, high=math.e)),
        ({"distribution": "q_uniform", "min": 0.0, "max": 1.0, "q": 0.25}, dict(step=0.25)),
    ],
)
def test_parameters_follow_wandbs_distributions(spec, expected):
    parameter = parse_parameter("k", spec)
    for name, value in expected.items():
        assert getattr(parameter, name) == pytest.approx(value), name


def test_unsupported_local_sweeps_are_refused_clearly():
    with pytest.raises(ConfigError, match="need the W&B server"):
        parse_parameter("k", {"distribution": "normal", "min": 0.0, "max": 1.0})
    grid = {**_sweep(**{"meta_optimizer.lr": {"min": 0.001, "max": 0.1}}), "method": "grid"}
    with pytest.raises(ConfigError, match="a grid needs values"):
        check_sweep(grid)
    with pytest.raises(ConfigError, match="sets a swept parameter"):
        check_sweep(_sweep(seed={"values": [1, 2]}), overrides=["seed=3"])


@pytest.mark.slow
@pytest.mark.parametrize("path", SWEEPS, ids=lambda p: p.stem)
def test_shipped_sweeps_run_here_on_a_tiny_budget(path, tmp_path, monkeypatch):
    monkeypatch.setenv("L2O_NATIVE", "0")
    folder = tmp_path / "sweep"
    budget = ["--config", "tiny", "schedule.horizon=120", "meta_test.enabled=false"]
    assert main([str(path), "--count", "1", "--sweep-dir", str(folder), *budget]) == 0
    (row,) = _ranking(folder)
    assert row["state"] == "complete" and math.isfinite(float(row["val/best_loss"]))


def test_without_optuna_a_local_sweep_says_what_to_install(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "optuna", None)  # import optuna raises ImportError
    path = _grid_file(tmp_path, values=(0.01,))
    assert main([str(path), "--sweep-dir", str(tmp_path / "sweep")]) == 2
    assert "l2o[sweeps]" in capsys.readouterr().err
