"""The ``general`` learned optimizer: an untrained one is Adam (SGD + momentum with
``nominal="sgdm"``, LARS momentum with ``"lars"``); the base schedule; deployment equals the flat
step; progress features follow the horizon; checkpoints round-trip; meta-gradients reach every
part."""

from __future__ import annotations

import math

import pytest
import torch
from flat_step_check import assert_deployment_equals_flat_step
from torch import nn

from l2o.optimizers import (
    LearnedOptimizer,
    ParamSpec,
    create,
    load_learned_optimizer,
    save_learned_optimizer,
)
from l2o.optimizers.features import progress_features


def model_and_batch(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(32, 5, generator=g)
    y = x @ torch.randn(5, 1, generator=g)
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 1)), x, y


def run_pair(opt, ref_opt_fn, steps=20, **close):
    """Train the same model with ``opt`` (a LearnedOptimizer factory) and a torch optimizer."""
    model, x, y = model_and_batch()
    ref, _, _ = model_and_batch()
    pairs = ((model, opt(model.parameters())), (ref, ref_opt_fn(ref.parameters())))
    for _ in range(steps):
        for m, o in pairs:
            o.zero_grad()
            nn.functional.mse_loss(m(x), y).backward()
            o.step()
    for p, q in zip(model.parameters(), ref.parameters()):
        torch.testing.assert_close(p, q, **close)


def trained_like(**kwargs):
    """A ``general`` optimizer with every learned part away from its initial value."""
    torch.manual_seed(1)
    net = create("general", **kwargs)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return net


def test_untrained_general_is_adam():
    run_pair(
        lambda ps: LearnedOptimizer(ps, create("general", nominal_lr=0.01)),
        lambda ps: torch.optim.Adam(ps, lr=0.01),
        rtol=1e-4,
        atol=1e-5,  # float rounding only
    )


@pytest.mark.parametrize("normalize_output", [True, False])
def test_untrained_general_sgdm_is_sgd_with_momentum(normalize_output):
    net = create("general", nominal="sgdm", sgdm_lr=0.05, normalize_output=normalize_output)
    run_pair(
        lambda ps: LearnedOptimizer(ps, net),
        lambda ps: torch.optim.SGD(ps, lr=0.05, momentum=0.9),
        rtol=1e-4,
        atol=1e-5,
    )


def lars_cosine(params, lr, horizon, factor=1.0, momentum=0.9, boost=0.0, boost_steps=1.0):
    """The reference for ``nominal="lars"``: ``baselines``' LARS momentum (checked against a
    per-tensor loop in ``tests/baselines/test_lars.py``) with lr · factor · ½(1 + cos(π k/T)) ·
    (1 + boost · exp(−k / boost_steps)) after k steps (the evaluation's ``lars_cosine`` when
    ``factor`` is 1 and ``boost`` 0)."""
    import baselines

    opt = baselines.create("lars", params, lr=lr, momentum=momentum)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda k: (
            factor
            * 0.5
            * (1 + math.cos(math.pi * k / horizon))
            * (1 + boost * math.exp(-k / boost_steps))
        ),
    )
    opt.register_step_post_hook(lambda *_: sched.step())
    return opt


@pytest.mark.parametrize("normalize_output", [True, False])
def test_untrained_general_lars_is_trust_ratio_momentum_with_cosine(normalize_output):
    """A run of 40 steps for an optimizer meta-trained at 10: cosine over 40, lr halved by
    ``horizon_power`` 0.5 (√(40/10) = 2); 20 steps checked, through the deployment path."""
    net = create(
        "general",
        nominal="lars",
        lars_lr=0.05,
        base_schedule="cosine",
        horizon_power=0.5,
        total_steps=10,
        normalize_output=normalize_output,
    )
    run_pair(
        lambda ps: LearnedOptimizer(ps, net, total_steps=40),
        lambda ps: lars_cosine(ps, 0.05, horizon=40, factor=(40 / 10) ** -0.5),
        rtol=1e-4,
        atol=1e-5,
    )


