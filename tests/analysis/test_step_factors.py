"""``analysis.step_factors``: the adaptive step's log factors along a run, bounded, per tensor."""

from __future__ import annotations

import json

import pytest
import torch

from analysis import step_factors
from l2o.optimizers import create, save_learned_optimizer
from l2o.tasks import get_task


def _adaptive(gain: float):
    net = create("general", nominal="lars", adaptive_step=True, adaptive_bound=1.0)
    with torch.no_grad():
        net.step_gain.fill_(gain)
    return net


def test_factors_are_traced_per_tensor_every_k_steps_and_at_the_end():
    task = get_task("mnist_mlp_sigmoid")
    rows = step_factors.trace_step_factors(_adaptive(0.5), task, steps=7, seed=3, every=3)
    assert [r["step"] for r in rows] == [3, 6, 7]
    n_tensors = 4  # 784-20-10: two weight matrices, two biases
    for row in rows:
        assert len(row["log_factors"]) == n_tensors and row["seed"] == 3
        assert all(abs(f) <= 1.0 for f in row["log_factors"])
    assert any(f != 0 for f in rows[-1]["log_factors"])  # a gain of 0.5 moves them
    untrained = step_factors.trace_step_factors(_adaptive(0.0), task, steps=4, seed=3, every=2)
    assert all(f == 0 for r in untrained for f in r["log_factors"])


def test_a_net_without_the_adaptive_step_is_refused():
    with pytest.raises(ValueError, match="adaptive_step=True"):
        step_factors.trace_step_factors(create("general"), get_task("mnist_mlp_sigmoid"), 3, 0)


def test_the_command_prints_one_json_line_per_seed_and_step(tmp_path, capsys):
    path = tmp_path / "a.pt"
    save_learned_optimizer(path, _adaptive(0.2))
    argv = [str(path), "--task", "mnist_mlp_relu", "--steps", "4", "--every", "2"]
    rows = step_factors.main([*argv, "--seeds", "1", "2", "--variation", "batch_size=16"])
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert lines == rows
    assert [(r["seed"], r["step"]) for r in rows] == [(1, 2), (1, 4), (2, 2), (2, 4)]
    with pytest.raises(ValueError, match="key=value"):
        step_factors.main([*argv, "--variation", "batch_size"])
