"""Checkpoints: atomic writes that survive SIGKILL, loads that never run code, clear mismatches."""

from __future__ import annotations

import os
import pickle
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from meta_train.configuration.schema import load_config
from meta_train.training import checkpointing as ckpt
from meta_train.training.trainer import Trainer


def test_atomic_save_round_trip_leaves_no_temporaries(tmp_path):
    payload = {"w": torch.randn(5, 3), "step": 7, "nested": {"name": "x", "t": (1, 2.5)}}
    path = ckpt.atomic_save(payload, tmp_path / "a.pt")
    loaded = ckpt.safe_load(path)
    assert torch.equal(loaded["w"], payload["w"]) and loaded["step"] == 7
    assert loaded["nested"] == {"name": "x", "t": (1, 2.5)}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.pt"]


def test_rng_state_round_trips_through_weights_only(tmp_path):
    import random

    import numpy as np

    state = ckpt.rng_state()
    ckpt.atomic_save(state, tmp_path / "rng.pt")
    expected = (random.random(), float(np.random.rand()), float(torch.rand(())))
    ckpt.set_rng_state(ckpt.safe_load(tmp_path / "rng.pt"))
    assert (random.random(), float(np.random.rand()), float(torch.rand(()))) == expected


# A child process that writes versions 1, 2, 3... of a ~16 MB checkpoint over the same path.
_WRITER = textwrap.dedent(
    """
    import sys, torch
    from meta_train.training.checkpointing import atomic_save
    path = sys.argv[1]
    version = 1
    while True:
        atomic_save({"version": version, "x": torch.full((4_000_000,), float(version))}, path)
        print(version, flush=True)
        version += 1
    """
)


@pytest.mark.slow
def test_sigkill_at_random_moments_never_tears_the_checkpoint(tmp_path):
    path = tmp_path / "last.pt"
    ckpt.atomic_save({"version": 0, "x": torch.zeros(4_000_000)}, path)
    rng = torch.Generator().manual_seed(1)
    for _ in range(3):
        child = subprocess.Popen(
            [sys.executable, "-c", _WRITER, str(path)], stdout=subprocess.PIPE, text=True
        )
        child.stdout.readline()  # at least one write completed: the kill lands in the loop
        time.sleep(float(torch.rand((), generator=rng)) * 0.3)
        child.send_signal(signal.SIGKILL)
        child.wait()
        payload = ckpt.safe_load(path)  # never torn: some complete version
        assert torch.equal(payload["x"], torch.full((4_000_000,), float(payload["version"])))
        assert payload["version"] >= 1  # a write of this child, completed before the kill
        with ckpt.RunLock(tmp_path) as lock:
            ckpt.remove_stale_temporaries(lock)
        assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt", ckpt.LOCK]


# A child whose write is frozen at a chosen point: inside torch.save (half the bytes out) or
# after the data is written and fsynced but before the rename.
_FROZEN_WRITER = textwrap.dedent(
    """
    import os, sys, time, torch
    from meta_train.training import checkpointing
    path, where = sys.argv[1], sys.argv[2]
    real_save, real_replace = torch.save, os.replace
    def frozen_save(obj, f):
        f.write(b"PK\\x03\\x04 half of a zip file")
        f.flush()
        print("frozen", flush=True)
        time.sleep(60)
    def frozen_replace(src, dst):
        print("frozen", flush=True)
        time.sleep(60)
    if where == "save":
        torch.save = frozen_save
    else:
        os.replace = frozen_replace
    checkpointing.atomic_save({"version": 2, "x": torch.ones(10)}, path)
    """
)