def test_untrained_general_lars_is_the_lars_cosine_baseline():
    """The shipped recipe's nominal term, untrained, is ``baselines``' LARS momentum with a
    cosine decay over the horizon (the evaluation's ``lars_cosine``)."""
    net = create("general", nominal="lars", lars_lr=0.04, base_schedule="cosine", total_steps=20)
    run_pair(
        lambda ps: LearnedOptimizer(ps, net),
        lambda ps: lars_cosine(ps, 0.04, horizon=20),
        rtol=1e-4,
        atol=1e-5,
    )


@pytest.mark.parametrize("normalize_output", [True, False])
def test_untrained_general_lars_with_an_early_boost_is_boosted_lars_cosine(normalize_output):
    """``early_boost`` multiplies the step size by 1 + a·exp(−(t−1)/τ), and ``sgdm_beta`` is the
    momentum of ``lars`` (the shipped recipe's 0.5)."""
    net = create(
        "general",
        nominal="lars",
        lars_lr=0.04,
        base_schedule="cosine",
        sgdm_beta=0.5,
        early_boost=5.0,
        early_boost_steps=4.0,
        total_steps=20,
        normalize_output=normalize_output,
    )
    run_pair(
        lambda ps: LearnedOptimizer(ps, net),
        lambda ps: lars_cosine(ps, 0.04, horizon=20, momentum=0.5, boost=5.0, boost_steps=4.0),
        rtol=1e-4,
        atol=1e-5,
    )


def orthogonal_reference(params, lr, horizon, momentum, floor=1e-2):
    """The reference for ``nominal="orthogonal"``, per tensor in a loop: an EMA momentum ``m``;
    on a matrix the Nesterov momentum ``β m + (1-β) g`` through ``newton_schulz``, on a vector
    ``m`` itself, rescaled to RMS ``max(RMS(p), floor)``; lr · ½(1 + cos(π k/T))."""
    from l2o.optimizers.general import newton_schulz

    params = list(params)
    moms = [torch.zeros_like(p) for p in params]

    class Reference:
        k = 0

        def zero_grad(self):
            for p in params:
                p.grad = None

        @torch.no_grad()
        def step(self):
            step = lr * 0.5 * (1 + math.cos(math.pi * self.k / horizon))
            for p, m in zip(params, moms):
                m.lerp_(p.grad, 1 - momentum)
                nesterov = momentum * m + (1 - momentum) * p.grad
                d = newton_schulz(nesterov) if p.dim() >= 2 else m
                scale = max(float(p.pow(2).mean().sqrt()), floor) / float(d.pow(2).mean().sqrt())
                p.sub_(step * scale * d)
            self.k += 1

    return Reference()


@pytest.mark.parametrize("normalize_output", [True, False])
def test_untrained_general_orthogonal_is_lars_with_muons_direction_on_matrices(normalize_output):
    net = create(
        "general",
        nominal="orthogonal",
        lars_lr=0.04,
        sgdm_beta=0.5,
        base_schedule="cosine",
        total_steps=20,
        normalize_output=normalize_output,
    )
    run_pair(
        lambda ps: LearnedOptimizer(ps, net),
        lambda ps: orthogonal_reference(ps, 0.04, horizon=20, momentum=0.5),
        rtol=1e-4,
        atol=1e-5,
    )


def test_newton_schulz_is_close_to_the_polar_factor_batched_and_keeps_nans():
    from l2o.optimizers.general import newton_schulz

    g = torch.randn(3, 12, 40, generator=torch.Generator().manual_seed(0))
    for matrix in (g, g.transpose(-2, -1)):  # wide and tall
        ortho = newton_schulz(matrix)
        sv = torch.linalg.svdvals(ortho)
        assert sv.min() > 0.6 and sv.max() < 1.25, sv
        u, _, vh = torch.linalg.svd(matrix, full_matrices=False)
        cosine = (ortho * (u @ vh)).sum((-2, -1)) / (ortho.norm(dim=(-2, -1)) * math.sqrt(12))
        assert (cosine > 0.95).all(), cosine
        torch.testing.assert_close(ortho[1], newton_schulz(matrix[1]))
    bad = g.clone()
    bad[0, 3, 5] = float("nan")
    assert torch.isnan(newton_schulz(bad)[0]).all() and torch.isfinite(newton_schulz(bad)[1:]).all()


