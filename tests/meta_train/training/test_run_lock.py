"""One writer per run folder: the run lock, held by real processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from meta_train.training import checkpointing as ckpt

ROOT = Path(__file__).resolve().parents[3]
RUN_PY = ROOT / "meta_train" / "run.py"
ENV = {**os.environ, "WANDB_MODE": "disabled", "PYTHONPATH": str(ROOT)}

# A process that takes the run lock, says so, and holds it until killed.
_HOLDER = textwrap.dedent(
    """
    import sys, time
    from meta_train.training.checkpointing import RunLock
    lock = RunLock(sys.argv[1]).acquire()
    print("locked", flush=True)
    time.sleep(120)
    """
)


@pytest.fixture
def holder(tmp_path):
    """A child process holding the lock of ``tmp_path / 'run'``."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    child = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, str(run_dir)],
        stdout=subprocess.PIPE,
        text=True,
        env=ENV,
        cwd=ROOT,
    )
    try:
        assert child.stdout.readline().strip() == "locked"
        yield run_dir, child
    finally:
        child.kill()
        child.wait()


def test_a_second_process_is_refused_at_once_naming_the_holder(holder):
    run_dir, child = holder
    (run_dir / ckpt.LAST).write_bytes(b"never read: the lock is checked first")
    tic = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, str(RUN_PY), "--resume", str(run_dir)],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=120,
    )
    assert proc.returncode == 75, proc.stderr
    assert f"in use by another process (PID {child.pid} on " in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert time.perf_counter() - tic < 60  # at once: no waiting on the holder
    with pytest.raises(ckpt.RunLockedError, match=f"PID {child.pid}"):
        ckpt.RunLock(run_dir).acquire()


def test_the_lock_is_released_when_its_holder_is_killed(holder):
    run_dir, child = holder
    child.send_signal(signal.SIGKILL)
    child.wait()
    with ckpt.RunLock(run_dir) as lock:  # the kernel released it: never a stale lock
        assert lock.held
        assert f"PID {os.getpid()} " in (run_dir / ckpt.LOCK).read_text()
    assert not lock.held and (run_dir / ckpt.LOCK).read_text() == ""


def test_temporaries_are_removed_only_under_the_lock(holder, tmp_path):
    run_dir, child = holder
    in_progress = run_dir / ".last.pt.tmp-123"  # the holder's write in progress
    in_progress.write_bytes(b"partial")
    with pytest.raises(RuntimeError, match="needs its run lock held"):
        ckpt.remove_stale_temporaries(ckpt.RunLock(run_dir))
    assert in_progress.exists()
    child.kill()
    child.wait()
    with ckpt.RunLock(run_dir) as lock:
        assert ckpt.remove_stale_temporaries(lock) == [in_progress]
    assert not in_progress.exists()


def test_a_trainer_holds_the_lock_for_its_lifetime(tmp_path):
    from meta_train.configuration.schema import load_config
    from meta_train.training.trainer import Trainer

    cfg = load_config("tiny", ["validation.enabled=false", "meta_test.enabled=false"])
    trainer = Trainer(cfg, tmp_path)
    with pytest.raises(ckpt.RunLockedError, match=f"PID {os.getpid()} "):
        Trainer(cfg, tmp_path)
    trainer.close()
    Trainer(cfg, tmp_path).close()


@pytest.mark.slow
def test_two_runs_of_one_folder_never_run_together(tmp_path):
    """The issue's reproduction: the second run.py exits while the first keeps the folder."""
    first = subprocess.Popen(
        [
            sys.executable,
            str(RUN_PY),
            "--config",
            "tiny",
            "--run-dir",
            "run",
            "schedule.epochs=1000",
            "meta_test.enabled=false",
        ],
        cwd=tmp_path,
        stderr=subprocess.PIPE,
        text=True,
        env=ENV,
    )
    try:
        lock_file = tmp_path / "run" / ckpt.LOCK
        deadline = time.monotonic() + 240
        while f"PID {first.pid} " not in (lock_file.read_text() if lock_file.exists() else ""):
            assert first.poll() is None, first.stderr.read()
            assert time.monotonic() < deadline
            time.sleep(0.1)
        second = subprocess.run(
            [sys.executable, str(RUN_PY), "--resume", "run"],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            env=ENV,
            timeout=120,
        )
        assert second.returncode == 75, second.stderr
        assert f"PID {first.pid} " in second.stderr
        assert first.poll() is None  # the first run goes on
    finally:
        first.kill()
        first.wait()
