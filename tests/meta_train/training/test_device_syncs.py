"""Meta-training on a GPU without a host synchronization per inner step: ES/PES particles and
first-order truncated BPTT, on CUDA when there is one and through the same code on the CPU
(``L2O_NATIVE=0``: the PyTorch ops CUDA runs, not the C++ kernels).

A truncation may read the device a fixed number of times (its summary, PES's restart check);
what must not happen is a read per inner step. So the host reads of one truncation of K = 2 and
of K = 5 steps are counted by call site and must be the same. On the CPU a read costs nothing,
so the Python-level operations that would make a GPU wait are counted (a tensor read back, and
host data copied to a device); on CUDA, torch's sync debug mode also reports the syncs made
inside C++ operators.
"""

from __future__ import annotations

import collections
import contextlib
import traceback
import warnings
from pathlib import Path

import pytest
import torch

from l2o.optimizers import create
from l2o.tasks import get_task
from meta_train.estimators import make_estimator, meta_step_gradient
from meta_train.inner_loop.unroll import UnrollConfig, init_inner_state

ROOT = str(Path(__file__).resolve().parents[3])
DEVICES = [
    "cpu",
    pytest.param(
        "cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
    ),
]
#: Tensor methods that read a value back to the host (a device sync on a GPU).
READS = ("item", "__bool__", "__float__", "__int__", "tolist", "numpy", "cpu")


def _call_site() -> str:
    """``file:line`` of the innermost project frame outside this test."""
    for frame in reversed(traceback.extract_stack()[:-2]):
        if frame.filename.startswith(ROOT) and frame.filename != __file__:
            return f"{Path(frame.filename).relative_to(ROOT)}:{frame.lineno}"
    return "?"


@contextlib.contextmanager
def host_reads(counter: collections.Counter):
    """Counts into ``counter`` by ``(operation, call site)``: the methods in ``READS``, tensors
    made from host data on a given device (``torch.tensor(..., device=...)``: a copy that waits
    for a GPU), and on CUDA the syncs reported by ``torch.cuda.set_sync_debug_mode``."""
    saved = {name: getattr(torch.Tensor, name) for name in READS}
    factories = {name: getattr(torch, name) for name in ("tensor", "as_tensor")}

    def counting_method(name):
        def method(self, *args, **kwargs):
            counter[(name, _call_site())] += 1
            return saved[name](self, *args, **kwargs)

        return method

    def counting_factory(name):
        def factory(*args, **kwargs):
            device = kwargs.get("device")
            if device is not None and torch.device(device).type != "meta":  # meta: no data
                counter[(f"torch.{name}(device=...)", _call_site())] += 1
            return factories[name](*args, **kwargs)

        return factory

    for name in READS:
        setattr(torch.Tensor, name, counting_method(name))
    for name in factories:
        setattr(torch, name, counting_factory(name))
    cuda = torch.cuda.is_available()
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            if cuda:
                torch.cuda.set_sync_debug_mode("warn")
            yield
        for w in caught:
            if "synchroniz" in str(w.message):
                counter[("cuda sync", f"{Path(w.filename).name}:{w.lineno}")] += 1
    finally:
        if cuda:
            torch.cuda.set_sync_debug_mode("default")
        for name, method in saved.items():
            setattr(torch.Tensor, name, method)
        for name, factory in factories.items():
            setattr(torch, name, factory)


@pytest.fixture(scope="module")
def task():
    return get_task("mnist_mlp_sigmoid", dataset="mnist5k")


