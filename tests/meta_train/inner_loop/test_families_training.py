"""Meta-training on a task family (``task.family``): the config, the combined estimate, the
per-run augmentations, the non-finite guard over every member and the exact resume."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from crash_run import train_until_crash

import l2o.optimizers as lo
from l2o.seeding import derive_seed
from meta_train.configuration.checks import validate_names
from meta_train.configuration.engine import ConfigError
from meta_train.configuration.schema import config_from_dict, load_config
from meta_train.estimators import make_estimator
from meta_train.inner_loop.families import AugmentedOptimizee, draw_run
from meta_train.inner_loop.unroll import functional_optimizee
from meta_train.training import checkpointing as ckpt
from meta_train.training.parts import make_family, make_task, run_seeds
from meta_train.training.tracking import read_metrics
from meta_train.training.trainer import Trainer

# two members of different shapes (784-20-10 and 784-40-10), every augmentation on
FAMILY = [
    "task.family.members=[{name: mnist_mlp_sigmoid, weight: 2}, {name: mnist_mlp_sigmoid_h40}]",
    "task.family.augment={param_scale: [0.5, 2.0], loss_scale: [0.5, 2.0], batch_sizes: [16, 32],"
    " data_fraction: 0.8, permute_labels: true}",
    "schedule.meta_batch=3",
    "meta_test.enabled=false",
    "threads=1",
]


def _cfg(*overrides: str):
    return load_config("tiny", [*FAMILY, *overrides])


# ---------------------------------------------------------------------------------------------
# Config


def test_family_config_converts_to_the_spec():
    family = _cfg().task.family
    spec = family.spec()
    assert spec.members == (("mnist_mlp_sigmoid", 2.0), ("mnist_mlp_sigmoid_h40", 1.0))
    assert spec.augment.param_scale == (0.5, 2.0) and spec.augment.batch_sizes == (16, 32)
    assert family.members[1] == {"name": "mnist_mlp_sigmoid_h40", "weight": 1.0, "dataset": None}
    for off in ([], ["task.family=null"]):
        assert not load_config("tiny", off).task.family.enabled
        assert load_config("tiny", off).task.family.spec() is None


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("task.family.members=[{name: a}, {name: b, weight: -1}]", r"members\[1\]\.weight"),
        (
            "task.family.members=[{name: a, wieght: 2}]",
            r"members\[0\]\.wieght.*members\[0\]\.weight",
        ),
        ("task.family.members=[{weight: 2}]", r"members\[0\]\.name is missing"),
        ("task.family.members=[{name: a}, {name: a}]", r"members\[1\]\.name.*already"),
        ("task.family.augment.param_scale=[2, 1]", r"task\.family\.augment\.param_scale"),
        ("task.family.augment.data_fraction=1.5", r"task\.family\.augment\.data_fraction"),
        ("task.family.augment.batch_sizes=[0]", r"task\.family\.augment\.batch_sizes"),
        ("schedule.meta_batch=1", r"task\.family has 2 members.*schedule\.meta_batch"),
    ],
)
def test_family_config_errors_name_the_key(override, message):
    with pytest.raises(ConfigError, match=message):
        _cfg(override)


def test_the_shipped_family_config_loads_and_round_trips():
    cfg = load_config("family")
    validate_names(cfg)
    assert len(cfg.task.family.members) == 3 and cfg.task.family.augment.permute_labels
    assert config_from_dict(cfg.to_dict()).to_dict() == cfg.to_dict()


def test_augment_without_members_is_an_error():
    with pytest.raises(ConfigError, match=r"task\.family\.augment needs task\.family\.members"):
        load_config("tiny", ["task.family.augment.loss_scale=[0.5, 2]"])


@pytest.mark.parametrize(
    ("override", "message"),
    [
        (
            "task.family.members=[{name: mnist_mlp_sigmoid}, {name: mnist_mlp_sigmoidd}]",
            r"task\.family\.members\[1\]\.name: unknown task 'mnist_mlp_sigmoidd'",
        ),
        (
            "task.family.members=[{name: mnist_mlp_sigmoid}, {name: cifar10_mlp_sigmoid}]",
            r"task\.family\.members\[1\]: .*expects cifar10-shaped.*members\[1\]\.dataset",
        ),
        ("task.family.augment.batch_sizes=[64]", r"batch_sizes: 64 exceeds the batch size 32"),
    ],
)
def test_member_names_and_shapes_are_checked(override, message):
    with pytest.raises(ConfigError, match=message):
        validate_names(_cfg(override))


# ---------------------------------------------------------------------------------------------
# The runner: the combined estimate, the draws


def _runner(cfg, lopt, epoch: int = 0, run: int = 0):
    task = make_task(cfg)
    data = task.load_data("cpu")
    runner = make_family(cfg, torch.device("cpu"), task, data)
    slots = cfg.schedule.meta_batch
    index = epoch * cfg.schedule.runs_per_epoch + run
    runner.restart(lopt, [True] * slots, run_seeds(cfg, epoch, run), [index] * slots)
    return runner


def _grads(lopt) -> list[torch.Tensor]:
    return [p.grad.clone() for p in lopt.parameters() if p.requires_grad]


@pytest.mark.parametrize("estimator", ["first", "pes"])
def test_combined_gradient_is_the_slot_weighted_sum_of_the_members(estimator):
    cfg = _cfg(f"unroll.estimator={estimator}")
    torch.manual_seed(0)
    lopt = lo.create(cfg.optimizer.name, **cfg.optimizer.kwargs)
    combined = _runner(cfg, lopt)
    result, reason = combined.estimate(lopt, seed=5, check=lambda r, s: None)
    assert reason is None
    got = _grads(lopt)

    alone = _runner(cfg, lopt)  # the same optimizees and samplers, each member by itself
    expected = [torch.zeros_like(g) for g in got]
    weights = {}
    for index, m in enumerate(alone.members):
        lopt.zero_grad(set_to_none=True)
        r, _ = make_estimator(cfg.unroll).estimate(
            lopt,
            m.optimizee,
            m.inner,
            m.samplers,
            None,
            derive_seed(5, "family-member", index),
        )
        for e, g in zip(expected, _grads(lopt), strict=True):
            e.add_(g * m.weight)
        weights[m.name] = m.weight
        assert result.metrics[f"member/{m.name}/meta_loss"] == pytest.approx(r.meta_loss)
    assert weights == {"mnist_mlp_sigmoid": 2 / 3, "mnist_mlp_sigmoid_h40": 1 / 3}
    for g, e in zip(got, expected, strict=True):
        torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-7)
    assert any(float(g.abs().sum()) > 0 for g in got)
    shapes = {m.name: m.inner.params.shape for m in combined.members}
    assert shapes == {"mnist_mlp_sigmoid": (2, 15910), "mnist_mlp_sigmoid_h40": (1, 31810)}


def test_augmentations_are_drawn_per_seed_and_slot_and_redrawn_per_run():
    cfg = _cfg()
    lopt = lo.create(cfg.optimizer.name, **cfg.optimizer.kwargs)
    first, again = _runner(cfg, lopt, run=0), _runner(cfg, lopt, run=0)
    later = _runner(cfg, lopt, run=1)
    other_seed = _runner(_cfg("seed=1"), lopt, run=0)
    for a, b, c in zip(first.members, again.members, later.members, strict=True):
        assert isinstance(a.optimizee, AugmentedOptimizee)
        assert torch.equal(a.optimizee.scale, b.optimizee.scale)
        assert torch.equal(a.inner.params, b.inner.params)
        assert not torch.equal(a.optimizee.scale, c.optimizee.scale)
        # slot s, run r is draw_run(seed, s, r), whatever member the slot belongs to
        spec = functional_optimizee(a.task, "cpu").spec
        for row, slot in enumerate(a.slots):
            d = draw_run(first.spec.augment, spec, 32, 10, 5000, cfg.seed, slot, 1)
            assert torch.equal(c.optimizee.scale[row], d.scale)
            assert torch.equal(c.optimizee.loss_scale[row], d.loss_scale)
            assert torch.equal(c.samplers[row].labels, d.labels)
            # the optimizer's coordinates θ′ = θ / s of the seed's fresh model
            torch.testing.assert_close(
                c.inner.params[row] * d.scale,
                functional_optimizee(a.task, "cpu").init_params([c.inner.seeds[row]])[0][0],
            )
    assert first.assignment != other_seed.assignment or any(
        not torch.equal(a.optimizee.scale, o.optimizee.scale)
        for a, o in zip(first.members, other_seed.members, strict=True)
    )


# ---------------------------------------------------------------------------------------------
# Training end to end


@pytest.mark.parametrize("estimator", ["first", "pes"])
def test_a_family_meta_trains_and_logs_every_member(tmp_path, estimator):
    cfg = _cfg(f"unroll.estimator={estimator}")
    trainer = Trainer(cfg, tmp_path)
    try:
        before = [p.detach().clone() for p in trainer.lopt.parameters()]
        outcome = trainer.train()
    finally:
        trainer.close()
    assert outcome.counters == {}
    after = list(trainer.lopt.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(before, after, strict=True))
    steps = [r for r in read_metrics(tmp_path) if "train/meta_loss" in r]
    assert len(steps) == 4
    for r in steps:
        a = r["train/member/mnist_mlp_sigmoid/meta_loss"]
        b = r["train/member/mnist_mlp_sigmoid_h40/meta_loss"]
        assert r["train/meta_loss"] == pytest.approx(2 / 3 * a + 1 / 3 * b)
    saved = ckpt.load_run_checkpoint(tmp_path / "last.pt")
    assert set(saved["family"]["members"]) == {"mnist_mlp_sigmoid", "mnist_mlp_sigmoid_h40"}
    if estimator == "pes":
        assert all(m["estimator"] for m in saved["family"]["members"].values())


def test_a_nonfinite_member_skips_the_step_and_restores_every_member(tmp_path):
    cfg = _cfg("unroll.estimator=pes", "schedule.runs_per_epoch=1", "validation.enabled=false")
    trainer = Trainer(cfg, tmp_path)
    try:
        trainer._start_run()
        trainer.meta_step()  # a normal step: the PES particles now carry state
        family = trainer.family
        before = [(m.inner.state_dict(), m.estimator.state_dict()) for m in family.members]
        last = family.members[-1]
        honest = last.estimator.estimate

        def poisoned(*args, **kwargs):
            result, new_inner = honest(*args, **kwargs)
            result.inner_losses[0, 0] = float("nan")
            return result, new_inner

        last.estimator.estimate = poisoned
        record = trainer.meta_step()
        assert record["train/skipped"] == "inner_loss"
        assert trainer.counters == {"nonfinite": 1, "nonfinite_inner_loss": 1}
        assert all(p.grad is None for p in trainer.lopt.parameters())
        for m, (inner, estimator) in zip(family.members, before, strict=True):
            _same(m.inner.state_dict(), inner)
            _same(m.estimator.state_dict(), estimator)
    finally:
        trainer.close()


def _same(a, b) -> None:
    """Equal nested states: tensors bit for bit."""
    assert type(a) is type(b)
    if isinstance(a, dict):
        assert a.keys() == b.keys()
        for key in a:
            _same(a[key], b[key])
    elif isinstance(a, list | tuple):
        assert len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            _same(x, y)
    elif torch.is_tensor(a):
        assert a.dtype == b.dtype and torch.equal(a, b)
    else:
        assert a == b


# ---------------------------------------------------------------------------------------------
# Resume


@pytest.mark.parametrize(
    "overrides",
    [
        ("unroll.estimator=pes", "schedule.horizon=9"),
        ("schedule.horizon={min: 6, max: 12}", "schedule.desync=true"),  # per-task runs
    ],
    ids=["pes", "per_task_runs"],
)
def test_a_crashed_family_run_resumes_bit_for_bit(tmp_path, overrides):
    cfg = _cfg(*overrides)
    train_until_crash(cfg, tmp_path / "reference")
    train_until_crash(cfg, tmp_path / "crashed", crash_after=3)
    saved = ckpt.load_run_checkpoint(tmp_path / "crashed" / "last.pt")
    assert saved["position"]["global_step"] == 2 and saved["family"]["members"]
    train_until_crash(cfg, tmp_path / "crashed", resume=saved)
    ref = ckpt.load_run_checkpoint(tmp_path / "reference" / "last.pt")
    got = ckpt.load_run_checkpoint(tmp_path / "crashed" / "last.pt")
    _same(ref["lopt"]["state_dict"], got["lopt"]["state_dict"])
    _same(ref["meta_optimizer"]["state"], got["meta_optimizer"]["state"])
    _same(ref["family"], got["family"])
    assert _untimed(tmp_path / "reference") == _untimed(tmp_path / "crashed")


def _untimed(run_dir: Path) -> list[dict]:
    timing = {"time", "train/inner_steps_per_s"}
    return [{k: v for k, v in r.items() if k not in timing} for r in read_metrics(run_dir)]


def test_resume_with_another_family_is_refused(tmp_path):
    train_until_crash(_cfg("schedule.runs_per_epoch=1", "validation.enabled=false"), tmp_path)
    saved = ckpt.load_run_checkpoint(tmp_path / "last.pt")
    changed = _cfg(
        "schedule.runs_per_epoch=1",
        "validation.enabled=false",
        "task.family.augment.loss_scale=[1, 3]",
    )
    with pytest.raises(ckpt.CheckpointError, match=r"task\.family"):
        Trainer(changed, tmp_path, resume=saved)
