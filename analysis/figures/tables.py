"""A figure's files read back for its plot: ``figN.csv`` (typed), ``figN_summary.json``, the
settings the figure was made with, and the baselines' tuned learning rates (``lr_cache.json``).

Every plot draws from these files alone, so ``python analysis/figures.py redraw`` redraws a
finished figure without recomputing anything. A problem with a file is a ``FigureFileError``:
one line that names the file.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

import torch
import yaml

import baselines
from analysis.figures.runs import DISPLAY, task_for
from analysis.figures.tuning import LrCache, Tuning, cache_key


class FigureFileError(ValueError):
    """A figure's file is missing a part or cannot be read; the message names the file."""


@dataclass(frozen=True)
class Columns:
    """What a figure's plot reads: CSV columns of text and of numbers, and summary keys."""

    text: tuple[str, ...] = ()
    numbers: tuple[str, ...] = ()
    summary: tuple[str, ...] = ()


COLUMNS = {
    "fig4": Columns(
        text=("task", "optimizer", "kind"),
        numbers=(
            "seed",
            "step",
            "update_magnitude",
            "update_relative",
            "gradient_magnitude",
            "loss",
        ),
    ),
    "fig5": Columns(
        numbers=("reg_mul", "seed", "step", "loss", "relative_deviation", "magnitude_deviation")
    ),
    "fig7": Columns(
        numbers=("alpha", "seed", "final_loss", "test_loss", "relative_deviation"),
        summary=("lr_sgd", "lr_lion", "learning_rates", "spearman_deviation_vs_final_loss"),
    ),
    "fig8": Columns(
        text=("optimizer",),
        numbers=(
            "seed",
            "step",
            "alpha_grad_pooled",
            "alpha_update_pooled",
            "alpha_grad_standardized",
            "alpha_update_standardized",
            "cov_trace_update",
            "cov_trace_rel_update",
        ),
    ),
    "fig9": Columns(
        text=("optimizer",),
        numbers=("step", "bin_low", "bin_high", "fraction", "fraction_zero", "median_abs_update"),
    ),
}
#: Baseline registry names by the name the figures show (``SGD`` → ``sgd``).
BASELINE_NAMES = {shown: name for name, shown in DISPLAY.items()}


def _number(text: str | None) -> float | None:
    try:
        return float(text) if text not in (None, "") else None
    except ValueError:
        return None


def read_rows(path: Path, columns: Columns) -> list[dict]:
    """The CSV's rows: the ``columns.numbers`` as floats (each cell must be a number, ``nan``
    included), the ``columns.text`` as given, any other column a float where it parses."""
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            header = reader.fieldnames or []
            missing = [c for c in (*columns.text, *columns.numbers) if c not in header]
            if missing:
                raise FigureFileError(f"{path}: no column {missing[0]!r} (it has {header})")
            rows = [_typed_row(path, reader.line_num, row, columns) for row in reader]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise FigureFileError(f"{path}: cannot be read as CSV ({exc})") from exc
    if not rows:
        raise FigureFileError(f"{path}: no rows under its header")
    return rows


def _typed_row(path: Path, line: int, row: dict, columns: Columns) -> dict:
    if None in row or None in row.values():
        raise FigureFileError(f"{path}: line {line} has another number of fields than the header")
    typed = {}
    for key, text in row.items():
        value = _number(text)
        if key in columns.numbers and value is None:
            raise FigureFileError(f"{path}: line {line}, column {key!r}: {text!r} is not a number")
        typed[key] = text if key in columns.text or value is None else value
    return typed


def read_summary(path: Path, fig: str, keys: tuple[str, ...]) -> dict:
    """The summary JSON, checked to be figure ``fig``'s and to hold ``keys`` and ``mode``."""
    if not path.is_file():
        raise FigureFileError(f"{path}: missing (the figure's CSV is there, its summary is not)")
    try:
        summary = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise FigureFileError(f"{path}: cannot be read as JSON ({exc})") from exc
    if not isinstance(summary, dict) or summary.get("figure") != fig:
        raise FigureFileError(f"{path}: not the summary of {fig}")
    missing = [k for k in ("mode", *keys) if k not in summary]
    if missing:
        raise FigureFileError(f"{path}: no key {missing[0]!r}")
    return summary


def group(rows: list[dict], *keys: str) -> dict[tuple, list[dict]]:
    """Rows by the values of ``keys``, groups in order of first appearance."""
    out: dict[tuple, list[dict]] = {}
    for row in rows:
        out.setdefault(tuple(row[k] for k in keys), []).append(row)
    return out


def unique(rows: list[dict], key: str) -> list:
    """The values of column ``key`` in order of first appearance."""
    return list(dict.fromkeys(row[key] for row in rows))


