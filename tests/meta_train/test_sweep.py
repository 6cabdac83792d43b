"""W&B sweep definitions: valid offline, every parameter a real config key (no network used)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from meta_train.config import ConfigError, load_config
from meta_train.sweep import PROGRAM, agent_arg, check_sweep, load_sweep, main

SWEEPS = sorted((Path(__file__).resolve().parents[2] / "configs" / "sweeps").glob("*.yaml"))


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
