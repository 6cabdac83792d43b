"""The evaluation's outputs: the printed table, ``summary.csv`` and ``overall.csv``, the
versioned ``results.json`` and the PNGs, all from the rows and summaries of
``meta_train.evaluation.rows`` (which defines the ratios and the statistics)."""

from __future__ import annotations

import csv
import json
import math
import time
import warnings
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from l2o.io import atomic_write
from meta_train.evaluation.contenders import COSINE, MEASURED_AT
from meta_train.evaluation.criteria import CRITERIA, final_window
from meta_train.evaluation.rows import (
    ROW_FIELDS,
    SUMMARY_FIELDS,
    rows,
    summary,
    summary_by_steps,
)
from meta_train.evaluation.runner import Evaluation, Runs

SCHEMA = "l2o.evaluation"
SCHEMA_VERSION = 3  # 2: nominal contenders, ratio_nominal, measured_at; 3: summary_by_steps


def heldout_findings(ev: Evaluation, table: list[dict] | None = None) -> dict[str, Any]:
    """What a held-out run's log entry records: the aggregates, overall and per run length."""
    table = rows(ev) if table is None else table
    keep = ("optimizer", "criterion", "cases", "geomean_ratio", "won", "geomean_ratio_nominal")
    keep += ("won_vs_nominal", "diverged_runs")
    return _clean(
        {
            "wall_s": round(ev.wall_s, 1),
            "cases": [c.case.id for c in ev.cases],
            "skipped": [s["case"] for s in ev.skipped],
            "summary": [{k: s[k] for k in keep} for s in summary(ev, table)],
            "by_steps": [
                {"steps": s["steps"], **{k: s[k] for k in keep}}
                for s in summary_by_steps(ev, table)
            ],
        }
    )


def measured_at(ev: Evaluation) -> dict[str, str]:
    """Where the losses of the contenders that need saying are measured (``sf_adamw``: y / x)."""
    stems = {name: name.removesuffix(COSINE) for name in ev.baselines}
    return {name: MEASURED_AT[stem] for name, stem in stems.items() if stem in MEASURED_AT}


# --------------------------------------------------------------------------------------------
# Text


def _pm(mean: float, ci: float, digits: int = 4) -> str:
    if not math.isfinite(mean):
        return "—"
    return f"{mean:.{digits}g} ± {ci:.2g}" if math.isfinite(ci) else f"{mean:.{digits}g}"


def _ratio(r: dict, key: str = "ratio") -> str:
    if not math.isfinite(r[key]):
        return "—"
    if not math.isfinite(r[f"{key}_ci_low"]):
        return f"{r[key]:.3f}"
    return f"{r[key]:.3f} [{r[f'{key}_ci_low']:.3f}, {r[f'{key}_ci_high']:.3f}]"


def _lr_cell(lr: float | None) -> str:
    """``learned`` (no lr), the tuned lr, or ``diverged`` (NaN: diverged at every lr)."""
    if lr is None:
        return "learned"
    return "diverged" if math.isnan(lr) else f"{lr:g}"


def _line(cells: list[str], widths: list[int]) -> str:
    return "  " + "  ".join(c.ljust(w) for c, w in zip(cells, widths))


def _header(ev: Evaluation) -> list[str]:
    """What was run, how it was tuned, where losses are measured."""
    tuned = ", ".join([*ev.baselines, *ev.nominals]) or "none"
    lines = [
        f"evaluation suite {ev.suite!r}{' (quick)' if ev.quick else ''}: {len(ev.seeds)} seeds "
        f"(from {ev.seeds[0]}), contenders tuned per case and criterion on seeds "
        f"{ev.tune_seeds[0]}–{ev.tune_seeds[-1]}: {tuned}; mean ± 95% CI over seeds",
    ]
    for name, learned in ev.nominals.items():
        lines.append(
            f"  {name}: {' = '.join(learned)}'s nominal term, untrained, its step size tuned "
            "like a baseline's lr and told the run's length"
        )
    for crit in ev.criteria:
        lines.append(f"  {crit}: {CRITERIA[crit][1]}")
    for name, note in measured_at(ev).items():
        lines.append(f"  {name} measured at: {note}")
    for note in ev.skipped:
        lines.append(f"SKIPPED {note['case']}: {note['reason'].splitlines()[0]}")
    return lines


def _overall(s: dict) -> list[str]:
    """A learned optimizer's aggregate lines: to the best tuned contender, to its nominal."""
    lines = [
        f"OVERALL {s['optimizer']} [{s['criterion']}]: geometric-mean ratio to the best tuned "
        f"contender {s['geomean_ratio']:.3f} over {s['cases']} case(s); won {s['won']}/"
        f"{s['cases']} ({s['won_significantly']} with the CI below 1, "
        f"{s['lost_significantly']} lost with it above 1); diverged runs {s['diverged_runs']}"
    ]
    if s["nominal"]:
        lines.append(
            f"OVERALL {s['optimizer']} [{s['criterion']}] vs {s['nominal']}: geometric-mean "
            f"ratio {s['geomean_ratio_nominal']:.3f}; won {s['won_vs_nominal']}/{s['cases']} "
            f"({s['won_vs_nominal_significantly']} with the CI below 1, "
            f"{s['lost_vs_nominal_significantly']} lost with it above 1)"
        )
    return lines


