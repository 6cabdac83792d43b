"""The slots a rank owns, in one process: slices of a task family whose estimates average to the
whole meta-batch's, ES/PES perturbations by global slot, and what a resume with another number of
processes does (the torchrun jobs themselves are in test_distributed_slots.py)."""

from __future__ import annotations

import pytest
import torch

import l2o.optimizers as lo
from meta_train.configuration.schema import load_config
from meta_train.estimators import make_estimator
from meta_train.training import checkpointing as ckpt
from meta_train.training.parts import make_family, make_task, run_seeds
from meta_train.training.rank_slots import RankSlots, pack, place_estimator, unpack
from meta_train.training.trainer import Trainer

FAMILY = [
    "task.family.members=[{name: mnist_mlp_sigmoid, weight: 2}, {name: mnist_mlp_sigmoid_h40}]",
    "task.family.augment={param_scale: [0.5, 2.0], loss_scale: [0.5, 2.0]}",
    "schedule.meta_batch=4",  # slots [sigmoid, sigmoid, sigmoid, h40] for seed 0
    "validation.enabled=false",
    "meta_test.enabled=false",
    "threads=1",
]


def _cfg(*overrides: str):
    return load_config("tiny", [*FAMILY, *overrides])


def _estimate(cfg, lopt, owned):
    """One family meta-step over the slots ``owned``: the gradient and the metrics."""
    task = make_task(cfg)
    runner = make_family(cfg, torch.device("cpu"), task, task.load_data("cpu"), owned)
    runner.restart(lopt, [True] * 4, run_seeds(cfg, 0, 0), [0] * 4)
    lopt.zero_grad(set_to_none=True)
    result, reason = runner.estimate(lopt, seed=11, check=lambda r, s: None)
    assert reason is None
    grad = torch.cat([p.grad.reshape(-1) for p in lopt.parameters() if p.requires_grad])
    return grad, result.metrics, sorted(m.name for m in runner.members)


@pytest.mark.parametrize("estimator", ["first", "pes"])
def test_two_slices_of_a_family_average_to_the_whole_meta_batch(estimator):
    cfg = _cfg(f"unroll.estimator={estimator}")
    torch.manual_seed(0)
    lopt = lo.create(cfg.optimizer.name, **cfg.optimizer.kwargs)
    whole, whole_metrics, _ = _estimate(cfg, lopt, None)
    halves = [_estimate(cfg, lopt, owned) for owned in ([0, 1], [2, 3])]
    assert [h[2] for h in halves] == [
        ["mnist_mlp_sigmoid"],
        ["mnist_mlp_sigmoid", "mnist_mlp_sigmoid_h40"],
    ]
    torch.testing.assert_close((halves[0][0] + halves[1][0]) / 2, whole, rtol=1e-4, atol=1e-7)
    assert whole.abs().sum() > 0
    for name in ("mnist_mlp_sigmoid", "mnist_mlp_sigmoid_h40"):
        key = f"member/{name}/meta_loss"
        averaged = (halves[0][1][key] + halves[1][1][key]) / 2
        assert averaged == pytest.approx(whole_metrics[key], rel=1e-5)
    assert set(halves[0][1]) == set(halves[1][1]) == set(whole_metrics)  # one all-reduce layout


@pytest.mark.parametrize("name", ["es", "pes"])
def test_perturbations_follow_the_global_slot(name):
    cfg = _cfg(f"unroll.estimator={name}", "unroll.estimator_kwargs={num_pairs: 2}").unroll
    whole, part = make_estimator(cfg), make_estimator(cfg)
    assert place_estimator(part, [1, 3], 4) and part.global_tasks == ((1, 3), 4)
    every = whole.sample_eps(2 * 4, 5, seed=7, device="cpu")  # rows [pair, task]
    torch.testing.assert_close(
        part.sample_eps(2 * 2, 5, 7, "cpu"), every[[1, 3, 5, 7]], rtol=0, atol=0
    )
    assert not place_estimator(make_estimator(_cfg("unroll.estimator=first").unroll), [0], 4)


def test_a_checkpoint_keeps_every_ranks_slice_apart():
    slices = [{"inner": {"r": 0}, "samplers": [0], "estimator": {}, "family": None}, {"inner": 1}]
    packed = pack(slices)
    assert packed["inner"] == {"r": 0} and packed["ranks"] == [{"inner": 1}]
    assert unpack(packed)[1] == {"inner": 1, "samplers": None, "estimator": None, "family": None}
    assert RankSlots(8, 4, 2).owned == [4, 5]


def _two_rank_payload(cfg, run_dir):
    """A checkpoint of ``cfg`` after one meta-step, relabelled as if 2 ranks had written it."""
    trainer = Trainer(cfg, run_dir, console=lambda _: None)
    trainer._start_run()
    trainer.meta_step()
    trainer.position.meta_step, trainer.position.global_step = 1, 1
    trainer.save_last()
    trainer.close()
    payload = ckpt.load_run_checkpoint(run_dir / ckpt.LAST)
    payload["world_size"] = 2
    payload["ranks"] = [{k: payload[k] for k in ("inner", "samplers", "estimator", "family")}]
    return payload


@pytest.mark.parametrize(
    "overrides, reason",
    [
        (["schedule.horizon={min: 6, max: 12}"], "with per-task runs"),
        (["schedule.desync=true"], "with per-task runs"),
        (["unroll.estimator=pes"], "estimator 'pes' keeps per-slot state"),
    ],
)
def test_resume_with_another_world_size_is_refused_in_one_line(tmp_path, overrides, reason):
    cfg = _cfg(*overrides)
    payload = _two_rank_payload(cfg, tmp_path / "run")
    with pytest.raises(ckpt.CheckpointError) as refused:
        Trainer(cfg, tmp_path / "run", resume=payload)
    message = str(refused.value)
    assert "written by 2 process(es), this run has 1" in message and reason in message
    assert "resume with 2 process(es)" in message and "\n" not in message


def test_a_family_with_synchronized_runs_is_resliced_and_restarts_its_run(tmp_path, capsys):
    cfg = _cfg()
    payload = _two_rank_payload(cfg, tmp_path / "run")
    resumed = Trainer(cfg, tmp_path / "run", resume=payload, console=lambda _: None)
    try:
        assert "restarts at its first meta-step" in capsys.readouterr().err
        assert not resumed.family.active and resumed.position.meta_step == 0
        assert resumed.position.global_step == 1
        resumed.train()
    finally:
        resumed.close()
