"""Exact resume: a run interrupted anywhere and resumed ends bit for bit where an uninterrupted
run ends (learned-optimizer weights, meta-Adam state, best checkpoint, metrics)."""

from __future__ import annotations

import copy
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from crash_run import train_until_crash

from meta_train.configuration.schema import load_config
from meta_train.training import checkpointing as ckpt
from meta_train.training.tracking import METRICS_FILE, read_metrics

ROOT = Path(__file__).resolve().parents[3]
# 2 epochs × 2 runs × 3 meta-steps; validation after every second run picks best.pt; threads=1
# so that processes compare bit for bit whatever the machine's core count.
OVERRIDES = [
    "schedule.epochs=2",
    "schedule.runs_per_epoch=2",
    "schedule.horizon=9",
    "validation.every_runs=2",
    "meta_test.enabled=false",
    "checkpoint.every=1",
    "threads=1",
]
TIMING_KEYS = {"time", "train/inner_steps_per_s"}
KILLS = 3  # SIGKILLs per run (each costs a process start)


def _same_state(a: dict, b: dict, what: str) -> None:
    assert a.keys() == b.keys(), what
    for key in a:
        if torch.is_tensor(a[key]):
            assert torch.equal(a[key], b[key]), f"{what}: {key}"
        elif isinstance(a[key], dict):
            _same_state(a[key], b[key], f"{what}.{key}")
        else:
            assert a[key] == b[key], f"{what}: {key}"


def _assert_same_run(reference: Path, other: Path) -> None:
    ref, got = (
        ckpt.load_run_checkpoint(reference / "last.pt"),
        ckpt.load_run_checkpoint(other / "last.pt"),
    )
    _same_state(ref["lopt"]["state_dict"], got["lopt"]["state_dict"], "lopt")
    _same_state(ref["meta_optimizer"]["state"], got["meta_optimizer"]["state"], "meta-Adam")
    assert ref["position"] == got["position"] and ref["counters"] == got["counters"]
    assert ref["best"] == got["best"]
    if (reference / "best.pt").exists():
        a, b = ckpt.safe_load(reference / "best.pt"), ckpt.safe_load(other / "best.pt")
        _same_state(a["state_dict"], b["state_dict"], "best.pt")
    assert _untimed(read_metrics(reference)) == _untimed(read_metrics(other))


def _untimed(records: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in records]


# ---------------------------------------------------------------------------------------------
# In-process: a crash (exception) after meta-step k, before that step's checkpoint


def _train(run_dir: Path, crash_after: int | None = None, resume: dict | None = None) -> None:
    train_until_crash(load_config("tiny", OVERRIDES), run_dir, crash_after, resume)


TOTAL_STEPS, VALIDATIONS = 12, 2


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """An uninterrupted run (in this process: the subprocess runs must match it bit for bit)."""
    run_dir = tmp_path_factory.mktemp("reference")
    _train(run_dir)
    assert len(read_metrics(run_dir)) == TOTAL_STEPS + VALIDATIONS
    return run_dir


@pytest.mark.parametrize(
    "crash_after",
    [2, 6, 7],  # mid-run; at an epoch's end, before its validation and checkpoint; in epoch 2
)
def test_resume_after_a_crash_is_exact(tmp_path, reference, crash_after):
    _train(tmp_path, crash_after=crash_after)
    saved = ckpt.load_run_checkpoint(tmp_path / "last.pt")
    assert saved["position"]["global_step"] == crash_after - 1  # the last checkpoint before it
    _train(tmp_path, resume=saved)
    _assert_same_run(reference, tmp_path)


def test_a_finished_run_resumes_to_the_same_end(tmp_path, reference):
    shutil.copytree(reference, tmp_path / "run")
    before = ckpt.load_run_checkpoint(tmp_path / "run" / "last.pt")
    _train(tmp_path / "run", resume=before)
    _assert_same_run(reference, tmp_path / "run")


# ---------------------------------------------------------------------------------------------
# Subprocesses killed with SIGKILL at random moments


