"""``sweep.py --check`` refuses what would fail at run time, in one line with exit code 2 and
before anything is written: configs that run.py's validation refuses (combinations of swept
values included), a metric the run never logs, malformed q_uniform steps; a huge grid is counted,
not enumerated; ``early_terminate`` is said to be ignored by the local engine."""

from __future__ import annotations

import csv
import tracemalloc
from pathlib import Path

import pytest
import yaml
from sweep_fakes import fake_execute

from meta_train.configuration.engine import ConfigError
from meta_train.configuration.schema import load_config
from meta_train.sweep import main
from meta_train.sweeps import engine as sweep_module
from meta_train.sweeps import spec as sweep_spec
from meta_train.sweeps.metrics import check_metric, logged_metrics
from meta_train.sweeps.spec import PROGRAM, check_sweep, parse_parameter

TINY = ["--config", "tiny", "meta_test.enabled=false"]


def _sweep(parameters: dict, method: str = "random", extra=(), metric="val/best_loss") -> dict:
    return {
        "program": PROGRAM,
        "method": method,
        "metric": {"name": metric, "goal": "minimize"},
        "parameters": parameters,
        "command": ["${env}", "${interpreter}", "${program}", *TINY, *extra, "${args}"],
    }


def _check_cli(tmp_path: Path, sweep: dict, capsys) -> tuple[int, str]:
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(sweep))
    code = main([str(path), "--check", "--sweep-dir", str(tmp_path / "never")])
    err = capsys.readouterr().err
    assert not (tmp_path / "never").exists()
    return code, err


def _one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


# --------------------------------------------------------------------------------------------
# What run.py's validation refuses is refused at --check


REGULARIZED = ("regularization.kind=symmetry", "regularization.reg_mul=0.1")


@pytest.mark.parametrize(
    ("parameters", "extra", "fragment"),
    [
        ({"unroll.estimator": {"values": ["first", "pes"]}}, REGULARIZED, "regularization"),
        (
            {"unroll.estimator_kwargs": {"values": [{"sigma": 0.1}, {"sigma": -1}]}},
            ("unroll.estimator=es",),
            "sigma must be positive",
        ),
        (
            {"unroll.estimator_kwargs": {"values": [{"bogus": 1}]}},
            ("unroll.estimator=es",),
            "bogus",
        ),
        (  # only the combination fails: ES/PES with a regularization
            {
                "unroll.estimator": {"values": ["first", "pes"]},
                "regularization.kind": {"values": ["none", "symmetry"]},
            },
            ("regularization.reg_mul=0.1",),
            "does not support regularization",
        ),
    ],
    ids=["pes-regularized", "sigma-negative", "bogus-kwarg", "combination"],
)
def test_check_refuses_what_run_py_refuses(tmp_path, capsys, parameters, extra, fragment):
    code, err = _check_cli(tmp_path, _sweep(parameters, extra=extra), capsys)
    assert code == 2
    assert fragment in _one_error_line(err)


def test_a_trial_whose_combination_run_py_refuses_fails_before_its_folder_exists(
    tmp_path, monkeypatch
):
    """A space too large to check every combination at --check: each trial's config goes
    through run.py's validation before its folder is touched."""
    parameters = {
        "unroll.estimator": {"values": ["first", "pes"]},
        "regularization.kind": {"values": ["none", "symmetry"]},
        "meta_optimizer.lr": {"values": [0.001 * (i + 1) for i in range(20)]},
    }
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(_sweep(parameters, extra=("regularization.reg_mul=0.1",))))
    folder = tmp_path / "sweep"
    monkeypatch.setattr(sweep_module, "_execute", fake_execute(calls := []))
    assert main([str(path), "--count", "12", "--sweep-dir", str(folder)]) == 0
    with open(folder / "ranking.csv") as f:
        rows = list(csv.DictReader(f))
    refused = [r for r in rows if r["state"] == "fail"]
    assert refused, "the seed drew no refused combination: choose another count"
    for row in refused:
        assert (row["unroll.estimator"], row["regularization.kind"]) == ("pes", "symmetry")
        assert "does not support regularization" in row["error"]
        assert not Path(row["run_dir"]).exists()
    assert len(calls) == len(rows) - len(refused)


# --------------------------------------------------------------------------------------------
# The metric must be one the run logs


def test_a_metric_typo_is_refused_with_the_near_names(tmp_path, capsys):
    sweep = _sweep({"seed": {"values": [0, 1]}}, metric="val/best_los")
    code, err = _check_cli(tmp_path, sweep, capsys)
    assert code == 2
    line = _one_error_line(err)
    assert "metric.name 'val/best_los' is not logged" in line
    assert "Did you mean val/best_loss" in line


def test_a_metric_the_trial_configs_do_not_log_is_refused(tmp_path, capsys):
    sweep = _sweep({"seed": {"values": [0, 1]}}, extra=("validation.enabled=false",))
    code, err = _check_cli(tmp_path, sweep, capsys)
    assert code == 2
    assert "(validation.enabled is false)" in _one_error_line(err)


