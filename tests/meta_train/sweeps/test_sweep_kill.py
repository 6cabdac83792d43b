"""Kill anywhere: a local sweep SIGKILLed at random moments and started again each time ends with
the ranking of an uninterrupted sweep, no process of it left behind, and every trial's number
that of a run of its own parameters (the sweep engine's analogue of test_resume.py)."""

from __future__ import annotations

import contextlib
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from test_sweep_recovery import (
    _launch_sweep,
    _processes_mentioning,
    _ranking,
    wait_until_no_process_mentions,
)

from meta_train.sweeps.spec import PROGRAM
from meta_train.training import checkpointing as ckpt
from meta_train.training.tracking import METRICS_FILE, read_metrics

KILLS = 5
COUNT = 3
# tiny: 2 runs x 2 meta-steps and 2 validations per trial, a checkpoint after every meta-step;
# threads=1 so that a resumed run is bit for bit an uninterrupted one
COMMAND = ["--config", "tiny", "meta_test.enabled=false", "threads=1", "checkpoint.every=1"]


def _sweep_file(tmp_path: Path) -> Path:
    sweep = {
        "program": PROGRAM,
        "method": "random",
        "metric": {"name": "val/best_loss", "goal": "minimize"},
        "parameters": {
            "meta_optimizer.lr": {
                "distribution": "log_uniform_values",
                "min": 1e-3,
                "max": 1e-1,
            }
        },
        "command": ["${env}", "${interpreter}", "${program}", *COMMAND, "${args}"],
    }
    path = tmp_path / "random.yaml"
    path.write_text(yaml.safe_dump(sweep))
    return path


def _records(folder: Path) -> int:
    """Metric records written by every trial so far (the sweep's progress)."""
    total = 0
    for path in (folder / "trials").glob(f"*/{METRICS_FILE}"):
        with contextlib.suppress(FileNotFoundError):  # a folder moved meanwhile
            total += path.read_bytes().count(b"\n")
    return total


def _run_to_the_end(path: Path, folder: Path) -> None:
    process = _launch_sweep(path, folder, "--count", str(COUNT))
    assert process.wait(timeout=600) == 0, process.stderr.read()


def _rows(folder: Path) -> list[tuple[str, str, str, str]]:
    return [
        (r["rank"], r["meta_optimizer.lr"], r["val/best_loss"], r["state"])
        for r in _ranking(folder)
    ]


@pytest.mark.slow
def test_a_sweep_killed_anywhere_ends_as_an_uninterrupted_one(tmp_path):
    path = _sweep_file(tmp_path)
    reference = tmp_path / "reference"
    _run_to_the_end(path, reference)
    folder = tmp_path / "killed"
    rng = random.Random(29)
    kills = []
    for _ in range(KILLS):
        process = _launch_sweep(path, folder, "--count", str(COUNT))
        if rng.random() < 0.25:  # early: while it starts, reads its study, queues trials again
            time.sleep(rng.uniform(0.0, 3.0))
        else:  # once its trials logged a few more records, plus up to a few checkpoints
            target = _records(folder) + rng.randint(1, 4)
            while process.poll() is None and _records(folder) < target:
                time.sleep(0.01)
            time.sleep(rng.uniform(0.0, 0.3))
        if process.poll() is not None:
            assert process.returncode == 0, process.stderr.read()
            break
        process.send_signal(signal.SIGKILL)
        process.wait()
        left = wait_until_no_process_mentions(str(folder))
        assert left == [], f"kill {len(kills) + 1} left trial processes {left}"
        kills.append({"records": _records(folder), "trials": _trial_folders(folder)})
    _run_to_the_end(path, folder)
    print("kill points:", kills)
    assert len(kills) >= 3, kills
    assert wait_until_no_process_mentions(str(tmp_path)) == []
    assert _rows(folder) == _rows(reference)
    for row in _ranking(folder):  # each number is that of a run of the row's own parameters
        run_dir = Path(row["run_dir"])
        saved = ckpt.load_run_checkpoint(run_dir / "last.pt")["config"]
        assert repr(saved["meta_optimizer"]["lr"]) == row["meta_optimizer.lr"]
        losses = [r["val/best_loss"] for r in read_metrics(run_dir) if "val/best_loss" in r]
        assert repr(losses[-1]) == row["val/best_loss"]


def _trial_folders(folder: Path) -> list[str]:
    trials = folder / "trials"
    return sorted(p.name for p in trials.iterdir() if p.is_dir()) if trials.exists() else []


def test_the_orphan_probe_finds_and_kills_a_live_process(tmp_path):
    """The probe sees a live process naming the folder (else the kill test proves nothing)."""
    marker = str(tmp_path / "marker")
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)", marker])
    try:
        for _ in range(1000):  # its command line shows once it has started
            if _processes_mentioning(marker):
                break
            time.sleep(0.01)
        assert _processes_mentioning(marker) == [process.pid]
        assert wait_until_no_process_mentions(marker, timeout=0.1) == [process.pid]
        assert process.wait(timeout=60) == -signal.SIGKILL
    finally:
        process.kill()
        process.wait()
