"""The unroll API the trainer builds on: configs, inner state, resume, real tasks."""

from __future__ import annotations

import pytest
import torch

from l2o.optimizers import create
from l2o.tasks import get_task
from l2o.training import make_optimizee, model_seed, train_optimizee
from meta_train.estimators import meta_step_gradient
from meta_train.inner_loop.meta_losses import meta_loss, meta_loss_weights
from meta_train.inner_loop.unroll import InnerState, UnrollConfig, init_inner_state


@pytest.fixture(scope="module")
def task():
    return get_task("mnist_mlp_sigmoid", dataset="mnist5k")


@pytest.fixture(scope="module")
def data(task):
    return task.load_data("cpu")


def samplers(data, seeds):
    return [data.sampler(128, seed=1000 + s) for s in seeds]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(length=0), "length"),
        (dict(meta_loss="log"), "meta_loss"),
        (dict(estimator=""), "estimator"),
        (dict(checkpoint_every=-1), "checkpoint_every"),
        (dict(chunk_size=-5), "chunk_size"),
    ],
)
def test_config_errors_are_clear(kwargs, match):
    with pytest.raises(ValueError, match=match):
        UnrollConfig(**kwargs)


def test_meta_loss_kinds_and_weights():
    losses = torch.tensor([[2.0, 1.0, 1.0], [4.0, 2.0, 2.0]])
    assert meta_loss(losses, "sum").tolist() == [4.0, 8.0]
    assert meta_loss(losses, "mean").tolist() == pytest.approx([4 / 3, 8 / 3])
    assert meta_loss(losses, "log_sum").tolist() == pytest.approx([1.3862944, 2.0794415])
    w = meta_loss_weights(losses, "log_sum")  # d mean_b log Σ_k l / d l = 1 / (B Σ_k l)
    assert w.flatten().tolist() == pytest.approx([1 / 8] * 3 + [1 / 16] * 3)
    w = meta_loss_weights(losses, "mean_log")
    assert w[0].tolist() == pytest.approx([1 / (2 * 3 * 2.0), 1 / 6, 1 / 6])
    with pytest.raises(ValueError, match="available"):
        meta_loss(losses, "max")


def test_init_inner_state(task):
    lopt = create("lstm")
    inner = init_inner_state(task, lopt, [0, 1, 2], "cpu")
    assert inner.params.shape == (3, 784 * 20 + 20 + 20 * 10 + 10)
    assert inner.step == 0 and inner.seeds == (0, 1, 2)
    ref = make_optimizee(task, 1)  # the one seed convention, shared with train_optimizee
    torch.testing.assert_close(inner.named_params(1)["fc1.weight"], ref.fc1.weight.detach())
    assert inner.opt_state["h"].shape == (2, 3, inner.params.shape[1], 20)
    assert not torch.equal(inner.params[0], inner.params[1])
    with pytest.raises(ValueError, match="seed"):
        init_inner_state(task, lopt, [], "cpu")


def test_meta_training_and_train_optimizee_start_seed_s_from_the_same_weights(task, data):
    """Pinned: optimizee seed s is ``task.make_model(model_seed(s))`` in meta-training and in
    ``train_optimizee`` (seen through its callback; lr 0 keeps the initial weights)."""
    seen = {}

    def capture(step, model, optimizer, loss, x, y):
        seen["fc1.weight"] = model.fc1.weight.detach().clone()

    sgd0 = lambda params: torch.optim.SGD(params, lr=0.0)
    train_optimizee(task, sgd0, 1, seed=7, data=data, callback=capture, evaluate_test=False)
    inner = init_inner_state(task, create("mlp"), [7], "cpu")
    want = task.make_model(model_seed(7)).fc1.weight.detach()
    torch.testing.assert_close(seen["fc1.weight"], want, rtol=0, atol=0)
    torch.testing.assert_close(inner.named_params(0)["fc1.weight"], want, rtol=0, atol=0)


@pytest.mark.parametrize("arch", ["lstm", "mlp"])
def test_meta_step_on_the_classic_task_and_exact_resume(task, data, arch, tmp_path):
    """Two meta-steps straight equal one, a save/load of state and samplers, and another."""
    torch.manual_seed(0)
    lopt = create(arch)
    cfg = UnrollConfig(length=3, meta_loss="log_sum")
    seeds = [0, 1]

    inner = init_inner_state(task, lopt, seeds, "cpu")
    samp = samplers(data, seeds)
    res, inner = meta_step_gradient(lopt, task, inner, samp, cfg)
    assert res.finite and res.inner_losses.shape == (2, 3) and inner.step == 3
    assert res.meta_loss == pytest.approx(float(meta_loss(res.inner_losses, "log_sum").mean()))
    assert 0 < res.mean_abs_update < 1
    path = tmp_path / "resume.pt"
    torch.save({"inner": inner.state_dict(), "samplers": [s.state_dict() for s in samp]}, path)
    lopt.zero_grad(set_to_none=True)
    res2, straight = meta_step_gradient(lopt, task, inner, samp, cfg)
    grads = [p.grad.clone() for p in lopt.parameters()]

    saved = torch.load(path, weights_only=True)
    resumed = InnerState.from_state_dict(saved["inner"], task)
    samp2 = samplers(data, seeds)
    for s, sd in zip(samp2, saved["samplers"]):
        s.load_state_dict(sd)
    lopt.zero_grad(set_to_none=True)
    res3, again = meta_step_gradient(lopt, task, resumed, samp2, cfg)
    assert torch.equal(res2.inner_losses, res3.inner_losses)
    assert torch.equal(straight.params, again.params)
    for k in straight.opt_state:
        assert torch.equal(straight.opt_state[k], again.opt_state[k]), k
    for g, p in zip(grads, lopt.parameters()):
        assert torch.equal(g, p.grad)


def test_meta_step_on_the_batchnorm_task_second_order(data):
    task = get_task("mnist_mlp_relu_bn", dataset="mnist5k")
    lopt = create("lstm")
    inner = init_inner_state(task, lopt, [0, 1], "cpu")
    res, inner = meta_step_gradient(
        lopt, task, inner, samplers(data, [0, 1]), UnrollConfig(length=2, estimator="second")
    )
    assert res.finite and inner.step == 2
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in lopt.parameters())


def test_mismatches_are_reported(task, data):
    lopt = create("lstm")
    inner = init_inner_state(task, lopt, [0, 1], "cpu")
    with pytest.raises(ValueError, match="samplers"):
        meta_step_gradient(lopt, task, inner, samplers(data, [0]), UnrollConfig(length=1))
    other = get_task("mnist_mlp_sigmoid_h40", dataset="mnist5k")
    with pytest.raises(ValueError, match="does not match"):
        meta_step_gradient(lopt, other, inner, samplers(data, [0, 1]), UnrollConfig(length=1))
    with pytest.raises(ValueError, match="do not fit"):
        InnerState.from_state_dict(inner.state_dict(), other)
    with pytest.raises(ValueError, match="lacks"):
        InnerState.from_state_dict({"params": inner.params}, task)
