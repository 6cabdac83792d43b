"""``LearnedOptimizer`` as an ordinary ``torch.optim.Optimizer``."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from l2o.optimizers import (
    LearnedOptimizer,
    ParamSpec,
    available_pretrained,
    create,
    save_learned_optimizer,
)


def normalized_gd(step: float = 0.05):
    """An MLP optimizer set by hand to Δ = -step · g / rms_tensor(g) (a known-good rule)."""
    net = create("mlp", hidden_sizes=[2], step_mult=step, exp_mult=0.0)
    with torch.no_grad():
        for p in net.parameters():
            p.zero_()
        first, last = net.net[0], net.net[-1]
        first.weight[0, 0], first.weight[1, 0] = 1.0, -1.0  # relu(g'), relu(-g')
        last.weight[0, 0], last.weight[0, 1] = -1.0, 1.0  # direction = -g'
    return net


def regression_problem(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(64, 5, generator=g)
    y = x @ torch.randn(5, 1, generator=g) + 0.1 * torch.randn(64, 1, generator=g)
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 1))
    return model, x, y


def train(model, opt, x, y, steps):
    losses = []
    for _ in range(steps):
        opt.zero_grad()
        loss = nn.functional.mse_loss(model(x), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def test_trains_an_ordinary_model():
    model, x, y = regression_problem()
    losses = train(model, LearnedOptimizer(model.parameters(), normalized_gd()), x, y, 60)
    assert losses[-1] < 0.3 * losses[0]


@pytest.mark.parametrize("arch", ["lstm", "mlp"])
@pytest.mark.parametrize("chunk_size", [7, 10_000])
def test_updates_equal_the_flat_step(arch, chunk_size):
    """Chunked per-tensor deployment = the network's step over the flat vector of all params."""
    torch.manual_seed(0)
    extra = {"extra_inputs": ["momentum", "adam", "param", "time"]} if arch == "lstm" else {}
    net = create(arch, **extra)
    model, x, y = regression_problem()
    spec = ParamSpec.from_module(model)
    flat = spec.flatten(dict(model.named_parameters())).detach()
    state = net.init_state(flat, spec)
    opt = LearnedOptimizer(model.parameters(), net, chunk_size=chunk_size)
    for _ in range(3):
        opt.zero_grad()
        nn.functional.mse_loss(model(x), y).backward()
        grads = spec.flatten({n: p.grad for n, p in model.named_parameters()})
        with torch.no_grad():
            upd, state = net.step(grads, flat, state)
        flat = flat + upd
        opt.step()
        got = spec.flatten(dict(model.named_parameters())).detach()
        torch.testing.assert_close(got, flat, rtol=1e-6, atol=1e-7)


def test_state_dict_round_trip_continues_identically(tmp_path):
    torch.manual_seed(0)
    net = create("lstm", extra_inputs=["momentum"])
    model_a, x, y = regression_problem()
    opt_a = LearnedOptimizer(model_a.parameters(), net)
    train(model_a, opt_a, x, y, 3)
    model_b, _, _ = regression_problem()
    model_b.load_state_dict(model_a.state_dict())
    path = tmp_path / "opt_state.pt"
    torch.save(opt_a.state_dict(), path)
    opt_b = LearnedOptimizer(model_b.parameters(), net)
    opt_b.load_state_dict(torch.load(path, weights_only=True))
    la = train(model_a, opt_a, x, y, 3)
    lb = train(model_b, opt_b, x, y, 3)
    assert la == lb
    for pa, pb in zip(model_a.parameters(), model_b.parameters()):
        assert torch.equal(pa, pb)
    opt_mlp = LearnedOptimizer(model_b.parameters(), create("mlp"))
    with pytest.raises(ValueError, match="saved by a"):
        opt_mlp.load_state_dict(opt_a.state_dict())


@pytest.mark.parametrize("how", ["deepcopy", "pickle"])
def test_a_copied_optimizer_with_its_model_continues_identically(how):
    """``copy.deepcopy`` / pickle keep the network (torch's ``Optimizer.__getstate__`` alone
    would drop it) and the per-parameter state."""
    import copy
    import pickle

    torch.manual_seed(0)
    model, x, y = regression_problem()
    opt = LearnedOptimizer(model.parameters(), create("lstm", extra_inputs=["momentum"]))
    train(model, opt, x, y, 3)
    pair = (model, opt)
    model_b, opt_b = copy.deepcopy(pair) if how == "deepcopy" else pickle.loads(pickle.dumps(pair))
    assert opt_b.net is not opt.net and opt_b.chunk_size == opt.chunk_size
    assert train(model, opt, x, y, 3) == train(model_b, opt_b, x, y, 3)
    for pa, pb in zip(model.parameters(), model_b.parameters()):
        assert torch.equal(pa, pb)


def test_loads_checkpoint_paths_closures_and_skips_params_without_grad(tmp_path):
    path = save_learned_optimizer(tmp_path / "gd.pt", normalized_gd(), {"note": "hand-set"})
    model, x, y = regression_problem()
    frozen = nn.Parameter(torch.ones(3))
    opt = LearnedOptimizer([*model.parameters(), frozen], path)
    assert opt.metadata == {"note": "hand-set"}

    def closure():
        opt.zero_grad()
        loss = nn.functional.mse_loss(model(x), y)
        loss.backward()
        return loss

    first = opt.step(closure).item()
    for _ in range(20):
        last = opt.step(closure).item()
    assert last < first
    assert torch.equal(frozen, torch.ones(3)) and frozen not in opt.state


def test_non_contiguous_parameters_are_updated():
    weight = nn.Parameter(torch.randn(4, 3).t())  # non-contiguous
    assert not weight.is_contiguous()
    opt = LearnedOptimizer([weight], normalized_gd(0.1))
    before = weight.detach().clone()
    weight.grad = torch.ones_like(weight)
    opt.step()
    assert (weight < before).all()


def test_from_pretrained_unknown_name_lists_the_available_ones():
    with pytest.raises(ValueError, match="available"):
        LearnedOptimizer.from_pretrained("no-such-optimizer", [nn.Parameter(torch.zeros(1))])
    with pytest.raises(TypeError):
        LearnedOptimizer([nn.Parameter(torch.zeros(1))], object())
    assert isinstance(available_pretrained(), list)


@pytest.mark.parametrize("name", ["lstm-mnist", "mlp-mnist"])
def test_shipped_checkpoints_train_an_mnist_model(name):
    """The pretrained optimizers load by name and train the classic task they were made for."""
    from l2o.tasks import get_task
    from l2o.training import train_optimizee

    assert name in available_pretrained()
    task = get_task("mnist_mlp_sigmoid", dataset="mnist5k")
    result = train_optimizee(
        task,
        lambda params: LearnedOptimizer.from_pretrained(name, params),
        steps=40,
        seed=7,
        evaluate_test=False,
    )
    losses = result.train_losses
    assert not result.diverged
    assert losses[-5:].mean() < 0.6 * losses[:5].mean()
