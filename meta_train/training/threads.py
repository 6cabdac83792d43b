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
affinity mask and its cgroup's CPU quota, which torch's default ignores); it does not follow the
load average, so a resumed run on a busier machine keeps the thread count, and with it the
bit-exact results, of the run it continues.
"""

from __future__ import annotations

import math
import os
import sys
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


def default_threads(current: int, affinity: int, quota: float | None) -> int:
    """The thread count for ``threads: null``: torch's ``current`` count, at most the CPUs in the
    affinity mask and the cgroup's ``quota`` rounded up, at least 1."""
    for name, value in (("current", current), ("affinity", affinity)):
        if value < 1:
            raise ValueError(f"{name} must be a positive CPU count, got {value}")
    limit = affinity if quota is None else min(affinity, math.ceil(quota))
    return max(1, min(current, limit))


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

    return default_threads(torch.get_num_threads(), *available_cpus())
