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
from meta_train.configuration.schema import load_config
from meta_train.run import main
from meta_train.training import memory
from meta_train.training.parts import make_task, preflight
from meta_train.training.tracking import read_metrics

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
        "--meta_test.baselines=[sgdm, adam, adamw_cosine]",
        "--meta_test.suites=[indist, long]",
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
    for text in ("suite 'indist' (quick): 3 seeds", "suite 'long' (quick): 3 seeds"):
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
        (["task.batch_size=1000000000"], "task.batch_size (1000000000) exceeds the 4000"),
        (["optimizer.kwargs.extra_inputs=[[1]]"], "optimizer.kwargs.extra_inputs must be a flat"),
        (["optimizer.kwargs.hidden_size=-1"], "optimizer.kwargs.hidden_size must be positive"),
        ([f"seed={2**70}"], "seed must be in [0, 2**63)"),
        (["device=cuda:abc"], "device must be cpu, cuda, cuda:N, mps or auto, got 'cuda:abc'"),
        (["optimizer.kwargs.output_scale=nan"], "optimizer.kwargs.output_scale must be finite"),
        (["schedule.meta_batch=1000000000"], "schedule.meta_batch (1000000000) × unroll.length"),
        (
            ["schedule.horizon=100000000", "unroll.length=100000000"],
            "× unroll.length (100000000): one meta-step needs about",
        ),
        (
            ["unroll.estimator=second", "schedule.meta_batch=100000000"],
            "(estimator 'second'), over the",
        ),
    ],
)
def test_bad_configs_exit_2_before_any_work(tmp_path, monkeypatch, capsys, args, message):
    monkeypatch.chdir(tmp_path)
    assert main(["--config", "tiny", *args]) == 2
    assert message in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []  # no run folder


