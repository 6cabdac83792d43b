"""The end of a sweep: every trial ranked (``ranking.csv``, also printed) and the metric
against each parameter (``metric_vs_params.png``)."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

from l2o.io import atomic_write
from meta_train.sweeps.spec import Parameter, grid_values
from meta_train.sweeps.trials import DRAWN, counted_trials


def ranking(study, metric: str, keys: list[str]) -> list[dict[str, Any]]:
    """Every trial that ran, best first (failed ones last, with their error)."""
    import optuna

    trials = counted_trials(study)
    done = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    sign = -1.0 if study.direction == optuna.study.StudyDirection.MAXIMIZE else 1.0
    done.sort(key=lambda t: (sign * t.value, t.number))
    rest = sorted((t for t in trials if t not in done), key=lambda t: t.number)
    rows = []
    for rank, trial in enumerate(done + rest, start=1):
        ok = trial.state == optuna.trial.TrialState.COMPLETE
        row = {
            "rank": rank if ok else "",
            "trial": trial.number,
            metric: trial.value if ok else "",
            "state": trial.state.name.lower(),
        }
        row.update({key: trial.user_attrs[DRAWN].get(key) for key in keys})
        row["seconds"] = trial.user_attrs.get("seconds", "")
        row["run_dir"] = trial.user_attrs.get("run_dir", "")
        row["error"] = trial.user_attrs.get("error", "")
        rows.append(row)
    return rows


def _cell(value: Any, short: bool = True) -> str:
    if isinstance(value, float):
        return f"{value:.6g}" if short else repr(value)
    if isinstance(value, (list, dict)):
        return json.dumps(value)
    return "" if value is None else str(value)


def write_ranking(rows: list[dict[str, Any]], path: Path) -> str:
    """Write the CSV (full precision); return the table as text (6 digits, without run folders
    and errors)."""
    columns = list(rows[0]) if rows else []

    def write(f) -> None:
        writer = csv.writer(f)
        writer.writerow(columns)
        writer.writerows([[_cell(row[c], short=False) for c in columns] for row in rows])

    atomic_write(path, write, text=True)
    shown = [c for c in columns if c not in ("run_dir", "error")]
    table = [shown] + [[_cell(row[c]) for c in shown] for row in rows]
    widths = [max(len(line[i]) for line in table) for i in range(len(shown))]
    return "\n".join("  ".join(v.rjust(w) for v, w in zip(line, widths)) for line in table)


def plot_metric(rows: list[dict[str, Any]], metric: str, parameters: list[Parameter], path: Path):
    """The metric against each swept parameter (finished trials), one panel each."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    swept = [p for p in parameters if not p.fixed]
    done = [r for r in rows if r["state"] == "complete"]
    fig, axes = plt.subplots(1, len(swept), figsize=(4 * len(swept), 3.4), squeeze=False)
    for ax, p in zip(axes[0], swept):
        xs = [r[p.key] for r in done]
        numeric = all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in xs)
        if not numeric:
            labels = [_cell(v) for v in grid_values(p)]
            xs = [labels.index(_cell(x)) for x in xs]
            ax.set_xticks(range(len(labels)), labels, rotation=30, ha="right", fontsize=7)
        elif p.log or (p.values and min(xs, default=1) > 0 and _spread(xs) >= 100):
            ax.set_xscale("log")
        ax.scatter(xs, [r[metric] for r in done], s=18)
        ax.set_xlabel(p.key)
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=120))
    plt.close(fig)


def _spread(values: list[float]) -> float:
    return max(values) / min(values) if values else 1.0
