"""GAP: 'default' is torch to the bit; the switch modes follow the seed's J formulas and every
choice the module docstring documents, checked against a plain float64 re-implementation and by
targeted cases."""

from __future__ import annotations

import math

import pytest
import torch
from optim_testing import make_params, max_relative_error, trajectory

from baselines import GAPSGDM, GAPAdam

# --- 'default' is torch's optimizer ------------------------------------------------------------


@pytest.mark.parametrize(
    "torch_factory, gap_factory",
    [
        (
            lambda p: torch.optim.Adam(p, lr=1e-2, betas=(0.8, 0.99), weight_decay=0.1),
            lambda p: GAPAdam(p, lr=1e-2, betas=(0.8, 0.99), weight_decay=0.1),
        ),
        (
            lambda p: torch.optim.AdamW(p, lr=1e-2, weight_decay=0.1, eps=1e-6),
            lambda p: GAPAdam(p, lr=1e-2, weight_decay=0.1, eps=1e-6, decoupled_weight_decay=True),
        ),
        (lambda p: torch.optim.SGD(p, lr=1e-2), lambda p: GAPSGDM(p, lr=1e-2)),
        (
            lambda p: torch.optim.SGD(p, lr=1e-2, momentum=0.9, dampening=0.1, weight_decay=0.01),
            lambda p: GAPSGDM(p, lr=1e-2, momentum=0.9, dampening=0.1, weight_decay=0.01),
        ),
        (
            lambda p: torch.optim.SGD(p, lr=1e-2, momentum=0.9, nesterov=True),
            lambda p: GAPSGDM(p, lr=1e-2, momentum=0.9, nesterov=True),
        ),
    ],
)
def test_default_type_equals_torch_to_the_bit(torch_factory, gap_factory):
    expected, _ = trajectory(torch_factory, steps=50)
    actual, optimizer = trajectory(gap_factory, steps=50)
    for a, e in zip(actual, expected):
        assert torch.equal(a, e)
    assert optimizer.param_groups[0]["last_choice"] is None


def test_switch_with_one_candidate_is_the_plain_optimizer():
    adam, _ = trajectory(lambda p: torch.optim.Adam(p, lr=1e-2))
    gap, _ = trajectory(lambda p: GAPAdam(p, lr=1e-2, type="switch", betas=[(0.9, 0.999)]))
    assert max_relative_error(gap, adam) < 1e-6
    sgd, _ = trajectory(lambda p: torch.optim.SGD(p, lr=1e-2, momentum=0.9, nesterov=True))
    gap, _ = trajectory(
        lambda p: GAPSGDM(p, lr=1e-2, type="switch_parameter_wise", momentum=[0.9], nesterov=True)
    )
    assert max_relative_error(gap, sgd) < 1e-6


# --- a plain re-implementation of the documented algorithm (float64) -----------------------------


def _adam_candidates(state, g, t, candidates, eps):
    """Update K (m, v) pairs; return J per candidate and the update directions (before lr)."""
    js, updates = [], []
    for j, (b1, b2) in enumerate(candidates):
        state["m"][j] = b1 * state["m"][j] + (1 - b1) * g
        state["v"][j] = b2 * state["v"][j] + (1 - b2) * g * g
        denom = (state["v"][j] / (1 - b2**t)).sqrt() + eps
        update = state["m"][j] / (1 - b1**t) / denom
        w = (1 / denom).mean()
        js.append(float((g * update).sum() * math.sqrt((1 - b1**2) / w)))
        updates.append(update)
    return js, updates


def _sgdm_candidates(state, g, t, momenta, dampening, nesterov):
    js, updates = [], []
    for j, m in enumerate(momenta):
        buf = g.clone() if t == 1 else m * state["m"][j] + (1 - dampening) * g
        state["m"][j] = buf
        js.append(float((g * buf).sum() * math.sqrt(1 - m**2)))
        updates.append(g + m * buf if nesterov else buf)
    return js, updates


