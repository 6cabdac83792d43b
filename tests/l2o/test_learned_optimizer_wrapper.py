"""``LearnedOptimizer`` as an ordinary ``torch.optim.Optimizer``."""

from __future__ import annotations

import math

import pytest
import torch
from flat_step_check import assert_deployment_equals_flat_step
from torch import nn

from l2o.optimizers import (
    LearnedOptimizer,
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
    assert_deployment_equals_flat_step(net, model, x, y, chunk_size, 3, rtol=1e-6, atol=1e-7)


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


def _one_step(net, values, grads, dtype, **group):
    """Parameters after one ``LearnedOptimizer`` step from ``values`` with ``grads`` in ``dtype``
    (as float64), and the optimizer."""
    params = [nn.Parameter(v.to(dtype, copy=True)) for v in values]
    for p, g in zip(params, grads):
        p.grad = g.to(dtype)
    opt = LearnedOptimizer([{"params": params, **group}], net)
    opt.step()
    return [p.detach().double() for p in params], opt


@pytest.mark.parametrize("arch", ["lstm", "mlp"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16, torch.float16])
def test_float64_and_half_precision_parameters(arch, dtype):
    """The update of a float64/bf16/fp16 parameter is the float32 one (network and state in
    float32, the update added in the parameter's precision); the state stays float32 through a
    state_dict round trip (torch would cast it to the parameter's dtype)."""
    torch.manual_seed(0)
    net = create(arch)
    values = [torch.randn(6, 5), torch.randn(5)]
    grads = [torch.randn(6, 5), torch.randn(5)]
    values = [v.to(dtype).float() for v in values]  # representable in every dtype
    grads = [g.to(dtype).float() for g in grads]
    want, _ = _one_step(net, values, grads, torch.float32)
    got, opt = _one_step(net, values, grads, dtype)
    tol = {torch.float64: 1e-5, torch.bfloat16: 2e-2, torch.float16: 2e-3}[dtype]
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=tol, atol=tol)
    for state in opt.state.values():
        assert all(v.dtype == torch.float32 for v in state.values() if v.is_floating_point())
    again = LearnedOptimizer(opt.param_groups[0]["params"], net)
    again.load_state_dict(opt.state_dict())
    for p in again.param_groups[0]["params"]:
        for k, v in again.state[p].items():
            assert v.dtype == opt.state[p][k].dtype, k
    assert next(net.parameters()).dtype == torch.float32  # the network itself is untouched


def test_mixed_dtypes_in_one_group_each_get_their_update():
    torch.manual_seed(0)
    net = create("lstm")
    values, grads = [torch.randn(7), torch.randn(3)], [torch.randn(7), torch.randn(3)]
    want, _ = _one_step(net, values, grads, torch.float32)
    a = nn.Parameter(values[0].clone())
    b = nn.Parameter(values[1].double())
    a.grad, b.grad = grads[0].clone(), grads[1].double()
    LearnedOptimizer([a, b], net).step()
    torch.testing.assert_close(a.detach().double(), want[0])
    torch.testing.assert_close(b.detach(), want[1], rtol=1e-5, atol=1e-6)


def test_unsupported_devices_and_dtypes_are_refused_before_any_change():
    net = create("lstm")
    ok = nn.Parameter(torch.ones(3))
    meta = nn.Parameter(torch.ones(3, device="meta"))
    ok.grad, meta.grad = torch.ones(3), torch.ones(3, device="meta")
    opt = LearnedOptimizer([ok, meta], net)
    with pytest.raises(ValueError, match=r"'meta' device; supported: cpu"):
        opt.step()
    assert torch.equal(ok.detach(), torch.ones(3)) and not opt.state  # nothing was touched
    assert next(net.parameters()).device.type == "cpu"  # the network did not move
    cplx = nn.Parameter(torch.ones(2, dtype=torch.complex64))
    cplx.grad = torch.ones_like(cplx)
    with pytest.raises(TypeError, match="complex64"):
        LearnedOptimizer([ok, cplx], net).step()
    assert torch.equal(ok.detach(), torch.ones(3))


def test_groups_carry_lr_and_decoupled_weight_decay():
    """θ ← θ - lr·wd·θ + lr·update, per group; torch's lr schedulers drive ``lr``."""
    torch.manual_seed(0)
    net = create("lstm", output_scale=1.0)
    values, grads = [torch.randn(5), torch.randn(4)], [torch.randn(5), torch.randn(4)]
    base, _ = _one_step(net, values, grads, torch.float32)
    got, opt = _one_step(net, values, grads, torch.float32, lr=0.3, weight_decay=0.1)
    for v, b, g in zip(values, base, got):
        update = b - v.double()
        torch.testing.assert_close(g, v.double() * (1 - 0.03) + 0.3 * update)
    assert opt.param_groups[0]["lr"] == 0.3 and opt.defaults["lr"] == 1.0

    a, b = nn.Parameter(values[0].clone()), nn.Parameter(values[1].clone())
    a.grad, b.grad = grads[0].clone(), grads[1].clone()
    opt = LearnedOptimizer([{"params": [a]}, {"params": [b], "lr": 0.0}], net)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=4)
    opt.step()
    sched.step()
    torch.testing.assert_close(a.detach().double(), base[0])
    assert torch.equal(b.detach(), values[1])  # lr 0: frozen
    assert opt.param_groups[0]["lr"] == pytest.approx(0.5 * (1 + math.cos(math.pi / 4)))
    state = opt.state_dict()
    again = LearnedOptimizer([{"params": [a]}, {"params": [b]}], net)
    again.load_state_dict(state)
    assert [g["lr"] for g in again.param_groups] == [g["lr"] for g in opt.param_groups]
    for group in state["param_groups"]:  # a state saved before groups carried lr
        del group["lr"], group["weight_decay"]
    again.load_state_dict(state)
    assert [g["lr"] for g in again.param_groups] == [1.0, 1.0]
    with pytest.raises(ValueError, match="weight_decay"):
        LearnedOptimizer([a], net, weight_decay=float("nan"))
    with pytest.raises(ValueError, match="lr"):
        LearnedOptimizer([{"params": [a], "lr": -1.0}], net)