def format_table(ev: Evaluation, table: list[dict] | None = None) -> str:
    """The printed table: a block per case and criterion, then the aggregate lines."""
    table = rows(ev) if table is None else table
    cols = ["optimizer", "lr", "value", "ratio to best [95% CI]"]
    cols += ["ratio to nominal [95% CI]"] if ev.nominals else []
    cols += ["div", "test loss", "test acc", "step ×Adam"]
    lines = _header(ev)
    for case in ev.cases:
        for crit in ev.criteria:
            group = [r for r in table if r["case"] == case.case.id and r["criterion"] == crit]
            window = f", last {final_window(case.case.steps)} steps" if crit == "final" else ""
            lines.append("")
            lines.append(f"{case.case.id} — {crit}{window}")
            body = [
                [
                    r["optimizer"],
                    _lr_cell(r["lr"]),
                    _pm(r["value"], r["value_ci95"]),
                    _ratio(r),
                    *([_ratio(r, "ratio_nominal")] if ev.nominals else []),
                    f"{r['diverged']}/{r['seeds']}",
                    _pm(r["test_loss"], r["test_loss_ci95"], 3),
                    _pm(r["test_acc"], r["test_acc_ci95"], 3),
                    f"{r['step_vs_adam']:.2f}" if math.isfinite(r["step_vs_adam"]) else "—",
                ]
                for r in group
            ]
            widths = [max(len(cols[i]), *(len(b[i]) for b in body)) for i in range(len(cols))]
            lines += [_line(cols, widths), *(_line(b, widths) for b in body)]
            for r in group:
                if r["tuning_notes"]:
                    lines.append(f"  note ({r['optimizer']}): {r['tuning_notes']}")
    lines.append("")
    for s in summary(ev, table):
        lines += _overall(s)
    for s in summary_by_steps(ev, table):
        lines += [f"{s['steps']} steps: {line}" for line in _overall(s)]
    lines.append(f"wall time {ev.wall_s:.0f}s")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# Files


def _clean(value: Any) -> Any:
    """JSON-safe: non-finite floats become null (divergence is recorded separately)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    return value


def _runs_json(runs: Runs) -> dict[str, Any]:
    return {
        "train_losses": runs.losses.tolist(),
        "test_loss": runs.test_loss,
        "test_acc": runs.test_acc,
        "diverged": runs.diverged,
        "step_time_s": runs.step_time,
    }


def to_json(ev: Evaluation, table: list[dict] | None = None) -> dict[str, Any]:
    """The versioned payload of ``results.json`` (bump ``SCHEMA_VERSION`` when it changes)."""
    table = rows(ev) if table is None else table
    payload = {
        "schema": SCHEMA,
        "schema_version": SCHEMA_VERSION,
        "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "suite": ev.suite,
        "quick": ev.quick,
        "criteria": {c: CRITERIA[c][1] for c in ev.criteria},
        "baselines": ev.baselines,
        "learned": ev.learned,
        "nominals": ev.nominals,
        "measured_at": measured_at(ev),
        "seeds": ev.seeds,
        "tune_seeds": ev.tune_seeds,
        "grid": asdict(ev.grid),
        "torch_threads": torch.get_num_threads(),
        "wall_s": ev.wall_s,
        "skipped": ev.skipped,
        "rows": [{k: r[k] for k in ROW_FIELDS} for r in table],
        "summary": summary(ev, table),
        "summary_by_steps": summary_by_steps(ev, table),
        "cases": [
            {
                "case": c.case.id,
                "task": c.case.task,
                "dataset": c.case.dataset,
                "steps": c.case.steps,
                "reference_step_time_s": c.reference_step_time,
                "learned": {n: _runs_json(r) for n, r in c.learned.items()},
                "baselines": {
                    n: {
                        "tuning": {
                            crit: {
                                "lr": t.lr,
                                "notes": t.notes,
                                "grid": [asdict(p) for p in t.grid],
                            }
                            for crit, t in b.tunings.items()
                        },
                        "runs": {f"{lr:g}": _runs_json(r) for lr, r in b.runs.items()},
                    }
                    for n, b in c.baselines.items()
                },
            }
            for c in ev.cases
        ],
    }
    return _clean(payload)


def write_outputs(
    ev: Evaluation, out_dir: str | Path, plot: bool = True, table: list[dict] | None = None
) -> dict[str, Path]:
    """``summary.csv`` (the rows), ``overall.csv`` (the summary: geometric means and cases won,
    to the best tuned contender and to the nominal term), ``results.json``, ``table.txt`` and,
    with ``plot``, ``loss_curves.png`` and ``ratios.png``; ``table``: the rows, when the caller
    has them already (``rows(ev)``)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    table = rows(ev) if table is None else table
    paths = {"csv": out / "summary.csv", "json": out / "results.json", "txt": out / "table.txt"}
    paths["overall"] = out / "overall.csv"
    _write_csv(paths["csv"], ROW_FIELDS, table)
    _write_csv(paths["overall"], SUMMARY_FIELDS, summary(ev, table))
    atomic_write(paths["json"], json.dumps(to_json(ev, table), indent=1))
    atomic_write(paths["txt"], format_table(ev, table) + "\n")
    if plot and ev.cases and _have_matplotlib():
        from meta_train.evaluation.plots import plot_curves, plot_ratios

        paths["curves"] = plot_curves(ev, out / "loss_curves.png")
        paths["ratios"] = plot_ratios(ev, table, out / "ratios.png")
    return paths


def _write_csv(path: Path, fields: tuple[str, ...], records: list[dict[str, Any]]) -> None:
    def write(fh) -> None:
        writer = csv.DictWriter(fh, fieldnames=list(fields))
        writer.writeheader()
        writer.writerows({k: r[k] for k in fields} for r in records)

    atomic_write(path, write, text=True)


def _have_matplotlib() -> bool:
    """The PNGs need the ``plots`` extra; without it the tables are still written."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        warnings.warn(
            "matplotlib is not installed (pip install 'l2o[plots]'): no PNGs written",
            RuntimeWarning,
            stacklevel=3,
        )
        return False
    return True