def test_orthogonal_flat_step_orthogonalizes_each_matrix_of_the_spec():
    """Over the flat vector of a whole model: each weight matrix's nominal direction has equal
    singular values (up to Newton–Schulz), each vector's is the momentum; both at the
    tensor's RMS; one layout row per matrix, a convolution viewed as ``[out, in·kh·kw]``."""
    model = nn.Sequential(nn.Conv2d(2, 4, 3), nn.Flatten(), nn.Linear(4 * 3 * 3, 6))
    spec = ParamSpec.from_module(model)
    flat = spec.flatten(dict(model.named_parameters())).detach()
    net = create("general", nominal="orthogonal", sgdm_beta=0.5)
    state = net.init_state(flat, spec)
    assert state["matrix_layout"].tolist() == [[0, 4, 18], [76, 6, 36]]
    assert state["matrix_layout"].device.type == "cpu"
    grads = torch.randn_like(flat)
    features, _ = net.observe(grads, flat, state)
    nominal = features[..., -2]
    for (name, p), offset in zip(model.named_parameters(), spec.offsets):
        d = nominal[offset : offset + p.numel()]
        p_rms = max(float(p.detach().pow(2).mean().sqrt()), net.lars_floor)
        torch.testing.assert_close(float(d.pow(2).mean().sqrt()), p_rms, rtol=1e-5, atol=0)
        if p.dim() >= 2:
            sv = torch.linalg.svdvals(d.view(p.shape[0], -1))
            assert sv.max() / sv.min() < 2.0, (name, sv)
        else:  # the first step's momentum is (1-β) g
            g = grads[offset : offset + p.numel()]
            torch.testing.assert_close(d / d.norm(), g / g.norm())


def test_early_boost_factor_and_bad_values():
    net = create("general", early_boost=3.0, early_boost_steps=10.0, total_steps=100)
    t = torch.tensor([1.0, 11.0, 101.0])
    factor = torch.exp(net.log_base_schedule(t, torch.full_like(t, 100.0)))
    torch.testing.assert_close(factor, 1 + 3.0 * torch.exp(-(t - 1) / 10.0))
    for bad in ({"early_boost": -1.0}, {"early_boost": math.inf}, {"early_boost_steps": 0.0}):
        with pytest.raises(ValueError, match="early_boost"):
            create("general", **bad)


def test_lars_step_is_relative_to_each_tensors_size():
    """One step from rest moves every tensor by ``lars_lr`` × its RMS (the floor for zeros),
    whatever the gradient's scale."""
    net = create("general", nominal="lars", lars_lr=0.05, learned_schedule=False)
    spec = ParamSpec(("w", "b"), ((3, 4), (5,)))
    params = torch.cat((3.0 * torch.randn(1, 12), torch.zeros(1, 5)), dim=1)
    grads = torch.randn_like(params) * torch.cat((torch.full((12,), 1e-4), torch.full((5,), 1e3)))
    upd, _ = net.step(grads, params, net.init_state(params, spec))
    w, b = spec.unflatten(upd[0].detach()).values()
    w_rms = float(params[0, :12].square().mean().sqrt())
    torch.testing.assert_close(float(w.square().mean().sqrt()), 0.05 * w_rms)
    torch.testing.assert_close(float(b.square().mean().sqrt()), 0.05 * 1e-2)


def test_base_schedule_cosine_and_horizon_power():
    net = create("general", base_schedule="cosine", horizon_power=0.5, total_steps=100)
    t = torch.tensor([1.0, 201.0, 400.0, 401.0, 500.0])
    factor = torch.exp(net.log_base_schedule(t, torch.full_like(t, 400.0)))
    cosine = 0.5 * (1 + torch.cos(math.pi * (t - 1) / 400).clamp(min=-1.0))
    want = 0.5 * cosine  # (400 / 100) ** -0.5
    torch.testing.assert_close(factor[:4], want[:4])
    assert factor[-1] < 1e-10  # past the horizon: no more steps
    flat = create("general", total_steps=100)  # the defaults: constant, no horizon scaling
    assert torch.equal(flat.log_base_schedule(t, torch.full_like(t, 400.0)), torch.zeros(5))


