"""``python meta_train/run.py`` end to end, in subprocesses, from a folder outside the repo."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import l2o.optimizers as lo
from meta_train.run import main
from meta_train.tracking import read_metrics

RUN_PY = Path(__file__).resolve().parents[2] / "meta_train" / "run.py"


def run_cli(*args: str, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(RUN_PY), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        env={**os.environ, "WANDB_MODE": "disabled", **(env or {})},
        timeout=300,
    )


@pytest.mark.slow
def test_two_meta_steps_end_to_end(tmp_path):
    proc = run_cli(
        "--config",
        "tiny",
        "--run-dir",
        "out",
        "schedule.runs_per_epoch=1",  # 1 run × 2 meta-steps
        "--meta_test.seeds=3",  # the wandb-agent form
        "--meta_test.baselines=[sgd, adam]",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    run = tmp_path / "out"
    for name in ("config.yaml", "metrics.jsonl", "last.pt", "best.pt"):
        assert (run / name).is_file(), name
    assert f"results in {Path('out')}" in proc.stdout
    records = read_metrics(run)
    train = [r for r in records if "train/meta_loss" in r]
    assert [r["step"] for r in train] == [1, 2]
    assert all(r["train/meta_loss"] > 0 for r in train)
    assert [r["val/loss"] for r in records if "val/loss" in r]  # held-out validation ran
    # the resolved config records the overrides
    assert "seeds: 3" in (run / "config.yaml").read_text()
    # best.pt is a learned-optimizer checkpoint that LearnedOptimizer loads
    net, meta = lo.load_learned_optimizer(run / "best.pt")
    assert meta["task"] == "mnist_mlp_sigmoid" and net.hidden_size == 8
    model = torch.nn.Linear(3, 1)
    opt = lo.LearnedOptimizer(model.parameters(), run / "best.pt")
    model(torch.ones(2, 3)).sum().backward()
    opt.step()
    # the evaluation (meta_train/evaluate.py, indist + long, quick): tables, CSV, JSON, PNGs
    for text in ("l2o (best)", "sgdm", "adamw_cosine", "ratio to best", "OVERALL l2o (best)"):
        assert text in proc.stdout, text
    for suite, steps in (("indist", 6), ("long", 30)):  # 1x and 5x the horizon of 6
        with open(run / "evaluation" / suite / "summary.csv") as f:
            rows = list(csv.DictReader(f))
        assert {r["optimizer"] for r in rows} == {"l2o (best)", "sgdm", "adam", "adamw_cosine"}
        assert {r["steps"] for r in rows} == {str(steps)}
        results = json.loads((run / "evaluation" / suite / "results.json").read_text())
        assert results["schema"] == "l2o.evaluation"
        assert (run / "evaluation" / suite / "ratios.png").stat().st_size > 1000


def test_config_errors_exit_early_with_the_key(tmp_path):
    proc = run_cli("--config", "tiny", "meta_optimizer.lrr=0.1", cwd=tmp_path)
    assert proc.returncode == 2
    assert "unknown config key 'meta_optimizer.lrr'. Did you mean meta_optimizer.lr" in proc.stderr
    assert not (tmp_path / "runs").exists()  # nothing was started


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--unroll.length=0"], "unroll.length must be positive"),
        (["task.name=mnist_mlp_sigmod"], "Did you mean mnist_mlp_sigmoid"),
        (["optimizer.name=lstn"], "unknown learned optimizer 'lstn'"),
        (["--meta_test.baselines=[sgd, adan]"], "unknown baseline 'adan'"),
        (["meta_optimizer.betas=[0.9, 1.0]"], "meta_optimizer.betas[1] must be in [0, 1)"),
        (["device=cuda:7"] if not torch.cuda.is_available() else ["device=tpu"], "device"),
    ],
)
def test_bad_configs_exit_2_before_any_work(tmp_path, monkeypatch, capsys, args, message):
    monkeypatch.chdir(tmp_path)
    assert main(["--config", "tiny", *args]) == 2
    assert message in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []  # no run folder


def test_a_missing_dataset_fails_before_training(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("L2O_DATA", str(tmp_path / "no-data"))
    code = main(
        [
            "--config",
            "tiny",
            "--run-dir",
            "out",
            "task.name=cifar10_mlp_sigmoid",
            "task.dataset=cifar10",
        ]
    )
    assert code == 2
    assert "task.dataset: cifar10 not found" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()  # checked before the run folder is made


def test_print_config_and_refusal_to_overwrite(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["--config", "paper", "--print-config", "schedule.epochs=3"]) == 0
    out = capsys.readouterr().out
    assert "epochs: 3" in out and "meta_loss: log_sum" in out
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "last.pt").write_bytes(b"")
    assert main(["--config", "tiny", "--run-dir", "out"]) == 2
    assert "--resume" in capsys.readouterr().err
    assert main(["--resume", "out", "--config", "tiny"]) == 2
    assert "drop --config" in capsys.readouterr().err
    assert main(["--resume", "absent"]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["--resume", "out"]) == 2
    assert "truncated or corrupt" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--config", "tiny", "schedule.epochs"])
    assert "key=value" in capsys.readouterr().err
