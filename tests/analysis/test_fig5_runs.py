"""Figure 5's meta-trainings: a finished run folder is reused, an unfinished one continued with
``--resume``, and a run made with other settings stops the figure with one line."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml

from analysis.figures import fig5
from analysis.figures.runs import Context, SettingsMismatch
from l2o.optimizers.wrapper import pretrained_path

TINY = fig5.SETTINGS["tiny"]


@pytest.fixture(scope="module")
def tiny_config() -> dict:
    """The resolved config of the tiny settings' reg_mul=0 meta-training (as run.py writes it)."""
    proc = subprocess.run(
        [*fig5.run_py(), *fig5.meta_train_args(TINY, 0.0), "--print-config"],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    return yaml.safe_load(proc.stdout)


def _fake_run(ctx: Context, config: dict, finished: bool, times=(100.0, 110.0, 130.0)):
    run_dir = ctx.out / "fig5_runs/reg_mul=0"
    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config))
    (run_dir / "last.pt").write_bytes(b"a checkpoint")
    (run_dir / "best.pt").write_bytes(pretrained_path("lstm-mnist").read_bytes())
    lines = [json.dumps({"step": i, "time": t}) for i, t in enumerate(times)]
    (run_dir / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    if finished:
        (run_dir / "summary.json").write_text("{}")
    return run_dir


@pytest.fixture
def commands(monkeypatch):
    """The meta-training commands fig5 starts; each 'run' finishes its folder."""
    started = []

    def fake_run(command, **kwargs):
        started.append(command)
        run_dir = next(
            a.split("=", 1)[1] for a in command if a.startswith(("--resume=", "--run-dir="))
        )
        fig5.Path(run_dir).mkdir(parents=True, exist_ok=True)
        (fig5.Path(run_dir) / "summary.json").write_text("{}")
        return subprocess.CompletedProcess(command, 0)

    monkeypatch.setattr(fig5.subprocess, "run", fake_run)
    return started


def test_a_finished_run_is_reused_and_its_time_counted(tmp_path, tiny_config, commands):
    ctx = Context("tiny", tmp_path)
    run_dir = _fake_run(ctx, tiny_config, finished=True)
    assert fig5.meta_train_with_regularization(ctx, TINY, 0.0) == run_dir / "best.pt"
    assert commands == []
    assert ctx.compute_seconds == pytest.approx(30.0)


def test_an_unfinished_run_is_resumed(tmp_path, tiny_config, commands):
    ctx = Context("tiny", tmp_path)
    run_dir = _fake_run(ctx, tiny_config, finished=False)
    fig5.meta_train_with_regularization(ctx, TINY, 0.0)
    (command,) = commands
    assert command[-1] == f"--resume={run_dir}" and not any("--config" in a for a in command)


def test_a_new_run_gets_the_settings_overrides(tmp_path, commands):
    ctx = Context("tiny", tmp_path)
    with pytest.raises(RuntimeError, match=r"without a best\.pt"):  # the fake writes none
        fig5.meta_train_with_regularization(ctx, TINY, 1.0)
    (command,) = commands
    assert command[: len(fig5.run_py())] == fig5.run_py()
    assert {"--config=tiny", "regularization.kind=symmetry", "regularization.reg_mul=1.0"} <= set(
        command
    )
    assert command[-1] == f"--run-dir={tmp_path / 'fig5_runs/reg_mul=1'}"


@pytest.mark.parametrize(
    ("key", "value"),
    [(("task", "dataset"), "mnist"), (("regularization", "kind"), "symmetry"), (("name",), "x")],
)
def test_a_run_with_other_settings_fails_in_one_line(tmp_path, tiny_config, commands, key, value):
    config = json.loads(json.dumps(tiny_config))
    node = config
    for part in key[:-1]:
        node = node[part]
    node[key[-1]] = value
    ctx = Context("tiny", tmp_path)
    _fake_run(ctx, config, finished=True)
    with pytest.raises(SettingsMismatch, match=f"has {'.'.join(key)}={value}") as err:
        fig5.meta_train_with_regularization(ctx, TINY, 0.0)
    assert "\n" not in str(err.value) and commands == []


def test_threads_and_logging_do_not_count(tmp_path, tiny_config, commands):
    config = json.loads(json.dumps(tiny_config))
    config["threads"] = 1
    config["logging"]["progress"] = True
    config["wandb"]["mode"] = "offline"
    ctx = Context("tiny", tmp_path)
    _fake_run(ctx, config, finished=True)
    fig5.meta_train_with_regularization(ctx, TINY, 0.0)
    assert commands == []


def test_numbers_compare_by_value():
    assert fig5.same_value(0.001, "1e-3") and fig5.same_value(20, "20")
    assert not fig5.same_value(0.001, "0.01") and not fig5.same_value("mnist", "mnist5k")


def test_pauses_between_sessions_are_not_compute(tmp_path):
    metrics = tmp_path / "metrics.jsonl"
    times = [0.0, 5.0, 9.0, 9.0 + 2 * fig5.PAUSE_SECONDS, 9.0 + 2 * fig5.PAUSE_SECONDS + 3.0]
    metrics.write_text("\n".join(json.dumps({"time": t}) for t in times))
    assert fig5.meta_training_seconds(metrics) == pytest.approx(12.0)
    assert fig5.meta_training_seconds(tmp_path / "missing.jsonl") == 0.0


def test_full_settings_meta_train_twenty_epochs():
    assert "schedule.epochs=10" in fig5.SETTINGS["full"].overrides
    assert fig5.run_py()[0] == sys.executable  # the CLI runs with this interpreter