@pytest.mark.parametrize("where", ["save", "rename"])
def test_kill_during_a_checkpoint_write_keeps_the_previous_one(tmp_path, where):
    path = tmp_path / "last.pt"
    ckpt.atomic_save({"version": 1, "x": torch.zeros(10)}, path)
    child = subprocess.Popen(
        [sys.executable, "-c", _FROZEN_WRITER, str(path), where], stdout=subprocess.PIPE, text=True
    )
    assert child.stdout.readline().strip() == "frozen"
    child.send_signal(signal.SIGKILL)
    child.wait()
    stale = [p for p in tmp_path.iterdir() if p.name != "last.pt"]
    assert len(stale) == 1  # the interrupted temporary, never read
    payload = ckpt.safe_load(path)
    assert payload["version"] == 1 and torch.equal(payload["x"], torch.zeros(10))
    with ckpt.RunLock(tmp_path) as lock:
        assert ckpt.remove_stale_temporaries(lock) == stale
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt", ckpt.LOCK]


class _CreatesMarker:
    """Unpickling this runs ``exec``, which creates the marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').close()",))


@pytest.mark.parametrize("container", ["torch_zip", "plain_pickle"])
def test_a_pickle_payload_is_refused_and_runs_nothing(tmp_path, container):
    marker = tmp_path / "marker"
    path = tmp_path / "evil.pt"
    payload = {"format": ckpt.FORMAT, "lopt": _CreatesMarker(marker)}
    if container == "torch_zip":
        torch.save(payload, path)
    else:
        path.write_bytes(pickle.dumps(payload, protocol=2))
    with pytest.raises(
        ckpt.UnsafeCheckpointError, match=r"refused to load.*nothing in it was.*exec"
    ):
        ckpt.safe_load(path)
    with pytest.raises(ckpt.UnsafeCheckpointError):
        ckpt.load_run_checkpoint(path)
    assert not marker.exists()
    # the file really is dangerous: an unsafe load would have run it
    if container == "torch_zip":
        torch.load(path, weights_only=False)
    else:
        pickle.loads(path.read_bytes())
    assert marker.exists()


def _resume_cli(run_dir: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "meta_train/run.py", "--resume", str(run_dir)],
        cwd=Path(__file__).resolve().parents[3],
        capture_output=True,
        text=True,
        env={**os.environ, "WANDB_MODE": "disabled"},
        timeout=120,
    )


def test_resume_refuses_a_pickle_payload_through_the_cli(tmp_path):
    marker = tmp_path / "marker"
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    torch.save({"format": ckpt.FORMAT, "x": _CreatesMarker(marker)}, run_dir / "last.pt")
    proc = _resume_cli(run_dir)
    assert proc.returncode == 2, proc.stderr
    assert "refused to load" in proc.stderr
    assert not marker.exists()


def test_foreign_torn_and_missing_files_have_clear_messages(tmp_path):
    foreign = tmp_path / "model.pt"
    torch.save(torch.nn.Linear(2, 2).state_dict(), foreign)
    with pytest.raises(ckpt.CheckpointError, match="not an l2o meta-training checkpoint"):
        ckpt.load_run_checkpoint(foreign)
    torn = tmp_path / "torn.pt"
    torn.write_bytes(foreign.read_bytes()[:100])
    with pytest.raises(ckpt.CheckpointError, match="truncated or corrupt"):
        ckpt.load_run_checkpoint(torn)
    with pytest.raises(ckpt.CheckpointError, match="does not exist"):
        ckpt.load_run_checkpoint(tmp_path / "absent.pt")
    old = tmp_path / "old.pt"
    torch.save({"format": ckpt.FORMAT, "version": 0}, old)
    with pytest.raises(ckpt.CheckpointError, match="checkpoint version 0"):
        ckpt.load_run_checkpoint(old)


def test_a_text_last_pt_is_refused_in_one_line(tmp_path):
    """A text file where a checkpoint belongs (a copied config.yaml): the unpickler's raw
    IndexError/KeyError becomes a CheckpointError, and ``--resume`` exits 2 with it."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "last.pt").write_text("task:\n  name: mnist_mlp_relu\n")
    with pytest.raises(ckpt.CheckpointError, match="not an l2o checkpoint: it is a text file"):
        ckpt.load_run_checkpoint(run_dir / "last.pt")
    (run_dir / "last.pt").write_bytes(b"\x80\x02not a pickle at all")
    with pytest.raises(ckpt.CheckpointError) as info:  # a bad pickle stream: refused too
        ckpt.load_run_checkpoint(run_dir / "last.pt")
    assert "\n" not in str(info.value)
    (run_dir / "last.pt").write_text("task:\n  name: mnist_mlp_relu\n")
    proc = _resume_cli(run_dir)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().count("\n") == 0 and "is a text file" in proc.stderr


