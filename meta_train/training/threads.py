"""How many CPU threads meta-training uses, and how its idle OpenMP threads wait.

Why: every inner step runs several OpenMP parallel regions (the C++ kernels, torch's ops). By
default a thread that reaches a region's end spins, waiting for the others; on a machine whose
cores other jobs use, a descheduled thread makes the rest spin through their time slices (PES at
``threads: 2`` fell to a tenth of its one-thread speed beside a two-thread job). With
``OMP_WAIT_POLICY=PASSIVE`` waiting threads sleep instead, and the kernels hand out their blocks
one at a time, so a slow thread costs one block, not a share. The OpenMP runtime reads the policy
once, when torch loads it: :func:`prefer_passive_wait` must run before ``import torch``
(``meta_train/__init__.py`` calls it).

The default thread count (``threads: null``) counts only the CPUs the process may run on (its
affinity mask and its cgroup's CPU quota, which torch's default ignores) and that other jobs
leave free when the run starts: with the kernel's autogroup scheduling a session's threads share
one session's CPU time, so on a busy machine a second thread adds synchronization and no CPU
(measured: PES at two threads beside two busy processes, 0.61x its one-thread speed). The
choice is made once, at the start: a run resumed on a machine under another load may get
another count, and torch's reductions then differ in the last bits; set ``threads:`` for
bit-exact resumes across machines.
"""

from __future__ import annotations

import math
import os
import statistics
import sys
import time
from pathlib import Path

WAIT_POLICY_VARIABLE = "OMP_WAIT_POLICY"


def prefer_passive_wait() -> bool:
    """Asks for the passive wait policy unless the environment sets one; True if the policy
    in force is passive. Too late (False, nothing changed) once torch is imported."""
    if "torch" not in sys.modules:
        os.environ.setdefault(WAIT_POLICY_VARIABLE, "PASSIVE")
        return os.environ[WAIT_POLICY_VARIABLE].upper() == "PASSIVE"
    return os.environ.get(WAIT_POLICY_VARIABLE, "").upper() == "PASSIVE"


def cgroup_cpu_quota(cpu_max: str) -> float | None:
    """CPUs granted by a cgroup v2 ``cpu.max`` line (``"200000 100000"`` → 2.0); None when
    unlimited (``"max 100000"``)."""
    fields = cpu_max.split()
    if len(fields) != 2:
        raise ValueError(f"cpu.max: expected '<quota> <period>', got {cpu_max!r}")
    if fields[0] == "max":
        return None
    quota, period = float(fields[0]), float(fields[1])
    if quota <= 0 or period <= 0:
        raise ValueError(f"cpu.max: quota and period must be positive, got {cpu_max!r}")
    return quota / period


def default_threads(current: int, affinity: int, quota: float | None, load: float) -> int:
    """The thread count for ``threads: null``: the CPUs in the affinity mask and the cgroup's
    ``quota`` (rounded up) less the ``load`` other jobs put on them (rounded), at most torch's
    ``current`` count, at least 1."""
    for name, value in (("current", current), ("affinity", affinity)):
        if value < 1:
            raise ValueError(f"{name} must be a positive CPU count, got {value}")
    if not load >= 0:  # NaN included
        raise ValueError(f"load must be a non-negative number of busy CPUs, got {load}")
    limit = affinity if quota is None else min(affinity, math.ceil(quota))
    free = math.floor(limit - load + 0.5)
    return max(1, min(current, limit, free))


def running_tasks(proc_loadavg: str) -> int:
    """Tasks running or runnable right now, from a ``/proc/loadavg`` line (its fourth field,
    ``running/total``)."""
    fields = proc_loadavg.split()
    if len(fields) < 4 or "/" not in fields[3]:
        raise ValueError(f"/proc/loadavg: expected 'a b c running/total pid', got {proc_loadavg!r}")
    return int(fields[3].split("/")[0])


def other_load(samples: int = 5, interval_s: float = 0.02) -> float:
    """CPUs other jobs keep busy: the larger of the one-minute load average (slow to see a job
    that just started) and the median of ``samples`` counts of running tasks other than this
    thread (quick to see one, noisy)."""
    try:
        counts = []
        for i in range(samples):
            if i:
                time.sleep(interval_s)
            counts.append(running_tasks(Path("/proc/loadavg").read_text()) - 1)
        return max(os.getloadavg()[0], float(statistics.median(counts)))
    except (OSError, ValueError, AttributeError):  # no /proc, no getloadavg: assume idle
        return 0.0


def available_cpus() -> tuple[int, float | None]:
    """``(CPUs in this process's affinity mask, cgroup v2 CPU quota or None)``."""
    try:
        affinity = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        affinity = os.cpu_count() or 1
    try:
        quota = cgroup_cpu_quota(Path("/sys/fs/cgroup/cpu.max").read_text())
    except (OSError, ValueError):
        quota = None
    return affinity, quota


def resolve_threads(requested: int | None) -> int:
    """``requested`` when given, else :func:`default_threads` for this process."""
    if requested is not None:
        return requested
    import torch

    return default_threads(torch.get_num_threads(), *available_cpus(), other_load())