def test_core_over_a_sequence_equals_step_by_step_with_a_base_schedule():
    """``core`` on T steps of features at once (the first-order replay) equals T single steps:
    the base schedule travels in the features, not in the state's step counter."""
    net = trained_like(nominal="lars", base_schedule="cosine", horizon_power=0.5, total_steps=8)
    params = torch.randn(2, 9)
    state = net.init_state(params, total_steps=12)
    feats, singles = [], []
    for _ in range(5):
        f, state = net.observe(torch.randn(2, 9), params, state)
        feats.append(f)
        singles.append(net.core(f.unsqueeze(0), state)[0][0])
    together, _ = net.core(torch.stack(feats), state)
    torch.testing.assert_close(together, torch.stack(singles))


def test_untrained_general_mix_is_the_weighted_sum():
    """``mix`` at ``mix_init`` w: w·Adam(lr_a) + (1−w)·SGDm(lr_s) per step (one step, where
    both are exact: Adam's first step is lr·sign(g), SGD's lr·g)."""
    net = create("general", nominal="mix", nominal_lr=0.01, sgdm_lr=0.1, mix_init=0.25)
    g = torch.tensor([[0.5, -2.0, 3.0]])
    params = torch.zeros(1, 3)
    upd, _ = net.step(g, params, net.init_state(params))
    want = -(0.25 * 0.01 * g / (g.abs() + 1e-8) + 0.75 * 0.1 * g)
    torch.testing.assert_close(upd, want)


