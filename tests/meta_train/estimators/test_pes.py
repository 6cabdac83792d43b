"""PES: unbiased over a multi-truncation run where truncated ES is not; bitwise resume;
per-task restarts reset the accumulators."""

from __future__ import annotations

import io
import math

import torch
from crash_run import train_until_crash
from test_es import exact_gradient, flat_grad, quadratic_problem

from meta_train.estimators.es import AntitheticES
from meta_train.estimators.pes import PES
from meta_train.inner_loop.unroll import UnrollConfig


def _summed_estimate(estimator, lopt, optimizee, inner, samplers, truncations):
    lopt.zero_grad(set_to_none=True)
    state = inner
    for k in range(truncations):
        result, state = estimator.estimate(lopt, optimizee, state, samplers, seed=100 + k)
        assert result.finite
    return flat_grad(lopt)


def test_pes_is_unbiased_over_the_run_and_truncated_es_is_not():
    """Two truncations of K = 2 steps: the sum of the per-truncation estimates against the exact
    gradient of the whole 4-step run's summed losses (second order through the whole run).

    PES's error is at its noise level (√((D+1)/M) ≈ 0.074 for D = 44, M = 8192 pairs; we allow
    3×); truncated ES misses the effect of φ on the second truncation's start, an error of
    about 0.66 that no number of pairs removes (seeds fixed: deterministic)."""
    lopt, optimizee, inner, samplers = quadratic_problem(tasks=1)
    g = exact_gradient(lopt, optimizee, inner, samplers, steps=4)
    pairs = 8192
    noise = math.sqrt((g.numel() + 1) / pairs)
    cfg = UnrollConfig(length=2, meta_loss="sum")
    opts = {"sigma": 0.01, "num_pairs": pairs}
    pes = _summed_estimate(PES(cfg, **opts), lopt, optimizee, inner, samplers, 2)
    es = _summed_estimate(AntitheticES(cfg, **opts), lopt, optimizee, inner, samplers, 2)
    rel = lambda e: float((e - g).norm() / g.norm())
    assert rel(pes) < 3 * noise, rel(pes)
    assert rel(es) > 0.5, rel(es)
    # the bias is systematic: more pairs do not remove it
    assert rel(es) > 5 * noise


def _roundtrip(state: dict) -> dict:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def test_pes_resume_is_bitwise():
    cfg = UnrollConfig(length=3, meta_loss="log_sum")
    lopt, optimizee, inner, samplers = quadratic_problem(tasks=2)

    def run(est, state, meta_steps):
        grads = []
        for k in meta_steps:
            lopt.zero_grad(set_to_none=True)
            _, state = est.estimate(lopt, optimizee, state, samplers, seed=k)
            grads.append(flat_grad(lopt))
        return state, grads

    straight = PES(cfg, sigma=0.05, num_pairs=3)
    end, grads = run(straight, inner, range(4))

    first = PES(cfg, sigma=0.05, num_pairs=3)
    mid, grads_a = run(first, inner, range(2))
    saved = _roundtrip(first.state_dict())
    resumed = PES(cfg, sigma=0.05, num_pairs=3)
    resumed.load_state_dict(saved)
    assert _roundtrip(resumed.state_dict()).keys() == saved.keys()
    end_b, grads_b = run(resumed, mid, range(2, 4))
    for a, b in zip(grads, grads_a + grads_b, strict=True):
        assert torch.equal(a, b)
    assert torch.equal(end.params, end_b.params)
    assert torch.equal(straight.accumulated, resumed.accumulated)
    for key, value in straight.population.opt_state.items():
        assert torch.equal(value, resumed.population.opt_state[key])


def test_pes_restart_resets_only_the_named_tasks():
    lopt, optimizee, inner, samplers = quadratic_problem(tasks=2)
    est = PES(UnrollConfig(length=2, meta_loss="sum"), sigma=0.05, num_pairs=2)
    est.estimate(lopt, optimizee, inner, samplers)
    acc = est.accumulated.clone()
    assert float(acc.abs().sum()) > 0
    restart = torch.tensor([True, False])
    before = est.population.params.clone()
    est._restart(lopt, inner, restart)
    # directions are laid out [pair, task]: task 0's two pairs are rows 0 and 2
    assert float(est.accumulated[0::2].abs().sum()) == 0.0
    assert torch.equal(est.accumulated[1::2], acc[1::2])
    tasks = est.population.task_index
    assert torch.equal(est.population.params[tasks == 0], inner.params[0].expand(4, -1))
    assert torch.equal(est.population.params[tasks == 1], before[tasks == 1])


