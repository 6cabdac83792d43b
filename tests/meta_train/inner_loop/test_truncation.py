"""Horizon schedules and desynchronized task clocks."""

from __future__ import annotations

import math

import pytest
import torch

from meta_train.inner_loop.truncation import HorizonSchedule, TaskClocks


def test_parse_fixed_and_range():
    assert HorizonSchedule.parse(200) == HorizonSchedule(200, 200)
    assert HorizonSchedule.parse({"min": 100, "max": 2000}) == HorizonSchedule(100, 2000)
    for bad in ({"min": 5}, {"min": 10, "max": 5}, 0, "200", True):
        with pytest.raises(ValueError, match="horizon"):
            HorizonSchedule.parse(bad)
    for bad in ({"min": 6.5, "max": 12}, {"min": 6, "max": "12"}, {"min": True, "max": 12}):
        with pytest.raises(ValueError, match="must be an integer number of steps"):
            HorizonSchedule.parse(bad)  # 6.5 was silently truncated to 6


def test_log_uniform_horizons_are_whole_truncations_in_range():
    sched = HorizonSchedule(100, 2000)
    gen = torch.Generator().manual_seed(0)
    draws = [sched.sample(gen, 10) for _ in range(2000)]
    assert all(h % 10 == 0 and 100 <= h <= 2000 for h in draws)
    logs = torch.tensor([math.log(h) for h in draws])
    # log-uniform: the median of log h sits at the middle of [log 100, log 2000]
    middle = (math.log(100) + math.log(2000)) / 2
    assert abs(float(logs.median()) - middle) < 0.1
    assert HorizonSchedule(200, 200).sample(gen, 20) == 200
    assert HorizonSchedule(5, 5).sample(gen, 20) == 20  # at least one truncation


def test_desynchronized_restarts_keep_each_tasks_own_counter():
    clocks = TaskClocks(6, HorizonSchedule(40, 40), unroll=10, seed=3, desync=True)
    assert clocks.begin() == [True] * 6
    first = list(clocks.horizons)
    assert len(set(first)) > 1  # first runs cut short by different offsets
    assert all(h % 10 == 0 and 10 <= h <= 40 for h in first)
    history = []
    for _ in range(12):
        restart = clocks.begin()
        history.append((restart, list(clocks.steps)))
        clocks.advance()
    for task in range(6):
        steps = [s[task] for _, s in history]
        restarts = [r[task] for r, _ in history]
        # every task counts its own steps from its own restarts
        for k in range(1, len(steps)):
            assert steps[k] == (0 if restarts[k] else steps[k - 1] + 10)
        assert steps[0] == 0
    # after the first runs, every run lasts the full horizon
    assert all(r >= 3 for r in clocks.runs)
    assert len({tuple(r) for r, _ in history}) > 1  # restarts do not all happen together


def test_synchronized_clocks_restart_together():
    clocks = TaskClocks(3, HorizonSchedule(30, 30), unroll=10, seed=0, desync=False)
    restarts = []
    for _ in range(7):
        restarts.append(clocks.begin())
        clocks.advance()
    assert restarts == [[True] * 3, [False] * 3, [False] * 3] * 2 + [[True] * 3]


def test_clocks_state_dict_resumes_the_same_draws():
    a = TaskClocks(4, HorizonSchedule(20, 400), unroll=10, seed=9, desync=True)
    for _ in range(5):
        a.begin()
        a.advance()
    b = TaskClocks(4, HorizonSchedule(20, 400), unroll=10, seed=0, desync=True)
    b.load_state_dict(a.state_dict())
    for _ in range(30):
        assert a.begin() == b.begin()
        a.advance()
        b.advance()
    assert (a.steps, a.horizons, a.runs) == (b.steps, b.horizons, b.runs)


def test_config_horizon_range_and_desync():
    from meta_train.configuration.engine import ConfigError
    from meta_train.configuration.schema import config_from_dict

    cfg = config_from_dict(
        {}, ["schedule.horizon={min: 100, max: 2000}", "unroll.length=20", "schedule.desync=true"]
    )
    assert cfg.horizon_schedule == HorizonSchedule(100, 2000)
    assert cfg.per_task_runs and cfg.meta_steps_per_run == 5
    assert not config_from_dict({}, []).per_task_runs
    with pytest.raises(ConfigError, match=r"schedule\.horizon"):
        config_from_dict({}, ["schedule.horizon={min: 100}"])
    with pytest.raises(ConfigError, match=r"schedule\.horizon: .*min must be an integer"):
        config_from_dict({}, ["schedule.horizon={min: 6.5, max: 12}", "unroll.length=2"])
    with pytest.raises(ConfigError, match=r"must not exceed schedule\.horizon"):
        config_from_dict({}, ["schedule.horizon={min: 10, max: 50}", "unroll.length=20"])


@pytest.mark.parametrize("family", [False, True])
def test_per_task_runs_tell_the_optimizer_each_tasks_horizon(tmp_path, family):
    """With sampled horizons, ``general``'s progress features count against each task's own
    run length (the ``horizon`` entry of its state), not its configured ``total_steps``."""
    from crash_run import train_until_crash

    from meta_train.configuration.schema import load_config

    overrides = [
        "optimizer.name=general",
        "optimizer.kwargs={hidden_sizes: [8], total_steps: 1000}",
        "schedule.horizon={min: 6, max: 15}",
        "schedule.desync=true",
        "schedule.meta_batch=3",
        "validation.enabled=false",
        "meta_test.enabled=false",
        "threads=1",
    ]
    if family:
        overrides.append("task.family={members: [{name: mnist_mlp_sigmoid}]}")
    seen = []

    def record(trainer, _record):
        clocks = trainer.rotation.clocks
        members = trainer.family.members if family else [trainer]
        told = [h for m in members for h in m.inner.opt_state["horizon"].tolist()]
        seen.append((told, list(clocks.horizons)))

    train_until_crash(load_config("tiny", overrides), tmp_path, on_meta_step=record)
    assert seen and all(told == horizons for told, horizons in seen)
    assert len({h for _, horizons in seen for h in horizons}) > 1  # they differ per task/run
    assert all(h != 1000 for told, _ in seen for h in told)
