"""The estimators' meta-gradients equal the reference meta-step
(``meta_train.inner_loop.reference``).

The reference keeps per-tensor parameter dicts per optimizee, builds the whole graph (optimizee
included), takes inner gradients with ``torch.autograd.grad`` and calls backward once on the
meta-loss. The estimators under test instead run vectorized flat optimizees through
``torch.func`` and (first order) replay the optimizer with the c_j cotangents.
"""

from __future__ import annotations

from dataclasses import dataclass

import higher  # dev dependency: the independent second-order oracle below
import pytest
import torch

from l2o.optimizers import create
from l2o.tasks.models import MLP
from meta_train.estimators import meta_step_gradient
from meta_train.inner_loop.meta_losses import META_LOSSES, meta_loss
from meta_train.inner_loop.reference import reference_meta_gradient
from meta_train.inner_loop.unroll import UnrollConfig, init_inner_state


@dataclass(frozen=True)
class TinyTask:
    """A 6-5-3 MLP on random data: the unroll only needs ``make_model``, ``loss``, ``name``."""

    name: str = "tiny"
    activation: str = "sigmoid"
    batch_norm: bool = False

    def make_model(self, seed: int = 0, device="cpu"):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = MLP(6, (5,), 3, activation=self.activation, batch_norm=self.batch_norm)
        return model.to(device)

    @staticmethod
    def loss(logits, y):
        return torch.nn.functional.cross_entropy(logits, y)


class ListSampler:
    def __init__(self, batches):
        self.batches = list(batches)

    def next(self):
        return self.batches.pop(0)


def make_batches(steps: int, n_opt: int, seed: int = 0, batch: int = 8):
    g = torch.Generator().manual_seed(seed)
    return [
        [
            (torch.randn(batch, 6, generator=g), torch.randint(0, 3, (batch,), generator=g))
            for _ in range(steps)
        ]
        for _ in range(n_opt)
    ]


def samplers_for(batches):
    return [ListSampler(b) for b in batches]


def naive_meta_grad(lopt, task, seeds, batches, steps, kind, order, regularizer=None):
    """The specification: ``meta_train.inner_loop.reference``'s plain autograd unroll, from the
    same start."""
    lopt.zero_grad(set_to_none=True)
    inner = init_inner_state(task, lopt, seeds, "cpu")
    cfg = UnrollConfig(steps, kind, order)
    value, _ = reference_meta_gradient(lopt, task, inner, samplers_for(batches), cfg, regularizer)
    return {n: p.grad.clone() for n, p in lopt.named_parameters()}, value


def toy_regularizer(updates, params):
    """Differentiable in the updates; touches every tensor and the parameter values."""
    return sum(
        0.3 * u.sum() ** 2 + (u * p).sum() for u, p in zip(updates.values(), params.values())
    )


def lopt_for(arch: str):
    torch.manual_seed(1)
    if arch == "lstm_extras":
        return create("lstm", output_scale=0.3, extra_inputs=("momentum", "adam", "param", "time"))
    if arch == "lstm":
        return create("lstm", output_scale=0.3)
    return create("mlp", hidden_sizes=(8,), step_mult=0.05, init_scale=1.0)


def ours(lopt, task, seeds, batches, cfg, regularizer=None):
    lopt.zero_grad(set_to_none=True)
    inner = init_inner_state(task, lopt, seeds, "cpu")
    res, new_inner = meta_step_gradient(lopt, task, inner, samplers_for(batches), cfg, regularizer)
    return {n: p.grad.clone() for n, p in lopt.named_parameters()}, res, new_inner


def assert_grads_close(got, want, rtol=2e-4, atol=1e-6):
    assert got.keys() == want.keys()
    for name in want:
        scale = want[name].abs().max().item()
        assert scale > 0, f"reference gradient of {name} is zero"
        torch.testing.assert_close(
            got[name],
            want[name],
            rtol=rtol,
            atol=atol + rtol * scale,
            msg=lambda m, name=name: f"{name}: {m}",
        )


@pytest.mark.parametrize("order", ["first", "second"])
@pytest.mark.parametrize("kind", sorted(META_LOSSES))
def test_matches_naive_unroll_all_meta_losses(order, kind):
    task, seeds, steps = TinyTask(), [3, 4], 5
    lopt = lopt_for("lstm")
    batches = make_batches(steps, len(seeds))
    want, want_loss = naive_meta_grad(lopt, task, seeds, batches, steps, kind, order)
    got, res, _ = ours(lopt, task, seeds, batches, UnrollConfig(steps, kind, order))
    assert_grads_close(got, want)
    assert res.meta_loss == pytest.approx(want_loss, rel=1e-5)
    assert res.inner_losses.shape == (2, steps)


@pytest.mark.parametrize("order", ["first", "second"])
@pytest.mark.parametrize("arch", ["lstm_extras", "mlp"])
@pytest.mark.parametrize("batch_norm", [False, True])
def test_matches_naive_unroll_architectures_and_batchnorm(order, arch, batch_norm):
    task = TinyTask(activation="relu", batch_norm=batch_norm)
    seeds, steps = [0, 1], 4
    lopt = lopt_for(arch)
    batches = make_batches(steps, len(seeds), seed=7)
    want, _ = naive_meta_grad(lopt, task, seeds, batches, steps, "log_sum", order)
    got, _, _ = ours(lopt, task, seeds, batches, UnrollConfig(steps, "log_sum", order))
    assert_grads_close(got, want)


