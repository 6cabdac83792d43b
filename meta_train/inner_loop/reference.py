"""The reference meta-step: the specification every meta-gradient estimator must equal.

One truncation, written as plainly as possible: per-optimizee parameter dicts, one
``torch.autograd.grad`` per optimizee and inner step, the whole graph kept, ONE backward of the
meta-loss at the end, then clip and step. First order feeds the optimizer detached gradients and
parameters (its inputs are constants; its own state is still differentiated through time);
second order keeps them in the graph (Hessian terms). It is slow on purpose: the estimators in
``meta_train.estimators`` compute the same gradient vectorized, taped or replayed, and the tests
(``tests/meta_train/test_meta_grad.py``) and ``benchmarks/meta_train_speed.py`` hold them to it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch.func import functional_call

from l2o.optimizers.base import LearnedOptimizerNet
from meta_train.inner_loop.meta_losses import meta_loss
from meta_train.inner_loop.unroll import InnerState, Regularizer, UnrollConfig


def reference_meta_gradient(
    lopt: LearnedOptimizerNet,
    task,
    inner: InnerState,
    samplers: Sequence,
    cfg: UnrollConfig,
    regularizer: Regularizer | None = None,
) -> tuple[float, InnerState]:
    """Accumulate d(mean_b meta-loss + regularization)/dφ into ``lopt``'s ``.grad`` for
    ``cfg.length`` inner steps (estimator ``first`` or ``second``); returns the meta-loss and
    the new inner state (detached)."""
    if cfg.estimator not in ("first", "second"):
        raise ValueError(f"the reference computes truncated BPTT only, not {cfg.estimator!r}")
    model = task.make_model(0, inner.params.device)
    batch = inner.batch_size
    thetas = [
        {n: p.detach().requires_grad_(True) for n, p in inner.named_params(b).items()}
        for b in range(batch)
    ]
    buffers = [{k: v[b] for k, v in inner.buffers.items()} for b in range(batch)]
    state = dict(inner.opt_state)
    losses: list[list[torch.Tensor]] = [[] for _ in range(batch)]
    reg_total = torch.zeros((), device=inner.params.device)
    for _ in range(cfg.length):
        grads, flats = [], []
        for b, theta in enumerate(thetas):
            x, y = samplers[b].next()
            loss = task.loss(functional_call(model, (theta, buffers[b]), (x,)), y)
            second = cfg.estimator == "second"
            g = torch.autograd.grad(
                loss, list(theta.values()), create_graph=second, retain_graph=True
            )
            losses[b].append(loss)
            grads.append(inner.spec.flatten(dict(zip(theta, g, strict=True))))
            flats.append(inner.spec.flatten(theta))
        g_all, p_all = torch.stack(grads), torch.stack(flats)
        if cfg.estimator == "first":
            g_all, p_all = g_all.detach(), p_all.detach()
        update, state = lopt.step(g_all, p_all, state)
        for b, theta in enumerate(thetas):
            u = inner.spec.unflatten(update[b])
            if regularizer is not None:
                reg_total = reg_total + regularizer(u, {n: t.detach() for n, t in theta.items()})
            thetas[b] = {n: theta[n] + u[n] for n in theta}
    per_optimizee = meta_loss(torch.stack([torch.stack(ls) for ls in losses]), cfg.meta_loss)
    total = per_optimizee.mean() + reg_total / batch
    total.backward(inputs=[p for p in lopt.parameters() if p.requires_grad])
    new_inner = InnerState(
        params=torch.stack([inner.spec.flatten(t) for t in thetas]).detach(),
        buffers={k: v.detach() for k, v in inner.buffers.items()},
        opt_state={k: v.detach() for k, v in state.items()},
        step=inner.step + cfg.length,
        seeds=inner.seeds,
        spec=inner.spec,
    )
    return float(per_optimizee.mean().detach()), new_inner


def reference_meta_step(
    lopt: LearnedOptimizerNet,
    meta_opt: torch.optim.Optimizer,
    task,
    inner: InnerState,
    samplers: Sequence,
    cfg: UnrollConfig,
    grad_clip_norm: float | None = 1.0,
    regularizer: Regularizer | None = None,
) -> tuple[float, InnerState]:
    """One whole meta-step: zero, :func:`reference_meta_gradient`, clip, step."""
    meta_opt.zero_grad(set_to_none=True)
    value, new_inner = reference_meta_gradient(lopt, task, inner, samplers, cfg, regularizer)
    clip = grad_clip_norm if grad_clip_norm is not None else math.inf
    torch.nn.utils.clip_grad_norm_(lopt.parameters(), clip)
    meta_opt.step()
    return value, new_inner
