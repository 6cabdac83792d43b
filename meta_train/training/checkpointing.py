"""Crash-safe checkpoints that continue a run exactly, and loading that never runs code.

A checkpoint is written by ``l2o.io.atomic_write`` (a temporary in the same folder, fsynced, then
renamed over the old one): a kill at any moment leaves either the previous checkpoint or the new
one, never a torn file. Every load goes through
``torch.load(weights_only=True)``, whose unpickler builds only tensors and plain containers: a
file that would import a callable (the way pickle runs code) is refused before anything runs.
One process at a time writes a run folder (:class:`RunLock`), and a resumed run may differ from
its checkpoint's config only in the settings listed in ``RESUME_SAFE`` and ``RESUME_RETUNE``.
"""

from __future__ import annotations

import fcntl
import os
import pickle
import random
import socket
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from l2o.io import atomic_write, not_a_torch_file, stale_temporaries

FORMAT = "l2o-meta-train-checkpoint"
VERSION = 1
LAST = "last.pt"
BEST = "best.pt"
LOCK = "run.lock"


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: missing, torn, foreign or incompatible."""


class UnsafeCheckpointError(CheckpointError):
    """A checkpoint that holds pickled objects other than tensors and plain containers."""


# --------------------------------------------------------------------------------------------
# Writing


def atomic_save(obj: Any, path: str | Path) -> Path:
    """``torch.save`` to ``path`` so that a crash mid-write never damages the existing file."""
    return atomic_write(path, lambda fh: torch.save(obj, fh))


_LEGACY_TEMPORARY_GLOB = ".*.tmp-*"  # this module's own temporaries before ``l2o.io``


def remove_stale_temporaries(lock: RunLock) -> list[Path]:
    """Delete temporary files left in the locked run folder by a write that was killed.

    Only the holder of the folder's :class:`RunLock` may do this: another process's temporary
    may be a write in progress, and only the lock says that no other process is writing.
    """
    if not lock.held:
        raise RuntimeError(f"removing temporaries in {lock.folder} needs its run lock held")
    folder = lock.folder
    removed = sorted({*stale_temporaries(folder), *folder.glob(_LEGACY_TEMPORARY_GLOB)})
    for tmp in removed:
        tmp.unlink(missing_ok=True)
    return removed


# --------------------------------------------------------------------------------------------
# One writer per run folder


class RunLockedError(RuntimeError):
    """The run folder is locked by another process (which is still running)."""


class RunLock:
    """An exclusive ``flock`` on ``<run folder>/run.lock``, held for a run's whole lifetime.

    The kernel drops the lock when its holder exits, however it exits (``kill -9`` included),
    so a lock is never stale; the file stays (deleting it would let two processes lock two
    different files). While held, the file names the holder (PID and host) for the message
    another process gets. ``flock`` is advisory and may be ineffective on some network file
    systems: the guarantee holds for processes on one machine sharing a local file system.
    """

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self.path = self.folder / LOCK
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> RunLock:
        """Take the lock or raise :class:`RunLockedError` at once (never waits)."""
        if self._fd is not None:
            return self
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode("utf-8", "replace").strip()
            os.close(fd)
            raise RunLockedError(
                f"run folder {self.folder} is in use by another process "
                f"({holder or 'PID not yet written'}; lock file {self.path}): one process at a "
                "time may write a run; wait for it to finish or stop it, then --resume"
            ) from None
        except BaseException:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"PID {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            os.ftruncate(fd, 0)  # no holder named while nobody holds it
        finally:
            os.close(fd)  # closing the last descriptor releases the flock

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


# --------------------------------------------------------------------------------------------
# Loading


def safe_load(path: str | Path, map_location: str | torch.device | None = "cpu") -> Any:
    """``torch.load(weights_only=True)`` with errors that say what went wrong and what to do."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    foreign = not_a_torch_file(path)
    if foreign:
        raise CheckpointError(f"{path} is not an l2o checkpoint: {foreign}")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        raise UnsafeCheckpointError(
            f"refused to load {path}: it contains pickled objects other than tensors and plain "
            f"containers, which could run code when unpickled, so nothing in it was executed. "
            f"Load only checkpoints written by l2o (weights_only). Detail: {_unpickler_detail(exc)}"
        ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, LookupError) as exc:
        raise CheckpointError(
            f"{path} is not a readable torch checkpoint (truncated or corrupt?): {_first_line(exc)}"
        ) from None


