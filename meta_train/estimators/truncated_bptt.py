"""Truncated backpropagation through time: the exact meta-gradient of one truncation of
``cfg.length`` inner steps, first order (``"first"``) or second order (``"second"``).

Both must equal ``meta_train.inner_loop.reference.reference_meta_step`` (the tests check it); they
are
faster because of the structure below.

First order (``"first"``, exact for the first-order meta-gradient): the optimizer's inputs are
constants, so with u_j the update of step j and the meta-loss M(l_1, ..., l_K) of the losses
l_k = l(θ_{k-1}) where θ_k = θ_0 + Σ_{j≤k} u_j,

    dM/dφ = Σ_j c_jᵀ ∂u_j/∂φ,   c_j = Σ_{k>j} (∂M/∂l_k) g_k,

where g_k are the optimizee gradients the inner loop computed anyway. The estimator therefore
runs the K steps WITHOUT any graph (optimizee or optimizer), keeps the optimizer's per-step
features, and afterwards *replays* the optimizer's network over the whole truncation as one
differentiable sequence call, followed by one backward with the cotangents c_j. No optimizee
graph is ever built; the optimizer is differentiated once per truncation.

Second order (``"second"``): the plain differentiable unroll, gradients taken with
``create_graph=True`` (``torch.autograd.grad``, never ``backward(create_graph=True)``), one
backward of the meta-loss at the end of the truncation.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch.utils.checkpoint import checkpoint

from l2o.optimizers.base import LearnedOptimizerNet, State
from meta_train.estimators.base import Estimator
from meta_train.inner_loop.meta_losses import meta_loss, meta_loss_weights
from meta_train.inner_loop.unroll import (
    FunctionalOptimizee,
    InnerState,
    Regularizer,
    UnrollConfig,
    UnrollResult,
    finish_truncation,
    next_batches,
    regularization,
)


def _suffix_cotangents(grads: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """``c_j = Σ_{k>j} w_k g_k`` for ``grads [K, B, N]`` and ``weights [B, K]`` → ``[K, B, N]``."""
    weighted = grads * weights.t().unsqueeze(-1)
    suffix = weighted.flip(0).cumsum(0).flip(0)  # Σ_{k≥j}
    return torch.cat((suffix[1:], torch.zeros_like(suffix[:1])), dim=0)


def first_order(
    lopt: LearnedOptimizerNet,
    optimizee: FunctionalOptimizee,
    inner: InnerState,
    samplers: Sequence,
    cfg: UnrollConfig,
    regularizer: Regularizer | None = None,
) -> tuple[UnrollResult, InnerState]:
    """The exact first-order meta-gradient (see the module docstring).

    Without checkpointing, the optimizer's steps are recorded on its tape (``lopt.new_tape``:
    no graph at all) or, without one, run with a graph of the optimizer only (its inputs are
    constants, the optimizee has no graph); one backward with the c_j cotangents ends the
    truncation. With ``checkpoint_every``, the unroll runs without any graph and the
    network is replayed segment by segment (``_replay_backward``)."""
    if cfg.checkpoint_every == 0 or cfg.checkpoint_every >= cfg.length:
        return _first_order_direct(lopt, optimizee, inner, samplers, cfg, regularizer)

    steps = cfg.length
    device = inner.params.device
    core_keys = lopt.core_state_keys
    seg = cfg.checkpoint_every if 0 < cfg.checkpoint_every < steps else steps
    params, buffers, state = inner.params, inner.buffers, dict(inner.opt_state)
    batch, n = params.shape
    like = {"device": device, "dtype": params.dtype}  # buffers in the run's dtype
    feats = torch.empty(steps, batch, n, lopt.num_features, **like)
    grads = torch.empty(steps, batch, n, **like)
    losses = torch.empty(batch, steps, **like)
    starts: list[torch.Tensor] | None = [] if regularizer is not None else None
    boundaries: dict[int, State] = {}
    abs_update = torch.zeros((), device=device, dtype=params.dtype)
    with torch.no_grad():
        for k in range(steps):
            if k % seg == 0:
                boundaries[k] = {key: state[key] for key in core_keys}
            x, y = next_batches(samplers, device)
            loss, grad = optimizee.loss_and_grad(params, buffers, x, y)
            losses[:, k] = loss
            grads[k] = grad
            if starts is not None:
                starts.append(params)
            f, state = lopt.observe(grad, params, state)
            feats[k] = f
            upd, state = lopt.core(f.unsqueeze(0), state)
            abs_update += upd.abs().sum()
            params = params + upd[0]

    weights = meta_loss_weights(losses, cfg.meta_loss)  # [B, K], includes the 1/B average
    cot = _suffix_cotangents(grads, weights)
    del grads
    start_params = torch.stack(starts) if starts is not None else None
    reg_value = _replay_backward(
        lopt, inner, feats, cot, boundaries, seg, cfg, regularizer, start_params
    )
    return finish_truncation(inner, params, buffers, state, losses, cfg, reg_value, abs_update)


def _first_order_direct(
    lopt: LearnedOptimizerNet,
    optimizee: FunctionalOptimizee,
    inner: InnerState,
    samplers: Sequence,
    cfg: UnrollConfig,
    regularizer: Regularizer | None,
) -> tuple[UnrollResult, InnerState]:
    """One pass: the optimizer's steps are recorded on its tape (``lopt.new_tape``: no graph,
    one fused backward at the end) or, without one, run under autograd step by step."""
    steps = cfg.length
    device = inner.params.device
    meta_params = [p for p in lopt.parameters() if p.requires_grad]
    params, buffers, state = inner.params, inner.buffers, dict(inner.opt_state)
    batch, n = params.shape
    like = {"device": device, "dtype": params.dtype}  # buffers in the run's dtype
    grads = torch.empty(steps, batch, n, **like)
    losses = torch.empty(batch, steps, **like)
    tape = lopt.new_tape(steps, params)
    updates: list[torch.Tensor] = []
    starts: list[torch.Tensor] = []
    abs_update = torch.zeros((), device=device, dtype=params.dtype)
    for k in range(steps):
        x, y = next_batches(samplers, device)
        loss, grad = optimizee.loss_and_grad(params, buffers, x, y)
        with torch.no_grad():
            losses[:, k] = loss
            grads[k] = grad
            features, state = lopt.observe(grad, params, state)
        if tape is not None:
            upd, state = lopt.core_taped(features, state, tape)
        else:
            with torch.enable_grad():
                upd, state = lopt.core(features.unsqueeze(0), state)
                upd = upd[0]
            updates.append(upd)
        if regularizer is not None:
            starts.append(params)
        with torch.no_grad():
            abs_update += upd.abs().sum()
            params = params + upd
    weights = meta_loss_weights(losses, cfg.meta_loss)
    cot = _suffix_cotangents(grads, weights)
    del grads
    with torch.enable_grad():
        outputs = [lopt.taped_updates(tape)] if tape is not None else [torch.stack(updates)]
        cotangents = [cot]
        reg_total = None
        if regularizer is not None:
            reg_total = regularization(regularizer, inner.spec, outputs[0], torch.stack(starts))
            outputs.append(reg_total)
            cotangents.append(torch.ones_like(reg_total))
        torch.autograd.backward(outputs, cotangents, inputs=meta_params)
    return finish_truncation(inner, params, buffers, state, losses, cfg, reg_total, abs_update)


def _replay_backward(
    lopt: LearnedOptimizerNet,
    inner: InnerState,
    feats: torch.Tensor,
    cot: torch.Tensor,
    boundaries: dict[int, State],
    seg: int,
    cfg: UnrollConfig,
    regularizer: Regularizer | None,
    start_params: torch.Tensor | None,
) -> torch.Tensor | None:
    """Replay ``lopt.core`` over the truncation (in segments of ``seg`` steps, last first) and
    backpropagate the cotangents; returns the regularization value if any."""
    steps = feats.shape[0]
    meta_params = [p for p in lopt.parameters() if p.requires_grad]
    chunks = _coordinate_chunks(lopt, feats.shape[2], cfg.chunk_size, regularizer)
    reg_total: torch.Tensor | None = None
    for lo, hi in chunks:
        carry: dict[str, torch.Tensor] | None = None  # d(meta)/d(state at segment end)
        for a in reversed(range(0, steps, seg)):
            b = min(a + seg, steps)
            start = boundaries[a]
            if (lo, hi) != (0, inner.params.shape[1]):
                start = lopt.slice_state(start, lo, hi)
            leaves = {}
            if a > 0:  # the state at the segment start needs its gradient for the carry
                for k, v in start.items():
                    if v.is_floating_point():
                        leaves[k] = v.detach().requires_grad_(True)
                start = {**start, **leaves}
            with torch.enable_grad():
                upd, end = lopt.core(feats[a:b, :, lo:hi], start)
                outputs = [upd]
                cotangents = [cot[a:b, :, lo:hi]]
                if carry is not None:
                    for k, g in carry.items():
                        outputs.append(end[k])
                        cotangents.append(g)
                if regularizer is not None:
                    reg = regularization(regularizer, inner.spec, upd, start_params[a:b])
                    reg_total = reg.detach() if reg_total is None else reg_total + reg.detach()
                    outputs.append(reg)
                    cotangents.append(torch.ones_like(reg))
                inputs = meta_params + list(leaves.values())
                torch.autograd.backward(outputs, cotangents, inputs=inputs)
            carry = {k: v.grad for k, v in leaves.items() if v.grad is not None} if a > 0 else None
    return reg_total


def _coordinate_chunks(
    lopt: LearnedOptimizerNet, n: int, chunk_size: int, regularizer: Regularizer | None
) -> list[tuple[int, int]]:
    """Coordinate ranges to replay one at a time: all at once unless the optimizer is
    coordinatewise and no regularizer needs a whole step's updates together."""
    if chunk_size <= 0 or chunk_size >= n or not lopt.coordinatewise or regularizer is not None:
        return [(0, n)]
    return [(lo, min(lo + chunk_size, n)) for lo in range(0, n, chunk_size)]


