"""A sweep's trial processes live and die with the sweep.

Each trial (``run.py``) runs in a process group of its own, so that stopping it reaches whatever
it started too. How the sweep ends decides how its trial ends:

* Ctrl-C: the sweep forwards SIGINT to the trial's group (a terminal's Ctrl-C reaches only the
  sweep's group), gives it :data:`GRACE_S` seconds to stop, then kills the group;
* SIGTERM: :func:`sigterm_as_interrupt` turns it into :class:`Terminated` (a
  ``KeyboardInterrupt``, the same path), and SIGTERM is forwarded;
* ``kill -9``: nothing in the sweep runs, so on Linux the trial asks the kernel, before it
  starts, for SIGKILL when its parent dies (``prctl(PR_SET_PDEATHSIG)``).

Whatever happened before, :func:`wait_for_run_folder` makes a sweep that finds a trial folder
still held by a live process (an orphan of a sweep killed where the parent-death signal does
not exist) wait for it instead of starting a second writer.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

from meta_train.training.checkpointing import LOCK

GRACE_S = 60  # seconds a trial gets to stop after a forwarded signal before it is killed
PR_SET_PDEATHSIG = 1  # linux/prctl.h


class Terminated(KeyboardInterrupt):
    """SIGTERM received by the sweep (raised where it was, then handled as Ctrl-C is)."""


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Within the block, SIGTERM raises :class:`Terminated` (from the main thread only)."""

    def terminate(signum, frame):
        raise Terminated

    try:
        previous = signal.signal(signal.SIGTERM, terminate)
    except ValueError:  # not the main thread: signals cannot be handled here
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _die_with_parent(parent: int) -> Callable[[], None] | None:
    """A ``preexec_fn`` that makes the child receive SIGKILL when ``parent`` dies (Linux)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl  # looked up before the fork
    except (OSError, AttributeError):
        return None

    def preexec() -> None:
        prctl(ctypes.c_int(PR_SET_PDEATHSIG), ctypes.c_ulong(signal.SIGKILL))
        if os.getppid() != parent:  # the parent died before the request took effect
            os.kill(os.getpid(), signal.SIGKILL)

    return preexec


def run_trial(command: list[str], env: dict[str, str], cwd: Path, log_path: Path) -> int:
    """Run one trial, its output into ``log_path`` (a new file: one per attempt), and return its
    exit code; nothing it started outlives this call."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "xb") as log:
        process = subprocess.Popen(
            command,
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            process_group=0,
            preexec_fn=_die_with_parent(os.getpid()),
        )
    try:
        return process.wait()
    except KeyboardInterrupt as exc:
        forwarded = signal.SIGTERM if isinstance(exc, Terminated) else signal.SIGINT
        _signal_group(process.pid, forwarded)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=GRACE_S)
        raise
    finally:
        _signal_group(process.pid, signal.SIGKILL)  # the trial, if alive, and its children
        process.wait()


def _signal_group(group: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(group, sig)


def folder_holder(run_dir: Path) -> str | None:
    """Who holds ``run_dir``'s run lock (run.py's ``RunLock``), or None when nobody does."""
    path = run_dir / LOCK
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except (FileNotFoundError, NotADirectoryError):
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return os.pread(fd, 200, 0).decode("utf-8", "replace").strip() or "a process"
    finally:
        os.close(fd)  # closing releases a lock taken here
    return None


def wait_for_run_folder(run_dir: Path, note: Callable[[str], None]) -> None:
    """Return once no process holds ``run_dir``'s run lock, telling ``note`` who is waited for."""
    holder = folder_holder(run_dir)
    if holder is None:
        return
    note(
        f"  {run_dir} is in use by {holder} (a trial of an earlier sweep still running): "
        "waiting for it to end, then continuing from its checkpoint"
    )
    fd = os.open(run_dir / LOCK, os.O_RDONLY | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH)  # blocks until the holder's exclusive lock is gone
    finally:
        os.close(fd)