def test_total_steps_reaches_a_progress_aware_network_and_survives_a_copy():
    import copy

    net = create("general", total_steps=200)
    model = nn.Linear(3, 2)
    opt = LearnedOptimizer(model.parameters(), net, total_steps=1000)
    model(torch.ones(4, 3)).sum().backward()
    opt.step()
    assert all(float(opt.state[p]["horizon"].flatten()[0]) == 1000.0 for p in model.parameters())
    assert copy.deepcopy(opt).total_steps == 1000
    default = LearnedOptimizer(nn.Linear(3, 2).parameters(), net)
    assert default.total_steps is None  # the network's own horizon (200) applies


def test_total_steps_is_refused_by_a_network_without_progress_inputs():
    with pytest.raises(TypeError, match="no training-progress inputs"):
        LearnedOptimizer(nn.Linear(3, 2).parameters(), create("mlp"), total_steps=100)
    with pytest.raises(ValueError, match="positive integer"):
        LearnedOptimizer(nn.Linear(3, 2).parameters(), create("general"), total_steps=0)


def test_stepping_past_a_cosine_horizon_warns_once():
    """A ``general`` with a cosine base schedule stops moving at its horizon: the wrapper says
    so once (an untold run length is the usual cause), and never for a constant schedule."""
    import warnings

    def run(net, steps, **kwargs):
        model = nn.Linear(3, 2)
        opt = LearnedOptimizer(model.parameters(), net, **kwargs)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            for _ in range(steps):
                opt.zero_grad()
                model(torch.ones(4, 3)).sum().backward()
                opt.step()
        return [w for w in caught if "past this learned optimizer's horizon" in str(w.message)]

    cosine = create("general", nominal="lars", base_schedule="cosine", total_steps=5)
    assert run(cosine, 5) == []
    assert len(run(cosine, 9)) == 1
    assert run(cosine, 9, total_steps=10) == []
    assert run(create("general", total_steps=5), 9) == []


def _cosine_steps(opt, model, steps):
    """``steps`` steps of ``opt`` on ``model``; the parameter change of each."""
    changes = []
    for _ in range(steps):
        before = model.weight.detach().clone()
        opt.zero_grad()
        model(torch.ones(4, 3)).pow(2).sum().backward()
        opt.step()
        changes.append(float((model.weight.detach() - before).abs().max()))
    return changes


def test_a_state_saved_for_a_shorter_run_continues_to_the_longer_one():
    """Resume into an optimizer made for 300 steps from a state saved at step 30 of a 30-step
    run: the optimizer's own total_steps wins (the saved horizon of 30 would make every update
    from step 31 on exactly zero); the step counter travels in the state_dict."""
    import warnings

    net = create("general", nominal="lars", base_schedule="cosine", total_steps=30)
    model = nn.Linear(3, 2)
    short = LearnedOptimizer(model.parameters(), net, total_steps=30)
    _cosine_steps(short, model, 30)
    saved = short.state_dict()
    assert saved["learned_optimizer"] == {
        "total_steps": 30,
        "steps_taken": 30,
        "warned_past_horizon": False,
    }
    long = LearnedOptimizer(model.parameters(), net, total_steps=300)
    long.load_state_dict(saved)
    assert all(float(s["horizon"].flatten()[0]) == 300.0 for s in long.state.values())
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # step 31 of 300: no past-horizon warning
        assert min(_cosine_steps(long, model, 5)) > 0.0
    told_nothing = LearnedOptimizer(model.parameters(), net)  # takes the saved horizon
    told_nothing.load_state_dict(saved)
    assert told_nothing.total_steps == 30
    with pytest.warns(UserWarning, match="step 31 is past this learned optimizer's horizon"):
        assert _cosine_steps(told_nothing, model, 1) == [0.0]  # the counter was restored
    again = told_nothing.state_dict()["learned_optimizer"]
    assert again == {"total_steps": 30, "steps_taken": 31, "warned_past_horizon": True}
    older = {k: v for k, v in saved.items() if k != "learned_optimizer"}  # saved before
    counted = LearnedOptimizer(model.parameters(), net, total_steps=30)
    counted.load_state_dict(older)
    assert counted.state_dict()["learned_optimizer"]["steps_taken"] == 30  # from the state's t
