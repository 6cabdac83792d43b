"""NaN and infinite gradients in the LSTM optimizer: never hidden, confined to their coordinate,
and the same with the C++ kernels and with PyTorch ops (``L2O_NATIVE=0``) in deployment (the
meta-training tape: ``test_optimizers.py``)."""

from __future__ import annotations

import pytest
import torch

from l2o.optimizers import LearnedOptimizer, create
from l2o.optimizers.lstm_kernels import native_kernels

BAD = {"nan": float("nan"), "+inf": float("inf"), "-inf": float("-inf")}
CONFIGS = {
    "plain": dict(),
    "mnist": dict(extra_inputs=["momentum", "adam"]),  # lstm-mnist's config
}
N = 4096  # above NATIVE_MIN_ROWS: every kernel path is taken


@pytest.fixture
def native():
    if native_kernels() is None:
        pytest.skip("no C++ toolchain: only the PyTorch path exists here")


def _deploy(config, grads, native, monkeypatch):
    """Parameter changes of consecutive ``LearnedOptimizer`` steps, one per gradient."""
    monkeypatch.setenv("L2O_NATIVE", "1" if native else "0")
    torch.manual_seed(0)
    net = create("lstm", **config)
    p = torch.nn.Parameter(torch.randn(N))
    opt = LearnedOptimizer([p], net)
    deltas = []
    for g in grads:
        before = p.detach().clone()
        p.grad = g.clone()
        opt.step()
        deltas.append(p.detach() - before)
    return deltas


def _agree(native, reference):
    """Same non-finite coordinates, same finite values."""
    for a, b in zip(native, reference):
        assert torch.equal(a.isfinite(), b.isfinite())
        torch.testing.assert_close(a[a.isfinite()], b[b.isfinite()], rtol=1e-5, atol=1e-6)


@pytest.mark.usefixtures("native")
@pytest.mark.parametrize("config", CONFIGS)
@pytest.mark.parametrize("bad", BAD)
def test_a_bad_gradient_coordinate_gives_a_nan_update_there_only(config, bad, monkeypatch):
    g = torch.randn(3, N, generator=torch.Generator().manual_seed(1)) * 1e-2
    g[0, 7] = BAD[bad]
    runs = [_deploy(CONFIGS[config], g, native, monkeypatch) for native in (True, False)]
    for deltas in runs:
        for d in deltas:  # the coordinate is NaN from then on (its parameter is), the rest clean
            assert d[7].isnan()
            assert d[torch.arange(N) != 7].isfinite().all()
    _agree(*runs)


@pytest.mark.usefixtures("native")
@pytest.mark.parametrize("config", CONFIGS)
@pytest.mark.parametrize("bad", BAD)
def test_an_all_bad_gradient_gives_nan_everywhere(config, bad, monkeypatch):
    g = torch.full((1, N), BAD[bad])
    for native in (True, False):
        (d,) = _deploy(CONFIGS[config], g, native, monkeypatch)
        assert d.isnan().all()


@pytest.mark.usefixtures("native")
@pytest.mark.parametrize("config", CONFIGS)
def test_a_huge_finite_gradient_leaves_its_coordinate_usable(config, monkeypatch):
    """1e30² overflows float32: the second moment saturates instead of becoming inf (which the
    next clean step turned into NaN)."""
    g = torch.randn(4, N, generator=torch.Generator().manual_seed(2)) * 1e-2
    g[0, 7] = 1e30
    runs = [_deploy(CONFIGS[config], g, native, monkeypatch) for native in (False, True)]
    for deltas in runs:
        for d in deltas:
            assert d.isfinite().all()
    _agree(*runs)


def test_a_huge_finite_gradient_saturates_the_second_moment():
    """The features of the next clean step stay finite (``lerp`` made ``v`` inf, then NaN)."""
    net = create("lstm", **CONFIGS["mnist"])
    params = torch.randn(10)
    state = net.init_state(params)
    g = torch.full((10,), 1e-2)
    g[7] = 1e30
    _, state = net.observe(g, params, state)
    assert state["v"].isfinite().all()
    features, state = net.observe(torch.full((10,), 1e-2), params, state)
    assert features.isfinite().all() and state["v"].isfinite().all()
