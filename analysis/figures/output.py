"""A figure's files: the CSV of every plotted number and the summary JSON with its verdict."""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from pathlib import Path

from l2o.io import atomic_write


def write_csv(path: Path, rows: Sequence[dict]) -> Path:
    """``rows`` as CSV, columns in order of first appearance."""
    if not rows:
        raise ValueError(f"nothing to write to {path}")
    fields = list(dict.fromkeys(k for row in rows for k in row))

    def write(fh) -> None:
        writer = csv.DictWriter(fh, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)

    return atomic_write(path, write, text=True)


def write_summary(
    path: Path,
    fig: str,
    size: str,
    lopt: str | None,
    summary: dict,
    settings: dict | None = None,
) -> Path:
    """``summary`` headed by the figure, the size (as ``mode``) and the learned optimizer used,
    ending with the figure's ``settings`` (with the command line's overrides) when given: the
    plots read steps, seeds, dataset and the tuning grid from there, so a redraw needs no
    defaults that may have changed since."""
    summary = {"figure": fig, "mode": size, "lopt": lopt, **summary}
    if settings is not None:
        summary["settings"] = settings
    return atomic_write(path, json.dumps(summary, indent=2, default=float))
