"""The evaluation's table, its CSV and versioned JSON, and its PNGs.

Rows: one per case × criterion × optimizer, statistics over the seeds that did not diverge (the
divergences are counted). The learned optimizers' ``ratio`` is their mean over the best tuned
baseline's mean (the lowest of the baselines on that case and criterion), with a paired bootstrap
95% interval; the summary aggregates ratios over cases by their geometric mean.
"""

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
from meta_train.evaluation.criteria import CRITERIA, final_window, score
from meta_train.evaluation.runner import CaseResult, Evaluation, Runs
from meta_train.evaluation.stats import ci95, geometric_mean, ratio_ci

SCHEMA = "l2o.evaluation"
SCHEMA_VERSION = 1
ROW_FIELDS = (
    "case",
    "task",
    "dataset",
    "steps",
    "criterion",
    "optimizer",
    "kind",
    "lr",
    "value",
    "value_ci95",
    "seeds",
    "diverged",
    "ratio",
    "ratio_ci_low",
    "ratio_ci_high",
    "best_baseline",
    "test_loss",
    "test_loss_ci95",
    "test_acc",
    "test_acc_ci95",
    "step_ms",
    "step_vs_adam",
    "tuning_notes",
)
SUMMARY_FIELDS = (
    "optimizer",
    "criterion",
    "cases",
    "geomean_ratio",
    "won",
    "won_significantly",
    "lost_significantly",
    "diverged_runs",
)


def _values(runs: Runs, criterion: str) -> list[float]:
    """Per-seed criterion values, NaN for a diverged seed."""
    v = score(criterion, runs.losses)
    return [x if math.isfinite(x) else math.nan for x in v.tolist()]


def _finite(values: list[float]) -> list[float]:
    return [v for v in values if math.isfinite(v)]


def _row(case: CaseResult, criterion: str, name: str, kind: str, lr, runs: Runs) -> dict:
    values = _values(runs, criterion)
    ok = [i for i, d in enumerate(runs.diverged) if not d and math.isfinite(values[i])]
    value, value_ci = ci95([values[i] for i in ok])
    test_loss, test_loss_ci = ci95(_finite([runs.test_loss[i] for i in ok]))
    test_acc, test_acc_ci = ci95(_finite([runs.test_acc[i] for i in ok]))
    c = case.case
    return {
        "case": c.id,
        "task": c.task,
        "dataset": c.dataset,
        "steps": c.steps,
        "criterion": criterion,
        "optimizer": name,
        "kind": kind,
        "lr": lr,
        "value": value,
        "value_ci95": value_ci,
        "seeds": len(values),
        "diverged": len(values) - len(ok),
        "ratio": math.nan,
        "ratio_ci_low": math.nan,
        "ratio_ci_high": math.nan,
        "best_baseline": "",
        "test_loss": test_loss,
        "test_loss_ci95": test_loss_ci,
        "test_acc": test_acc,
        "test_acc_ci95": test_acc_ci,
        "step_ms": runs.step_time * 1e3,
        "step_vs_adam": runs.step_time / case.reference_step_time,
        "tuning_notes": "",
        "_values": values,
    }


def rows(ev: Evaluation) -> list[dict[str, Any]]:
    """The table's rows (see ``ROW_FIELDS``), per case, criterion, then optimizer."""
    out = []
    for case in ev.cases:
        for criterion in ev.criteria:
            group = [
                _row(case, criterion, name, "learned", None, runs)
                for name, runs in case.learned.items()
            ]
            for name, result in case.baselines.items():
                lr, runs = result.for_criterion(criterion)
                row = _row(case, criterion, name, "baseline", lr, runs)
                row["tuning_notes"] = "; ".join(result.tunings[criterion].notes)
                group.append(row)
            base = [r for r in group if r["kind"] == "baseline" and math.isfinite(r["value"])]
            if base:
                best = min(base, key=lambda r: r["value"])
                for r in group:
                    r["best_baseline"] = best["optimizer"]
                    r["ratio"], r["ratio_ci_low"], r["ratio_ci_high"] = ratio_ci(
                        r["_values"], best["_values"]
                    )
            for r in group:
                del r["_values"]
            out.extend(group)
    return out