@pytest.mark.parametrize("nominal", ["adam", "sgdm", "lars", "orthogonal", "mix", "none"])
@pytest.mark.parametrize("normalize_output", [True, False])
@pytest.mark.parametrize("chunk_size", [7, 10_000])
def test_deployment_equals_the_flat_step(nominal, normalize_output, chunk_size):
    _deployment_vs_flat_step(nominal, normalize_output, chunk_size, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("nominal", ["adam", "sgdm", "lars", "orthogonal", "mix", "none"])
@pytest.mark.parametrize("normalize_output", [True, False])
def test_deployment_through_the_fused_kernel_equals_the_flat_step(
    monkeypatch, nominal, normalize_output
):
    """The C++ path (normally for tensors of 2048+ coordinates; here forced on this small
    model), including the dedicated ``sgdm`` step without output normalization."""
    import l2o.optimizers.mlp as mlp_module
    from l2o.optimizers.native import native_kernels

    assert native_kernels() is not None, "the C++ kernels must build here (a compiler, ninja)"
    monkeypatch.setattr(mlp_module, "NATIVE_MIN_ROWS", 1)
    _deployment_vs_flat_step(nominal, normalize_output, 10_000, rtol=1e-5, atol=1e-6)


def _deployment_vs_flat_step(nominal, normalize_output, chunk_size, rtol, atol, **kwargs):
    net = trained_like(normalize_output=normalize_output, total_steps=5, nominal=nominal, **kwargs)
    model, x, y = model_and_batch()
    assert_deployment_equals_flat_step(net, model, x, y, chunk_size, 4, rtol, atol)


def test_output_normalization_gives_unit_rms_per_tensor():
    net = trained_like(nominal=False, learned_schedule=False, nominal_lr=1.0)
    with torch.no_grad():
        net.residual_gain.fill_(1.0)
    spec = ParamSpec(("a", "b"), ((3, 4), (5,)))
    params = torch.randn(2, spec.numel)
    upd, _ = net.step(torch.randn_like(params), params, net.init_state(params, spec))
    for part in spec.unflatten(upd).values():
        rms = part.reshape(2, -1).square().mean(-1).sqrt()
        torch.testing.assert_close(rms, torch.ones(2))


def test_progress_features_follow_the_horizon():
    t = torch.tensor([0.0, 50.0, 100.0, 400.0])
    f = progress_features(t, torch.full_like(t, 100.0))
    assert f[:, 0].tolist() == [0.0, 0.5, 1.0, 1.0]  # clamped past the horizon
    net = create("general", total_steps=100)
    params = torch.zeros(1, 3)
    assert net.init_state(params)["horizon"].item() == 100.0
    state = net.init_state(params, total_steps=1000)
    assert state["horizon"].item() == 1000.0
    feats, _ = net.observe(torch.ones(1, 3), params, state)
    glob = feats[0, 0, net.num_normalized_features : net.num_net_inputs]
    torch.testing.assert_close(glob[-4:], progress_features(torch.ones(()), state["horizon"][0]))
    assert create("general", progress=False).num_net_inputs == net.num_net_inputs - 4


def test_sgdm_residual_has_the_nominal_steps_size_per_tensor():
    """With ``sgdm`` and gain 1 the residual moves each tensor as far as the nominal step."""
    net = trained_like(nominal="sgdm", learned_schedule=False)
    with torch.no_grad():
        net.residual_gain.fill_(1.0)
    spec = ParamSpec(("a", "b"), ((3, 4), (5,)))
    params = torch.randn(2, spec.numel)
    grads = torch.randn_like(params) * torch.cat((torch.full((12,), 0.01), torch.full((5,), 10.0)))
    upd, _ = net.step(grads, params, net.init_state(params, spec))
    nominal = -0.3 * grads  # the first step of SGD + momentum
    for part, nom in zip(spec.unflatten(upd - nominal).values(), spec.unflatten(nominal).values()):
        rms = lambda z: z.reshape(2, -1).square().mean(-1).sqrt()
        torch.testing.assert_close(rms(part), rms(nom))


def test_old_boolean_nominal_configs_load():
    assert create("general", nominal=True).config()["nominal"] == "adam"
    assert create("general", nominal=False).config()["nominal"] == "none"
    assert create("general", nominal=False).residual_gain.item() == 1.0


@pytest.mark.parametrize("nominal", ["adam", "mix", "lars", "orthogonal"])
def test_checkpoint_round_trip(tmp_path, nominal):
    net = trained_like(hidden_sizes=[4, 4], nominal_lr=3e-3, total_steps=50, nominal=nominal)
    path = save_learned_optimizer(tmp_path / "g.pt", net)
    back, _ = load_learned_optimizer(path, expected_arch="general")
    assert back.config() == net.config()
    params = torch.randn(2, 10)
    g = torch.randn(2, 10)
    a, _ = net.step(g, params, net.init_state(params))
    b, _ = back.step(g, params, back.init_state(params))
    torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize(
    "kwargs",
    [{"nominal": "adam"}, {"nominal": "mix"}, {"nominal": "lars"}, {"adaptive_step": True}],
)
def test_meta_gradient_reaches_gain_schedule_and_network(kwargs):
    """Every meta-parameter, ``adaptive_step``'s gain and target included (through the log
    factor that ``core`` carries over the sequence)."""
    net = create("general", **kwargs)
    with torch.no_grad():
        net.residual_gain.fill_(0.5)
        if net.adaptive_step:
            net.step_gain.fill_(0.1)
    params = torch.randn(1, 20)
    state = net.init_state(params)
    feats = []
    for _ in range(3):
        f, state = net.observe(torch.randn(1, 20), params, state)
        feats.append(f)
    upd, _ = net.core(torch.stack(feats), state)
    (upd * torch.randn_like(upd)).sum().backward()
    for name, p in net.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(adam_beta1=0.95), "adam_beta1"),
        (dict(total_steps=0), "total_steps"),
        (dict(nominal_lr=float("nan")), "nominal_lr"),
        (dict(adam_eps=0.0), "adam_eps"),
        (dict(nominal="lion"), "nominal"),
        (dict(sgdm_beta=0.8), "sgdm_beta"),
        (dict(sgdm_lr=-1.0), "sgdm_lr"),
        (dict(mix_init=1.0), "mix_init"),
        (dict(lars_lr=0.0), "lars_lr"),
        (dict(lars_floor=-1e-2), "lars_floor"),
        (dict(base_schedule="linear"), "base_schedule"),
        (dict(horizon_power=float("inf")), "horizon_power"),
    ],
)
def test_bad_configs_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        create("general", **kwargs)


@pytest.mark.parametrize(
    "name, nominal, adaptive",
    [
        ("general", "orthogonal", False),
        ("general-v2", "lars", False),
        ("general-v1", "lars", False),
    ],
)
def test_shipped_generals_have_their_nominal_terms_and_step(name, nominal, adaptive):
    model, x, y = model_and_batch()
    opt = LearnedOptimizer.from_pretrained(name, model.parameters())
    assert opt.net.config()["nominal"] == nominal
    assert opt.net.config()["adaptive_step"] is adaptive
    assert opt.net.config()["base_schedule"] == "cosine"
    before = [p.detach().clone() for p in model.parameters()]
    nn.functional.mse_loss(model(x), y).backward()
    opt.step()
    assert all(not torch.equal(p, q) for p, q in zip(model.parameters(), before))