def _reference(kind, params, stream, *, mode, lr, candidates, settings):
    """Returns the final parameters, the choice of every step and the number of soft resets."""
    params = [p.detach().clone() for p in params]
    k = len(candidates)
    states = [
        {"m": [torch.zeros_like(p)] * k, "v": [torch.zeros_like(p)] * k, "count": 0} for p in params
    ]
    group = {"count": 0, "smoothed": None}
    history, reset_count = [], 0
    factors = [math.sqrt(1 - (c[0] if kind == "adam" else c) ** 2) for c in candidates]
    for t, grads in enumerate(stream, start=1):
        rows, directions = [], []
        for p, g, state in zip(params, grads, states):
            g = g + 0.1 * p
            wd = settings.get("weight_decay", 0.0)
            if kind == "adam":
                if settings.get("decoupled_weight_decay") and wd:
                    p.mul_(1 - lr * wd)
                elif wd:
                    g = g + wd * p
                js, ups = _adam_candidates(state, g, t, candidates, settings.get("eps", 1e-8))
            else:
                g = g + wd * p
                ups_args = (settings.get("dampening", 0.0), settings.get("nesterov", False))
                js, ups = _sgdm_candidates(state, g, t, candidates, *ups_args)
            rows.append(js)
            directions.append(ups)
        threshold = settings["hysteresis_threshold"]
        if mode == "switch":
            total = [sum(column) for column in zip(*rows)]
            decisive, ema = total, settings.get("J_ema", 0.0)
            if ema > 0 and group["smoothed"] is not None:
                decisive = [ema * a + (1 - ema) * b for a, b in zip(group["smoothed"], total)]
            group["smoothed"] = decisive
            choice = max(range(k), key=lambda j: (decisive[j], -j))
            choices = [choice] * len(params)
            group["count"] = group["count"] + 1 if total[choice] < 0 else 0
            resets = [group["count"] >= threshold] * len(params)
            group["count"] = 0 if resets[0] else group["count"]
        else:
            choices, resets = [], []
            for row, state in zip(rows, states):
                choice = max(range(k), key=lambda j: (row[j], -j))
                state["count"] = state["count"] + 1 if row[choice] < 0 else 0
                resets.append(state["count"] >= threshold)
                state["count"] = 0 if resets[-1] else state["count"]
                choices.append(choice)
        for p, ups, choice in zip(params, directions, choices):
            factor = factors[choice] if settings.get("lr_modulation") else 1.0
            p.sub_(lr * factor * ups[choice])
        soft, mode_v = settings["soft_reset"], settings.get("second_order_momentum_reset_mode")
        reset_count += sum(resets)
        for state, reset in zip(states, resets):
            if reset:
                state["m"] = [m * soft for m in state["m"]]
                if mode_v in ("same", "square"):
                    scale = soft if mode_v == "same" else soft**2
                    state["v"] = [v * scale for v in state["v"]]
        history.append(choices[0] if mode == "switch" else choices)
    return params, history, reset_count


def _flip_stream(params, steps, flip_at):
    """A steady gradient that reverses at ``flip_at`` (negative J for a while), plus noise."""
    generator = torch.Generator().manual_seed(5)
    base = [torch.randn(p.shape, generator=generator, dtype=p.dtype) for p in params]
    return [
        [
            (1.0 if t < flip_at else -1.0) * b
            + 0.05 * torch.randn(b.shape, generator=generator, dtype=b.dtype)
            for b in base
        ]
        for t in range(steps)
    ]


# (type, candidates, settings, whether the flip makes the hysteresis fire)
ADAM_CASES = [
    ("switch", [(0.5, 0.999), (0.9, 0.999), (0.99, 0.999)], dict(J_ema=0.8), False),
    ("switch", [(0.9, 0.99), (0.99, 0.999)], dict(weight_decay=0.05, lr_modulation=True), True),
    ("switch", [(0.9, 0.999), (0.9, 0.999)], dict(hysteresis_threshold=2), True),
    (
        "switch_parameter_wise",
        [(0.9, 0.99), (0.95, 0.999)],
        dict(
            weight_decay=0.05, decoupled_weight_decay=True, second_order_momentum_reset_mode="same"
        ),
        True,
    ),
    ("switch_parameter_wise", [(0.5, 0.999), (0.9, 0.999)], dict(), False),
    (
        "switch_parameter_wise",
        [(0.9, 0.999)],
        dict(second_order_momentum_reset_mode="square"),
        True,
    ),
]
SGDM_CASES = [
    ("switch", [0.5, 0.9, 0.99], dict(J_ema=0.5), False),
    ("switch", [0.9, 0.99], dict(nesterov=True, lr_modulation=True), True),
    ("switch_parameter_wise", [0.0, 0.8, 0.95], dict(dampening=0.1, weight_decay=0.01), False),
    ("switch_parameter_wise", [0.8, 0.95], dict(weight_decay=0.01), True),
]


def _run_with_history(optimizer, params, stream):
    history = []
    for grads in stream:
        for p, g in zip(params, grads):
            p.grad = g + 0.1 * p.detach()
        optimizer.step()
        last = optimizer.param_groups[0]["last_choice"]
        history.append(list(last) if isinstance(last, list) else last)
    return [p.detach().clone() for p in params], history


