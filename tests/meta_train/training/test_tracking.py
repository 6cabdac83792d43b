"""Metrics: JSONL in the run folder (exact across resumes), W&B that never needs a network."""

from __future__ import annotations

import json
import math

import pytest
import torch

from meta_train.configuration.sections import WandbConfig
from meta_train.training.tracking import METRICS_FILE, SUMMARY_FILE, Tracker, read_metrics


def test_jsonl_records_values_and_non_finite_markers(tmp_path):
    lines = []
    tracker = Tracker(tmp_path, console=lines.append)
    tracker.log({"loss": torch.tensor(0.5), "bad": math.nan, "big": math.inf, "tag": "x"}, 1)
    tracker.log({"loss": 0.25}, 2, console=True)
    tracker.close()
    records = read_metrics(tmp_path)
    assert [r["step"] for r in records] == [1, 2]
    assert records[0]["loss"] == 0.5 and records[0]["bad"] == "nan" and records[0]["big"] == "inf"
    assert records[0]["tag"] == "x" and records[1]["loss"] == 0.25
    assert lines == ["step=2 loss=0.25"]


def test_the_summary_is_on_disk_without_wandb(tmp_path):
    """W&B-summary values (best validation loss, counters) also land in ``summary.json``,
    merged across calls and across a resumed run's tracker; inactive ranks write nothing."""
    tracker = Tracker(tmp_path, console=lambda _: None)
    tracker.summary({"best_val_loss": torch.tensor(0.5), "nonfinite": 2})
    tracker.close()
    again = Tracker(tmp_path, console=lambda _: None, resume_bytes=0)
    again.summary({"best_val_loss": math.inf})
    again.close()
    saved = json.loads((tmp_path / SUMMARY_FILE).read_text())
    assert saved == {"best_val_loss": "inf", "nonfinite": 2}
    other = tmp_path / "rank1"
    Tracker(other, console=lambda _: None, active=False).summary({"x": 1})
    assert not (other / SUMMARY_FILE).exists()


def test_resume_truncates_to_the_checkpointed_size(tmp_path):
    tracker = Tracker(tmp_path, console=lambda _: None)
    tracker.log({"a": 1}, 1)
    size = tracker.sync_point()  # what a checkpoint stores
    tracker.log({"a": 2}, 2)  # logged after the checkpoint, then the process died
    tracker.close()
    resumed = Tracker(tmp_path, resume_bytes=size, console=lambda _: None)
    resumed.log({"a": 3}, 2)
    resumed.close()
    assert [(r["step"], r["a"]) for r in read_metrics(tmp_path)] == [(1, 1), (2, 3)]
    fresh = Tracker(tmp_path, resume_bytes=0, console=lambda _: None)
    fresh.close()
    assert (tmp_path / METRICS_FILE).read_text() == ""


def test_wandb_mode_env_overrides_the_config(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    tracker = Tracker(tmp_path, WandbConfig(mode="online"), {"x": 1}, console=lambda _: None)
    assert tracker._wandb is None  # online asked for, nothing contacted
    tracker.close()


@pytest.mark.slow
def test_wandb_offline_writes_into_the_run_folder_without_a_network(tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    tracker = Tracker(
        tmp_path, WandbConfig(mode="offline", tags=["test"]), {"seed": 0}, console=lambda _: None
    )
    tracker.log({"train/meta_loss": 1.5, "train/skipped": "inner_loss"}, 1)
    tracker.summary({"best_val_loss": 0.5})
    run_id = tracker.wandb_id
    tracker.close()
    runs = list((tmp_path / "wandb").glob(f"offline-run-*-{run_id}"))
    assert len(runs) == 1 and list(runs[0].glob("*.wandb"))
    assert read_metrics(tmp_path)[0]["train/meta_loss"] == 1.5