# ------------------------------------------------------------------------------------------------
# factored second moments (issue 13: Adafactor's row / column accumulators as features)

FACTORED_SPEC = ParamSpec(("w", "conv", "b"), ((3, 4), (2, 3, 2, 2), (5,)))


def _factored_reference(grads_seq, decay):
    """``v̂`` per tensor written directly: row / column EMAs of the mean ``g²`` of each matrix
    ``[shape[0], rest]``, ``r_i c_j / mean(r)``; the plain EMA of ``g²`` for the 1-D tensor."""
    lead = grads_seq[0].shape[:-1]
    out = {}
    for name, shape in zip(FACTORED_SPEC.names, FACTORED_SPEC.shapes):
        gs = [FACTORED_SPEC.unflatten(g)[name].double() for g in grads_seq]
        if len(shape) < 2:
            v = torch.zeros_like(gs[0])
            for g in gs:
                v = decay * v + (1 - decay) * g * g
            out[name] = v
            continue
        r = torch.zeros(*lead, shape[0], dtype=torch.float64)
        c = torch.zeros(*lead, math.prod(shape[1:]), dtype=torch.float64)
        for g in gs:
            g2 = g.reshape(*lead, shape[0], -1).square()
            r = decay * r + (1 - decay) * g2.mean(-1)
            c = decay * c + (1 - decay) * g2.mean(-2)
        vhat = r.unsqueeze(-1) * c.unsqueeze(-2) / r.mean(-1)[..., None, None]
        out[name] = vhat.reshape(*lead, *shape)
    return FACTORED_SPEC.flatten(out, batch_dims=len(lead))


@pytest.mark.parametrize("factored_decay", [None, 0.5])
def test_factored_estimate_equals_a_per_tensor_reference(factored_decay):
    """Leading dims [2, 3] (tasks × particles), several steps of gradients of every scale."""
    net = create("general", factored=True, rms_decay=0.9, factored_decay=factored_decay)
    decay = 0.9 if factored_decay is None else factored_decay
    assert net.config()["factored_decay"] == decay
    params = torch.randn(2, 3, FACTORED_SPEC.numel)
    state = net.init_state(params, FACTORED_SPEC)
    grads_seq = []
    for k in range(4):
        g = torch.randn_like(params) * 10.0 ** (k - 2)
        grads_seq.append(g)
        feats, state = net.observe(g, params, state)
        vhat = net.factored_v(state)
        want = _factored_reference(grads_seq, decay)
        if factored_decay is not None:  # the 1-D tensor keeps v, whose decay is rms_decay
            want[..., 36:] = _factored_reference(grads_seq, 0.9)[..., 36:]
        torch.testing.assert_close(vhat, want.float(), rtol=1e-5, atol=0)
    # the first factored feature is g·rsqrt(v̂ + ε), normalized per tensor
    f1 = net.num_normalized_features - len(net.momentum_decays) - 2
    raw = g * torch.rsqrt(vhat + 1e-8)
    for lo, hi in ((0, 12), (12, 36), (36, 41)):
        part = raw[..., lo:hi]
        normed = part * torch.rsqrt(part.double().square().mean(-1, keepdim=True) + 1e-5).float()
        torch.testing.assert_close(feats[..., lo:hi, f1], normed, rtol=1e-5, atol=1e-6)


def test_factored_adds_features_and_unfactored_is_unchanged():
    plain, fact = create("general"), create("general", factored=True)
    assert fact.num_normalized_features == plain.num_normalized_features + 6
    assert fact.num_features == plain.num_features + 6
    assert "row" not in plain.init_state(torch.zeros(1, 5))
    state = fact.init_state(torch.zeros(1, 5))  # no spec: one unfactored tensor, v̂ = v
    _, state = fact.observe(torch.randn(1, 5), torch.zeros(1, 5), state)
    assert torch.equal(fact.factored_v(state), state["v"])


