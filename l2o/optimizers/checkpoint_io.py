"""Saving and loading a learned optimizer: architecture name + constructor kwargs + weights +
metadata, in one ``torch.save`` file that loads with ``weights_only=True``.

Files are written atomically (``l2o.io.atomic_write``), so an interrupted save never leaves a
truncated checkpoint behind.
"""

from __future__ import annotations

import json
import os
import pickle
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from l2o.io import atomic_write, not_a_torch_file
from l2o.optimizers.base import LearnedOptimizerNet, available_architectures, create

FORMAT = "l2o.learned_optimizer"
VERSION = 1


def _plain(value: Any, where: str) -> Any:
    """Check that metadata holds only JSON-like values (they load under ``weights_only``)."""
    try:
        json.dumps(value)
    except (TypeError, ValueError) as exc:
        raise ValueError(
            f"{where} must hold only JSON-like values (str, numbers, lists, dicts): {exc}"
        ) from exc
    return value


def to_payload(lopt: LearnedOptimizerNet, metadata: Mapping[str, Any] | None = None) -> dict:
    """The checkpoint as a plain dict (embed it in a larger checkpoint, e.g. a training run's)."""
    return {
        "format": FORMAT,
        "version": VERSION,
        "arch": lopt.arch,
        "config": _plain(lopt.config(), "the optimizer's config"),
        "state_dict": {k: v.detach().cpu().clone() for k, v in lopt.state_dict().items()},
        "metadata": _plain(dict(metadata or {}), "metadata"),
    }


#: Entries a checkpoint must have, with their types.
REQUIRED = {"arch": str, "config": Mapping, "state_dict": Mapping}


def from_payload(
    payload: Mapping[str, Any], expected_arch: str | None = None, source: str = "payload"
) -> tuple[LearnedOptimizerNet, dict]:
    """Rebuild ``(optimizer, metadata)``; a clear ``ValueError`` names whatever does not fit.

    Everything is checked before the network is allocated: the entries, the tensors' shapes
    against those the config implies (computed on the ``meta`` device, so a corrupt
    ``hidden_size`` allocates nothing), and the weights' finiteness.
    """
    if not isinstance(payload, Mapping) or payload.get("format") != FORMAT:
        keys = sorted(payload)[:10] if isinstance(payload, Mapping) else type(payload).__name__
        raise ValueError(
            f"{source} is not an l2o learned-optimizer checkpoint (expected format {FORMAT!r}; "
            f"found {keys})"
        )
    if payload.get("version") != VERSION:
        raise ValueError(f"{source}: unsupported checkpoint version {payload.get('version')!r}")
    for key, kind in REQUIRED.items():
        if key not in payload:
            raise ValueError(
                f"{source}: the checkpoint has no {key!r} entry (it has {sorted(payload)})"
            )
        if not isinstance(payload[key], kind):
            raise ValueError(
                f"{source}: {key!r} must be a {kind.__name__}, found {type(payload[key]).__name__}"
            )
    arch, config, state = payload["arch"], payload["config"], payload["state_dict"]
    if expected_arch is not None and arch != expected_arch:
        raise ValueError(f"{source} holds a {arch!r} optimizer, expected {expected_arch!r}")
    if arch not in available_architectures():
        raise ValueError(
            f"{source}: unknown architecture {arch!r}; available: {available_architectures()}"
        )
    not_tensors = sorted(str(k) for k, v in state.items() if not isinstance(v, torch.Tensor))
    if not_tensors:
        raise ValueError(f"{source}: state_dict entries that are not tensors: {not_tensors}")
    try:
        with torch.device("meta"):  # shapes only, no memory
            skeleton = create(arch, **config)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{source}: config does not fit architecture {arch!r}: {exc}") from exc
    own = skeleton.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    if missing or unexpected or wrong:
        detail = "; ".join(
            part
            for part in (
                f"missing {missing}" if missing else "",
                f"unexpected {unexpected}" if unexpected else "",
                "shape mismatch "
                + ", ".join(f"{k}: {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in wrong)
                if wrong
                else "",
            )
            if part
        )
        raise ValueError(f"{source}: weights do not fit {arch!r} with config {config}: {detail}")
    nonfinite = sorted(
        k for k, v in state.items() if v.is_floating_point() and not bool(v.isfinite().all())
    )
    if nonfinite:
        raise ValueError(
            f"{source}: non-finite (NaN or inf) weights in {nonfinite}: the optimizer diverged "
            "before it was saved; refusing to load it"
        )
    lopt = create(arch, **config)
    lopt.load_state_dict(state)
    metadata = payload.get("metadata", {})
    if not isinstance(metadata, Mapping):
        raise ValueError(f"{source}: 'metadata' must be a mapping, found {type(metadata).__name__}")
    return lopt, dict(metadata)


def save_learned_optimizer(
    path: str | os.PathLike, lopt: LearnedOptimizerNet, metadata: Mapping[str, Any] | None = None
) -> Path:
    """Write ``lopt`` (and JSON-like ``metadata``) to ``path`` atomically; returns the path."""
    payload = to_payload(lopt, metadata)
    return atomic_write(path, lambda fh: torch.save(payload, fh))


def load_learned_optimizer(
    path: str | os.PathLike,
    expected_arch: str | None = None,
    map_location: str | torch.device = "cpu",
) -> tuple[LearnedOptimizerNet, dict]:
    """``(optimizer, metadata)`` from a file written by ``save_learned_optimizer``.

    Raises ``FileNotFoundError`` for a missing file and ``ValueError`` naming the path and the
    problem for a directory, an empty, truncated or text file, a foreign file, a different
    architecture, weights that do not fit the stored config, or non-finite weights.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no learned-optimizer checkpoint at {path}")
    if not path.is_file():
        raise ValueError(f"{path} is not a file (a directory?); expected a checkpoint file")
    size = path.stat().st_size
    if size == 0:
        raise ValueError(f"{path} is empty (0 bytes): a truncated checkpoint file")
    foreign = not_a_torch_file(path)
    if foreign:
        raise ValueError(f"{path} is not a loadable l2o learned-optimizer checkpoint: {foreign}")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except (
        pickle.UnpicklingError,
        RuntimeError,
        EOFError,
        ValueError,
        OSError,
        LookupError,
    ) as exc:
        if _truncated(path, exc):
            raise ValueError(
                f"{path} is truncated ({size} bytes; the end of the file is missing): it was "
                "cut off while being written or copied"
            ) from exc
        raise ValueError(
            f"{path} is not a loadable l2o learned-optimizer checkpoint: {exc}".splitlines()[0]
        ) from exc
    lopt, metadata = from_payload(payload, expected_arch, source=str(path))
    return lopt.to(map_location), metadata


def _truncated(path: Path, exc: BaseException) -> bool:
    """True for a cut-off ``torch.save`` file: a zip archive without its end record, or a
    legacy pickle that ends early."""
    with path.open("rb") as fh:
        zip_start = fh.read(4) == b"PK\x03\x04"
    if zip_start:
        return not zipfile.is_zipfile(path)
    return isinstance(exc, EOFError) or "truncated" in str(exc)