def _launch(run_dir: Path, resume: bool) -> subprocess.Popen:
    args = ["--resume", str(run_dir)] if resume else ["--config", "tiny", "--run-dir", str(run_dir)]
    return subprocess.Popen(
        [sys.executable, "meta_train/run.py", *args, *OVERRIDES],
        cwd=ROOT,
        env={**os.environ, "WANDB_MODE": "disabled"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def _lines(path: Path) -> int:
    try:
        return path.read_bytes().count(b"\n")
    except FileNotFoundError:
        return 0


@pytest.mark.slow
def test_sigkill_at_random_moments_then_resume_is_bit_identical(tmp_path, reference):
    total = TOTAL_STEPS + VALIDATIONS
    rng = random.Random(1234)
    run_dir = tmp_path / "killed"
    kills = []
    proc = _launch(run_dir, resume=False)
    for _ in range(KILLS):
        # a random moment: once the run has logged a random number of records, plus a random delay
        # (the meta-steps and checkpoint writes take tens of milliseconds each)
        done = _lines(run_dir / METRICS_FILE)
        if done >= total - 1:
            break
        target = min(done + rng.randint(1, 4), total - 1)
        while proc.poll() is None and _lines(run_dir / METRICS_FILE) < target:
            time.sleep(0.002)
        time.sleep(rng.uniform(0.0, 0.05))
        if proc.poll() is not None:
            break
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        saved = run_dir / "last.pt"
        kills.append(
            {
                "records": _lines(run_dir / METRICS_FILE),
                "checkpointed_step": (
                    ckpt.load_run_checkpoint(saved)["position"]["global_step"]
                    if saved.exists()
                    else None
                ),
                "torn_temporaries": sorted(p.name for p in run_dir.glob(".*tmp*")),
            }
        )
        proc = _launch(run_dir, resume=saved.exists())
    assert proc.wait(timeout=300) == 0, proc.stderr.read()
    print("kill points:", kills)
    assert len(kills) >= 2, kills  # the kills landed inside the run, not after its end
    assert not list(run_dir.glob(".*tmp*"))  # the resumed run cleaned up after the kills
    _assert_same_run(reference, run_dir)


# ---------------------------------------------------------------------------------------------
# --resume with overrides: compared with the config as saved; only documented changes pass


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """A finished two-run tiny run, made through the CLI."""
    from meta_train.run import main

    run_dir = tmp_path_factory.mktemp("finished") / "run"
    args = ["--config", "tiny", "--run-dir", str(run_dir), "meta_test.enabled=false", "threads=1"]
    assert main(args) == 0
    return run_dir


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("unroll.length=2", "unroll.length: checkpoint=3, config=2"),
        ("task.name=mnist_mlp_relu", "task.name: checkpoint='mnist_mlp_sigmoid'"),
        ("schedule.horizon=12", "schedule.horizon: checkpoint=6, config=12"),
        ("optimizer.kwargs.hidden_size=12", "optimizer.kwargs.hidden_size: checkpoint=8"),
        ("seed=1", "seed: checkpoint=0, config=1"),
        ("threads=2", "threads: checkpoint=1, config=2"),
    ],
)
def test_resume_refuses_a_changed_nested_setting_and_writes_nothing(
    tmp_path, finished, capsys, override, key
):
    from meta_train.run import EXIT_CONFIG, main

    run_dir = tmp_path / "run"
    shutil.copytree(finished, run_dir)
    files = lambda: {p.name: p.read_bytes() for p in run_dir.iterdir() if p.name != ckpt.LOCK}
    before = files()
    assert main(["--resume", str(run_dir), override]) == EXIT_CONFIG
    err = capsys.readouterr().err
    assert "cannot resume" in err and key in err, err
    assert len([line for line in err.splitlines() if line.startswith("error:")]) == 1
    assert files() == before  # config.yaml, last.pt, metrics.jsonl untouched


def test_resume_allows_the_documented_safe_changes(tmp_path, finished, capsys):
    from meta_train.run import main

    run_dir = tmp_path / "run"
    shutil.copytree(finished, run_dir)
    assert main(["--resume", str(run_dir), "schedule.epochs=2", "wandb.mode=offline"]) == 0
    err = capsys.readouterr().err
    assert "resuming with a changed setting: schedule.epochs: 1 -> 2" in err
    saved = ckpt.load_run_checkpoint(run_dir / "last.pt")
    assert saved["position"]["epoch"] == 2 and saved["config"]["schedule"]["epochs"] == 2
    assert "epochs: 2" in (run_dir / "config.yaml").read_text()


def test_fewer_epochs_than_already_started_are_refused():
    saved = load_config("tiny").to_dict()
    current = load_config("tiny", ["schedule.epochs=1", "meta_optimizer.lr=1e-3"]).to_dict()
    saved["schedule"]["epochs"] = 3
    mid_second_epoch = {"epoch": 1, "run": 0, "meta_step": 1, "global_step": 5}
    with pytest.raises(ckpt.CheckpointError, match=r"schedule\.epochs.*already started 3 runs"):
        ckpt.check_resume_config(saved, current, mid_second_epoch)
    at_the_end_of_the_first = {"epoch": 1, "run": 0, "meta_step": 0, "global_step": 4}
    changes = ckpt.check_resume_config(saved, current, at_the_end_of_the_first)
    assert changes == ["meta_optimizer.lr: 0.01 -> 0.001", "schedule.epochs: 3 -> 1"]


def test_overrides_never_edit_the_saved_config():
    from meta_train.configuration.schema import config_from_dict

    saved = load_config("tiny").to_dict()
    before = copy.deepcopy(saved)
    config_from_dict(saved, ["unroll.length=2", "task.name=mnist_mlp_relu", "schedule.horizon=12"])
    assert saved == before
