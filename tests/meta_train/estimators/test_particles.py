"""Particles with per-particle weights stepping as one batch equal a loop over particles."""

from __future__ import annotations

import copy

import pytest
import torch

import l2o.optimizers as lo
from l2o.optimizers.base import ParamSpec
from meta_train.estimators import particles as pt


def _perturbed(lopt, particles: int, scale: float = 0.05):
    spec = pt.meta_spec(lopt)
    phi = pt.flat_meta_params(lopt)
    gen = torch.Generator().manual_seed(0)
    flat = phi + scale * torch.randn(particles, phi.numel(), generator=gen)
    return spec, flat


def _loop_reference(lopt, spec, flat, grads_fn, params, steps, param_spec=None, horizons=None):
    """Each particle alone: a copy of the optimizer loaded with its weights, ``lopt.step``
    (``horizons``: each particle's run length, for optimizers that take one)."""
    out = []
    for p in range(flat.shape[0]):
        net = copy.deepcopy(lopt)
        with torch.no_grad():
            for name, value in spec.unflatten(flat[p]).items():
                dict(net.named_parameters())[name].copy_(value)
        theta = params[p : p + 1].clone()
        extra = {} if horizons is None else {"total_steps": horizons[p]}
        state = net.init_state(theta, param_spec, **extra)
        with torch.no_grad():
            for k in range(steps):
                upd, state = net.step(grads_fn(theta, k), theta, state)
                theta = theta + upd
        out.append(theta[0])
    return torch.stack(out)


def _batched_particles(lopt, spec, flat, grads_fn, params, steps, state, param_spec=None):
    """All particles as one batch from ``state``: ``observe``, then ``particle_core`` with each
    particle's weights (the path ES/PES take)."""
    weights = pt.particle_weights(spec, flat)
    pdims = pt.particle_dims(lopt, params.shape[-1], param_spec, params.device)
    theta = params
    with torch.no_grad():
        for k in range(steps):
            features, state = lopt.observe(grads_fn(theta, k), theta, state)
            upd, state = pt.particle_core(lopt, weights, features, state, pdims)
            theta = theta + upd
    return theta


@pytest.mark.parametrize(
    "arch, kwargs",
    [
        ("mlp", {}),
        ("lstm", {}),
        ("general", {}),
        ("general", {"nominal": "lars"}),
        ("general", {"nominal": "lars", "factored": True}),
        ("general", {"nominal": "orthogonal"}),
        ("general", {"nominal": "orthogonal", "adaptive_step": True}),
    ],
)
def test_vectorized_particles_equal_a_loop_over_particles(arch, kwargs):
    """Also ``general``: it subclasses the MLP optimizer but has its own ``core``, so it must
    not take the plain MLP's batched path (and ``lars`` reads per-tensor statistics of the
    parameters in ``observe``; ``factored`` keeps row and column accumulators per particle)."""
    torch.manual_seed(0)
    lopt = lo.create(arch, **kwargs)
    particles, n, steps = 3, 37, 4
    param_spec = ParamSpec(("w", "b"), ((4, 8), (5,)))  # a matrix and a vector: 37 coordinates
    spec, flat = _perturbed(lopt, particles)
    params = torch.randn(particles, n)
    target = torch.randn(n)

    def grads_fn(theta, k):  # a deterministic gradient field: ∇ of ½|θ − target|² · (k + 1)
        return (theta - target) * (k + 1)

    expected = _loop_reference(lopt, spec, flat, grads_fn, params, steps, param_spec)
    state = lopt.init_state(params, param_spec)
    theta = _batched_particles(lopt, spec, flat, grads_fn, params, steps, state, param_spec)
    torch.testing.assert_close(theta, expected, rtol=1e-5, atol=1e-6)
    assert not theta.requires_grad


def test_particles_at_different_run_lengths_keep_their_own_schedule():
    """``general``'s cosine base schedule and horizon scaling per particle (sampled horizons
    give each task its own): ``core`` under vmap must not read another particle's step
    counter or horizon."""
    torch.manual_seed(0)
    lopt = lo.create("general", nominal="lars", base_schedule="cosine", horizon_power=0.5)
    particles, n, steps, horizons = 3, 11, 5, [4, 6, 9]
    spec, flat = _perturbed(lopt, particles)
    params = torch.randn(particles, n)

    def grads_fn(theta, k):
        return torch.sin(theta * (k + 1))

    expected = _loop_reference(lopt, spec, flat, grads_fn, params, steps, horizons=horizons)
    state = lopt.init_state(params)
    state["horizon"] = torch.tensor(horizons, dtype=state["horizon"].dtype)
    theta = _batched_particles(lopt, spec, flat, grads_fn, params, steps, state)
    torch.testing.assert_close(theta, expected, rtol=1e-5, atol=1e-6)


def test_particle_dims_find_each_keys_optimizee_dim():
    lstm = lo.create("lstm")
    dims = pt.particle_dims(lstm, 5, None, torch.device("cpu"))
    assert dims == {"h": 1, "c": 1, "t": 0}
    mlp = lo.create("mlp")
    dims = pt.particle_dims(mlp, 5, None, torch.device("cpu"))
    assert dims["m"] == 0 and dims["v"] == 0 and dims["segment_ids"] is None


