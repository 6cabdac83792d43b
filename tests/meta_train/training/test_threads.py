"""The default thread count and the OpenMP wait policy (``meta_train.training.threads``)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from meta_train.training.threads import (
    cgroup_cpu_quota,
    default_threads,
    other_load,
    resolve_threads,
    running_tasks,
)

ROOT = Path(__file__).resolve().parents[3]


@pytest.mark.parametrize(
    ("current", "affinity", "quota", "load", "expected"),
    [
        (2, 2, None, 0.0, 2),  # a quiet machine: every CPU
        (8, 2, None, 0.0, 2),  # pinned to 2 CPUs: torch's count ignores the mask
        (8, 8, 1.5, 0.0, 2),  # a quota of 1.5 CPUs: 2 threads, each partly busy
        (8, 8, 0.2, 0.0, 1),  # a fraction of a CPU: still one thread
        (1, 8, None, 0.0, 1),  # a count set before (tests, evaluations) is never raised
        (2, 2, None, 0.4, 2),  # a little background work: both CPUs
        (2, 2, None, 2.0, 1),  # a two-thread job beside the run: one thread
        (2, 2, None, 7.0, 1),  # oversubscribed: one thread
        (16, 16, None, 5.6, 10),  # a big machine, partly busy: the free CPUs
    ],
)
def test_default_threads_counts_only_free_usable_cpus(current, affinity, quota, load, expected):
    assert default_threads(current, affinity, quota, load) == expected


@pytest.mark.parametrize(("current", "affinity", "load"), [(0, 2, 0.0), (2, 0, 0.0)])
def test_default_threads_refuses_counts_below_one(current, affinity, load):
    with pytest.raises(ValueError, match="positive CPU count"):
        default_threads(current, affinity, None, load)


@pytest.mark.parametrize("load", [-1.0, float("nan")])
def test_default_threads_refuses_a_meaningless_load(load):
    with pytest.raises(ValueError, match="load must be"):
        default_threads(2, 2, None, load)


def test_running_tasks_reads_the_fourth_field():
    assert running_tasks("3.28 3.77 4.69 3/130 7952\n") == 3
    with pytest.raises(ValueError, match="/proc/loadavg"):
        running_tasks("3.28 3.77")


def test_other_load_is_a_non_negative_number():
    assert other_load(samples=2, interval_s=0.0) >= 0.0


def test_cgroup_quota_lines():
    assert cgroup_cpu_quota("200000 100000\n") == 2.0
    assert cgroup_cpu_quota("max 100000") is None
    with pytest.raises(ValueError, match=r"cpu\.max"):
        cgroup_cpu_quota("garbage")
    with pytest.raises(ValueError, match=r"cpu\.max"):
        cgroup_cpu_quota("0 100000")


def test_resolve_threads_keeps_an_explicit_count():
    assert resolve_threads(3) == 3
    assert 1 <= resolve_threads(None) <= torch.get_num_threads()


def _policy_after(code: str, env_policy: str | None) -> str:
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    if env_policy is not None:
        env["OMP_WAIT_POLICY"] = env_policy
    out = subprocess.run(
        [sys.executable, "-c", code + "; import os; print(os.environ.get('OMP_WAIT_POLICY'))"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return out.stdout.strip().splitlines()[-1]


def test_importing_meta_train_first_asks_for_the_passive_policy():
    assert _policy_after("import meta_train", None) == "PASSIVE"


def test_an_explicit_policy_is_kept():
    assert _policy_after("import meta_train", "ACTIVE") == "ACTIVE"


def test_too_late_after_torch_changes_nothing():
    code = "import torch, meta_train.training.threads as t; print(t.prefer_passive_wait())"
    assert _policy_after(code, None) == "None"
