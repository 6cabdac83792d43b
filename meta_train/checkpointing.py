"""Crash-safe checkpoints that continue a run exactly, and loading that never runs code.

A checkpoint is written by ``l2o.io.atomic_write`` (a temporary in the same folder, fsynced, then
renamed over the old one): a kill at any moment leaves either the previous checkpoint or the new
one, never a torn file. Every load goes through
``torch.load(weights_only=True)``, whose unpickler builds only tensors and plain containers: a
file that would import a callable (the way pickle runs code) is refused before anything runs.
"""

from __future__ import annotations

import pickle
import random
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from l2o.io import atomic_write, stale_temporaries

FORMAT = "l2o-meta-train-checkpoint"
VERSION = 1
LAST = "last.pt"
BEST = "best.pt"


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


def remove_stale_temporaries(folder: str | Path) -> list[Path]:
    """Delete temporary files left by a write that was killed (they are never read)."""
    removed = sorted({*stale_temporaries(folder), *Path(folder).glob(_LEGACY_TEMPORARY_GLOB)})
    for tmp in removed:
        tmp.unlink(missing_ok=True)
    return removed


# --------------------------------------------------------------------------------------------
# Loading


def safe_load(path: str | Path, map_location: str | torch.device | None = "cpu") -> Any:
    """``torch.load(weights_only=True)`` with errors that say what went wrong and what to do."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        raise UnsafeCheckpointError(
            f"refused to load {path}: it contains pickled objects other than tensors and plain "
            f"containers, which could run code when unpickled, so nothing in it was executed. "
            f"Load only checkpoints written by l2o (weights_only). Detail: {_unpickler_detail(exc)}"
        ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError) as exc:
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

# Keys whose change would make the resumed run a different computation.
RESUME_CRITICAL = (
    "task",
    "optimizer",
    "unroll",
    "schedule.runs_per_epoch",
    "schedule.horizon",
    "schedule.meta_batch",
    "regularization",
    "seed",
)


def _flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(data, dict):
        out: dict[str, Any] = {}
        for key, value in data.items():
            out.update(_flatten(value, f"{prefix}{key}."))
        return out if out or not prefix else {prefix.rstrip("."): {}}
    return {prefix.rstrip("."): data}


def config_mismatches(
    saved: dict, current: dict, keys: tuple[str, ...] = RESUME_CRITICAL
) -> list[str]:
    """``key: checkpoint=A, config=B`` lines for the critical keys that differ."""
    flat_saved, flat_current = _flatten(saved), _flatten(current)
    lines = []
    for key in sorted(set(flat_saved) | set(flat_current)):
        if not any(key == k or key.startswith(k + ".") for k in keys):
            continue
        a, b = flat_saved.get(key, "<absent>"), flat_current.get(key, "<absent>")
        if _normalize(a) != _normalize(b):
            lines.append(f"{key}: checkpoint={a!r}, config={b!r}")
    return lines


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
