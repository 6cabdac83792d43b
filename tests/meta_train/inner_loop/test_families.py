"""Task families and augmentations: reproducible per seed, and each augmentation is the
function it claims to be."""

from __future__ import annotations

import pytest
import torch

import l2o.optimizers as lo
from l2o.tasks import get_task
from meta_train.estimators.es import AntitheticES
from meta_train.inner_loop.families import (
    AugmentationSpec,
    AugmentedOptimizee,
    AugmentedSampler,
    FamilySpec,
    assign_members,
    draw_run,
    member_groups,
)
from meta_train.inner_loop.unroll import UnrollConfig, functional_optimizee, init_inner_state

AUG = AugmentationSpec(
    param_scale=(0.1, 10.0),
    loss_scale=(0.5, 2.0),
    batch_sizes=(16, 32),
    data_fraction=0.5,
    permute_labels=True,
)


def _task():
    return get_task("mnist_mlp_sigmoid", batch_size=32)


def _batch(b: int, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(b, 32, 1, 28, 28, generator=gen), torch.randint(
        0, 10, (b, 32), generator=gen
    )


def test_members_are_assigned_by_weight_and_reproducibly():
    spec = FamilySpec((("mnist_mlp_sigmoid", 3.0), ("mnist_mlp_relu", 1.0)))
    a = assign_members(spec, 8, seed=1)
    assert sorted(a) == ["mnist_mlp_relu"] * 2 + ["mnist_mlp_sigmoid"] * 6
    assert a == assign_members(spec, 8, seed=1)
    assert any(assign_members(spec, 8, seed=s) != a for s in range(2, 6))
    groups = member_groups(a)
    assert groups["mnist_mlp_relu"][1] == 0.25
    assert sorted(groups["mnist_mlp_relu"][0] + groups["mnist_mlp_sigmoid"][0]) == list(range(8))
    with pytest.raises(ValueError, match="weight"):
        FamilySpec((("a", 0.0),))


def test_draws_are_reproducible_per_seed_and_differ_between_runs():
    spec = functional_optimizee(_task(), "cpu").spec
    args = (AUG, spec, 32, 10, 1000)
    a, b = draw_run(*args, seed=7, slot=2, run=3), draw_run(*args, seed=7, slot=2, run=3)
    for key in ("scale", "loss_scale", "mask", "labels", "subset"):
        assert torch.equal(getattr(a, key), getattr(b, key))
    c = draw_run(*args, seed=7, slot=2, run=4)
    assert not torch.equal(a.scale, c.scale)
    assert a.subset.numel() == 500 and int(a.mask.sum()) in (16, 32)
    assert sorted(a.labels.tolist()) == list(range(10))
    # per tensor: one scale per parameter tensor, within the range
    starts = [0, *torch.tensor(spec.numels).cumsum(0).tolist()[:-1]]
    for lo_, n in zip(starts, spec.numels, strict=True):
        assert torch.all(a.scale[lo_ : lo_ + n] == a.scale[lo_])
    assert float(a.scale.min()) >= 0.1 and float(a.scale.max()) <= 10.0


def test_augmented_optimizee_is_the_reparameterized_scaled_masked_loss():
    base = functional_optimizee(_task(), "cpu")
    draws = [draw_run(AUG, base.spec, 32, 10, 1000, seed=0, slot=s, run=0) for s in range(2)]
    aug = AugmentedOptimizee(base, draws, "cpu")
    theta_prime, buffers = aug.init_params([0, 1])
    x, y = _batch(2)
    loss, grad = aug.loss_and_grad(theta_prime, buffers, x, y)
    for b, d in enumerate(draws):
        keep = int(d.mask.sum())
        theta = (theta_prime[b] * d.scale).unsqueeze(0)  # θ = s ⊙ θ′: the fresh model itself
        ref_loss, ref_grad = base.loss_and_grad(theta, {}, x[b : b + 1, :keep], y[b : b + 1, :keep])
        torch.testing.assert_close(loss[b], d.loss_scale * ref_loss[0])
        torch.testing.assert_close(grad[b], d.loss_scale * d.scale * ref_grad[0])
    fresh, _ = base.init_params([0, 1])
    torch.testing.assert_close(theta_prime * aug.scale, fresh)
    picked = aug.select(torch.tensor([1, 1, 0]))
    assert torch.equal(picked.scale[2], aug.scale[0])
    with pytest.raises(ValueError, match="rows"):
        aug.loss_and_grad(theta_prime[:1], buffers, x[:1], y[:1])


def test_augmented_sampler_uses_the_subset_and_permutes_labels():
    x = torch.arange(100, dtype=torch.float32).view(100, 1)
    y = torch.arange(100) % 10
    draw = draw_run(AUG, functional_optimizee(_task(), "cpu").spec, 32, 10, 100, 3, 0, 0)
    sampler = AugmentedSampler(x, y, draw, 32, seed=0)
    allowed = set(draw.subset.tolist())
    for _ in range(20):
        xb, yb = sampler.next()
        rows = xb[:, 0].long()
        assert set(rows.tolist()) <= allowed
        assert torch.equal(yb, draw.labels[rows % 10])


def test_es_runs_on_augmented_optimizees():
    task = _task()
    lopt = lo.create("mlp")
    base = functional_optimizee(task, "cpu")
    draws = [draw_run(AUG, base.spec, 32, 10, 1000, seed=0, slot=s, run=0) for s in range(2)]
    aug = AugmentedOptimizee(base, draws, "cpu")
    inner = init_inner_state(task, lopt, [0, 1], "cpu")
    inner.params = aug.init_params([0, 1])[0]
    x, y = _batch(2)

    class Fixed:
        def __init__(self, b):
            self.b = b

        def next(self):
            return x[self.b], y[self.b]

    est = AntitheticES(UnrollConfig(length=2, meta_loss="mean"), num_pairs=2)
    result, _ = est.estimate(lopt, aug, inner, [Fixed(0), Fixed(1)])
    assert result.finite and result.inner_losses.shape == (8, 2)
