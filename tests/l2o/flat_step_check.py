"""What the learned-optimizer tests share: ``LearnedOptimizer``'s per-tensor deployment step
against the network's step over the flat vector of all parameters (imported by the test
modules: their folder is on ``sys.path`` under pytest's default import mode)."""

from __future__ import annotations

import torch
from torch import nn

from l2o.optimizers import LearnedOptimizer
from l2o.optimizers.base import ParamSpec


def assert_deployment_equals_flat_step(net, model, x, y, chunk_size, steps, rtol, atol) -> None:
    """``steps`` steps of ``LearnedOptimizer(model, net)`` on the MSE of ``model(x)`` vs ``y``
    equal ``net.step`` on the flattened parameters, after every step."""
    spec = ParamSpec.from_module(model)
    flat = spec.flatten(dict(model.named_parameters())).detach()
    state = net.init_state(flat, spec)
    opt = LearnedOptimizer(model.parameters(), net, chunk_size=chunk_size)
    for _ in range(steps):
        opt.zero_grad()
        nn.functional.mse_loss(model(x), y).backward()
        grads = spec.flatten({n: p.grad for n, p in model.named_parameters()})
        with torch.no_grad():
            upd, state = net.step(grads, flat, state)
        flat = flat + upd
        opt.step()
        got = spec.flatten(dict(model.named_parameters())).detach()
        torch.testing.assert_close(got, flat, rtol=rtol, atol=atol)
