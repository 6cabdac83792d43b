"""The evaluation's numbers: its rows and their summaries.

Rows: one per case × criterion × optimizer, statistics over the seeds that did not diverge (the
divergences are counted). Kinds: ``learned``, ``baseline`` and ``nominal`` (a learned optimizer's
untrained nominal term, tuned like a baseline). ``ratio`` is a row's mean over the best tuned
contender's mean (``best_baseline``: the lowest of the baselines AND nominal terms on that case and
criterion); a learned optimizer's ``ratio_nominal`` is its mean over its own nominal term's, the
part of its result that meta-training adds. Both come with a paired bootstrap 95% interval; the
summary aggregates each over cases by its geometric mean and counts the cases won.
"""

from __future__ import annotations

import math
from typing import Any

from meta_train.evaluation.criteria import score
from meta_train.evaluation.runner import CaseResult, Evaluation, Runs
from meta_train.evaluation.stats import ci95, geometric_mean, ratio_ci

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
    "nominal",
    "ratio_nominal",
    "ratio_nominal_ci_low",
    "ratio_nominal_ci_high",
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
    "nominal",
    "geomean_ratio_nominal",
    "won_vs_nominal",
    "won_vs_nominal_significantly",
    "lost_vs_nominal_significantly",
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
        "nominal": "",
        "ratio_nominal": math.nan,
        "ratio_nominal_ci_low": math.nan,
        "ratio_nominal_ci_high": math.nan,
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
    nominal_of = ev.nominal_of()
    for case in ev.cases:
        for criterion in ev.criteria:
            group = [
                _row(case, criterion, name, "learned", None, runs)
                for name, runs in case.learned.items()
            ]
            for name, result in case.baselines.items():
                lr, runs = result.for_criterion(criterion)
                kind = "nominal" if name in ev.nominals else "baseline"
                row = _row(case, criterion, name, kind, lr, runs)
                row["tuning_notes"] = "; ".join(result.tunings[criterion].notes)
                group.append(row)
            tuned = [r for r in group if r["kind"] != "learned" and math.isfinite(r["value"])]
            if tuned:
                best = min(tuned, key=lambda r: r["value"])
                for r in group:
                    r["best_baseline"] = best["optimizer"]
                    _set_ratio(r, "ratio", best)
            by_name = {r["optimizer"]: r for r in group}
            for r in group:
                reference = by_name.get(nominal_of.get(r["optimizer"], ""))
                if r["kind"] == "learned" and reference is not None:
                    r["nominal"] = reference["optimizer"]
                    _set_ratio(r, "ratio_nominal", reference)
            for r in group:
                del r["_values"]
            out.extend(group)
    return out


def _set_ratio(row: dict, key: str, reference: dict) -> None:
    """``row[key]`` and its ``_ci_low`` / ``_ci_high``: row's mean over ``reference``'s."""
    if not row["_values"]:  # a contender whose tuning diverged at every lr: no runs, no ratio
        return
    ratio = ratio_ci(row["_values"], reference["_values"])
    row[key], row[f"{key}_ci_low"], row[f"{key}_ci_high"] = ratio


def _wins(mine: list[dict], key: str) -> tuple[float, int, int, int]:
    """Geometric mean of ``key`` over the rows, cases below 1, CIs wholly below / above 1."""
    ratios = [r[key] for r in mine]
    return (
        geometric_mean(ratios),
        sum(r < 1 for r in ratios if math.isfinite(r)),
        sum(r[f"{key}_ci_high"] < 1 for r in mine),
        sum(r[f"{key}_ci_low"] > 1 for r in mine),
    )


def summary(ev: Evaluation, table: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per learned optimizer and criterion: geometric-mean ratio over cases and cases won
    (ratio < 1; significantly: the whole interval below 1), to the best tuned contender and,
    for an optimizer with a nominal term, to that term (``nominal`` empty and NaN without)."""
    out = []
    nominal_of = ev.nominal_of()
    for name in ev.learned:
        for criterion in ev.criteria:
            mine = [r for r in table if r["optimizer"] == name and r["criterion"] == criterion]
            geomean, won, won_sig, lost_sig = _wins(mine, "ratio")
            n_geomean, n_won, n_won_sig, n_lost_sig = _wins(mine, "ratio_nominal")
            out.append(
                {
                    "optimizer": name,
                    "criterion": criterion,
                    "cases": len(mine),
                    "geomean_ratio": geomean,
                    "won": won,
                    "won_significantly": won_sig,
                    "lost_significantly": lost_sig,
                    "nominal": nominal_of.get(name, ""),
                    "geomean_ratio_nominal": n_geomean,
                    "won_vs_nominal": n_won,
                    "won_vs_nominal_significantly": n_won_sig,
                    "lost_vs_nominal_significantly": n_lost_sig,
                    "diverged_runs": sum(r["diverged"] for r in mine),
                }
            )
    return out


def summary_by_steps(ev: Evaluation, table: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``summary`` per run length (the 1×, 5×, 10× horizons of a suite), each row with its
    ``steps``; empty when every case has the same length."""
    lengths = sorted({r["steps"] for r in table})
    if len(lengths) < 2:
        return []
    return [
        {"steps": steps, **row}
        for steps in lengths
        for row in summary(ev, [r for r in table if r["steps"] == steps])
    ]
