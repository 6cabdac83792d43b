"""The learned optimizers' step counter is an integer; the math on it runs in the run's dtype."""

from __future__ import annotations

import math

import pytest
import torch

import l2o.optimizers as lo
from l2o.optimizers.features import TIME_SCALES


@pytest.mark.parametrize("arch", ["lstm", "mlp"])
def test_the_counter_is_an_integer_that_keeps_counting_past_2_to_the_24(arch):
    kwargs = {"extra_inputs": ["adam", "time"]} if arch == "lstm" else {}
    net = lo.create(arch, **kwargs)
    params = torch.zeros(1, 4)
    state = net.init_state(params)
    assert state["t"].dtype == torch.long
    state["t"] = torch.full_like(state["t"], 2**24)  # a float32 counter stops here: 2**24 + 1
    _, state = net.observe(torch.ones_like(params), params, state)
    assert int(state["t"]) == 2**24 + 1


def test_adam_bias_correction_and_time_features_are_exact_in_float64():
    net = lo.create("lstm", extra_inputs=["adam", "time"], beta1=0.9, beta2=0.999)
    params = torch.zeros(1, 3, dtype=torch.float64)
    state = net.init_state(params)
    g = torch.tensor([[1e-3, -2.0, 0.5]], dtype=torch.float64)
    m = v = torch.zeros_like(g)
    for _ in range(3):
        feats, state = net.observe(g, params, state)
        m, v = 0.9 * m + 0.1 * g, 0.999 * v + 0.001 * g * g
    assert feats.dtype == torch.float64
    m_hat, v_hat = m / (1 - 0.9**3), v / (1 - 0.999**3)
    expected = (m_hat / (v_hat.sqrt() + 1e-8)).clamp(-5, 5)
    adam = feats[..., 2]  # after the two log-sign features of the gradient
    torch.testing.assert_close(adam, expected, rtol=1e-12, atol=0)
    times = feats[0, 0, -len(TIME_SCALES) :]
    exact = torch.tensor([math.tanh(3 / s - 1) for s in TIME_SCALES], dtype=torch.float64)
    torch.testing.assert_close(times, exact, rtol=1e-14, atol=0)