@pytest.mark.parametrize("mode, candidates, extra, fires", ADAM_CASES)
def test_gap_adam_switch_follows_the_documented_algorithm(mode, candidates, extra, fires):
    settings = {"soft_reset": 0.5, "hysteresis_threshold": 3, **extra}
    params = make_params(dtype=torch.float64)
    stream = _flip_stream(params, 40, flip_at=20)
    expected, expected_history, resets = _reference(
        "adam", params, stream, mode=mode, lr=1e-2, candidates=candidates, settings=settings
    )
    optimizer = GAPAdam(params, lr=1e-2, type=mode, betas=candidates, **settings)
    actual, history = _run_with_history(optimizer, params, stream)
    assert history == expected_history
    assert max_relative_error(actual, expected) < 1e-9
    assert (resets > 0) == fires


@pytest.mark.parametrize("mode, momenta, extra, fires", SGDM_CASES)
def test_gap_sgdm_switch_follows_the_documented_algorithm(mode, momenta, extra, fires):
    settings = {"soft_reset": 0.5, "hysteresis_threshold": 2, **extra}
    params = make_params(dtype=torch.float64)
    stream = _flip_stream(params, 40, flip_at=20)
    expected, expected_history, resets = _reference(
        "sgdm", params, stream, mode=mode, lr=1e-2, candidates=momenta, settings=settings
    )
    optimizer = GAPSGDM(params, lr=1e-2, type=mode, momentum=momenta, **settings)
    actual, history = _run_with_history(optimizer, params, stream)
    assert history == expected_history
    assert max_relative_error(actual, expected) < 1e-9
    assert (resets > 0) == fires


# --- targeted checks of each documented choice ---------------------------------------------------


def test_first_step_prefers_the_smallest_beta1():
    """Choice 1: after one step every candidate's bias-corrected update is g / (|g| + eps), so
    J_j differs only by sqrt(1 - beta1_j^2): the smallest beta1 wins."""
    param = torch.nn.Parameter(torch.randn(10))
    optimizer = GAPAdam([param], type="switch", betas=[(0.9, 0.999), (0.5, 0.999), (0.99, 0.999)])
    param.grad = torch.randn(10)
    optimizer.step()
    assert optimizer.param_groups[0]["last_choice"] == 1


def test_ties_go_to_the_lowest_index():
    param = torch.nn.Parameter(torch.randn(10))
    optimizer = GAPAdam([param], type="switch", betas=[(0.9, 0.999), (0.9, 0.999)])
    for _ in range(3):
        param.grad = torch.randn(10)
        optimizer.step()
        assert optimizer.param_groups[0]["last_choice"] == 0


def test_global_switch_sums_j_and_smooths_it():
    params = make_params(dtype=torch.float64)
    optimizer = GAPSGDM(params, type="switch", momentum=[0.5, 0.9], J_ema=0.9)
    generator = torch.Generator().manual_seed(0)
    previous = None
    for _ in range(4):
        grads = [torch.randn(p.shape, generator=generator, dtype=p.dtype) for p in params]
        for p, g in zip(params, grads):
            p.grad = g
        optimizer.step()
        buffers = [optimizer.state[p]["momentum_buffer"] for p in params]
        raw = [
            sum(float((g * b[j]).sum()) for g, b in zip(grads, buffers)) * math.sqrt(1 - m**2)
            for j, m in enumerate([0.5, 0.9])
        ]
        smoothed = raw if previous is None else [0.9 * a + 0.1 * b for a, b in zip(previous, raw)]
        assert optimizer.param_groups[0]["J_smoothed"] == pytest.approx(smoothed, rel=1e-12)
        previous = smoothed


def test_hysteresis_counts_negative_steps_and_resets_after_the_update():
    """Choice 5: one candidate (m = 0.9), threshold 3: the third consecutive negative J scales the
    buffer by soft_reset after that step's update."""
    param = torch.nn.Parameter(torch.zeros(1, dtype=torch.float64))
    optimizer = GAPSGDM(
        [param], lr=1.0, type="switch", momentum=[0.9], soft_reset=0.5, hysteresis_threshold=3
    )
    buffer, counts = 0.0, []
    for t in range(12):
        grad = 1.0 if t < 6 else -1.0
        before = param.item()
        param.grad = torch.tensor([grad], dtype=torch.float64)
        optimizer.step()
        buffer = grad if t == 0 else 0.9 * buffer + grad
        assert before - param.item() == pytest.approx(buffer)  # the update used the unreset buffer
        counts.append(optimizer.param_groups[0]["hysteresis_count"])
        if counts[-1] == 0 and grad * buffer < 0:
            buffer *= 0.5  # the reset
        assert optimizer.state[param]["momentum_buffer"][0].item() == pytest.approx(buffer)
    assert counts[6:9] == [1, 2, 0]  # third negative step: reset, the counter restarts