def second_order(
    lopt: LearnedOptimizerNet,
    optimizee: FunctionalOptimizee,
    inner: InnerState,
    samplers: Sequence,
    cfg: UnrollConfig,
    regularizer: Regularizer | None = None,
) -> tuple[UnrollResult, InnerState]:
    """The full meta-gradient: through the optimizee's gradients and the optimizer's inputs."""
    device = inner.params.device
    meta_params = [p for p in lopt.parameters() if p.requires_grad]
    steps = cfg.length
    step_fn = lopt.step
    if cfg.checkpoint_every:
        step_fn = _checkpointed_step(lopt)
    with torch.enable_grad():
        params = inner.params.detach().requires_grad_(True)
        buffers, state = inner.buffers, dict(inner.opt_state)
        losses: list[torch.Tensor] = []
        reg_total = torch.zeros((), device=device, dtype=inner.params.dtype)
        abs_update = torch.zeros((), device=device, dtype=inner.params.dtype)
        for _ in range(steps):
            x, y = next_batches(samplers, device)
            loss = optimizee.loss(params, buffers, x, y)
            (grad,) = torch.autograd.grad(loss.sum(), params, create_graph=True)
            upd, state = step_fn(grad, params, state)
            if regularizer is not None:
                reg_total = reg_total + regularization(
                    regularizer, inner.spec, upd.unsqueeze(0), params.detach().unsqueeze(0)
                )
            abs_update = abs_update + upd.detach().abs().sum()
            params = params + upd
            losses.append(loss)
        stacked = torch.stack(losses, dim=1)  # [B, K]
        total = meta_loss(stacked, cfg.meta_loss).mean() + reg_total
        torch.autograd.backward(total, inputs=meta_params)
    reg_value = reg_total.detach() if regularizer is not None else None
    return finish_truncation(
        inner, params, buffers, state, stacked.detach(), cfg, reg_value, abs_update
    )


def _checkpointed_step(lopt: LearnedOptimizerNet):
    """``lopt.step`` whose internals are recomputed in the backward pass (saves memory)."""
    keys: list[str] = []

    def flat_step(grad, params, *values):
        out, new = lopt.step(grad, params, dict(zip(keys, values, strict=True)))
        return (out, *[new[k] for k in keys])

    def step(grad, params, state):
        keys[:] = list(state)
        out, *values = checkpoint(flat_step, grad, params, *state.values(), use_reentrant=False)
        return out, dict(zip(keys, values, strict=True))

    return step


class FirstOrder(Estimator):
    """``first``: the exact first-order meta-gradient (see :func:`first_order`)."""

    name = "first"

    def estimate(self, lopt, optimizee, inner, samplers, regularizer=None, seed=0):
        return first_order(lopt, optimizee, inner, samplers, self.cfg, regularizer)


class SecondOrder(Estimator):
    """``second``: the full meta-gradient (:func:`second_order`)."""

    name = "second"

    def estimate(self, lopt, optimizee, inner, samplers, regularizer=None, seed=0):
        return second_order(lopt, optimizee, inner, samplers, self.cfg, regularizer)
