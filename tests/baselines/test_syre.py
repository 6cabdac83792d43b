"""AdamSyre: the Adam part, the fixed random anchor, the torch re-implementation of Triton's
generator, and the Triton kernel itself (on CPU under TRITON_INTERPRET=1, in a subprocess)."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from optim_testing import make_params, max_relative_error, trajectory

import baselines.syre as syre
from baselines import AdamSyre

ROOT = Path(__file__).resolve().parents[2]


def test_weight_decay_zero_is_adam():
    ours, _ = trajectory(lambda p: AdamSyre(p, lr=1e-2, betas=(0.8, 0.99), weight_decay=0.0))
    adam, _ = trajectory(lambda p: torch.optim.Adam(p, lr=1e-2, betas=(0.8, 0.99)))
    assert max_relative_error(ours, adam) < 1e-6


def test_maximize_climbs():
    up, _ = trajectory(lambda p: AdamSyre(p, lr=1e-2, weight_decay=0.0, maximize=True))
    down, _ = trajectory(
        lambda p: torch.optim.Adam(p, lr=1e-2, maximize=True), params=make_params()
    )
    assert max_relative_error(up, down) < 1e-6


@pytest.mark.parametrize(
    "counter, key, expected",
    [  # Random123's known-answer vectors for Philox-4x32-10
        ((0, 0, 0, 0), 0, (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
        ((0xFFFFFFFF,) * 4, 0xFFFFFFFFFFFFFFFF, (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
        (
            (0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344),
            0x299F31D0A4093822,
            (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1),
        ),
    ],
)
def test_philox_matches_known_answers(counter, key, expected):
    words = syre.philox4x32(key, tuple(torch.tensor([c], dtype=torch.int64) for c in counter))
    assert tuple(int(w) for w in words) == expected


def test_uniforms_and_normals_have_the_right_distribution():
    offsets = torch.arange(50_000)
    uniform = syre.triton_rand(123, offsets)
    normal = syre.triton_randn(123, offsets)
    assert uniform.dtype == normal.dtype == torch.float32
    assert uniform.min() >= 0.0 and uniform.max() < 1.0
    assert abs(uniform.mean().item() - 0.5) < 0.01
    assert abs(normal.mean().item()) < 0.02 and abs(normal.std().item() - 1.0) < 0.02


def test_anchor_is_a_fixed_function_of_the_seeds():
    params = [torch.nn.Parameter(torch.zeros(20_000)), torch.nn.Parameter(torch.zeros(7, 3))]
    std, eps = 0.05, 0.02
    first = AdamSyre(params, syre_std=std, syre_eps=eps, syre_seed=3)
    copies = [torch.nn.Parameter(p.detach().clone()) for p in params]
    second = AdamSyre(copies, syre_std=std, syre_eps=eps, syre_seed=3)
    anchor, scale = first.anchor(params[0])
    again, scale_again = second.anchor(second.param_groups[0]["params"][0])
    assert torch.equal(anchor, again) and torch.equal(scale, scale_again)
    seed_anchor, seed_scale = syre.parameter_seeds(3, 2)[0]
    expected_anchor, expected_scale = syre.syre_anchor(20_000, std, eps, seed_anchor, seed_scale)
    assert torch.equal(anchor, expected_anchor) and torch.equal(scale, expected_scale)
    # statistics: theta_0 ~ N(0, std^2), d ~ U[1 - eps, 1 + eps]
    assert abs(anchor.mean().item()) < 4 * std / math.sqrt(20_000)
    assert anchor.std().item() == pytest.approx(std, rel=0.03)
    assert (1 - eps) <= scale.min().item() and scale.max().item() <= (1 + eps)
    assert scale.mean().item() == pytest.approx(1.0, abs=1e-3)
    # other parameters and other seeds get other anchors
    assert first.anchor(params[1])[0].shape == (7, 3)
    assert not torch.equal(first.anchor(params[1])[0].reshape(-1), anchor[:21])
    other = AdamSyre(params, syre_std=std, syre_eps=eps, syre_seed=4).anchor(params[0])[0]
    assert not torch.equal(other, anchor)


def test_seeds_are_drawn_like_the_gist():
    generator = torch.Generator()
    generator.manual_seed(11)
    draws = [torch.empty(2, dtype=torch.int64).random_(generator=generator) for _ in range(3)]
    expected = [tuple(draw.tolist()) for draw in draws]
    assert list(syre.parameter_seeds(11, 3)) == expected


def test_decay_pulls_towards_the_same_anchor_every_step():
    """With zero gradients Adam does nothing, so θ_t − θ₀ = (1 − γ d)^t (θ_0 − θ₀) exactly when the
    anchor never changes."""
    param = torch.nn.Parameter(torch.randn(1000, dtype=torch.float64))
    start = param.detach().clone()
    optimizer = AdamSyre([param], lr=0.1, weight_decay=2.0, syre_std=0.5, syre_eps=0.1)
    anchor, scale = optimizer.anchor(param)
    for _ in range(3):
        param.grad = torch.zeros_like(param)
        optimizer.step()
    gamma = 0.1 * 2.0
    expected = anchor + (1 - gamma * scale) ** 3 * (start - anchor)
    torch.testing.assert_close(param.detach(), expected, rtol=1e-12, atol=1e-12)


def test_decay_then_adam_matches_the_formula():
    params = make_params()
    twin = [torch.nn.Parameter(p.detach().clone()) for p in params]
    decayed = AdamSyre(params, lr=0.05, weight_decay=0.5, syre_std=0.3, syre_eps=0.05, syre_seed=9)
    plain = AdamSyre(twin, lr=0.05, weight_decay=0.0)
    start = [p.detach().clone() for p in params]
    for p, q in zip(params, twin):
        p.grad = q.grad = torch.randn_like(p)
    decayed.step()
    plain.step()
    for p, q, p0 in zip(params, twin, start):
        anchor, scale = decayed.anchor(p)
        expected = q.detach() - 0.05 * 0.5 * scale * (p0 - anchor)
        torch.testing.assert_close(p.detach(), expected, rtol=1e-6, atol=1e-7)


def test_parameters_without_gradient_keep_their_seed_position():
    params = make_params()
    optimizer = AdamSyre(params, weight_decay=0.1)
    seeds = syre.parameter_seeds(0, 3)
    expected = syre.syre_anchor(12, syre.DEFAULT_SYRE_STD, 0.01, *seeds[2])[0].view(3, 2, 2)
    params[2].grad = torch.ones_like(params[2])
    optimizer.step()  # only the third parameter has a gradient
    assert torch.equal(optimizer.anchor(params[2])[0], expected)
    assert torch.equal(params[0].detach(), make_params()[0].detach())


def test_half_precision_decays_in_float32():
    param = torch.nn.Parameter(torch.randn(64).bfloat16())
    reference = torch.nn.Parameter(param.detach().float())
    for p in (param, reference):
        optimizer = AdamSyre([p], lr=0.1, weight_decay=1.0, syre_std=1.0)
        p.grad = torch.zeros_like(p)
        optimizer.step()
    torch.testing.assert_close(param.detach().float(), reference.detach(), rtol=1e-2, atol=1e-2)


def test_triton_backend_is_refused_without_triton(monkeypatch):
    monkeypatch.setattr(syre, "_triton_kernels", lambda: None)
    with pytest.raises(ValueError, match="triton"):
        AdamSyre([torch.nn.Parameter(torch.ones(2))], backend="triton")
    with pytest.raises(ValueError):
        AdamSyre([torch.nn.Parameter(torch.ones(2))], backend="cuda")


_INTERPRETED_KERNEL_CHECK = textwrap.dedent(
    """
    import json, os
    assert os.environ["TRITON_INTERPRET"] == "1"
    import torch
    from baselines import AdamSyre, _syre_triton as kernels, syre

    n, std, eps, gamma = 3000, 0.03, 0.02, 0.3  # 3 blocks, the last one masked
    seed_anchor, seed_scale = syre.parameter_seeds(5, 2)[1]
    # gamma = 1 and eps = 0 (d = 1) on zeros leave theta_0; std = 0 on ones leaves 1 - d.
    anchor = kernels.syre_weight_decay_(torch.zeros(n), 1.0, std, 0.0, seed_anchor, seed_scale)
    one_minus_d = kernels.syre_weight_decay_(torch.ones(n), 1.0, 0.0, eps, seed_anchor, seed_scale)
    scale = 1 - one_minus_d
    theta = torch.randn(n, generator=torch.Generator().manual_seed(0))
    out = kernels.syre_weight_decay_(theta.clone(), gamma, std, eps, seed_anchor, seed_scale)
    again = kernels.syre_weight_decay_(theta.clone(), gamma, std, eps, seed_anchor, seed_scale)
    other = kernels.syre_weight_decay_(theta.clone(), gamma, std, eps, seed_anchor + 1, seed_scale)
    strided = torch.zeros(n, 2)[:, 0]
    kernels.syre_weight_decay_(strided, 1.0, std, 0.0, seed_anchor, seed_scale)
    torch_anchor, torch_scale = syre.syre_anchor(n, std, eps, seed_anchor, seed_scale)

    def trajectory(backend, dtype=torch.float32):
        start = torch.randn(40, 30, generator=torch.Generator().manual_seed(1), dtype=dtype)
        params = [torch.nn.Parameter(start)]
        opt = AdamSyre(params, lr=0.05, weight_decay=0.5, syre_std=0.2, backend=backend)
        generator = torch.Generator().manual_seed(2)
        for _ in range(5):
            params[0].grad = torch.randn(40, 30, generator=generator, dtype=dtype)
            opt.step()
        return params[0].detach()

    def complex_gap(backend):  # the complex parameter against its real view, on one backend
        on_complex = torch.view_as_real(trajectory(backend, torch.complex64))
        params = [torch.nn.Parameter(torch.view_as_real(
            torch.randn(40, 30, generator=torch.Generator().manual_seed(1), dtype=torch.complex64)
        ).clone())]
        opt = AdamSyre(params, lr=0.05, weight_decay=0.5, syre_std=0.2, backend=backend)
        generator = torch.Generator().manual_seed(2)
        for _ in range(5):
            grad = torch.randn(40, 30, generator=generator, dtype=torch.complex64)
            params[0].grad = torch.view_as_real(grad).clone()
            opt.step()
        return (on_complex - params[0].detach()).abs().max().item()

    print(json.dumps({
        "anchor_vs_torch": (anchor - torch_anchor).abs().max().item(),
        "scale_equal_torch": torch.equal(scale, torch_scale),
        "formula_error": (out - (theta - gamma * scale * (theta - anchor))).abs().max().item(),
        "deterministic": torch.equal(out, again),
        "seed_matters": not torch.equal(out, other),
        "strided_equal": torch.equal(strided, anchor),
        "anchor_mean": anchor.mean().item(),
        "anchor_std": anchor.std().item(),
        "scale_range": [scale.min().item(), scale.max().item()],
        "adamsyre_triton_vs_torch": (trajectory("triton") - trajectory("torch")).abs().max().item(),
        "complex_vs_real_view": [complex_gap("triton"), complex_gap("torch")],
    }))
    """
)


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton is not installed")
def test_triton_kernel_on_cpu_under_the_interpreter():
    env = dict(os.environ, TRITON_INTERPRET="1")
    result = subprocess.run(
        [sys.executable, "-c", _INTERPRETED_KERNEL_CHECK],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    found = json.loads(result.stdout.strip().splitlines()[-1])
    std, eps = 0.03, 0.02
    # theta_0: Box-Muller's float32 log/cos differ by an ulp or so between implementations.
    assert found["anchor_vs_torch"] < 1e-6 * std * 10
    assert found["scale_equal_torch"], "d (Philox + uint->float) must match bit for bit"
    assert found["formula_error"] < 1e-6
    assert found["deterministic"] and found["seed_matters"] and found["strided_equal"]
    assert abs(found["anchor_mean"]) < 4 * std / math.sqrt(3000)
    assert found["anchor_std"] == pytest.approx(std, rel=0.05)
    assert 1 - eps <= found["scale_range"][0] and found["scale_range"][1] <= 1 + eps
    assert found["adamsyre_triton_vs_torch"] < 1e-5
    assert found["complex_vs_real_view"] == [0.0, 0.0]  # view_as_real on both paths


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_triton_path_matches_the_torch_path():
    torch.manual_seed(0)
    cpu = [torch.nn.Parameter(torch.randn(300, 70))]
    cuda = [torch.nn.Parameter(cpu[0].detach().cuda())]
    kwargs = dict(lr=0.05, weight_decay=0.5, syre_std=0.2, syre_eps=0.05)
    on_cpu, on_cuda = AdamSyre(cpu, **kwargs), AdamSyre(cuda, **kwargs)
    assert on_cuda._uses_triton(on_cuda.param_groups[0], cuda[0])
    for _ in range(5):
        grad = torch.randn(300, 70)
        cpu[0].grad, cuda[0].grad = grad, grad.cuda()
        on_cpu.step()
        on_cuda.step()
    torch.testing.assert_close(cuda[0].detach().cpu(), cpu[0].detach(), rtol=1e-5, atol=1e-5)