def _unpickler_detail(exc: BaseException) -> str:
    """The line of torch's long message that names the refused global."""
    for line in str(exc).splitlines():
        if "Unsupported" in line or "GLOBAL" in line:
            return line.strip().split(". Please use")[0]
    return _first_line(exc)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def load_run_checkpoint(path: str | Path, map_location: str | torch.device | None = "cpu") -> dict:
    """A meta-training checkpoint written by :func:`atomic_save` of a trainer payload."""
    payload = safe_load(path, map_location)
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        found = payload.get("format") if isinstance(payload, dict) else type(payload).__name__
        keys = sorted(payload)[:8] if isinstance(payload, dict) else []
        raise CheckpointError(
            f"{path} is not an l2o meta-training checkpoint (format {found!r}, expected "
            f"{FORMAT!r}; top-level keys {keys}). A learned-optimizer file (best.pt) is loaded "
            f"with LearnedOptimizer, not resumed."
        )
    if payload.get("version") != VERSION:
        raise CheckpointError(
            f"{path} has checkpoint version {payload.get('version')!r}; this l2o reads {VERSION}"
        )
    missing = [
        k for k in ("config", "lopt", "meta_optimizer", "rng", "position") if k not in payload
    ]
    if missing:
        raise CheckpointError(f"{path} lacks the entries {missing}")
    return payload


# --------------------------------------------------------------------------------------------
# Compatibility: resuming or loading weights into a differently configured run

# The settings ``--resume`` may change, and why each is safe: the resumed run then computes what
# an uninterrupted run with the new value computes. Every other difference from the checkpoint's
# config is refused, naming the keys (a prefix covers its whole section).
RESUME_SAFE = {
    "wandb": "W&B logging only",
    "logging": "what is printed and recorded, not what is computed",
    "checkpoint.every": "when last.pt is written, not what it holds",
    "meta_test": "runs after meta-training, from best.pt or the final weights",
    "data.root": "where the same dataset is found",
    "data.download": "whether a missing dataset may be fetched",
    "name": "a label (W&B run name, default folder name)",
    "schedule.epochs": "more epochs (or fewer, never fewer than the runs already started)",
}
# Deliberate changes to the meta-optimizer (e.g. a lower lr after non-finite meta-steps): the
# state is restored exactly and the new values apply from the checkpoint on, so the run is no
# longer the one any single config computes; run.py prints them.
RESUME_RETUNE = ("meta_optimizer",)


def _flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(data, dict):
        out: dict[str, Any] = {}
        for key, value in data.items():
            out.update(_flatten(value, f"{prefix}{key}."))
        return out if out or not prefix else {prefix.rstrip("."): {}}
    return {prefix.rstrip("."): data}


def _under(key: str, prefixes) -> bool:
    return any(key == k or key.startswith(k + ".") for k in prefixes)


def config_differences(saved: dict, current: dict) -> list[tuple[str, Any, Any]]:
    """``(dotted key, saved value, current value)`` for every leaf that differs."""
    flat_saved, flat_current = _flatten(saved), _flatten(current)
    out = []
    for key in sorted(set(flat_saved) | set(flat_current)):
        a, b = flat_saved.get(key, "<absent>"), flat_current.get(key, "<absent>")
        if _normalize(a) != _normalize(b):
            out.append((key, a, b))
    return out


def check_resume_config(saved: dict, current: dict, position: dict) -> list[str]:
    """The permitted changes as ``key: A -> B`` lines; a CheckpointError names the others.

    ``saved`` is the checkpoint's config, ``current`` the config the run would continue with
    and ``position`` the checkpoint's position (to refuse fewer epochs than already started).
    """
    refused, allowed = [], []
    for key, a, b in config_differences(saved, current):
        line = f"{key}: checkpoint={a!r}, config={b!r}"
        if key == "schedule.epochs" and isinstance(b, int):
            runs = saved.get("schedule", {}).get("runs_per_epoch", 1)
            started = position["epoch"] * runs + position["run"] + (position["meta_step"] > 0)
            if b * runs < started:
                refused.append(f"{line} (the run has already started {started} runs)")
                continue
        (allowed if _under(key, (*RESUME_SAFE, *RESUME_RETUNE)) else refused).append(line)
    if refused:
        raise CheckpointError(
            "cannot resume: these settings differ from the checkpoint's config and would make "
            "the resumed run a different computation: "
            + "; ".join(refused)
            + f". Only these may change on --resume: {', '.join([*RESUME_SAFE, *RESUME_RETUNE])};"
            " start a new run (without --resume) to change anything else"
        )
    return [line.replace(", config=", " -> ").replace("checkpoint=", "") for line in allowed]


def _normalize(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


# --------------------------------------------------------------------------------------------
# RNG states, as tensors and plain containers (weights_only-safe)


def rng_state() -> dict[str, Any]:
    """Every global RNG a run may draw from: python, numpy, torch CPU and CUDA."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": _to_plain(random.getstate()),
        "numpy": {
            "kind": kind,
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(_to_tuple(state["python"]))
    n = state["numpy"]
    np.random.set_state(
        (
            n["kind"],
            n["keys"].numpy().astype(np.uint32),
            n["pos"],
            n["has_gauss"],
            n["cached_gaussian"],
        )
    )
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        cuda_states = [s.cpu() for s in state["cuda"]]
        if len(cuda_states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda_states)


def _to_plain(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_to_plain(v) for v in value]
    return value


def _to_tuple(value: Any) -> Any:
    if isinstance(value, list):
        return tuple(_to_tuple(v) for v in value)
    return value