def test_population_restart_and_state_dict_round_trip():
    lopt = lo.create("lstm")
    params = torch.randn(2, 6)
    state = lopt.init_state(params)
    tasks = pt.particle_tasks(2, 1, "cpu")  # particles: task 0, task 1, task 0, task 1
    pop = pt.Population.replicate(lopt, params, {}, state, tasks)
    pop.params = pop.params + 1.0
    pop.opt_state = {k: v + 1.0 for k, v in pop.opt_state.items()}
    fresh = pt.Population.replicate(lopt, params, {}, state, tasks)
    mask = torch.tensor([False, True, False, True])  # task 1 restarts
    pop.restart(mask, fresh)
    torch.testing.assert_close(pop.params[1], params[1])
    torch.testing.assert_close(pop.params[0], params[0] + 1.0)
    assert float(pop.opt_state["h"][:, 3].abs().sum()) == 0.0
    assert float(pop.opt_state["t"][2]) == 1.0
    again = pt.Population.from_state_dict(pop.state_dict(), pop.pdims, "cpu")
    for key, value in pop.opt_state.items():
        assert torch.equal(again.opt_state[key], value)
    assert torch.equal(again.params, pop.params)


def test_antithetic_layout():
    phi = torch.zeros(3)
    eps = torch.ones(2, 3)
    assert pt.antithetic_weights(phi, eps).tolist() == [
        [1.0] * 3,
        [1.0] * 3,
        [-1.0] * 3,
        [-1.0] * 3,
    ]
    assert pt.particle_tasks(2, 2, "cpu").tolist() == [0, 1, 0, 1, 0, 1, 0, 1]


def test_generic_vmap_path_equals_the_batched_mlp():
    """Architectures without a batched path run under ``vmap(functional_call)``: on the MLP
    both give the same updates."""
    torch.manual_seed(1)
    lopt = lo.create("mlp")
    spec, flat = _perturbed(lopt, 3)
    weights = pt.particle_weights(spec, flat)
    params = torch.randn(3, 11)
    features, state = lopt.observe(torch.randn(3, 11), params, lopt.init_state(params))
    pdims = pt.particle_dims(lopt, 11, None, params.device)
    with torch.no_grad():
        generic, _ = pt._vmapped_core(lopt, weights, features, state, pdims)
        batched, _ = pt._mlp_core(lopt, weights, features, state)
    torch.testing.assert_close(generic, batched, rtol=1e-5, atol=1e-7)


def _fused_vs_torch(lopt, params_scale: float = 1.0, bad: float | None = None):
    """Four perturbed particles of ``lopt`` on a 4-tensor model (an MLP 30-8-5 with biases),
    three steps through ``unroll_particles`` with the fused C++ step and on the PyTorch path."""
    import meta_train.estimators.particles as mod

    spec = ParamSpec.from_named(
        [
            ("w1", torch.zeros(8, 30)),
            ("b1", torch.zeros(8)),
            ("w2", torch.zeros(5, 8)),
            ("b2", torch.zeros(5)),
        ]
    )
    n = spec.numel
    gen = torch.Generator().manual_seed(3)
    params = torch.randn(2, n, generator=gen) * params_scale
    target = torch.randn(n, generator=gen)

    class Quadratic:  # loss ½|θ − target|²·w per task, gradient (θ − target)·w
        def loss_and_grad(self, flat, buffers, x, y):
            grad = (flat - target) * x[:, :1]
            if bad is not None:
                grad[0, 7] = bad
            return 0.5 * ((flat - target) ** 2 * x[:, :1]).sum(1), grad

    mspec, flat = _perturbed(lopt, 4)
    weights = pt.particle_weights(mspec, flat)
    state = lopt.init_state(params, spec)
    batches = iter([(torch.full((2, 1), float(k + 1)), torch.zeros(2)) for k in range(3)] * 2)
    out = {}
    for fused in (True, False):
        pop = pt.Population.replicate(lopt, params, {}, state, pt.particle_tasks(2, 1, "cpu"))
        before = pop.params.clone()
        if fused:
            step = pt.NativeMLPStep.for_population(lopt, weights, pop)
            assert step is not None, "the C++ kernels must build here (a compiler and ninja)"
        else:
            original = mod.NativeMLPStep.for_population
            mod.NativeMLPStep.for_population = classmethod(lambda cls, *a: None)
        try:
            losses, finite = pt.unroll_particles(
                lopt, Quadratic(), weights, pop, lambda: next(batches), 3
            )
        finally:
            if not fused:
                mod.NativeMLPStep.for_population = original
        assert torch.equal(
            before,
            pt.Population.replicate(lopt, params, {}, state, pt.particle_tasks(2, 1, "cpu")).params,
        )
        out[fused] = (pop, losses, finite)
    return out


@pytest.fixture
def big_rows(monkeypatch):
    """Let the fused path run on a small model (it normally waits for 2048 rows)."""
    import meta_train.estimators.particles as mod

    monkeypatch.setattr(mod, "NATIVE_MIN_ROWS", 1)


@pytest.mark.parametrize("per_tensor_norm", [True, False])
def test_fused_native_mlp_step_equals_the_pytorch_path(big_rows, per_tensor_norm):
    lopt = lo.create("mlp", per_tensor_norm=per_tensor_norm)
    out = _fused_vs_torch(lopt)
    (pop_f, loss_f, fin_f), (pop_t, loss_t, fin_t) = out[True], out[False]
    torch.testing.assert_close(loss_f, loss_t)
    torch.testing.assert_close(pop_f.params, pop_t.params, rtol=1e-5, atol=1e-6)
    for key in ("m", "v", "t"):
        torch.testing.assert_close(pop_f.opt_state[key], pop_t.opt_state[key])
    assert fin_f.all() and fin_t.all()


def test_fused_native_mlp_step_keeps_the_starting_state(big_rows):
    """The estimators go back to a truncation's starting state: the fused step works on
    copies (checked inside ``_fused_vs_torch``), and a NaN gradient leaves the particle
    non-finite on both paths."""
    out = _fused_vs_torch(lo.create("mlp"), bad=float("nan"))
    for fused in (True, False):
        pop, _, finite = out[fused]
        assert not finite.all(), fused
        assert torch.isnan(pop.params[0]).any()