def test_pes_resets_everything_when_a_synchronized_run_starts():
    lopt, optimizee, inner, samplers = quadratic_problem(tasks=2)
    est = PES(UnrollConfig(length=2, meta_loss="sum"), sigma=0.05)
    est.estimate(lopt, optimizee, inner, samplers, seed=1)
    est.estimate(lopt, optimizee, inner, samplers, seed=2)  # inner.step == 0 again
    second = est.sample_eps(2, est.accumulated.shape[1], 2, "cpu")
    assert torch.equal(est.accumulated, second)  # ξ restarted from 0: only the second ε


def test_pes_restarts_a_task_whose_state_the_caller_replaced():
    lopt, optimizee, inner, samplers = quadratic_problem(tasks=2)
    est = PES(UnrollConfig(length=2, meta_loss="sum"), sigma=0.05, num_pairs=2)
    _, state = est.estimate(lopt, optimizee, inner, samplers, seed=0)
    _, state = est.estimate(lopt, optimizee, state, samplers, seed=1)
    kept = est.accumulated[1::2].clone()
    # task 1 continues; task 0 gets a fresh optimizee (what TaskRotation does at a restart)
    state.params = torch.stack((inner.params[0], state.params[1]))
    state.opt_state = {k: v.clone() for k, v in state.opt_state.items()}
    est.estimate(lopt, optimizee, state, samplers, seed=2)
    third = est.sample_eps(4, est.accumulated.shape[1], 2, "cpu")
    assert torch.equal(est.accumulated[0::2], third[0::2])  # task 0: ξ restarted
    assert torch.equal(est.accumulated[1::2], kept + third[1::2])  # task 1: ξ kept


# ---------------------------------------------------------------------------------------------
# Through the trainer: PES with desynchronized per-task runs, killed and resumed

TRAINER_OVERRIDES = [
    "unroll.estimator=pes",
    "unroll.estimator_kwargs={sigma: 0.05, num_pairs: 2, objective: final_val}",
    "schedule.epochs=1",
    "schedule.runs_per_epoch=3",
    "schedule.horizon={min: 6, max: 18}",
    "schedule.desync=true",
    "schedule.meta_batch=3",
    "validation.enabled=false",
    "meta_test.enabled=false",
    "checkpoint.every=1",
    "threads=1",
]


def _train(run_dir, crash_after=None, resume=None, seen=None):
    from meta_train.configuration.schema import load_config

    def record_clocks(trainer, record):
        if seen is not None:
            clocks = trainer.rotation.clocks
            seen.append((list(clocks.steps), list(clocks.runs)))
            assert "train/pes/estimate_norm" in record
            # the optimizer's time features see each task's own step
            assert trainer.inner.opt_state["t"].tolist() == [float(s) for s in clocks.steps]

    cfg = load_config("tiny", TRAINER_OVERRIDES)
    train_until_crash(cfg, run_dir, crash_after, resume, record_clocks)


def test_trainer_pes_desynchronized_resume_is_bitwise(tmp_path):
    from meta_train.training import checkpointing as ckpt

    seen = []
    _train(tmp_path / "ref", seen=seen)
    # 3 windows of 6 // 3 = 2 meta-steps; the tasks restart at their own times
    assert len(seen) == 6
    restarts = [runs for _, runs in seen]
    assert any(len(set(steps)) > 1 for steps, _ in seen)  # the tasks are out of step
    assert restarts[-1] != restarts[0]
    _train(tmp_path / "cut", crash_after=4)
    saved = ckpt.load_run_checkpoint(tmp_path / "cut" / "last.pt")
    assert saved["estimator"]["accumulated"].shape[0] == 3 * 2
    _train(tmp_path / "cut", resume=saved)
    a = ckpt.load_run_checkpoint(tmp_path / "ref" / "last.pt")
    b = ckpt.load_run_checkpoint(tmp_path / "cut" / "last.pt")
    for key, value in a["lopt"]["state_dict"].items():
        assert torch.equal(value, b["lopt"]["state_dict"][key]), key
    for key in ("accumulated",):
        assert torch.equal(a["estimator"][key], b["estimator"][key])
    for key, value in a["estimator"]["population"].items():
        assert torch.equal(value, b["estimator"]["population"][key]), key
    assert torch.equal(a["rotation"]["steps"], b["rotation"]["steps"])
