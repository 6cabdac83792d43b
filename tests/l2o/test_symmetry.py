"""Symmetry structures found from the graph, and the constraints they put on gradients/updates."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from l2o.symmetry import (
    SymmetryStructure,
    constraint_deviations,
    deviations_by_kind,
    find_structures,
    update_deviations,
)
from l2o.tasks import available_tasks, get_task

EXPECTED = {
    "mnist_mlp_sigmoid": ["translation fc2"],
    "mnist_mlp_relu": ["rescale fc1→fc2", "translation fc2"],
    "mnist_mlp_leakyrelu": ["rescale fc1→fc2", "translation fc2"],
    "mnist_mlp_softplus": ["translation fc2"],
    "mnist_mlp_sigmoid_h40": ["translation fc2"],
    "mnist_mlp_sigmoid_2layer": ["translation fc3"],
    "mnist_mlp_relu_2layer": ["rescale fc1→fc2", "rescale fc2→fc3", "translation fc3"],
    "mnist_mlp_relu_bn": ["scale fc1", "rescale bn1→fc2", "translation fc2"],
    # hidden units 0-4 sigmoid, 5-9 ReLU, 10-14 tanh, 15-19 LeakyReLU
    "mnist_mlp_mixed": ["rescale fc1→fc2[5:10]", "rescale fc1→fc2[15:20]", "translation fc2"],
    "mnist_conv": ["rescale conv1→conv2", "rescale conv2→fc1", "translation fc1"],
    "cifar10_mlp_sigmoid": ["translation fc3"],
    "fashion_mnist_mlp_sigmoid": ["translation fc2"],
    "fashion_mnist_mlp_relu": ["rescale fc1→fc2", "translation fc2"],
    "fashion_mnist_mlp_relu_bn": ["scale fc1", "rescale bn1→fc2", "translation fc2"],
    "fashion_mnist_conv": ["rescale conv1→conv2", "rescale conv2→fc1", "translation fc1"],
    "fashion_mnist_mlp_tanh": ["translation fc2"],
    "digits_mlp_relu": ["rescale fc1→fc2", "translation fc2"],
    "digits_mlp_tanh": ["translation fc2"],
    "mnist_mlp_wide": ["rescale fc1→fc2", "rescale fc2→fc3", "translation fc3"],
    # untraceable (causal mask): the model lists its own structures
    "stdlib_lm_transformer": ["translation head"],
}


def _exact_model(model: nn.Module) -> nn.Module:
    """float64 and a negligible normalization eps: with eps the scale symmetry is approximate."""
    model = copy.deepcopy(model).double()
    for m in model.modules():
        if hasattr(m, "eps"):
            m.eps = 1e-30
    return model


def _grads(model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss=F.cross_entropy):
    model.zero_grad()
    logits = model(x)
    loss(logits.flatten(0, -2), y.flatten()).backward()
    return {n: p.grad.detach().clone() for n, p in model.named_parameters()}


def _params(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def _batch(task, n=32, dtype=torch.float64, seed=0):
    """Random inputs (tokens for the language model: one target per position) and labels."""
    g = torch.Generator().manual_seed(seed)
    if task.dataset_name == "stdlib_bytes":
        tokens = torch.randint(0, task.num_classes, (n, *task.input_shape), generator=g)
        return tokens, torch.randint(0, task.num_classes, tokens.shape, generator=g)
    x = torch.randn(n, *task.input_shape, generator=g, dtype=dtype)
    y = torch.randint(0, task.num_classes, (n,), generator=g)
    return x, y


@pytest.mark.parametrize("name", available_tasks())
def test_discovery_finds_expected_structures_on_every_registry_task(name):
    assert name in EXPECTED, f"new registry task {name!r}: add its expected structures here"
    model = get_task(name).make_model(seed=0)
    labels = [s.label for s in find_structures(model)]
    assert labels == EXPECTED[name]


@pytest.mark.parametrize("name", available_tasks())
def test_gradient_and_sgd_update_deviations_vanish_on_every_registry_task(name):
    task = get_task(name)
    model = _exact_model(task.make_model(seed=1))
    structures = find_structures(model)
    assert structures
    x, y = _batch(task)
    before = _params(model)
    grads = _grads(model, x, y)
    for dev in constraint_deviations(structures, grads, before):
        assert dev.normalizer.item() > 0, dev.structure.label
        assert dev.relative.item() < 1e-10, (dev.structure.label, dev.relative.item())
    lr = 0.3
    torch.optim.SGD(model.parameters(), lr=lr).step()
    delta = {n: p.detach() - before[n] for n, p in model.named_parameters()}
    for dev in update_deviations(structures, delta, before):
        assert dev.relative.item() < 1e-10, (dev.structure.label, dev.relative.item())


def test_float32_sgd_update_deviation_is_zero_to_float_precision():
    task = get_task("mnist_mlp_relu_bn")
    model = task.make_model(seed=0)
    structures = find_structures(model)
    x, y = _batch(task, dtype=torch.float32)
    before = _params(model)
    _grads(model, x, y)
    torch.optim.SGD(model.parameters(), lr=0.1).step()
    delta = {n: p.detach() - before[n] for n, p in model.named_parameters()}
    rel = {
        d.structure.kind: d.relative.item() for d in update_deviations(structures, delta, before)
    }
    # BatchNorm's eps makes the scale symmetry approximate (≈ eps/var), the rest is rounding
    assert rel["translation"] < 1e-5 and rel["rescale"] < 1e-4 and rel["scale"] < 1e-3, rel


def test_update_sign_convention_and_pre_step_parameters():
    """Pitfall 8: constraints are on gradients; an update is evaluated as u = −Δθ at θ_t."""
    task = get_task("mnist_mlp_relu")
    model = _exact_model(task.make_model(seed=2))
    structures = find_structures(model)
    x, y = _batch(task)
    before = _params(model)
    grads = _grads(model, x, y)
    lr = 0.5
    torch.optim.SGD(model.parameters(), lr=lr).step()
    after = _params(model)
    delta = {n: after[n] - before[n] for n in before}
    # −Δθ = lr·g, so the signed per-neuron values are lr times the gradient's (both ~0 here);
    # use an arbitrary direction to pin the sign: update_deviations(Δ) == deviations of −Δ.
    direction = {n: torch.randn_like(p) for n, p in before.items()}
    got = update_deviations(structures, direction, before)
    want = constraint_deviations(structures, {n: -v for n, v in direction.items()}, before)
    for a, b in zip(got, want):
        torch.testing.assert_close(a.per_neuron, b.per_neuron)
        assert a.per_neuron.abs().max() > 1e-3
    # evaluated at the parameters after the step, even SGD would appear to break the rescale
    # symmetry (by lr·‖g‖² terms): the recorder must keep θ_t
    rescale = [s for s in structures if s.kind == "rescale"]
    wrong = update_deviations(rescale, delta, after)[0]
    right = update_deviations(rescale, delta, before)[0]
    assert right.relative.item() < 1e-10
    assert wrong.relative.item() > 1e-4
    del grads


@pytest.mark.parametrize("name", ["mnist_mlp_relu", "mnist_mlp_relu_bn", "mnist_conv"])
def test_sign_update_breaks_the_constraints(name):
    task = get_task(name)
    model = _exact_model(task.make_model(seed=0))
    structures = find_structures(model)
    x, y = _batch(task)
    before = _params(model)
    grads = _grads(model, x, y)
    sign_delta = {n: -1e-3 * torch.sign(g) for n, g in grads.items()}
    for dev in update_deviations(structures, sign_delta, before):
        assert dev.relative.item() > 1e-2, dev.structure.label
        assert dev.magnitude.item() > 1e-6, dev.structure.label


def test_lion_update_breaks_the_constraints():
    import baselines

    task = get_task("mnist_mlp_relu_bn")
    model = task.make_model(seed=0)
    structures = find_structures(model)
    opt = baselines.create("lion", model.parameters(), lr=1e-3)
    x, y = _batch(task, dtype=torch.float32)
    before = _params(model)
    _grads(model, x, y)
    opt.step()
    delta = {n: p.detach() - before[n] for n, p in model.named_parameters()}
    for dev in update_deviations(structures, delta, before):
        assert dev.relative.item() > 1e-2, dev.structure.label


class _OddNames(nn.Module):
    """Pitfall 7: nothing called fc1/fc2, nested containers, two hidden layers, a flatten."""

    def __init__(self):
        super().__init__()
        self.encoder = nn.Sequential(
            nn.Flatten(), nn.Linear(12, 7), nn.LeakyReLU(0.2), nn.Dropout(0.0), nn.Linear(7, 5)
        )
        self.mid = nn.ModuleDict({"act": nn.ReLU(), "norm": nn.LayerNorm(5)})
        self.head = nn.Linear(5, 3)
        self.proj = nn.Linear(5, 5)

    def forward(self, x):
        h = self.encoder(x)
        h = self.mid["act"](h)
        h = self.proj(h)
        h = self.mid["norm"](h)
        return F.log_softmax(self.head(F.relu(h)), dim=-1)


def test_discovery_does_not_depend_on_layer_names():
    model = _OddNames()
    labels = [s.label for s in find_structures(model, loss_kind="nll")]
    assert labels == [
        "rescale encoder.1→encoder.4",
        "rescale encoder.4→proj",
        "scale proj",
        "rescale mid.norm→head",
        "translation head",
    ]
    scale = next(s for s in find_structures(model, loss_kind="nll") if s.kind == "scale")
    assert scale.group_size == 5  # LayerNorm: the whole layer shares one scale factor
    model = _exact_model(model)
    x, y = torch.randn(16, 3, 4, dtype=torch.float64), torch.randint(0, 3, (16,))
    grads = _grads(model, x, y, loss=F.nll_loss)
    for dev in constraint_deviations(find_structures(model, "nll"), grads, _params(model)):
        assert dev.relative.item() < 1e-10, dev.structure.label


def test_conv_batchnorm_scale_and_pooling_rescale():
    model = nn.Sequential(
        nn.Conv2d(2, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(4, 3, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(2),
        nn.Flatten(),
        nn.Linear(12, 5),
    )
    labels = [s.label for s in find_structures(model)]
    assert labels == ["scale 0", "rescale 1→4", "rescale 4→8", "translation 8"]
    model = _exact_model(model)
    x, y = torch.randn(8, 2, 6, 6, dtype=torch.float64), torch.randint(0, 5, (8,))
    grads = _grads(model, x, y)
    for dev in constraint_deviations(find_structures(model), grads, _params(model)):
        assert dev.relative.item() < 1e-10, dev.structure.label


def test_loss_kind_decides_translation_for_logit_models():
    model = get_task("mnist_mlp_relu").make_model()
    assert [s.kind for s in find_structures(model, loss_kind="mse")] == ["rescale"]
    with pytest.raises(ValueError, match="loss_kind"):
        find_structures(model, loss_kind="hinge")


class _Untraceable(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(6, 4)
        self.b = nn.Linear(4, 3)

    def forward(self, x):
        h = self.a(x)
        if h.sum() > 0:  # data-dependent control flow: fx cannot trace it
            h = h * 1.0
        return self.b(torch.relu(h))


def test_override_path_for_models_fx_cannot_trace():
    model = _Untraceable()
    with pytest.raises(ValueError, match="override"):
        find_structures(model)
    override = [
        SymmetryStructure.rescale("a.weight", "a.bias", "b.weight"),
        SymmetryStructure.translation("b.weight", "b.bias"),
    ]
    structures = find_structures(model, override=override)
    assert [s.label for s in structures] == ["rescale a→b", "translation b"]
    model = _exact_model(model)
    x, y = torch.randn(10, 6, dtype=torch.float64), torch.randint(0, 3, (10,))
    grads = _grads(model, x, y)
    for dev in constraint_deviations(structures, grads, _params(model)):
        assert dev.relative.item() < 1e-10
    # a model can carry its own override
    model.symmetry_structures = lambda: override[:1]
    assert [s.label for s in find_structures(model)] == ["rescale a→b"]
    with pytest.raises(ValueError, match="not in the model"):
        find_structures(model, override=[SymmetryStructure.translation("c.weight", None)])
    with pytest.raises(ValueError, match="cannot be split"):
        find_structures(model, override=[SymmetryStructure.rescale("b.weight", None, "b.weight")])
    with pytest.raises(ValueError, match="bias shape"):
        find_structures(
            model, override=[SymmetryStructure.rescale("a.weight", "b.bias", "b.weight")]
        )


def test_batched_directions_match_one_by_one():
    task = get_task("mnist_mlp_relu_bn")
    model = task.make_model(seed=0)
    structures = find_structures(model)
    params = _params(model)
    batch = {n: torch.randn(3, *p.shape) for n, p in params.items()}
    together = constraint_deviations(structures, batch, params)
    for i in range(3):
        alone = constraint_deviations(structures, {n: v[i] for n, v in batch.items()}, params)
        for a, b in zip(together, alone):
            torch.testing.assert_close(a.per_neuron[i], b.per_neuron)
            torch.testing.assert_close(a.magnitude[i], b.magnitude)
    # batched parameters too (a meta-batch of optimizees)
    bparams = {n: p.expand(3, *p.shape) for n, p in params.items()}
    again = constraint_deviations(structures, batch, bparams)
    for a, b in zip(together, again):
        torch.testing.assert_close(a.per_neuron, b.per_neuron)
    with pytest.raises(ValueError, match="expected"):
        constraint_deviations(structures, {n: v[..., :1] for n, v in batch.items()}, params)


def test_paper_formulas_by_hand():
    """The paper's summed deviations on a 1-hidden-layer MLP, written out."""
    task = get_task("mnist_mlp_relu_bn")
    model = task.make_model(seed=0)
    p = _params(model)
    u = {n: torch.randn_like(v) for n, v in p.items()}
    devs = {d.structure.label: d for d in constraint_deviations(find_structures(model), u, p)}
    rescale = (
        (u["bn1.weight"] * p["bn1.weight"]).sum()
        + (u["bn1.bias"] * p["bn1.bias"]).sum()
        - (u["fc2.weight"] * p["fc2.weight"]).sum()
    )
    scale = (u["fc1.weight"] * p["fc1.weight"]).sum() + (u["fc1.bias"] * p["fc1.bias"]).sum()
    translation = u["fc2.weight"].sum().abs() + u["fc2.bias"].sum().abs()
    torch.testing.assert_close(devs["rescale bn1→fc2"].magnitude, rescale.abs())
    torch.testing.assert_close(devs["scale fc1"].magnitude, scale.abs())
    torch.testing.assert_close(devs["translation fc2"].magnitude, translation)
    # per neuron: column n of fc2 holds neuron n's outgoing weights
    n = 3
    per = (
        u["bn1.weight"][n] * p["bn1.weight"][n]
        + u["bn1.bias"][n] * p["bn1.bias"][n]
        - (u["fc2.weight"][:, n] * p["fc2.weight"][:, n]).sum()
    )
    torch.testing.assert_close(devs["rescale bn1→fc2"].per_neuron[n], per)
    col_sums = u["fc2.weight"].sum(0)
    torch.testing.assert_close(devs["translation fc2"].per_neuron[:-1], col_sums)
    by_kind = deviations_by_kind(devs.values())
    assert set(by_kind) == {"rescale", "scale", "translation"}


def test_deviations_are_differentiable_in_u():
    model = get_task("mnist_mlp_relu").make_model()
    structures = find_structures(model)
    p = _params(model)
    u = {n: torch.randn_like(v, requires_grad=True) for n, v in p.items()}
    total = sum(d.magnitude for d in constraint_deviations(structures, u, p))
    total.backward()
    assert all(u[n].grad is not None and u[n].grad.abs().sum() > 0 for n in ("fc1.weight",))
