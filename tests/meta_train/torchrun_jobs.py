"""What the torchrun tests share: launching a test module as a 2-process gloo job on localhost
(imported by the test modules: this folder is on ``sys.path`` through ``conftest.py``, and on
the workers' ``PYTHONPATH``, since a worker is a test module run as a script from a subfolder)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HELPERS = Path(__file__).resolve().parent  # crash_run, torchrun_jobs: shared by the subfolders


def launch(
    script: str | Path, args: list[str], timeout_s: float = 120.0, nproc: int = 2
) -> tuple[subprocess.CompletedProcess, float]:
    """Run ``script args`` as ``nproc`` torchrun ranks (collectives time out after
    ``timeout_s``); returns the finished process and its wall time in seconds."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), str(HELPERS)]),
        "OMP_NUM_THREADS": "1",
        "WANDB_MODE": "disabled",
        "L2O_NATIVE": "0",  # no JIT compile of the native LSTM kernels in the workers
        "L2O_DIST_TIMEOUT_S": str(timeout_s),
    }
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={nproc}",
        "--monitor-interval=0.5",
        str(script),
        *args,
    ]
    tic = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240, cwd=ROOT)
    return proc, time.perf_counter() - tic
