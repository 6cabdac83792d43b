"""Will one meta-step fit in memory? Checked before a run folder exists (``trainer.preflight``),
so that an unbounded ``schedule.meta_batch`` or ``unroll.length`` is one clear line, not an
out-of-memory kill minutes into the run."""

from __future__ import annotations

import os
from contextlib import contextmanager

import torch

from l2o.optimizers.base import LearnedOptimizerNet
from meta_train.inner_loop.unroll import UnrollConfig, functional_optimizee

GIB = 2**30


@contextmanager
def _saved_bytes(exclude: list[torch.Tensor]):
    """Counts the bytes autograd saves for backward inside the block (each storage once;
    ``exclude``'s storages, e.g. the meta-parameters, not at all): yields a list whose only
    item is the running total."""
    seen = {t.untyped_storage().data_ptr() for t in exclude}
    total = [0]

    def pack(t: torch.Tensor):
        storage = t.untyped_storage()
        if storage.data_ptr() not in seen:
            seen.add(storage.data_ptr())
            total[0] += storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        yield total


def meta_step_bytes(
    unroll: UnrollConfig, meta_batch: int, task, lopt: LearnedOptimizerNet, x, y
) -> int:
    """Estimated peak bytes of one meta-step: B = ``meta_batch`` optimizees of N parameters
    unrolled for K = ``unroll.length`` steps, on minibatches like ``x, y`` (one optimizee's).

    The model measures ONE inner step of ONE optimizee (the bytes autograd saves, counted with
    saved-tensor hooks on the run's device) and scales it by what the estimator keeps:

    * ``first`` (no checkpointing): per optimizee and step, the gradient buffer and the
      temporaries of the cotangents c_j (5·N values at the peak) and the optimizer's graph of
      ``core`` (its saved activations; the LSTM's native tape keeps fewer: inputs and states
      only), so B·K·(5·N·itemsize + core); with ``checkpoint_every = s``: the features too
      (N·F values) instead of the graph, the optimizer's state at each of the ⌈K/s⌉ segment
      starts, and one replayed segment, s steps of ``core`` over the whole batch;
    * ``second``: the whole graph over K steps, so B·K·(optimizee loss and its
      ``create_graph`` gradient + ``step``); with checkpointing the optimizer's share per step
      is its inputs only (gradient, parameters, state);
    * any other estimator (ES, PES, ...): the K-independent part only (a lower bound: such
      estimators keep no per-step graph here, and the check must never refuse a run that fits);

    plus the B optimizees' parameters and optimizer state, and one step's transient (one
    optimizee loss-and-gradient per optimizee). The data set is already on the device when
    this runs, so it is in the available memory already. Not modelled: the regularizer, the
    allocator's fragmentation and Python's own footprint (tens of MB).

    Measured once against the peak RSS growth of one CPU meta-step (float32,
    ``mnist_mlp_sigmoid``, N = 15,910; ``benchmarks/meta_step_memory.py``, each case a fresh
    process, ``OMP_NUM_THREADS=1``), estimate / measured:
    ``default`` (LSTM 2×20, F = 5) B=4 K=20 first: 1.18 (native tape), 0.72 (``L2O_NATIVE=0``);
    B=8 K=25 first: 1.30 (tape), 1.07 (autograd); B=8 K=40 first ``checkpoint_every=5``: 0.79;
    B=4 K=20 second: 2.17, with ``checkpoint_every=1``: 1.53; ``tiny`` (LSTM 2×8) B=16 K=50
    first: 1.39 (repeated runs vary by ~20%: the allocator). So the estimate is within a factor
    of 2.2 either way of the measured peak, which is all a refusal needs: it only refuses when
    the estimate exceeds the memory.
    """
    device = x.device
    optimizee = functional_optimizee(task, device)
    params, buffers = optimizee.init_params([0])  # [1, N]
    n = params.shape[1]
    item = params.element_size()
    with torch.no_grad():
        state = lopt.init_state(params, optimizee.spec)
    meta = list(lopt.parameters())
    xb, yb = x.unsqueeze(0), y.unsqueeze(0)
    with torch.enable_grad():
        p = params.detach().requires_grad_(True)
        with _saved_bytes(meta) as loss_saved:
            loss = optimizee.loss(p, buffers, xb, yb)
            (grad,) = torch.autograd.grad(loss.sum(), p, create_graph=True)
        with _saved_bytes(meta) as step_saved:
            lopt.step(grad, p, state)
        g, q = grad.detach(), params.detach()
        features, core_state = lopt.observe(g, q, state)
        with _saved_bytes(meta) as core_saved:
            lopt.core(features.unsqueeze(0), core_state)
    state_bytes = sum(v.nbytes for v in state.values() if isinstance(v, torch.Tensor))
    persistent = meta_batch * (2 * n * item + state_bytes)  # parameters, gradient, state
    transient = meta_batch * loss_saved[0]
    b, k, ckpt = meta_batch, unroll.length, unroll.checkpoint_every
    if unroll.estimator == "first":
        cotangents = 5 * n * item  # the gradients and the c_j's temporaries (weights, cumsum)
        if 0 < ckpt < k:
            features = n * item * lopt.num_features
            segments = -(-k // ckpt)  # the state at each segment start
            keeps = b * k * (cotangents + features) + b * segments * state_bytes
            keeps += b * ckpt * core_saved[0]  # one segment replayed
        else:
            keeps = b * k * (cotangents + core_saved[0])
    elif unroll.estimator == "second":
        opt_share = (2 * n * item + state_bytes) if ckpt else step_saved[0]
        keeps = b * k * (loss_saved[0] + opt_share)
    else:
        keeps = 0
    return persistent + transient + keeps


def available_bytes(device: torch.device) -> tuple[int, str]:
    """Memory a run on ``device`` may use, and where the figure comes from: the free memory of
    a CUDA device; on the CPU psutil's available memory if installed, else the physical memory
    (``sysconf``), capped by a cgroup v2 limit if one is set."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free, f"free on {device}"
    try:
        import psutil

        avail, source = psutil.virtual_memory().available, "available RAM"
    except ImportError:
        avail = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        source = "physical RAM"
    try:
        with open("/sys/fs/cgroup/memory.max") as f:
            limit = f.read().strip()
    except OSError:
        limit = "max"
    if limit.isdigit() and int(limit) < avail:
        return int(limit), "the cgroup's memory limit"
    return avail, source


def check_fits(
    unroll: UnrollConfig, meta_batch: int, task, lopt: LearnedOptimizerNet, x, y
) -> str | None:
    """None if one meta-step's estimate (:func:`meta_step_bytes`) fits the device's memory,
    else the one-line reason, naming the keys to lower."""
    need = meta_step_bytes(unroll, meta_batch, task, lopt, x, y)
    have, source = available_bytes(x.device)
    if need <= have:
        return None
    hint = " or set unroll.checkpoint_every" if unroll.estimator in ("first", "second") else ""
    return (
        f"schedule.meta_batch ({meta_batch}) × unroll.length ({unroll.length}): one meta-step "
        f"needs about {need / GIB:.1f} GiB (estimator {unroll.estimator!r}), over the "
        f"{have / GIB:.1f} GiB {source}; lower schedule.meta_batch or unroll.length{hint}"
    )