def truncation_reads(task, arch, kwargs, estimator, steps, device, observe_hook=None):
    """The host reads of the second of two truncations of ``steps`` inner steps (the first
    makes the estimator's state and the caches), 2 tasks, 1 antithetic pair per task."""
    torch.manual_seed(0)
    lopt = create(arch, **kwargs).to(device)
    settings = {} if estimator == "first" else {"sigma": 0.01, "num_pairs": 1}
    cfg = UnrollConfig(
        length=steps, meta_loss="mean", estimator=estimator, estimator_kwargs=settings
    )
    runner = make_estimator(cfg)
    data = task.load_data(device)
    inner = init_inner_state(task, lopt, [0, 1], device)
    samplers = [data.sampler(task.batch_size, seed=s) for s in (0, 1)]
    _, inner = meta_step_gradient(lopt, task, inner, samplers, cfg, estimator=runner, seed=0)
    if observe_hook is not None:
        observe_hook(lopt)
    counter: collections.Counter = collections.Counter()
    with host_reads(counter):
        result, _ = meta_step_gradient(lopt, task, inner, samplers, cfg, estimator=runner, seed=1)
    assert result.finite and result.inner_losses.shape[-1] == steps
    return counter


CASES = [
    ("lstm", {}, "first"),
    ("lstm", {}, "pes"),
    ("mlp", {}, "first"),
    ("mlp", {}, "pes"),
    ("mlp", {}, "es"),
    ("general", {"nominal": "lars"}, "first"),
    ("general", {"nominal": "lars"}, "pes"),
    ("general", {"nominal": "orthogonal"}, "first"),
    ("general", {"nominal": "orthogonal"}, "pes"),
    ("general", {"nominal": "orthogonal", "adaptive_step": True}, "first"),
    ("general", {"nominal": "lars", "adaptive_step": True}, "pes"),
    ("general", {"nominal": "adam", "factored": True}, "es"),
]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("arch, kwargs, estimator", CASES)
def test_no_host_read_per_inner_step(monkeypatch, task, device, arch, kwargs, estimator):
    monkeypatch.setenv("L2O_NATIVE", "0")
    short = truncation_reads(task, arch, kwargs, estimator, 2, device)
    long = truncation_reads(task, arch, kwargs, estimator, 5, device)
    assert long == short, f"reads that grow with the truncation: {dict(long - short)}"
    if device == "cpu":  # the summary, PES's restart check (a GPU adds the copy of ES's ε)
        assert sum(short.values()) <= 2, dict(short)


def test_a_read_per_inner_step_is_caught(monkeypatch, task):
    """The check above can fail: an ``observe`` that reads a value back is found."""
    monkeypatch.setenv("L2O_NATIVE", "0")

    def hook(lopt):
        observe = lopt.observe

        def reading_observe(grads, params, state):
            float(grads.abs().max())
            return observe(grads, params, state)

        lopt.observe = reading_observe

    short = truncation_reads(task, "mlp", {}, "pes", 2, "cpu", hook)
    long = truncation_reads(task, "mlp", {}, "pes", 5, "cpu", hook)
    grown = long - short
    assert sum(grown.values()) == 3 and all(op == "__float__" for op, _ in grown)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("estimator", ["pes", "first"])
def test_cuda_meta_gradient_agrees_with_the_cpu_one(monkeypatch, task, estimator):
    monkeypatch.setenv("L2O_NATIVE", "0")
    grads = {}
    for device in ("cpu", "cuda"):
        torch.manual_seed(0)
        lopt = create("mlp").to(device)
        settings = {} if estimator == "first" else {"sigma": 0.01, "num_pairs": 2}
        cfg = UnrollConfig(
            length=4, meta_loss="mean", estimator=estimator, estimator_kwargs=settings
        )
        runner = make_estimator(cfg)
        data = task.load_data(device)
        inner = init_inner_state(task, lopt, [0, 1], device)
        samplers = [data.sampler(task.batch_size, seed=s) for s in (0, 1)]
        for seed in range(2):
            lopt.zero_grad()
            _, inner = meta_step_gradient(
                lopt, task, inner, samplers, cfg, estimator=runner, seed=seed
            )
        grads[device] = torch.cat([p.grad.reshape(-1) for p in lopt.parameters()]).cpu()
    # float32 on two devices: the loss differences ES/PES divide by 2σ² carry the rounding
    torch.testing.assert_close(grads["cuda"], grads["cpu"], rtol=1e-2, atol=1e-4)
