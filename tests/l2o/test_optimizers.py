"""Learned-optimizer networks, the flat-parameter layout and checkpoint files."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from l2o.optimizers import (
    LearnedOptimizer,
    LSTMOptimizer,
    MLPOptimizer,
    ParamSpec,
    available_architectures,
    create,
    load_learned_optimizer,
    save_learned_optimizer,
)
from l2o.optimizers.base import segment_mean
from l2o.optimizers.checkpoint_io import to_payload
from l2o.optimizers.features import log_sign_preprocess
from l2o.optimizers.lstm_kernels import (
    NATIVE_MIN_ROWS,
    _cell_backward,
    cell_forward,
    fused_lstm,
    lstm_forward,
    lstm_weights,
    native_kernels,
)


def tiny_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))


ARCHS = {
    "lstm": dict(),
    "lstm_extras": dict(extra_inputs=["momentum", "adam", "param", "time"], output_scale=1.0),
    "mlp": dict(hidden_sizes=[8, 8], init_scale=1.0),
    "mlp_global_norm": dict(per_tensor_norm=False),
}


def make(name):
    torch.manual_seed(0)
    return create("mlp" if name.startswith("mlp") else "lstm", **ARCHS[name])


def test_param_spec_round_trip_and_views():
    model = tiny_model()
    spec = ParamSpec.from_module(model)
    assert spec.names == ("0.weight", "0.bias", "2.weight", "2.bias")
    assert spec.numel == 12 + 3 + 6 + 2
    flat = spec.flatten(dict(model.named_parameters())).detach()
    views = spec.unflatten(flat)
    for name, p in model.named_parameters():
        torch.testing.assert_close(views[name], p)
    views["0.bias"].zero_()  # views alias the flat vector
    assert flat[12:15].abs().sum() == 0
    batched = torch.stack([flat, 2 * flat])
    assert spec.unflatten(batched)["2.weight"].shape == (2, 2, 3)
    torch.testing.assert_close(spec.flatten(spec.unflatten(batched), batch_dims=1), batched)
    assert spec.segment_ids().tolist() == [0] * 12 + [1] * 3 + [2] * 6 + [3] * 2


def test_param_spec_errors():
    spec = ParamSpec.from_module(tiny_model())
    with pytest.raises(ValueError, match="missing"):
        spec.flatten({"0.weight": torch.zeros(3, 4)})
    with pytest.raises(ValueError, match="shape"):
        spec.flatten({n: torch.zeros(1) for n in spec.names})
    with pytest.raises(ValueError, match="last dim"):
        spec.unflatten(torch.zeros(5))


def test_segment_mean_is_per_tensor():
    seg = torch.tensor([0, 0, 1, 1, 1])
    x = torch.tensor([1.0, 3.0, 2.0, 4.0, 6.0]).reshape(5, 1).expand(5, 2)
    got = segment_mean(x, seg, torch.tensor([2, 3]))
    assert got[:, 0].tolist() == [2.0, 2.0, 4.0, 4.0, 4.0]


def test_log_sign_preprocessing_matches_the_paper():
    """(log|g|/p, sign g) where |g| ≥ e^-p, else (-1, e^p·g); e^-10 ≈ 4.5e-5."""
    p = 10.0
    g = torch.tensor([1.0, -0.5, 1e-4, 1e-6, -1e-6, 0.0])
    out = log_sign_preprocess(g, p)
    assert out.shape == (6, 2)
    assert out[0].tolist() == pytest.approx([0.0, 1.0])
    assert out[1].tolist() == pytest.approx([math.log(0.5) / p, -1.0])
    assert out[2].tolist() == pytest.approx([math.log(1e-4) / p, 1.0])
    assert out[3].tolist() == pytest.approx([-1.0, math.exp(p) * 1e-6])
    assert out[4].tolist() == pytest.approx([-1.0, -math.exp(p) * 1e-6])
    assert out[5].tolist() == [-1.0, 0.0]


def test_registry_and_clear_errors():
    assert {"lstm", "mlp"} <= set(available_architectures())
    assert isinstance(create("lstm"), LSTMOptimizer)
    assert isinstance(create("mlp"), MLPOptimizer)
    with pytest.raises(ValueError, match="Did you mean 'lstm'"):
        create("lstn")
    with pytest.raises(ValueError, match="extra_inputs"):
        create("lstm", extra_inputs=["curvature"])


def test_lstm_has_the_papers_size():
    """Two LSTMCells (2→20, 20→20) and Linear(20→1): 1,920 + 3,360 + 21 weights."""
    net = create("lstm")
    assert sum(p.numel() for p in net.parameters()) == 1920 + 3360 + 21
    assert net.config()["output_scale"] == 0.1


@pytest.mark.parametrize("name", sorted(ARCHS))
def test_step_is_batched_and_equals_a_replayed_sequence(name):
    """``core`` over a sequence (the first-order replay) equals step-by-step; a leading
    meta-batch dim equals separate calls."""
    net = make(name)
    spec = ParamSpec.from_module(tiny_model())
    params = torch.randn(3, spec.numel)
    state = net.init_state(params, spec)
    start = {k: state[k] for k in net.core_state_keys}
    feats, updates = [], []
    with torch.no_grad():
        for _ in range(4):
            grads = torch.randn(3, spec.numel) * 0.1
            f, state = net.observe(grads, params, state)
            u, state = net.core(f.unsqueeze(0), state)
            feats.append(f)
            updates.append(u[0])
            params = params + u[0]
        replay, _ = net.core(torch.stack(feats), {**state, **start})
    torch.testing.assert_close(replay, torch.stack(updates), rtol=1e-5, atol=1e-7)

    single = net.init_state(params[1:2], spec)
    batched = net.init_state(params, spec)
    g = torch.randn(3, spec.numel)
    with torch.no_grad():
        u_b, _ = net.step(g, params, batched)
        u_1, _ = net.step(g[1:2], params[1:2], single)
    torch.testing.assert_close(u_b[1:2], u_1, rtol=1e-5, atol=1e-7)
    assert u_b.shape == (3, spec.numel)


def test_mlp_starts_with_small_stable_updates_and_per_tensor_normalization():
    net = create("mlp")
    spec = ParamSpec.from_module(tiny_model())
    params = torch.randn(1, spec.numel)
    state = net.init_state(params, spec)
    grads = torch.randn(1, spec.numel)
    grads[:, :12] *= 1e4  # one tensor's gradients are huge
    with torch.no_grad():
        f, _ = net.observe(grads, params, state)
        upd, _ = net.step(grads, params, state)
    assert upd.abs().max() < 0.05
    normalized = f[0, :, : net.num_normalized_features]
    rms0 = normalized[:12].pow(2).mean(0)
    rms1 = normalized[12:15].pow(2).mean(0)
    # each tensor's features have unit second moment (up to eps), whatever the scale
    assert torch.allclose(rms0[0], torch.tensor(1.0), atol=1e-3)
    assert torch.allclose(rms1[0], torch.tensor(1.0), atol=1e-2)


def test_step_validates_shapes():
    net = create("lstm")
    state = net.init_state(torch.zeros(5))
    with pytest.raises(ValueError, match="differ"):
        net.step(torch.zeros(4), torch.zeros(5), state)


@pytest.mark.parametrize("name", sorted(ARCHS))
def test_checkpoint_round_trip_reproduces_updates_exactly(name, tmp_path):
    net = make(name)
    path = save_learned_optimizer(tmp_path / "opt.pt", net, {"task": "tiny", "steps": 3})
    loaded, meta = load_learned_optimizer(path)
    assert meta == {"task": "tiny", "steps": 3}
    assert type(loaded) is type(net) and loaded.config() == net.config()
    params, grads = torch.randn(2, 23), torch.randn(2, 23)
    with torch.no_grad():
        a, _ = net.step(grads, params, net.init_state(params))
        b, _ = loaded.step(grads, params, loaded.init_state(params))
    assert torch.equal(a, b)
    assert not list(tmp_path.glob(".*tmp"))  # the atomic write left nothing behind
    assert path.stat().st_size < 60_000  # a few KB


def test_checkpoint_errors_name_the_mismatch(tmp_path):
    net = create("lstm")
    path = save_learned_optimizer(tmp_path / "lstm.pt", net)
    with pytest.raises(ValueError, match="holds a 'lstm' optimizer, expected 'mlp'"):
        load_learned_optimizer(path, expected_arch="mlp")
    foreign = tmp_path / "foreign.pt"
    torch.save({"model": torch.zeros(3)}, foreign)
    with pytest.raises(ValueError, match="not an l2o learned-optimizer checkpoint"):
        load_learned_optimizer(foreign)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a torch file")
    with pytest.raises(ValueError, match="not a loadable"):
        load_learned_optimizer(garbage)
    payload = to_payload(net)
    payload["config"]["hidden_size"] = 8
    bad = tmp_path / "bad.pt"
    torch.save(payload, bad)
    with pytest.raises(ValueError, match="shape mismatch"):
        load_learned_optimizer(bad)
    with pytest.raises(FileNotFoundError):
        load_learned_optimizer(tmp_path / "absent.pt")
    with pytest.raises(ValueError, match="JSON-like"):
        save_learned_optimizer(tmp_path / "x.pt", net, {"obj": object()})


@pytest.mark.parametrize(("n_in", "layers"), [(2, 2), (5, 1), (3, 3)])
def test_fused_lstm_equals_nn_lstm_forward_and_backward(n_in, layers):
    """The hand-written kernels compute exactly ``nn.LSTM`` and its gradients (float64)."""
    lstm = nn.LSTM(n_in, 6, layers).double()
    x = torch.randn(4, 7, n_in, dtype=torch.double, requires_grad=True)
    h0 = torch.randn(layers, 7, 6, dtype=torch.double, requires_grad=True)
    c0 = torch.randn(layers, 7, 6, dtype=torch.double, requires_grad=True)
    results = []
    for run in (lambda: lstm(x, (h0, c0)), lambda: fused_lstm(lstm, x, h0, c0)):
        out, (h, c) = run()
        weight = torch.arange(out.numel(), dtype=torch.double).reshape(out.shape).sin()
        loss = (out * weight).sum() + 1.3 * h.sum() + c.cos().sum()
        grads = torch.autograd.grad(loss, [x, h0, c0, *lstm.parameters()])
        results.append((out, h, c, *grads))
    for want, got in zip(*results):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    with torch.no_grad():
        weights = lstm_weights(lstm)
        grouped = [tuple(weights[i : i + 4]) for i in range(0, len(weights), 4)]
        out, h, c = lstm_forward(x, h0, c0, grouped)
    torch.testing.assert_close(out, results[0][0])


def test_lstm_optimizer_fused_and_reference_paths_agree():
    torch.manual_seed(0)
    net = create("lstm", extra_inputs=["momentum"])
    params, grads = torch.randn(2, 30), torch.randn(2, 30)
    state = net.init_state(params)
    feats, _ = net.observe(grads, params, state)
    seq = feats.unsqueeze(0).expand(3, *feats.shape).contiguous()
    out = []
    for fused in (True, False):
        net.use_fused = fused
        net.zero_grad()
        upd, new = net.core(seq, state)
        (upd.sin().sum() + new["c"].sum()).backward()
        out.append((upd, new["h"], [p.grad.clone() for p in net.parameters()]))
    torch.testing.assert_close(out[0][0], out[1][0])
    torch.testing.assert_close(out[0][1], out[1][1])
    for a, b in zip(out[0][2], out[1][2]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_native_kernels_match_the_pytorch_reference():
    """The C++ elementwise kernels (built on first use) compute the PyTorch reference's values;
    where they cannot be built, the PyTorch path is what runs and this has nothing to compare."""
    ext = native_kernels()
    if ext is None:
        pytest.skip("no C++ toolchain: the PyTorch kernels are in use")
    rows = NATIVE_MIN_ROWS + 37
    pre = torch.randn(rows, 80) * 4
    pre[0, 0], pre[1, 20], pre[2, 40] = 200.0, -200.0, 90.0  # saturated gates stay finite
    c, dh, dc = torch.randn(rows, 20), torch.randn(rows, 20), torch.randn(rows, 20)
    for got, want in zip(ext.cell_forward(pre, c), cell_forward(pre, c)):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=2e-6)
    for got, want in zip(ext.cell_backward(pre, c, dh, dc), _cell_backward(pre, c, dh, dc)):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=2e-5)
    h_out, c_in = torch.empty(rows, 20), c.clone()
    ext.cell_forward_into(pre, c_in, h_out, c_in)  # in place on the cell state
    want_h, want_c = cell_forward(pre, c)
    torch.testing.assert_close(h_out, want_h, rtol=1e-5, atol=2e-6)
    torch.testing.assert_close(c_in, want_c, rtol=1e-5, atol=2e-6)
    # the whole optimizer, deployed over native-sized chunks, equals its flat step
    net = create("lstm", extra_inputs=["momentum"])
    param = nn.Parameter(torch.randn(3 * NATIVE_MIN_ROWS))
    flat = param.detach().clone()
    state = net.init_state(flat)
    opt = LearnedOptimizer([param], net, chunk_size=2 * NATIVE_MIN_ROWS)
    for _ in range(3):
        param.grad = torch.randn_like(param) * 0.01
        with torch.no_grad():
            upd, state = net.step(param.grad.clone(), flat, state)
        flat += upd
        opt.step()
    torch.testing.assert_close(param.detach(), flat, rtol=1e-5, atol=1e-6)


def _taped_truncation(net, feats, state, cot):
    """Updates, final state and meta-gradient of a truncation through the tape."""
    tape = net.new_tape(feats.shape[0], feats[0, ..., 0])
    assert tape is not None
    ups = []
    for x in feats:
        upd, state = net.core_taped(x, state, tape)
        ups.append(upd.clone())
    net.zero_grad()
    torch.autograd.backward(net.taped_updates(tape), cot)
    return torch.stack(ups), state, [p.grad.clone() for p in net.parameters()]


def test_taped_truncation_matches_autograd_through_core():
    """The tape (C++ forward without a graph, one fused backward through time over blocks of
    rows) gives the updates, states and first-order meta-gradient of autograd through the
    plain ``nn.LSTM``; 2 × 700 coordinates span several row blocks, the last one partial."""
    if native_kernels() is None:
        pytest.skip("no C++ toolchain: meta-training uses the autograd path")
    torch.manual_seed(0)
    net = create("lstm", extra_inputs=["momentum", "adam"], output_scale=0.3)
    params, steps = torch.randn(2, 700), 5
    state = net.init_state(params)
    state["h"].normal_()  # a truncation that does not start from zeros
    state["c"].normal_()
    feats = torch.randn(steps, 2, 700, net.num_features)
    cot = torch.randn(steps, 2, 700)
    got_u, got_state, got_g = _taped_truncation(net, feats, dict(state), cot)

    net.use_fused = False
    net.zero_grad()
    want_u, want_state = net.core(feats, dict(state))
    torch.autograd.backward(want_u, cot)
    torch.testing.assert_close(got_u, want_u.detach(), rtol=1e-5, atol=1e-6)
    for key in ("h", "c"):
        torch.testing.assert_close(got_state[key], want_state[key].detach(), rtol=1e-5, atol=1e-5)
    for (name, p), got in zip(net.named_parameters(), got_g):
        torch.testing.assert_close(got, p.grad, rtol=1e-4, atol=1e-5, msg=name)

    # a reused tape gives the same again, and the sums do not depend on the thread count
    net.use_fused = True
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        again = _taped_truncation(net, feats, dict(state), cot)
    finally:
        torch.set_num_threads(threads)
    for a, b in zip(again[2], got_g):
        assert torch.equal(a, b)


def test_taped_path_falls_back_where_it_cannot_run():
    net = create("lstm")
    params = torch.zeros(1, 10)
    assert net.new_tape(3, params.double()) is None
    handle = net.head.register_forward_hook(lambda m, i, out: out)
    assert net.new_tape(3, params) is None  # hooks need modules to run: the autograd path
    handle.remove()
    net.use_fused = False
    assert net.new_tape(3, params) is None
    assert create("mlp").new_tape(3, params) is None


def _autograd_run(net, feats, state, cot):
    net.zero_grad()
    ups, _ = net.core(feats, state)
    torch.autograd.backward(ups, cot)
    return ups.detach(), [p.grad.clone() for p in net.parameters()]


@pytest.mark.parametrize("bad", ["nan", "inf", "-inf"])
def test_the_meta_training_tape_agrees_with_pytorch_on_bad_gradients(bad, monkeypatch):
    """Features observed from gradients with one bad coordinate: the tape (C++) and autograd
    through ``core`` with PyTorch ops give NaN at that coordinate and equal values elsewhere;
    the meta-gradient, a sum over all coordinates, is NaN on both (never a number)."""
    if native_kernels() is None:
        pytest.skip("no C++ toolchain: meta-training uses the autograd path")
    torch.manual_seed(0)
    net = create("lstm", extra_inputs=["momentum", "adam"])
    params, steps = torch.randn(1, 4096), 3
    grads = torch.randn(steps, 1, 4096) * 1e-2
    grads[1, 0, 7] = float(bad)
    state = net.init_state(params)
    feats = []
    for g in grads:
        f, state = net.observe(g, params, state)
        feats.append(f)
    feats = torch.stack(feats)
    state0 = net.init_state(params)
    cot = torch.randn(steps, 1, 4096)

    taped_u, _, taped_g = _taped_truncation(net, feats, dict(state0), cot)
    monkeypatch.setenv("L2O_NATIVE", "0")
    ref_u, ref_g = _autograd_run(net, feats, dict(state0), cot)

    assert taped_u[1:, 0, 7].isnan().all() and taped_u[0].isfinite().all()
    assert torch.equal(taped_u.isfinite(), ref_u.isfinite())
    ok = taped_u.isfinite()
    torch.testing.assert_close(taped_u[ok], ref_u[ok], rtol=1e-5, atol=1e-6)
    for a, b in zip(taped_g, ref_g):
        assert torch.equal(a.isnan(), b.isnan())
    assert any(g.isnan().any() for g in taped_g)