@pytest.mark.parametrize("nominal", ["adam", "lars"])
@pytest.mark.parametrize("chunk_size", [7, 10_000])
def test_factored_deployment_equals_the_flat_step(nominal, chunk_size):
    net = trained_like(total_steps=5, nominal=nominal, factored=True)
    model, x, y = model_and_batch()
    assert_deployment_equals_flat_step(net, model, x, y, chunk_size, 4, 1e-6, 1e-7)


def test_factored_deployment_state_is_per_tensor_and_round_trips():
    net = trained_like(factored=True, nominal="lars")
    model, x, y = model_and_batch()
    opt = LearnedOptimizer(model.parameters(), net)
    nn.functional.mse_loss(model(x), y).backward()
    opt.step()
    w = model[0].weight
    assert opt.state[w]["row"].shape == (9,) and opt.state[w]["col"].shape == (6,)  # 8, 5 + 1
    assert opt.state[model[0].bias]["row"].shape == (1,)  # 1-D: only the unused row
    again = LearnedOptimizer(model.parameters(), net)
    again.load_state_dict(opt.state_dict())
    assert torch.equal(again.state[w]["row"], opt.state[w]["row"])


def test_factored_config_round_trip_and_old_configs(tmp_path):
    net = trained_like(hidden_sizes=[4], factored=True, factored_decay=0.9)
    back, _ = load_learned_optimizer(save_learned_optimizer(tmp_path / "f.pt", net))
    assert back.config() == net.config() and back.factored and back.factored_decay == 0.9
    old = create("general").config()
    del old["factored"], old["factored_decay"]  # a checkpoint from before the option
    assert create("general", **old).factored is False
    with pytest.raises(ValueError, match="factored_decay"):
        create("general", factored=True, factored_decay=1.0)


def test_factored_meta_gradient_reaches_the_network():
    net = create("general", nominal="lars", factored=True)
    with torch.no_grad():
        net.residual_gain.fill_(0.5)
    params = torch.randn(2, FACTORED_SPEC.numel)
    state = net.init_state(params, FACTORED_SPEC)
    feats = []
    for _ in range(3):
        f, state = net.observe(torch.randn_like(params), params, state)
        feats.append(f)
    upd, _ = net.core(torch.stack(feats), state)
    (upd * torch.randn_like(upd)).sum().backward()
    for name, p in net.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    first = net.net[0].weight.grad  # the factored features' input weights learn too
    f1 = net.num_normalized_features - len(net.momentum_decays) - 2
    assert first[:, f1 : net.num_normalized_features].abs().sum() > 0


def test_untrained_adaptive_step_leaves_the_optimizer_unchanged():
    """``step_gain`` and ``step_target`` start at 0: the log factor stays 0, whatever the
    alignment, and the steps are those without ``adaptive_step``."""
    plain = create("general", nominal="lars", base_schedule="cosine")
    adaptive = create("general", nominal="lars", base_schedule="cosine", adaptive_step=True)
    adaptive.load_state_dict(plain.state_dict(), strict=False)
    params = torch.randn(2, 13)
    states = [net.init_state(params) for net in (plain, adaptive)]
    for _ in range(4):
        g = torch.randn(2, 13)
        (a, states[0]), (b, states[1]) = (
            net.step(g, params, st) for net, st in zip((plain, adaptive), states)
        )
        torch.testing.assert_close(a, b, rtol=0, atol=0)
        params = params + a
    assert torch.equal(states[1]["log_step"], torch.zeros(2, 13))


def test_tensor_alignment_is_each_tensors_cosine_over_its_finite_pairs():
    from l2o.optimizers.general import tensor_alignment

    spec = ParamSpec(("w", "b", "z"), ((3, 4), (5,), (2,)))
    seg = spec.segment_ids(torch.device("cpu"))
    a, b = torch.randn(2, spec.numel), torch.randn(2, spec.numel)
    a[1, 0] = float("nan")  # left out of the first tensor's cosine, in both vectors
    a[:, -2:] = 0.0  # a zero tensor: cosine 0, not NaN
    got = tensor_alignment(a, b, seg, 3)
    for row in range(2):
        for lo, hi in ((0, 12), (12, 17), (17, 19)):
            x, y = a[row, lo:hi], b[row, lo:hi]
            keep = torch.isfinite(x)
            want = nn.functional.cosine_similarity(x[keep], y[keep], dim=0, eps=1e-30)
            torch.testing.assert_close(got[row, lo:hi], want.expand(hi - lo))
    huge = torch.full((1, 4), 1e30)  # squares overflow float32, not the float64 statistic
    torch.testing.assert_close(tensor_alignment(huge, -huge, None, 1), -torch.ones(1, 4))


