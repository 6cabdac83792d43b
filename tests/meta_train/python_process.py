"""``python ARGS...`` in a fresh interpreter, as a user or an installed package would run it:
output captured, never raising on a failing exit code (the tests assert on it)."""

import subprocess
import sys
from pathlib import Path


def run_python(
    *args: str, cwd: Path, env: dict[str, str] | None = None, timeout: int = 600
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