def seed_matrix(rows: list[dict], x: str, y: str) -> tuple[list[float], torch.Tensor]:
    """``y`` by seed (matrix rows) and sorted ``x`` (columns); NaN where a seed lacks an ``x``."""
    xs = sorted({row[x] for row in rows})
    seeds = sorted({row["seed"] for row in rows})
    col, line = {v: i for i, v in enumerate(xs)}, {s: i for i, s in enumerate(seeds)}
    values = [[math.nan] * len(xs) for _ in seeds]
    for row in rows:
        values[line[row["seed"]]][col[row[x]]] = row[y]
    return xs, torch.tensor(values, dtype=torch.float64)


@dataclass
class FigureFiles:
    """Figure ``fig``'s files in ``folder``: its typed CSV rows, summary and settings."""

    fig: str
    folder: Path
    rows: list[dict]
    summary: dict
    settings: dict
    task: str | None = None  # the task of a one-task figure (figure 4 has a column)
    lr_cache: LrCache = field(init=False)

    def __post_init__(self) -> None:
        self.lr_cache = LrCache(self.folder / "lr_cache.json")

    @property
    def csv_path(self) -> Path:
        return self.folder / f"{self.fig}.csv"

    @property
    def lopt(self) -> str | None:
        """The paper's learned optimizer (``L2O``): the first ``--lopt`` the figure ran with."""
        lopt = self.summary.get("lopt")
        return lopt.split(",")[0].strip() if isinstance(lopt, str) and lopt else None

    def seeds(self) -> list:
        """The seeds in the CSV (none for a figure without a ``seed`` column)."""
        return sorted(unique(self.rows, "seed")) if "seed" in self.rows[0] else []

    def dataset(self, task: str) -> str:
        """The dataset the figure ran ``task`` on: the data its runs trained on (the summary's
        ``data_used``, after any fallback), else its settings', else the task's own."""
        used = self.summary.get("data_used")
        if isinstance(used, dict) and isinstance(used.get(task), str):
            return used[task]
        return self.settings.get("dataset") or self._task(task).dataset_name

    def _task(self, task: str):
        try:
            return task_for(task, self.settings.get("dataset"))
        except ValueError as exc:
            raise FigureFileError(f"{self.csv_path}: {exc}") from exc

    def tuned_lr(self, task: str, optimizer: str) -> float | None:
        """The learning rate baseline ``optimizer`` ran at on ``task``: the CSV's ``lr`` column
        where there is one, else its grid search's entry in ``lr_cache.json`` (the key
        ``tuning.cache_key`` gives for the figure's tuning); None for a learned optimizer or
        an entry not found."""
        if "lr" in self.rows[0]:
            for row in self.rows:
                if row["optimizer"] == optimizer and row.get("task", task) == task:
                    lr = row["lr"]
                    return lr if isinstance(lr, float) and math.isfinite(lr) else None
            return None
        name = BASELINE_NAMES.get(optimizer, optimizer)
        if name not in baselines.available() or "tuning" not in self.settings:
            return None
        fields = self.settings["tuning"].items()
        tuning = Tuning(**{k: tuple(v) if isinstance(v, list) else v for k, v in fields})
        try:
            lr = self.lr_cache.get(cache_key(self._task(task), name, tuning, {}))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise FigureFileError(f"{self.lr_cache.path}: cannot be read ({exc})") from exc
        return float(lr) if lr is not None else None


def load_figure(folder: Path, fig: str, module: ModuleType) -> FigureFiles:
    """Figure ``fig``'s files in ``folder``. Settings come from the summary; a summary written
    before they were stored there gets its size's defaults from ``module.SETTINGS``."""
    columns = COLUMNS[fig]
    rows = read_rows(folder / f"{fig}.csv", columns)
    summary_path = folder / f"{fig}_summary.json"
    summary = read_summary(summary_path, fig, columns.summary)
    settings = summary.get("settings")
    if settings is None:
        if summary["mode"] not in module.SETTINGS:
            raise FigureFileError(f"{summary_path}: unknown mode {summary['mode']!r}")
        settings = dataclasses.asdict(module.SETTINGS[summary["mode"]])
    if not isinstance(settings, dict):
        raise FigureFileError(f"{summary_path}: 'settings' is not an object")
    return FigureFiles(fig, folder, rows, summary, settings, figure_task(folder, module, rows))


def figure_task(folder: Path, module: ModuleType, rows: list[dict]) -> str | None:
    """The task of a one-task figure: its CSV's ``task`` column, the module's ``TASK``, or for
    figure 5 (which meta-trains on the task of its config) the first run's ``config.yaml``;
    None when that run folder is gone."""
    if "task" in rows[0]:
        return rows[0]["task"]
    if hasattr(module, "TASK"):
        return module.TASK
    if "reg_mul" in rows[0] and hasattr(module, "run_task"):
        run_dir = folder / f"fig5_runs/reg_mul={rows[0]['reg_mul']:g}"
        try:
            return module.run_task(run_dir)
        except (OSError, yaml.YAMLError, KeyError, TypeError):
            return None
    return None