@pytest.mark.parametrize("order", ["first", "second"])
def test_single_optimizee_and_regularizer(order):
    task, seeds, steps = TinyTask(), [5], 4
    lopt = lopt_for("lstm")
    batches = make_batches(steps, 1, seed=2)
    want, _ = naive_meta_grad(lopt, task, seeds, batches, steps, "sum", order, toy_regularizer)
    got, res, _ = ours(
        lopt, task, seeds, batches, UnrollConfig(steps, "sum", order), toy_regularizer
    )
    assert_grads_close(got, want)
    assert res.reg_loss != 0.0


@pytest.mark.parametrize(
    "cfg",
    [
        UnrollConfig(6, "log_sum", "first", checkpoint_every=2),
        UnrollConfig(6, "log_sum", "first", checkpoint_every=4),  # uneven last segment
        UnrollConfig(6, "log_sum", "first", chunk_size=7),
        UnrollConfig(6, "log_sum", "first", checkpoint_every=2, chunk_size=16),
        UnrollConfig(6, "log_sum", "second", checkpoint_every=1),
    ],
    ids=["ckpt2", "ckpt4", "chunk7", "ckpt2-chunk16", "second-ckpt"],
)
def test_checkpointing_and_chunking_give_the_same_gradient(cfg):
    task, seeds = TinyTask(), [0, 1]
    lopt = lopt_for("lstm_extras")
    batches = make_batches(cfg.length, 2, seed=3)
    plain = UnrollConfig(cfg.length, cfg.meta_loss, cfg.estimator)
    want, _, _ = ours(lopt, task, seeds, batches, plain)
    got, _, _ = ours(lopt, task, seeds, make_batches(cfg.length, 2, seed=3), cfg)
    assert_grads_close(got, want, rtol=1e-5)


@dataclass(frozen=True)
class TinyTask64(TinyTask):
    """``TinyTask`` in float64: a float64 run (float64 optimizees and learned optimizer)."""

    def make_model(self, seed: int = 0, device="cpu"):
        return super().make_model(seed, device).double()


@pytest.mark.parametrize(
    "arch, cfg",
    [
        ("lstm", UnrollConfig(5, "log_sum", "first")),
        ("mlp", UnrollConfig(5, "log_sum", "first")),
        ("lstm_extras", UnrollConfig(5, "log_sum", "first", checkpoint_every=2)),
        ("lstm", UnrollConfig(5, "log_sum", "second")),
    ],
    ids=["lstm-first", "mlp-first", "lstm-first-ckpt2", "lstm-second"],
)
def test_float64_runs_match_the_reference_to_float64_precision(arch, cfg):
    """Item 8: the estimators' buffers (losses, gradients, features) are in the run's dtype, so
    a float64 meta-gradient equals the reference's to ~1e-12, not to float32 rounding (~1e-6,
    what float32 loss/gradient buffers gave). The LSTM's native tape is float32-only: float64
    takes the autograd path."""
    task, seeds = TinyTask64(), [3, 4]
    lopt = lopt_for(arch).double()
    batches = [[(x.double(), y) for x, y in b] for b in make_batches(cfg.length, 2, seed=5)]
    inner = init_inner_state(task, lopt, seeds, "cpu")
    assert inner.params.dtype == torch.float64
    assert lopt.new_tape(cfg.length, inner.params) is None
    want, want_loss = naive_meta_grad(
        lopt, task, seeds, [list(b) for b in batches], cfg.length, cfg.meta_loss, cfg.estimator
    )
    got, res, new_inner = ours(lopt, task, seeds, [list(b) for b in batches], cfg)
    assert res.inner_losses.dtype == torch.float64
    assert new_inner.params.dtype == torch.float64
    assert_grads_close(got, want, rtol=1e-12, atol=0.0)
    assert res.meta_loss == pytest.approx(want_loss, rel=1e-12)


@pytest.mark.parametrize("arch", ["lstm", "lstm_extras", "mlp"])
@pytest.mark.parametrize("order", ["first", "second"])
def test_every_meta_parameter_gets_a_gradient(arch, order):
    """Pitfall 2: parameters hidden from the module (plain lists) would never train."""
    task, seeds, steps = TinyTask(), [0, 1], 4
    lopt = lopt_for(arch)
    got, _, _ = ours(lopt, task, seeds, make_batches(steps, 2), UnrollConfig(steps, "mean", order))
    assert set(got) == {n for n, _ in lopt.named_parameters()}
    for name, grad in got.items():
        assert torch.isfinite(grad).all(), name
        assert grad.abs().max() > 0, f"{name} got no meta-gradient"


