"""``general``'s ``learned_step_size``: one learned factor ``exp(log_lr_offset)`` on the whole
step (nominal and residual), absent unless asked for; deployment equals the flat step and
checkpoints keep it."""

from __future__ import annotations

import math

import torch
from flat_step_check import assert_deployment_equals_flat_step
from test_general import model_and_batch, trained_like

from l2o.optimizers import ParamSpec, create, load_learned_optimizer, save_learned_optimizer

KWARGS = dict(nominal="lars", learned_schedule=False, learned_step_size=True, total_steps=5)


def test_the_offset_multiplies_the_whole_step():
    net = trained_like(**KWARGS)
    spec = ParamSpec(("a", "b"), ((3, 4), (5,)))
    params = torch.randn(2, spec.numel)
    grads = torch.randn_like(params)
    with torch.no_grad():
        net.log_lr_offset.zero_()
        base, _ = net.step(grads, params, net.init_state(params, spec))
        net.log_lr_offset.fill_(math.log(2.0))
        doubled, _ = net.step(grads, params, net.init_state(params, spec))
    assert float(base.abs().max()) > 0
    torch.testing.assert_close(doubled, 2.0 * base, rtol=1e-5, atol=1e-7)


def test_off_by_default_and_a_meta_parameter_when_on():
    assert create("general").log_lr_offset is None
    net = create("general", **KWARGS)
    assert float(net.log_lr_offset.detach()) == 0.0
    assert any(p is net.log_lr_offset for p in net.parameters())


def test_deployment_equals_the_flat_step():
    net = trained_like(**KWARGS)
    model, x, y = model_and_batch()
    assert_deployment_equals_flat_step(net, model, x, y, 7, 4, 1e-5, 1e-6)


def test_checkpoint_round_trip(tmp_path):
    net = trained_like(**KWARGS)
    loaded, _ = load_learned_optimizer(save_learned_optimizer(tmp_path / "lopt.pt", net))
    assert loaded.config()["learned_step_size"] is True
    torch.testing.assert_close(loaded.log_lr_offset, net.log_lr_offset)