def _tiny(*overrides: str):
    return load_config("tiny", ["validation.enabled=false", "meta_test.enabled=false", *overrides])


def test_resuming_with_another_architecture_names_the_mismatch(tmp_path):
    trainer = Trainer(_tiny(), tmp_path)
    trainer.train()
    trainer.close()
    payload = ckpt.load_run_checkpoint(tmp_path / "last.pt")
    with pytest.raises(
        ckpt.CheckpointError, match=r"optimizer\.kwargs\.hidden_size: checkpoint=8, config=12"
    ):
        Trainer(_tiny("optimizer.kwargs.hidden_size=12"), tmp_path, resume=payload)
    with pytest.raises(ckpt.CheckpointError, match=r"task\.name: checkpoint='mnist_mlp_sigmoid'"):
        Trainer(_tiny("task.name=mnist_mlp_relu"), tmp_path, resume=payload)
    # settings that do not change the computation may differ (e.g. a longer schedule)
    Trainer(_tiny("schedule.epochs=2"), tmp_path, resume=payload).close()


def test_weights_of_another_shape_name_the_tensors(tmp_path):
    """The trainer loads its learned optimizer through ``checkpoint_io.from_payload``, whose
    error names the tensors that do not fit."""
    import l2o.optimizers as lo

    trainer = Trainer(_tiny(), tmp_path)
    trainer.train()
    trainer.close()
    payload = ckpt.load_run_checkpoint(tmp_path / "last.pt")
    payload["lopt"]["state_dict"] = lo.create("lstm", hidden_size=4).state_dict()
    with pytest.raises(
        ckpt.CheckpointError,
        match=r"shape mismatch .*lstm\.weight_hh_l0: \(16, 4\) vs \(32, 8\)",
    ):
        Trainer(_tiny(), tmp_path, resume=payload)


def test_the_estimators_state_travels_in_last_pt(tmp_path, monkeypatch):
    """A stateful estimator (as PES will be) is saved in ``last.pt`` and restored on resume."""
    import meta_train.estimators as estimators
    from meta_train.estimators.truncated_bptt import FirstOrder

    monkeypatch.setattr(estimators, "_ESTIMATORS", dict(estimators._ESTIMATORS))  # undone after

    class Counting(FirstOrder):
        name = "counting_test"

        def __init__(self, cfg, **kwargs):
            super().__init__(cfg, **kwargs)
            self.calls = torch.zeros((), dtype=torch.long)

        def estimate(self, *args, **kwargs):
            self.calls += 1
            return super().estimate(*args, **kwargs)

        def state_dict(self):
            return {"calls": self.calls.clone()}

        def load_state_dict(self, state):
            self.calls = state["calls"].clone()

    estimators.register_estimator("counting_test", Counting)
    trainer = Trainer(_tiny("unroll.estimator=counting_test"), tmp_path)
    trainer.train()
    trainer.close()
    payload = ckpt.load_run_checkpoint(tmp_path / "last.pt")
    steps = payload["position"]["global_step"]
    assert steps > 0 and int(payload["estimator"]["calls"]) == steps
    resumed = Trainer(_tiny("unroll.estimator=counting_test"), tmp_path, resume=payload)
    assert int(resumed.estimator.calls) == steps
    resumed.close()