@pytest.mark.parametrize("order", ["first", "second"])
def test_one_backward_per_truncation(order, monkeypatch):
    """Pitfall 1: the optimizer is differentiated once per truncation, not once per inner step.

    A hook on a meta-parameter fires once per backward pass that reaches it."""
    task, steps = TinyTask(), 6
    lopt = lopt_for("lstm")
    fired = []
    lopt.head.weight.register_hook(lambda g: fired.append(1))
    calls = []
    real_backward = torch.autograd.backward
    monkeypatch.setattr(
        torch.autograd, "backward", lambda *a, **k: (calls.append(1), real_backward(*a, **k))[1]
    )
    ours(lopt, task, [0, 1], make_batches(steps, 2), UnrollConfig(steps, "sum", order))
    assert len(fired) == 1
    assert len(calls) == 1


@pytest.mark.parametrize("order", ["first", "second"])
def test_no_graph_leaks_across_truncations(order):
    """Pitfall 3: the returned state is detached, so the next truncation's gradient does not
    depend on (or backpropagate into) the previous one: it equals a fresh start from the same
    state."""
    task, seeds, steps = TinyTask(), [0, 1], 3
    lopt = lopt_for("lstm_extras")
    batches = make_batches(2 * steps, 2, seed=9)
    samplers = samplers_for(batches)
    cfg = UnrollConfig(steps, "log_sum", order)
    inner = init_inner_state(task, lopt, seeds, "cpu")
    _, inner = meta_step_gradient(lopt, task, inner, samplers, cfg)
    for t in [inner.params, *inner.opt_state.values(), *inner.buffers.values()]:
        assert t.grad_fn is None and not t.requires_grad
    lopt.zero_grad(set_to_none=True)
    resumed = type(inner).from_state_dict(inner.state_dict(), task)
    _, after = meta_step_gradient(lopt, task, inner, samplers, cfg)
    first = {n: p.grad.clone() for n, p in lopt.named_parameters()}
    lopt.zero_grad(set_to_none=True)
    _, again = meta_step_gradient(
        lopt, task, resumed, samplers_for([b[steps:] for b in batches]), cfg
    )
    for n, p in lopt.named_parameters():
        torch.testing.assert_close(p.grad, first[n], rtol=0, atol=0)
    torch.testing.assert_close(after.params, again.params, rtol=0, atol=0)


def test_gradients_accumulate_and_average_over_the_meta_batch():
    task, steps = TinyTask(), 3
    lopt = lopt_for("mlp")
    batches = make_batches(steps, 2, seed=4)
    cfg = UnrollConfig(steps, "mean", "first")
    both, _, _ = ours(lopt, task, [0, 1], batches, cfg)
    one, _, _ = ours(lopt, task, [0], [batches[0]], cfg)
    two, _, _ = ours(lopt, task, [1], [batches[1]], cfg)
    for n in both:
        torch.testing.assert_close(both[n], (one[n] + two[n]) / 2, rtol=1e-5, atol=1e-8)


def higher_meta_grad(lopt, task, seeds, batches, steps, kind):
    """An oracle independent of ``torch.func`` and ``ParamSpec``: ``higher``'s functional model,
    parameters as plain lists, the second-order unroll written out, one backward."""
    lopt.zero_grad(set_to_none=True)
    fmodel = higher.monkeypatch(task.make_model(0), copy_initial_weights=True)
    inner = init_inner_state(task, lopt, seeds, "cpu")
    shapes = [p.shape for p in fmodel.parameters()]
    sizes = [s.numel() for s in shapes]
    thetas = [list(torch.split(inner.params[b].clone(), sizes)) for b in range(len(seeds))]
    thetas = [[t.reshape(s).requires_grad_(True) for t, s in zip(th, shapes)] for th in thetas]
    state, losses = dict(inner.opt_state), []
    for k in range(steps):
        step_losses, grads, flats = [], [], []
        for b, theta in enumerate(thetas):
            x, y = batches[b][k]
            loss = task.loss(fmodel(x, params=theta), y)
            g = torch.autograd.grad(loss, theta, create_graph=True)
            step_losses.append(loss)
            grads.append(torch.cat([gi.reshape(-1) for gi in g]))
            flats.append(torch.cat([t.reshape(-1) for t in theta]))
        upd, state = lopt.step(torch.stack(grads), torch.stack(flats), state)
        thetas = [
            [t + u.reshape(t.shape) for t, u in zip(theta, torch.split(upd[b], sizes))]
            for b, theta in enumerate(thetas)
        ]
        losses.append(torch.stack(step_losses))
    meta_loss(torch.stack(losses, dim=1), kind).mean().backward()
    return {n: p.grad.clone() for n, p in lopt.named_parameters()}


@pytest.mark.parametrize("arch", ["lstm_extras", "mlp"])
def test_second_order_matches_the_higher_oracle(arch):
    """``higher`` (a dev dependency) as a second, independent oracle for second order."""
    task, seeds, steps = TinyTask(), [3, 4], 4
    lopt = lopt_for(arch)
    want = higher_meta_grad(lopt, task, seeds, make_batches(steps, 2, seed=5), steps, "log_sum")
    cfg = UnrollConfig(steps, "log_sum", "second")
    got, _, _ = ours(lopt, task, seeds, make_batches(steps, 2, seed=5), cfg)
    assert_grads_close(got, want)