@pytest.mark.parametrize("mode, factor", [("none", 1.0), ("same", 0.5), ("square", 0.25)])
def test_second_moment_reset_modes(mode, factor):
    def run(reset_mode):
        param = torch.nn.Parameter(torch.zeros(3, dtype=torch.float64))
        optimizer = GAPAdam(
            [param],
            type="switch_parameter_wise",
            betas=[(0.9, 0.999)],
            soft_reset=0.5,
            hysteresis_threshold=2,
            second_order_momentum_reset_mode=reset_mode,
        )
        for t in range(30):
            param.grad = torch.full((3,), 1.0 if t < 15 else -1.0, dtype=torch.float64)
            optimizer.step()
            if optimizer.state[param]["hysteresis_count"] == 0 and t >= 15:
                return optimizer.state[param]
        raise AssertionError("the hysteresis never triggered")

    untouched, reset = run("none"), run(mode)
    assert torch.equal(reset["exp_avg"][0], untouched["exp_avg"][0])
    torch.testing.assert_close(reset["exp_avg_sq"][0], untouched["exp_avg_sq"][0] * factor)


def test_lr_modulation_scales_the_chosen_candidates_lr():
    factor = math.sqrt(1 - 0.9**2)
    betas = [(0.9, 0.999)]
    modulated, _ = trajectory(
        lambda p: GAPAdam(p, lr=1e-2, type="switch", betas=betas, lr_modulation=True)
    )
    scaled, _ = trajectory(lambda p: GAPAdam(p, lr=1e-2 * factor, type="switch", betas=betas))
    for a, b in zip(modulated, scaled):
        assert torch.equal(a, b)


def test_parameter_wise_last_choice_is_aligned_with_the_group():
    params = make_params()
    optimizer = GAPAdam(params, type="switch_parameter_wise", betas=[(0.9, 0.999), (0.5, 0.999)])
    params[0].grad, params[2].grad = torch.randn_like(params[0]), torch.randn_like(params[2])
    optimizer.step()
    assert optimizer.param_groups[0]["last_choice"] == [1, None, 1]


def test_a_single_candidate_may_be_given_without_a_list():
    pair, _ = trajectory(lambda p: GAPAdam(p, lr=1e-2, type="switch", betas=(0.8, 0.99)))
    listed, _ = trajectory(lambda p: GAPAdam(p, lr=1e-2, type="switch", betas=[(0.8, 0.99)]))
    number, _ = trajectory(lambda p: GAPSGDM(p, lr=1e-2, type="switch", momentum=0.9))
    one, _ = trajectory(lambda p: GAPSGDM(p, lr=1e-2, type="switch", momentum=[0.9]))
    for a, b in [*zip(pair, listed), *zip(number, one)]:
        assert torch.equal(a, b)


def test_shared_beta2_stores_one_second_moment():
    params = make_params()
    shared = GAPAdam(params, type="switch", betas=[(0.5, 0.999), (0.9, 0.999)])
    distinct = GAPAdam(params, type="switch", betas=[(0.5, 0.99), (0.9, 0.999)])
    for p in params:
        p.grad = torch.ones_like(p)
    shared.step()
    distinct.step()
    assert len(shared.state[params[0]]["exp_avg"]) == 2
    assert len(shared.state[params[0]]["exp_avg_sq"]) == 1
    assert len(distinct.state[params[0]]["exp_avg_sq"]) == 2


@pytest.mark.parametrize(
    "cls, kwargs",
    [
        (GAPAdam, dict(type="bogus")),
        (GAPAdam, dict(betas=[(0.9, 0.999), (0.5, 0.999)])),  # a list needs a switch type
        (GAPAdam, dict(type="switch", betas=[(0.9, 1.0)])),
        (GAPAdam, dict(type="switch", betas=[])),
        (GAPAdam, dict(second_order_momentum_reset_mode="cube")),
        (GAPAdam, dict(J_ema=1.0)),
        (GAPAdam, dict(hysteresis_threshold=0)),
        (GAPAdam, dict(soft_reset=1.5)),
        (GAPAdam, dict(lr_modulation="yes")),
        (GAPSGDM, dict(momentum=[0.9, 0.5])),  # a list needs a switch type
        (GAPSGDM, dict(type="switch", momentum=[0.9, 1.0])),
        (GAPSGDM, dict(momentum=0.9, nesterov=True, dampening=0.1)),
        (GAPSGDM, dict(type="switch", momentum=[0.0, 0.9], nesterov=True)),
    ],
)
def test_bad_hyperparameters_are_refused(cls, kwargs):
    with pytest.raises(ValueError):
        cls([torch.nn.Parameter(torch.ones(2))], **kwargs)