def test_a_meta_step_over_the_memory_is_refused_naming_the_keys(tmp_path, monkeypatch, capsys):
    """The comparison itself: with 1 MiB available, even ``tiny`` does not fit."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(memory, "available_bytes", lambda device: (2**20, "test RAM"))
    assert main(["--config", "tiny", "schedule.meta_batch=4"]) == 2
    err = _one_error_line(capsys.readouterr().err)
    assert "schedule.meta_batch (4) × unroll.length (3): one meta-step needs about" in err
    assert "over the 0.0 GiB test RAM; lower schedule.meta_batch or unroll.length" in err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("name", ["default", "tiny"])
def test_the_shipped_configs_fit_in_memory(name):
    cfg = load_config(name)
    preflight(cfg)  # no ConfigError
    task = make_task(cfg)
    x, y = task.load_data("cpu", root=cfg.data.root).split("train")
    lopt = lo.create(cfg.optimizer.name, **cfg.optimizer.kwargs)
    bs = task.batch_size
    need = memory.meta_step_bytes(cfg.unroll, cfg.schedule.meta_batch, task, lopt, x[:bs], y[:bs])
    assert 0 < need < 2**30  # well under any machine that runs the tests
    twice = memory.meta_step_bytes(
        cfg.unroll, 2 * cfg.schedule.meta_batch, task, lopt, x[:bs], y[:bs]
    )
    assert twice == pytest.approx(2 * need, rel=1e-9)  # linear in the meta-batch


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


# ---------------------------------------------------------------------------------------------
# Run folders, writes and data that fail: one clear line each, the previous checkpoint kept


def _one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, err
    return lines[0]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--run-dir", "afile"], "run folder afile is a file, not a folder"),
        (["--run-dir", "afile/run"], "cannot write in run folder afile/run: Not a directory"),
        (["name=" + "n" * 300], "bytes, over the file system's limit of"),
    ],
)
def test_unusable_run_folders_exit_2_and_create_nothing(
    tmp_path, monkeypatch, capsys, args, message
):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "afile").write_text("a file")
    assert main(["--config", "tiny", *args]) == 2
    assert message in _one_error_line(capsys.readouterr().err)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile"]


def test_resume_refuses_a_folder_where_the_run_writes_a_file(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "run" / "best.pt").mkdir(parents=True)
    (tmp_path / "run" / "last.pt").write_bytes(b"not read: the folder is checked first")
    assert main(["--resume", "run"]) == 2
    assert "run/best.pt is a folder where the run writes a file" in capsys.readouterr().err


def test_a_corrupt_dataset_file_exits_2_before_the_run_folder(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    idx = tmp_path / "fashion"
    idx.mkdir()
    (idx / "train-images-idx3-ubyte").write_bytes(b"\x00\x00\x08\x03\x00\x00\x00\x05")
    monkeypatch.setenv("L2O_DATA", str(tmp_path / "no-data"))
    monkeypatch.setenv("L2O_FASHION_MNIST_DIR", str(idx))
    code = main(["--config", "tiny", "--run-dir", "out", "task.dataset=fashion_mnist"])
    assert code == 2
    assert "train-images-idx3-ubyte is truncated" in _one_error_line(capsys.readouterr().err)
    assert not (tmp_path / "out").exists()


def test_a_full_disk_mid_run_is_one_line_and_keeps_the_previous_checkpoint(
    tmp_path, monkeypatch, capsys
):
    import errno

    from meta_train.run import EXIT_IO
    from meta_train.training import checkpointing as ckpt

    monkeypatch.chdir(tmp_path)
    real_save, saves = torch.save, []

    def save(obj, f, *args, **kwargs):  # the third checkpoint write finds the disk full
        saves.append(obj.get("position") if isinstance(obj, dict) else None)
        if len(saves) == 3:
            f.write(b"PK\x03\x04 the first bytes")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save)
    args = ["--config", "tiny", "--run-dir", "out", "validation.enabled=false"]
    assert main([*args, "meta_test.enabled=false"]) == EXIT_IO
    line = _one_error_line(capsys.readouterr().err)
    assert "No space left on device" in line and "last checkpoint out/last.pt is intact" in line
    saved = ckpt.load_run_checkpoint(tmp_path / "out" / "last.pt")
    assert saved["position"] == saves[1]  # the second write, complete
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "config.yaml",
        "last.pt",
        "metrics.jsonl",
        "run.lock",
    ]  # no temporary left behind


def test_a_run_whose_every_meta_step_was_skipped_is_not_done(tmp_path, monkeypatch, capsys):
    from meta_train.run import EXIT_NONFINITE
    from meta_train.training.trainer import Trainer

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(Trainer, "_nonfinite_reason", lambda self, result, inner: "meta_loss")
    args = ["--config", "tiny", "--run-dir", "out", "meta_test.enabled=false"]
    assert main(args) == EXIT_NONFINITE  # 4 meta-steps, fewer than the 5 that stop a run
    captured = capsys.readouterr()
    assert "meta-training done" not in captured.out + captured.err
    assert "every one of the run's 4 meta-steps was non-finite" in _one_error_line(captured.err)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"name: caf\xe9\n", "not UTF-8 text (byte 0xe9 at offset 9)"),
        (b"schedule:\n  epochs: 1\n  epochs: 2\n", "key 'epochs' is given twice (lines 2 and 3)"),
        (
            b"a: &a [x, x, x, x, x, x, x, x, x, x]\n"
            + b"".join(
                f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join(['*' + chr(97 + i)] * 10)}]\n".encode()
                for i in range(6)
            ),
            "expands to more than 100000 values",
        ),
        (None, "is a folder; give a YAML file or a config name"),
    ],
)
def test_unreadable_config_files_are_one_clear_line(
    tmp_path, monkeypatch, capsys, content, message
):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "my.yaml"
    if content is None:
        path.mkdir()
    else:
        path.write_bytes(content)
    assert main(["--config", str(path)]) == 2
    assert message in _one_error_line(capsys.readouterr().err)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["my.yaml"]
