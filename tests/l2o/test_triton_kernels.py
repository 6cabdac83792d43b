"""The fused Triton deployment step of ``mlp`` and ``general``: equal to the PyTorch path under
the interpreter on the CPU (every parameter dtype, NaN/inf inputs, the shipped checkpoints and
the other options the kernels cover), chosen automatically on CUDA, refused where not covered;
on a GPU, the same comparison on CUDA tensors and no host synchronization in a step."""

from __future__ import annotations

import copy
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from l2o.optimizers import LearnedOptimizer, create, deploy_backend, load_learned_optimizer
from l2o.optimizers.wrapper import pretrained_path

ROOT = Path(__file__).resolve().parents[2]
CHECK = Path(__file__).with_name("triton_deploy_check.py")
HAS_TRITON = importlib.util.find_spec("triton") is not None
needs_triton = pytest.mark.skipif(not HAS_TRITON, reason="triton is not installed")
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def interpreted(group: str) -> list[dict]:
    """``triton_deploy_check.py group`` under ``TRITON_INTERPRET=1``, against the PyTorch ops
    (``L2O_NATIVE=0``: no C++ kernel on the reference side)."""
    env = dict(os.environ, TRITON_INTERPRET="1", L2O_NATIVE="0")
    result = subprocess.run(
        [sys.executable, str(CHECK), group],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def assert_equal_paths(runs: list[dict]) -> None:
    """Each run: the kernels ran every step, the parameters moved, the NaN coordinates are the
    PyTorch path's and the rest agree to a few units in the last place of the dtype."""
    for run in runs:
        eps = torch.finfo(getattr(torch, run["dtype"])).eps
        # float32 arithmetic either way: rounding in another order, a few float32 ulps
        ulps = 8 if run["dtype"] in ("float32", "float64") else 2
        bound = ulps * max(eps, torch.finfo(torch.float32).eps) * max(1.0, run["max_abs_param"])
        assert run["kernel_steps"] == 3, run
        assert run["moved"] > 1e-3, run
        assert run["same_nan"], run
        assert run["max_abs_diff"] <= bound, run
        if run["bad_inputs"]:
            assert run["nan_count"] > 0, run


@needs_triton
def test_shipped_checkpoints_every_dtype_under_the_interpreter():
    """The shipped checkpoints the kernels cover (``general``'s orthogonal term is not)."""
    runs = interpreted("shipped")
    assert {(r["name"], r["dtype"]) for r in runs} == {
        (name, dtype)
        for name in ("mlp-mnist", "general-v2")
        for dtype in ("float32", "float64", "float16", "bfloat16")
    }
    assert_equal_paths(runs)


@needs_triton
def test_other_covered_options_under_the_interpreter():
    runs = interpreted("variants")
    assert len(runs) == 8
    assert_equal_paths(runs)


def test_auto_chooses_triton_for_cuda_parameters_only(monkeypatch):
    for name in ("general-v2", "mlp-mnist"):
        net = load_learned_optimizer(pretrained_path(name))[0]
        on_cuda = deploy_backend.uses_triton("auto", net, torch.device("cuda"))
        assert on_cuda == (deploy_backend.triton_kernels() is not None)
        assert not deploy_backend.uses_triton("auto", net, torch.device("cpu"))
        assert not deploy_backend.uses_triton("torch", net, torch.device("cuda"))
    monkeypatch.setattr(deploy_backend, "triton_kernels", lambda: None)
    assert not deploy_backend.uses_triton("auto", net, torch.device("cuda"))


@pytest.mark.parametrize(
    "net, reason",
    [
        (create("general", factored=True), "factored=True"),
        (create("general", nominal="orthogonal"), "nominal='orthogonal'"),
        (create("general", nominal="lars", adaptive_step=True), "adaptive_step=True"),
        (create("mlp", hidden_sizes=(4, 4, 4)), "hidden_sizes=[4, 4, 4]"),
        (create("lstm"), "'lstm' architecture"),
    ],
)
def test_uncovered_networks_take_the_pytorch_path(net, reason):
    assert reason in deploy_backend.uncovered(net)
    assert not deploy_backend.uses_triton("auto", net, torch.device("cuda"))
    with pytest.raises(ValueError, match=reason.replace("[", r"\[")):
        LearnedOptimizer([torch.nn.Parameter(torch.ones(3))], net, backend="triton")


def test_backend_is_checked_and_kept(monkeypatch):
    params = [torch.nn.Parameter(torch.ones(3))]
    with pytest.raises(ValueError, match="backend must be one of"):
        LearnedOptimizer(params, create("mlp"), backend="cuda")
    opt = LearnedOptimizer(params, create("mlp"), backend="torch")
    assert copy.deepcopy(opt).backend == "torch"
    monkeypatch.setattr(deploy_backend, "triton_kernels", lambda: None)
    with pytest.raises(ValueError, match="needs triton"):
        LearnedOptimizer(params, create("mlp"), backend="triton")


def cuda_run(net, backend: str, steps: int = 4, sync_check: bool = False) -> torch.Tensor:
    gen = torch.Generator().manual_seed(0)
    shapes = ((300, 70), (4096,), (33,))
    params = [torch.nn.Parameter(torch.randn(s, generator=gen).cuda()) for s in shapes]
    grads = [[torch.randn(s, generator=gen).cuda() for s in shapes] for _ in range(steps)]
    grads[1][0][0, 0] = float("nan")
    opt = LearnedOptimizer(params, net, backend=backend)
    for k in range(steps):
        for p, g in zip(params, grads[k]):
            p.grad = g
        if sync_check and k > 0:  # the first step makes the state (a host copy of its sizes)
            torch.cuda.set_sync_debug_mode("error")
        try:
            opt.step()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return torch.cat([p.detach().reshape(-1) for p in params]).cpu()


@needs_cuda
@needs_triton
@pytest.mark.parametrize("name", ["general", "mlp-mnist"])
def test_cuda_kernels_equal_the_pytorch_path_without_host_syncs(name):
    net = load_learned_optimizer(pretrained_path(name))[0].cuda()
    assert deploy_backend.uses_triton("auto", net, torch.device("cuda"))
    fused = cuda_run(net, "auto", sync_check=True)
    reference = cuda_run(net, "torch")
    assert torch.equal(fused.isnan(), reference.isnan()) and fused.isnan().any()
    torch.testing.assert_close(fused, reference, rtol=1e-5, atol=1e-5, equal_nan=True)
