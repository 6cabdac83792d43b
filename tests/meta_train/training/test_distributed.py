"""Data-parallel meta-training with two real CPU processes (gloo, localhost, launched by torchrun).

This file is also the worker torchrun runs: ``python -m torch.distributed.run ... THIS MODE OUT``.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from torchrun_jobs import launch

OVERRIDES = [
    "schedule.meta_batch=4",
    "schedule.runs_per_epoch=1",
    "schedule.horizon=12",  # 4 meta-steps of 3 inner steps
    "validation.enabled=false",
    "threads=1",
]
# 2 ranks × 2 optimizees against 1 process × 4: the same optimizees (seeds by global index), the
# meta-gradient summed in another order, then 4 Adam steps (lr 1e-2): float32 round-off only.
ATOL = 1e-5


def _trainer(run_dir: Path, step_fn=None):
    from meta_train.configuration.schema import load_config
    from meta_train.training.trainer import Trainer

    return Trainer(load_config("tiny", OVERRIDES), run_dir, step_fn=step_fn, console=lambda _: None)


def _flat_weights(trainer) -> list[float]:
    return torch.cat([p.detach().reshape(-1) for p in trainer.lopt.parameters()]).tolist()


def _worker(mode: str, out: Path) -> None:
    """One rank of a 2-process job; rank 0 writes what it saw to ``out/rank{r}.json``."""
    from meta_train.training import distributed as dist

    dist.init("cpu")
    rank = dist.rank()
    trainer = None

    def faulty(lopt, task, inner, samplers, cfg, regularizer):
        result, new_inner = trainer._estimate(lopt, task, inner, samplers, cfg, regularizer)
        if rank == 1 and trainer.position.global_step == 1:
            if mode == "raise":
                raise RuntimeError("injected failure on rank 1")
            if mode == "hang":
                time.sleep(600)
            if mode == "nonfinite":
                result.meta_loss = math.nan
        return result, new_inner

    trainer = _trainer(out / "run", step_fn=faulty)
    trainer.train()
    report = {"weights": _flat_weights(trainer), "counters": trainer.counters}
    (out / f"rank{rank}.json").write_text(json.dumps(report))
    trainer.close()
    dist.shutdown()


def _launch(
    mode: str, out: Path, timeout_s: float = 5.0
) -> tuple[subprocess.CompletedProcess, float]:
    return launch(__file__, [mode, str(out)], timeout_s)


@pytest.mark.slow
def test_two_ranks_match_one_process_with_the_whole_meta_batch(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    proc, _ = _launch("plain", tmp_path, timeout_s=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["weights"] == ranks[1]["weights"]  # bit-identical across ranks
    single = _trainer(tmp_path / "single")
    single.train()
    single.close()
    got, want = torch.tensor(ranks[0]["weights"]), torch.tensor(_flat_weights(single))
    assert not torch.equal(want, torch.tensor(_flat_weights(_trainer(tmp_path / "fresh"))))
    torch.testing.assert_close(got, want, atol=ATOL, rtol=0)
    # rank 0 alone logged: 4 meta-step records, with the all-reduce's time
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [1, 2, 3, 4]
    assert all("train/allreduce_s" in json.loads(line) for line in lines)


@pytest.mark.slow
def test_non_finite_skip_is_decided_by_all_ranks_together(tmp_path):
    proc, _ = _launch("nonfinite", tmp_path, timeout_s=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    expected = {"nonfinite": 1, "nonfinite_meta_loss": 1}
    assert ranks[0]["counters"] == ranks[1]["counters"] == expected
    assert ranks[0]["weights"] == ranks[1]["weights"]
    records = [
        json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    ]
    assert [r.get("train/skipped") for r in records] == [None, "meta_loss", None, None]


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["raise", "hang"])
def test_a_failing_rank_stops_the_job_with_a_message(tmp_path, mode):
    proc, seconds = _launch(mode, tmp_path, timeout_s=5)
    assert proc.returncode != 0
    if mode == "raise":
        assert "injected failure on rank 1" in proc.stderr
    else:  # rank 0's all-reduce times out and names the cause; torchrun then stops rank 1
        assert "collective 'all_reduce(meta-gradient)' failed" in proc.stderr
        assert "another rank most likely raised or hung" in proc.stderr
    assert seconds < 180
    assert not (tmp_path / "rank0.json").exists()


def test_slices_split_the_meta_batch_evenly_or_refuse():
    from meta_train.training.distributed import slice_bounds

    assert [slice_bounds(6, 3, r) for r in range(3)] == [(0, 2), (2, 4), (4, 6)]
    with pytest.raises(ValueError, match="divisible by the number of processes"):
        slice_bounds(3, 2, 0)


def test_without_torchrun_there_is_no_process_group(monkeypatch):
    from meta_train.training import distributed as dist

    for key in ("WORLD_SIZE", "RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(key, raising=False)
    with dist.session("cpu") as active:
        assert not active
        assert (dist.rank(), dist.world_size(), dist.is_main()) == (0, 1, True)
        params = [torch.nn.Parameter(torch.ones(2))]
        params[0].grad = torch.full((2,), 3.0)
        assert dist.reduce_meta_step(params, [1.0], [2.0]) == ([1.0], [2.0])
        assert params[0].grad.tolist() == [3.0, 3.0]


def test_resume_with_another_number_of_processes_says_what_changes(tmp_path, capsys):
    from meta_train.training import checkpointing as ckpt

    first = _trainer(tmp_path / "run")
    first._start_run()
    first.meta_step()
    first.position.meta_step, first.position.global_step = 1, 1
    first.save_last()
    first.close()
    payload = ckpt.load_run_checkpoint(tmp_path / "run" / ckpt.LAST)
    payload["world_size"], payload["ranks"] = (
        2,
        [
            dict(payload["ranks"] or {})
            or {"inner": payload["inner"], "samplers": payload["samplers"], "estimator": {}}
        ],
    )  # as if written by 2 ranks
    resumed = _trainer_resumed(tmp_path / "run", payload)
    err = capsys.readouterr().err
    assert "written by 2 process(es), this run has 1" in err
    assert "restarts at its first meta-step" in err
    assert resumed.inner is None and resumed.position.meta_step == 0
    assert resumed.position.global_step == 1
    resumed.close()


def _trainer_resumed(run_dir: Path, payload: dict):
    from meta_train.configuration.schema import load_config
    from meta_train.training.trainer import Trainer

    cfg = load_config("tiny", OVERRIDES)
    return Trainer(cfg, run_dir, resume=payload, console=lambda _: None)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_meta_training_keeps_everything_on_the_gpu(tmp_path):
    from meta_train.configuration.schema import load_config
    from meta_train.training.trainer import Trainer

    cfg = load_config("tiny", [*OVERRIDES, "device=cuda"])
    trainer = Trainer(cfg, tmp_path, console=lambda _: None)
    trainer._start_run()
    assert trainer.inner.params.is_cuda
    assert all(p.is_cuda for p in trainer.lopt.parameters())
    trainer.train()
    assert all(p.is_cuda for p in trainer.lopt.parameters())
    trainer.close()


if __name__ == "__main__":
    _worker(sys.argv[1], Path(sys.argv[2]))
