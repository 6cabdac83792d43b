"""Metrics to the console, to ``metrics.jsonl`` in the run folder, and to W&B.

The JSONL file is the record of a run: one JSON object per line, appended and flushed as it goes.
A resumed run truncates it to the size it had when its checkpoint was written, so the file of a
killed-and-resumed run holds the same lines as an uninterrupted one (timings aside). W&B is
optional and never needs a network: ``offline`` writes into the run folder for a later
``wandb sync``, ``disabled`` does nothing; ``$WANDB_MODE`` overrides the configured mode.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

from l2o.io import atomic_write

METRICS_FILE = "metrics.jsonl"
#: The run's final numbers (best validation loss, counters), also sent to W&B's run summary.
SUMMARY_FILE = "summary.json"


def _jsonable(value: Any) -> Any:
    if hasattr(value, "item") and getattr(value, "numel", lambda: 1)() == 1:
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # JSON has no NaN/inf; keep them visible as strings
    return value


class Tracker:
    """Fan-out of metric records. ``log`` is cheap: one JSON line and (maybe) one W&B call."""

    def __init__(
        self,
        run_dir: str | Path,
        wandb_cfg: Any = None,
        config: dict[str, Any] | None = None,
        resume_bytes: int | None = None,
        wandb_id: str | None = None,
        console=None,
        active: bool = True,
    ) -> None:
        """``active=False`` (ranks other than 0 under torchrun): a tracker that writes, prints
        and sends nothing, so one process alone owns the run folder's records and the W&B run."""
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / METRICS_FILE
        self.active = active
        self._wandb = None
        self.wandb_id = wandb_id
        self._console = console or _console
        self._file = None
        if not active:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if resume_bytes is not None and self.path.exists():
            with open(self.path, "r+b") as f:
                f.truncate(resume_bytes)
        self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 (closed in close())
        if wandb_cfg is not None:
            self._init_wandb(wandb_cfg, config or {})

    # -- W&B ---------------------------------------------------------------------------------
    def wandb_mode(self, wandb_cfg: Any) -> str:
        return os.environ.get("WANDB_MODE") or wandb_cfg.mode

    def _init_wandb(self, wandb_cfg: Any, config: dict[str, Any]) -> None:
        mode = self.wandb_mode(wandb_cfg)
        if mode not in ("online", "offline", "disabled", "dryrun", "run"):
            raise ValueError(f"wandb mode must be online, offline or disabled, got {mode!r}")
        if mode == "disabled":
            return
        import wandb

        kwargs: dict[str, Any] = dict(
            project=wandb_cfg.project,
            entity=wandb_cfg.entity,
            tags=list(wandb_cfg.tags) or None,
            name=wandb_cfg.name,
            group=wandb_cfg.group,
            config=config,
            dir=str(self.run_dir),
            mode=mode,
        )
        if self.wandb_id is not None:
            kwargs.update(id=self.wandb_id, resume="allow")
        run = wandb.init(**kwargs)
        self.wandb_id = getattr(run, "id", None)
        self._wandb = run

    # -- records -----------------------------------------------------------------------------
    def log(self, metrics: dict[str, Any], step: int, console: bool = False) -> None:
        if self._file is None:
            return
        record = {"step": int(step), "time": round(time.time(), 3)}
        record.update({k: _jsonable(v) for k, v in metrics.items()})
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        if self._wandb is not None:
            self._wandb.log(
                {k: v for k, v in record.items() if k not in ("time", "step")}, step=int(step)
            )
        if console:
            self.print(_format(record))

    def print(self, text: str) -> None:
        if self.active:
            self._console(text)

    def summary(self, values: dict[str, Any]) -> None:
        """Merge ``values`` into the run's summary: ``summary.json`` in the run folder (written
        atomically, so it is on disk whatever the W&B mode) and W&B's run summary."""
        if not self.active:
            return
        merged = read_summary(self.run_dir)
        merged.update({k: _jsonable(v) for k, v in values.items()})
        atomic_write(
            self.run_dir / SUMMARY_FILE, json.dumps(merged, indent=2, sort_keys=True) + "\n"
        )
        if self._wandb is not None:
            for key, value in values.items():
                self._wandb.summary[key] = _jsonable(value)

    def sync_point(self) -> int:
        """Flush to disk and return the JSONL size, stored in checkpoints for exact resume."""
        if self._file is None:
            return 0
        self._file.flush()
        os.fsync(self._file.fileno())
        return self.path.stat().st_size

    def close(self) -> None:
        if self._file is not None and not self._file.closed:
            self._file.close()
        if self._wandb is not None:
            self._wandb.finish()
            self._wandb = None


def _console(text: str) -> None:
    """Print above a running tqdm bar instead of through it."""
    from tqdm import tqdm

    tqdm.write(text, file=sys.stderr)


def _format(record: dict[str, Any]) -> str:
    parts = []
    for key, value in record.items():
        if key == "time":
            continue
        if isinstance(value, float):
            parts.append(f"{key}={value:.4g}")
        else:
            parts.append(f"{key}={value}")
    return " ".join(parts)


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    path = Path(run_dir) / METRICS_FILE
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def read_summary(run_dir: str | Path) -> dict[str, Any]:
    """The run's ``summary.json`` (``Tracker.summary``), or {} if it has none yet."""
    path = Path(run_dir) / SUMMARY_FILE
    return json.loads(path.read_text()) if path.exists() else {}