def test_adaptive_step_grows_along_a_steady_gradient_up_to_its_bound():
    """A gradient that keeps its direction (cosine 1 with the momentum) drives the log factor
    up by κ (1 − b) per step, up to the bound ``S``; one that keeps flipping (cosine −1) drives
    it down as far; the step follows the factor."""
    plain = create("general", nominal="lars")
    net = create("general", nominal="lars", adaptive_step=True, adaptive_bound=1.5)
    net.load_state_dict(plain.state_dict(), strict=False)
    with torch.no_grad():
        net.step_gain.fill_(0.4)
        net.step_target.fill_(0.5)
    for sign in (1.0, -1.0):
        params = torch.ones(1, 6)
        states = [plain.init_state(params), net.init_state(params)]
        logs = []
        with torch.no_grad():
            for k in range(10):
                g = torch.full((1, 6), sign**k)
                (base, states[0]), (upd, states[1]) = (
                    o.step(g, params, st) for o, st in zip((plain, net), states)
                )
                logs.append(float(states[1]["log_step"][0, 0]))
                torch.testing.assert_close(upd, base * math.exp(logs[-1]))
        want = [-0.4 * 0.5]  # the first step has no momentum: cosine 0
        for _ in range(9):  # then 0.2 per step up, or 0.6 per step down
            want.append(max(-1.5, min(1.5, want[-1] + 0.4 * (sign - 0.5))))
        assert logs == pytest.approx(want, abs=1e-6)


def test_adaptive_core_over_a_sequence_equals_step_by_step():
    """The log factor is ``core`` state: a replay over T steps of features carries it as T
    single steps do."""
    net = trained_like(nominal="lars", adaptive_step=True, total_steps=8)
    spec = ParamSpec(("w", "b"), ((2, 3), (3,)))
    params = torch.randn(2, 9)
    start = net.init_state(params, spec)
    state, feats, singles = start, [], []
    for _ in range(5):
        f, state = net.observe(torch.randn(2, 9), params, state)
        feats.append(f)
        upd, state = net.core(f.unsqueeze(0), state)
        singles.append(upd[0])
    together, end = net.core(torch.stack(feats), {**state, "log_step": start["log_step"]})
    torch.testing.assert_close(together, torch.stack(singles))
    torch.testing.assert_close(end["log_step"], state["log_step"])
    assert end["log_step"].abs().max() > 0


@pytest.mark.parametrize("nominal", ["adam", "lars", "orthogonal"])
@pytest.mark.parametrize("fused", [False, True])
def test_adaptive_step_deployment_equals_the_flat_step(monkeypatch, nominal, fused):
    import l2o.optimizers.mlp as mlp_module

    if fused:
        monkeypatch.setattr(mlp_module, "NATIVE_MIN_ROWS", 1)
    _deployment_vs_flat_step(nominal, True, 7, rtol=1e-5, atol=1e-6, adaptive_step=True)


def test_adaptive_step_keeps_a_nan_in_its_coordinate_and_round_trips(tmp_path):
    net = trained_like(nominal="lars", adaptive_step=True, adaptive_bound=1.0)
    params = torch.randn(1, 8)
    state = net.init_state(params)
    for k in range(3):
        g = torch.randn(1, 8)
        if k == 2:
            g[0, 3] = float("nan")
        upd, state = net.step(g, params, state)
    assert torch.isnan(upd[0, 3]) and torch.isfinite(state["log_step"]).all()
    path = tmp_path / "a.pt"
    save_learned_optimizer(path, net)
    loaded = load_learned_optimizer(path)[0]
    assert loaded.config()["adaptive_step"] and loaded.adaptive_bound == 1.0
    torch.testing.assert_close(loaded.step_gain, net.step_gain)
    with pytest.raises(ValueError, match="adaptive_bound"):
        create("general", adaptive_step=True, adaptive_bound=0.0)