def summary(ev: Evaluation, table: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per learned optimizer and criterion: geometric-mean ratio over cases and cases won
    (ratio < 1; significantly: the whole interval below 1)."""
    out = []
    for name in ev.learned:
        for criterion in ev.criteria:
            mine = [r for r in table if r["optimizer"] == name and r["criterion"] == criterion]
            ratios = [r["ratio"] for r in mine]
            out.append(
                {
                    "optimizer": name,
                    "criterion": criterion,
                    "cases": len(mine),
                    "geomean_ratio": geometric_mean(ratios),
                    "won": sum(r < 1 for r in ratios if math.isfinite(r)),
                    "won_significantly": sum(r["ratio_ci_high"] < 1 for r in mine),
                    "lost_significantly": sum(r["ratio_ci_low"] > 1 for r in mine),
                    "diverged_runs": sum(r["diverged"] for r in mine),
                }
            )
    return out


# --------------------------------------------------------------------------------------------
# Text


def _pm(mean: float, ci: float, digits: int = 4) -> str:
    if not math.isfinite(mean):
        return "—"
    return f"{mean:.{digits}g} ± {ci:.2g}" if math.isfinite(ci) else f"{mean:.{digits}g}"


def _ratio(r: dict) -> str:
    if not math.isfinite(r["ratio"]):
        return "—"
    if not math.isfinite(r["ratio_ci_low"]):
        return f"{r['ratio']:.3f}"
    return f"{r['ratio']:.3f} [{r['ratio_ci_low']:.3f}, {r['ratio_ci_high']:.3f}]"


def _line(cells: list[str], widths: list[int]) -> str:
    return "  " + "  ".join(c.ljust(w) for c, w in zip(cells, widths))


def format_table(ev: Evaluation, table: list[dict] | None = None) -> str:
    """The printed table: a block per case and criterion, then the aggregate lines."""
    table = rows(ev) if table is None else table
    cols = ["optimizer", "lr", "value", "ratio to best [95% CI]", "div", "test loss"]
    cols += ["test acc", "step ×Adam"]
    lines = [
        f"evaluation suite {ev.suite!r}{' (quick)' if ev.quick else ''}: {len(ev.seeds)} seeds "
        f"(from {ev.seeds[0]}), baselines tuned per case and criterion on seeds "
        f"{ev.tune_seeds[0]}–{ev.tune_seeds[-1]}; mean ± 95% CI over seeds",
    ]
    for crit in ev.criteria:
        lines.append(f"  {crit}: {CRITERIA[crit][1]}")
    for note in ev.skipped:
        lines.append(f"SKIPPED {note['case']}: {note['reason'].splitlines()[0]}")
    for case in ev.cases:
        for crit in ev.criteria:
            group = [r for r in table if r["case"] == case.case.id and r["criterion"] == crit]
            window = f", last {final_window(case.case.steps)} steps" if crit == "final" else ""
            lines.append("")
            lines.append(f"{case.case.id} — {crit}{window}")
            body = [
                [
                    r["optimizer"],
                    "learned" if r["lr"] is None else f"{r['lr']:g}",
                    _pm(r["value"], r["value_ci95"]),
                    _ratio(r),
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
        lines.append(
            f"OVERALL {s['optimizer']} [{s['criterion']}]: geometric-mean ratio to the best tuned "
            f"baseline {s['geomean_ratio']:.3f} over {s['cases']} case(s); won {s['won']}/"
            f"{s['cases']} ({s['won_significantly']} with the CI below 1, "
            f"{s['lost_significantly']} lost with it above 1); diverged runs {s['diverged_runs']}"
        )
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
        "seeds": ev.seeds,
        "tune_seeds": ev.tune_seeds,
        "grid": asdict(ev.grid),
        "torch_threads": torch.get_num_threads(),
        "wall_s": ev.wall_s,
        "skipped": ev.skipped,
        "rows": [{k: r[k] for k in ROW_FIELDS} for r in table],
        "summary": summary(ev, table),
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


def write_outputs(ev: Evaluation, out_dir: str | Path, plot: bool = True) -> dict[str, Path]:
    """``summary.csv`` (the rows), ``results.json``, ``table.txt`` and, with ``plot``,
    ``loss_curves.png`` and ``ratios.png``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    table = rows(ev)
    paths = {"csv": out / "summary.csv", "json": out / "results.json", "txt": out / "table.txt"}

    def write_csv(fh) -> None:
        writer = csv.DictWriter(fh, fieldnames=list(ROW_FIELDS))
        writer.writeheader()
        writer.writerows({k: r[k] for k in ROW_FIELDS} for r in table)

    atomic_write(paths["csv"], write_csv, text=True)
    atomic_write(paths["json"], json.dumps(to_json(ev, table), indent=1))
    atomic_write(paths["txt"], format_table(ev, table) + "\n")
    if plot and ev.cases and _have_matplotlib():
        from meta_train.evaluation.plots import plot_curves, plot_ratios

        paths["curves"] = plot_curves(ev, out / "loss_curves.png")
        paths["ratios"] = plot_ratios(ev, table, out / "ratios.png")
    return paths


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