def test_metric_names_follow_the_config():
    tiny = load_config("tiny")
    assert "eval/indist/final/geomean_ratio" in logged_metrics(tiny)
    assert "val/best_loss" in logged_metrics(tiny)
    check_metric(load_config("tiny", ["unroll.estimator=es"]), "train/es/estimate_norm")
    with pytest.raises(ConfigError, match="not logged"):
        check_metric(tiny, "train/es/estimate_norm")  # tiny's estimator is first-order
    with pytest.raises(ConfigError, match=r"meta_test\.enabled is false"):
        check_metric(load_config("tiny", ["meta_test.enabled=false"]), "eval/indist/final/won")


@pytest.mark.slow
def test_the_metric_names_are_those_a_real_run_logs(tmp_path):
    """Every number a run (validation and meta-test on) writes to metrics.jsonl and
    summary.json is a name the check accepts, and every name the check lists is written."""
    from meta_train.run import main as run_main
    from meta_train.training.tracking import read_metrics, read_summary

    args = ["--config", "tiny", "--run-dir", str(tmp_path / "run"), "threads=1"]
    assert run_main([*args, "meta_test.seeds=1", "meta_test.plot=false"]) == 0
    cfg = load_config("tiny", ["meta_test.seeds=1", "meta_test.plot=false"])
    records = read_metrics(tmp_path / "run")
    written = {k for r in records for k in r} | set(read_summary(tmp_path / "run"))
    written -= {"step", "time"}
    for name in written:
        check_metric(cfg, name)
    assert set(logged_metrics(cfg)) <= written


# --------------------------------------------------------------------------------------------
# q_uniform


@pytest.mark.parametrize(
    ("q", "fragment"),
    [
        (0, "q must be positive"),
        (-0.5, "q must be positive"),
        ("abc", "q must be a finite number, got 'abc'"),
        ("1e-3", "write 1.0e-3"),
        (2.0, "larger than max - min"),
        (True, "q must be a finite number"),
    ],
)
def test_bad_q_uniform_steps_are_refused_at_check(tmp_path, capsys, q, fragment):
    spec = {"distribution": "q_uniform", "min": 0.0, "max": 1.0, "q": q}
    code, err = _check_cli(tmp_path, _sweep({"meta_optimizer.grad_clip_norm": spec}), capsys)
    assert code == 2
    assert fragment in _one_error_line(err)


def test_a_valid_q_uniform_step_is_kept():
    spec = {"distribution": "q_uniform", "min": 0.0, "max": 1.0, "q": 0.25}
    assert parse_parameter("k", spec).step == 0.25


# --------------------------------------------------------------------------------------------
# Size: a huge grid is counted at --check, never enumerated


def test_a_three_million_point_grid_is_counted_not_enumerated(tmp_path, capsys, monkeypatch):
    sweep = _sweep({"seed": {"min": 0, "max": 2_999_999}}, method="grid")
    built, load_config_of_run_py = [], sweep_spec.load_config

    def one_config_per_value_checked(*args, **kwargs):
        built.append(args)
        assert len(built) <= 10, "a config per grid point: the grid is being enumerated"
        return load_config_of_run_py(*args, **kwargs)

    monkeypatch.setattr(sweep_spec, "load_config", one_config_per_value_checked)
    tracemalloc.start()
    try:
        configs = check_sweep(sweep)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert [c.seed for c in configs] == [0, 2_999_999]  # both ends, each validated
    assert peak < 50 * 2**20, f"peak {peak / 2**20:.0f} MiB"
    code, err = _check_cli(tmp_path, sweep, capsys)
    assert code == 0 and "a grid of 3,000,000 points" in err


def test_a_small_grid_is_checked_in_full(tmp_path):
    sweep = _sweep(
        {"unroll.length": {"values": [1, 2, 3]}, "schedule.horizon": {"values": [6, 9]}},
        method="grid",
    )
    with pytest.raises(ConfigError, match=r"'unroll\.length': 2, 'schedule\.horizon': 9"):
        check_sweep(sweep)  # 9 is no multiple of 2: only that combination fails


# --------------------------------------------------------------------------------------------
# early_terminate: applied by the W&B server only, and said so


def test_early_terminate_is_said_to_be_ignored_here(tmp_path, capsys, monkeypatch):
    sweep = _sweep({"meta_optimizer.lr": {"values": [0.01]}}, method="grid")
    sweep["early_terminate"] = {"type": "hyperband", "min_iter": 3}
    code, err = _check_cli(tmp_path, sweep, capsys)
    warning = "warning: early_terminate (hyperband) is applied by the W&B server only"
    assert code == 0 and err.count(warning) == 1
    monkeypatch.setattr(sweep_module, "_execute", fake_execute([]))
    path = tmp_path / "s.yaml"
    assert main([str(path), "--sweep-dir", str(tmp_path / "sweep")]) == 0
    assert capsys.readouterr().err.count(warning) == 1


@pytest.mark.parametrize(
    "rule", ["hyperband", {"type": "median"}, {"type": "hyperband", "min_iters": 3}]
)
def test_a_malformed_early_terminate_is_refused(tmp_path, capsys, rule):
    sweep = _sweep({"meta_optimizer.lr": {"values": [0.01]}}, method="grid")
    sweep["early_terminate"] = rule
    code, err = _check_cli(tmp_path, sweep, capsys)
    assert code == 2
    assert "early_terminate" in _one_error_line(err)
