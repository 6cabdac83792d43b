"""Task families and per-task horizons under torchrun: 2 gloo ranks own disjoint slots of the
meta-batch and compute what 1 process computes with the whole meta-batch; resume is exact with the
same number of ranks and refused with another.

This file is also the worker torchrun runs: ``python -m torch.distributed.run ... THIS MODE OUT``.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
import torch
from crash_run import train_until_crash
from torchrun_jobs import launch

COMMON = [
    "schedule.meta_batch=4",  # 2 slots per rank
    "schedule.runs_per_epoch=3",  # 6 meta-steps of 3 inner steps
    "schedule.horizon={min: 6, max: 15}",  # sampled per run of each slot
    "schedule.desync=true",
    "unroll.estimator=pes",
    "validation.enabled=false",
    "meta_test.enabled=false",
    "threads=1",
]
# Slots [sigmoid, sigmoid, sigmoid, h40] for seed 0: rank 0 has no h40 slot, rank 1 has one.
FAMILY = [
    "task.family.members=[{name: mnist_mlp_sigmoid, weight: 2}, {name: mnist_mlp_sigmoid_h40}]",
    "task.family.augment={param_scale: [0.5, 2.0], loss_scale: [0.5, 2.0], batch_sizes: [16, 32],"
    " data_fraction: 0.8, permute_labels: true}",
]
SCENARIOS = {"family": [*COMMON, *FAMILY], "plain": COMMON}
CRASH_AFTER = 4  # the 'killed' run's last.pt holds meta-step 3, mid-run
# 2 ranks × 2 slots against 1 process × 4: the same optimizees, draws, clocks and PES
# perturbations (by global slot), the meta-gradient summed in another order, then 6 Adam steps:
# float32 round-off only.
RTOL = 1e-4
NOT_SLICED = ("_per_s", "estimate_norm")


def _cfg(scenario: str):
    from meta_train.configuration.schema import load_config

    return load_config("tiny", SCENARIOS[scenario])


def _flat_weights(lopt) -> list[float]:
    return torch.cat([p.detach().reshape(-1) for p in lopt.parameters()]).tolist()


def _initial_weights(scenario: str, run_dir: Path) -> torch.Tensor:
    from meta_train.training.trainer import Trainer

    trainer = Trainer(_cfg(scenario), run_dir)
    trainer.close()
    return torch.tensor(_flat_weights(trainer.lopt))


def _final_weights(run_dir: Path) -> torch.Tensor:
    from meta_train.training import checkpointing as ckpt

    state = ckpt.load_run_checkpoint(run_dir / ckpt.LAST)["lopt"]["state_dict"]
    return torch.cat([t.reshape(-1) for t in state.values()])


def _train(scenario: str, run_dir: Path, crash_after: int | None = None, resume=None) -> dict:
    """Train (or resume) one run; returns its final weights and, per meta-step, the clocks'
    horizons and the family members this process holds."""
    seen = {"horizons": [], "members": []}

    def record(trainer, _record):
        seen["horizons"].append(list(trainer.rotation.clocks.horizons))
        if trainer.family is not None:
            seen["members"].append(sorted(m.name for m in trainer.family.members))

    holder = {}

    def hook(trainer, rec):
        record(trainer, rec)
        holder["lopt"] = trainer.lopt

    train_until_crash(_cfg(scenario), run_dir, crash_after, resume, on_meta_step=hook)
    return {**seen, "weights": _flat_weights(holder["lopt"])}


def _write(out: Path, name: str, report: dict) -> None:
    from meta_train.training import distributed as dist

    (out / f"{name}.rank{dist.rank()}.json").write_text(json.dumps(report))


def _worker(mode: str, out: Path) -> None:
    """One rank of a 2-process job; each rank writes what it saw to ``out/<name>.rank<r>.json``."""
    from meta_train.training import checkpointing as ckpt
    from meta_train.training import distributed as dist
    from meta_train.training.trainer import Trainer

    dist.init("cpu")
    if mode == "equivalence":
        for scenario in SCENARIOS:
            _write(out, scenario, _train(scenario, out / scenario))
    elif mode == "crash":  # one run to the end, one 'killed' after CRASH_AFTER meta-steps
        _write(out, "full", _train("family", out / "full"))
        _train("family", out / "cut", crash_after=CRASH_AFTER)
    elif mode == "resume":
        payload = ckpt.load_run_checkpoint(out / "cut" / ckpt.LAST)
        _write(out, "resumed", _train("family", out / "cut", resume=payload))
        single = ckpt.load_run_checkpoint(out / "single" / ckpt.LAST)
        try:
            Trainer(_cfg("family"), out / "single", resume=single).close()
            refusal = None
        except ckpt.CheckpointError as exc:
            refusal = str(exc)
        _write(out, "refusal", {"message": refusal})
    dist.shutdown()


def _ranks(out: Path, name: str) -> list[dict]:
    return [json.loads((out / f"{name}.rank{r}.json").read_text()) for r in (0, 1)]


def _launch(mode: str, out: Path):
    proc, _ = launch(__file__, [mode, str(out)], timeout_s=120)
    assert proc.returncode == 0, proc.stderr[-3000:]


def _max_relative_difference(got: torch.Tensor, want: torch.Tensor) -> float:
    """max |got − want| / max |want| over the meta-parameters."""
    return float((got - want).abs().max() / want.abs().max())


@pytest.mark.slow
def test_two_ranks_match_one_process_for_a_family_with_sampled_horizons_and_pes(tmp_path):
    from meta_train.training.tracking import read_metrics

    _launch("equivalence", tmp_path)
    for scenario in SCENARIOS:
        ranks = _ranks(tmp_path, scenario)
        assert ranks[0]["weights"] == ranks[1]["weights"]  # bit-identical across ranks
        assert ranks[0]["horizons"] == ranks[1]["horizons"]  # one clock for every slot
        single = _train(scenario, tmp_path / f"{scenario}-single")
        assert single["horizons"] == ranks[0]["horizons"]
        restarted = {tuple(h) for h in single["horizons"]}
        assert len(restarted) > 1 and len({h for hs in restarted for h in hs}) > 2
        got, want = torch.tensor(ranks[0]["weights"]), torch.tensor(single["weights"])
        untrained = _initial_weights(scenario, tmp_path / f"{scenario}-untrained")
        assert (want - untrained).abs().max() > 100 * RTOL * want.abs().max()
        difference = _max_relative_difference(got, want)
        print(
            f"{scenario}: 2 ranks vs 1 process: max relative difference {difference:.3g} "
            f"(max |difference| {float((got - want).abs().max()):.3g}, max |weight| "
            f"{float(want.abs().max()):.3g})"
        )
        assert difference < RTOL
        logged = [r for r in read_metrics(tmp_path / scenario) if "train/meta_loss" in r]
        reference = [r for r in read_metrics(tmp_path / f"{scenario}-single")]
        assert len(logged) == len(reference) == 6
        for a, b in zip(logged, reference, strict=True):
            assert set(a) - {"train/allreduce_s"} == set(b)
            # every logged number but the speed and the norm of each slice's own estimate
            for key in [k for k in b if k.startswith("train/") and not k.endswith(NOT_SLICED)]:
                assert a[key] == pytest.approx(b[key], rel=1e-3, abs=1e-6), key
    members = [r["members"] for r in _ranks(tmp_path, "family")]
    assert members[0][0] == ["mnist_mlp_sigmoid"]  # rank 0 holds no h40 slot
    assert members[1][0] == ["mnist_mlp_sigmoid", "mnist_mlp_sigmoid_h40"]


@pytest.mark.slow
def test_a_killed_two_rank_run_resumes_exactly_and_refuses_another_world_size(tmp_path):
    from meta_train.training import checkpointing as ckpt
    from meta_train.training.trainer import Trainer

    _launch("crash", tmp_path)
    cut = ckpt.load_run_checkpoint(tmp_path / "cut" / ckpt.LAST)
    assert cut["world_size"] == 2 and cut["position"]["global_step"] == CRASH_AFTER - 1
    assert cut["family"]["members"] and cut["ranks"][0]["family"]["members"]
    shutil.copy(tmp_path / "cut" / ckpt.LAST, tmp_path / "two-rank-last.pt")
    train_until_crash(_cfg("family"), tmp_path / "single", crash_after=CRASH_AFTER)

    _launch("resume", tmp_path)
    full, resumed = _ranks(tmp_path, "full"), _ranks(tmp_path, "resumed")
    assert resumed[0]["weights"] == resumed[1]["weights"] == full[0]["weights"]  # bit for bit
    assert torch.equal(_final_weights(tmp_path / "cut"), _final_weights(tmp_path / "full"))
    refusals = [r["message"] for r in _ranks(tmp_path, "refusal")]
    for message in refusals:  # 2 ranks given a 1-process checkpoint
        assert "written by 1 process(es), this run has 2" in message and "\n" not in message

    two_rank = ckpt.load_run_checkpoint(tmp_path / "two-rank-last.pt")
    with pytest.raises(ckpt.CheckpointError) as refused:
        Trainer(_cfg("family"), tmp_path / "other", resume=two_rank)
    message = str(refused.value)
    assert "written by 2 process(es), this run has 1" in message and "\n" not in message
    assert "resume with 2 process(es)" in message


if __name__ == "__main__":
    _worker(sys.argv[1], Path(sys.argv[2]))
