"""Non-finite inner losses, updates and meta-gradients never reach the learned optimizer."""

from __future__ import annotations

import math

import pytest
import torch

from meta_train.configuration.schema import load_config
from meta_train.estimators import meta_step_gradient
from meta_train.training import checkpointing as ckpt
from meta_train.training.tracking import read_metrics
from meta_train.training.trainer import NonFiniteError, Trainer


def _cfg(*overrides: str):
    return load_config(
        "tiny",
        [
            "validation.enabled=false",
            "meta_test.enabled=false",
            "schedule.runs_per_epoch=2",  # 2 runs × 2 meta-steps
            *overrides,
        ],
    )


class _NaNBatches:
    """A sampler whose batches are all NaN: the inner loss becomes NaN."""

    def __init__(self, sampler):
        self.sampler = sampler

    def next(self):
        x, y = self.sampler.next()
        return torch.full_like(x, math.nan), y


class Faults:
    """A ``step_fn`` that runs the real meta-step and injects a fault at chosen meta-steps.

    ``kind``: ``inner_loss`` (NaN data), ``update`` (the optimizer's output made infinite at
    every step, so the parameters blow up and the next inner loss is NaN), ``last_update`` (a
    non-finite update at the truncation's last step: every loss finite, the new parameters not)
    or ``meta_grad`` (a NaN in the accumulated meta-gradient). Records the learned optimizer's
    weights and the optimizees' state before every call.
    """

    def __init__(self, faults: dict[int, str]):
        self.faults = faults
        self.calls = 0
        self.log: list[dict] = []

    def __call__(self, lopt, task, inner, samplers, cfg, regularizer=None):
        kind = self.faults.get(self.calls)
        entry = {
            "kind": kind,
            "weights_before": {k: v.clone() for k, v in lopt.state_dict().items()},
            "inner_before": inner.params.clone(),
        }
        hook = None
        if kind == "inner_loss":
            samplers = [_NaNBatches(s) for s in samplers]
        elif kind == "update":
            hook = lopt.head.register_forward_hook(lambda m, i, out: out * math.inf)
        try:
            result, new_inner = meta_step_gradient(lopt, task, inner, samplers, cfg, regularizer)
        finally:
            if hook is not None:
                hook.remove()
        if kind == "last_update":
            new_inner.params[0, 0] = math.inf
        if kind == "meta_grad":
            next(p for p in lopt.parameters() if p.grad is not None).grad.view(-1)[0] = math.nan
        self.calls += 1
        self.log.append(entry)
        return result, new_inner


# injected fault -> the reason the trainer reports (the first check that fails)
REASONS = {
    "inner_loss": "inner_loss",
    "update": "inner_loss",  # the update of step 1 makes the loss of step 2 NaN
    "last_update": "update",
    "meta_grad": "meta_grad",
}


@pytest.mark.parametrize("kind", list(REASONS))
def test_a_nonfinite_meta_step_is_skipped_and_the_optimizee_reset(tmp_path, kind):
    reason = REASONS[kind]
    faults = Faults({2: kind})  # the first meta-step of the second run
    trainer = Trainer(_cfg(), tmp_path, step_fn=faults)
    adam_steps = []
    trainer.on_meta_step = lambda t, r: adam_steps.append(
        int(next(iter(t.meta_opt.state.values()))["step"]) if t.meta_opt.state else 0
    )
    trainer.train()
    trainer.close()
    # the weights going into the meta-step after the fault equal those going into the fault
    bad, after = faults.log[2], faults.log[3]
    for name, value in bad["weights_before"].items():
        assert torch.equal(after["weights_before"][name], value), name
    # the optimizees went back to their last good state
    assert torch.equal(after["inner_before"], bad["inner_before"])
    assert all(torch.isfinite(v).all() for v in trainer.lopt.state_dict().values())
    assert adam_steps == [1, 2, 2, 3]  # the meta-optimizer did not step on the fault
    assert trainer.counters == {"nonfinite": 1, f"nonfinite_{reason}": 1}
    records = read_metrics(tmp_path)
    skipped = [r for r in records if "train/skipped" in r]
    assert len(skipped) == 1 and skipped[0]["train/skipped"] == reason
    assert (skipped[0]["run"], skipped[0]["meta_step"]) == (1, 0)
    assert records[-1]["train/nonfinite_total"] == 1
    saved = ckpt.load_run_checkpoint(tmp_path / "last.pt")
    assert saved["counters"] == trainer.counters


def test_too_many_in_a_row_stop_with_the_last_good_state_saved(tmp_path):
    kinds = ["inner_loss", "last_update", "meta_grad"]
    faults = Faults({1 + i: kinds[i % 3] for i in range(10)})
    cfg = _cfg(
        "reliability.max_consecutive_nonfinite=3",
        "schedule.horizon=15",  # 1 run × 5 meta-steps
        "schedule.runs_per_epoch=1",
    )
    trainer = Trainer(cfg, tmp_path, step_fn=faults)
    with pytest.raises(NonFiniteError, match=r"3 consecutive meta-steps were non-finite") as info:
        trainer.train()
    trainer.close()
    assert "last.pt" in str(info.value) and "--resume" in str(info.value)
    assert faults.calls == 4  # one good meta-step, then three bad ones
    last_good_weights = faults.log[1]["weights_before"]
    saved = ckpt.load_run_checkpoint(tmp_path / "last.pt")
    for name, value in last_good_weights.items():
        assert torch.equal(saved["lopt"]["state_dict"][name], value), name
    assert torch.equal(saved["inner"]["params"], faults.log[1]["inner_before"])
    assert saved["counters"]["nonfinite"] == 3
    assert saved["consecutive_nonfinite"] == 3
    # the saved state resumes (with the faults gone) and finishes
    assert saved["position"]["meta_step"] == 4  # mid-run: the optimizees' state is saved
    resumed = Trainer(cfg, tmp_path, resume=saved)
    resumed.train()
    resumed.close()
    assert resumed.counters["nonfinite"] == 3 and resumed.consecutive_nonfinite == 0


def test_isolated_faults_below_the_limit_do_not_stop_the_run(tmp_path):
    faults = Faults({0: "update", 2: "last_update", 3: "meta_grad"})
    trainer = Trainer(_cfg("reliability.max_consecutive_nonfinite=3"), tmp_path, step_fn=faults)
    outcome = trainer.train()
    trainer.close()
    assert outcome.counters["nonfinite"] == 3
    assert faults.calls == 4 and trainer.position.epoch == 1
