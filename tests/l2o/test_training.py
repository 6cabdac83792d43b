import math

import pytest
import torch

from l2o.seeding import derive_seed
from l2o.tasks import get_task
from l2o.training import PAPER_LR_GRID, evaluate, grid_search_lr, train_optimizee

TASK = get_task("mnist_mlp_sigmoid", dataset="mnist5k")


def sgd(lr):
    return lambda params: torch.optim.SGD(params, lr=lr)


def test_same_seed_same_trajectory_different_seed_differs():
    a = train_optimizee(TASK, sgd(0.5), steps=20, seed=4)
    b = train_optimizee(TASK, sgd(0.5), steps=20, seed=4)
    c = train_optimizee(TASK, sgd(0.5), steps=20, seed=5)
    assert torch.equal(a.train_losses, b.train_losses) and a.test_loss == b.test_loss
    assert not torch.equal(a.train_losses, c.train_losses)


def test_callback_sees_every_step_after_the_update():
    seen = []

    def callback(step, model, optimizer, loss, x, y):
        seen.append((step, float(loss), x.shape[0]))

    result = train_optimizee(TASK, sgd(0.1), steps=7, seed=0, callback=callback)
    assert [s for s, _, _ in seen] == list(range(7))
    assert all(b == TASK.batch_size for _, _, b in seen)
    assert [v for _, v, _ in seen] == result.train_losses.tolist()


class PoisonAfter(torch.optim.SGD):
    """SGD that writes NaN into the parameters at its ``after``-th step: a stand-in divergence
    (a saturated sigmoid MLP keeps a finite loss even at lr 1e30)."""

    def __init__(self, params, lr, after=3):
        super().__init__(params, lr=lr)
        self.after, self.count = after, 0

    @torch.no_grad()
    def step(self, closure=None):
        self.count += 1
        if self.count >= self.after:
            for group in self.param_groups:
                for p in group["params"]:
                    p.fill_(float("nan"))
        return super().step(closure)


def test_divergence_is_reported_not_raised():
    result = train_optimizee(TASK, lambda p: PoisonAfter(p, lr=0.1), steps=30, seed=0)
    assert result.diverged
    assert torch.isfinite(result.train_losses[:3]).all()
    assert torch.isnan(result.train_losses[3:]).all() and math.isnan(result.test_loss)


def test_grid_search_scores_divergent_rates_infinite_and_picks_a_good_one():
    def make(params, lr):
        return PoisonAfter(params, lr=0.1) if lr == 1e12 else torch.optim.SGD(params, lr=lr)

    best, table = grid_search_lr(TASK, make, lrs=(1e-4, 1.0, 1e12), steps=10, seeds=(0, 1))
    by_lr = {p.lr: p for p in table}
    assert math.isinf(by_lr[1e12].score_mean) and by_lr[1e12].diverged_runs == 2
    assert best == 1.0 and by_lr[1.0].score_mean < by_lr[1e-4].score_mean


def test_paper_grid():
    assert PAPER_LR_GRID == (1e-4, 5e-4, 1e-3, 5e-3, 1e-2, 5e-2, 1e-1, 5e-1, 1.0, 3.0)


def test_evaluate_returns_loss_and_accuracy():
    data = TASK.load_data()
    loss, acc = evaluate(TASK.make_model(0), TASK, data, chunk=300)
    assert 2.0 < loss < 2.6 and 0.0 <= acc <= 0.3  # untrained: chance level


def test_steps_must_be_positive():
    with pytest.raises(ValueError, match="steps"):
        train_optimizee(TASK, sgd(0.1), steps=0)


def test_derive_seed_is_stable_and_separates_streams():
    assert derive_seed(0, "data") == derive_seed(0, "data")
    assert len({derive_seed(s, k) for s in range(50) for k in ("a", "b")}) == 100
    assert 0 <= derive_seed(123, "x") < 2**63
